"""Under real DDP (gloo, two processes), every rank computes identical masks on its own."""

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from oneprune.pruning import Pruner

pytestmark = pytest.mark.slow  # spawns a gloo process group


def _train_and_prune(rank: int) -> dict:
    torch.manual_seed(rank)  # different initial weights: DDP broadcasts rank 0's
    model = DistributedDataParallel(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)))
    with torch.no_grad():  # ties, broken by position the same way everywhere
        model.module[2].weight[:, :, 1].fill_(0.05)
    pruner = Pruner(model, scope="global")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for target in (0.2, 0.5, 0.7, 0.9):
        pruner.prune_to(target)
        x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 4, (8,))  # this rank's shard
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.apply_masks()
    masks = torch.cat([m.flatten() for m in pruner.state_dict()["masks"].values()])
    gathered = [torch.empty_like(masks) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, masks)
    return {"masks": gathered, "sparsity": pruner.sparsity()}


def test_ranks_compute_identical_masks(run_distributed):
    result = run_distributed(_train_and_prune)
    first, second = result["masks"]
    assert torch.equal(first, second)
    assert 0.85 < result["sparsity"] < 0.95 and not first.all()
