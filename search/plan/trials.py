"""What a trial trains: the configs the experiment's one Tuner runs, and the training run
each stands for.

Every Tune trial of an experiment carries a config that says what it is, so that the
searcher, the trainable, the MLflow logger and the aggregation read it alike:

    {"part": "search", "sparsity": 0.9, "family": "agp", "number": 3, "params": {...}}
    {"part": "final", "sparsity": 0.9, "family": "agp", "seed": 1, "params": {...}}
    {"part": "final", "sparsity": 0.9, "family": "dense", "seed": 1, "params": {}}
    {"part": "start", "sparsity": 0.9, "family": "dense", "seed": 0, "params": {}}
    {"part": "confirm", "sparsity": 0.99, "family": "agp", "seed": 4, "number": 17, ...}
    {"part": "final", "sparsity": 0.9, "family": "given", "seed": 1, "params": {}}

A search trial is trial `number` of its (sparsity, family) Optuna study and `params` are
the values it sampled; a final re-run trains its family's best `params` with a fresh
`seed`; the dense reference trains without pruning. A family is an arm of the study
(`one_shot-dense`: one_shot from the dense reference). Where an arm starts from the dense
reference, the dense reference also trains with the search seed (part `start`), for the
arm's search trials to start from; where the study is given weights, the model as given is
evaluated once (family `given`, no training). Under a sparsity range, a confirmation run
re-trains search trial `number`'s `params` with a fresh `seed`, on validation only (part
`confirm`, `search.plan.outcomes.chosen_point`). `train_config` turns any of them into
its `TrainConfig`: the family's `base_config` (the schedule at the middle of its bounds,
every tuned setting at the middle of its range) with the sampled `params` (`trial_config`,
both in `search.experiment.train_configs`).
With a sparsity range, `params` holds the sampled `final_sparsity` (the group's sparsity is
the range's upper end, a key only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from oneprune.config import TrainConfig
from search.experiment.train_configs import base_config, trial_config

if TYPE_CHECKING:
    from search.experiment.schema import Experiment

SEARCH, FINAL, START, CONFIRM = "search", "final", "start", "confirm"
DENSE = "dense"  # the family name of the dense reference
AS_GIVEN = "given"  # the family name of the model the study is given, evaluated as it is

Group = tuple[float, str]  # (sparsity, family): one Optuna study, one ASHA bracket


def search_config(group: Group, number: int, params: Mapping[str, Any]) -> dict:
    return {"part": SEARCH, "sparsity": group[0], "family": group[1], "number": number,
            "params": dict(params)}


def final_config(group: Group, seed: int, params: Mapping[str, Any]) -> dict:
    return {"part": FINAL, "sparsity": group[0], "family": group[1], "seed": seed,
            "params": dict(params)}


def confirm_config(group: Group, seed: int, number: int, params: Mapping[str, Any]) -> dict:
    """Search trial `number` of `group` (its `params`) re-trained with `seed`."""
    return {"part": CONFIRM, "sparsity": group[0], "family": group[1], "seed": seed,
            "number": number, "params": dict(params)}


def start_config(sparsity: float, seed: int) -> dict:
    """The dense reference trained with the search `seed`: what the search trials of an arm
    from `dense` start from."""
    return {"part": START, "sparsity": sparsity, "family": DENSE, "seed": seed, "params": {}}


def group_of(config: Mapping[str, Any]) -> Group:
    return (config["sparsity"], config["family"])


def optuna_study_name(experiment: Experiment, group: Group) -> str:
    """The Optuna study of a (sparsity, family): `<study>/<family>`, e.g. `quick/agp`."""
    return f"{experiment.study_name(group[0])}/{group[1]}"


def is_dense(config: Mapping[str, Any]) -> bool:
    """A run of the dense reference (its group's sparsity names the study, not the run),
    or of the model as given (which it is then fine-tuned from)."""
    return config["family"] in (DENSE, AS_GIVEN)


def target_sparsity(config: Mapping[str, Any]) -> float:
    """The sparsity a trial's training ends at: 0 for the dense reference, else its sampled
    `final_sparsity` (a sparsity range) or its study's sparsity."""
    return 0.0 if is_dense(config) else config["params"].get("final_sparsity",
                                                              config["sparsity"])


def final_seeds(experiment: Experiment) -> list[int]:
    """The seeds of the final re-runs: never the tuning seed."""
    return [experiment.search.seed + 1 + i for i in range(experiment.final_seeds)]


def confirm_seeds(experiment: Experiment) -> list[int]:
    """The seeds of the confirmation runs: after the final seeds."""
    first = experiment.search.seed + 1 + experiment.final_seeds
    return [first + i for i in range(experiment.confirm.seeds)]


def train_config(experiment: Experiment, config: Mapping[str, Any]) -> TrainConfig:
    """The training run a trial's `config` stands for (the model as given: the dense
    reference's, which it evaluates without training)."""
    if is_dense(config):
        return base_config(experiment, seed=config["seed"])
    cfg = trial_config(base_config(experiment, config["family"], config["sparsity"]),
                       config["params"], experiment.train.get("allocation_args", {}))
    return cfg if config["part"] == SEARCH else dataclasses.replace(cfg, seed=config["seed"])
