"""Test-only fault injection: an experiment's `faults:` section, installed around a trial's
per-epoch callback. Real studies never set it, so their trials run the plain callback.

`with_faults(on_epoch, faults, resumed=...)` returns the callback a faulty trial uses:
  - `raise_at_epoch`: raise `InjectedFault` at the end of that epoch, before the wrapped
    callback reports or checkpoints it, on every attempt that did not resume from a
    checkpoint (its retry resumes and passes);
  - `nan_at_epoch`: once the epoch before was reported, turn the model's first weight
    tensor NaN, so that epoch's training loss is NaN (the run ends as diverged).

`kill_driver_if(faults, point)` is the driver's: `kill_driver_at` SIGKILLs it there.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable

import torch

from search.experiment.schema import Faults

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


def kill_driver_if(faults: Faults | None, point: str) -> None:
    """SIGKILL this process (the driver) if the experiment's test-only faults ask for it at
    `point`: an interruption at the worst moment, with nothing cleaned up."""
    if faults is not None and faults.kill_driver_at == point:
        os.kill(os.getpid(), signal.SIGKILL)
