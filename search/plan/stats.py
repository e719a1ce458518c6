"""Interval statistics of the verdicts: the Student-t interval of a mean, Welch's interval
of a difference, and the difference paired by seed.

Final seed s gives every family the same initial weights and batch order, so two families'
test accuracies are compared seed by seed: the Student-t interval of the mean per-seed
difference (`paired_difference`). Only when the two do not have the same seeds (a final run
failed) is it Welch's interval (unequal variances) over what there is.

    >>> mean, std, low, high = mean_interval([0.90, 0.92, 0.94])
    >>> round(mean, 4), round(std, 4), round(low, 4), round(high, 4)
    (0.92, 0.02, 0.8703, 0.9697)
    >>> d = paired_difference([0.91, 0.93, 0.95], [1, 2, 3], [0.90, 0.92, 0.93], [1, 2, 3])
    >>> d.method, round(d.diff, 4), round(d.low, 4), round(d.high, 4), d.wins
    ('paired', 0.0133, -0.001, 0.0277, 3)
    >>> diff, low, high = difference_interval([0.91, 0.93, 0.95], [0.90, 0.92, 0.93])
    >>> round(diff, 4), round(low, 4), round(high, 4)
    (0.0133, -0.0281, 0.0548)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats


def mean_interval(values: Sequence[float]) -> tuple[float, float, float, float]:
    """Mean, sample std, and the 95% Student-t interval of the mean, clipped to [0, 1]
    (accuracies); NaN when undefined."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return (math.nan,) * 4
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * std / math.sqrt(len(values))
    return mean, std, max(mean - half, 0.0), min(mean + half, 1.0)


def difference_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its 95% Welch interval (NaN when undefined)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        diff = a.mean() - b.mean() if len(a) and len(b) else math.nan
        return float(diff), math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = float(a.mean() - b.mean())
    if va + vb == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.975, dof)) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


class Difference(NamedTuple):
    """A family's test accuracy minus One-Cycle's: the mean difference and its 95% interval
    (`method` "paired" or "welch"), the seeds both have (`paired_seeds`) and on how many
    of them the family was ahead (`wins`)."""

    diff: float
    low: float
    high: float
    method: str
    wins: int
    paired_seeds: int


def paired_difference(a: Sequence[float], a_seeds: Sequence[int], b: Sequence[float],
                      b_seeds: Sequence[int]) -> Difference:
    """mean(a) - mean(b), paired by seed when both have the same seeds (the Student-t
    interval of the per-seed differences), else Welch's interval (`difference_interval`).
    NaN where undefined (fewer than two values)."""
    a_by_seed, b_by_seed = dict(zip(a_seeds, a, strict=True)), dict(zip(b_seeds, b,
                                                                          strict=True))
    common = sorted(set(a_by_seed) & set(b_by_seed))
    diffs = np.array([a_by_seed[s] - b_by_seed[s] for s in common], dtype=float)
    wins = int((diffs > 0).sum())
    if set(a_by_seed) != set(b_by_seed) or len(common) < 2:
        return Difference(*difference_interval(a, b), "welch", wins, len(common))
    mean = float(diffs.mean())
    half = float(stats.t.ppf(0.975, len(diffs) - 1)) * float(diffs.std(ddof=1)) \
        / math.sqrt(len(diffs))
    return Difference(mean, mean - half, mean + half, "paired", wins, len(common))
