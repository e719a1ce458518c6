"""`erk`: Erdős-Rényi-Kernel (Evci et al. 2020, RigL): a layer's density is proportional to
the sum of its weight tensor's dimensions over their product, scaled so the total matches;
a layer that would exceed density 1 stays dense and the scale is solved again. Defined on
weight tensors only, so it refuses filter granularity."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from oneprune.allocation.base import Allocation


def erk_ratio(shape: Sequence[int]) -> float:
    """ERK's density shape of a weight tensor: sum of its dimensions / their product."""
    return sum(shape) / math.prod(shape)


@dataclass(frozen=True)
class ERK(Allocation):
    """Density from each weight tensor's shape: small and thin layers stay denser."""

    name: ClassVar[str] = "erk"
    WEIGHT_ONLY: ClassVar[str | None] = (
        "ERK sets a layer's density from the shape of its weight tensor, which whole "
        "filters do not have")

    def density(self, units: Sequence[int], shapes: Sequence[Sequence[int]]) -> list[float]:
        return [erk_ratio(shape) for shape in shapes]
