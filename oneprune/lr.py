"""The one-cycle learning-rate policy and its coupling to a pruning schedule.

Both are pure functions of the same training progress t in [0, 1] as the schedules.

One-cycle (Smith 2018; torch's `OneCycleLR` and fastai's `fit_one_cycle` with their
defaults): the LR rises from lr_max / div_factor to lr_max over the first `pct_start` of
the budget, then anneals to lr_max / (div_factor * final_div_factor), both phases along
half a cosine.

Coupling to the schedule (the README's "Learning-rate coupling" states the same):
- `none`: `pct_start` as configured.
- `align`: `pct_start` := the schedule's midpoint (the progress where half of its sparsity
  increase is reached), clamped to [0.05, 0.95]: the LR peaks while the network is pruned.
- recovery gain gamma >= 0 (with either coupling): lr(t) * (1 + gamma * ds(t) / s_f), ds(t)
  the sparsity added over the trailing window [t - w, t]: the LR is raised while
  weights are being removed, to help the network recover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oneprune import _validate
from oneprune.schedules import Schedule, half_cosine

COUPLINGS = ("none", "align")
ALIGN_RANGE = (0.05, 0.95)
# Limits of the policy's arguments (keyword arguments of `_validate.real`), shared with
# `TrainConfig`, so a training config is refused exactly when its policy would be.
LR_MAX = {"low": 0.0, "high": 10.0, "low_open": True}
PCT_START = {"low": 0.0, "high": 1.0, "low_open": True, "high_open": True}
RECOVERY_GAIN = {"low": 0.0, "high": 100.0}
RECOVERY_WINDOW = {"low": 0.0, "high": 1.0, "low_open": True}


def one_cycle_lr(t, lr_max: float, pct_start: float, div_factor: float = 25.0,
                 final_div_factor: float = 1e4):
    """Learning rate of the one-cycle policy at progress `t` (float or array in [0, 1])."""
    progress = np.asarray(t, dtype=np.float64)
    lr_start = lr_max / div_factor
    lr_end = lr_start / final_div_factor
    warm = half_cosine(lr_start, lr_max, np.clip(progress / pct_start, 0.0, 1.0))
    anneal = half_cosine(lr_max, lr_end,
                         np.clip((progress - pct_start) / (1.0 - pct_start), 0.0, 1.0))
    lr = np.where(progress < pct_start, warm, anneal)
    return float(lr) if lr.ndim == 0 else lr


@dataclass(frozen=True)
class CoupledLR:
    """One-cycle LR policy coupled to `schedule`; call it with the progress t in [0, 1].

    `schedule` may be None (dense training) unless the coupling needs it.

    >>> from oneprune.lr import CoupledLR
    >>> from oneprune.schedules import AGP
    >>> dense = CoupledLR(None, lr_max=1e-2)  # plain one-cycle: peak at pct_start 0.25
    >>> round(dense(0.0), 6), dense(0.25), dense(1.0)
    (0.0004, 0.01, 4e-08)
    >>> aligned = CoupledLR(AGP(0.9, start=0.2, end=0.8), lr_max=1e-2, coupling="align")
    >>> round(aligned.effective_pct_start, 4)  # the peak moves to the schedule's midpoint
    0.3238
    >>> boosted = CoupledLR(AGP(0.9, start=0.2, end=0.8), lr_max=1e-2, recovery_gain=2.0)
    >>> bool(boosted(0.5) > dense(0.5))  # raised while weights are being removed
    True
    """

    schedule: Schedule | None
    lr_max: float
    pct_start: float = 0.25
    coupling: str = "none"
    recovery_gain: float = 0.0
    recovery_window: float = 0.05
    div_factor: float = 25.0
    final_div_factor: float = 1e4

    def __post_init__(self) -> None:
        checks = {
            "lr_max": _validate.real("lr_max", self.lr_max, **LR_MAX),
            "pct_start": _validate.real("pct_start", self.pct_start, **PCT_START),
            "coupling": _validate.choice("coupling", self.coupling, COUPLINGS),
            "recovery_gain": _validate.real("recovery_gain", self.recovery_gain,
                                            **RECOVERY_GAIN),
            "recovery_window": _validate.real("recovery_window", self.recovery_window,
                                              **RECOVERY_WINDOW),
            "div_factor": _validate.real("div_factor", self.div_factor, low=1.0),
            "final_div_factor": _validate.real("final_div_factor", self.final_div_factor,
                                               low=1.0),
        }
        for name, value in checks.items():
            object.__setattr__(self, name, value)
        if self.schedule is not None and not isinstance(self.schedule, Schedule):
            raise ValueError(f"schedule must be a Schedule or None, got {self.schedule!r}")
        if self.coupling == "align" and self.schedule is None:
            raise ValueError("coupling 'align' needs a pruning schedule; use 'none' for "
                             "dense training")

    @property
    def effective_pct_start(self) -> float:
        """The warm-up fraction actually used: `pct_start`, or the aligned midpoint."""
        if self.coupling == "align":
            low, high = ALIGN_RANGE
            return min(max(self.schedule.midpoint(), low), high)
        return self.pct_start

    def __call__(self, t):
        """Learning rate at progress `t` (float or array, every value in [0, 1])."""
        progress = np.asarray(t, dtype=np.float64)
        if not np.all((progress >= 0.0) & (progress <= 1.0)):
            raise ValueError(f"progress t must be in [0, 1], got {t!r}")
        lr = np.asarray(one_cycle_lr(progress, self.lr_max, self.effective_pct_start,
                                     self.div_factor, self.final_div_factor))
        final = 0.0 if self.schedule is None else self.schedule.final_sparsity
        if self.recovery_gain > 0.0 and final > 0.0:
            added = (np.asarray(self.schedule(progress))
                     - np.asarray(self.schedule(np.maximum(progress - self.recovery_window, 0.0))))
            lr = lr * (1.0 + self.recovery_gain * added / final)
        return float(lr) if lr.ndim == 0 else lr

