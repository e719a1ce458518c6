"""Experiment files: the YAML schema of a study and its validation.

    name: quick                  # MLflow experiment (+ "-s90" per sparsity when several)
    dataset: digits              # digits | cifar10 | cifar100 | caltech101 | imagefolder
    model: convnet               # convnet | resnet18 | vgg16 | package.module:callable |
                                 # timm:<name> (default: by dataset)
    model_args: {depth: 4}       # more keyword arguments of the model's constructor
    prune: {layers: [conv], exclude: ["features.0"]}   # what gets pruned (default: every Conv2d)
    allocation: [uniform, erk, lamp, depth]  # or one of them; scope: local | global, the
                                 # older name of uniform | global; depth_exponent: [-4, 4]
    sparsity: 0.9                # or a list: one study per value; or a range searched
                                 # with accuracy: {min: 0.8, max: 0.99, max_drop: 1.0}
    epochs: 10
    families: [one_cycle, one_shot, iterative, agp]
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

The training keys are not declared here: every `TrainConfig` setting placed "top" is a
top-level key, every one placed "training" a key of `training:` (a [low, high] range or a
list of choices where the setting is tunable), each checked by the setting's own check
(`oneprune.config.setting`). Where `allocation` may be `depth` and `depth_exponent` is not
given, the exponent is searched over `DEPTH_SEARCH` (a conditional parameter).
`load_experiment(path)` returns an `Experiment` or raises `ConfigError` with one line that
names the offending key; a `TrainConfig` is built for both ends of every tuned range, so a
file that loads can run.

A sparsity range (`SparsityRange`) makes the final sparsity a searched parameter of every
family (`final_sparsity`) and a second objective: one study, whose trials maximise
validation accuracy and sparsity, feasible when their validation accuracy is at most
`max_drop` points below the dense reference's (`search.plan.accuracy_floor`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from oneprune import _validate
from oneprune.allocation import DEPTH_SEARCH, SCOPE_NAMES, from_scope
from oneprune.config import TrainConfig
from oneprune.schedules import FAMILIES
from search.space import midpoint_schedule

DEFAULT_FAMILIES = ("one_cycle", "one_shot", "iterative", "agp")
KILL_POINTS = ("registering",)  # where a test-only fault may kill the driver
SAMPLERS = ("tpe", "random")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
OPTUNA_FILE = "optuna.db"  # the default Optuna storage: this file beside a sqlite MLflow store
DEFAULT_EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "quick.yaml"


class ConfigError(ValueError):
    """An experiment file that cannot run; the message is one line naming the key."""


@dataclass(frozen=True)
class SparsityRange:
    """`sparsity: {min, max, max_drop}`: the final sparsity is searched in [min, max], and a
    trial counts only if its validation accuracy is within `max_drop` points (of 100) of
    the dense reference's."""

    min: float
    max: float
    max_drop: float = 1.0


@dataclass(frozen=True)
class SearchSettings:
    """How each family's study samples: Optuna sampler and seed, optional ASHA, bounds."""

    sampler: str = "tpe"
    seed: int = 0
    asha: bool = False
    grace_period: int = 1
    space: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


SETTINGS = TrainConfig.settings()


def tuned_middle(name: str, space: tuple) -> Any:
    """The value a tuned setting takes outside the search (base configs, dense reference):
    the middle of its range (geometric for a log scale), or its first choice."""
    tune = SETTINGS[name].metadata["tune"]
    if tune == "choice":
        return space[0]
    low, high = space
    return math.sqrt(low * high) if tune == "log" else (low + high) / 2


@dataclass(frozen=True)
class Resources:
    """What one trial holds on the cluster: `workers_per_trial` processes (more than one: a
    Ray Train DDP run), each with `cpus_per_trial` CPUs and `gpus_per_trial` GPUs."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1


@dataclass(frozen=True)
class Faults:
    """Test-only fault injection, to prove the service survives them (README, Reliability).

    `raise_at_epoch`: a trial raises at the end of that epoch, before its checkpoint is
    saved, on every attempt that did not resume from a checkpoint (its retry resumes and
    passes; at epoch 1 every attempt fails). `nan_at_epoch` (>= 2): a trial's weights turn
    NaN once the epoch before is saved, so that epoch's loss is NaN. `raise_families` and
    `nan_families`: the families whose trials and final runs get each fault ("dense": the
    dense reference); None: all. `kill_driver_at: registering`: the driver kills itself
    (SIGKILL) once it has registered the first family's model.
    """

    raise_at_epoch: int | None = None
    raise_families: tuple[str, ...] | None = None
    nan_at_epoch: int | None = None
    nan_families: tuple[str, ...] | None = None
    kill_driver_at: str | None = None

    def for_family(self, family: str) -> Faults | None:
        """The faults a run of `family` gets (None: none)."""
        mine = Faults(
            raise_at_epoch=self.raise_at_epoch if self.raise_families is None
            or family in self.raise_families else None,
            nan_at_epoch=self.nan_at_epoch if self.nan_families is None
            or family in self.nan_families else None)
        return mine if mine.raise_at_epoch or mine.nan_at_epoch else None


@dataclass(frozen=True)
class Experiment:
    """A validated experiment file: one study per sparsity, every family searched alike.

    `train` holds the fixed training settings the file gives (the rest keep their
    `TrainConfig` defaults), `tuned` the searched ones: a (low, high) range or a tuple of
    choices per setting, in file order (the order Optuna suggests them in). With a
    `sparsity_range`, `sparsity` is its upper end alone: the one study's key (each trial's
    own sparsity is its `final_sparsity` parameter).
    """

    name: str
    sparsity: tuple[float, ...] = (0.9,)
    sparsity_range: SparsityRange | None = None
    families: tuple[str, ...] = DEFAULT_FAMILIES
    trials_per_family: int = 8
    final_seeds: int = 3
    search: SearchSettings = field(default_factory=SearchSettings)
    resources: Resources = field(default_factory=Resources)
    checkpoint_every: int = 5
    tracking_uri: str = DEFAULT_TRACKING_URI
    optuna_storage: str | None = None
    faults: Faults | None = None
    train: Mapping[str, Any] = field(default_factory=dict)
    tuned: Mapping[str, tuple] = field(default_factory=dict)

    @functools.cached_property
    def dense_config(self) -> TrainConfig:
        """The dense reference's training run (search seed)."""
        return self.base_config()

    @property
    def allocations(self) -> tuple[str, ...]:
        """The allocations the trials may use: the searched ones, or the one fixed."""
        return self.tuned.get("allocation", (self.dense_config.allocation,))

    @property
    def trained_sparsities(self) -> tuple[float, ...]:
        """The final sparsities a run may train to, at their extremes: every listed one, or
        both ends of the range."""
        if self.sparsity_range is None:
            return self.sparsity
        return (self.sparsity_range.min, self.sparsity_range.max)

    @property
    def dataset(self) -> str:
        return self.dense_config.dataset

    @property
    def model(self) -> str:
        return self.dense_config.model

    @property
    def epochs(self) -> int:
        return self.dense_config.epochs

    @property
    def optuna_storage_url(self) -> str:
        """Where the Optuna studies live: `optuna_storage`, or by default `optuna.db` beside
        a sqlite MLflow store (in the working folder for any other tracking URI)."""
        if self.optuna_storage is not None:
            return self.optuna_storage
        if self.tracking_uri.startswith("sqlite:///"):
            mlflow_db = Path(self.tracking_uri.removeprefix("sqlite:///"))
            return f"sqlite:///{mlflow_db.parent / OPTUNA_FILE}"
        return f"sqlite:///{OPTUNA_FILE}"

    def study_name(self, sparsity: float) -> str:
        """The MLflow experiment (and Tune folder prefix) of the study at `sparsity`."""
        if len(self.sparsity) == 1:
            return self.name
        return f"{self.name}-s{sparsity * 100:g}"

    def base_config(self, family: str | None = None, sparsity: float | None = None, *,
                    seed: int | None = None) -> TrainConfig:
        """The training run every trial of `family` at `sparsity` starts from: its schedule
        at the middle of its search bounds (no family: dense, without LR coupling, which
        needs a schedule), the fixed settings, every tuned one at `tuned_middle`; `seed`
        defaults to the search seed."""
        values = {**self.train,
                  **{name: tuned_middle(name, space) for name, space in self.tuned.items()}}
        if family is None:
            values["coupling"] = "none"
        return TrainConfig(
            **values, seed=self.search.seed if seed is None else seed,
            schedule=None if family is None else midpoint_schedule(
                family, sparsity, self.search.space.get(family)))


# -- parsing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One key of an experiment file, declared once: how its value is parsed and checked
    (`parse(dotted_key, value)`), and what it means (`help`, for the key reference)."""

    parse: Callable[[str, Any], Any]
    help: str


def _section(raw: Any, key: str, parsers: Mapping[str, Key]) -> dict:
    """Parse the mapping `raw` at `key` with one `Key` per allowed sub-key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key or 'the experiment'} must be a mapping, got {raw!r}")
    prefix = f"{key}." if key else ""
    for name in raw:
        if name not in parsers:
            where = SETTINGS[name].metadata["where"] if name in SETTINGS else "unknown"
            hint = {"top": f" ('{name}' is a top-level key)",
                    "training": f" ('{name}' goes under training:)",
                    None: f" ('{name}' is set by the service for each trial)"}.get(where, "")
            raise ConfigError(f"unknown key '{prefix}{name}'{hint}; allowed: "
                              f"{', '.join(parsers)}")
    return {name: parsers[name].parse(f"{prefix}{name}", value)
            for name, value in raw.items()}


def _checked(check: Callable, **limits) -> Callable[[str, Any], Any]:
    return lambda key, value: check(key, value, **limits)


def _boolean(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _name(key: str, value) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 100 or any(
            c in value for c in "/\\:*?\"<>|") or value != value.strip():
        raise ConfigError(f"{key} must be a non-empty name of at most 100 characters "
                          f"without / \\ : * ? \" < > |, got {value!r}")
    return value


def _choices(allowed: Sequence[str]) -> Callable[[str, Any], tuple[str, ...]]:
    def parse(key: str, value) -> tuple[str, ...]:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)} or a non-empty list "
                              f"of them, got {value!r}")
        for item in values:
            _validate.choice(key, item, allowed)
        if len(set(values)) != len(values):
            raise ConfigError(f"{key} lists a value twice: {value!r}")
        return tuple(values)
    return parse


_SPARSITY = {"low": 0.0, "high": 1.0, "low_open": True, "high_open": True}
_RANGE = {
    "min": Key(_checked(_validate.real, **_SPARSITY),
               "Lowest final sparsity a trial may sample, in (0, 1)."),
    "max": Key(_checked(_validate.real, **_SPARSITY),
               "Highest final sparsity a trial may sample, in (0, 1), above min."),
    "max_drop": Key(_checked(_validate.real, low=0.0, high=100.0),
                    "Points of validation accuracy (of 100) a trial may lose to the dense "
                    "reference and still count, in [0, 100]; default 1.0."),
}


def _sparsities(key: str, value) -> tuple[float, ...] | SparsityRange:
    """A number, a list of numbers (one study each), or a range `{min, max, max_drop}`."""
    if isinstance(value, Mapping):
        bounds = _section(value, key, _RANGE)
        missing = [name for name in ("min", "max") if name not in bounds]
        if missing:
            raise ConfigError(f"{key}.{missing[0]} is missing: a sparsity range needs min "
                              f"and max (and optionally max_drop, in points of accuracy)")
        if bounds["min"] >= bounds["max"]:
            raise ConfigError(f"{key} must have min < max, got min={bounds['min']:g}, "
                              f"max={bounds['max']:g}")
        return SparsityRange(**bounds)
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"{key} must be a number in (0, 1) or a non-empty list of them")
    if any(isinstance(v, Mapping) for v in values):
        raise ConfigError(f"{key}: a sparsity range cannot be combined with a list; give "
                          f"either {{min, max, max_drop}} or a list of numbers")
    parsed = tuple(_validate.real(key, v, **_SPARSITY) for v in values)
    if len(set(parsed)) != len(parsed):
        raise ConfigError(f"{key} lists a value twice: {value!r}")
    return parsed


def _tracking_uri(key: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be a non-empty MLflow tracking URI, got {value!r}")
    return value


def _storage_url(key: str, value) -> str:
    """An Optuna RDB storage URL (SQLAlchemy's form: sqlite:///path, postgresql://...)."""
    if not isinstance(value, str) or "://" not in value:
        raise ConfigError(f"{key} must be a database URL such as sqlite:///optuna.db or "
                          f"postgresql://user@host/db, got {value!r}")
    return value


def _space(key: str, value) -> dict[str, dict[str, Any]]:
    """Per-family overrides of the default search bounds, checked by the family itself."""
    raw = _section(value, key, {family: Key(lambda _, v: v, "") for family in FAMILIES})
    space = {}
    for family, bounds in raw.items():
        try:
            FAMILIES[family].search_bounds(bounds)
        except ValueError as error:
            raise ConfigError(f"{key}.{family}: {error}") from None
        space[family] = dict(bounds or {})
    return space


_SEARCH = {
    "sampler": Key(lambda key, value: _validate.choice(key, value, SAMPLERS),
                   "Optuna sampler of every family's study: tpe (seeded, multivariate, "
                   "constant liar) or random."),
    "seed": Key(_checked(_validate.integer, **_validate.SEED),
                "Seed of the samplers and of every search trial's training; the final "
                "re-runs use seed + 1, seed + 2, ..."),
    "asha": Key(_boolean, "Stop poor trials early with ASHA, one bracket per family; "
                "refused unless neutral to when a schedule prunes."),
    "grace_period": Key(_checked(_validate.integer, low=1, high=10_000),
                        "Epochs before ASHA may stop a trial; at least the first epoch "
                        "by which every trial has reached its final sparsity."),
    "space": Key(_space, "Per-family search bounds of the schedule's parameters, e.g. "
                 "{agp: {power: [1, 4]}}; each family checks its own."),
}


@dataclass(frozen=True)
class Tuned:
    """A searched setting while parsing: its (low, high) range or its choices."""

    space: tuple


def _tuned_or_fixed(name: str) -> Callable[[str, Any], Any]:
    """The parser of a `training:` key: the setting's value, or where the setting is
    tunable a [low, high] range (low < high) or a list of choices (`Tuned`)."""
    check, tune = SETTINGS[name].metadata["check"], SETTINGS[name].metadata["tune"]

    def parse(key: str, value):
        if not isinstance(value, list) or tune is None:
            return check(key, value)
        if tune == "choice":
            if not value:
                raise ConfigError(f"{key} must be a value or a non-empty list of them")
            choices = tuple(check(key, item) for item in value)
            if len(set(choices)) != len(choices):
                raise ConfigError(f"{key} lists a value twice: {value!r}")
            return Tuned(choices) if len(choices) > 1 else choices[0]
        if len(value) != 2:
            raise ConfigError(f"{key} must be a number or a [low, high] pair, got {value!r}")
        low, high = (check(key, v) for v in value)
        if low >= high:
            raise ConfigError(f"{key} must have low < high, got {value!r}")
        return Tuned((low, high))
    return parse


def _setting_key(name: str) -> Key:
    """The experiment key of a `TrainConfig` setting: its own check and help."""
    meta = SETTINGS[name].metadata
    ranged = {"log": " A [low, high] pair searches it on a log scale.",
              "linear": " A [low, high] pair searches it.",
              "choice": " A list of values searches among them."}.get(meta["tune"], "")
    return Key(_tuned_or_fixed(name), meta["help"].rstrip(".") + "." + ranged)


_TRAINING = {name: _setting_key(name) for name, spec in SETTINGS.items()
             if spec.metadata["where"] == "training"}
_RESOURCES = {
    "cpus_per_trial": Key(_checked(_validate.real, low=0.0, high=1024.0, low_open=True),
                          "CPUs each worker of a trial holds."),
    "gpus_per_trial": Key(_checked(_validate.real, low=0.0, high=64.0),
                          "GPUs each worker of a trial holds (fractions share a GPU)."),
    "workers_per_trial": Key(_checked(_validate.integer, low=1, high=1024),
                             "Processes per trial; more than one trains it with "
                             "DistributedDataParallel (Ray Train)."),
}
_TRACKING = {
    "tracking_uri": Key(_tracking_uri, "MLflow tracking URI; default sqlite:///mlflow.db "
                        "in the working folder."),
    "optuna_storage": Key(_storage_url, "Optuna RDB storage URL; default optuna.db beside "
                          "a sqlite MLflow store."),
}
_FAULTS = {  # the epochs' upper bound is checked against `epochs` in `_check_runnable`
    "raise_at_epoch": Key(_checked(_validate.integer, low=1, high=10_000),
                          "Test only: a trial raises at the end of this epoch."),
    "raise_families": Key(_choices((*FAMILIES, "dense")),
                          "Test only: the families that raise (default: all)."),
    "nan_at_epoch": Key(_checked(_validate.integer, low=2, high=10_000),
                        "Test only: a trial's weights turn NaN in this epoch."),
    "nan_families": Key(_choices((*FAMILIES, "dense")),
                        "Test only: the families whose weights turn NaN (default: all)."),
    "kill_driver_at": Key(lambda key, value: _validate.choice(key, value, KILL_POINTS),
                          "Test only: the driver kills itself at this point (registering)."),
}


_TOP = {
    "name": Key(_name, "The study's name: its MLflow experiment (with -s<percent> per "
                "sparsity when several) and registered-model prefix. Required."),
    **{name: _setting_key(name) for name, spec in SETTINGS.items()
       if spec.metadata["where"] == "top"},
    "scope": Key(lambda key, value: from_scope(_validate.choice(key, value,
                                                                tuple(SCOPE_NAMES))),
                 "Older name of allocation: local is uniform, global is global."),
    "sparsity": Key(_sparsities, "Final sparsity in (0, 1); a list of them (one study "
                    "each); or a range {min, max, max_drop} searched as a second "
                    "objective. Default 0.9."),
    "families": Key(_choices(tuple(FAMILIES)), "Schedule families compared, each searched "
                    "alike. Default: one_cycle, one_shot, iterative, agp."),
    "trials_per_family": Key(_checked(_validate.integer, low=1, high=100_000),
                             "Search trials per family (the equal budget). Default 8."),
    "final_seeds": Key(_checked(_validate.integer, low=2, high=1_000),
                       "Fresh seeds each family's best config is re-run with (at least 2: "
                       "an interval needs two). Default 3."),
    "checkpoint_every": Key(_checked(_validate.integer, low=1, high=10_000),
                            "Epochs between a trial's checkpoints (only the newest is "
                            "kept). Default 5."),
    "search": Key(lambda key, value: SearchSettings(**_section(value, key, _SEARCH)),
                  "How each family's study samples (section)."),
    "training": Key(lambda key, value: _section(value, key, _TRAINING),
                    "Training settings, fixed or searched (section)."),
    "resources": Key(lambda key, value: Resources(**_section(value, key, _RESOURCES)),
                     "What one trial holds on the cluster (section)."),
    "tracking": Key(lambda key, value: _section(value, key, _TRACKING),
                    "Where results are stored (section)."),
    "faults": Key(lambda key, value: Faults(**_section(value, key, _FAULTS)),
                  "Test-only fault injection (section)."),
}
SECTIONS: Mapping[str, Mapping[str, Key]] = {
    "": _TOP, "sparsity": _RANGE, "search": _SEARCH, "training": _TRAINING,
    "resources": _RESOURCES, "tracking": _TRACKING, "faults": _FAULTS}
"""Every key an experiment file accepts, by section ("": the top level; "sparsity": the
keys of a sparsity range): the one declaration the parser and the key reference read."""


def parse_experiment(raw: Any) -> Experiment:
    """Validate a parsed YAML document; raises `ConfigError` naming the first bad key."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"an experiment must be a mapping of keys, got {type(raw).__name__}")
    try:
        values = _section(raw, "", _TOP)
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
        given = {key: values.pop(key) for key in list(values) if key in SETTINGS}
        given.update(values.pop("training", {}))
        train = {k: v for k, v in given.items() if not isinstance(v, Tuned)}
        tuned = {k: v.space for k, v in given.items() if isinstance(v, Tuned)}
        allocations = tuned.get("allocation", (train.get("allocation"),))
        if "depth" in allocations and "depth_exponent" not in given:
            tuned["depth_exponent"] = DEPTH_SEARCH  # depth's exponent is searched
        experiment = Experiment(**values, train=train, tuned=tuned)
        _check_runnable(experiment)
    except ConfigError:
        raise
    except ValueError as error:  # the library's own checks name the field and range
        raise ConfigError(str(error)) from None
    return experiment


def first_neutral_rung(experiment: Experiment) -> tuple[int, str, float]:
    """The first epoch at which every search trial of every family has reached its final
    sparsity, whatever its sampled schedule (`Schedule.latest_end` of each family's space),
    with the family and progress that set it. Before it, a trial that prunes late is still
    dense and would look better to ASHA than one that pruned early."""
    latest, family = max((FAMILIES[f].latest_end(experiment.search.space.get(f)), f)
                         for f in experiment.families)
    return math.ceil(latest * experiment.epochs - 1e-9), family, latest


def _check_neutral_asha(experiment: Experiment) -> None:
    """Refuse ASHA settings that would compare trials before all of them are pruned."""
    search = experiment.search
    if not search.asha:
        return
    if experiment.sparsity_range is not None:
        raise ConfigError(
            "search.asha cannot be used with a sparsity range: the trials of a rung end at "
            "different sparsities, so their validation accuracies do not compare; set "
            "asha: false")
    rung, family, latest = first_neutral_rung(experiment)
    knob = FAMILIES[family].ENDS_AT
    if rung >= experiment.epochs:
        raise ConfigError(
            f"search.asha can stop no trial fairly: {family} may prune until epoch {rung} "
            f"of {experiment.epochs} ({knob} up to {latest:g}); narrow search.space."
            f"{family}.{knob} or set asha: false")
    if search.grace_period < rung:
        raise ConfigError(
            f"search.grace_period must be >= {rung}: until epoch {rung} of "
            f"{experiment.epochs} a {family} trial may still be pruning ({knob} up to "
            f"{latest:g}), and ASHA would favour late-pruning trials; got "
            f"{search.grace_period}")


def _check_runnable(experiment: Experiment) -> None:
    """Build the training config of every family at both ends of every tuned range, and
    check that early stopping, if on, is neutral to when a schedule prunes."""
    _check_neutral_asha(experiment)
    faults = experiment.faults
    for name in ("raise_at_epoch", "nan_at_epoch"):
        epoch = faults and getattr(faults, name)
        if epoch and epoch > experiment.epochs:
            raise ConfigError(f"faults.{name} must be at most epochs={experiment.epochs}, "
                              f"got {epoch}")
    ends = [[(name, end) for end in space] for name, space in experiment.tuned.items()]
    for sparsity in experiment.trained_sparsities:
        for family in experiment.families:
            base = experiment.base_config(family, sparsity)
            for combination in itertools.product(*ends):
                dataclasses.replace(base, **dict(combination))
    experiment.base_config()


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
