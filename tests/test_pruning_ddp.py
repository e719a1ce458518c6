"""Under real DDP (gloo, two processes), every rank computes identical masks on its own,
whatever the allocation."""

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from oneprune.allocation import ALLOCATIONS
from oneprune.pruning import Pruner

pytestmark = pytest.mark.slow  # spawns a gloo process group


def _train_and_prune(rank: int) -> dict:
    masks, sparsities = {}, {}
    for allocation in ALLOCATIONS:
        torch.manual_seed(rank)  # different initial weights: DDP broadcasts rank 0's
        model = DistributedDataParallel(nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)))
        with torch.no_grad():  # ties, broken by position the same way everywhere
            model.module[2].weight[:, :, 1].fill_(0.05)
        pruner = Pruner(model, allocation=allocation, depth_exponent=1.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        # uniform+ keeps the first layer dense and 20% of the last: at most 58% here
        for target in (0.2, 0.4, 0.5) if allocation == "uniform_plus" else (0.2, 0.5, 0.7):
            pruner.prune_to(target)
            x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 4, (8,))  # this rank's shard
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            pruner.apply_masks()
        mine = torch.cat([m.flatten() for m in pruner.state_dict()["masks"].values()])
        gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, mine)
        masks[allocation], sparsities[allocation] = gathered, pruner.sparsity()
    return {"masks": masks, "sparsity": sparsities}


def test_ranks_compute_identical_masks_for_every_allocation(run_distributed):
    result = run_distributed(_train_and_prune)
    for allocation in ALLOCATIONS:
        first, second = result["masks"][allocation]
        assert torch.equal(first, second), allocation
        final = 0.5 if allocation == "uniform_plus" else 0.7
        assert result["sparsity"][allocation] == pytest.approx(final, abs=0.01)
        assert not first.all()
