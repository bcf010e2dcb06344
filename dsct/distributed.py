"""torchrun support for ``python -m dsct batch``: which rank this process is, rank 0's plan handed to
every rank (the one collective), and how rank 0 follows the others through the files they write.

torchrun tells each worker its place through RANK, WORLD_SIZE and LOCAL_RANK (its contract), so,
beside ``hub.py``, this is the one module that reads the environment. Without torchrun (no
WORLD_SIZE, or 1) nothing is initialised and ``start``/``share``/``stop`` are no-ops.

After the plan, no rank waits on another in a collective: each image is independent, each rank
appends to its own log, and a rank other than 0 rewrites a small heartbeat file while it works and
writes its outcome there when its share is done (``heartbeat``). Rank 0 reads those files
(``Watch``) from a second thread (``Follower``): every rank's rows for the progress line, and which
ranks are done, failed, or have fallen silent. A rank that dies (killed, out of memory, its machine
down) thus stops rank 0 with a one-line error after ``stale_after()`` seconds of silence, where a
barrier would wait out its timeout; on one machine torchrun stops the others sooner still.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple, TypeVar

import torch
import torch.distributed as dist

from .batch import parse_log, rank_beat, rank_log, write_atomic
from .errors import DSCTError

__all__ = ["Ranks", "start", "share", "stop", "shard", "stale_after", "heartbeat", "Watch", "Follower"]

# the one collective (the plan) waits for rank 0's resume check, seconds on any folder; a rank that
# dies before it ends the others through torchrun, or through this timeout
TIMEOUT = timedelta(minutes=30)
STALE_ENV, STALE_DEFAULT = "DSCT_RANK_STALE_S", 180.0  # above a shared file system's attribute caching (≤ 60 s)
POLL_S = 0.25  # how often rank 0 reads the ranks' files
T = TypeVar("T")


class Ranks(NamedTuple):
    """This process's rank among ``world`` and the device it computes on (None: the default)."""

    rank: int
    world: int
    device: torch.device | None


def start(device: torch.device | None) -> Ranks:
    """Join torchrun's group (gloo: the plan is a Python list, and no tensor ever crosses ranks), on
    ``cuda:LOCAL_RANK`` (one GPU per rank) unless the user named a GPU index or the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(0, 1, device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if (device is None and torch.cuda.is_available()) or (device is not None and device.type == "cuda" and device.index is None):
        device = torch.device("cuda", local)
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    except (RuntimeError, ValueError) as e:
        raise DSCTError(f"cannot join the torchrun group (WORLD_SIZE={world}): {str(e).splitlines()[0]}") from e
    return Ranks(dist.get_rank(), dist.get_world_size(), device)


def share(ranks: Ranks, value: T) -> T:
    """Rank 0's ``value`` on every rank (the others pass anything)."""
    if ranks.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def stop(ranks: Ranks) -> None:
    """Leave the group (a local call), so that the process exits without a warning about it."""
    if ranks.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Sequence[T], ranks: Ranks) -> list[T]:
    """Item k goes to rank k % world: a fixed split of a fixed order, so every rank agrees on it."""
    return list(items[ranks.rank::ranks.world])


def stale_after() -> float:
    """Seconds of silence after which rank 0 gives a rank up: ``DSCT_RANK_STALE_S``, default 180."""
    text = os.environ.get(STALE_ENV, "")
    try:
        seconds = float(text) if text else STALE_DEFAULT
    except ValueError:
        seconds = -1.0
    if not seconds > 0:  # NaN too
        raise DSCTError(f"{STALE_ENV}={text!r}: give the seconds of silence after which a rank is given up, e.g. 180")
    return seconds


def _outcome(error: BaseException) -> str:
    """One line for rank 0 on why this rank stopped."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    text = str(error).splitlines()[0] if str(error) else ""
    return text if isinstance(error, DSCTError) else f"{type(error).__name__}: {text}".rstrip(": ")


@contextlib.contextmanager
def heartbeat(path: Path, period: float) -> Iterator[None]:
    """While the block runs, rewrite ``path`` with a new count every ``period`` seconds (a daemon
    thread: it beats while the main thread computes); at its end write ``done``, or ``failed: why``
    when it raised. Nothing is written after that, so rank 0 may delete the file once it reads it."""
    stop_beating = threading.Event()

    def beat() -> None:
        count = 0
        while True:
            with contextlib.suppress(DSCTError):  # a beat lost to a full disk is one beat, not a crash
                write_atomic(path, lambda fh: fh.write(str(count).encode()))
            count += 1
            if stop_beating.wait(period):
                return

    thread = threading.Thread(target=beat, name="dsct-heartbeat", daemon=True)
    thread.start()
    outcome = "done"
    try:
        yield
    except BaseException as e:
        outcome = f"failed: {_outcome(e)}"
        raise
    finally:
        stop_beating.set()
        thread.join()
        with contextlib.suppress(DSCTError):
            write_atomic(path, lambda fh: fh.write(outcome.encode()))


class Watch:
    """Rank 0's view of a sharded run, read from the files the ranks write, never from the ranks
    themselves: nothing here blocks on another process."""

    def __init__(self, folder: Path, world: int, *, stale: float, clock: Callable[[], float] = time.monotonic):
        self.logs = [rank_log(folder, r) for r in range(world)]
        self.read = [0] * world  # bytes of each log already read: whole lines only
        self.beats = {r: rank_beat(folder, r) for r in range(1, world)}
        self.stale, self.clock = stale, clock
        now = clock()
        # each rank's last heartbeat read, and when (on rank 0's clock: machines' clocks may differ) it last changed
        self.heard: dict[int, tuple[str | None, float]] = dict.fromkeys(self.beats, (None, now))

    def rows(self) -> list[dict]:
        """The rows logged since the last call, rank by rank; a line still being written waits for the next call."""
        rows: list[dict] = []
        for r, path in enumerate(self.logs):
            try:
                with path.open("rb") as fh:
                    fh.seek(self.read[r])
                    chunk = fh.read()
            except OSError:  # not written yet (or, on a shared file system, not visible yet)
                continue
            whole = chunk.rfind(b"\n") + 1
            self.read[r] += whole
            rows += parse_log(chunk[:whole].splitlines())[0]
        return rows

    def ranks(self) -> tuple[set[int], dict[int, str]]:
        """The ranks (from 1) that wrote ``done``, and those that failed or fell silent, with why."""
        now = self.clock()
        done: set[int] = set()
        lost: dict[int, str] = {}
        for r, path in self.beats.items():
            last, since = self.heard[r]
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError):  # not written yet, or replaced under us: no news
                text = last
            if text != last:
                self.heard[r] = text, now
                since = now
            if text == "done":
                done.add(r)
            elif text is not None and text.startswith("failed: "):
                lost[r] = f"rank {r} failed: {text[len('failed: '):]}"
            elif now - since >= self.stale:
                lost[r] = (f"rank {r} has given no sign of life for {now - since:.0f} s (killed, or its machine is down; "
                           f"{STALE_ENV} sets the wait)")
        return done, lost


class Follower:
    """Rank 0's second thread: every ``POLL_S`` it hands the rows any rank logged to ``on_rows``, and
    each rank lost while rank 0's own share still runs to ``on_lost`` (a warning: rank 0 goes on).
    ``finish`` (called once rank 0's own share is done) waits until every rank has written ``done``
    or is lost, the last rows handed on, then returns, or raises the first lost rank's error: a rank
    that died never keeps it waiting beyond ``stale`` seconds of that rank's silence, and the live
    ranks' work is not cut short (on rank 0's machine torchrun would stop them when it fails)."""

    def __init__(self, watch: Watch, on_rows: Callable[[list[dict]], None], on_lost: Callable[[str], None]):
        self.watch, self.on_rows, self.on_lost = watch, on_rows, on_lost
        self.own_done, self.abandon = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="dsct-follow", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            told: set[int] = set()
            others = len(self.watch.beats)
            while not self.abandon.is_set():
                finishing = self.own_done.is_set()  # read first: rank 0's rows logged before it are read below
                done, lost = self.watch.ranks()  # before the rows: a rank's rows are logged before its "done"
                if rows := self.watch.rows():
                    self.on_rows(rows)
                if finishing and len(done) + len(lost) == others:  # the live ranks' shares are done too
                    if not lost:
                        return
                    raise DSCTError(f"{lost[min(lost)]}: its images are not done; every row logged is kept, "
                                    "run the same command again to resume")
                for r in sorted(lost.keys() - told):  # rank 0's own share goes on meanwhile
                    self.on_lost(lost[r])
                    told.add(r)
                time.sleep(POLL_S)
        except BaseException as e:  # handed to the main thread by finish
            self.error = e

    def finish(self) -> None:
        """Wait for the other ranks (rank 0's share is done), or raise why they cannot all finish."""
        self.own_done.set()
        self.thread.join()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Stop following (rank 0 itself stopped): the thread ends within one poll."""
        self.abandon.set()
