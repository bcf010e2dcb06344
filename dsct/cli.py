"""``python -m dsct``: translate one image, a folder of images, or download the weights.

Every TranslationConfig field is a flag of the same name (kebab-case); a flag left out keeps the
preset's value. Everything that needs no model (settings, prompts, images, output names) is
checked before the models load. Errors are one line on stderr and exit status 2 (130 on Ctrl-C).
Batch bookkeeping (resume, atomic writes) lives in ``batch.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Sequence, get_args

import torch
from PIL import Image
from tqdm.auto import tqdm

from . import hub
from .batch import (
    CSV_NAME, LOG_NAME, ResumePlan, append_rows, image_format, output_stems, plan_resume, read_log, save_image, write_csv,
    write_log,
)
from .config import PRESETS, DType, GeneratorName, ModelConfig, TranslationConfig, preset
from .errors import DSCTError, ImageError
from .images import MIN_SIDE
from .pipeline import Request, Result, check_request, translate

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
    many.add_argument("--retry-errors", action="store_true",
                      help="translate again the sources recorded as errors (by default a resumed run skips them)")
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


def _make_dir(path: Path) -> None:
    """Create an output folder, or say in one line why it cannot be one."""
    if path.exists() and not path.is_dir():
        raise DSCTError(f"{path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DSCTError(f"cannot create the folder {path}: {e.strerror or e}") from e


def _check_file(path: Path, name: str) -> None:
    """Say what a path that is not a file is (a folder, a broken link, nothing), not just "not found"."""
    if path.is_file():
        return
    if path.is_dir():
        raise ImageError(f"{name}: {path} is a folder, not an image file")
    if path.is_symlink():
        raise ImageError(f"{name}: {path} is a broken link (to {os.readlink(path)}, which does not exist)")
    raise ImageError(f"{name}: {path} is not a regular file" if path.exists() else f"{name}: file not found: {path}")


def _check_inputs(args: argparse.Namespace, config: TranslationConfig, source: Path | None) -> Request:
    """Prompts, the style image and (translate) the source, checked and decoded before any model loads.

    A batch passes no source: a blank stand-in takes its place here, and each source is checked
    when its turn comes, so that one unusable file becomes an error row instead of stopping the batch.
    """
    for path, name in ((source, "source image"), (args.style, "style image")):
        if path is not None:
            _check_file(path, name)
    stand_in = Image.new("RGB", (MIN_SIDE, MIN_SIDE))
    return check_request(config, source if source is not None else stand_in, text=args.text,
                         source_text=args.source_text, style=args.style)


def _load_models(args: argparse.Namespace, model_cfg: ModelConfig) -> hub.Models:
    """The networks, once: called only after every check that needs no model has passed."""
    models = hub.load_models(model_cfg, _device(args.device))
    if models.tiny:
        print("note: tiny random models — outputs are not meaningful pictures", file=sys.stderr)
    return models


def _translate(models: hub.Models, request: Request, source: Image.Image | Path, config: TranslationConfig,
               args: argparse.Namespace) -> list[Result]:
    """``pipeline.translate`` with the checked prompts and the style image decoded once."""
    return translate(models, source, text=request.text, source_text=request.source_text, style=request.style,
                     config=config, seeds=args.seeds, progress=not args.quiet)


def _numbered(path: Path, rank: int) -> Path:
    """OUT.png for the best sample, OUT-2.png … for the others; PNG when no suffix is given."""
    path = path if path.suffix else path.with_suffix(".png")
    return path if rank == 1 else path.with_name(f"{path.stem}-{rank}{path.suffix}")


def _record(source: Path, output: Path, r: Result) -> dict:
    """One output's row: what translate prints and what batch logs (``source`` first: batch.py reads it)."""
    return {"source": source.name, "output": output.name, "rank": r.rank, "seed": r.seed, "content_score": r.content_score,
            "target_score": r.target_score, "restarts": r.restarts, "tiny": r.tiny, **{f"loss_{k}": v for k, v in r.terms.items()}}


def _cmd_translate(args: argparse.Namespace) -> int:
    model_cfg, config = _configs(args)
    request = _check_inputs(args, config, args.source)
    image_format(_numbered(args.output, 1))  # an unknown suffix is refused before the work, not after it
    _make_dir(args.output.parent)
    for r in _translate(_load_models(args, model_cfg), request, request.source, config, args):
        path = _numbered(args.output, r.rank)
        save_image(r.image, path)
        print(json.dumps(_record(args.source, path, r)))
    return 0


def _list_inputs(folder: Path) -> list[Path]:
    """The folder's entries with an image suffix, sorted; folders and broken links among them stay,
    to be recorded as errors."""
    if not folder.is_dir():
        raise DSCTError(f"{folder} is a file, not a folder of images (use translate for one image)" if folder.exists()
                        else f"input folder not found: {folder}")
    try:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as e:
        raise DSCTError(f"cannot list {folder}: {e.strerror or e}") from e


def _resume(args: argparse.Namespace, inputs: list[Path], samples: int) -> ResumePlan:
    """Read the log back, report the lines it cannot use, decide what to redo, and rewrite the log
    with only the rows kept (so appending starts after a whole line)."""
    log = args.output_dir / LOG_NAME
    rows, problems = read_log(log)
    if problems:
        lines = ", ".join(str(p.line) for p in problems)
        reasons = "; ".join(sorted({p.reason for p in problems}))
        print(f"warning: {log}: dropped line{'s' * (len(problems) > 1)} {lines} ({reasons}); "
              "the images they were about are translated again", file=sys.stderr)
    present = {p.name for p in args.output_dir.iterdir() if p.is_file()}
    plan = plan_resume(rows, problems, [p.name for p in inputs], present, samples=samples, retry_errors=args.retry_errors)
    write_log(log, plan.rows)
    return plan


def _resume_note(plan: ResumePlan, inputs: list[Path], args: argparse.Namespace) -> str | None:
    """What a run found already done; failures are counted apart, with the flag that retries them."""
    if not inputs:
        return f"nothing to do: no images ({', '.join(IMAGE_SUFFIXES)}) in {args.input_dir}"
    if not plan.translated and not plan.failed:
        return None
    found = f"{plan.translated} translated"
    if plan.failed:
        found += f", {plan.failed} recorded as error (use --retry-errors)"
    lead = f"{len(plan.todo)} to translate" if plan.todo else "nothing to do"
    return f"{lead} in {args.output_dir}: already {found}"


def _batch_source(models: hub.Models, request: Request, config: TranslationConfig, args: argparse.Namespace,
                  source: Path, stem: str) -> list[dict]:
    """Translate one source of a batch and save its outputs; an unusable file becomes an error row."""
    try:
        _check_file(source, "source image")
        results = _translate(models, request, source, config, args)
    except ImageError as e:  # recorded, so a resumed run does not stop on it again
        print(f"skipped {source.name}: {e}", file=sys.stderr)
        return [{"source": source.name, "output": "", "error": str(e)}]
    rows = []
    for r in results:
        path = args.output_dir / f"{stem}-{r.rank}.png"
        save_image(r.image, path)
        rows.append(_record(source, path, r))
    return rows


def _cmd_batch(args: argparse.Namespace) -> int:
    inputs = _list_inputs(args.input_dir)
    model_cfg, config = _configs(args)
    request = _check_inputs(args, config, None)
    _make_dir(args.output_dir)
    plan = _resume(args, inputs, samples=len(args.seeds) if args.seeds else config.samples)
    if note := _resume_note(plan, inputs, args):
        print(note, file=sys.stderr)
    rows, todo = list(plan.rows), set(plan.todo)
    sources = [p for p in inputs if p.name in todo]
    if sources:
        models = _load_models(args, model_cfg)
        stems = output_stems([p.name for p in inputs])  # a stem shared by two images keeps its suffix
        for source in tqdm(sources, desc="images", disable=args.quiet):
            new = _batch_source(models, request, config, args, source, stems[source.name])
            append_rows(args.output_dir / LOG_NAME, new)
            rows += new
    write_csv(args.output_dir / CSV_NAME, rows)
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
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
