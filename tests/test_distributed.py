"""``torchrun … -m dsct batch`` on two CPU ranks (gloo) gives exactly one process's files, rank 0
reports every rank's progress while the others stay silent, a dead rank stops rank 0 instead of
hanging it, and a rerun resumes after a rank is killed.

Every run is a subprocess with one thread each (OMP_NUM_THREADS=1), the one-process reference
included: the thread count changes the last bits of the loss terms logged. Rank 0's follower
(``Watch``, ``Follower``, ``heartbeat``) is also checked on hand-written files, with a fake clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from dsct.batch import rank_beat, rank_log, rank_logs
from dsct.distributed import Follower, Ranks, Watch, heartbeat, shard
from dsct.errors import DSCTError

from helpers import picture

REPO = Path(__file__).resolve().parents[1]
LOUD = ["--tiny", "--size", "32", "--max-long-side", "32", "--steps", "2", "--skip", "1",
        "--resample-repeats", "1", "--divergence-until", "-1", "--no-range-restart"]
FAST = [*LOUD, "--quiet"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _batch(inputs: Path, out: Path, style: Path, flags: list[str] = FAST) -> list[str]:
    return ["-m", "dsct", "batch", str(inputs), "--style", str(style), "-o", str(out), *flags]


def _start(argv: list[str], env: dict[str, str] = ENV) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


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
    """One batch (four pictures and two unreadable files) run by one process and by two ranks side by
    side, the ranks with their progress line on, each rank's stderr in a file of its own."""
    root = tmp_path_factory.mktemp("ranks")
    inputs, style = root / "in", root / "style.png"
    inputs.mkdir()
    for k in range(5):
        picture(seed=k).save(inputs / f"img{k}.png")
    (inputs / "broken.png").write_bytes(b"not a png")
    (inputs / "img2.png").write_bytes(b"not a png either")  # sorted 4th: rank 1's (see test_rank_0_reports_every_rank)
    picture(seed=9).save(style)
    one = _start([sys.executable, *_batch(inputs, root / "one", style)])
    two = _start([*TORCHRUN, "--redirects", "3", "--log-dir", str(root / "logs"),
                  *_batch(inputs, root / "two", style, LOUD)])
    _finish(one)
    _finish(two)
    err = {int(p.parent.name): p.read_text() for p in (root / "logs").rglob("stderr.log")}
    out = {int(p.parent.name): p.read_text() for p in (root / "logs").rglob("stdout.log")}
    return SimpleNamespace(root=root, inputs=inputs, style=style, one=_files(root / "one"), two=_files(root / "two"),
                           err=err, out=out)


def test_two_ranks_write_what_one_process_writes(runs):
    assert runs.two == runs.one  # the PNGs, and results.jsonl / results.csv byte for byte: same rows, same order
    rows = [json.loads(line) for line in runs.one["results.jsonl"].splitlines()]
    assert [r["source"] for r in rows] == ["broken.png", *(f"img{k}.png" for k in range(5))]
    assert {r["source"] for r in rows if "error" in r} == {"broken.png", "img2.png"}
    assert not [p for p in (runs.root / "two").iterdir() if p.name.startswith(".")]  # heartbeats removed too


# rank 0's progress line as tqdm draws it (each state after a carriage return): done/total and the errors
PROGRESS = re.compile(r"images \(2 ranks\): +\d+%\|[^|]*\| (\d+)/(\d+) \[[^\]]*errors=(\d+)\]")


def test_rank_0_reports_every_rank(runs):
    # by hand: sorted sources broken, img0, img1, img2, img3, img4; rank 0 has broken, img1, img3 and
    # rank 1 img0, img2, img4, so each rank has 3 of the 6 sources and one of the 2 unreadable files
    states = [tuple(map(int, m)) for m in PROGRESS.findall(runs.err[0])]
    assert states, runs.err[0][-2000:]
    assert states[-1] == (6, 6, 2)  # all six of both ranks (rank 0's share alone is 3), both errors
    assert all(total == 6 for _, total, _ in states)
    assert [n for n, _, _ in states] == sorted(n for n, _, _ in states)  # it only counts up
    assert [e for _, _, e in states] == sorted(e for _, _, e in states)
    skipped = [line.split(":")[0] for line in runs.err[0].replace("\r", "\n").splitlines() if line.startswith("skipped ")]
    assert sorted(skipped) == ["skipped broken.png", "skipped img2.png"]  # rank 1's unreadable file too, once
    assert runs.err[1] == "" and runs.out[1] == "" and runs.out[0] == ""  # rank 1 prints nothing (no error here)


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_rank_stops_rank_0_within_its_silence_and_the_rerun_resumes(runs, tmp_path):
    """The two ranks started by hand (torchrun's contract: RANK, WORLD_SIZE, MASTER_*), as on two machines:
    no torchrun agent stops rank 0 when rank 1 dies, so only rank 0's follower can."""
    out, port = tmp_path / "out", _free_port()
    env = {**ENV, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "DSCT_RANK_STALE_S": "3"}
    argv = [sys.executable, *_batch(runs.inputs, out, runs.style)]
    lead, other = (_start(argv, {**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in (0, 1))
    try:
        deadline = time.monotonic() + 300
        while not rank_beat(out, 1).exists():  # rank 1 has the plan and works on its share: kill it
            assert lead.poll() is None and other.poll() is None, (lead.stderr.read() + other.stderr.read()).decode()[-3000:]
            assert time.monotonic() < deadline, "rank 1 never started"
            time.sleep(0.02)
        other.kill()
        killed = time.monotonic()
        _, err = lead.communicate(timeout=120)  # a barrier would wait out its timeout (it was 24 h)
        waited = time.monotonic() - killed
    finally:
        for proc in (lead, other):
            proc.kill()
            proc.wait(60)
            proc.stderr.close()
    assert lead.returncode == 2, err.decode()[-3000:]
    last = err.decode().replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("error: rank 1 has given no sign of life for ") and "run the same command again" in last, last
    assert waited < 60, waited  # rank 0's own share (two images) plus 3 s of silence, not a timeout
    assert rank_log(out, 0).exists()  # rank 0's rows kept for the rerun
    _finish(_start(argv))  # one process, no torchrun: folds rank 0's rows in and does rank 1's share
    resumed = _files(out)
    rows = [json.loads(line) for line in resumed["results.jsonl"].splitlines()]
    reference = [json.loads(line) for line in runs.one["results.jsonl"].splitlines()]
    assert sorted(rows, key=lambda r: r["source"]) == reference
    assert {k: v for k, v in resumed.items() if k.endswith(".png")} == {k: v for k, v in runs.one.items() if k.endswith(".png")}
    assert not rank_logs(out) and not list(out.glob(".results.rank*"))


# --- rank 0's follower on hand-written files ------------------------------------------------------

def _row(source: str, rank: int = 1) -> dict:
    return {"source": source, "output": f"{source}-{rank}.png", "rank": rank}


def _line(row: dict) -> bytes:
    return (json.dumps(row) + "\n").encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_watch_reads_each_whole_line_once(tmp_path):
    watch = Watch(tmp_path, 3, stale=60)
    assert watch.rows() == []  # no rank has logged yet
    rank_log(tmp_path, 0).write_bytes(_line(_row("a")) + _line(_row("a", 2)))
    cut = _line(_row("b"))
    rank_log(tmp_path, 2).write_bytes(cut[:20])  # rank 2 is writing its first row
    assert watch.rows() == [_row("a"), _row("a", 2)]
    with rank_log(tmp_path, 2).open("ab") as fh:
        fh.write(cut[20:] + _line({"source": "c", "output": "", "error": "cannot read c"}))
    assert watch.rows() == [_row("b"), {"source": "c", "output": "", "error": "cannot read c"}]
    assert watch.rows() == []  # nothing new


def test_watch_tells_done_failed_and_silent_ranks(tmp_path):
    clock = Clock()
    watch = Watch(tmp_path, 5, stale=30, clock=clock)
    rank_beat(tmp_path, 1).write_text("0")
    rank_beat(tmp_path, 2).write_text("done")
    rank_beat(tmp_path, 3).write_text("failed: cannot write out/x.png: No space left on device")
    # rank 4 has written nothing yet
    assert watch.ranks() == ({2}, {3: "rank 3 failed: cannot write out/x.png: No space left on device"})
    clock.now += 29
    rank_beat(tmp_path, 1).write_text("1")  # rank 1 beats; rank 4 is 29 s silent: not yet given up
    assert watch.ranks()[1].keys() == {3}
    clock.now += 2  # rank 1: 2 s since its last beat; rank 4: 31 s since rank 0 started watching
    done, lost = watch.ranks()
    assert done == {2} and lost.keys() == {3, 4}
    assert lost[4].startswith("rank 4 has given no sign of life for 31 s")
    clock.now += 29  # rank 1 now 31 s silent too
    assert watch.ranks()[1].keys() == {1, 3, 4}
    rank_beat(tmp_path, 4).write_text("0")  # a late beat: rank 4 is alive after all
    assert watch.ranks()[1].keys() == {1, 3}


def test_heartbeat_beats_while_the_block_runs_then_says_how_it_ended(tmp_path):
    beat = tmp_path / "beat"
    with heartbeat(beat, period=0.01):
        deadline = time.monotonic() + 30
        while not (beat.exists() and int(beat.read_text()) >= 3):  # three beats at least, the block still running
            assert time.monotonic() < deadline, "no beats"
            time.sleep(0.01)
    assert beat.read_text() == "done"
    with pytest.raises(DSCTError), heartbeat(beat, period=0.01):
        raise DSCTError("cannot write out/a.png: disk full")
    assert beat.read_text() == "failed: cannot write out/a.png: disk full"
    with pytest.raises(KeyboardInterrupt), heartbeat(beat, period=0.01):
        raise KeyboardInterrupt
    assert beat.read_text() == "failed: interrupted"


def test_follower_hands_on_every_rows_and_waits_for_done(tmp_path):
    seen: list[dict] = []
    lost: list[str] = []
    follower = Follower(Watch(tmp_path, 2, stale=60), seen.extend, lost.append)
    try:
        rank_log(tmp_path, 0).write_bytes(_line(_row("a")))
        rank_beat(tmp_path, 1).write_text("0")
        finished = threading.Event()
        waiter = threading.Thread(target=lambda: (follower.finish(), finished.set()), daemon=True)
        waiter.start()  # rank 0's share is done; rank 1's is not
        time.sleep(1)
        assert not finished.is_set()
        rank_log(tmp_path, 1).write_bytes(_line(_row("b")) + _line(_row("b", 2)))
        rank_beat(tmp_path, 1).write_text("done")
        waiter.join(30)
        assert finished.is_set()
        assert seen == [_row("a"), _row("b"), _row("b", 2)] and lost == []  # rank 1's last rows too, once
    finally:
        follower.close()


def test_follower_reports_a_failed_rank_once_the_live_ones_are_done(tmp_path):
    lost: list[str] = []
    follower = Follower(Watch(tmp_path, 3, stale=60), lambda rows: None, lost.append)
    try:
        rank_beat(tmp_path, 1).write_text("0")  # alive, still working
        rank_beat(tmp_path, 2).write_text("failed: out of memory")
        deadline = time.monotonic() + 30
        while not lost:  # told while rank 0's own share still runs
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert lost == ["rank 2 failed: out of memory"]
        raised: list[BaseException] = []
        waiter = threading.Thread(target=lambda: raised.append(pytest.raises(DSCTError, follower.finish).value), daemon=True)
        waiter.start()
        time.sleep(1)
        assert waiter.is_alive()  # rank 1's share is not cut short
        rank_beat(tmp_path, 1).write_text("done")
        waiter.join(30)
        assert str(raised[0]).startswith("rank 2 failed: out of memory: its images are not done")
        assert lost == ["rank 2 failed: out of memory"]  # warned once
    finally:
        follower.close()
