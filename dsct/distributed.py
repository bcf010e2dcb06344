"""torchrun support for ``python -m dsct batch``: which rank this process is, and the three
collectives a sharded batch needs (rank 0's plan to every rank, a barrier, the end).

torchrun tells each worker its place through RANK, WORLD_SIZE and LOCAL_RANK (its contract), so,
beside ``hub.py``, this is the one module that reads the environment. Without torchrun (no
WORLD_SIZE, or 1) nothing is initialised and every function here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import NamedTuple, TypeVar

import torch
import torch.distributed as dist

from .errors import DSCTError

__all__ = ["Ranks", "start", "share", "wait", "stop", "shard"]

# a rank that finishes its shard waits at the barrier for the slowest one (minutes per image on full
# models); a rank that dies ends the others through torchrun, not through this timeout
TIMEOUT = timedelta(hours=24)
T = TypeVar("T")


class Ranks(NamedTuple):
    """This process's rank among ``world`` and the device it computes on (None: the default)."""

    rank: int
    world: int
    device: torch.device | None


def start(device: torch.device | None) -> Ranks:
    """Join torchrun's group: gloo on the CPU, nccl on CUDA with ``cuda:LOCAL_RANK`` (one GPU per
    rank) unless the user named a GPU index."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(0, 1, device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if (device is None and torch.cuda.is_available()) or (device is not None and device.type == "cuda" and device.index is None):
        device = torch.device("cuda", local)
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)  # nccl's object collectives use the current device
    try:
        dist.init_process_group("nccl" if device is not None and device.type == "cuda" else "gloo", timeout=TIMEOUT)
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


def wait(ranks: Ranks) -> None:
    """Return once every rank has got here (every rank's rows are in its log)."""
    if ranks.world > 1:
        dist.barrier()


def stop(ranks: Ranks) -> None:
    """Leave the group, so that the process exits without a warning about it."""
    if ranks.world > 1:
        dist.destroy_process_group()


def shard(items: Sequence[T], ranks: Ranks) -> list[T]:
    """Item k goes to rank k % world: a fixed split of a fixed order, so every rank agrees on it."""
    return list(items[ranks.rank::ranks.world])
