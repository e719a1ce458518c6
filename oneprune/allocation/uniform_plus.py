"""`uniform_plus` (Gale et al. 2019): the first pruned layer stays dense, the last keeps at
least 20% of its units, the others share the rest uniformly."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from oneprune.allocation.uniform import Uniform

LAST_KEPT = 0.2  # the least share of its units the last pruned layer keeps


@dataclass(frozen=True)
class UniformPlus(Uniform):
    """Uniform, but the first pruned layer dense and the last at least 20% dense."""

    name: ClassVar[str] = "uniform_plus"

    def kept_bounds(self, units: Sequence[int]) -> tuple[list[int], list[int]]:
        low, high = super().kept_bounds(units)
        low[0] = units[0]
        if len(units) > 1:
            low[-1] = max(1, math.ceil(LAST_KEPT * units[-1]))
        return low, high

    def check_reachable(self, sparsity: float, units: Sequence[int],
                        layer_names: Sequence[str], unit: str) -> None:
        most = sum(self.most_pruned(units))
        if round(sparsity * sum(units)) <= most:
            return
        last = (f" and {LAST_KEPT:.0%} of the last, {layer_names[-1]!r}"
                if len(units) > 1 else "")
        raise ValueError(
            f"allocation 'uniform_plus' cannot reach sparsity {sparsity:g}: it "
            f"keeps the first pruned layer {layer_names[0]!r} dense ({units[0]:,} {unit})"
            f"{last}, so at most {most / sum(units):.2%} of the {sum(units):,} {unit} can "
            f"be pruned")
