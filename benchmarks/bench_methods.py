"""DiffuseIT and AGG side by side: one whole ``dsct.translate`` per (mode, samples, method), timed end to end.

Both methods run on the same models (built once by ``benchmarks.bench_step.build_models``), the same
synthetic source (and style image in image mode) and the same texts, each at its own preset for the mode
(``preset(mode)`` and ``preset(mode, method="agg")``), so each row is a default translation. DiffuseIT
runs with range restarts off (random weights trigger them spuriously). Work is counted by hooks on the real
modules (``benchmarks/counters.py``) during the timed run. Prints one JSON line per row; the AGG row of a
(mode, samples) pair carries the ratios AGG / DiffuseIT of seconds, UNet images (forwards × samples in
them) and UNet backwards.

Before the measured rows, each (mode, method) runs once with 10 respaced steps at the same working size
and is not timed (allocator, kernels, text embeddings).

Examples:
  OMP_NUM_THREADS=1 python benchmarks/bench_methods.py --size tiny --mode text image --samples 1 4
  python benchmarks/bench_methods.py --size full --device cuda --dtype bf16 --mode text image --samples 1 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.bench_step import (  # noqa: E402
    SOURCE_TEXT, TEXT, build_models, machine, peak_memory_mb, synthetic_image,
)
from benchmarks.counters import watch_models  # noqa: E402
from dsct import translate  # noqa: E402
from dsct.clip import OPENAI_MODELS  # noqa: E402
from dsct.config import preset  # noqa: E402

METHODS = ("diffuseit", "agg")
# a short untimed run per (mode, method) first: 10 respaced steps, valid for each method
WARMUP = dict(diffuseit=dict(steps=10, skip=5, divergence_until=5, resample_repeats=1, range_restart=False),
              agg=dict(steps=10, skip=5, t_edit=3, t_boost=4))


def config_for(method: str, mode: str, samples: int, size: int | None, **overrides):
    """The mode's preset of ``method`` (restarts off for DiffuseIT), ``samples`` samples, optional working size."""
    settings = dict(samples=samples, **overrides)
    if size is not None:
        settings |= dict(size=size, max_long_side=size)
    if method == "agg":
        return preset(mode, method="agg", **settings)
    return preset(mode, **{"range_restart": False, **settings})


def run(models, method: str, mode: str, samples: int, *, source: Image.Image, style: Image.Image,
        size: int | None) -> dict:
    """One timed translate; its seconds and the work the hooks counted."""
    config = config_for(method, mode, samples, size)
    device = models.device
    texts = dict(text=TEXT, source_text=SOURCE_TEXT) if mode == "text" else {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with watch_models(models, attention_runs=False) as counter:
        start = time.perf_counter()
        results = translate(models, source, style=style if mode == "image" else None, config=config, **texts)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        counts = counter.snapshot()
    clip = [k for k in counts if k.startswith("clip:") and k.endswith(".images")]
    return dict(
        method=method, mode=mode, samples=samples, steps=config.steps, skip=config.skip, size=config.size,
        seconds=round(seconds, 2), seconds_per_sample=round(seconds / samples, 2),
        unet_forwards=counts["unet.forward"], unet_images=counts["unet.images"],
        unet_images_grad=counts["unet.images_grad"], unet_backwards=counts["unet.backward"],
        vit_images=counts["vit.images"], vit_backwards=counts["vit.backward"],
        clip_images=sum(counts[k] for k in clip),
        results=len(results), peak_memory_mb=round(peak_memory_mb(device), 1),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "narrow", "full"), default="tiny", help="model size (bench_step.py)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--mode", choices=("text", "image"), nargs="+", default=["text", "image"])
    p.add_argument("--samples", type=int, nargs="+", default=[1, 4], help="samples per translation (one pair of rows each)")
    p.add_argument("--method", choices=METHODS, nargs="+", default=list(METHODS),
                   help="methods to time (the ratio needs both)")
    p.add_argument("--image-size", type=int, default=None,
                   help="working size (preset 256); a smaller one makes narrow models affordable on a CPU")
    p.add_argument("--clip-models", nargs="+", default=None, metavar="NAME",
                   help=f"CLIP models for narrow/full (default all: {' '.join(OPENAI_MODELS)}); tiny has its own two")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--no-warmup", action="store_true", help="skip the short untimed run per (mode, method)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    modes, methods = list(dict.fromkeys(args.mode)), [m for m in METHODS if m in args.method]
    clip_names = tuple(args.clip_models or OPENAI_MODELS) if "text" in modes else None
    start = time.perf_counter()
    models = build_models(args.size, device, args.dtype, clip_names=clip_names)
    source = synthetic_image(256, 256, seed=1)
    style = synthetic_image(256, 256, seed=2).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    common = dict(size_models=args.size, device=args.device, machine=machine(device), torch=torch.__version__,
                  dtype=args.dtype, clip_models=list(models.clip.names) if models.clip is not None else [],
                  build_seconds=round(time.perf_counter() - start, 1))
    for mode in modes:
        for method in methods if not args.no_warmup else ():
            config = config_for(method, mode, 1, args.image_size, **WARMUP[method])
            translate(models, source, style=style if mode == "image" else None, config=config,
                      **(dict(text=TEXT, source_text=SOURCE_TEXT) if mode == "text" else {}))
        for samples in args.samples:
            rows = {}
            for method in methods:
                row = rows[method] = run(models, method, mode, samples, source=source, style=style, size=args.image_size)
                if method == "agg" and "diffuseit" in rows:
                    base = rows["diffuseit"]
                    row |= dict(agg_over_diffuseit_seconds=round(row["seconds"] / base["seconds"], 3),
                                agg_over_diffuseit_unet_images=round(row["unet_images"] / base["unet_images"], 3),
                                agg_over_diffuseit_unet_backwards=round(row["unet_backwards"] / base["unet_backwards"], 3))
                print(json.dumps(dict(common, **row)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
