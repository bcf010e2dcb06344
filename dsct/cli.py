"""``python -m dsct``: translate one image, a folder of images, or download the weights.

Every TranslationConfig field is a flag of the same name (kebab-case); a flag left out keeps the
preset's value. Errors are one line on stderr and exit status 2 (130 on Ctrl-C).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence, get_args

import torch
from tqdm.auto import tqdm

from .config import PRESETS, DType, GeneratorName, ModelConfig, TranslationConfig, preset
from .errors import DSCTError, ImageError

__all__ = ["main", "build_parser"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
SKIP_FLAGS = {"mode"}  # decided by --text / --style


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (default: the preset's value, shown as text / image)")
    for f in dataclasses.fields(TranslationConfig):
        if f.name in SKIP_FLAGS:
            continue
        text_v, image_v = getattr(PRESETS["text"], f.name), getattr(PRESETS["image"], f.name)
        help_ = f"{f.metadata['help']} [{text_v} / {image_v}]"
        if f.type == "bool":
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            choices = get_args(TranslationConfig.__annotations__[f.name]) if kind is str else None
            group.add_argument(_flag(f.name), type=kind, choices=choices or None, default=argparse.SUPPRESS, help=help_)


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models")
    group.add_argument("--tiny", action="store_true", help="tiny random models: tries the pipeline without weights; the output is NOT a meaningful picture")
    group.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    group.add_argument("--dtype", default="auto", choices=get_args(DType), help="compute dtype; auto = bf16/fp16 on CUDA, fp32 on CPU")
    group.add_argument("--generator", default="imagenet", choices=get_args(GeneratorName), help="diffusion model: ImageNet 256 or FFHQ faces (adds the identity loss)")
    group.add_argument("--clip-models", nargs="+", default=None, metavar="NAME", help="CLIP ensemble for text mode (default: the five OpenAI models)")
    group.add_argument("--grad-checkpointing", action="store_true", help="recompute UNet activations in the backward pass: less GPU memory, slower")
    for name in ("unet", "vit", "arcface"):
        group.add_argument(f"--{name}-path", default=None, help=f"local {name} checkpoint instead of the registry download")


def _add_guidance_flags(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--text", help="target text, e.g. 'Black Leopard' (text mode)")
    target.add_argument("--style", type=Path, help="style image (image mode)")
    parser.add_argument("--source-text", help="what the source shows, e.g. 'Lion' (text mode)")
    parser.add_argument("--fast", action="store_true", help="the fast preset: fewer steps and repeats, a weaker change")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="explicit seeds, one per sample (overrides --seed/--samples)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dsct", description="DiffuseIT image translation (text- or style-guided).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter
    one = sub.add_parser("translate", help="translate one image", formatter_class=fmt)
    one.add_argument("source", type=Path, help="source image")
    one.add_argument("-o", "--output", type=Path, required=True, help="output PNG; further samples get -2, -3 … suffixes")
    many = sub.add_parser("batch", help="translate every image of a folder (resumes where it stopped)", formatter_class=fmt)
    many.add_argument("input_dir", type=Path, help="folder of source images")
    many.add_argument("-o", "--output-dir", type=Path, required=True, help="folder for outputs and results.jsonl / results.csv")
    for p in (one, many):
        _add_guidance_flags(p)
        _add_config_flags(p)
        _add_model_flags(p)
    dl = sub.add_parser("download", help="fetch and verify the weights ahead of time", formatter_class=fmt)
    dl.add_argument("--names", nargs="+", default=None, help="registry names (default: all)")
    dl.add_argument("--list", action="store_true", help="list the registry and exit")
    return parser


def _configs(args: argparse.Namespace) -> tuple[ModelConfig, TranslationConfig]:
    mode = "image" if args.style is not None else "text"
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TranslationConfig) if hasattr(args, f.name)}
    config = preset(mode, fast=args.fast, generator=args.generator, **overrides)
    model_kw = dict(generator=args.generator, load_clip=mode == "text", load_arcface=config.lambda_id > 0, tiny=args.tiny,
                    dtype=args.dtype, grad_checkpointing=args.grad_checkpointing,
                    unet_path=args.unet_path, vit_path=args.vit_path, arcface_path=args.arcface_path)
    if args.clip_models:
        model_kw["clip_models"] = tuple(args.clip_models)
    return ModelConfig(**model_kw), config


def _device(name: str) -> torch.device | None:
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise DSCTError(f"--device {name!r} is not a device name (auto, cpu, cuda, cuda:N)") from e
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DSCTError(f"--device {name}: no CUDA GPU is available here; use --device cpu (slow: see README figures)")
        if device.index is not None and device.index >= count:
            raise DSCTError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return device


def _run(args: argparse.Namespace, sources: list[Path]):
    """Load models once, then yield (source, results or the ImageError that source raised)."""
    from .hub import load_models
    from .pipeline import translate

    model_cfg, config = _configs(args)
    for path in (*sources, args.style):
        if path is not None and not path.is_file():
            raise DSCTError(f"image file not found: {path}")
    models = load_models(model_cfg, _device(args.device))
    if models.tiny:
        print("note: tiny random models — outputs are not meaningful pictures", file=sys.stderr)
    for source in sources:
        try:
            yield source, translate(models, source, text=args.text, source_text=args.source_text, style=args.style,
                                    config=config, seeds=args.seeds, progress=not args.quiet)
        except ImageError as e:  # this source is unusable; a batch goes on with the next one
            yield source, e


def _numbered(path: Path, rank: int) -> Path:
    """OUT.png for the best sample, OUT-2.png … for the others; PNG when no suffix is given."""
    path = path if path.suffix else path.with_suffix(".png")
    return path if rank == 1 else path.with_name(f"{path.stem}-{rank}{path.suffix}")


def _record(source: Path, output: Path, r) -> dict:
    return {"source": source.name, "output": output.name, "rank": r.rank, "seed": r.seed, "content_score": r.content_score,
            "target_score": r.target_score, "restarts": r.restarts, "tiny": r.tiny, **{f"loss_{k}": v for k, v in r.terms.items()}}


def _cmd_translate(args: argparse.Namespace) -> int:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for source, results in _run(args, [args.source]):
        if isinstance(results, ImageError):
            raise results
        for r in results:
            path = _numbered(args.output, r.rank)
            try:
                r.image.save(path)  # the format follows the suffix
            except (ValueError, OSError) as e:
                raise DSCTError(f"cannot write {path}: {e}") from e
            print(json.dumps(_record(source, path, r)))
    return 0


def _write_csv(rows: list[dict], path: Path) -> None:
    names = sorted({k for row in rows for k in row}, key=lambda k: (k.startswith("loss_"), k))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)


def _cmd_batch(args: argparse.Namespace) -> int:
    if not args.input_dir.is_dir():
        raise DSCTError(f"input folder not found: {args.input_dir}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    log = args.output_dir / "results.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    done = {row["source"] for row in rows if "error" in row or (args.output_dir / row["output"]).exists()}
    inputs = sorted(p for p in args.input_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    sources = [p for p in inputs if p.name not in done]
    if not sources:
        print(f"nothing to do: {len(done)} image(s) already translated in {args.output_dir}", file=sys.stderr)
    stems = Counter(p.stem for p in inputs)  # a stem shared by two images keeps its suffix in the output name
    with log.open("a") as fh:
        for source, results in tqdm(_run(args, sources), total=len(sources), desc="images", disable=args.quiet):
            if isinstance(results, ImageError):  # recorded, so a resumed run does not stop on it again
                new = [{"source": source.name, "output": "", "error": str(results)}]
                print(f"skipped {source.name}: {results}", file=sys.stderr)
            else:
                name = source.stem if stems[source.stem] == 1 else f"{source.stem}.{source.suffix.lstrip('.')}"
                new = []
                for r in results:
                    out = args.output_dir / f"{name}-{r.rank}.png"
                    r.image.save(out, format="PNG")
                    new.append(_record(source, out, r))
            rows += new
            fh.writelines(json.dumps(row) + "\n" for row in new)
            fh.flush()
    _write_csv(rows, args.output_dir / "results.csv")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from . import hub

    if args.list:
        for name, entry in hub.WEIGHTS.items():
            print(f"{name}\t{entry.repo_id}/{entry.filename}\t{entry.size_bytes / 1e6:.0f} MB\t{entry.env_var}")
        return 0
    for name, path in hub.download(args.names).items():
        print(f"{name}\t{path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("translate", "batch") and args.text is not None and not args.source_text:
            raise DSCTError("--source-text is required with --text: say what the source shows, e.g. --source-text 'Lion'")
        return {"translate": _cmd_translate, "batch": _cmd_batch, "download": _cmd_download}[args.command](args)
    except DSCTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, torch.OutOfMemoryError) as e:
        print(f"error: out of memory ({type(e).__name__}): lower --samples, --size or --max-long-side, "
              "or add --grad-checkpointing", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
