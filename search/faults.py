"""Test-only fault injection: an experiment's `faults:` section, installed around a trial's
per-epoch callback. Real studies never set it, so their trials run the plain callback.

`with_faults(on_epoch, faults, resumed=...)` returns the callback a faulty trial uses:
  - `raise_at_epoch`: raise `InjectedFault` at the end of that epoch, before the wrapped
    callback reports or checkpoints it, on every attempt that did not resume from a
    checkpoint (its retry resumes and passes);
  - `nan_at_epoch`: once the epoch before was reported, turn the model's first weight
    tensor NaN, so that epoch's training loss is NaN (the run ends as diverged).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from search.config import Faults

EpochCallback = Callable[[dict, dict], None]  # (metrics, state), `train`'s `checkpoint`


class InjectedFault(RuntimeError):
    """Raised by the experiment's `faults.raise_at_epoch` (test-only)."""


def with_faults(on_epoch: EpochCallback, faults: Faults, *, resumed: bool) -> EpochCallback:
    """`on_epoch` with this trial's `faults` injected around it (`resumed`: this attempt
    started from a checkpoint)."""
    def faulty(metrics: dict, state: dict) -> None:
        epoch = metrics["epoch"]
        if faults.raise_at_epoch == epoch and not resumed:
            raise InjectedFault(f"injected fault at epoch {epoch} (faults.raise_at_epoch)")
        on_epoch(metrics, state)
        if faults.nan_at_epoch == epoch + 1:
            with torch.no_grad():
                next(iter(state["model"].values())).fill_(math.nan)

    return faulty
