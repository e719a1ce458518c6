"""Filter pruning of coupled channels and `round_to`: the layers a residual addition couples
score each channel together and prune the same channels, so `slim` removes them; plain
networks prune as before; `round_to` keeps every layer's filters a multiple of N."""

import pytest
import torch
from torch import nn

from oneprune.config import TrainConfig
from oneprune.deploy import deployable
from oneprune.models import build_model
from oneprune.pruning import Pruner
from oneprune.structured import filter_structure, slim

DENSE_RESNET18_MACS = 555_422_720  # per 32x32 image, oneprune.deploy.footprint


class TwoBlocks(nn.Module):
    """A stem and two residual blocks: the first adds to the stem's channels (identity
    shortcut), the second to a 1x1 projection's. Convolutions of 12 and 6 filters too (not
    multiples of 8; fewer than 8)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12),
                               nn.ReLU(), nn.Conv2d(12, 16, 3, padding=1, bias=False),
                               nn.BatchNorm2d(16))
        self.b = nn.Sequential(nn.Conv2d(16, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6),
                               nn.ReLU(), nn.Conv2d(6, 32, 3, padding=1), nn.BatchNorm2d(32))
        self.project = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.a(x))
        x = torch.relu(self.project(x) + self.b(x))
        return self.head(x.mean(dim=(2, 3)))


COUPLED = [("stem.0", "a.3"), ("b.3", "project.0")]  # in the pruner's layer order


def two_blocks() -> nn.Module:
    torch.manual_seed(0)
    model = TwoBlocks()
    with torch.no_grad():  # BatchNorm as training leaves it: a kept shift would show
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def pruned_filters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per conv layer: bool per filter, is it all zero."""
    return {name: (module.weight.flatten(1) == 0).all(dim=1)
            for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}


def perturb(model: nn.Module, pruner: Pruner, seed: int) -> None:
    """What training does between two prunes: every weight moves a little (the pruned ones
    are zeroed again)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                noise = torch.randn(module.weight.shape, generator=generator)
                module.weight.add_(noise * 0.2 * module.weight.std())
    pruner.apply_masks()


def check_slim_exact(model: nn.Module, example: torch.Tensor, *, every: bool = True
                     ) -> list:
    """`slim` (which refuses a slim copy that differs by more than 1e-4) and one more batch:
    the same outputs, and with `every` every zeroed filter removed."""
    slim_model, rows = slim(model, example)
    if every:
        assert all(row.filters_removed == row.filters_masked for row in rows), rows
    images = torch.rand(8, *example.shape[1:], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(slim_model(images), model.eval()(images), rtol=1e-4,
                                   atol=1e-5)
    return rows


# -- coupled channels ----------------------------------------------------------------------


def test_the_layers_a_residual_addition_couples_are_found():
    model = two_blocks()
    pruner = Pruner(model, granularity="filter", example_inputs=torch.zeros(2, 3, 8, 8))
    names = pruner.layer_names
    _, couplings = filter_structure(model, [dict(model.named_modules())[n] for n in names],
                                    torch.zeros(2, 3, 8, 8))
    found = sorted(tuple(sorted(names[i] for i in c.members)) for c in couplings)
    assert found == sorted(tuple(sorted(pair)) for pair in COUPLED)
    for coupling in couplings:  # an addition: channel i of each member is channel i
        for channel in coupling.channels:
            assert channel.tolist() == list(range(coupling.size))


@pytest.mark.parametrize("allocation", ["uniform", "global", "lamp"])
def test_coupled_convolutions_prune_the_same_channels_and_slim_removes_them(allocation):
    model = two_blocks()
    example = torch.zeros(2, 3, 8, 8)
    pruner = Pruner(model, granularity="filter", example_inputs=example,
                    allocation=allocation)
    before = {name: set() for name in pruner.layer_names}
    for step, target in enumerate((0.2, 0.35, 0.5, 0.6)):
        perturb(model, pruner, step)
        pruner.prune_to(target)
        pruned = pruned_filters(model)
        split = sum(int((pruned[first] ^ pruned[second]).sum()) for first, second in COUPLED)
        if allocation == "uniform":  # equal sizes: counts equal or one apart, nested sets
            for first, second in COUPLED:
                small, large = sorted((pruned[first], pruned[second]), key=torch.sum)
                assert int(large.sum()) - int(small.sum()) <= 1
                assert torch.all(large[small]), (target, first, second)
        else:  # one ranking of every copy: the threshold may fall between two of a channel
            assert split <= step + 1, target
        for name in pruner.layer_names:  # monotone
            now = set(torch.nonzero(pruned[name]).flatten().tolist())
            assert before[name] <= now
            before[name] = now
    rows = check_slim_exact(model, example, every=False)
    removed = {row.name: row.filters_removed for row in rows}
    assert all(row.filters_removed == row.filters_masked for row in rows
               if row.name in ("a.0", "b.0"))  # in no group
    for first, second in COUPLED:  # all but the odd one out, if any
        assert removed[first] == removed[second] > 0
        assert removed[first] >= max(int(pruned[first].sum()), int(pruned[second].sum())) - 2


def test_the_shared_score_is_the_rms_of_the_members_filter_rms():
    model = two_blocks()
    with torch.no_grad():  # stem.0 ranks its filters one way, a.3 the other way round
        for i in range(16):
            model.stem[0].weight[i].fill_(0.1 * (i + 1))
            model.a[3].weight[i].fill_(0.1 * (16 - i) + (0.3 if i == 2 else 0.0))
    pruner = Pruner(model, granularity="filter", example_inputs=torch.zeros(2, 3, 8, 8))
    pruner.prune_to(0.5)
    stem, second = model.stem[0].weight, model.a[3].weight
    shared = ((stem.flatten(1).pow(2).mean(1) + second.flatten(1).pow(2).mean(1)) / 2).sqrt()
    expected = torch.zeros(16, dtype=torch.bool)
    expected[torch.argsort(shared, stable=True)[:8]] = True
    pruned = pruned_filters(model)
    assert torch.equal(pruned["stem.0"], expected)
    assert torch.equal(pruned["a.3"], expected)
    # per layer each would have pruned a different half: its own 8 lowest
    assert not torch.equal(expected, torch.arange(16) < 8)


def test_resnet18_at_half_its_filters_runs_about_four_times_fewer_multiply_adds():
    model = build_model("resnet18", 10, 3)
    example = torch.zeros(2, 3, 32, 32)
    Pruner(model, granularity="filter", example_inputs=example).prune_to(0.5)
    ready = deployable(model, mean=(0.5,) * 3, std=(0.25,) * 3, image_size=32, slim=True)
    assert all(row["filters_removed"] == row["filters_masked"] for row in ready.layers)
    assert ready.footprint["macs_per_image"] <= DENSE_RESNET18_MACS / 3.5
    # each layer ranking its own filters left most coupled channels in (~2.3x)
    per_layer = build_model("resnet18", 10, 3)
    Pruner(per_layer, granularity="filter").prune_to(0.5)
    no_groups = deployable(per_layer, mean=(0.5,) * 3, std=(0.25,) * 3, image_size=32,
                           slim=True)
    assert no_groups.footprint["macs_per_image"] > 1.5 * ready.footprint["macs_per_image"]


@pytest.mark.parametrize("allocation", ["uniform", "global", "lamp", "depth"])
def test_a_plain_convnet_prunes_exactly_as_with_per_layer_scores(allocation):
    torch.manual_seed(0)
    model = build_model("convnet", 10, 1)
    reference = build_model("convnet", 10, 1)
    reference.load_state_dict(model.state_dict())
    example = torch.zeros(2, 1, 8, 8)
    grouped = Pruner(model, granularity="filter", example_inputs=example,
                     allocation=allocation)
    per_layer = Pruner(reference, granularity="filter", allocation=allocation)
    assert grouped._couplings == []  # a chain of convolutions couples nothing
    for step, target in enumerate((0.3, 0.5, 0.8)):
        perturb(model, grouped, step)
        perturb(reference, per_layer, step)
        grouped.prune_to(target)
        per_layer.prune_to(target)
        for (name, mask), (_, expected) in zip(grouped.state_dict()["masks"].items(),
                                               per_layer.state_dict()["masks"].items(),
                                               strict=True):
            assert torch.equal(mask, expected), (allocation, target, name)


def test_a_plain_convnet_at_half_prunes_each_layers_lower_half_by_rms():
    # the hand check: uniform at 50% of even layer sizes prunes each layer's n/2 filters of
    # lowest RMS, sqrt(mean(w^2)), whatever the example inputs
    torch.manual_seed(0)
    model = build_model("convnet", 10, 1)
    rms = {name: m.weight.detach().flatten(1).pow(2).mean(1).sqrt()
           for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    Pruner(model, granularity="filter", example_inputs=torch.zeros(2, 1, 8, 8)).prune_to(0.5)
    for name, pruned in pruned_filters(model).items():
        n = rms[name].numel()
        assert n % 2 == 0
        expected = torch.zeros(n, dtype=torch.bool)
        expected[torch.argsort(rms[name])[: n // 2]] = True
        assert torch.equal(pruned, expected), name


def test_resnet18_masks_are_monotone_and_coupled_across_rising_targets():
    model = build_model("resnet18", 10, 3, width=0.25)
    example = torch.zeros(2, 3, 16, 16)
    pruner = Pruner(model, granularity="filter", example_inputs=example)
    groups = [[pruner.layer_names[i] for i in c.members] for c in pruner._couplings]
    assert len(groups) == 4 and all(len(g) == 3 for g in groups)  # one per stage
    before = {name: torch.zeros(0, dtype=torch.bool) for name in pruner.layer_names}
    for step, target in enumerate((0.1, 0.25, 0.4, 0.4, 0.3, 0.55, 0.7)):
        perturb(model, pruner, step)
        pruner.prune_to(target)
        pruned = pruned_filters(model)
        for name in pruner.layer_names:
            if before[name].numel():
                assert torch.all(pruned[name][before[name]]), (target, name)  # none revived
            before[name] = pruned[name]
        for group in groups:  # equal sizes, uniform: the same or one apart, nested
            counts = sorted((int(pruned[n].sum()), n) for n in group)
            assert counts[-1][0] - counts[0][0] <= 1
            for (_, small), (_, large) in zip(counts, counts[1:], strict=False):
                assert torch.all(pruned[large][pruned[small]])
    check_slim_exact(model, example)


def test_an_untraceable_model_falls_back_to_per_layer_scores_with_a_warning():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Conv2d(1, 4, 3, padding=1)
            self.second = nn.Conv2d(1, 4, 3, padding=1)

        def forward(self, x):
            with torch.no_grad():  # no autograd graph: nothing to trace
                return (self.first(x) + self.second(x)).mean(dim=(2, 3))

    torch.manual_seed(0)
    model = Untraceable()
    with pytest.warns(UserWarning, match="cannot trace Untraceable .* each layer ranks its "
                                         "filters alone"):
        pruner = Pruner(model, granularity="filter", example_inputs=torch.zeros(2, 1, 8, 8))
    pruner.prune_to(0.5)
    for module in (model.first, model.second):
        rms = module.weight.detach().flatten(1).pow(2).mean(1).sqrt()
        expected = torch.zeros(4, dtype=torch.bool)
        expected[torch.argsort(rms)[:2]] = True
        assert torch.equal((module.weight.flatten(1) == 0).all(dim=1), expected)


def test_finding_the_groups_draws_no_random_numbers_and_is_deterministic():
    masks = []
    for _ in range(2):
        model = two_blocks()
        torch.manual_seed(5)
        state = torch.random.get_rng_state()
        pruner = Pruner(model, granularity="filter", example_inputs=torch.zeros(2, 3, 8, 8))
        pruner.prune_to(0.45)
        assert torch.equal(torch.random.get_rng_state(), state)
        masks.append(pruner.state_dict()["masks"])
    assert all(torch.equal(masks[0][name], masks[1][name]) for name in masks[0])


# -- round_to ------------------------------------------------------------------------------


def kept_filters(model: nn.Module) -> dict[str, int]:
    return {name: int((~pruned).sum()) for name, pruned in pruned_filters(model).items()}


@pytest.mark.parametrize("allocation", ["uniform", "global", "uniform_plus"])
@pytest.mark.parametrize("step", [4, 8])
def test_round_to_keeps_multiples_monotone_and_slims_exactly(allocation, step):
    model = build_model("resnet18", 10, 3, width=0.25)  # 16 to 128 filters
    example = torch.zeros(2, 3, 16, 16)
    pruner = Pruner(model, granularity="filter", example_inputs=example,
                    allocation=allocation, round_to=step)
    sizes = {name: module.weight.shape[0] for name, module in model.named_modules()
             if isinstance(module, nn.Conv2d)}
    before = None
    for seed, target in enumerate((0.1, 0.33, 0.5, 0.5, 0.61, 0.77, 0.9)):
        perturb(model, pruner, seed)
        pruner.prune_to(target)
        kept = kept_filters(model)
        for name in pruner.layer_names:
            assert kept[name] % step == 0 and kept[name] >= step, (target, name, kept[name])
        pruned = pruned_filters(model)
        if before is not None:
            assert all(torch.all(pruned[n][before[n]]) for n in pruner.layer_names)
        before = pruned
        # each layer within step - 1 of what the allocation gave it (step / 2 unless it
        # gave it fewer than step / 2), so the total within that much per layer
        units = sum(sizes[n] for n in pruner.layer_names)
        total = sum(kept[n] for n in pruner.layer_names)
        assert abs((units - total) - round(target * units)) <= (step - 1) * len(kept)
    # uniform_plus keeps conv1 dense, and with it the channels layer1 adds to it
    rows = check_slim_exact(model, example, every=allocation != "uniform_plus")
    assert all((row.filters - row.filters_removed) % step == 0 for row in rows
               if row.name in pruner.layer_names)


def test_round_to_moves_each_layer_at_most_half_a_step_from_the_allocation():
    model = two_blocks()
    reference = two_blocks()
    example = torch.zeros(2, 3, 8, 8)
    rounded = Pruner(model, granularity="filter", example_inputs=example, round_to=4)
    exact = Pruner(reference, granularity="filter", example_inputs=example)
    for target in (0.2, 0.3, 0.45, 0.6):
        rounded.prune_to(target)
        exact.prune_to(target)
        got, wanted = kept_filters(model), kept_filters(reference)
        for name in rounded.layer_names:
            size = dict(model.named_modules())[name].weight.shape[0]
            assert got[name] % 4 == 0 or got[name] == size
            if wanted[name] >= 2:
                assert abs(got[name] - wanted[name]) <= 2, (target, name)
        reference.load_state_dict(model.state_dict())  # start the next prune alike
        exact.load_state_dict(rounded.state_dict())
    check_slim_exact(model, example)


def test_round_to_keeps_a_small_layer_whole_and_a_ragged_one_whole_or_a_multiple():
    model = two_blocks()  # a.0 has 12 filters, b.0 has 6
    pruner = Pruner(model, granularity="filter", example_inputs=torch.zeros(2, 3, 8, 8),
                    round_to=8)
    for target in (0.3, 0.5, 0.7, 0.9):
        pruner.prune_to(target)
        kept = kept_filters(model)
        assert kept["b.0"] == 6
        assert kept["a.0"] in (8, 12)
        assert all(kept[n] % 8 == 0 for n in ("stem.0", "a.3", "b.3", "project.0"))
    assert kept["a.0"] == 8


def test_round_to_one_is_the_exact_count():
    model, reference = two_blocks(), two_blocks()
    example = torch.zeros(2, 3, 8, 8)
    one = Pruner(model, granularity="filter", example_inputs=example, round_to=1)
    default = Pruner(reference, granularity="filter", example_inputs=example)
    one.prune_to(0.37)
    default.prune_to(0.37)
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict()["masks"].values(),
                                                 default.state_dict()["masks"].values(),
                                                 strict=True))


@pytest.mark.parametrize(("options", "message"), [
    ({"round_to": 8}, r"round_to=8 keeps filter counts multiples of 8, so it needs "
                      r"granularity 'filter', got 'weight'"),
    ({"round_to": 0, "granularity": "filter"}, r"round_to must be in \[1, inf\], got 0"),
    ({"round_to": 2.0, "granularity": "filter"}, r"round_to must be an integer in \[1, inf\]"),
])
def test_round_to_is_refused_in_one_line(options, message):
    with pytest.raises(ValueError, match=message) as error:
        Pruner(two_blocks(), **options)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=message) as error:
        TrainConfig(**options)
    assert "\n" not in str(error.value)


def test_the_config_hands_round_to_to_the_pruner(digits):
    from oneprune.train import new_model, new_pruner

    cfg = TrainConfig(granularity="filter", round_to=8)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict({k: v for k, v in cfg.to_dict().items()
                                  if k != "round_to"}).round_to == 1  # older files
    pruner = new_pruner(cfg, new_model(cfg, digits), digits)
    assert pruner.round_to == 8
    pruner.prune_to(0.6)
    assert all((row.weights - row.pruned) // (row.weights // row.shape[0]) % 8 == 0
               for row in pruner.layer_report())
