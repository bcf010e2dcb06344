"""``torchrun … -m dsct batch`` on two CPU ranks (gloo) gives exactly one process's files, and resumes
after a rank is killed.

Every run is a subprocess with one thread each (OMP_NUM_THREADS=1), the one-process reference
included: the thread count changes the last bits of the loss terms logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from dsct.batch import rank_logs
from dsct.distributed import Ranks, shard

from helpers import picture

REPO = Path(__file__).resolve().parents[1]
FAST = ["--tiny", "--quiet", "--size", "32", "--max-long-side", "32", "--steps", "2", "--skip", "1",
        "--resample-repeats", "1", "--divergence-until", "-1", "--no-range-restart"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _batch(inputs: Path, out: Path, style: Path) -> list[str]:
    return ["-m", "dsct", "batch", str(inputs), "--style", str(style), "-o", str(out), *FAST]


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen) -> None:
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise
    assert proc.returncode == 0, err.decode()[-3000:]


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun's workers (in sessions of their own), then torchrun itself."""
    for pid in (*_workers(proc.pid).values(), proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(60)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    """One batch (five pictures and an unreadable file) run by one process and by two ranks, side by side."""
    root = tmp_path_factory.mktemp("ranks")
    inputs, style = root / "in", root / "style.png"
    inputs.mkdir()
    for k in range(5):
        picture(seed=k).save(inputs / f"img{k}.png")
    (inputs / "broken.png").write_bytes(b"not a png")
    picture(seed=9).save(style)
    one = _start([sys.executable, *_batch(inputs, root / "one", style)])
    two = _start([*TORCHRUN, *_batch(inputs, root / "two", style)])
    _finish(one)
    _finish(two)
    return SimpleNamespace(root=root, inputs=inputs, style=style, one=_files(root / "one"), two=_files(root / "two"))


def test_two_ranks_write_what_one_process_writes(runs):
    assert runs.two == runs.one  # the PNGs, and results.jsonl / results.csv byte for byte: same rows, same order
    rows = [json.loads(line) for line in runs.one["results.jsonl"].splitlines()]
    assert [r["source"] for r in rows] == ["broken.png", *(f"img{k}.png" for k in range(5))]


def test_shards_split_the_sources_by_rank():
    items = list("abcde")
    assert [shard(items, Ranks(r, 2, None)) for r in range(2)] == [["a", "c", "e"], ["b", "d"]]


def _workers(parent: int) -> dict[int, int]:
    """torchrun's workers (in sessions of their own) by rank: their pids, read from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                env = dict(v.split("=", 1) for v in (entry / "environ").read_text().split("\0") if "=" in v)
                found[int(env["RANK"])] = int(entry.name)
        except (OSError, KeyError, ValueError):
            continue  # gone meanwhile, or not a worker
    return found


@pytest.mark.parametrize("victim", [0, 1])
def test_killed_rank_resumes_to_the_same_files(runs, tmp_path, victim):
    out = tmp_path / "out"
    proc = _start([*TORCHRUN, *_batch(runs.inputs, out, runs.style)])
    try:
        deadline = time.monotonic() + 300
        while not (out.is_dir() and rank_logs(out)):  # a first output and its row are in: kill in the middle of the next
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no output appeared"
            time.sleep(0.02)
        os.kill(_workers(proc.pid)[victim], signal.SIGKILL)  # torchrun then stops the other rank and fails
        assert proc.wait(120) != 0
    finally:
        _kill(proc)
        proc.stderr.close()
    assert rank_logs(out)  # left for the rerun to fold in
    _finish(_start([*TORCHRUN, *_batch(runs.inputs, out, runs.style)]))
    resumed = _files(out)
    assert not rank_logs(out)  # merged into results.jsonl
    rows = [json.loads(line) for line in resumed["results.jsonl"].splitlines()]
    assert len({r["source"] for r in rows}) == len(rows)  # one row per source: none twice
    reference = [json.loads(line) for line in runs.one["results.jsonl"].splitlines()]
    assert sorted(rows, key=lambda r: r["source"]) == reference
    assert {k: v for k, v in resumed.items() if k.endswith(".png")} == {k: v for k, v in runs.one.items() if k.endswith(".png")}
