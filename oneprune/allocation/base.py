"""The base of every allocation, and the arithmetic the density allocations share.

An allocation with a density formula (`Allocation.density`) gives each layer a relative
density; `kept_targets` scales it by one factor so that the layers keep `kept_total` units
in all, each clipped to what it may keep (`kept_bounds`: at least one unit; a clipped layer
is fixed and the factor solved again, exactly, between the breakpoints), and
`integer_budgets` rounds that by largest remainder, between what a layer has pruned and the
most it may (`budgets`: both). An allocation that ranks all layers at once (global, LAMP)
overrides `select` instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from oneprune import _validate
from oneprune.parameters import Parameter, check_fields, parameters_of, register
from oneprune.ranking import smallest

_ALLOCATIONS: dict[str, type[Allocation]] = {}
ALLOCATIONS: Mapping[str, type[Allocation]] = MappingProxyType(_ALLOCATIONS)
"""Every allocation by name, in the order their modules were imported (filled as the
classes are defined: a subclass of `Allocation` that sets `name` registers itself)."""

# `scope` (local | global) is the older name of two allocations.
SCOPE_NAMES = MappingProxyType({"local": "uniform", "global": "global"})


def from_scope(scope: str) -> str:
    """The allocation an older `scope` value names."""
    return SCOPE_NAMES[_validate.choice("scope", scope, tuple(SCOPE_NAMES))]


@dataclass(frozen=True)
class Allocation:
    """How a target sparsity is spread over the prunable layers; its fields are its
    arguments (declared with `oneprune.parameters.parameter`).

    A subclass sets `name` (it registers itself), `WEIGHT_ONLY` (why it cannot prune whole
    filters, if it cannot) and either `density` (budgets rounded from a density formula)
    or `select` (one ranking over all layers); `kept_bounds` and `check_reachable` where a
    layer may keep more than one unit.
    """

    name: ClassVar[str]
    WEIGHT_ONLY: ClassVar[str | None] = None  # why it cannot prune filters (None: it can)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        register(_ALLOCATIONS, "allocation", cls.__dict__.get("name"), cls)

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def arguments(cls) -> dict[str, Parameter]:
        """Its own arguments (`allocation_args`), with their checks, default search ranges
        and help; {} for most."""
        return parameters_of(cls)

    def args(self) -> dict[str, Any]:
        """The values of its arguments, by name."""
        return {name: getattr(self, name) for name in self.arguments()}

    # -- per-layer limits ----------------------------------------------------------------

    def kept_bounds(self, units: Sequence[int]) -> tuple[list[int], list[int]]:
        """Per layer, the fewest and the most units it keeps: at least one (never emptied)
        and at most all of them."""
        return [1] * len(units), list(units)

    def most_pruned(self, units: Sequence[int]) -> list[int]:
        """Per layer, the most units it may prune."""
        low, _ = self.kept_bounds(units)
        return [n - kept for n, kept in zip(units, low, strict=True)]

    def check_reachable(self, sparsity: float, units: Sequence[int],
                        layer_names: Sequence[str], unit: str) -> None:
        """Raise `ValueError` if this allocation cannot prune `sparsity` of the `units` (per
        layer; `unit`: "weights" or "filters"). Only one that keeps more than one unit of
        some layer may fail (every allocation is capped at one unit per layer anyway)."""

    # -- which units -------------------------------------------------------------------

    def density(self, units: Sequence[int], shapes: Sequence[Sequence[int]]) -> list[float]:
        """Each layer's density relative to the others' (a density allocation's formula)."""
        raise NotImplementedError(f"allocation {self.name!r} has no density formula")

    def kept_targets(self, units: Sequence[int], shapes: Sequence[Sequence[int]],
                     kept_total: float) -> list[float]:
        """The units each layer keeps, as real numbers summing to `kept_total`: the density
        scaled by one factor, each layer clipped to `kept_bounds`."""
        low, high = self.kept_bounds(units)
        shape = self.density(units, shapes)
        return scaled([s * n for s, n in zip(shape, units, strict=True)], low, high,
                      kept_total)

    def budgets(self, units: Sequence[int], shapes: Sequence[Sequence[int]], total: int,
                pruned: Sequence[int]) -> list[int]:
        """Units each layer prunes, `total` in all: `kept_targets` rounded by
        `integer_budgets`, between what a layer has pruned and the most it may."""
        kept = self.kept_targets(units, shapes, sum(units) - total)
        return integer_budgets([n - k for n, k in zip(units, kept, strict=True)], pruned,
                               self.most_pruned(units), total)

    def select(self, scores: list[torch.Tensor], shapes: Sequence[Sequence[int]], total: int,
               pruned: Sequence[int]) -> list[torch.Tensor | None]:
        """Per layer, the bool mask of its units pruned once `total` are in all (None: a
        layer that prunes nothing more). `scores` are each layer's unit magnitudes, -1 for
        the `pruned` units it has pruned already (so those are always among the
        smallest); `shapes` its weight's shape."""
        units = [s.numel() for s in scores]
        counts = self.budgets(units, shapes, total, pruned)
        return [smallest(layer_scores, count) if count > before else None
                for layer_scores, count, before in zip(scores, counts, pruned, strict=True)]


def allocation_of(name: str | Allocation, args: Mapping[str, Any] | None = None,
                  granularity: str = "weight", *, key: str = "allocation_args"
                  ) -> Allocation:
    """The allocation `name` with its arguments `args`, checked to work at `granularity`;
    `ValueError` naming the allocation, or `key.<argument>`, and the allowed values."""
    if isinstance(name, Allocation):
        if args:
            raise ValueError(f"{key} must be empty when the allocation is given as an "
                             f"object, got {dict(args)!r}")
        cls, args = type(name), name.args()
    else:
        cls = ALLOCATIONS[_validate.choice("allocation", name, tuple(ALLOCATIONS))]
    args = dict(args or {})
    arguments = cls.arguments()
    unknown = [arg for arg in args if arg not in arguments]
    if unknown:
        accepted = ", ".join(arguments) or "none"
        raise ValueError(f"{key} has no argument {unknown[0]!r} for allocation "
                         f"{cls.name!r} (its arguments: {accepted})")
    checked = {arg: arguments[arg].check(f"{key}.{arg}", value) for arg, value in args.items()}
    if granularity == "filter" and cls.WEIGHT_ONLY:
        usable = ", ".join(repr(n) for n, c in ALLOCATIONS.items() if not c.WEIGHT_ONLY)
        raise ValueError(f"allocation {cls.name!r} cannot prune filters: {cls.WEIGHT_ONLY}; "
                         f"use granularity 'weight' or one of {usable}")
    return cls(**checked)


def scaled(weights: Sequence[float], low: Sequence[float], high: Sequence[float],
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
