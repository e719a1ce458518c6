"""Pruner: exact counts, ties, zeroed layers, monotone masks, masks that survive optimizer
steps, persistence, validation, and a 25M-weight global prune."""

import copy
import io

import pytest
import torch
import torchvision
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from oneprune.pruning import Pruner
from oneprune.ranking import kth_smallest, smallest


def small_net() -> nn.Module:
    """A small real ConvNet: conv layers of different sizes, BN, a linear head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def convs(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def pruned_units(weight: torch.Tensor, granularity: str) -> torch.Tensor:
    """Bool per unit: is it entirely zero (pruned, for a weight or a mask)?"""
    if granularity == "filter":
        return (weight.flatten(1) == 0).all(dim=1)
    return weight.flatten() == 0


def check_uniform(counts: list[int], units: list[int], sparsity: float) -> None:
    """Uniform allocation: exactly round(s N) units in all (capped so that every layer keeps
    one), never a layer emptied, and every layer within one unit of its share: s n, or
    where some layer cannot take its share (n - 1 at most), the same fraction of the
    others' units that the remainder makes."""
    total = sum(units)
    pruned = min(round(sparsity * total), total - len(units))
    assert sum(counts) == pruned
    shares = [sparsity * n for n in units]
    capped = set()
    while True:  # water-filling: a capped layer prunes n - 1, the rest share the remainder
        capped |= {i for i, (share, n) in enumerate(zip(shares, units, strict=True))
                   if share > n - 1}
        free = [n for i, n in enumerate(units) if i not in capped]
        rest = pruned - sum(units[i] - 1 for i in capped)
        shares = [units[i] - 1 if i in capped else rest / sum(free) * n
                  for i, n in enumerate(units)] if free else shares
        if not free or all(shares[i] <= units[i] - 1 for i in range(len(units))):
            break
    for count, n, share in zip(counts, units, shares, strict=True):
        assert count <= n - 1 and abs(count - share) <= 1, (count, n, share, sparsity)


# -- exact counts --------------------------------------------------------------------------


@pytest.mark.parametrize("make_model", [small_net, resnet18])
@pytest.mark.parametrize("granularity", ["weight", "filter"])
@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.8, 0.95])
def test_local_counts_are_exact_in_total_and_within_a_unit_per_layer(make_model, granularity,
                                                                    sparsity):
    model = make_model()
    pruner = Pruner(model, scope="local", granularity=granularity)
    pruner.prune_to(sparsity)
    units = [pruned_units(conv.weight, granularity) for _, conv in convs(model)]
    check_uniform([int(u.sum()) for u in units], [u.numel() for u in units], sparsity)


@pytest.mark.parametrize("make_model", [small_net, resnet18])
@pytest.mark.parametrize("granularity", ["weight", "filter"])
@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.8, 0.95])
def test_global_counts_are_exact_over_all_layers(make_model, granularity, sparsity):
    model = make_model()
    pruner = Pruner(model, scope="global", granularity=granularity)
    pruner.prune_to(sparsity)
    units = [pruned_units(conv.weight, granularity) for _, conv in convs(model)]
    total = sum(u.numel() for u in units)
    expected = min(round(sparsity * total), total - len(units))  # no layer emptied
    assert sum(int(u.sum()) for u in units) == expected
    assert all(not u.all() for u in units)
    if granularity == "weight":
        assert pruner.sparsity() == expected / total


def test_global_ranks_weights_across_layers():
    model = small_net()
    with torch.no_grad():
        model[0].weight.mul_(1e-3)  # the first layer is now the smallest by far
    pruner = Pruner(model, scope="global")
    pruner.prune_to(0.5)
    report = {row.name: row for row in pruner.layer_report()}
    assert report["0"].pruned == report["0"].weights - 1  # emptied but for its best weight
    assert sum(row.pruned for row in report.values()) == round(0.5 * (216 + 1152 + 256))


def test_global_filter_scores_are_rms_so_wide_layers_are_not_favoured():
    # Two layers whose weights all have magnitude 1: every filter has RMS 1, so a global
    # filter prune must tie them all and break ties by position, whatever the fan-in.
    model = nn.Sequential(nn.Conv2d(64, 4, 3), nn.Conv2d(4, 4, 1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].weight.fill_(-1.0)
        model[1].weight[3].fill_(0.5)  # the only filter below the rest
    pruner = Pruner(model, scope="global", granularity="filter")
    pruner.prune_to(0.25)  # 2 of 8 filters
    assert pruned_units(model[1].weight, "filter").tolist() == [False, False, False, True]
    # layer 0 keeps its first filter (each layer's best is never ranked); the next tie goes
    assert pruned_units(model[0].weight, "filter").tolist() == [False, True, False, False]


def test_a_layer_is_never_emptied():
    tiny = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.Conv2d(3, 1, 1, bias=False))
    for scope in ("local", "global"):
        for granularity in ("weight", "filter"):
            model = copy.deepcopy(tiny)
            pruner = Pruner(model, scope=scope, granularity=granularity)
            pruner.prune_to(0.99)
            for row in pruner.layer_report():
                assert row.pruned < row.weights, (scope, granularity, row)
    model = copy.deepcopy(tiny)
    Pruner(model, scope="local").prune_to(0.9)  # round(0.9 * 3) = 3 is capped at 2
    assert int((model[0].weight == 0).sum()) == 2


# -- ties and zeros ------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("granularity", ["weight", "filter"])
def test_exact_under_ties_with_position_tie_break(scope, granularity):
    model = small_net()
    with torch.no_grad():
        for _, conv in convs(model):
            conv.weight.fill_(0.5)  # every unit ties
    Pruner(model, scope=scope, granularity=granularity).prune_to(0.5)
    layer_units = [pruned_units(c.weight, granularity) for _, c in convs(model)]
    if scope == "local":
        for u in layer_units:  # the first round(s n) positions of each layer
            k = round(0.5 * u.numel())
            assert u[:k].all() and not u[k:].any()
    else:  # the first round(s N) positions overall, skipping each layer's kept first unit
        candidates, offset = [], 0
        for u in layer_units:
            candidates += range(offset + 1, offset + u.numel())
            offset += u.numel()
        expected = torch.zeros(offset, dtype=torch.bool)
        expected[candidates[: round(0.5 * offset)]] = True
        assert torch.equal(torch.cat(layer_units), expected)


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("granularity", ["weight", "filter"])
def test_exact_with_pre_existing_zeros_and_a_zeroed_layer(scope, granularity):
    model = small_net()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model[0].weight.zero_()  # a layer that is all zeros
        w = model[3].weight
        w.mul_(torch.rand(w.shape, generator=gen) > 0.6)  # 60% zeros before pruning
        if granularity == "filter":
            w[:5].zero_()
    pruner = Pruner(model, scope=scope, granularity=granularity)
    pruner.prune_to(0.7)
    # Zero weights are not all pruned here: count what the masks prune.
    layer_units = [pruned_units(m, granularity) for m in pruner.state_dict()["masks"].values()]
    if scope == "local":
        check_uniform([int(u.sum()) for u in layer_units], [u.numel() for u in layer_units],
                      0.7)
    else:
        total = sum(u.numel() for u in layer_units)
        assert sum(int(u.sum()) for u in layer_units) == round(0.7 * total)
    assert not layer_units[0].all()  # the zeroed layer keeps one unit


def test_smallest_is_exact_against_a_stable_sort_reference():
    gen = torch.Generator().manual_seed(0)
    cases = [
        torch.rand(5000, generator=gen),
        torch.randint(0, 4, (5000,), generator=gen).float(),  # heavy ties
        torch.randn(3_000_000, generator=gen).abs(),  # large: the bracketing path
        torch.randint(0, 50, (3_000_000,), generator=gen).float(),  # large with ties
    ]
    adversarial = torch.zeros(3_000_000)
    adversarial[:: 3_000_000 // (1 << 16)] = 100.0  # the strided sample sees only 100s
    adversarial[1::7] = torch.rand(len(adversarial[1::7]), generator=gen)
    cases.append(adversarial)  # the bracket misses: the full kthvalue answers
    for scores in cases:
        order = torch.sort(scores, stable=True).indices
        for k in (0, 1, len(scores) // 3, len(scores) - 1, len(scores)):
            expected = torch.zeros(len(scores), dtype=torch.bool)
            expected[order[:k]] = True
            assert torch.equal(smallest(scores, k), expected), k


def test_smallest_is_exact_on_mid_sized_cpu_scores():
    # 32k..1M scores on CPU take the bracketing path too (a plain kthvalue is slow there).
    gen = torch.Generator().manual_seed(1)
    n = 100_000
    pruned = torch.rand(n, generator=gen)
    pruned[torch.randperm(n, generator=gen)[: 6 * n // 10]] = -1.0  # pruned units' score
    low_sample = torch.rand(n, generator=gen) + 1.0
    low_sample[::16] = 0.0  # the strided sample sees only zeros: the inside is empty
    high_sample = torch.zeros(n)
    high_sample[::16] = 100.0  # the strided sample sees only 100s
    cases = [pruned, torch.randint(0, 3, (n,), generator=gen).float(), low_sample,
             high_sample, torch.rand(1 << 15, generator=gen)]
    for scores in cases:
        order = torch.sort(scores, stable=True).indices
        m = len(scores)
        for k in (0, 1, m // 16, m // 16 + 1, m // 3, 6 * m // 10, 6 * m // 10 + 1,
                  6 * m // 10 + m // 100, m - m // 16, m - 1, m):
            expected = torch.zeros(m, dtype=torch.bool)
            expected[order[:k]] = True
            assert torch.equal(smallest(scores, k), expected), k
    with_nan = torch.rand(n, generator=gen)
    with_nan[::1000] = float("nan")  # kthvalue sorts NaN last; so must the bracket
    for k in (1, n // 2, n - n // 1000, n - n // 1000 + 1, n):
        torch.testing.assert_close(kth_smallest(with_nan, k), torch.kthvalue(with_nan, k).values,
                                   rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_scores_follow_the_rule_with_non_finite_weights(bad):
    # On CPU the scores are computed branch-free; a non-finite weight must not change them.
    model = small_net()
    pruner = Pruner(model)
    pruner.prune_to(0.5)
    conv = convs(model)[1][1]
    with torch.no_grad():
        flat = conv.weight.view(-1)
        flat[int(torch.nonzero(flat == 0)[0])] = bad  # a pruned weight
        flat[int(torch.nonzero(flat != 0)[-1])] = bad  # a live weight
    expected = conv.weight.detach().abs().flatten().masked_fill(~pruner._alive[1], -1.0)
    scores = pruner._scores(1)
    assert torch.equal(scores.isnan(), expected.isnan())
    assert torch.equal(scores.nan_to_num(), expected.nan_to_num())
    n = conv.weight.numel()
    pruner.prune_to(0.6)
    assert pruner.layer_report()[1].pruned == round(0.6 * n)


def test_masks_are_identical_for_identical_weights():
    # What DDP relies on: each rank computes the masks alone from identical weights.
    first, second = resnet18(), resnet18()
    second.load_state_dict(first.state_dict())
    with torch.no_grad():  # ties included
        for model in (first, second):
            model.conv1.weight[:, :, 0].fill_(0.01)
    masks = []
    for model in (first, second):
        pruner = Pruner(model, scope="global")
        pruner.prune_to(0.6)
        pruner.prune_to(0.9)
        masks.append(pruner.state_dict()["masks"])
    assert masks[0].keys() == masks[1].keys()
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])


# -- monotone masks, optimizer steps, forward pass -----------------------------------------


@settings(max_examples=25, deadline=None)
@example(scope="local", granularity="filter", channels=[1, 8], targets=[0.734375], seed=0)
@given(scope=st.sampled_from(["local", "global"]),
       granularity=st.sampled_from(["weight", "filter"]),
       channels=st.lists(st.integers(1, 12), min_size=2, max_size=4),
       targets=st.lists(st.floats(0.0, 0.99), min_size=1, max_size=6),
       seed=st.integers(0, 2**16))
def test_masks_are_monotone_and_counts_exact(scope, granularity, channels, targets, seed):
    torch.manual_seed(seed)
    inputs = [3, *channels[:-1]]
    model = nn.Sequential(*[nn.Conv2d(a, b, 3) for a, b in zip(inputs, channels, strict=True)])
    pruner = Pruner(model, scope=scope, granularity=granularity)
    previous = [torch.zeros_like(u) for u in
                (pruned_units(c.weight, granularity) for _, c in convs(model))]
    highest = 0.0
    for target in targets:
        with torch.no_grad():  # training moves live weights; pruned ones must stay pruned
            for _, conv in convs(model):
                conv.weight.add_(torch.randn_like(conv.weight))
        pruner.apply_masks()
        pruner.prune_to(target)
        highest = max(highest, target)
        current = [pruned_units(c.weight, granularity) for _, c in convs(model)]
        for before, now in zip(previous, current, strict=True):
            assert torch.equal(before & now, before)  # nothing revived
        if scope == "local":
            check_uniform([int(u.sum()) for u in current], [u.numel() for u in current],
                          highest)
        else:
            total = sum(u.numel() for u in current)
            assert sum(int(u.sum()) for u in current) == min(round(highest * total),
                                                             total - len(current))
        previous = current


def test_lower_target_changes_nothing():
    model = small_net()
    pruner = Pruner(model)
    pruner.prune_to(0.8)
    before = pruner.state_dict()["masks"]
    pruner.prune_to(0.3)
    after = pruner.state_dict()["masks"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert pruner.sparsity() == pytest.approx(0.8, abs=1e-3)


def test_pruned_weights_stay_zero_after_sgd_with_momentum_and_weight_decay():
    model = small_net()
    pruner = Pruner(model, scope="global")
    pruner.prune_to(0.8)
    masks = {k: v.clone() for k, v in pruner.state_dict()["masks"].items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    revived = 0
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        revived += sum(int((dict(convs(model))[k].weight[~m] != 0).sum())
                       for k, m in masks.items())
        pruner.apply_masks()
        for name, conv in convs(model):
            assert torch.all(conv.weight[~masks[name]] == 0)
            assert torch.all(conv.weight.grad[~masks[name]] == 0)
    assert revived > 0  # without apply_masks the optimizer would have revived them
    assert pruner.sparsity() == pytest.approx(0.8, abs=1e-3)


def test_forward_pass_is_untouched():
    model = small_net()
    pruner = Pruner(model)
    pruner.prune_to(0.5)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert all(type(p) is nn.Parameter for p in model.parameters())
    assert set(dict(model.named_parameters())) == set(dict(small_net().named_parameters()))


def test_masks_follow_the_model_to_another_dtype_and_layout():
    model = small_net()
    pruner = Pruner(model)
    pruner.prune_to(0.5)
    model.double().to(memory_format=torch.channels_last)
    with torch.no_grad():
        for _, conv in convs(model):
            conv.weight.add_(1.0)
    pruner.apply_masks()
    assert pruner.sparsity() == pytest.approx(0.5, abs=1e-3)
    assert sum(int((c.weight == 0).sum()) for _, c in convs(model)) == sum(
        r.pruned for r in pruner.layer_report())
    pruner.prune_to(0.7)
    rows = pruner.layer_report()
    for row, (_, conv) in zip(rows, convs(model), strict=True):
        assert row.pruned == int((conv.weight == 0).sum())
    check_uniform([r.pruned for r in rows], [r.weights for r in rows], 0.7)


# -- layers, reports, persistence ----------------------------------------------------------


def test_layer_types_and_exclude():
    model = small_net()
    # "1*" matches the head "10" (not the BatchNorm "1", which is no prunable layer)
    pruner = Pruner(model, layer_types=(nn.Conv2d, nn.Linear), exclude=["0", "1*"])
    assert pruner.layer_names == ["3", "6"]
    pruner = Pruner(model, layer_types=nn.Linear)
    pruner.prune_to(0.5)
    assert pruner.layer_names == ["10"] and int((model[10].weight == 0).sum()) == 80
    assert int((model[0].weight == 0).sum()) == 0


def test_layer_report_and_sparsity():
    model = small_net()
    pruner = Pruner(model, granularity="filter")
    pruner.prune_to(0.5)
    rows = pruner.layer_report()
    assert [r.name for r in rows] == ["0", "3", "6"]
    assert [(r.weights, r.pruned) for r in rows] == [(216, 108), (1152, 576), (256, 128)]
    assert pruner.sparsity() == 812 / 1624
    assert "sparsity=0.5000" in repr(pruner)


def test_state_dict_round_trip_through_weights_only_load():
    model = small_net()
    pruner = Pruner(model, scope="global", granularity="filter")
    pruner.prune_to(0.6)
    buffer = io.BytesIO()
    torch.save(pruner.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    fresh = small_net()  # dense weights: loading masks zeroes them at once
    restored = Pruner(fresh, scope="global", granularity="filter")
    restored.load_state_dict(state)
    assert restored.sparsity() == pruner.sparsity()
    for (_, a), (_, b) in zip(convs(model), convs(fresh), strict=True):
        assert torch.equal(a.weight == 0, b.weight == 0)
    restored.prune_to(0.8)  # and pruning goes on from there, monotone
    for (_, a), (_, b) in zip(convs(model), convs(fresh), strict=True):
        assert torch.all(b.weight[a.weight == 0] == 0)


def test_load_state_dict_rejects_mismatched_state():
    pruner = Pruner(small_net())
    good = pruner.state_dict()
    masks = good["masks"]
    bad_states = {
        "'masks' mapping": {"granularity": "weight"},
        "granularity must be 'weight'": {**good, "granularity": "filter"},
        "must name exactly the layers": {**good, "masks": {"0": masks["0"]}},
        "must have shape": {**good, "masks": {**masks, "0": masks["3"]}},
        "prunes the whole layer": {**good, "masks": {**masks, "6": torch.zeros_like(masks["6"])}},
    }
    for message, state in bad_states.items():
        with pytest.raises(ValueError, match=message):
            pruner.load_state_dict(state)
    filter_pruner = Pruner(small_net(), granularity="filter")
    unstructured = {k: v.clone() for k, v in masks.items()}
    unstructured["0"][0, 0, 0, 0] = False
    with pytest.raises(ValueError, match="not filter-structured"):
        filter_pruner.load_state_dict({"granularity": "filter", "masks": unstructured})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"scope": "layer"}, "scope must be one of 'local', 'global', got 'layer'"),
    ({"allocation": "dense"}, "allocation must be one of 'uniform', 'global', 'erk'"),
    ({"scope": "local", "allocation": "lamp"}, "scope 'local' names allocation 'uniform'"),
    ({"allocation": "erk", "granularity": "filter"}, "allocation 'erk' cannot prune filters"),
    ({"allocation": "depth", "allocation_args": {"exponent": 8.5}},
     r"allocation_args.exponent must be in \[-8, 8\]"),
    ({"allocation": "lamp", "allocation_args": {"exponent": 1}},
     r"allocation_args has no argument 'exponent' for allocation 'lamp'"),
    ({"granularity": "channel"}, "granularity must be one of 'weight', 'filter'"),
    ({"layer_types": (int,)}, "layer_types must be nn.Module subclasses"),
    ({"exclude": "conv*"}, "exclude pattern 'conv\\*' matches no prunable layer"),
    ({"layer_types": nn.LSTM}, "model has no prunable layers"),
])
def test_invalid_construction_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Pruner(small_net(), **kwargs)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, float("nan"), "0.5", None])
def test_invalid_sparsity_raises(sparsity):
    with pytest.raises(ValueError, match=r"sparsity must be"):
        Pruner(small_net()).prune_to(sparsity)


# -- scale ---------------------------------------------------------------------------------


def test_global_prune_of_25m_weights():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Conv2d(1024, 1024, 3, bias=False) for _ in range(3)])
    total = sum(p.numel() for p in model.parameters())
    assert total > 25_000_000 > 2**24  # beyond torch.quantile's limit
    pruner = Pruner(model, scope="global")
    pruner.prune_to(0.5)
    pruner.prune_to(0.9)
    assert sum(int((m.weight == 0).sum()) for m in model) == round(0.9 * total)
    assert pruner.sparsity() == round(0.9 * total) / total


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_masks_match_cpu_masks():
    cpu_model, cuda_model = resnet18(), resnet18()
    cpu_pruner = Pruner(cpu_model, scope="global")
    cuda_pruner = Pruner(cuda_model, scope="global")  # made on the CPU, then moved
    cuda_model.cuda()
    masks = []
    for pruner in (cpu_pruner, cuda_pruner):
        pruner.prune_to(0.5)
        pruner.prune_to(0.9)
        pruner.apply_masks()
        masks.append({k: v.cpu() for k, v in pruner.state_dict()["masks"].items()})
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    assert all(torch.equal(cuda_model.state_dict()[k].cpu(), v)
               for k, v in cpu_model.state_dict().items())
