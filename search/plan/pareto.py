"""The plane of a sparsity range's two objectives: points, fronts and hypervolumes.

Under `sparsity: {min, max, max_drop}` every search trial that completed its budget is a
point (gain, validation accuracy), feasible when its accuracy reaches the floor (the dense
reference's mean validation accuracy minus `max_drop` points). Its gain is its sparsity, or
under `cost:` the share of the dense network's cost that pruning saved (`saving`). A
family's front is its feasible points that no other feasible point dominates (as large a
gain and as accurate, better in one): what Optuna's `study.best_trials` returns under the
constraint. Its hypervolume is the share of the box [min, max] x [floor, 1] (a cost:
[0, 1] x [floor, 1]) that the front dominates: one number per family, a larger share = a
better schedule over the whole range, not at one point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple


class FrontPoint(NamedTuple):
    """A search trial that completed its budget: its Optuna trial number, final sparsity,
    validation accuracy, whether that accuracy reaches the floor, and under a cost the
    share of it saved (None: the gain is the sparsity)."""

    number: int
    sparsity: float
    val_acc: float
    feasible: bool
    saving: float | None = None

    @property
    def gain(self) -> float:
        """The second objective, maximised: the saving, else the sparsity."""
        return self.sparsity if self.saving is None else self.saving


def dominates(a: FrontPoint, b: FrontPoint) -> bool:
    """`a` gains at least as much as `b` and is as accurate, and better in one of the two."""
    return (a.gain >= b.gain and a.val_acc >= b.val_acc
            and (a.gain > b.gain or a.val_acc > b.val_acc))


def pareto_front(points: Sequence[FrontPoint]) -> list[FrontPoint]:
    """The feasible points no feasible point dominates, largest gain first (ties: trial
    order)."""
    feasible = [p for p in points if p.feasible]
    front = [p for p in feasible if not any(dominates(q, p) for q in feasible)]
    return sorted(front, key=lambda p: (-p.gain, p.number))


def hypervolume(front: Sequence[FrontPoint], reference: tuple[float, float],
                ideal: tuple[float, float]) -> float:
    """The share of the box from `reference` to `ideal` (both (gain, accuracy)) that
    the points of `front` dominate, in [0, 1]; 0 for an empty box (a floor of 1 or more).

    >>> box = ((0.8, 0.9), (1.0, 1.0))
    >>> hypervolume([FrontPoint(0, 0.9, 0.95, True), FrontPoint(1, 0.85, 0.97, True)], *box)
    0.3
    """
    (s0, v0), (s1, v1) = reference, ideal
    box = (s1 - s0) * (v1 - v0)
    if not (math.isfinite(box) and box > 0):
        return 0.0
    area, covered = 0.0, v0  # sweep from the sparsest point: each adds a slab above the last
    for point in sorted(front, key=lambda p: -p.gain):
        top = min(point.val_acc, v1)
        if point.gain > s0 and top > covered:
            area += (min(point.gain, s1) - s0) * (top - covered)
            covered = top
    return round(area / box, 12)
