"""torch.distributed helpers that are no-ops in a single process.

The training loop and the search service call these the same way whether or not a process
group was initialised (by torchrun, Ray Train or a test's spawned processes).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the world size: (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum `values` over all ranks (a no-op without torch.distributed)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if rank_and_world_size()[1] > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def gather(value: Any) -> list[Any]:
    """`value` (any picklable object) from every rank, in rank order: a collective call
    under torch.distributed, a one-element list without it."""
    world_size = rank_and_world_size()[1]
    if world_size == 1:
        return [value]
    values: list[Any] = [None] * world_size
    dist.all_gather_object(values, value)
    return values
