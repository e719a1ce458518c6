"""`lamp`: LAMP (Lee et al. 2021): a unit's score is w^2 over the sum of w^2 of the units of
its layer at least as large (in (magnitude, position) order), then one global ranking of the
scores. Within a layer the score grows with the magnitude, so LAMP decides only how many
units each layer loses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from oneprune.allocation.base import Allocation
from oneprune.ranking import smallest

_EXACT_LAMP = 1 << 15  # units below which a layer's LAMP scores are all computed
_LAMP_SAMPLE = 1 << 16  # size of a large layer's strided sample
_LAMP_MARGIN = 3.0  # half-width of its window, in standard deviations of a sample rank


@dataclass(frozen=True)
class LAMP(Allocation):
    """One global ranking of layer-normalised magnitude scores (`lamp_prune`)."""

    name: ClassVar[str] = "lamp"

    def select(self, scores: list[torch.Tensor], shapes: Sequence[Sequence[int]], total: int,
               pruned: Sequence[int]) -> list[torch.Tensor | None]:
        return lamp_prune(scores, total)


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
