"""Batch throughput: images per minute of ``python -m dsct batch`` with one process and under
``torchrun`` with N ranks, one JSON line per run.

Each run is the real command line in a fresh process (or torchrun group) on a fresh output folder,
timed from launch to exit, so a figure includes the start-up (imports, model build, torchrun's
rendezvous). A poller beside it notes when each image's row reaches the log (``results.jsonl``, or
a rank's ``results.rankR.jsonl``), which gives a second figure without the start-up: each rank's
images after its first, per minute, summed over the ranks.

Runs, by default: one process, then for each N > 1 in ``--ranks`` a torchrun group of N ranks, all
with one thread per process (torchrun's default, ``OMP_NUM_THREADS=1``), so that only the number of
processes changes; ``--torch-threads`` adds one process with torch's own thread count, and
``--images-per-batch N …`` repeats every run with N images of one size per batch. Tiny random models on the CPU (timing does not depend on weight values):
these are CPU figures, not GPU ones; pass ``--device cuda --no-tiny`` on a GPU machine for real ones
(torchrun then puts rank R on ``cuda:R``).

Example (about 1.5 minutes on 2 cores):
  python benchmarks/bench_batch.py --images 8 --ranks 1 2
  python benchmarks/bench_batch.py --images 8 --ranks 1 --images-per-batch 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from benchmarks.bench_step import synthetic_image  # noqa: E402
# one image: 64×64, 5 guided steps × 2 resampling repeats, style mode (no CLIP), no range restarts
SETTINGS = ["--size", "64", "--max-long-side", "64", "--steps", "10", "--skip", "5", "--resample-repeats", "2",
            "--divergence-until", "5", "--no-range-restart"]


class Poller(threading.Thread):
    """Notes, every 20 ms, when each source's first row appears in a log of ``folder``, by log."""

    def __init__(self, folder: Path):
        super().__init__(daemon=True)
        self.folder, self.stop, self.seen = folder, threading.Event(), {}  # source -> (log name, seconds)
        self.start_time = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            now = time.monotonic() - self.start_time
            for log in self.folder.glob("results*.jsonl"):
                try:
                    lines = log.read_bytes().split(b"\n")[:-1]  # whole lines only
                except OSError:
                    continue  # merged and removed meanwhile
                for line in lines:
                    source = json.loads(line)["source"]
                    if source not in self.seen:
                        self.seen[source] = log.name, now


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def steady_rate(seen: dict[str, tuple[str, float]]) -> float | None:
    """Images per minute after each log's first image, summed over the logs (ranks)."""
    by_log: dict[str, list[float]] = {}
    for log, t in seen.values():
        by_log.setdefault(log, []).append(t)
    rates = [(len(ts) - 1) / (max(ts) - min(ts)) for ts in by_log.values() if len(ts) > 1 and max(ts) > min(ts)]
    return 60 * sum(rates) if rates else None


def run(name: str, ranks: int, threads: int | None, per_batch: int, inputs: Path, style: Path, out: Path,
        flags: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     "--nproc-per-node", str(ranks)]
    argv = [*launcher, "-m", "dsct", "batch", str(inputs), "--style", str(style), "-o", str(out), "--quiet",
            "--images-per-batch", str(per_batch), *flags]
    load = os.getloadavg()[0]
    poller = Poller(out)
    poller.start()
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - poller.start_time
    poller.stop.set()
    poller.join()
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    images = len({r["source"] for r in rows if "error" not in r})
    first = min((t for _, t in poller.seen.values()), default=None)
    steady = steady_rate(poller.seen)
    return {
        "run": name, "processes": ranks, "threads_per_process": threads or "torch default",
        "images_per_batch": per_batch, "images": images,
        "wall_s": round(wall, 2), "images_per_minute": round(60 * images / wall, 2),
        "steady_images_per_minute": None if steady is None else round(steady, 2),
        "first_image_s": None if first is None else round(first, 2), "images_timed": len(poller.seen),
        "load_average_before": round(load, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8, help="source images in the batch")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2],
                   help="1: one process; N > 1: torchrun with N ranks (one thread per process in both)")
    p.add_argument("--torch-threads", action="store_true",
                   help="also one process with torch's own thread count (OMP_NUM_THREADS unset)")
    p.add_argument("--images-per-batch", type=int, nargs="+", default=[1],
                   help="dsct batch --images-per-batch: every run once per value")
    p.add_argument("--device", default="cpu", help="dsct batch --device")
    p.add_argument("--no-tiny", action="store_true", help="the real models (weights downloaded) instead of the tiny ones")
    p.add_argument("--extra", default="", help="more dsct batch flags, one string, e.g. \"--samples 2\"")
    args = p.parse_args(argv)
    flags = [*SETTINGS, "--device", args.device, *([] if args.no_tiny else ["--tiny"]), *shlex.split(args.extra)]
    with tempfile.TemporaryDirectory(prefix="bench_batch.") as tmp:
        root = Path(tmp)
        inputs, style = root / "in", root / "style.png"
        inputs.mkdir()
        for k in range(args.images):
            synthetic_image(80, 64, seed=k).save(inputs / f"img{k:03d}.png")
        synthetic_image(80, 64, seed=999).save(style)
        common = {"device": args.device, "tiny": not args.no_tiny, "cpu": cpu_name(),
                  "cores": os.cpu_count(), "torch": torch.__version__, "settings": " ".join(flags)}
        plan = [("1 process, torch's threads", 1, None)] if args.torch_threads else []
        plan += [("1 process" if ranks == 1 else f"torchrun {ranks} ranks", ranks, 1) for ranks in args.ranks]
        runs = [(f"{name}, {n} images / batch" if n > 1 else name, ranks, threads, n)
                for name, ranks, threads in plan for n in args.images_per_batch]
        for k, (name, ranks, threads, per_batch) in enumerate(runs):
            row = run(name, ranks, threads, per_batch, inputs, style, root / f"out{k}", flags)
            print(json.dumps({**common, **row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
