"""``python -m dsct``: translate one image, a folder of images, or download the weights.

Every TranslationConfig field is a flag of the same name (kebab-case); a flag left out keeps the
preset's value. Everything that needs no model (settings, prompts, images, output names) is
checked before the models load. Errors are one line on stderr and exit status 2 (130 on Ctrl-C).
Batch bookkeeping (resume, atomic writes, prompts files) lives in ``batch.py``; under torchrun
the batch's sources are split across the ranks (``distributed.py``); rank 0 reports every rank's
progress and writes the tables.
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

from . import distributed, evaluate, hub
from .batch import (
    CSV_NAME, LOG_NAME, PromptRow, ResumePlan, append_rows, image_format, in_order, output_stems, plan_resume, rank_beat,
    rank_beats, rank_log, rank_logs, read_log, read_prompts, save_image, size_groups, write_csv, write_log,
)
from .config import (
    AGG_ONLY, AGG_PRESETS, DIFFUSEIT_ONLY, PRESETS, SIZE_MULTIPLE, DType, GeneratorName, Mode, ModelConfig, StepCapture,
    TranslationConfig, preset,
)
from .errors import DSCTError, ImageError
from .images import MIN_SIDE, load_image, working_size
from .pipeline import Job, Request, Result, check_request, translate, translate_many

__all__ = ["main", "build_parser"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MAX_IMAGES_PER_BATCH = 32
EXIF_ORIENTATION = 0x0112  # values 5–8 turn the picture a quarter: width and height swap
SKIP_FLAGS = {"mode"}  # decided by --text / --style (or the prompts file's columns)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's example lines as written, and says "(default: X)" only where X tells the reader
    something: never on a required flag, nor for None, a suppressed default or a switch that is off, nor
    where the help already says its default in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        default = action.default
        silent = default is None or default is False or default == argparse.SUPPRESS
        if not action.option_strings or action.required or silent or "(default" in help_:
            return help_
        return f"{help_} (default: %(default)s)"


VALUES_NOTE = ("A flag left out keeps the preset's value. Each setting shows its preset values as\n"
               "[text / image; fast text / image; agg text / image / faces], the parts that apply:\n"
               "the fast pair where it differs, AGG's three where AGG reads the setting and they differ.")


def _preset_values(name: str) -> str:
    """A setting's values in every preset, compact: DiffuseIT's text / image, the fast pair where it differs,
    and AGG's three where AGG reads the setting and they differ (a setting one method alone reads shows that
    method's values only)."""
    full = [getattr(PRESETS[p], name) for p in ("text", "image")]
    fast = [getattr(PRESETS[p], name) for p in ("text-fast", "image-fast")]
    agg = [getattr(AGG_PRESETS[p], name) for p in ("text", "image", "faces")]
    parts = []
    if name not in AGG_ONLY:
        parts.append(" / ".join(map(str, full)))
        if fast != full:
            parts.append("fast " + " / ".join(map(str, fast)))
    if name not in DIFFUSEIT_ONLY and name != "method" and (name in AGG_ONLY or agg != [*full, full[0]]):
        parts.append("agg " + " / ".join(map(str, agg)))
    return "[" + "; ".join(parts) + "]"


def _only(name: str) -> str:
    """The words that say which method alone reads a setting (the other refuses it when changed)."""
    if name in DIFFUSEIT_ONLY:
        return " (DiffuseIT only)"
    return " (AGG only)" if name in AGG_ONLY else ""


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings", VALUES_NOTE)
    for f in dataclasses.fields(TranslationConfig):
        if f.name in SKIP_FLAGS:
            continue
        help_ = f"{f.metadata['help']}{_only(f.name)} {_preset_values(f.name)}"
        if f.type == "bool":
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            choices = get_args(TranslationConfig.__annotations__[f.name]) if kind is str else None
            metavar = "{random,auto,0-999}" if f.name == "class_label" else None
            group.add_argument(_flag(f.name), type=kind, choices=choices or None, default=argparse.SUPPRESS, help=help_,
                               metavar=metavar)


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models")
    group.add_argument("--tiny", action="store_true", help="tiny random models: tries the pipeline without weights; the output is NOT a meaningful picture")
    group.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    group.add_argument("--dtype", default="auto", choices=get_args(DType), help="compute dtype; auto = bf16/fp16 on CUDA, fp32 on CPU")
    group.add_argument("--generator", default="imagenet", choices=get_args(GeneratorName), help="diffusion model: imagenet for any photo, ffhq for aligned face portraits (keeps the identity), "
                       "imagenet512 for 512-pixel results (4× the pixels, about 1.5× the time per step; class-conditional, "
                       "see --class-label; its 2.2 GB file is not in the default download)")
    group.add_argument("--clip-models", nargs="+", default=None, metavar="NAME", help="CLIP ensemble for text mode (default: the five OpenAI models)")
    group.add_argument("--grad-checkpointing", action="store_true", help="recompute UNet activations in the backward pass: less GPU memory, slower")
    group.add_argument("--step-capture", default="eager", choices=get_args(StepCapture),
                       help="run each guided step eagerly, as a CUDA graph (CUDA only) or compiled whole (README: Captured steps)")
    for name in ("unet", "vit", "arcface"):
        group.add_argument(f"--{name}-path", default=None, help=f"local {name} checkpoint instead of the registry download")


def _add_guidance_flags(parser: argparse.ArgumentParser, *, required: bool) -> None:
    target = parser.add_mutually_exclusive_group(required=required)
    target.add_argument("--text", help="what the photo should become, e.g. 'Black Leopard' (text mode)")
    target.add_argument("--style", type=Path, help="style image whose look to take on (image mode)")
    parser.add_argument("--source-text", help="what the photo shows, e.g. 'Lion' (text mode; needed with --text)")
    parser.add_argument("--fast", action="store_true", help="the fast preset: about half the steps and fewer repeats, a weaker change (DiffuseIT only)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="explicit seeds, one per sample (overrides --seed/--samples)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


# Shown under --help as written (RawDescription); run from the repository root, where examples/ is.
TRANSLATE_EXAMPLES = """examples:
  # text mode: the cat becomes a black leopard
  python -m dsct translate examples/cat.png --text 'Black Leopard' --source-text 'Cat' -o leopard.png
  # image mode: the cat in the look of the Hubble picture, the fast preset
  python -m dsct translate examples/cat.png --style examples/hubble.png -o cat-hubble.png --fast
  # AGG instead of DiffuseIT, two samples
  python -m dsct translate examples/cat.png --method agg --text 'Black Leopard' --source-text 'Cat' -o leopard-agg.png --samples 2
  # at 512 pixels (ImageNet 512 generator), holding the class closest to the text
  python -m dsct translate examples/cat.png --text 'Black Leopard' --source-text 'Cat' -o leopard-512.png --generator imagenet512 --class-label auto
  # tiny random models: checks the setup in seconds, the picture is not meaningful
  python -m dsct translate examples/cat.png --text 'Tiger' --source-text 'Cat' -o tiger.png --tiny --fast --size 64
"""
BATCH_EXAMPLES = """examples:
  # text mode: every photo of photos/, two samples each
  python -m dsct batch photos/ --text 'Black Leopard' --source-text 'Lion' -o out/ --samples 2
  # image mode: one style image for every photo, four photos per GPU batch
  python -m dsct batch photos/ --style examples/hubble.png -o out-hubble/ --images-per-batch 4
  # AGG instead of DiffuseIT
  python -m dsct batch photos/ --method agg --style examples/hubble.png -o out-agg/
  # each photo its own prompts (prompts.csv: source,source_text,text), tiny models to check the setup
  python -m dsct batch photos/ --prompts prompts.csv -o out-tiny/ --tiny --fast --size 64
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dsct", formatter_class=_HelpFormatter,
                                     description="Translate a photo, keeping its layout: guided by a text or a style image,\n"
                                                 "with DiffuseIT (default) or AGG (--method agg).")
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = _HelpFormatter
    one = sub.add_parser("translate", help="translate one image", formatter_class=fmt, epilog=TRANSLATE_EXAMPLES)
    one.add_argument("source", type=Path, help="source image")
    one.add_argument("-o", "--output", type=Path, required=True, help="output PNG; further samples get -2, -3 … suffixes")
    many = sub.add_parser("batch", help="translate every image of a folder (resumes where it stopped)", formatter_class=fmt,
                          epilog=BATCH_EXAMPLES)
    many.add_argument("input_dir", type=Path, help="folder of source images")
    many.add_argument("-o", "--output-dir", type=Path, required=True, help="folder for outputs and results.jsonl / results.csv")
    many.add_argument("--retry-errors", action="store_true",
                      help="translate again the sources recorded as errors (by default a resumed run skips them)")
    many.add_argument("--prompts", type=Path, default=None, metavar="FILE.csv",
                      help="each listed source's own prompts, columns source,source_text,text (text mode) or source,style "
                           "(image mode, paths relative to the CSV's folder); only listed sources are translated. "
                           "Instead of --text/--source-text/--style")
    many.add_argument("--images-per-batch", type=int, default=1, metavar="N",
                      help=f"translate up to N sources of one working size together, N × samples rows per step "
                           f"(1 to {MAX_IMAGES_PER_BATCH}): faster where the GPU has memory to spare; a batch that runs "
                           "out of memory is split. Same N, same outputs, whatever the number of processes")
    for p in (one, many):
        _add_guidance_flags(p, required=p is one)
        _add_config_flags(p)
        _add_model_flags(p)
    dl = sub.add_parser("download", help="fetch and verify the weights ahead of time", formatter_class=fmt)
    dl.add_argument("--names", nargs="+", default=None, help="registry names (default: all but the opt-in "
                    f"{', '.join(n for n, e in hub.WEIGHTS.items() if e.opt_in)}; --list shows them)")
    dl.add_argument("--list", action="store_true", help="list the registry and exit")
    dl.add_argument("generators", nargs="*", metavar="GENERATOR", default=[],
                    help=f"fetch every file a generator needs instead ({', '.join(get_args(GeneratorName))}); e.g. "
                         "imagenet512, the opt-in 512 model")
    evaluate.add_parser(sub, fmt)
    return parser


def _mode(args: argparse.Namespace) -> Mode:
    return "image" if args.style is not None else "text"


def _configs(args: argparse.Namespace, mode: Mode) -> tuple[ModelConfig, TranslationConfig]:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TranslationConfig) if hasattr(args, f.name)}
    config = preset(mode, fast=args.fast, generator=args.generator, **overrides)
    model_kw = dict(generator=args.generator, load_clip=mode == "text", load_arcface=config.lambda_id > 0, tiny=args.tiny,
                    dtype=args.dtype, grad_checkpointing=args.grad_checkpointing, step_capture=args.step_capture,
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


def _check_inputs(config: TranslationConfig, source: Path | None, *, text: str | None, source_text: str | None,
                  style: Path | None) -> Request:
    """Prompts, the style image and (translate) the source, checked and decoded before any model loads.

    A batch passes no source: a blank stand-in takes its place here, and each source is checked
    when its turn comes, so that one unusable file becomes an error row instead of stopping the batch.
    """
    for path, name in ((source, "source image"), (style, "style image")):
        if path is not None:
            _check_file(path, name)
    stand_in = Image.new("RGB", (MIN_SIDE, MIN_SIDE))
    return check_request(config, source if source is not None else stand_in, text=text, source_text=source_text, style=style)


def _load_models(model_cfg: ModelConfig, device: torch.device | None, *, note: bool = True) -> hub.Models:
    """The networks, once: called only after every check that needs no model has passed."""
    models = hub.load_models(model_cfg, device)
    if models.tiny and note:
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
            "target_score": r.target_score, "restarts": r.restarts, "tiny": r.tiny, "class_label": r.class_label, **{f"loss_{k}": v for k, v in r.terms.items()}}


def _asked(config: TranslationConfig, request: Request, args: argparse.Namespace, source: Path) -> dict:
    """What a row adds for ``dsct eval`` (translate prints it too): the method and the request (texts, or the
    style image's path as given)."""
    if request.style is None:
        return {"method": config.method, "source_text": request.source_text, "text": request.text}
    style = args.style if args.style is not None else args.prompts.parent / args.styles[source.name]
    return {"method": config.method, "style": str(style)}


def _cmd_translate(args: argparse.Namespace) -> int:
    model_cfg, config = _configs(args, _mode(args))
    request = _check_inputs(config, args.source, text=args.text, source_text=args.source_text, style=args.style)
    image_format(_numbered(args.output, 1))  # an unknown suffix is refused before the work, not after it
    _make_dir(args.output.parent)
    for r in _translate(_load_models(model_cfg, _device(args.device)), request, request.source, config, args):
        path = _numbered(args.output, r.rank)
        save_image(r.image, path)
        print(json.dumps({**_record(args.source, path, r), **_asked(config, request, args, args.source)}))
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
    """Read the log back (with the per-rank logs a killed torchrun run left), report the lines it
    cannot use, decide what to redo, and rewrite the log with only the rows kept (so appending starts
    after a whole line, and no rank log is left to be read twice)."""
    log = args.output_dir / LOG_NAME
    rows, problems = [], []
    for path in (log, *rank_logs(args.output_dir)):
        more_rows, more_problems = read_log(path)
        if more_problems:
            lines = ", ".join(str(p.line) for p in more_problems)
            reasons = "; ".join(sorted({p.reason for p in more_problems}))
            print(f"warning: {path}: dropped line{'s' * (len(more_problems) > 1)} {lines} ({reasons}); "
                  "the images they were about are translated again", file=sys.stderr)
        rows += more_rows
        problems += more_problems
    present = {p.name for p in args.output_dir.iterdir() if p.is_file()}
    plan = plan_resume(rows, problems, [p.name for p in inputs], present, samples=samples, retry_errors=args.retry_errors)
    write_log(log, plan.rows)
    _remove_rank_logs(args.output_dir)
    _remove(rank_beats(args.output_dir))  # a killed run's: the ranks write theirs after the plan
    return plan


def _remove_rank_logs(folder: Path) -> None:
    """Delete the per-rank logs once their rows are in ``results.jsonl``."""
    _remove(rank_logs(folder))


def _remove(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except OSError as e:
            raise DSCTError(f"cannot remove {path}: {e.strerror or e}") from e


def _resume_note(plan: ResumePlan, inputs: list[Path], args: argparse.Namespace) -> str | None:
    """What a run found already done; failures are counted apart, with the flag that retries them."""
    if not inputs:
        return (f"nothing to do: no sources listed in {args.prompts}" if args.prompts
                else f"nothing to do: no images ({', '.join(IMAGE_SUFFIXES)}) in {args.input_dir}")
    if not plan.translated and not plan.failed:
        return None
    found = f"{plan.translated} translated"
    if plan.failed:
        found += f", {plan.failed} recorded as error (use --retry-errors)"
    lead = f"{len(plan.todo)} to translate" if plan.todo else "nothing to do"
    return f"{lead} in {args.output_dir}: already {found}"


def _prompted(config: TranslationConfig, folder: Path, prompts: dict[str, str]) -> Request:
    """One prompts-file row's prompts checked like the plain form's flags (style paths from ``folder``)."""
    style = prompts.get("style")
    if style is not None and not style.strip():
        raise ImageError("style='' is not allowed: name a style image")
    return _check_inputs(config, None, text=prompts.get("text"), source_text=prompts.get("source_text"),
                         style=None if style is None else folder / style.strip())


def _batch_jobs(args: argparse.Namespace, config: TranslationConfig, rows: list[PromptRow] | None,
                ) -> tuple[list[Path], dict[str, Request | DSCTError], str | None]:
    """The batch's sources, each one's checked prompts (the error that makes its row unusable,
    recorded later as its error row), and a note on images the prompts file leaves out."""
    folder = _list_inputs(args.input_dir)
    if rows is None:
        request = _check_inputs(config, None, text=args.text, source_text=args.source_text, style=args.style)
        return folder, dict.fromkeys((p.name for p in folder), request), None
    jobs: dict[str, Request | DSCTError] = {}
    checked: dict[tuple[str, ...], Request] = {}  # rows with the same prompts share one decoded style image
    for row in rows:
        try:
            if row.problem:
                raise ImageError(row.problem)
            _check_file(args.input_dir / row.source, "source image")
            key = tuple(row.prompts.values())
            if key not in checked:
                checked[key] = _prompted(config, args.prompts.parent, row.prompts)
            jobs[row.source] = checked[key]
        except DSCTError as e:  # ConfigError (an empty or bad text) or ImageError
            jobs[row.source] = DSCTError(f"{args.prompts} line {row.line}: {e}")
    unlisted = [p.name for p in folder if p.name not in jobs]
    note = (f"note: {len(unlisted)} image{'s' * (len(unlisted) > 1)} in {args.input_dir} not listed in {args.prompts} "
            f"{'are' if len(unlisted) > 1 else 'is'} left out: {', '.join(unlisted[:3])}{' …' * (len(unlisted) > 3)}"
            if unlisted else None)
    return [args.input_dir / row.source for row in rows], jobs, note


def _error_row(source: Path, error: DSCTError) -> list[dict]:
    """An unusable source's one row, recorded so that a resumed run does not stop on it again (the
    progress line names it on stderr, whichever rank wrote it)."""
    return [{"source": source.name, "output": "", "error": str(error)}]


def _source_size(path: Path, config: TranslationConfig, generator: str) -> tuple[int, int] | None:
    """A source's working size from its header (no decoding), EXIF rotation included; None when it
    cannot be read (the source is then a batch of its own, where its error row is written)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
    except Exception:  # any unreadable header (OSError, a decompression bomb, a broken EXIF block)
        return None
    return working_size(width, height, size=config.size, max_long_side=config.max_long_side,
                        resize_mode=config.resize_mode, multiple=SIZE_MULTIPLE[generator])


def _groups(args: argparse.Namespace, config: TranslationConfig, todo: list[str],
            jobs: dict[str, Request | DSCTError]) -> list[list[str]]:
    """The sources to translate in batches of at most ``--images-per-batch`` of one working size."""
    if args.images_per_batch == 1:
        return [[name] for name in todo]
    sizes = {name: _source_size(args.input_dir / name, config, args.generator) if isinstance(jobs[name], Request) else None
             for name in todo}
    return size_groups(todo, sizes, args.images_per_batch)


def _translate_ready(models: hub.Models, ready: list[tuple[Path, Request, Image.Image]], config: TranslationConfig,
                     args: argparse.Namespace) -> list[list[Result] | ImageError]:
    """``translate_many`` of decoded sources; a batch that runs out of GPU memory, or holds a source it
    cannot take, is split in two and each half tried again. One source alone: its results or its error."""
    try:
        return translate_many(models, [Job(image, r.text, r.source_text, r.style) for _, r, image in ready],
                              config=config, seeds=args.seeds, progress=not args.quiet)
    except (torch.cuda.OutOfMemoryError, ImageError) as e:
        if len(ready) == 1:
            if isinstance(e, ImageError):
                return [e]
            raise
        if isinstance(e, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
            tqdm.write(f"note: {len(ready)} images in one batch ran out of GPU memory; splitting it "
                       "(a smaller --images-per-batch avoids the retry)", file=sys.stderr)
        half = len(ready) // 2
        return _translate_ready(models, ready[:half], config, args) + _translate_ready(models, ready[half:], config, args)


def _batch_group(models: hub.Models | None, jobs: dict[str, Request | DSCTError], group: list[Path],
                 stems: dict[str, str], config: TranslationConfig, args: argparse.Namespace) -> list[list[dict]]:
    """Translate a batch of sources and save their outputs: each source's rows, in the group's order.
    An unusable file or prompt becomes that source's error row; the others go on."""
    rows: dict[str, list[dict]] = {}
    ready: list[tuple[Path, Request, Image.Image]] = []
    for source in group:
        request = jobs[source.name]
        if isinstance(request, DSCTError):
            rows[source.name] = _error_row(source, request)
            continue
        try:
            _check_file(source, "source image")
            ready.append((source, request, load_image(source, name="source image")))
        except ImageError as e:
            rows[source.name] = _error_row(source, e)
    for (source, _, _), results in zip(ready, _translate_ready(models, ready, config, args) if ready else []):
        if isinstance(results, ImageError):
            rows[source.name] = _error_row(source, results)
            continue
        rows[source.name] = []
        for r in results:
            path = args.output_dir / f"{stems[source.name]}-{r.rank}.png"
            save_image(r.image, path)
            rows[source.name].append({**_record(source, path, r), **_asked(config, request, args, source)})
    return [rows[source.name] for source in group]


def _merge(args: argparse.Namespace, sources: list[str]) -> list[dict]:
    """Rank 0, once every rank is done: the rows kept from earlier runs, then this run's rows (the
    ranks' logs too) in source order, whichever rank or batch wrote them first."""
    log, ranked = args.output_dir / LOG_NAME, rank_logs(args.output_dir)
    logged = read_log(log)[0]
    rows = logged + [row for path in ranked for row in read_log(path)[0]]
    todo = set(sources)
    merged = [r for r in rows if r["source"] not in todo] + in_order([r for r in rows if r["source"] in todo], sources)
    if ranked or merged != logged:
        write_log(log, merged)
        _remove_rank_logs(args.output_dir)
    return merged


class _Progress:
    """The batch's one progress line: sources done of this run's total, across every rank, and how
    many became error rows, each named on stderr as its row comes in. Fed with rows as they are
    logged: by the loop in one process, by rank 0's follower thread (the only writer) under torchrun."""

    def __init__(self, total: int, desc: str, quiet: bool):
        self.bar = tqdm(total=total, desc=desc, unit="image", disable=quiet, postfix={"errors": 0})
        self.seen: set[str] = set()
        self.errors = 0

    def add(self, rows: list[dict]) -> None:
        for row in rows:
            if row["source"] in self.seen:  # a source's further outputs
                continue
            self.seen.add(row["source"])
            if "error" in row:
                self.errors += 1
                self.note(f"skipped {row['source']}: {row['error']}")
                self.bar.set_postfix(errors=self.errors, refresh=False)
            self.bar.update(1)

    def note(self, line: str) -> None:
        tqdm.write(line, file=sys.stderr)  # above the bar, which is redrawn below it

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def _batch_share(models: hub.Models | None, jobs: dict[str, Request | DSCTError], mine: list[list[Path]],
                 stems: dict[str, str], config: TranslationConfig, args: argparse.Namespace, log: Path,
                 progress: _Progress | None = None) -> None:
    """Translate this rank's share, batch by batch, appending each source's rows to ``log`` as it is done."""
    for group in mine:
        for rows in _batch_group(models, jobs, group, stems, config, args):
            append_rows(log, rows)
            if progress is not None:
                progress.add(rows)


def _cmd_batch(args: argparse.Namespace) -> int:
    if not 1 <= args.images_per_batch <= MAX_IMAGES_PER_BATCH:
        raise DSCTError(f"--images-per-batch {args.images_per_batch} is out of range: give 1 to {MAX_IMAGES_PER_BATCH}")
    prompts = read_prompts(args.prompts) if args.prompts else None
    args.styles = {row.source: row.prompts["style"].strip() for row in prompts[1] if "style" in row.prompts} if prompts else {}
    model_cfg, config = _configs(args, prompts[0] if prompts else _mode(args))
    inputs, jobs, unlisted = _batch_jobs(args, config, prompts[1] if prompts else None)
    ranks = distributed.start(_device(args.device))
    try:
        return _batch_ranks(args, ranks, model_cfg, config, inputs, jobs, unlisted)
    finally:
        distributed.stop(ranks)


def _batch_ranks(args: argparse.Namespace, ranks: distributed.Ranks, model_cfg: ModelConfig, config: TranslationConfig,
                 inputs: list[Path], jobs: dict[str, Request | DSCTError], unlisted: str | None) -> int:
    """The batch on this rank: rank 0 plans (resume), every rank translates its share, rank 0
    reports every rank's progress and writes the tables; the other ranks print only errors."""
    out, lead = args.output_dir, ranks.rank == 0
    stale = distributed.stale_after() if ranks.world > 1 else 0.0  # a bad value stops every rank before the plan
    if lead:
        _make_dir(out)
        plan = _resume(args, inputs, samples=len(args.seeds) if args.seeds else config.samples)
        for note in (unlisted, _resume_note(plan, inputs, args)):
            if note:
                print(note, file=sys.stderr)
    # rank 0 forms the batches (same sizes together) and every rank takes whole batches: the same
    # batches, so the same outputs, for any number of ranks
    groups = distributed.share(ranks, _groups(args, config, plan.todo, jobs) if lead else None)
    path = {p.name: p for p in inputs}
    todo = {name for group in groups for name in group}
    sources = [p for p in inputs if p.name in todo]
    mine = [[path[name] for name in group] for group in distributed.shard(groups, ranks)]
    stems = output_stems([p.name for p in inputs])  # a stem shared by two images keeps its suffix
    needs_models = any(isinstance(jobs[p.name], Request) for group in mine for p in group)  # not for error rows only
    if ranks.world == 1:
        models = _load_models(model_cfg, ranks.device) if needs_models else None
        with _Progress(len(sources), "images", args.quiet) as progress:
            _batch_share(models, jobs, mine, stems, config, args, out / LOG_NAME, progress)
        write_csv(out / CSV_NAME, _merge(args, [p.name for p in sources]))
        return 0
    quiet = args.quiet
    args = argparse.Namespace(**{**vars(args), "quiet": True})  # no per-step bars: rank 0's line counts every rank's images
    log = rank_log(out, ranks.rank)
    if not lead:
        with distributed.heartbeat(rank_beat(out, ranks.rank), period=min(5.0, stale / 6)):
            models = _load_models(model_cfg, ranks.device, note=False) if needs_models else None
            _batch_share(models, jobs, mine, stems, config, args, log)
        return 0
    models = _load_models(model_cfg, ranks.device) if needs_models else None  # its note goes above the line
    with _Progress(len(sources), f"images ({ranks.world} ranks)", quiet) as progress:
        follower = distributed.Follower(distributed.Watch(out, ranks.world, stale=stale), progress.add,
                                        lambda why: progress.note(f"warning: {why}; the other ranks go on"))
        try:
            _batch_share(models, jobs, mine, stems, config, args, log)  # its rows reach the line through the follower
            follower.finish()
        finally:
            follower.close()
    write_csv(out / CSV_NAME, _merge(args, [p.name for p in sources]))
    _remove(rank_beats(out))
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    if args.list:
        for name, entry in hub.WEIGHTS.items():
            print(f"{name}\t{entry.repo_id}/{entry.filename}\t{entry.size_bytes / 1e6:.0f} MB\t{entry.env_var}")
        return 0
    if bad := [g for g in args.generators if g not in get_args(GeneratorName)]:
        raise DSCTError(f"download: unknown generator {bad[0]!r}: one of {', '.join(get_args(GeneratorName))}")
    if args.generators and args.names:
        raise DSCTError("download: give generators or --names, not both")
    configs = [ModelConfig(generator=g) for g in args.generators]
    for name, path in (hub.prefetch(configs) if configs else hub.download(args.names)).items():
        print(f"{name}\t{path}")
    return 0


def _check_target(args: argparse.Namespace) -> None:
    """A batch takes its prompts from flags (one for all) or from a prompts file, never both."""
    flags = [f for f, v in (("--text", args.text), ("--source-text", args.source_text), ("--style", args.style)) if v is not None]
    if args.prompts is not None and flags:
        raise DSCTError(f"--prompts gives each source its own prompts: leave out {', '.join(flags)}")
    if args.prompts is None and args.text is None and args.style is None:
        raise DSCTError("batch needs --text with --source-text (text mode), --style (image mode) or --prompts FILE.csv")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "batch":
            _check_target(args)
        if args.command in ("translate", "batch") and args.text is not None and not args.source_text:
            raise DSCTError("--source-text is required with --text: say what the source shows, e.g. --source-text 'Lion'")
        return {"translate": _cmd_translate, "batch": _cmd_batch, "download": _cmd_download,
                "eval": lambda a: evaluate.run(a, _device(a.device))}[args.command](args)
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
