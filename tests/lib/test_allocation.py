"""Allocations: ERK and LAMP against their papers' formulas worked by hand, exact totals
under ties and zeros, monotone masks along a One-Cycle ramp, uniform+ and depth, bad input."""

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from oneprune.allocation import ALLOCATIONS, Allocation, allocation_of, base, lamp
from oneprune.allocation.base import integer_budgets
from oneprune.allocation.erk import erk_ratio
from oneprune.allocation.lamp import lamp_prune, lamp_scores
from oneprune.config import TrainConfig
from oneprune.parameters import parameter
from oneprune.pruning import Pruner
from oneprune.schedules import OneCycle

WEIGHT_ALLOCATIONS = tuple(ALLOCATIONS)
FILTER_ALLOCATIONS = tuple(a for a, cls in ALLOCATIONS.items() if not cls.WEIGHT_ONLY)


def depth_args(name: str, exponent: float) -> dict:
    """`allocation_args` giving depth its exponent (the others take no argument)."""
    return {"exponent": exponent} if name == "depth" else {}


def three_convs() -> nn.Sequential:
    """Layers of 108, 32 and 1152 weights (4, 8 and 16 filters)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 8, 1), nn.Conv2d(8, 16, 3))


def net(sizes=(3, 8, 16, 16, 32)) -> nn.Sequential:
    """Convolutions of growing width: layers of very different sizes."""
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Conv2d(a, b, 3, padding=1)
                           for a, b in zip(sizes, sizes[1:], strict=False)])


def pruned_counts(pruner: Pruner) -> list[int]:
    """Units each layer has pruned (weights, or filters)."""
    return [n - int(alive.sum()) for n, alive in zip(pruner._units(), pruner._alive, strict=True)]


# -- ERK, worked by hand -------------------------------------------------------------------


def test_erk_densities_worked_by_hand_with_a_layer_kept_dense():
    # ERK ratios (sum of dims / product): 13/108, 14/32, 30/1152, so at 80% sparsity
    # (258.4 of 1292 weights kept) eps * (13 + 14 + 30) = 258.4 gives the 1x1 layer a
    # density of 4.533 * 14/32 = 1.98 > 1: it stays dense (32 kept) and the scale is solved
    # again over the other two: eps = (258.4 - 32) / (13 + 30) = 5.2651.
    shapes = [(4, 3, 3, 3), (8, 4, 1, 1), (16, 8, 3, 3)]
    units = [108, 32, 1152]
    assert [erk_ratio(s) for s in shapes] == [13 / 108, 14 / 32, 30 / 1152]
    eps = (0.2 * 1292 - 32) / (13 + 30)
    expected = [eps * 13, 32.0, eps * 30]
    kept = allocation_of("erk").kept_targets(units, shapes, 1292 - 1033.6)
    np.testing.assert_allclose(kept, expected, rtol=1e-12)
    # No layer hits density 1 at 90%: one scale for all, eps = 129.2 / 57.
    np.testing.assert_allclose(allocation_of("erk").kept_targets(units, shapes, 129.2),
                               [129.2 / 57 * r for r in (13, 14, 30)], rtol=1e-12)
    # Integer budgets: round(0.8 * 1292) = 1034 pruned; floors 39 + 0 + 994 = 1033, and the
    # extra unit goes to the first layer (pruned target 39.55, the largest remainder).
    pruner = Pruner(three_convs(), allocation="erk")
    pruner.prune_to(0.8)
    assert pruned_counts(pruner) == [40, 0, 994]


def test_erk_keeps_small_layers_denser_than_uniform():
    model = net()
    Pruner(model, allocation="erk").prune_to(0.9)
    density = [float((m.weight != 0).float().mean()) for m in model]
    assert density == sorted(density, reverse=True)  # the wider, the sparser
    assert density[0] > 0.3 and density[-1] < 0.1


# -- LAMP, against the paper's formula -----------------------------------------------------


def test_lamp_scores_of_a_toy_tensor_follow_the_formula():
    # Magnitudes 2, 1, 3, 2: squares in order 1, 4, 4, 9 (sum 18); a score is the square
    # over the sum of the squares at or after it in (magnitude, position) order.
    scores = lamp_scores(torch.tensor([2.0, 1.0, 3.0, 2.0]))
    assert scores.tolist() == [4 / 17, 1 / 18, 9 / 9, 4 / 13]
    assert lamp_scores(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def reference_lamp_counts(layers: list[torch.Tensor], total: int) -> list[int]:
    """LAMP by the paper, brute force: each live weight's score from its own layer's sorted
    squares, every layer's best weight never ranked, the `total` lowest over all layers
    (pruned units, marked -1, first), ties by layer and position."""
    keys = []
    for index, scores in enumerate(layers):
        values = scores.double().tolist()
        live = sorted((v, p) for p, v in enumerate(values) if v >= 0)
        rest = math.fsum(v * v for v, _ in live)  # the squares at or after the current one
        for rank, (v, p) in enumerate(live):
            score = math.inf if rank == len(live) - 1 else (v * v / rest if rest else 0.0)
            keys.append((score, index, p))
            rest -= v * v
        keys += [(-1.0, index, p) for p, v in enumerate(values) if v < 0]
    counts = [0] * len(layers)
    for _, index, _ in sorted(keys)[:total]:
        counts[index] += 1
    return counts


def lamp_counts(layers: list[torch.Tensor], total: int) -> list[int]:
    return [int(pruned.sum()) for pruned in lamp_prune(layers, total)]


def test_lamp_counts_match_the_brute_force_reference_with_ties_zeros_and_pruned_units():
    gen = torch.Generator().manual_seed(0)
    layers = [torch.randn(50, generator=gen).abs(), torch.randn(300, generator=gen).abs(),
              torch.randint(0, 4, (200,), generator=gen).float(), torch.zeros(20)]
    layers[1][:100] = -1.0  # pruned already
    for total in (100, 150, 300, 500, 570 - 4):
        assert lamp_counts(layers, total) == reference_lamp_counts(layers, total), total


def test_lamp_on_large_layers_scores_a_window_and_stays_exact():
    # Layers above the exact size are scored only around the estimated threshold; the
    # counts must equal those of scoring every weight.
    gen = torch.Generator().manual_seed(1)
    layers = [torch.randn(40_000, generator=gen).abs() * 2,
              torch.randn(90_000, generator=gen).abs(),
              torch.randn(150_000, generator=gen).abs() * 0.5, torch.rand(500, generator=gen)]
    layers[2][torch.randperm(150_000, generator=gen)[:30_000]] = -1.0
    n = sum(s.numel() for s in layers)
    for sparsity in (0.3, 0.6, 0.9, 0.98):
        total = round(sparsity * n)
        windows = lamp._lamp_windows(layers, total)
        assert any(math.isfinite(low) or math.isfinite(high) for low, high in windows)
        windowed = lamp._lamp_windowed(layers, total, windows)
        exact = lamp._lamp_windowed(layers, total, [(-math.inf, math.inf)] * 4)
        assert windowed is not None and all(map(torch.equal, windowed, exact))
        assert [int(p.sum()) for p in windowed] == reference_lamp_counts(layers, total)
    # A threshold in the middle of a run of ties cannot be decided from a window: the
    # check refuses it and every weight is scored.
    tied = [torch.ones(40_000), torch.ones(40_000)]
    assert lamp_counts(tied, 40_000) == reference_lamp_counts(tied, 40_000) == [20_000] * 2


def test_lamp_prunes_the_layer_whose_weights_matter_least_relative_to_its_own():
    model = three_convs()
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # global magnitude would empty it; LAMP is scale-free
    lamp = Pruner(model, allocation="lamp")
    lamp.prune_to(0.5)
    counts = pruned_counts(lamp)
    assert sum(counts) == round(0.5 * 1292) and counts[2] < 1151


# -- every allocation: exact, monotone, never empties a layer ------------------------------


@pytest.mark.parametrize("name", WEIGHT_ALLOCATIONS)
def test_exact_totals_under_ties_and_pre_existing_zeros(name):
    model = net()
    with torch.no_grad():
        model[0].weight.zero_()  # a layer of zeros
        model[1].weight.fill_(0.5)  # a layer of ties
        model[3].weight.mul_(torch.rand(model[3].weight.shape) > 0.5)
    pruner = Pruner(model, allocation=name, allocation_args=depth_args(name, 1.5))
    # uniform+ keeps its first layer dense and 20% of its last: at most 86% here
    for sparsity in (0.3, 0.7, 0.85 if name == "uniform_plus" else 0.95):
        pruner.prune_to(sparsity)
        counts, units = pruned_counts(pruner), pruner._units()
        most = pruner.allocation.most_pruned(units)
        assert sum(counts) == min(round(sparsity * sum(units)), sum(most)), name
        assert all(c <= n - 1 for c, n in zip(counts, units, strict=True))
        assert pruner.sparsity() == sum(counts) / sum(units)


@pytest.mark.parametrize(("name", "granularity"), [
    *((name, "weight") for name in WEIGHT_ALLOCATIONS),
    *((name, "filter") for name in FILTER_ALLOCATIONS)])
def test_masks_are_monotone_along_a_one_cycle_ramp(name, granularity):
    model = net()
    pruner = Pruner(model, allocation=name, granularity=granularity,
                    allocation_args=depth_args(name, -2.0))
    schedule = OneCycle(0.75 if name == "uniform_plus" else 0.9)  # uniform+: see above
    gen = torch.Generator().manual_seed(2)
    previous = [torch.ones_like(alive) for alive in pruner._alive]
    for t in np.linspace(0, 1, 41):
        with torch.no_grad():  # training moves the live weights between mask updates
            for conv in model:
                conv.weight.add_(torch.randn(conv.weight.shape, generator=gen) * 0.05)
        pruner.apply_masks()
        pruner.prune_to(float(schedule(t)))
        for before, now in zip(previous, pruner._alive, strict=True):
            assert not (now & ~before).any()  # nothing revived
            assert now.any()  # never emptied
        assert sum(pruned_counts(pruner)) == round(float(schedule(t)) * sum(pruner._units()))
        previous = [alive.clone() for alive in pruner._alive]


def test_ties_are_broken_by_position_within_a_layer():
    model = net()
    with torch.no_grad():
        for conv in model:
            conv.weight.fill_(1.0)
    for name in ("uniform", "erk", "depth", "lamp"):
        pruner = Pruner(model, allocation=name, allocation_args=depth_args(name, 1.0))
        pruner.prune_to(0.6)
        for alive, count in zip(pruner._alive, pruned_counts(pruner), strict=True):
            assert not alive[:count].any() and alive[count:].all(), name
        for conv in model:
            with torch.no_grad():
                conv.weight.fill_(1.0)


# -- uniform+, depth -----------------------------------------------------------------------


def test_uniform_plus_keeps_the_first_layer_dense_and_a_fifth_of_the_last():
    model = net()
    pruner = Pruner(model, allocation="uniform_plus")
    pruner.prune_to(0.8)
    counts, units = pruned_counts(pruner), pruner._units()
    assert counts[0] == 0
    assert units[-1] - counts[-1] >= math.ceil(0.2 * units[-1])
    assert sum(counts) == round(0.8 * sum(units))
    middle = [c / n for c, n in zip(counts[1:-1], units[1:-1], strict=True)]
    assert max(middle) - min(middle) < 0.01  # the rest uniform


def test_uniform_plus_refuses_a_target_it_cannot_reach_naming_the_layers():
    pruner = Pruner(net(), allocation="uniform_plus")
    with pytest.raises(ValueError, match=r"allocation 'uniform_plus' cannot reach sparsity "
                                         r"0.97: it keeps the first pruned layer '0' dense "
                                         r"\(216 weights\) and 20% of the last, '3'"):
        pruner.prune_to(0.97)


def test_depth_zero_is_uniform_and_its_sign_orders_the_layers():
    def densities(**options):
        model = nn.Sequential(*[nn.Conv2d(8, 8, 3) for _ in range(5)])
        Pruner(model, **options).prune_to(0.8)
        return [float((m.weight != 0).float().mean()) for m in model]

    assert densities(allocation="depth", allocation_args={"exponent": 0.0}) == densities(
        allocation="uniform")
    rising = densities(allocation="depth", allocation_args={"exponent": 2.0})
    assert rising == sorted(rising, reverse=True)  # deeper layers sparser
    np.testing.assert_allclose(rising[0] / rising[-1], math.exp(2.0), rtol=0.02)
    falling = densities(allocation="depth", allocation_args={"exponent": -2.0})
    assert falling == sorted(falling)


# -- rounding ------------------------------------------------------------------------------


def test_integer_budgets_round_by_largest_remainder_within_bounds():
    assert integer_budgets([1.5, 1.5, 1.0], [0, 0, 0], [3, 3, 3], 4) == [2, 1, 1]
    assert integer_budgets([2.4, 0.7, 5.9], [0, 0, 0], [9, 9, 9], 9) == [2, 1, 6]
    # A layer that pruned more earlier keeps it; the unit it is ahead by is taken from the
    # others: the third, furthest below its target (5 of 5.9), still gets its unit first.
    assert integer_budgets([2.4, 0.7, 5.9], [3, 0, 0], [9, 9, 9], 9) == [3, 0, 6]
    assert integer_budgets([2.4, 0.7, 5.9], [3, 1, 0], [9, 9, 9], 9) == [3, 1, 5]
    # A layer at its bound passes its share on.
    assert integer_budgets([4.0, 4.0], [0, 0], [2, 9], 8) == [2, 6]


def test_filter_granularity_refuses_erk_in_one_line():
    with pytest.raises(ValueError, match="allocation 'erk' cannot prune filters: ERK sets a "
                                         "layer's density from the shape of its weight "
                                         "tensor"):
        Pruner(net(), allocation="erk", granularity="filter")


# -- a new allocation: one module ---------------------------------------------------------


@pytest.fixture
def front_loaded():
    """An allocation defined here, as a user would add one, with an argument of its own:
    the first `share` of the layers twice as dense as the rest. It registers itself on
    definition and is removed from the registry afterwards."""
    @dataclass(frozen=True)
    class FrontLoaded(Allocation):
        share: float = parameter(0.5, help="share of the layers kept twice as dense",
                                 limits={"low": 0.0, "high": 1.0, "low_open": True},
                                 bounds=(0.25, 0.75))

        name: ClassVar[str] = "front_loaded"

        def density(self, units, shapes):
            cut = math.ceil(self.share * len(units))
            return [2.0 if i < cut else 1.0 for i in range(len(units))]

    yield FrontLoaded
    del base._ALLOCATIONS["front_loaded"]


def test_a_new_allocation_registers_and_takes_its_own_arguments(front_loaded):
    assert ALLOCATIONS["front_loaded"] is front_loaded
    assert allocation_of("front_loaded", {"share": 0.25}) == front_loaded(share=0.25)
    model = nn.Sequential(*[nn.Conv2d(8, 8, 3) for _ in range(4)])
    Pruner(model, allocation="front_loaded", allocation_args={"share": 0.5}).prune_to(0.5)
    kept = [int((conv.weight != 0).sum()) for conv in model]  # 576 weights each
    assert kept == [384, 384, 192, 192]  # c (2 + 2 + 1 + 1) 576 = 1152 kept: c = 1/3
    with pytest.raises(ValueError, match=r"allocation_args.share must be in \(0, 1\]"):
        Pruner(model, allocation="front_loaded", allocation_args={"share": 2})
    cfg = TrainConfig(allocation="front_loaded", allocation_args={"share": 0.25})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_an_allocation_name_cannot_be_taken_twice():
    with pytest.raises(ValueError, match="allocation 'lamp' is defined twice"):
        @dataclass(frozen=True)
        class OtherLAMP(Allocation):
            name: ClassVar[str] = "lamp"
    assert ALLOCATIONS["lamp"] is lamp.LAMP


def test_an_older_depth_exponent_in_a_saved_config_becomes_depths_argument():
    old = {**TrainConfig(allocation="depth").to_dict(), "depth_exponent": 1.5}
    del old["allocation_args"]
    assert TrainConfig.from_dict(old).allocation_args == {"exponent": 1.5}
    old = {**TrainConfig().to_dict(), "depth_exponent": 0.0}  # uniform: it had no effect
    del old["allocation_args"]
    assert TrainConfig.from_dict(old) == TrainConfig()
