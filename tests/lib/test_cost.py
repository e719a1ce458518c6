"""What a pruned network costs deployed (`oneprune.cost`), on a network whose multiply-adds,
parameters and bytes are worked out by hand: dense, filter-pruned (slim) and weight-pruned;
and latency timed interleaved with dense, in torch and in onnxruntime."""

import math

import pytest
import torch
from torch import nn

from oneprune.cost import (
    COST_METRICS,
    LatencySettings,
    measure_costs,
    saving,
    speedup,
    spread,
    static_costs,
    time_interleaved,
)
from oneprune.deploy import count_macs, deployable, footprint
from oneprune.models import build_model
from oneprune.pruning import Pruner

SIDE = 5  # 1 x 5 x 5 images


class Tiny(nn.Module):
    """conv 1 -> 4 (3x3, padding 1, no bias), BatchNorm, ReLU, linear 100 -> 3."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * SIDE * SIDE, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.norm(self.conv(x))).flatten(1))


# By hand. Multiply-adds: conv 4 filters x 9 weights x 25 positions, linear 100 x 3.
# Parameters: conv 36, BatchNorm 8, linear 300 + 3. Bytes of the state dict's tensors:
# float32 parameters, BatchNorm's running mean and variance (4 + 4 floats) and its int64
# batch counter.
DENSE = {"macs": 4 * 9 * 25 + 100 * 3, "params": 36 + 8 + 303,
         "bytes": (36 + 8 + 8 + 303) * 4 + 8}
# Half the filters removed: conv 2 x 9 x 25, linear 50 x 3; conv 18, BatchNorm 4, linear
# 150 + 3.
SLIM = {"macs": 2 * 9 * 25 + 50 * 3, "params": 18 + 4 + 153,
        "bytes": (18 + 4 + 4 + 153) * 4 + 8}
# Half the conv weights zeroed: dense shapes, so dense multiply-adds; 18 parameters fewer;
# the conv weight stored as its 18 non-zeros and 36 bits (5 bytes), the rest as is (the
# linear weight has no zeros: its non-zeros and bits would be larger).
WEIGHT = {"macs": DENSE["macs"], "params": DENSE["params"] - 18,
          "bytes": DENSE["bytes"] - 36 * 4 + 18 * 4 + 5}
MEAN, STD = (0.5,), (0.25,)


def costs_of(model, granularity, latency=None):
    return measure_costs(model, granularity=granularity, mean=MEAN, std=STD, image_size=SIDE,
                         latency=latency)


def filter_pruned():
    model = Tiny()
    Pruner(model, granularity="filter", example_inputs=torch.rand(2, 1, SIDE, SIDE)
           ).prune_to(0.5)
    return model


def test_the_costs_of_dense_slim_and_weight_pruned_networks_are_the_hand_counts():
    dense = costs_of(Tiny(), "weight")
    assert {key: dense[f"dense_{key}"] for key in DENSE} == DENSE
    assert {key: dense[key] for key in DENSE} == DENSE  # nothing pruned: dense
    slim = costs_of(filter_pruned(), "filter")
    assert {key: slim[key] for key in SLIM} == SLIM
    assert {key: slim[f"dense_{key}"] for key in DENSE} == DENSE
    model = Tiny()
    Pruner(model).prune_to(0.5)
    weight = costs_of(model, "weight")
    assert {key: weight[key] for key in WEIGHT} == WEIGHT
    assert {key: weight[f"dense_{key}"] for key in DENSE} == DENSE
    assert saving("macs", slim) == pytest.approx(1 - 600 / 1200)
    assert saving("params", weight) == pytest.approx(18 / 347)
    assert saving("macs", weight) == 0.0  # dense kernels execute every multiply-add


def test_a_filter_pruned_network_that_cannot_be_slimmed_costs_what_it_costs_masked():
    """A filter whose BatchNorm channel was not zeroed (no example inputs to find it) is
    not exactly zero: it stays, masked, at dense cost."""
    model = Tiny()
    Pruner(model, granularity="filter").prune_to(0.5)
    with torch.no_grad():
        model.norm.bias.fill_(0.1)
    costs = costs_of(model, "filter")
    assert costs["macs"] == DENSE["macs"] and costs["params"] == DENSE["params"]


def test_multiply_adds_are_torchs_count_and_the_sparse_count_hooks_agree_with_it():
    """`count_macs` is FlopCounterMode's; the hooks that count non-zero multiply-adds count
    every multiply-add of a dense network too (convnet, ResNet-18: convolutions, linear)."""
    assert count_macs(Tiny(), (1, SIDE, SIDE)) == DENSE["macs"]
    for name, channels, side in (("convnet", 1, 8), ("resnet18", 3, 32)):
        model = build_model(name, 10, channels)
        with torch.no_grad():  # no weight exactly zero (ResNet-18's init has a few)
            for parameter in model.parameters():
                parameter.add_((parameter == 0).float())
        counted = footprint(model, (channels, side, side))
        assert counted["macs_per_image"] == counted["nonzero_macs_per_image"] > 0
    assert count_macs(build_model("resnet18", 10, 3), (3, 32, 32)) == 555_422_720


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_latency_is_timed_interleaved_with_dense_in_the_runtime(runtime):
    settings = LatencySettings(runtime=runtime, batch=8, threads=1, rounds=3, warmup=1)
    costs = costs_of(build_and_prune(), "filter", latency=settings)
    assert set(costs) == set(COST_METRICS)
    assert costs["latency_ms"] > 0 and costs["dense_latency_ms"] > 0
    assert costs["speedup"] > 0 and costs["latency_spread"] >= 0
    assert saving("latency", costs) == pytest.approx(1 - 1 / costs["speedup"])
    assert torch.get_num_threads() >= 1  # restored


def build_and_prune():
    model = build_model("convnet", 10, 1)
    Pruner(model, granularity="filter", example_inputs=torch.rand(2, 1, 8, 8)).prune_to(0.5)
    return model


def test_interleaved_rounds_give_each_model_one_time_per_round():
    model = build_and_prune()
    ready = {label: deployable(model, mean=MEAN, std=STD, image_size=8, slim=slim)
             for label, slim in (("masked", False), ("slim", True))}
    seconds = time_interleaved(ready, LatencySettings(runtime="torch", batch=2, rounds=4,
                                                      warmup=0))
    assert {label: len(times) for label, times in seconds.items()} == {"masked": 4, "slim": 4}
    assert static_costs(ready["slim"], "filter")["macs"] < static_costs(
        ready["masked"], "filter")["macs"]


def test_ratios_pair_rounds_and_spread_is_the_relative_interquartile_range():
    assert speedup([2.0, 4.0, 3.0], [1.0, 1.0, 1.0]) == 3.0
    assert speedup([2.0, 9.0, 2.0], [1.0, 3.0, 1.0]) == 2.0  # round 2's load hits both
    assert spread([1.0, 1.0, 1.0, 1.0]) == 0.0
    assert spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0 / 3.0)
    assert math.isclose(saving("bytes", {"bytes": 25, "dense_bytes": 100}), 0.75)


@pytest.mark.parametrize(("settings", "message"), [
    ({"runtime": "tensorrt"}, "latency.runtime must be one of 'onnxruntime', 'torch'"),
    ({"batch": 0}, "latency.batch must be in [1, 4096]"),
    ({"threads": 0}, "latency.threads must be in [1, 256]"),
    ({"rounds": 2}, "latency.rounds must be in [3, 1000]"),
])
def test_bad_latency_settings_name_their_field(settings, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        LatencySettings(**settings)


def test_bad_cost_and_granularity_name_their_field():
    with pytest.raises(ValueError, match="cost must be one of"):
        saving("speed", {})
    with pytest.raises(ValueError, match="granularity must be one of"):
        costs_of(Tiny(), "channel")
