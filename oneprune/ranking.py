"""Exact selection by rank: the k-th smallest score and the k smallest scores, ties by
position. What every pruning decision comes down to, for any size of input (no
`torch.quantile`, which refuses more than 2^24 elements)."""

from __future__ import annotations

import torch

_SAMPLE = 1 << 16  # largest sample of `kth_smallest`'s bracketing pass
_BRACKET_CPU = 1 << 15  # on CPU, bracket from this many scores on (GPU: above 16 * _SAMPLE)


def kth_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Exact k-th smallest (1-based) value of 1-D `scores`, as a 0-d tensor.

    On large inputs a full `torch.kthvalue` is the bottleneck of a prune (on CPU already
    from a few 10k scores, where it is several times slower than a pass that compares), so
    a strided sample first brackets the answer (Floyd-Rivest): the sample's ranks around
    k/n, widened by 3 sqrt(sample) (6 standard deviations of a random sample's rank),
    give [low, high]; `kthvalue` then runs on the few entries inside. Ties at `low` (such
    as the pruned units' common score) are counted rather than ranked. When the bracket
    misses (a sample that is not representative), the full `kthvalue` answers.
    """
    n = scores.numel()
    small = n <= 16 * _SAMPLE and not (scores.device.type == "cpu" and n >= _BRACKET_CPU)
    if small or torch.isnan(scores.sum()):  # NaN (kthvalue sorts it last): no bracket
        return torch.kthvalue(scores, k).values
    sample = scores[:: n // min(_SAMPLE, n // 16)]
    size = sample.numel()
    position, margin = k / n * size, 3.0 * size ** 0.5
    low = torch.kthvalue(sample, min(max(int(position - margin), 0), size - 1) + 1).values
    high = torch.kthvalue(sample, min(int(position + margin), size - 1) + 1).values
    above_low = scores > low
    up_to_low = n - int(torch.count_nonzero(above_low))
    if k > up_to_low:  # the usual case: the answer is inside (low, high] or a miss
        inside = scores[above_low & (scores <= high)]
        if k - up_to_low <= inside.numel():
            return torch.kthvalue(inside, k - up_to_low).values
    elif k > int(torch.count_nonzero(scores < low)):
        return low
    return torch.kthvalue(scores, k).values


def smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of exactly the `k` smallest entries of 1-D `scores`, ties by lower index."""
    if k == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    kth = kth_smallest(scores, k)
    selected = scores <= kth
    extra = int(torch.count_nonzero(selected)) - k
    if extra > 0:  # ties at the k-th value: only the first (lowest index) ones are needed
        tied = torch.nonzero(scores == kth).flatten()
        selected[tied[tied.numel() - extra:]] = False
    return selected
