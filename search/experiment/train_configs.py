"""The `TrainConfig` a run of a study trains, built from the experiment alone (pure).

`base_config` is where every trial of a family starts: the schedule at the middle of its
search bounds, the fixed settings, every tuned setting (and every searched argument of the
allocation) at the middle of its range. `trial_config` replaces in it what a trial sampled.
Loading a file builds both at every extreme of its ranges, so a file that loads can run
(`search.experiment.loading`); `search.plan.trials.train_config` builds the run of any
Tune trial of the study with them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from oneprune.allocation import ALLOCATIONS
from oneprune.config import TrainConfig
from oneprune.distill import DISTILL_SETTINGS, NO_TEACHER
from oneprune.schedules import FAMILIES, Schedule
from search.experiment.schema import GIVEN

if TYPE_CHECKING:
    from search.experiment.schema import Experiment

SETTINGS = TrainConfig.settings()


def allocation_parameter(allocation: str, argument: str) -> str:
    """The search parameter of an allocation's argument: `<allocation>_<argument>`
    (`depth_exponent`), so that two allocations' arguments of one name stay apart."""
    return f"{allocation}_{argument}"


class _MiddleTrial:
    """Answers every `suggest_*` with the middle of its range (geometric for log=True): what
    a tuned setting or schedule parameter takes outside the search."""

    def suggest_float(self, name, low, high, *, log=False, step=None):
        return math.sqrt(low * high) if log else (low + high) / 2

    def suggest_int(self, name, low, high, *, log=False, step=1):
        return (low + high) // 2

    def suggest_categorical(self, name, choices):
        return choices[0]


def tuned_middle(name: str, space: tuple) -> Any:
    """The value the tuned setting `name` takes outside the search (base configs, dense
    reference): the middle of its range (geometric for a log scale), or its first choice."""
    tune = SETTINGS[name].metadata["tune"]
    if tune == "choice":
        return _MiddleTrial().suggest_categorical(name, space)
    return _MiddleTrial().suggest_float(name, *space, log=tune == "log")


def midpoint_schedule(family: str, sparsity: float,
                      bounds: Mapping[str, Any] | None = None) -> Schedule:
    """`family` at the middle of its search bounds, drawn through its own `suggest` (so
    dependent bounds, such as end >= start + min_length, hold)."""
    return FAMILIES[family].suggest(_MiddleTrial(), sparsity, bounds)


def _allocation_args(allocation: str, fixed: Mapping[str, Any],
                     searched: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments `allocation` trains with: those of the `fixed` ones it takes, and the
    `searched` values."""
    arguments = ALLOCATIONS[allocation].arguments()
    return {**{arg: value for arg, value in fixed.items() if arg in arguments}, **searched}


def base_config(experiment: Experiment, family: str | None = None,
                sparsity: float | None = None, *, seed: int | None = None) -> TrainConfig:
    """The training run every trial of `family` (an arm: `one_shot`, `one_shot-dense`) at
    `sparsity` starts from: its schedule at the middle of its search bounds (no family: the
    dense reference, without LR coupling, which needs a schedule), the fixed settings,
    every tuned one at `tuned_middle` (the searched arguments of its allocation too), its
    starting point (`init`: scratch, dense, or the weights the study is given); `seed`
    defaults to the search seed."""
    arm = family or "dense"
    teacher = experiment.teacher_of(arm)
    values = {**experiment.train, **{name: tuned_middle(name, space)
                                     for name, space in experiment.tuned.items()}}
    if teacher == NO_TEACHER:  # the distillation settings, fixed or searched, are the
        # teacher's arms' only
        values = {name: value for name, value in values.items()
                  if name not in DISTILL_SETTINGS}
    allocation = values.get("allocation", SETTINGS["allocation"].default)
    arguments, middle = ALLOCATIONS[allocation].arguments(), _MiddleTrial()
    values["allocation_args"] = _allocation_args(
        allocation, experiment.train.get("allocation_args", {}),
        {arg: (middle.suggest_int if arguments[arg].kind is int else middle.suggest_float)(
            arg, *space) for arg, space in experiment.allocation_space.get(allocation,
                                                                           {}).items()})
    if family is None:
        values["coupling"] = "none"
    start = experiment.start_of(arm)
    schedule = None if family is None else midpoint_schedule(
        experiment.family_of(family), sparsity,
        experiment.search.space.get(experiment.family_of(family)))
    return TrainConfig(**values, seed=experiment.search.seed if seed is None else seed,
                       schedule=schedule, init=experiment.init if start == GIVEN else start,
                       teacher=teacher)


def trial_config(base: TrainConfig, params: Mapping[str, Any],
                 allocation_args: Mapping[str, Any] | None = None) -> TrainConfig:
    """The run of a trial: `base` with the sampled schedule and training parameters.

    `base.schedule` fixes the family, and the final sparsity unless `params` has a sampled
    `final_sparsity`; every other schedule field comes from `params` (or the family's
    default). The allocation (sampled, or `base`'s) trains with its sampled arguments and
    those of the fixed `allocation_args` it takes (default: `base`'s).
    """
    family = type(base.schedule)
    fields = {f.name for f in dataclasses.fields(family)}
    tunable = {name for name, spec in SETTINGS.items() if spec.metadata["tune"]}
    allocation = params.get("allocation", base.allocation)
    searched = {arg: params[allocation_parameter(allocation, arg)]
                for arg in ALLOCATIONS[allocation].arguments()
                if allocation_parameter(allocation, arg) in params}
    unknown = (set(params) - fields - tunable
               - {allocation_parameter(allocation, arg) for arg in searched})
    if unknown:
        raise ValueError(f"trial parameters {sorted(unknown)} belong to no field of "
                         f"{family.family} or the training space")
    schedule = family(**{"final_sparsity": base.schedule.final_sparsity,
                         **{k: v for k, v in params.items() if k in fields}})
    training = {k: v for k, v in params.items() if k in tunable}
    fixed = base.allocation_args if allocation_args is None else allocation_args
    return dataclasses.replace(base, schedule=schedule, **training,
                               allocation_args=_allocation_args(allocation, fixed, searched))
