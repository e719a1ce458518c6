"""`depth`: density proportional to exp(-exponent * u), u running from -1/2 (the first pruned
layer) to +1/2 (the last): exponent > 0 prunes deeper layers harder, exponent < 0
shallower ones, exponent = 0 is uniform."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from oneprune.allocation.base import Allocation
from oneprune.parameters import parameter


@dataclass(frozen=True)
class Depth(Allocation):
    """Density falling (or rising) exponentially with depth."""

    exponent: float = parameter(
        0.0, limits={"low": -8.0, "high": 8.0}, bounds=(-4.0, 4.0),
        help="density ~ exp(-exponent * depth), depth -1/2 (first pruned layer) to 1/2 "
             "(last); > 0 prunes deeper layers harder, 0 is uniform")

    name: ClassVar[str] = "depth"

    def density(self, units: Sequence[int], shapes: Sequence[Sequence[int]]) -> list[float]:
        last = max(len(units) - 1, 1)
        return [math.exp(-self.exponent * (i / last - 0.5)) for i in range(len(units))]
