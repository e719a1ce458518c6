"""Define-by-run search spaces: a family's schedule plus the shared training space.

`define_by_run` is what `ExperimentSearcher` calls with each new Optuna trial; the
parameters it suggests (`final_sparsity` where a sparsity range is searched, `start`, `end`,
`alpha`, ..., `lr_max`, `coupling`, `recovery_gain`, `allocation`, `depth_exponent`)
become the `params` of the Tune trial's config, and `search.plan.trials.trial_config` turns
them into the `TrainConfig` the trial trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from oneprune.config import TrainConfig
from oneprune.schedules import FAMILIES

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
