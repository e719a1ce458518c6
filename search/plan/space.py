"""Define-by-run search spaces: a family's schedule plus the shared training space.

`define_by_run` is what `ExperimentSearcher` calls with each new Optuna trial; the
parameters it suggests (`final_sparsity` where a sparsity range is searched, `start`, `end`,
`alpha`, ..., `lr_max`, `coupling`, `recovery_gain`, `allocation`, and the searched
arguments of the allocation drawn, e.g. `depth_exponent`) become the `params` of the Tune
trial's config, and `search.experiment.train_configs.trial_config` turns them into the
`TrainConfig` the trial trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from oneprune.allocation import ALLOCATIONS
from oneprune.config import TrainConfig
from oneprune.schedules import FAMILIES
from search.experiment.train_configs import allocation_parameter

SETTINGS = TrainConfig.settings()


def suggest_training(trial, tuned: Mapping[str, tuple],
                     fixed: Mapping[str, Any] | None = None,
                     allocation_space: Mapping[str, Mapping[str, tuple]] | None = None,
                     ) -> None:
    """Suggest the tuned training settings (`Experiment.tuned`), each as its `setting`
    says: a (low, high) range on a log or linear scale, or a tuple of choices; then the
    searched arguments of the allocation the trial uses (sampled, or among the `fixed`
    settings), from `allocation_space` (`Experiment.allocation_space`): a conditional
    parameter, the same space for every family."""
    values = {**(fixed or {})}
    for name, space in tuned.items():
        tune = SETTINGS[name].metadata["tune"]
        if tune == "choice":
            values[name] = trial.suggest_categorical(name, list(space))
        else:
            values[name] = trial.suggest_float(name, *space, log=tune == "log")
    allocation = values.get("allocation", SETTINGS["allocation"].default)
    arguments = ALLOCATIONS[allocation].arguments()
    for argument, space in (allocation_space or {}).get(allocation, {}).items():
        suggest = trial.suggest_int if arguments[argument].kind is int else trial.suggest_float
        suggest(allocation_parameter(allocation, argument), *space)


def define_by_run(trial, *, family: str, sparsity: float | tuple[float, float],
                  bounds: Mapping[str, Any] | None, tuned: Mapping[str, tuple],
                  fixed: Mapping[str, Any] | None = None,
                  allocation_space: Mapping[str, Mapping[str, tuple]] | None = None) -> None:
    """One sample of `family` at `sparsity` (a (min, max) pair: the final sparsity is
    sampled first, uniformly, as `final_sparsity`) and of the shared training space
    (`fixed`: the experiment's fixed settings, which the allocation may be among)."""
    if isinstance(sparsity, tuple):
        sparsity = trial.suggest_float("final_sparsity", *sparsity)
    FAMILIES[family].suggest(trial, sparsity, bounds)
    suggest_training(trial, tuned, fixed, allocation_space)
