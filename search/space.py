"""Define-by-run search spaces: a family's schedule plus the shared training space.

`define_by_run` is what `ExperimentSearcher` calls with each new Optuna trial; the
parameters it suggests (`final_sparsity` where a sparsity range is searched, `start`, `end`,
`alpha`, ..., `lr_max`, `coupling`, `recovery_gain`, `allocation`, `depth_exponent`)
become the `params` of the Tune trial's config, and `trial_config` turns them into the
`TrainConfig` the trial trains.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from oneprune.config import TrainConfig
from oneprune.schedules import FAMILIES, Schedule

SETTINGS = TrainConfig.settings()


def suggest_training(trial, tuned: Mapping[str, tuple],
                     fixed: Mapping[str, Any] | None = None) -> None:
    """Suggest the tuned training settings (`Experiment.tuned`), each as its `setting`
    says: a (low, high) range on a log or linear scale, or a tuple of choices. A
    conditional setting (`when=(other, value)`, e.g. `depth_exponent` of allocation
    `depth`) comes after the others and only where `other`, sampled or among the `fixed`
    settings, has that value: the same space for every family."""
    conditional = [name for name in tuned if SETTINGS[name].metadata["when"]]
    values = {**(fixed or {})}
    for name in [*(n for n in tuned if n not in conditional), *conditional]:
        when = SETTINGS[name].metadata["when"]
        if when is not None and values.get(when[0], SETTINGS[when[0]].default) != when[1]:
            continue
        tune, space = SETTINGS[name].metadata["tune"], tuned[name]
        if tune == "choice":
            values[name] = trial.suggest_categorical(name, list(space))
        else:
            values[name] = trial.suggest_float(name, *space, log=tune == "log")


def define_by_run(trial, *, family: str, sparsity: float | tuple[float, float],
                  bounds: Mapping[str, Any] | None, tuned: Mapping[str, tuple],
                  fixed: Mapping[str, Any] | None = None) -> None:
    """One sample of `family` at `sparsity` (a (min, max) pair: the final sparsity is
    sampled first, uniformly, as `final_sparsity`) and of the shared training space
    (`fixed`: the experiment's fixed settings, which conditional parameters may depend
    on)."""
    if isinstance(sparsity, tuple):
        sparsity = trial.suggest_float("final_sparsity", *sparsity)
    FAMILIES[family].suggest(trial, sparsity, bounds)
    suggest_training(trial, tuned, fixed)


def trial_config(base: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """The run of a trial: `base` with the sampled schedule and training parameters.

    `base.schedule` fixes the family, and the final sparsity unless `params` has a sampled
    `final_sparsity`; every other schedule field comes from `params` (or the family's
    default).
    """
    family = type(base.schedule)
    fields = {f.name for f in dataclasses.fields(family)}
    tunable = {name for name, spec in SETTINGS.items() if spec.metadata["tune"]}
    unknown = set(params) - fields - tunable
    if unknown:
        raise ValueError(f"trial parameters {sorted(unknown)} belong to no field of "
                         f"{family.family} or the training space")
    schedule = family(**{"final_sparsity": base.schedule.final_sparsity,
                         **{k: v for k, v in params.items() if k in fields}})
    training = {k: v for k, v in params.items() if k in tunable}
    return dataclasses.replace(base, schedule=schedule, **training)


class _MiddleTrial:
    """Answers every `suggest_*` with the middle of its range (geometric for log=True)."""

    def suggest_float(self, name, low, high, *, log=False, step=None):
        return math.sqrt(low * high) if log else (low + high) / 2

    def suggest_int(self, name, low, high, *, log=False, step=1):
        return (low + high) // 2

    def suggest_categorical(self, name, choices):
        return choices[0]


def midpoint_schedule(family: str, sparsity: float,
                      bounds: Mapping[str, Any] | None = None) -> Schedule:
    """`family` at the middle of its search bounds, drawn through its own `suggest` (so
    dependent bounds, such as end >= start + min_length, hold)."""
    return FAMILIES[family].suggest(_MiddleTrial(), sparsity, bounds)
