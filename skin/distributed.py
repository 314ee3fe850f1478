"""torch.distributed plumbing for `torchrun`: who am I, who writes, and how data is sharded."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    world = current()
    if device_type == "cuda" and torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
    return world


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
