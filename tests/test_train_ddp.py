"""`train` under real DDP (gloo, two processes): sharded data, identical masks, rank 0 reports."""

import dataclasses

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from oneprune.schedules import OneCycle
from oneprune.train import TrainConfig, train

WORLD_SIZE = 2
CONFIG = TrainConfig(epochs=2, batch_size=32, lr_max=1e-2, device="cpu",
                     schedule=OneCycle(0.8), scope="global")


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=WORLD_SIZE)
    try:
        reports = []
        result = train(CONFIG, reports.append)
        masks = torch.cat([m.flatten() for m in result.pruner.state_dict()["masks"].values()])
        weights = torch.cat([p.detach().flatten() for p in result.model.parameters()])
        summary = torch.tensor([masks.sum(), result.val_acc, result.test_acc,
                                result.history[-1]["train_loss"]], dtype=torch.float64)
        gathered_masks = [torch.empty_like(masks) for _ in range(WORLD_SIZE)]
        gathered_weights = [torch.empty_like(weights) for _ in range(WORLD_SIZE)]
        gathered = [torch.empty_like(summary) for _ in range(WORLD_SIZE)]
        dist.all_gather(gathered_masks, masks)
        dist.all_gather(gathered_weights, weights)
        dist.all_gather(gathered, summary)
        counts = [None] * WORLD_SIZE
        dist.all_gather_object(counts, len(reports))
        if rank == 0:
            torch.save({"masks": gathered_masks, "weights": gathered_weights,
                        "summary": gathered, "reports": counts, "steps": reports[-1]["step"],
                        "sparsity": result.sparsity}, out)
    finally:
        dist.destroy_process_group()


def test_ddp_training_keeps_masks_identical_and_shards_the_data(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(out)), nprocs=WORLD_SIZE)
    got = torch.load(out, weights_only=True)
    assert torch.equal(got["masks"][0], got["masks"][1])
    assert torch.equal(got["weights"][0], got["weights"][1])  # DDP kept the replicas equal
    assert torch.equal(got["summary"][0], got["summary"][1])  # metrics all-reduced
    assert got["reports"] == [2, 0]  # rank 0 reports, once per epoch
    # each rank takes half of every pass: 1293 samples -> 646 per rank -> 20 batches of 32
    assert got["steps"] == 2 * (1293 // 2 // 32)
    assert abs(got["sparsity"] - 0.8) < 1e-3
    single = train(dataclasses.replace(CONFIG, epochs=1))
    assert single.history[-1]["step"] == 1293 // 32
