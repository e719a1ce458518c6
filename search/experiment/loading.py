"""Experiment files: the YAML schema of a study and its validation.

    name: quick                  # MLflow experiment (+ "-s90" per sparsity when several)
    dataset: digits              # digits | cifar10 | cifar100 | caltech101 | imagefolder
    model: convnet               # convnet | resnet18 | vgg16 | package.module:callable |
                                 # timm:<name> (default: by dataset)
    model_args: {depth: 4}       # more keyword arguments of the model's constructor
    prune: {layers: [conv], exclude: ["features.0"]}   # what gets pruned (default: every Conv2d)
    allocation: [uniform, erk, lamp, depth]  # or one of them; scope: local | global, the
                                 # older name of uniform | global
    allocation_args: {exponent: [-2, 2]}   # an allocation's own arguments: a number, or a
                                 # range searched (depth_exponent: the older name)
    sparsity: 0.9                # or a list: one study per value; or a range searched
                                 # with accuracy: {min: 0.8, max: 0.99, max_drop: 1.0}
    epochs: 10
    families: [one_cycle, one_shot, iterative, agp]
    teacher: dense               # distil from the dense reference of the same seed (or a
                                 # weights file, an MLflow URI; {arm: teacher} per arm)
    trials_per_family: 8
    final_seeds: 3
    search:   {sampler: tpe, seed: 0, asha: false, grace_period: 2, space: {agp: {power: [1, 4]}}}
    training: {optimizer: adam, lr_max: [1.0e-3, 3.0e-2], coupling: [none, align],
               recovery_gain: [0, 2], momentum: 0.9}
    resources: {cpus_per_trial: 1, gpus_per_trial: 0, workers_per_trial: 1}
    checkpoint_every: 5          # epochs between a trial's checkpoints (only the newest kept)
    tracking: {tracking_uri: "sqlite:///mlflow.db", optuna_storage: "sqlite:///optuna.db"}
    faults: {raise_at_epoch: 2, nan_at_epoch: 2, nan_families: [agp]}   # test-only
                                 # (kill_driver_at: registering)

Every key is declared once, with its parser and help, in `search.experiment.keys` (`SECTIONS`).
`load_experiment(path)` returns an `Experiment` (`search.experiment.schema`) or raises
`ConfigError` with one line that names the offending key. An argument of an allocation the
trials may use is fixed where `allocation_args` gives a number, searched where it gives a
range, and otherwise searched over its allocation's default range where it has one (depth's
exponent over [-4, 4]): a conditional parameter, only in trials that chose that allocation.
A `TrainConfig` is built for every family at both ends of every tuned range and of the
sparsities (a range's min and max), every searched allocation argument is checked at both
ends, and ASHA is only accepted where it is neutral
(`search.experiment.neutral_asha.check_neutral_asha`), so a file that loads can run.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from oneprune.allocation import ALLOCATIONS, allocation_of
from oneprune.cost import LatencySettings
from oneprune.distill import DISTILL_SETTINGS, NO_TEACHER
from search.experiment.keys import SECTIONS, SETTINGS, Tuned, section
from search.experiment.neutral_asha import check_neutral_asha
from search.experiment.schema import (
    DENSE_START,
    GIVEN,
    SCRATCH,
    ConfigError,
    Confirmation,
    Experiment,
    SparsityRange,
)
from search.experiment.train_configs import allocation_parameter, base_config, trial_config

DEFAULT_EXPERIMENT = Path(__file__).resolve().parents[2] / "experiments" / "quick.yaml"
__all__ = ["DEFAULT_EXPERIMENT", "ConfigError", "load_experiment", "parse_experiment"]


def parse_experiment(raw: Any) -> Experiment:
    """Validate a parsed YAML document; raises `ConfigError` naming the first bad key."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"an experiment must be a mapping of keys, got {type(raw).__name__}")
    try:
        values = section(raw, "", SECTIONS[""])
        if "name" not in values:
            raise ConfigError("missing key 'name' (the study's MLflow experiment name)")
        values.update(values.pop("tracking", {}))
        if isinstance(values.get("sparsity"), SparsityRange):
            values["sparsity_range"] = values["sparsity"]
            values["sparsity"] = (values["sparsity_range"].max,)
        if "scope" in values:  # the older name of two allocations
            if "allocation" in values:
                raise ConfigError("scope and allocation are two names of one setting: "
                                  "give allocation only")
            values["allocation"] = values.pop("scope")
        if "depth_exponent" in values:  # the older name of depth's argument
            if "exponent" in values.get("allocation_args", {}):
                raise ConfigError("depth_exponent and allocation_args.exponent are two "
                                  "names of one setting: give allocation_args only")
            values["allocation_args"] = {**values.get("allocation_args", {}),
                                         **values.pop("depth_exponent")}
        _cost_and_confirmation(values)
        arguments = values.pop("allocation_args", {})
        init = values.pop("init", SCRATCH)  # the study's start, not one run's (`init` below)
        teacher = values.pop("teacher", NO_TEACHER)  # likewise
        given = {key: values.pop(key) for key in list(values) if key in SETTINGS}
        given.update(values.pop("training", {}))
        train = {k: v for k, v in given.items() if not isinstance(v, Tuned)}
        tuned = {k: v.space for k, v in given.items() if isinstance(v, Tuned)}
        allocations = tuned.get("allocation", (train.get("allocation",
                                                         SETTINGS["allocation"].default),))
        fixed, space = _allocation_arguments(arguments, allocations)
        if fixed:
            train["allocation_args"] = fixed
        experiment = Experiment(**values, init=init, teacher=teacher, train=train,
                                tuned=tuned, allocation_space=space)
        _check_arms(experiment)
        experiment = _with_distillation_searched(experiment)
        _check_runnable(experiment)
    except ConfigError:
        raise
    except ValueError as error:  # the library's own checks name the field and range
        raise ConfigError(str(error)) from None
    return experiment


def _cost_and_confirmation(values: dict[str, Any]) -> None:
    """`cost`, `latency` and `confirm` (in place): only under a sparsity range, `latency`
    only with `cost: latency` (whose runtime must be installed), the confirmation's
    defaults filled in."""
    span = values.get("sparsity_range")
    for key in ("cost", "confirm"):
        if key in values and span is None:
            raise ConfigError(f"{key} needs a sparsity range (sparsity: {{min, max, "
                              f"max_drop}}): it belongs to a range's second objective")
    if "latency" in values and values.get("cost") != "latency":
        raise ConfigError("latency is read only with cost: latency")
    if values.get("cost") == "latency":
        values.setdefault("latency", LatencySettings())
        values["latency"].check_runtime()
    if span is not None:
        values["confirm"] = Confirmation.of(
            values.get("confirm", {}),
            values.get("trials_per_family", Experiment.trials_per_family),
            values.get("final_seeds", Experiment.final_seeds))


def _allocation_arguments(given: Mapping[str, Any], allocations: tuple[str, ...],
                          ) -> tuple[dict[str, Any], dict[str, dict[str, tuple]]]:
    """The fixed arguments of `allocations` (those `allocation_args` gives as numbers, for
    every allocation that takes them) and, per allocation, the range of each argument
    searched: the range `allocation_args` gives, else its default range, unless fixed."""
    takes = {name: ALLOCATIONS[name].arguments() for name in allocations}
    for arg in given:
        if not any(arg in arguments for arguments in takes.values()):
            offered = sorted({a for arguments in takes.values() for a in arguments})
            raise ConfigError(
                f"allocation_args.{arg}: no allocation of this study takes it (allocation: "
                f"{', '.join(allocations)}); allowed: {', '.join(offered) or 'none'}")
    fixed = {arg: value for arg, value in given.items() if not isinstance(value, Tuned)}
    space = {}
    for name, arguments in takes.items():
        allocation_of(name, {a: v for a, v in fixed.items() if a in arguments})  # checked
        ranges = {}
        for arg, spec in arguments.items():
            value = given.get(arg)
            if isinstance(value, Tuned):
                low, high = (spec.check(f"allocation_args.{arg}", v) for v in value.space)
                ranges[arg] = (low, high)
            elif value is None and spec.searched:
                ranges[arg] = spec.bounds
        if ranges:
            space[name] = ranges
    return fixed, space


def _check_arms(experiment: Experiment) -> None:
    """Each arm a distinct (family, start), and `-given` only where `init` names weights."""
    seen = {}
    for arm in experiment.families:
        start = experiment.start_of(arm)
        if start == GIVEN and not experiment.given:
            raise ConfigError(f"families: {arm} starts from given weights, but init does not "
                              f"name any (a weights file or folder, or an MLflow model URI)")
        twin = seen.setdefault((experiment.family_of(arm), start), arm)
        if twin != arm:
            raise ConfigError(f"families: {arm} and {twin} are one arm ({start} start)")


def _check_teachers(experiment: Experiment) -> None:
    """Teachers only for the study's arms, and one weights source at most."""
    if isinstance(experiment.teacher, Mapping):
        for arm in experiment.teacher:
            if arm not in experiment.families:
                raise ConfigError(f"teacher.{arm}: not an arm of this study (families: "
                                  f"{', '.join(experiment.families)})")
    named = {experiment.teacher_of(arm) for arm in experiment.families} - {
        NO_TEACHER, DENSE_START}
    if len(named) > 1:
        raise ConfigError(f"teacher names {len(named)} weights ({', '.join(sorted(named))}); "
                          f"a study reads one")


def _with_distillation_searched(experiment: Experiment) -> Experiment:
    """Where an arm has a teacher, every distillation setting the file neither fixes nor
    searches is searched over its default range (the weight's starts at 0: a study may find
    that distillation does not help)."""
    _check_teachers(experiment)
    if not experiment.distils:
        given = [name for name in DISTILL_SETTINGS
                 if name in experiment.train or name in experiment.tuned]
        if given:
            raise ConfigError(f"training.{given[0]} is given, but no arm has a teacher "
                              f"(teacher: dense, a weights file or an MLflow model URI)")
        return experiment
    defaults = {name: SETTINGS[name].metadata["default_range"] for name in DISTILL_SETTINGS
                if name not in experiment.train and name not in experiment.tuned}
    return dataclasses.replace(experiment, tuned={**experiment.tuned, **defaults})


def _check_runnable(experiment: Experiment) -> None:
    """Build the training config of every family at both ends of every tuned range and of
    every searched allocation argument, and check that early stopping, if on, is neutral
    to when a schedule prunes."""
    check_neutral_asha(experiment)
    faults = experiment.faults
    for name in ("raise_at_epoch", "nan_at_epoch"):
        epoch = faults and getattr(faults, name)
        if epoch and epoch > experiment.epochs:
            raise ConfigError(f"faults.{name} must be at most epochs={experiment.epochs}, "
                              f"got {epoch}")
    fixed = experiment.train.get("allocation_args", {})
    for sparsity in experiment.trained_sparsities:
        for family in experiment.families:
            ends = [[(name, end) for end in space]
                    for name, space in experiment.tuned_for(family).items()]
            base = base_config(experiment, family, sparsity)
            schedule = dataclasses.asdict(base.schedule)
            for combination in itertools.product(*ends):
                trial_config(base, {**schedule, **dict(combination)}, fixed)
            for allocation, space in experiment.allocation_space.items():
                for argument, bounds in space.items():
                    for end in bounds:
                        trial_config(base, {**schedule, "allocation": allocation,
                                            allocation_parameter(allocation, argument): end},
                                     fixed)
    base_config(experiment)


def load_experiment(path: str | os.PathLike,
                    overrides: Mapping[str, Any] | None = None) -> Experiment:
    """Read and validate an experiment file, with keys replaced by `overrides` (the
    command line's; a mapping is merged into the file's section, so the section's other
    keys are still checked); raises `ConfigError` (one line) if unusable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise ConfigError(f"cannot read experiment file {str(path)!r}: {reason}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if overrides and isinstance(raw, Mapping):
        raw = {**raw, **{key: {**raw[key], **value} if isinstance(value, Mapping)
                         and isinstance(raw.get(key), Mapping) else value
                         for key, value in overrides.items()}}
    try:
        return parse_experiment(raw)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
