"""`uniform`: every layer prunes the same fraction of its units (what `scope: local` was)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from oneprune.allocation.base import Allocation


@dataclass(frozen=True)
class Uniform(Allocation):
    """The same density in every layer (the paper's setting)."""

    name: ClassVar[str] = "uniform"

    def density(self, units: Sequence[int], shapes: Sequence[Sequence[int]]) -> list[float]:
        return [1.0] * len(units)
