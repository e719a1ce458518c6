"""Under real DDP (gloo, two spawned processes): every rank computes identical masks on its
own, whatever the allocation; and `train` shards the data, keeps the masks and replicas
identical, reports from rank 0, starts every rank from the weights it is given and
distils on every rank. One process group runs all four (spawning is the cost)."""

import dataclasses
import functools

import pytest
import torch
import torch.distributed as dist
from testkit.distributed import run_distributed
from testkit.forward import first_forward
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import oneprune.train
from oneprune.allocation import ALLOCATIONS
from oneprune.config import TrainConfig
from oneprune.models import ConvNet
from oneprune.pruning import Pruner
from oneprune.schedules import OneCycle
from oneprune.train import train

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
        pruner = Pruner(model, allocation=allocation,
                        allocation_args={"exponent": 1.0} if allocation == "depth" else {})
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


CONFIG = TrainConfig(epochs=2, batch_size=32, lr_max=1e-2, device="cpu",
                     schedule=OneCycle(0.8), allocation="global")


def _all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    return gathered


def _train(rank: int, data) -> dict:
    reports = []
    result = train(CONFIG, reports.append, data=data)
    masks = torch.cat([m.flatten() for m in result.pruner.state_dict()["masks"].values()])
    weights = torch.cat([p.detach().flatten() for p in result.model.parameters()])
    summary = torch.tensor([result.val_acc, result.test_acc,
                            result.history[-1]["train_loss"]], dtype=torch.float64)
    counts = [None] * dist.get_world_size()
    dist.all_gather_object(counts, len(reports))
    return {"masks": _all_gather(masks), "weights": _all_gather(weights),
            "summary": _all_gather(summary), "reports": counts,
            "steps": reports[-1]["step"] if reports else 0, "sparsity": result.sparsity}


def _start(rank: int, data) -> dict:
    """A run from given weights: every rank's first forward pass (its replica, on its own
    first batch) is the given model's on that batch."""
    torch.manual_seed(123)
    given = ConvNet(num_classes=10, in_channels=1).state_dict()
    with first_forward(ConvNet) as seen:
        train(dataclasses.replace(CONFIG, epochs=1, init="given", seed=7,
                                  schedule=OneCycle(0.8, start=0.3)), data=data,
              initial=given)
    reference = ConvNet(num_classes=10, in_channels=1)
    reference.load_state_dict(given)
    with torch.no_grad():
        same = torch.tensor([float(torch.equal(reference.train()(seen[0][0]), seen[0][1]))])
    return {"first_forward_is_the_given_model": _all_gather(same)}


def _distil(rank: int, data) -> dict:
    """A run with a teacher: every rank builds one and distils on each of its steps (the
    real loss, counted through a spy), against the teacher's logits of its own batch."""
    torch.manual_seed(321)
    teacher = ConvNet(num_classes=10, in_channels=1).state_dict()
    reference = ConvNet(num_classes=10, in_channels=1).eval()
    reference.load_state_dict(teacher)
    steps = []
    real = oneprune.train.distillation_loss

    def counted(student_logits, teacher_logits, labels, **settings):
        steps.append(float(torch.equal(teacher_logits, reference(seen[-1]))))
        return real(student_logits, teacher_logits, labels, **settings)

    seen = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: seen.append(args[0].detach()) if isinstance(
            module, ConvNet) and not module.training else None)
    original, oneprune.train.distillation_loss = oneprune.train.distillation_loss, counted
    try:
        result = train(dataclasses.replace(CONFIG, epochs=1, teacher="given",
                                           distill_weight=0.5), data=data, teacher=teacher)
    finally:
        oneprune.train.distillation_loss = original
        hook.remove()
    return {"steps": _all_gather(torch.tensor([len(steps), result.history[-1]["step"]])),
            "teacher_logits_of_its_batch": _all_gather(torch.tensor([min(steps)]))}


def _both(rank: int, data) -> dict:
    return {"prune": _train_and_prune(rank), "train": _train(rank, data),
            "start": _start(rank, data), "distil": _distil(rank, data)}


@pytest.fixture(scope="module")
def group(tmp_path_factory, digits):
    """What rank 0 returned from both jobs, run once in one process group (the ranks get
    this process's digits: no rank loads it again)."""
    return run_distributed(functools.partial(_both, data=digits), 2,
                           tmp_path_factory.mktemp("ddp"))


def test_ranks_compute_identical_masks_for_every_allocation(group):
    result = group["prune"]
    for allocation in ALLOCATIONS:
        first, second = result["masks"][allocation]
        assert torch.equal(first, second), allocation
        final = 0.5 if allocation == "uniform_plus" else 0.7
        assert result["sparsity"][allocation] == pytest.approx(final, abs=0.01)
        assert not first.all()


def test_ddp_training_keeps_masks_identical_and_shards_the_data(group, digits):
    got = group["train"]
    assert torch.equal(got["masks"][0], got["masks"][1])
    assert torch.equal(got["weights"][0], got["weights"][1])  # DDP kept the replicas equal
    assert torch.equal(got["summary"][0], got["summary"][1])  # metrics all-reduced
    assert got["reports"] == [2, 0]  # rank 0 reports, once per epoch
    # each rank takes half of every pass: 1293 samples -> 646 per rank -> 20 batches of 32
    assert got["steps"] == 2 * (1293 // 2 // 32)
    assert abs(got["sparsity"] - 0.8) < 1e-3
    single = train(dataclasses.replace(CONFIG, epochs=1), data=digits)
    assert single.history[-1]["step"] == 1293 // 32


def test_every_rank_distils_on_every_step(group):
    steps = [tuple(int(v) for v in pair) for pair in group["distil"]["steps"]]
    assert steps == [(1293 // 2 // 32, 1293 // 2 // 32)] * 2
    assert [float(v) for v in group["distil"]["teacher_logits_of_its_batch"]] == [1.0, 1.0]


def test_every_rank_starts_from_the_given_weights(group):
    assert [float(v) for v in group["start"]["first_forward_is_the_given_model"]] == [1.0, 1.0]
