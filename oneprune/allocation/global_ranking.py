"""`global`: one magnitude ranking over all layers (what `scope: global` was); each layer's
budget follows from the ranking."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from oneprune.allocation.base import Allocation
from oneprune.ranking import smallest


@dataclass(frozen=True)
class Global(Allocation):
    """The `total` lowest magnitudes over all layers; each layer's best live unit is never
    ranked."""

    name: ClassVar[str] = "global"

    def select(self, scores: list[torch.Tensor], shapes: Sequence[Sequence[int]], total: int,
               pruned: Sequence[int]) -> list[torch.Tensor | None]:
        for layer_scores in scores:
            layer_scores[layer_scores.argmax()] = float("inf")
        return list(smallest(torch.cat(scores), total).split([s.numel() for s in scores]))
