"""`train` under real DDP (gloo, two processes): sharded data, identical masks, rank 0 reports."""

import dataclasses

import pytest
import torch
import torch.distributed as dist

from oneprune.schedules import OneCycle
from oneprune.train import TrainConfig, train

pytestmark = pytest.mark.slow  # spawns a gloo process group

CONFIG = TrainConfig(epochs=2, batch_size=32, lr_max=1e-2, device="cpu",
                     schedule=OneCycle(0.8), allocation="global")


def _all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    return gathered


def _train(rank: int) -> dict:
    reports = []
    result = train(CONFIG, reports.append)
    masks = torch.cat([m.flatten() for m in result.pruner.state_dict()["masks"].values()])
    weights = torch.cat([p.detach().flatten() for p in result.model.parameters()])
    summary = torch.tensor([result.val_acc, result.test_acc,
                            result.history[-1]["train_loss"]], dtype=torch.float64)
    counts = [None] * dist.get_world_size()
    dist.all_gather_object(counts, len(reports))
    return {"masks": _all_gather(masks), "weights": _all_gather(weights),
            "summary": _all_gather(summary), "reports": counts,
            "steps": reports[-1]["step"] if reports else 0, "sparsity": result.sparsity}


def test_ddp_training_keeps_masks_identical_and_shards_the_data(run_distributed):
    got = run_distributed(_train)
    assert torch.equal(got["masks"][0], got["masks"][1])
    assert torch.equal(got["weights"][0], got["weights"][1])  # DDP kept the replicas equal
    assert torch.equal(got["summary"][0], got["summary"][1])  # metrics all-reduced
    assert got["reports"] == [2, 0]  # rank 0 reports, once per epoch
    # each rank takes half of every pass: 1293 samples -> 646 per rank -> 20 batches of 32
    assert got["steps"] == 2 * (1293 // 2 // 32)
    assert abs(got["sparsity"] - 0.8) < 1e-3
    single = train(dataclasses.replace(CONFIG, epochs=1))
    assert single.history[-1]["step"] == 1293 // 32
