"""``python -m dsct eval``: the networks behind the metrics, and the command (README "Evaluate").

Inception-v3 comes from ``pytorch-fid`` (the TF-ported FID weights FlexIT and the papers used) and
LPIPS from ``lpips`` (AlexNet, v0.1): the optional ``eval`` extra, imported only here and only when
a metric needs them, so ``import dsct`` and the Space never do. Both fetch their weights through
``torch.hub`` on first use; the files are looked for in ``torch.hub.get_dir()/checkpoints`` first and,
when missing, named with their URL instead of a download attempt. CLIP and DINO are the project's
own models (``hub.py``). The maths is in ``eval.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import open_clip
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import eval as metrics
from . import hub
from .batch import LOG_NAME, read_log, read_prompts, write_atomic
from .benchmark import flexit_prompts, read_classes, read_stats, save_stats
from .clip import ClipEnsemble
from .config import ModelConfig
from .errors import DSCTError, ImageError, WeightsNotFound
from .images import fit_to, load_image
from .vit import DinoFeatures

__all__ = [
    "FID_SIZE", "INCEPTION_FILE", "ALEXNET_FILE", "fid_crop", "missing_weights", "load_inception", "inception_features",
    "load_lpips", "lpips_distances", "add_parser", "run",
]

FID_SIZE = 256  # FlexIT: short side 256, centre crop 256; the network itself then resizes to 299
INCEPTION_FILE = ("pt_inception-2015-12-05-6726825d.pth",
                  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth")
ALEXNET_FILE = ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth")
EVAL_CLIP = "ViT-B-32-quickgelu"  # CLIPScore's model
CLIPSCORE_PROMPT = "A photo depicts {}"  # Hessel et al.'s prefix
METRICS = ("fid", "lpips", "clip", "dino")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
INSTALL_HINT = "pip install -r requirements-eval.txt (or pip install 'dsct[eval]')"


# --- the networks -------------------------------------------------------------------------

def _require(module: str, package: str):
    """Import an optional eval dependency, or say in one line how to install it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise DSCTError(f"dsct eval needs the {package} package: {INSTALL_HINT}") from e


def checkpoints_dir() -> Path:
    """Where torch.hub (pytorch-fid, torchvision) keeps downloaded weights: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def missing_weights(files: Sequence[tuple[str, str]]) -> list[str]:
    """One line per (file name, URL) not in ``checkpoints_dir()``, saying where to put it."""
    where = checkpoints_dir()
    return [f"{name} is not in {where}: download {url} there (torch.hub would fetch it; this run does not)"
            for name, url in files if not (where / name).is_file()]


def _check_weights(files: Sequence[tuple[str, str]]) -> None:
    if missing := missing_weights(files):
        raise WeightsNotFound("the eval networks' weights are missing (set TORCH_HOME to use another folder):\n  "
                              + "\n  ".join(missing))


def fid_crop(image: Image.Image, size: int = FID_SIZE) -> Tensor:
    """FlexIT's evaluation input: short side ``size`` (bilinear, PIL's antialiased resize), centre crop
    ``size``, values 0–1, (3, size, size) float32. The sizes and offsets round as torchvision's
    ``Resize(size)`` + ``CenterCrop(size)`` do on a PIL image."""
    width, height = image.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    data = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3).permute(2, 0, 1).float() / 255.0


def load_inception(device: torch.device, weights: Path | None = None) -> nn.Module:
    """pytorch-fid's ``InceptionV3`` (FID Inception, 2048-d pool3, its own resize to 299 and 2x−1), eval mode.

    ``weights``: a local state dict for that architecture (another copy of the FID file, or ArtFID's
    art Inception) handed to pytorch-fid in place of its download; None reads the torch.hub cache.
    """
    inception = _require("pytorch_fid.inception", "pytorch-fid")
    if weights is None:
        _check_weights([INCEPTION_FILE])
        return inception.InceptionV3([3]).to(device).eval()
    try:
        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # not a file, not a torch file, pickled objects
        raise WeightsNotFound(f"cannot read Inception weights {weights}: {e}") from e
    with _patched(inception, "load_state_dict_from_url", lambda *a, **k: state_dict):
        try:
            return inception.InceptionV3([3]).to(device).eval()
        except RuntimeError as e:  # keys or shapes that do not fit
            raise DSCTError(f"{weights} is not a state dict of pytorch-fid's FID Inception: {str(e).splitlines()[0]}") from e


@contextlib.contextmanager
def _patched(owner: object, name: str, value: object):
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


@torch.no_grad()
def inception_features(net: nn.Module, x01: Tensor) -> Tensor:
    """(N, 2048) pool3 features of a (N, 3, H, W) batch in 0–1 (``fid_crop`` output)."""
    p = next(net.parameters())
    return net(x01.to(p.device, p.dtype))[0].flatten(1).float().cpu()


def load_lpips(device: torch.device) -> nn.Module:
    """The official LPIPS, AlexNet backbone, v0.1 linear layers (shipped with the package), eval mode."""
    lpips = _require("lpips", "lpips")
    _check_weights([ALEXNET_FILE])
    with warnings.catch_warnings():  # lpips still asks torchvision for pretrained=True: deprecated, same weights
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        return lpips.LPIPS(net="alex", version="0.1", verbose=False).to(device).eval()


@torch.no_grad()
def lpips_distances(net: nn.Module, a01: Tensor, b01: Tensor) -> Tensor:
    """(N,) LPIPS between two (N, 3, H, W) batches in 0–1 (``normalize=True`` maps them to −1..1)."""
    device = next(net.parameters()).device
    return net(a01.to(device), b01.to(device), normalize=True).flatten().float().cpu()


def _tiny(device: torch.device) -> hub.Models:
    """The seeded tiny models ``--tiny`` translates with (fp32): the same DINO and CLIP as a tiny batch run."""
    return hub.load_models(ModelConfig(tiny=True, load_clip=True, dtype="fp32"), device)


def _load_clip(tiny: bool, device: torch.device) -> ClipEnsemble:
    """CLIPScore's ViT-B/32 (OpenAI weights through hub.py) as a one-model ensemble; --tiny: the tiny ensemble."""
    if tiny:
        return _tiny(device).clip
    model = hub.load_clip_model(hub.CLIP_WEIGHTS[EVAL_CLIP]).to(device).eval().requires_grad_(False)
    return ClipEnsemble([model], [open_clip.get_tokenizer(EVAL_CLIP)], [EVAL_CLIP]).eval()


def _load_dino(tiny: bool, device: torch.device) -> DinoFeatures:
    """DINO ViT-B/8 (hub.py) behind the project's feature wrapper; --tiny: the tiny ViT."""
    if tiny:
        return _tiny(device).vit
    return DinoFeatures(hub.load_vit("dino_vitb8").to(device).eval().requires_grad_(False)).eval()


@torch.no_grad()
def _text_embeds(clip, texts: Sequence[str]) -> Tensor:
    """Unit CLIP text embeddings (N, D) of the texts as written (no template averaging)."""
    model = clip.models[0]
    tokens = clip.tokenizers[0](list(texts)).to(next(model.parameters()).device)
    return torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1).cpu()


# --- the items evaluated ------------------------------------------------------------------

class Item(NamedTuple):
    """One output to score and what it was asked for."""

    output: Path
    source_name: str  # the source's file name, as results.jsonl records it
    source: Path | None  # that file, where its folder is known (--sources, or --copy-baseline)
    text: str | None
    source_text: str | None
    style: Path | None
    label: str | None = None  # target class for CSFID


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DSCTError(f"{folder} is not a folder" if folder.exists() else f"folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _style_path(value: str | None, style_dir: Path | None) -> Path | None:
    """A recorded style image: the path batch read, or its file name in ``--style-dir``."""
    if not value:
        return None
    return style_dir / Path(value).name if style_dir is not None else Path(value)


def _batch_items(args: argparse.Namespace) -> tuple[list[Item], list[str], set[str]]:
    """The outputs a batch run recorded in results.jsonl, with their requests; notes on what is left out;
    the sources recorded as errors (a classes file for the whole benchmark still names them)."""
    log = args.folder / LOG_NAME
    if not log.is_file():
        raise DSCTError(f"no {LOG_NAME} in {args.folder}: give the -o folder of a `dsct batch` run, "
                        "or --copy-baseline for a folder of source images")
    rows, problems = read_log(log)
    notes = [f"note: {log}: {len(problems)} unusable line(s) left out"] if problems else []
    if errors := sum("error" in r for r in rows):
        notes.append(f"note: {errors} source(s) recorded as errors have no output and are left out")
    items = []
    for r in (r for r in rows if "error" not in r and (r["rank"] == 1 or not args.best_only)):
        output = args.folder / r["output"]
        if not output.is_file():
            raise DSCTError(f"{output} is listed in {log} but not there: run the batch again to finish it")
        source = args.sources / r["source"] if args.sources is not None else None
        items.append(Item(output, r["source"], source, r.get("text"), r.get("source_text"),
                          _style_path(r.get("style"), args.style_dir)))
    if not items:
        raise DSCTError(f"{log} lists no translated image")
    if not any(i.text or i.style for i in items):
        notes.append(f"note: {log} records no texts or style images (a batch from before `dsct eval`?): "
                     "CLIP and style metrics are left out")
    return items, notes, {r["source"] for r in rows if "error" in r}


def _copy_items(args: argparse.Namespace) -> tuple[list[Item], list[str], set[str]]:
    """FlexIT's COPY baseline: every source is its own output (its 256 crop is what is scored); the
    prompts file, where given, says what each was asked to become (style paths from its folder)."""
    asked = {row.source: row.prompts for row in read_prompts(args.prompts)[1]} if args.prompts is not None else {}
    items = []
    for p in _images_in(args.folder):
        prompts = asked.get(p.name, {})
        style = prompts.get("style", "").strip()
        items.append(Item(p, p.name, p, prompts.get("text"), prompts.get("source_text"),
                          _style_path(str(args.prompts.parent / style) if style else None, args.style_dir)))
    if not items:
        raise DSCTError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {args.folder}")
    return items, [], set()


def _with_classes(items: list[Item], classes: dict[str, str], path: Path, failed: set[str]) -> list[Item]:
    """Each item's target class, by its source's file name (or its output's); a name that matches no
    item (nor a source that failed in the run) is an error: a classes file for another run would
    silently score the wrong images."""
    known = {i.output.name for i in items} | {i.source_name for i in items} | failed
    if unknown := [name for name in classes if name not in known]:
        raise DSCTError(f"{path} names {len(unknown)} image(s) that are not outputs or sources here: "
                        f"{', '.join(unknown[:3])}{' …' if len(unknown) > 3 else ''}")
    return [i._replace(label=classes.get(i.source_name, classes.get(i.output.name))) for i in items]


def _open(path: Path, what: str) -> Image.Image:
    try:
        return load_image(path, name=f"{what} {path}")
    except ImageError as e:
        raise ImageError(f"{e} (cannot evaluate it)") from e


def _to01(image: Image.Image) -> Tensor:
    """RGB PIL image -> (3, H, W) float32 in 0–1."""
    data = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, 3).permute(2, 0, 1).float() / 255.0


# --- the run ------------------------------------------------------------------------------

def _chunks(n: int, size: int) -> list[range]:
    return [range(k, min(n, k + size)) for k in range(0, n, size)]


def _progress(total: int, desc: str, quiet: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="image", disable=quiet, file=sys.stderr)


def _fid_features(net: nn.Module, paths: Sequence[Path], what: str, args: argparse.Namespace) -> Tensor:
    """Inception features of images, ``--batch-size`` per network pass."""
    out = []
    with _progress(len(paths), f"Inception ({what})", args.quiet) as bar:
        for chunk in _chunks(len(paths), args.batch_size):
            out.append(inception_features(net, torch.stack([fid_crop(_open(paths[k], what)) for k in chunk])))
            bar.update(len(chunk))
    return torch.cat(out)


def _batches(items: Sequence[Item], args: argparse.Namespace, desc: str, *, sources: bool):
    """(indices, outputs, sources or None) batches of up to ``--batch-size`` images of one size, 0–1.
    Each source is fitted to its output's size as the translator fitted it (``images.fit_to``)."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for k, item in enumerate(items):  # decoded sizes: EXIF rotation can swap a header's width and height
        by_size.setdefault(_open(item.output, "output").size, []).append(k)
    with _progress(len(items), desc, args.quiet) as bar:
        for ks in by_size.values():
            for chunk in _chunks(len(ks), args.batch_size):
                idx = [ks[c] for c in chunk]
                outs = [_open(items[k].output, "output") for k in idx]
                srcs = (torch.stack([_to01(fit_to(_open(items[k].source, "source"), *o.size)) for k, o in zip(idx, outs)])
                        if sources else None)
                yield idx, torch.stack([_to01(o) for o in outs]), srcs
                bar.update(len(idx))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _score(items: list[Item], args: argparse.Namespace) -> tuple[dict, list[dict], list[str]]:
    """Every metric the inputs allow: the summary, one row per output, and notes."""
    device, wanted = args.device, set(args.metrics)
    per = [{"output": i.output.name, "source": i.source_name, "class": i.label or ""} for i in items]
    summary: dict = {"outputs": len(items)}
    notes: list[str] = []
    paired = [k for k, i in enumerate(items) if i.source is not None]
    if len(paired) < len(items) and wanted & {"lpips", "clip", "dino"}:
        notes.append("note: LPIPS, CLIP direction and DINO structure need the sources: give --sources (the batch's input folder)")
    art_fid_style = _fid_metrics(items, args, device, summary, notes) if "fid" in wanted else None
    if "lpips" in wanted and paired:
        net, scale = load_lpips(device), 100.0 if args.lpips_x100 else 1.0
        for idx, outs, srcs in _batches([items[k] for k in paired], args, "LPIPS", sources=True):
            for k, d in zip(idx, lpips_distances(net, srcs, outs).tolist()):
                per[paired[k]]["lpips"] = scale * d
        summary["lpips"] = _mean([r["lpips"] for r in per if "lpips" in r])
        summary["lpips_scale"] = "x100 (FlexIT)" if args.lpips_x100 else "0-1"
        if art_fid_style is not None:  # ArtFID takes LPIPS on its 0–1 scale
            summary["art_fid"] = metrics.art_fid(summary["lpips"] / scale, art_fid_style)
    if "dino" in wanted:
        _dino_metrics(items, paired, per, args, device)
    if "clip" in wanted:
        _clip_metrics(items, per, args, device)
    for key in ("dino_structure", "dino_cls_cosine", "clip_score", "clip_direction"):
        if values := [r[key] for r in per if key in r]:
            summary[key] = _mean(values)
    return summary, per, notes


def _span(counts: Sequence[int]) -> str:
    """'4' when every class has 4, '2-5' otherwise."""
    return f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"


def _fid_metrics(items: list[Item], args: argparse.Namespace, device: torch.device, summary: dict,
                 notes: list[str]) -> float | None:
    """SFID, CSFID (with the counts and the sampling floor), FID to the style images; returns the FID
    for ArtFID (with its art Inception) where asked for."""
    net = load_inception(device)
    feats = _fid_features(net, [i.output for i in items], "outputs", args)
    if args.stats is not None:
        stats = read_stats(args.stats)
        summary["sfid"] = metrics.sfid(feats, stats.mean)
        labelled = [k for k, i in enumerate(items) if i.label is not None]
        if labelled:
            _class_metrics(feats[labelled], [items[k].label for k in labelled], stats, summary, notes)
            if len(labelled) < len(items):
                notes.append(f"note: {len(items) - len(labelled)} output(s) have no class in {args.classes}: not in CSFID")
        else:
            notes.append("note: CSFID needs each output's target class: give --classes FILE.csv")
    else:
        notes.append("note: no --stats: SFID and CSFID need reference statistics (`dsct eval stats --ref DIR`, or FlexIT's file)")
    styles = sorted({i.style for i in items if i.style is not None})
    if not styles:
        return None
    if len(styles) < 2 or len(items) < 2:
        notes.append(f"note: FID to the style images needs at least two images in each set "
                     f"({len(items)} outputs, {len(styles)} style image(s)); not reported")
        return None
    style_feats = _fid_features(net, styles, "style images", args)
    summary["fid_style"] = metrics.frechet_distance(*metrics.mean_and_covariance(feats),
                                                    *metrics.mean_and_covariance(style_feats))
    if args.artfid_inception is None:
        return None
    art = load_inception(device, args.artfid_inception)
    a = metrics.mean_and_covariance(_fid_features(art, [i.output for i in items], "outputs, art Inception", args))
    b = metrics.mean_and_covariance(_fid_features(art, styles, "style images, art Inception", args))
    return metrics.frechet_distance(*a, *b)


def _class_metrics(feats: Tensor, labels: list[str], stats: metrics.RefStats, summary: dict, notes: list[str]) -> None:
    """CSFID with what it depends on: classes, outputs and reference images per class, the sampling floor."""
    result = metrics.csfid(feats, labels, stats.class_means)
    summary["classes"] = len(result.counts)
    summary["outputs_per_class"] = _span(list(result.counts.values()))
    summary["reference_per_class"] = (_span([stats.counts[c] for c in result.counts]) if stats.counts
                                      else "unknown (FlexIT's file has no counts)")
    if max(result.counts.values()) < 2:
        notes.append("note: CSFID is undefined with one output per class (it measures single images, not "
                     "class distributions); not reported")
        return
    summary["csfid"] = result.value
    summary["csfid_floor"] = metrics.sampling_floor(feats, labels)
    summary["csfid_per_class"] = result.per_class
    if singles := sum(n == 1 for n in result.counts.values()):
        notes.append(f"note: {singles} of {len(result.counts)} classes have one output: they count in CSFID "
                     "but not in its sampling floor (which needs two outputs of a class)")


def _dino_metrics(items: list[Item], paired: list[int], per: list[dict], args: argparse.Namespace, device: torch.device) -> None:
    """Structure distance to the source and [CLS] cosine to the style image (DINO ViT-B/8, inputs 0–1)."""
    styled = [k for k, i in enumerate(items) if i.style is not None]
    if not paired and not styled:
        return
    dino = _load_dino(args.tiny, device)
    with torch.no_grad():
        for idx, outs, srcs in _batches([items[k] for k in paired], args, "DINO structure", sources=True):
            d = metrics.structure_distance(dino(outs.to(device)).self_sim, dino(srcs.to(device)).self_sim)
            for k, v in zip(idx, d.tolist()):
                per[paired[k]]["dino_structure"] = v
        if not styled:
            return
        style_cls = {p: dino(_to01(_open(p, "style image"))[None].to(device)).cls for p in {items[k].style for k in styled}}
        for idx, outs, _ in _batches([items[k] for k in styled], args, "DINO style", sources=False):
            cls = dino(outs.to(device)).cls
            trg = torch.cat([style_cls[items[styled[k]].style] for k in idx])
            for k, v in zip(idx, metrics.cls_cosine(cls, trg).tolist()):
                per[styled[k]]["dino_cls_cosine"] = v


def _clip_metrics(items: list[Item], per: list[dict], args: argparse.Namespace, device: torch.device) -> None:
    """CLIPScore to the target text; the directional similarity where the source and its text are known too."""
    texted = [k for k, i in enumerate(items) if i.text]
    if not texted:
        return
    clip = _load_clip(args.tiny, device)
    chosen = [items[k] for k in texted]
    directed = {k for k, i in enumerate(chosen) if i.source is not None and i.source_text}
    with torch.no_grad():
        for idx, outs, srcs in _batches(chosen, args, "CLIP", sources=bool(directed) and len(directed) == len(chosen)):
            out_emb = clip.center_embeddings(outs.to(device))[0].cpu()
            text_emb = _text_embeds(clip, [CLIPSCORE_PROMPT.format(chosen[k].text) for k in idx])
            for k, s in zip(idx, metrics.clip_score(out_emb, text_emb).tolist()):
                per[texted[k]]["clip_score"] = s
            if srcs is None:
                continue
            src_emb = clip.center_embeddings(srcs.to(device))[0].cpu()
            trg_txt = _text_embeds(clip, [chosen[k].text for k in idx])
            src_txt = _text_embeds(clip, [chosen[k].source_text for k in idx])
            for k, s in zip(idx, metrics.directional_similarity(src_emb, out_emb, src_txt, trg_txt).tolist()):
                per[texted[k]]["clip_direction"] = s


# --- output -------------------------------------------------------------------------------

LABELS = {
    "outputs": "outputs", "sfid": "SFID", "csfid": "CSFID", "csfid_floor": "CSFID sampling floor (≈ mean tr Σ_c / n_c)",
    "classes": "target classes", "outputs_per_class": "outputs per class", "reference_per_class": "reference images per class",
    "lpips": "LPIPS (AlexNet v0.1)", "clip_score": "CLIPScore (w=2.5)", "clip_direction": "CLIP directional similarity",
    "dino_structure": "DINO structure distance", "dino_cls_cosine": "DINO [CLS] cosine to the style",
    "fid_style": "FID to the style images", "art_fid": "ArtFID",
}


def _table(summary: dict) -> str:
    """The summary as aligned lines, in a fixed order (per-class distances only in metrics.json)."""
    lines = []
    for key, label in LABELS.items():
        value = summary.get(key)
        if value is None:
            continue
        text = str(value) if not isinstance(value, float) else f"{value:.4f}" if value == 0 or abs(value) >= 0.01 else f"{value:.3e}"
        lines.append(f"{label:<44} {text}{'  (' + summary['lpips_scale'] + ')' if key == 'lpips' else ''}")
    return "\n".join(lines)


def _write(out: Path, summary: dict, per: list[dict]) -> None:
    """metrics.json (the summary) and metrics.csv (one row per output), each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=2) + "\n"
    write_atomic(out / "metrics.json", lambda fh: fh.write(text.encode()))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(k for row in per for k in row)))
    writer.writeheader()
    writer.writerows(per)
    write_atomic(out / "metrics.csv", lambda fh: fh.write(table.getvalue().encode()))


# --- sub-actions --------------------------------------------------------------------------

def _cmd_stats(args: argparse.Namespace) -> int:
    """Reference statistics from class sub-folders, accumulated batch by batch."""
    if args.ref is None or args.output_dir is None:
        raise DSCTError("eval stats needs --ref DIR (class sub-folders of reference images) and -o FILE.pt")
    if not args.ref.is_dir():
        raise DSCTError(f"--ref {args.ref}: folder not found")
    folders = sorted(p for p in args.ref.iterdir() if p.is_dir())
    listed = [(p, str(index) if args.class_index else folder.name)
              for index, folder in enumerate(folders) for p in _images_in(folder)]
    if not listed:
        raise DSCTError(f"no images in class sub-folders of {args.ref}")
    net = load_inception(args.device)
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    with _progress(len(listed), "Inception (reference)", args.quiet) as bar:
        for chunk in _chunks(len(listed), args.batch_size):
            batch = torch.stack([fid_crop(_open(listed[k][0], "reference image")) for k in chunk])
            metrics.add_to_sums(sums, counts, inception_features(net, batch), [listed[k][1] for k in chunk])
            bar.update(len(chunk))
    save_stats(args.output_dir, metrics.stats_from_sums(sums, counts))
    print(f"{args.output_dir}: {len(listed)} images, {len(counts)} classes")
    return 0


def _cmd_flexit(args: argparse.Namespace) -> int:
    if args.queries is None or args.imagenet_val is None or args.output_dir is None:
        raise DSCTError("eval flexit needs --queries queries.csv, --imagenet-val DIR and -o DIR")
    n = flexit_prompts(args.queries, args.imagenet_val, args.output_dir, split=args.split, limit=args.limit)
    print(f"{args.output_dir}: {n} queries (sources/, prompts.csv, classes.csv)")
    return 0


def run(args: argparse.Namespace, device: torch.device | None = None) -> int:
    """``python -m dsct eval``: the sub-action its first argument names, or the scoring of a folder.

    ``device``: the checked ``--device`` (cli.py checks it as for translate); None: CUDA when present.
    """
    args.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not 1 <= args.batch_size <= 1024:
        raise DSCTError(f"--batch-size {args.batch_size} is out of range: give 1 to 1024")
    if str(args.folder) in ("stats", "flexit"):
        return (_cmd_stats if str(args.folder) == "stats" else _cmd_flexit)(args)
    if args.copy_baseline and args.output_dir is None:
        raise DSCTError("--copy-baseline scores the source folder itself: give -o DIR for metrics.json and metrics.csv")
    items, notes, failed = (_copy_items if args.copy_baseline else _batch_items)(args)
    if args.classes is not None:
        items = _with_classes(items, read_classes(args.classes), args.classes, failed)
    summary, per, more = _score(items, args)
    out = args.output_dir or args.folder
    _write(out, summary, per)
    for note in notes + more:
        print(note, file=sys.stderr)
    print(_table(summary))
    print(f"(per image: {out / 'metrics.csv'}; all: {out / 'metrics.json'})")
    return 0


EXAMPLES = """examples:
  # score a batch run (its results.jsonl); the sources give LPIPS, CLIP direction and DINO structure
  python -m dsct eval out/ --sources photos/
  # reference statistics from class sub-folders (ImageNet train: --class-index keys them 0..999)
  python -m dsct eval stats --ref imagenet/train -o stats.pt --class-index
  # FlexIT's benchmark: prompts, classes and linked sources from its queries.csv
  python -m dsct eval flexit --queries queries.csv --imagenet-val imagenet/val -o bench/
  python -m dsct batch bench/sources --prompts bench/prompts.csv -o bench-out/ --resize-mode center_crop
  python -m dsct eval bench-out/ --sources bench/sources --classes bench/classes.csv --stats inception_stats_256.pt --lpips-x100
  # its COPY baseline (each source scored as its own output): SFID 0.20 / CSFID 106.0 with the real weights
  python -m dsct eval bench/sources --copy-baseline --classes bench/classes.csv --stats inception_stats_256.pt -o copy/
"""


def add_parser(sub, formatter_class: type[argparse.HelpFormatter]) -> argparse.ArgumentParser:
    """The ``eval`` subcommand's flags (cli.py registers it)."""
    p = sub.add_parser("eval", help="score translations: SFID, CSFID, LPIPS, CLIP, DINO, FID (README: Evaluate)",
                       formatter_class=formatter_class, epilog=EXAMPLES,
                       description="Score a folder of translations as the papers do. Needs the eval extra: " + INSTALL_HINT)
    p.add_argument("folder", type=Path, help="the -o folder of a batch run; or 'stats' (build reference statistics) "
                   "or 'flexit' (write FlexIT's benchmark files)")
    p.add_argument("-o", "--output-dir", type=Path, default=None,
                   help="where metrics.json and metrics.csv go (default: the scored folder); for stats the .pt file; "
                        "for flexit the benchmark folder")
    p.add_argument("--sources", type=Path, default=None, help="the batch's input folder (for LPIPS, CLIP direction, DINO structure)")
    p.add_argument("--classes", type=Path, default=None, metavar="FILE.csv", help="target class of each image: columns source,class")
    p.add_argument("--stats", type=Path, default=None, metavar="FILE.pt",
                   help="reference statistics: from `eval stats`, or FlexIT's inception_stats_256.pt")
    p.add_argument("--copy-baseline", action="store_true", help="score the folder's images as their own outputs (FlexIT's COPY row)")
    p.add_argument("--prompts", type=Path, default=None, metavar="FILE.csv", help="with --copy-baseline: the texts or styles asked for")
    p.add_argument("--style-dir", type=Path, default=None, help="look up the recorded style images by file name in this folder")
    p.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS), help="which families to compute")
    p.add_argument("--best-only", action="store_true",
                   help="score only each source's best sample (rank 1): one output per query, as FlexIT scores")
    p.add_argument("--lpips-x100", action="store_true", help="report LPIPS ×100, as FlexIT's table does")
    p.add_argument("--artfid-inception", type=Path, default=None, metavar="FILE",
                   help="ArtFID's art Inception weights (for image mode's ArtFID; you supply the file)")
    p.add_argument("--batch-size", type=int, default=32, help="images per network pass")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--tiny", action="store_true", help="tiny random CLIP and DINO models: checks the setup; the numbers mean nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    stats = p.add_argument_group("eval stats")
    stats.add_argument("--ref", type=Path, default=None, help="reference folder, one sub-folder per class")
    stats.add_argument("--class-index", action="store_true", help="label classes by their sorted position (ImageNet's index) instead of the folder name")
    flexit = p.add_argument_group("eval flexit")
    flexit.add_argument("--queries", type=Path, default=None, help="FlexIT's dataset/queries.csv")
    flexit.add_argument("--imagenet-val", type=Path, default=None, help="the ImageNet validation folder (class folders)")
    flexit.add_argument("--split", choices=("test", "dev", "all"), default="test", help="FlexIT's split (is_test)")
    flexit.add_argument("--limit", type=int, default=None, help="only the first N queries of the split")
    return p
