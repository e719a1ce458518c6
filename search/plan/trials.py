"""What a trial trains: the configs the experiment's one Tuner runs, and the training run
each stands for.

Every Tune trial of an experiment carries a config that says what it is, so that the
searcher, the trainable, the MLflow logger and the aggregation read it alike:

    {"part": "search", "sparsity": 0.9, "family": "agp", "number": 3, "params": {...}}
    {"part": "final", "sparsity": 0.9, "family": "agp", "seed": 1, "params": {...}}
    {"part": "final", "sparsity": 0.9, "family": "dense", "seed": 1, "params": {}}

A search trial is trial `number` of its (sparsity, family) Optuna study and `params` are
the values it sampled; a final re-run trains its family's best `params` with a fresh
`seed`; the dense reference trains without pruning. `train_config` turns any of them into
its `TrainConfig`: the family's `base_config` (the schedule at the middle of its bounds,
every tuned setting at the middle of its range) with the sampled `params` (`trial_config`).
With a sparsity range, `params` holds the sampled `final_sparsity` (the group's sparsity is
the range's upper end, a key only).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from oneprune.allocation import ALLOCATIONS
from oneprune.config import TrainConfig
from oneprune.schedules import FAMILIES, Schedule
from search.plan.space import allocation_parameter

if TYPE_CHECKING:
    from search.experiment.schema import Experiment

SEARCH, FINAL = "search", "final"
DENSE = "dense"  # the family name of the dense reference
SETTINGS = TrainConfig.settings()

Group = tuple[float, str]  # (sparsity, family): one Optuna study, one ASHA bracket


def search_config(group: Group, number: int, params: Mapping[str, Any]) -> dict:
    return {"part": SEARCH, "sparsity": group[0], "family": group[1], "number": number,
            "params": dict(params)}


def final_config(group: Group, seed: int, params: Mapping[str, Any]) -> dict:
    return {"part": FINAL, "sparsity": group[0], "family": group[1], "seed": seed,
            "params": dict(params)}


def group_of(config: Mapping[str, Any]) -> Group:
    return (config["sparsity"], config["family"])


def optuna_study_name(experiment: Experiment, group: Group) -> str:
    """The Optuna study of a (sparsity, family): `<study>/<family>`, e.g. `quick/agp`."""
    return f"{experiment.study_name(group[0])}/{group[1]}"


def is_dense(config: Mapping[str, Any]) -> bool:
    """A run of the dense reference (its group's sparsity names the study, not the run)."""
    return config["family"] == DENSE


def target_sparsity(config: Mapping[str, Any]) -> float:
    """The sparsity a trial's training ends at: 0 for the dense reference, else its sampled
    `final_sparsity` (a sparsity range) or its study's sparsity."""
    return 0.0 if is_dense(config) else config["params"].get("final_sparsity",
                                                              config["sparsity"])


def final_seeds(experiment: Experiment) -> list[int]:
    """The seeds of the final re-runs: never the tuning seed."""
    return [experiment.search.seed + 1 + i for i in range(experiment.final_seeds)]


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
    """The training run every trial of `family` at `sparsity` starts from: its schedule
    at the middle of its search bounds (no family: the dense reference, without LR
    coupling, which needs a schedule), the fixed settings, every tuned one at
    `tuned_middle` (the searched arguments of its allocation too); `seed` defaults to the
    search seed."""
    values = {**experiment.train, **{name: tuned_middle(name, space)
                                     for name, space in experiment.tuned.items()}}
    allocation = values.get("allocation", SETTINGS["allocation"].default)
    arguments, middle = ALLOCATIONS[allocation].arguments(), _MiddleTrial()
    values["allocation_args"] = _allocation_args(
        allocation, experiment.train.get("allocation_args", {}),
        {arg: (middle.suggest_int if arguments[arg].kind is int else middle.suggest_float)(
            arg, *space) for arg, space in experiment.allocation_space.get(allocation,
                                                                           {}).items()})
    if family is None:
        values["coupling"] = "none"
    return TrainConfig(
        **values, seed=experiment.search.seed if seed is None else seed,
        schedule=None if family is None else midpoint_schedule(
            family, sparsity, experiment.search.space.get(family)))


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


def train_config(experiment: Experiment, config: Mapping[str, Any]) -> TrainConfig:
    """The training run a trial's `config` stands for."""
    if is_dense(config):
        return base_config(experiment, seed=config["seed"])
    cfg = trial_config(base_config(experiment, config["family"], config["sparsity"]),
                       config["params"], experiment.train.get("allocation_args", {}))
    return cfg if config["part"] == SEARCH else dataclasses.replace(cfg, seed=config["seed"])
