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
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import eval as metrics
from .batch import LOG_NAME, read_log, read_prompts, write_atomic
from .errors import DSCTError, ImageError, WeightsNotFound
from .images import fit_to, load_image

__all__ = [
    "FID_SIZE", "INCEPTION_FILE", "ALEXNET_FILE", "fid_crop", "missing_weights", "load_inception", "inception_features",
    "load_lpips", "lpips_distances", "read_stats", "save_stats", "read_classes", "flexit_prompts", "add_parser", "run",
]

FID_SIZE = 256  # FlexIT: short side 256, centre crop 256; the network itself then resizes to 299
INCEPTION_FILE = ("pt_inception-2015-12-05-6726825d.pth",
                  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth")
ALEXNET_FILE = ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth")
EVAL_CLIP = "ViT-B-32-quickgelu"  # CLIPScore's model
CLIPSCORE_PROMPT = "A photo depicts {}"  # Hessel et al.'s prefix
STATS_FORMAT = "dsct-reference-stats-1"
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
    return lpips.LPIPS(net="alex", version="0.1", verbose=False).to(device).eval()


@torch.no_grad()
def lpips_distances(net: nn.Module, a01: Tensor, b01: Tensor) -> Tensor:
    """(N,) LPIPS between two (N, 3, H, W) batches in 0–1 (``normalize=True`` maps them to −1..1)."""
    device = next(net.parameters()).device
    return net(a01.to(device), b01.to(device), normalize=True).flatten().float().cpu()


def _load_clip(tiny: bool, device: torch.device):
    from .clip import ClipEnsemble, build_clip_models
    if tiny:
        return _seeded(lambda: build_clip_models(("tiny-vit",))).to(device).eval()
    from . import hub
    import open_clip
    model = hub.load_clip_model(hub.CLIP_WEIGHTS[EVAL_CLIP]).to(device).eval()
    return ClipEnsemble([model], [open_clip.get_tokenizer(EVAL_CLIP)], [EVAL_CLIP]).eval()


def _load_dino(tiny: bool, device: torch.device):
    from .vit import DinoFeatures, build_vit
    if tiny:
        vit = _seeded(lambda: build_vit("tiny"))
    else:
        from . import hub
        vit = hub.load_vit("dino_vitb8")
    return DinoFeatures(vit.to(device).eval().requires_grad_(False)).eval()


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    from .hub import TINY_SEED
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return build()


@torch.no_grad()
def _text_embeds(clip, texts: Sequence[str]) -> Tensor:
    """Unit CLIP text embeddings (N, D) of the texts as written (no template averaging)."""
    model = clip.models[0]
    tokens = clip.tokenizers[0](list(texts)).to(next(model.parameters()).device)
    return torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1).cpu()


# --- files --------------------------------------------------------------------------------

def save_stats(path: Path, stats: metrics.RefStats) -> None:
    """Reference statistics as a plain dict of tensors, strings and ints (readable with weights_only=True)."""
    payload = {"format": STATS_FORMAT, "mean": stats.mean, "class_means": stats.class_means, "counts": stats.counts}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(path, lambda fh: fh.write(buffer.getvalue()))


def read_stats(path: Path) -> metrics.RefStats:
    """Our statistics file, or FlexIT's published ``inception_stats_256.pt`` (keys mean / std / classwise,
    classes by ImageNet index), read with ``weights_only=True``: no pickled code runs."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DSCTError(f"cannot read the statistics file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if isinstance(data, dict) and data.get("format") == STATS_FORMAT:
        return metrics.RefStats(data["mean"].double(), {str(k): v.double() for k, v in data["class_means"].items()},
                                data.get("counts"))
    if isinstance(data, dict) and "mean" in data and isinstance(data.get("classwise"), dict):
        return metrics.RefStats(data["mean"].double(), {str(k): v["mean"].double() for k, v in data["classwise"].items()}, None)
    raise DSCTError(f"{path} is neither a statistics file of `dsct eval stats` nor FlexIT's inception_stats_256.pt")


def _read_csv(path: Path, what: str) -> list[dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DSCTError(f"cannot read the {what} {path}: {getattr(e, 'strerror', None) or e}") from e
    try:
        return list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise DSCTError(f"cannot read the {what} {path}: {e}") from e


def read_classes(path: Path) -> dict[str, str]:
    """A classes file: columns ``source,class`` (or ``output,class``): file name -> target class label."""
    rows = _read_csv(path, "classes file")
    key = next((k for k in ("source", "output") if rows and k in rows[0]), None)
    if not rows or key is None or "class" not in rows[0]:
        raise DSCTError(f"{path}: a classes file needs a header source,class (or output,class) and one line per image")
    return {r[key].strip(): r["class"].strip() for r in rows if r.get(key, "").strip()}


def flexit_prompts(queries: Path, val_dir: Path, out: Path, *, split: str = "test", limit: int | None = None) -> int:
    """FlexIT's ``queries.csv`` (id, path, source, source_id, target, target_id, is_test) to a dsct benchmark
    folder: ``sources/ID.EXT`` (links to the ImageNet val images), ``prompts.csv`` for ``dsct batch
    --prompts`` and ``classes.csv`` (target class = FlexIT's ImageNet index, as its statistics file keys it).
    Returns the number of queries written."""
    rows = _read_csv(queries, "queries file")
    needed = {"path", "source", "target", "target_id", "is_test"}
    if not rows or not needed <= set(rows[0]):
        raise DSCTError(f"{queries}: not FlexIT's queries.csv (needs columns {', '.join(sorted(needed))})")
    id_column = next(iter(rows[0]))  # the unnamed first column: the query id FlexIT names outputs by
    wanted = {"test": ("True",), "dev": ("False",), "all": ("True", "False")}[split]
    rows = [r for r in rows if r["is_test"] in wanted][:limit]
    (out / "sources").mkdir(parents=True, exist_ok=True)
    prompts, classes = [["source", "source_text", "text"]], [["source", "class"]]
    for r in rows:
        image = val_dir / r["path"]
        if not image.is_file():
            raise DSCTError(f"{image} not found: --imagenet-val must be the ImageNet validation folder with its class folders")
        name = f"{r[id_column]}{image.suffix}"
        link = out / "sources" / name
        if not link.exists():
            try:
                link.symlink_to(image.resolve())
            except OSError:
                shutil.copyfile(image, link)
        prompts.append([name, r["source"], r["target"]])
        classes.append([name, r["target_id"]])
    for file_name, table in (("prompts.csv", prompts), ("classes.csv", classes)):
        text = io.StringIO(newline="")
        csv.writer(text, lineterminator="\n").writerows(table)
        write_atomic(out / file_name, lambda fh, t=text.getvalue(): fh.write(t.encode()))
    return len(rows)


# --- the items evaluated ------------------------------------------------------------------

class Item(NamedTuple):
    """One output to score and what it was asked for."""

    output: Path
    source: Path | None  # the translated photo, where known (--sources or --copy-baseline)
    text: str | None
    source_text: str | None
    style: Path | None
    label: str | None  # target class for CSFID


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DSCTError(f"{folder} is not a folder" if folder.exists() else f"folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _style_path(value: str | None, style_dir: Path | None) -> Path | None:
    if not value:
        return None
    return style_dir / Path(value).name if style_dir is not None else Path(value)


def _batch_items(args: argparse.Namespace) -> tuple[list[Item], list[str]]:
    """The outputs a batch run recorded in results.jsonl, with their requests; notes on what is left out."""
    log = args.folder / LOG_NAME
    if not log.is_file():
        raise DSCTError(f"no {LOG_NAME} in {args.folder}: give the -o folder of a `dsct batch` run, "
                        "or --copy-baseline for a folder of source images")
    rows, problems = read_log(log)
    notes = [f"note: {log}: {len(problems)} unusable line(s) left out"] if problems else []
    errors = [r for r in rows if "error" in r]
    if errors:
        notes.append(f"note: {len(errors)} source(s) recorded as errors have no output and are left out")
    items = []
    for r in (r for r in rows if "error" not in r):
        output = args.folder / r["output"]
        if not output.is_file():
            raise DSCTError(f"{output} is listed in {log} but not there: run the batch again to finish it")
        source = args.sources / r["source"] if args.sources is not None else None
        items.append(Item(output, source, r.get("text"), r.get("source_text"), _style_path(r.get("style"), args.style_dir), None))
    if not items:
        raise DSCTError(f"{log} lists no translated image")
    return items, notes


def _copy_items(args: argparse.Namespace) -> tuple[list[Item], list[str]]:
    """FlexIT's COPY baseline: every source is its own output (its 256 crop is what is scored)."""
    prompts: dict[str, dict[str, str]] = {}
    if args.prompts is not None:
        prompts = {row.source: row.prompts for row in read_prompts(args.prompts)[1]}
    folder = args.prompts.parent if args.prompts is not None else Path(".")
    items = [Item(p, p, prompts.get(p.name, {}).get("text"), prompts.get(p.name, {}).get("source_text"),
                  _style_path(str(folder / prompts[p.name]["style"]) if prompts.get(p.name, {}).get("style") else None,
                              args.style_dir), None)
             for p in _images_in(args.folder)]
    if not items:
        raise DSCTError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {args.folder}")
    return items, []


def _with_classes(items: list[Item], classes: dict[str, str], path: Path) -> list[Item]:
    """Each item's target class by its source's (or output's) file name; a name that matches nothing is an error."""
    known = {i.output.name for i in items} | {i.source.name for i in items if i.source is not None}
    if unknown := [name for name in classes if name not in known]:
        raise DSCTError(f"{path} names {len(unknown)} image(s) that are not outputs or sources here: "
                        f"{', '.join(unknown[:3])}{' …' if len(unknown) > 3 else ''}")
    return [i._replace(label=classes.get(i.source.name if i.source is not None else "", classes.get(i.output.name)))
            for i in items]


def _open(path: Path, what: str) -> Image.Image:
    try:
        return load_image(path, name=f"{what} {path}")
    except ImageError as e:
        raise ImageError(f"{e} (cannot evaluate it)") from e


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
            batch = torch.stack([fid_crop(_open(paths[k], what)) for k in chunk])
            out.append(inception_features(net, batch))
            bar.update(len(chunk))
    return torch.cat(out)


def _pairs(items: Sequence[Item], args: argparse.Namespace, desc: str):
    """(indices, outputs 0–1, sources 0–1) batches of equal-size pairs; the source is fitted to its
    output's size as the translator fitted it (``images.fit_to``)."""
    by_size: dict[tuple[int, int], list[int]] = {}
    loaded = {}
    with _progress(len(items), desc, args.quiet) as bar:
        for k, item in enumerate(items):
            out = _open(item.output, "output")
            loaded[k] = out
            by_size.setdefault(out.size, []).append(k)
        for size, ks in by_size.items():
            for chunk in _chunks(len(ks), args.batch_size):
                idx = [ks[c] for c in chunk]
                outs = torch.stack([_to01(loaded[k]) for k in idx])
                srcs = torch.stack([_to01(fit_to(_open(items[k].source, "source"), *size)) for k in idx])
                yield idx, outs, srcs
                bar.update(len(idx))


def _to01(image: Image.Image) -> Tensor:
    data = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, 3).permute(2, 0, 1).float() / 255.0


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise DSCTError(f"--device {name!r} is not a device name (auto, cpu, cuda, cuda:N)") from e


def _score(items: list[Item], args: argparse.Namespace) -> tuple[dict, list[dict], list[str]]:
    """Every metric the inputs allow: the summary, one row per output, and notes."""
    device, wanted = _device(args.device), set(args.metrics)
    per = [{"output": i.output.name, "source": i.source.name if i.source else "", "class": i.label or ""} for i in items]
    summary: dict = {"outputs": len(items)}
    notes: list[str] = []
    paired = [k for k, i in enumerate(items) if i.source is not None]
    if len(paired) < len(items) and wanted & {"lpips", "clip", "dino"}:
        notes.append("note: LPIPS, CLIP direction and DINO structure need the sources: give --sources (the batch's input folder)")

    if "fid" in wanted:
        _fid_metrics(items, args, device, summary, notes)
    if "lpips" in wanted and paired:
        net = load_lpips(device)
        scale = 100.0 if args.lpips_x100 else 1.0
        for idx, outs, srcs in _pairs([items[k] for k in paired], args, "LPIPS"):
            for k, d in zip(idx, lpips_distances(net, srcs, outs).tolist()):
                per[paired[k]]["lpips"] = scale * d
        summary["lpips"] = _mean([r["lpips"] for r in per if "lpips" in r])
        summary["lpips_scale"] = "x100 (FlexIT)" if args.lpips_x100 else "0-1"
    if "dino" in wanted:
        _dino_metrics(items, paired, per, args, device, summary)
    if "clip" in wanted:
        _clip_metrics(items, per, args, device, summary)
    art_fid_style = summary.pop("_art_fid_style", None)
    if art_fid_style is not None and summary.get("lpips") is not None:  # ArtFID takes LPIPS on its 0–1 scale
        summary["art_fid"] = metrics.art_fid(summary["lpips"] / (100.0 if args.lpips_x100 else 1.0), art_fid_style)
    return summary, per, notes


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fid_metrics(items: list[Item], args: argparse.Namespace, device: torch.device, summary: dict, notes: list[str]) -> None:
    """SFID, CSFID (with counts and sampling floor), and FID / ArtFID's FID to the style images."""
    net = load_inception(device)
    feats = _fid_features(net, [i.output for i in items], "outputs", args)
    if args.stats is not None:
        stats = read_stats(args.stats)
        summary["sfid"] = metrics.sfid(feats, stats.mean)
        labelled = [k for k, i in enumerate(items) if i.label is not None]
        if args.classes is not None and labelled:
            labels = [items[k].label for k in labelled]
            result = metrics.csfid(feats[labelled], labels, stats.class_means)
            counts = sorted(result.counts.values())
            summary["classes"] = len(result.counts)
            summary["outputs_per_class"] = f"{counts[0]}" if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
            ref = [stats.counts[c] for c in result.counts] if stats.counts else []
            summary["reference_per_class"] = (f"{min(ref)}" if ref and min(ref) == max(ref) else f"{min(ref)}-{max(ref)}"
                                              if ref else "unknown (FlexIT's file has no counts)")
            if counts[-1] < 2:
                notes.append("note: CSFID is undefined with one output per class (it measures single images, not "
                             "class distributions); not reported")
            else:
                summary["csfid"] = result.value
                summary["csfid_floor"] = metrics.sampling_floor(feats[labelled], labels)
            summary["csfid_per_class"] = result.per_class
            if len(labelled) < len(items):
                notes.append(f"note: {len(items) - len(labelled)} output(s) have no class in {args.classes}: not in CSFID")
    else:
        notes.append("note: no --stats: SFID and CSFID need reference statistics (`dsct eval stats --ref DIR`, or FlexIT's file)")
    styles = sorted({i.style for i in items if i.style is not None})
    if styles:
        if len(styles) < 2 or len(items) < 2:
            notes.append(f"note: FID to the style images needs at least two images in each set "
                         f"({len(items)} outputs, {len(styles)} style image(s)); not reported")
            return
        style_feats = _fid_features(net, styles, "style images", args)
        out_stats, style_stats = metrics.mean_and_covariance(feats), metrics.mean_and_covariance(style_feats)
        summary["fid_style"] = metrics.frechet_distance(*out_stats, *style_stats)
        if args.artfid_inception is not None:
            art = load_inception(device, args.artfid_inception)
            a = metrics.mean_and_covariance(_fid_features(art, [i.output for i in items], "outputs, art Inception", args))
            b = metrics.mean_and_covariance(_fid_features(art, styles, "style images, art Inception", args))
            summary["_art_fid_style"] = metrics.frechet_distance(*a, *b)


def _dino_metrics(items: list[Item], paired: list[int], per: list[dict], args: argparse.Namespace,
                  device: torch.device, summary: dict) -> None:
    """Structure distance to the source and [CLS] cosine to the style image (DINO ViT-B/8, inputs 0–1)."""
    styled = [k for k, i in enumerate(items) if i.style is not None]
    if not paired and not styled:
        return
    dino = _load_dino(args.tiny, device)
    with torch.no_grad():
        for idx, outs, srcs in _pairs([items[k] for k in paired], args, "DINO structure"):
            d = metrics.structure_distance(dino(outs.to(device)).self_sim, dino(srcs.to(device)).self_sim)
            for k, v in zip(idx, d.tolist()):
                per[paired[k]]["dino_structure"] = v
        style_cls = {p: dino(_to01(_open(p, "style image"))[None].to(device)).cls for p in {items[k].style for k in styled}}
        for k in styled:
            cls = dino(_to01(_open(items[k].output, "output"))[None].to(device)).cls
            per[k]["dino_cls_cosine"] = float(metrics.cls_cosine(cls, style_cls[items[k].style])[0])
    for key in ("dino_structure", "dino_cls_cosine"):
        if values := [r[key] for r in per if key in r]:
            summary[key] = _mean(values)


def _clip_metrics(items: list[Item], per: list[dict], args: argparse.Namespace, device: torch.device, summary: dict) -> None:
    """CLIPScore to the target text, and the directional similarity where the source and its text are known."""
    texted = [k for k, i in enumerate(items) if i.text]
    if not texted:
        return
    clip = _load_clip(args.tiny, device)
    with torch.no_grad():
        for chunk in _chunks(len(texted), args.batch_size):
            ks = [texted[c] for c in chunk]
            outs = [_to01(_open(items[k].output, "output"))[None].to(device) for k in ks]
            out_emb = torch.cat([clip.center_embeddings(x)[0].cpu() for x in outs])
            scores = metrics.clip_score(out_emb, _text_embeds(clip, [CLIPSCORE_PROMPT.format(items[k].text) for k in ks]))
            for k, s in zip(ks, scores.tolist()):
                per[k]["clip_score"] = s
            directed = [(j, k) for j, k in enumerate(ks) if items[k].source is not None and items[k].source_text]
            if directed:
                src_emb = torch.cat([clip.center_embeddings(_to01(fit_to(_open(items[k].source, "source"),
                                     *outs[j].shape[-1:-3:-1]))[None].to(device))[0].cpu() for j, k in directed])
                trg_txt = _text_embeds(clip, [items[k].text for _, k in directed])
                src_txt = _text_embeds(clip, [items[k].source_text for _, k in directed])
                sims = metrics.directional_similarity(src_emb, out_emb[[j for j, _ in directed]], src_txt, trg_txt)
                for (_, k), s in zip(directed, sims.tolist()):
                    per[k]["clip_direction"] = s
    for key in ("clip_score", "clip_direction"):
        if values := [r[key] for r in per if key in r]:
            summary[key] = _mean(values)


# --- output -------------------------------------------------------------------------------

LABELS = {
    "outputs": "outputs", "sfid": "SFID", "csfid": "CSFID", "csfid_floor": "CSFID sampling floor (≈ mean tr Σ_c / n_c)",
    "classes": "target classes", "outputs_per_class": "outputs per class", "reference_per_class": "reference images per class",
    "lpips": "LPIPS (AlexNet v0.1)", "clip_score": "CLIPScore (w=2.5)", "clip_direction": "CLIP directional similarity",
    "dino_structure": "DINO structure distance", "dino_cls_cosine": "DINO [CLS] cosine to the style",
    "fid_style": "FID to the style images", "art_fid": "ArtFID",
}


def _table(summary: dict) -> str:
    lines = []
    for key, label in LABELS.items():
        if key in summary and summary[key] is not None:
            value = summary[key]
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            if key == "lpips":
                text += f"  ({summary['lpips_scale']})"
            lines.append(f"{label:<44} {text}")
    return "\n".join(lines)


def _write(out: Path, summary: dict, per: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=2, allow_nan=False, default=str) + "\n"
    write_atomic(out / "metrics.json", lambda fh: fh.write(text.encode()))
    names = list(dict.fromkeys(k for row in per for k in row))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=names)
    writer.writeheader()
    writer.writerows(per)
    write_atomic(out / "metrics.csv", lambda fh: fh.write(table.getvalue().encode()))


# --- sub-actions --------------------------------------------------------------------------

def _cmd_stats(args: argparse.Namespace) -> int:
    if args.ref is None or args.output_dir is None:
        raise DSCTError("eval stats needs --ref DIR (class sub-folders of reference images) and -o FILE.pt")
    if not args.ref.is_dir():
        raise DSCTError(f"--ref {args.ref}: folder not found")
    folders = sorted(p for p in args.ref.iterdir() if p.is_dir())
    paths, labels = [], []
    for index, folder in enumerate(folders):
        for p in _images_in(folder):
            paths.append(p)
            labels.append(str(index) if args.class_index else folder.name)
    if not paths:
        raise DSCTError(f"no images in class sub-folders of {args.ref}")
    net = load_inception(_device(args.device))
    stats = metrics.reference_stats(_fid_features(net, paths, "reference", args), labels)
    save_stats(args.output_dir, stats)
    print(f"{args.output_dir}: {len(paths)} images, {len(stats.class_means)} classes")
    return 0


def _cmd_flexit(args: argparse.Namespace) -> int:
    if args.queries is None or args.imagenet_val is None or args.output_dir is None:
        raise DSCTError("eval flexit needs --queries queries.csv, --imagenet-val DIR and -o DIR")
    n = flexit_prompts(args.queries, args.imagenet_val, args.output_dir, split=args.split, limit=args.limit)
    print(f"{args.output_dir}: {n} queries (sources/, prompts.csv, classes.csv)")
    return 0


def run(args: argparse.Namespace) -> int:
    """``python -m dsct eval``: dispatch to the sub-action named by the first argument."""
    if not 1 <= args.batch_size <= 1024:
        raise DSCTError(f"--batch-size {args.batch_size} is out of range: give 1 to 1024")
    if str(args.folder) == "stats":
        return _cmd_stats(args)
    if str(args.folder) == "flexit":
        return _cmd_flexit(args)
    if args.copy_baseline and args.output_dir is None:
        raise DSCTError("--copy-baseline scores the source folder itself: give -o DIR for metrics.json and metrics.csv")
    items, notes = (_copy_items if args.copy_baseline else _batch_items)(args)
    if args.classes is not None:
        items = _with_classes(items, read_classes(args.classes), args.classes)
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


def add_parser(sub, formatter_class) -> argparse.ArgumentParser:
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
