"""torch.distributed plumbing for `torchrun`: who am I, who writes, and how data is sharded."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Rank 0 may decode the image cache or extract backbone features while the others wait at a
# barrier: far longer than torch's default collective timeout on a first run.
SETUP_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes checkpoints, reports and tracking."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def init_from_env(device_type: str) -> World:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, …)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    cuda = device_type == "cuda" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda and local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()};"
            " launch at most that many processes per node (train.nproc / --nproc_per_node)"
        )
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=SETUP_TIMEOUT)
    world = current()
    if cuda:
        torch.cuda.set_device(world.local_rank)
    return world


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (building shared caches), the others after it, reusing them.

    A failure on rank 0 skips its barrier; torchrun then stops the waiting ranks.
    """
    main = current().is_main
    if not main:
        barrier()
    yield
    if main:
        barrier()


def all_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sum over every rank (the values themselves in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def from_main(values: Sequence[float], device: torch.device) -> list[float]:
    """Rank 0's values on every rank, so decisions taken on them (best epoch, early stop) agree."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def broadcast_text(text: str | None) -> str:
    """Rank 0's string on every rank (a run id chosen by rank 0)."""
    if not (dist.is_available() and dist.is_initialized()):
        if text is None:
            raise ValueError("broadcast_text: no text to share in a single process")
        return text
    box: list[str | None] = [text]
    dist.broadcast_object_list(box, src=0)
    if box[0] is None:
        raise RuntimeError("rank 0 shared no text")
    return box[0]


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
