"""Where to prune: how a target sparsity is spread over the prunable layers.

At every `Pruner.prune_to(s)` the pruner's allocation turns the target of that moment of
the schedule into a budget per layer: how many of its units (weights, or whole filters)
are pruned. A schedule's ramp and an allocation therefore combine at every mask update.

- `uniform`: every layer prunes the same fraction (what `scope: local` was).
- `global`: one magnitude ranking over all layers (what `scope: global` was); its
  budgets follow from the ranking, in the pruner.
- `erk`: Erdős-Rényi-Kernel (Evci et al. 2020, RigL): a layer's density is proportional to
  the sum of its weight tensor's dimensions over their product, scaled so the total
  matches; a layer that would exceed density 1 stays dense and the scale is solved again.
  Defined on weight tensors only, so it refuses filter granularity (`WEIGHT_ONLY`).
- `lamp`: LAMP (Lee et al. 2021): a unit's score is w^2 over the sum of w^2 of the units
  of its layer at least as large (in (magnitude, position) order), then one global
  ranking of the scores. Within a layer the score grows with the magnitude, so LAMP
  decides only how many units each layer loses.
- `uniform_plus` (Gale et al. 2019): the first pruned layer stays dense, the last keeps at
  least 20% of its units, the others share the rest uniformly.
- `depth`: density proportional to exp(-gamma * u), u running from -1/2 (first pruned
  layer) to +1/2 (last): gamma > 0 prunes deeper layers harder, gamma < 0 shallower ones,
  gamma = 0 is uniform.

Rules every allocation keeps: the total is exact, round(s * N) of the N units (capped so
that every layer keeps at least one unit); a layer's budget never falls below what it has
pruned already (masks are monotone); budgets are rounded by largest remainder, ties to the
earlier layer, so every rank of a DDP run computes the same ones. The formulas give a
continuous number of kept units per layer (`kept_targets`); `integer_budgets` rounds it
(`layer_budgets`: both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from oneprune import _validate
from oneprune.ranking import smallest

ALLOCATIONS = ("uniform", "global", "erk", "lamp", "uniform_plus", "depth")
# `scope` (local | global) is the older name of two allocations.
SCOPE_NAMES = {"local": "uniform", "global": "global"}
WEIGHT_ONLY = {"erk": "ERK sets a layer's density from the shape of its weight tensor, "
                      "which whole filters do not have"}
DEPTH_EXPONENT = {"low": -8.0, "high": 8.0}
DEPTH_SEARCH = (-4.0, 4.0)  # searched range of `depth_exponent` when a study sets none
UNIFORM_PLUS_LAST_KEPT = 0.2
_EXACT_LAMP = 1 << 15  # units below which a layer's LAMP scores are all computed
_LAMP_SAMPLE = 1 << 16  # size of a large layer's strided sample
_LAMP_MARGIN = 3.0  # half-width of its window, in standard deviations of a sample rank


def check(allocation: str, granularity: str) -> str:
    """`allocation` if it is known and works at `granularity`, else `ValueError`."""
    _validate.choice("allocation", allocation, ALLOCATIONS)
    if granularity == "filter" and allocation in WEIGHT_ONLY:
        raise ValueError(f"allocation {allocation!r} cannot prune filters: "
                         f"{WEIGHT_ONLY[allocation]}; use granularity 'weight' or one of "
                         f"{', '.join(a for a in ALLOCATIONS if a not in WEIGHT_ONLY)}")
    return allocation


def from_scope(scope: str) -> str:
    """The allocation an older `scope` value names."""
    return SCOPE_NAMES[_validate.choice("scope", scope, tuple(SCOPE_NAMES))]


def erk_ratio(shape: Sequence[int]) -> float:
    """ERK's density shape of a weight tensor: sum of its dimensions / their product."""
    return sum(shape) / math.prod(shape)


def kept_bounds(allocation: str, units: Sequence[int]) -> tuple[list[int], list[int]]:
    """Per layer, the fewest and the most units it keeps: at least one (never emptied),
    `uniform_plus`'s first layer all of them and its last at least 20%."""
    low, high = [1] * len(units), list(units)
    if allocation == "uniform_plus":
        low[0] = units[0]
        if len(units) > 1:
            low[-1] = max(1, math.ceil(UNIFORM_PLUS_LAST_KEPT * units[-1]))
    return low, high


def kept_targets(allocation: str, units: Sequence[int], shapes: Sequence[Sequence[int]],
                 kept_total: int, depth_exponent: float = 0.0) -> list[float]:
    """The units each layer keeps, as real numbers summing to `kept_total`: the allocation's
    density shape scaled by one factor, each layer clipped to `kept_bounds` (a clipped
    layer is fixed and the factor solved again)."""
    if allocation == "erk":
        shape = [erk_ratio(s) for s in shapes]
    elif allocation == "depth":
        last = max(len(units) - 1, 1)
        shape = [math.exp(-depth_exponent * (i / last - 0.5)) for i in range(len(units))]
    elif allocation in ("uniform", "uniform_plus"):
        shape = [1.0] * len(units)
    else:
        raise ValueError(f"allocation {allocation!r} has no density formula")
    low, high = kept_bounds(allocation, units)
    return _scaled([s * n for s, n in zip(shape, units, strict=True)], low, high, kept_total)


def _scaled(weights: Sequence[float], low: Sequence[float], high: Sequence[float],
            total: float) -> list[float]:
    """clip(c * weight, low, high) per layer, with the factor c >= 0 at which they sum to
    `total` (the sum is piecewise linear in c: found exactly between its breakpoints)."""
    def kept(c: float) -> list[float]:
        return [min(max(c * w, lo), hi) for w, lo, hi in zip(weights, low, high, strict=True)]

    if total <= sum(low):
        return list(map(float, low))
    if total >= sum(high):
        return list(map(float, high))
    points = sorted({0.0, *(lo / w for w, lo in zip(weights, low, strict=True)),
                     *(hi / w for w, hi in zip(weights, high, strict=True))})
    sums = [sum(kept(c)) for c in points]
    right = next(i for i, s in enumerate(sums) if s >= total)
    c0, c1, s0, s1 = points[right - 1], points[right], sums[right - 1], sums[right]
    return kept(c0 + (c1 - c0) * (total - s0) / (s1 - s0))


def integer_budgets(targets: Sequence[float], low: Sequence[int], high: Sequence[int],
                    total: int) -> list[int]:
    """Integers within [low, high] per layer, summing to `total`, as close to the real
    `targets` as the bounds allow: floors first, then one unit more for the layers furthest
    below their target (or one less for those furthest above), ties to the earlier layer.
    Needs sum(low) <= total <= sum(high)."""
    counts = [min(max(math.floor(t), lo), hi)
              for t, lo, hi in zip(targets, low, high, strict=True)]
    layers = range(len(counts))
    while (missing := total - sum(counts)) != 0:
        if missing > 0:
            order = sorted((i for i in layers if counts[i] < high[i]),
                           key=lambda i: (counts[i] - targets[i], i))
        else:
            order = sorted((i for i in layers if counts[i] > low[i]),
                           key=lambda i: (targets[i] - counts[i], i))
        for i in order[:abs(missing)]:
            counts[i] += 1 if missing > 0 else -1
    return counts



def layer_budgets(allocation: str, units: Sequence[int], shapes: Sequence[Sequence[int]],
                  total: int, pruned: Sequence[int], most: Sequence[int],
                  depth_exponent: float = 0.0) -> list[int]:
    """Units each layer prunes, `total` in all, for an allocation with a density formula
    (not `global` or `lamp`, whose budgets follow from one ranking): `kept_targets` rounded
    by `integer_budgets`, between what a layer has pruned and the most it may."""
    kept = kept_targets(allocation, units, shapes, sum(units) - total, depth_exponent)
    return integer_budgets([n - k for n, k in zip(units, kept, strict=True)], pruned, most,
                           total)

# -- LAMP -----------------------------------------------------------------------------------


def lamp_scores(magnitudes: torch.Tensor) -> torch.Tensor:
    """LAMP score of each unit of one layer from its magnitudes (|w|, or a filter's RMS), in
    float64: a^2 over the sum of b^2 of the units b at or after it in (magnitude, position)
    order. The last unit in that order scores 1; a layer of zeros scores 0."""
    squares = magnitudes.double().square()
    order = torch.sort(squares, stable=True).indices
    scores = torch.empty_like(squares)
    scores[order] = _suffix_scores(squares[order], 0.0)
    return scores


def _suffix_scores(sorted_squares: torch.Tensor, tail: float) -> torch.Tensor:
    """a / (a + the squares after it + `tail`) along ascending `sorted_squares` (0 where
    that sum is 0)."""
    suffix = sorted_squares.flip(0).cumsum(0).flip(0) + tail
    return torch.where(suffix > 0, sorted_squares / suffix, 0.0)


def _sum_of_squares(values: torch.Tensor) -> float:
    """Sum of squares of a flat float tensor, in float32 blocks of 4096 added in float64:
    about 1e-9 relative error at a fraction of a float64 pass's cost."""
    whole = values.numel() - values.numel() % 4096
    blocks = values[:whole].view(-1, 4096).square().sum(dim=1)
    return float(blocks.double().sum()) + float(values[whole:].double().square().sum())


def lamp_prune(scores: Sequence[torch.Tensor], total: int) -> list[torch.Tensor]:
    """Per layer, the bool mask of the units pruned once the `total` lowest LAMP scores over
    all layers are (ties by layer, then position). `scores` are the layers' unit
    magnitudes, -1 for units pruned already (always among them); each layer's best unit
    is never ranked.

    Large layers are not sorted whole: a strided sample of each estimates the threshold,
    only the live units in a window of magnitudes around it are scored exactly, and those
    below a window count as pruned, those above as kept. That answer is exact if every
    unit it prunes scores strictly below every unit it keeps, which is checked; otherwise
    (a sample that misled, a tie at the threshold) every live unit is scored.
    """
    if any(s.numel() >= _EXACT_LAMP for s in scores):
        pruned = _lamp_windowed(scores, total, _lamp_windows(scores, total))
        if pruned is not None:
            return pruned
    ranking = []
    for layer_scores in scores:
        live = torch.nonzero(layer_scores >= 0).flatten()
        ranked = torch.full(layer_scores.shape, -1.0, dtype=torch.float64,
                            device=layer_scores.device)
        if live.numel():
            ranked[live] = lamp_scores(layer_scores[live])
            ranked[live[torch.sort(layer_scores[live], stable=True).indices[-1]]] = math.inf
        ranking.append(ranked)
    return list(smallest(torch.cat(ranking), total).split([s.numel() for s in scores]))


def _lamp_windows(scores: Sequence[torch.Tensor], total: int) -> list[tuple[float, float]]:
    """Per layer, the magnitudes [low, high] around the LAMP threshold that a strided sample
    of every layer estimates (unbounded for a layer small enough to score whole)."""
    samples = []  # per layer: its sampled live magnitudes, sorted, and how many units each is
    for layer_scores in scores:
        sample = layer_scores[::max(1, layer_scores.numel() // _LAMP_SAMPLE)]
        live = torch.sort(sample[sample >= 0]).values.double()
        share = int(torch.count_nonzero(layer_scores >= 0)) / max(live.numel(), 1)
        samples.append((live, share))
    estimated = [_suffix_scores(live.square(), 0.0) / share for live, share in samples]
    shares = torch.cat([torch.full_like(e, share) for e, (_, share) in zip(
        estimated, samples, strict=True)])
    flat = torch.cat(estimated)
    order = torch.argsort(flat)
    pruned = sum(int(torch.count_nonzero(s < 0)) for s in scores)
    reached = int(torch.searchsorted(shares[order].cumsum(0),
                                     torch.tensor(float(total - pruned), dtype=torch.float64,
                                                  device=flat.device)))
    threshold = float(flat[order][min(reached, order.numel() - 1)]) if order.numel() else 0.0
    windows = []
    for layer_scores, layer_estimate, (live, _) in zip(scores, estimated, samples, strict=True):
        if layer_scores.numel() < _EXACT_LAMP or live.numel() == 0:
            windows.append((-math.inf, math.inf))
            continue
        position = int(torch.count_nonzero(layer_estimate < threshold))
        margin = int(_LAMP_MARGIN * live.numel() ** 0.5) + 8
        low = float(live[position - margin]) if position > margin else -math.inf
        high = (float(live[position + margin]) if position + margin < live.numel()
                else math.inf)
        windows.append((low, high))
    return windows


def _lamp_windowed(scores: Sequence[torch.Tensor], total: int,
                   windows: Sequence[tuple[float, float]]) -> list[torch.Tensor] | None:
    """`lamp_prune` scoring only the live units inside each layer's window; None unless the
    highest score it prunes is below the lowest it keeps (both bounded from the window's
    edges for the units outside it: a score grows with the magnitude)."""
    below, inside, in_window = [], [], []
    highest_pruned, lowest_kept = -math.inf, math.inf
    for layer_scores, (low, high) in zip(scores, windows, strict=True):
        layer_below = layer_scores < max(low, 0.0)  # pruned units score -1
        above = layer_scores > high
        index = torch.nonzero(~layer_below & ~above).flatten()
        values, order = torch.sort(layer_scores[index], stable=True)
        squares = values.double().square()
        above_squares = _sum_of_squares(layer_scores.masked_fill(~above, 0.0))
        window_scores = _suffix_scores(squares, above_squares)
        if math.isinf(high) and window_scores.numel():
            window_scores[-1] = math.inf  # the layer's best unit is never ranked
        if math.isfinite(low):  # every live unit below scores at most what low would
            edge = low * low
            highest_pruned = max(highest_pruned,
                                 edge / (edge + float(squares.sum()) + above_squares))
        if math.isfinite(high) and above_squares > 0:  # and every unit above at least
            lowest_kept = min(lowest_kept, high * high / above_squares)
        below.append(layer_below)
        inside.append(index[order])
        in_window.append(window_scores)
    wanted = total - sum(int(torch.count_nonzero(b)) for b in below)
    ranking = torch.cat(in_window)
    if not 0 <= wanted <= ranking.numel():
        return None
    selected = smallest(ranking, wanted)
    chosen, kept = ranking[selected], ranking[~selected]
    highest = max(highest_pruned, float(chosen.max()) if chosen.numel() else -math.inf)
    lowest = min(lowest_kept, float(kept.min()) if kept.numel() else math.inf)
    if not highest < lowest:
        return None
    pruned = []
    for layer_below, index, chosen_here in zip(
            below, inside, selected.split([w.numel() for w in in_window]), strict=True):
        layer_pruned = layer_below.clone()
        layer_pruned[index[chosen_here]] = True
        pruned.append(layer_pruned)
    return pruned
