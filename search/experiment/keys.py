"""Every key an experiment file accepts, declared once: how its value is parsed and checked,
and what it means (`Key`), by section (`SECTIONS`).

The training keys are not declared here: every `TrainConfig` setting placed "top" is a
top-level key, every one placed "training" a key of `training:` (a [low, high] range or a
list of choices where the setting is tunable, `Tuned`), each checked by the setting's own
check and described by its own help (`oneprune.config.setting`). The parser
(`search.experiment.loading`) and the docs' key reference both read `SECTIONS`, so they
cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from oneprune import _validate
from oneprune.allocation import ALLOCATIONS, SCOPE_NAMES, from_scope
from oneprune.config import TrainConfig
from oneprune.cost import COSTS, RUNTIMES, LatencySettings
from oneprune.distill import NO_TEACHER
from oneprune.schedules import FAMILIES
from search.experiment.schema import (
    ARM_SEPARATOR,
    DENSE_START,
    KILL_POINTS,
    SAMPLERS,
    SCRATCH,
    STARTS,
    ConfigError,
    Faults,
    Resources,
    SearchSettings,
    SparsityRange,
)

SETTINGS = TrainConfig.settings()


@dataclass(frozen=True)
class Key:
    """One key of an experiment file, declared once: how its value is parsed and checked
    (`parse(dotted_key, value)`), and what it means (`help`, for the key reference)."""

    parse: Callable[[str, Any], Any]
    help: str


def section(raw: Any, key: str, parsers: Mapping[str, Key]) -> dict:
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


def _choices(allowed: Sequence[str] | None) -> Callable[[str, Any], tuple[str, ...]]:
    """A value of `allowed` or a non-empty list of distinct ones (None: any names)."""
    def parse(key: str, value) -> tuple[str, ...]:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values:
            what = "a name" if allowed is None else f"one of {', '.join(allowed)}"
            raise ConfigError(f"{key} must be {what} or a non-empty list of them, "
                              f"got {value!r}")
        for item in values:
            if allowed is not None:
                _validate.choice(key, item, allowed)
            elif not isinstance(item, str):
                raise ConfigError(f"{key} must be a name or a list of names, got {value!r}")
        if len(set(values)) != len(values):
            raise ConfigError(f"{key} lists a value twice: {value!r}")
        return tuple(values)
    return parse


def _arms(key: str, value) -> tuple[str, ...]:
    """Families, each compared as an arm: `family`, or `family-start` (a start of `STARTS`)
    to run it from another starting point than the study's `init`."""
    arms = _choices(None)(key, value)
    for arm in arms:
        family, separator, start = arm.partition(ARM_SEPARATOR)
        _validate.choice(key, family, tuple(FAMILIES))
        if separator:
            _validate.choice(f"{key} ({arm}): the start after {ARM_SEPARATOR!r}", start,
                             STARTS)
    return arms


def _init(key: str, value) -> str:
    """`scratch`, `dense`, or weights: a file or folder path, or an MLflow model URI
    (models:/..., runs:/...); what it names is read and checked when the study starts."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be {SCRATCH}, {DENSE_START}, the path of a weights "
                          f"file or folder, or an MLflow model URI, got {value!r}")
    return value


def _teacher(key: str, value) -> str | dict[str, str]:
    """`none`, `dense`, or weights (a file or folder path, an MLflow model URI) for every
    arm; or a mapping of arms to those (an arm not named has none)."""
    def one(key: str, value) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{key} must be {NO_TEACHER}, {DENSE_START}, the path of a "
                              f"weights file or folder, or an MLflow model URI, got {value!r}")
        return value
    if not isinstance(value, Mapping):
        return one(key, value)
    if not value:
        raise ConfigError(f"{key} must name a teacher or map arms to teachers, got {{}}")
    return {_arms(key, arm)[0]: one(f"{key}.{arm}", teacher) for arm, teacher in value.items()}


_SPARSITY = {"low": 0.0, "high": 1.0, "low_open": True, "high_open": True}
_RANGE = {
    "min": Key(_checked(_validate.real, **_SPARSITY),
               "Lowest final sparsity a trial may sample, in (0, 1)."),
    "max": Key(_checked(_validate.real, **_SPARSITY),
               "Highest final sparsity a trial may sample, in (0, 1), above min."),
    "max_drop": Key(_checked(_validate.real, low=0.0, high=100.0),
                    "Points of validation accuracy (of 100) a trial may lose to the dense "
                    "reference and still count, in [0, 100]."),
}


def _sparsities(key: str, value) -> tuple[float, ...] | SparsityRange:
    """A number, a list of numbers (one study each), or a range `{min, max, max_drop}`."""
    if isinstance(value, Mapping):
        bounds = section(value, key, _RANGE)
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
    raw = section(value, key, {family: Key(lambda _, v: v, "") for family in FAMILIES})
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


def _allocation_args(key: str, value) -> dict[str, Any]:
    """`allocation_args`: each argument a number (fixed) or a [low, high] pair (searched,
    `Tuned`); which allocation takes it, and its range, are checked once the allocations
    of the study are known (`search.experiment.loading`)."""
    args = SETTINGS["allocation_args"].metadata["check"](key, value)
    parsed = {}
    for name, given in args.items():
        if not isinstance(given, list):
            parsed[name] = given
        elif len(given) != 2 or given[0] >= given[1]:
            raise ConfigError(f"{key}.{name} must be a number or a [low, high] pair with "
                              f"low < high, got {given!r}")
        else:
            parsed[name] = Tuned(tuple(given))
    return parsed


def _depth_exponent(key: str, value) -> dict[str, Any]:
    """The older `depth_exponent` key: `allocation_args.exponent` of depth, checked (and
    named) as the key the file gives."""
    exponent = ALLOCATIONS["depth"].arguments()["exponent"]
    if not isinstance(value, list):
        return {"exponent": exponent.check(key, value)}
    if len(value) != 2:
        raise ConfigError(f"{key} must be a number or a [low, high] pair, got {value!r}")
    low, high = (exponent.check(key, v) for v in value)
    if low >= high:
        raise ConfigError(f"{key} must have low < high, got {value!r}")
    return {"exponent": Tuned((low, high))}


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
    "tracking_uri": Key(_tracking_uri, "MLflow tracking URI (a sqlite file in the working "
                        "folder by default)."),
    "optuna_storage": Key(_storage_url, "Optuna RDB storage URL (by default optuna.db beside "
                          "a sqlite MLflow store)."),
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


_CONFIRM = {
    "candidates": Key(_checked(_validate.integer, low=0, high=50),
                      "Most points of each family's feasible front re-trained, the cheapest "
                      "first, until one holds, before the final seeds (0: none); by default "
                      "as many (2 to 6) as fit in 15% of its runs."),
    "seeds": Key(_checked(_validate.integer, low=1, high=100),
                 "Fresh seeds each candidate is re-trained with (validation only)."),
    "margin": Key(_checked(_validate.real, low=0.0, high=100.0),
                  "Points above the floor a candidate's mean over those seeds must reach."),
}
_LATENCY = {
    "runtime": Key(lambda key, value: _validate.choice(key, value, RUNTIMES),
                   "Where latency is timed: onnxruntime (the ONNX export) or torch (the module)."),
    "batch": Key(_checked(_validate.integer, low=1, high=4096), "Images per timed call."),
    "threads": Key(_checked(_validate.integer, low=1, high=256), "Intra-op threads."),
    "rounds": Key(_checked(_validate.integer, low=3, high=1000),
                  "Interleaved timing rounds (the latency is their median)."),
    "warmup": Key(_checked(_validate.integer, low=0, high=1000),
                  "Untimed calls before the rounds."),
}

_TOP = {
    "name": Key(_name, "The study's name: its MLflow experiment (name-s90 and so on "
                "when several sparsities) and registered-model prefix."),
    **{name: _setting_key(name) for name, spec in SETTINGS.items()
       if spec.metadata["where"] == "top" and name != "allocation_args"},
    "allocation_args": Key(  # a setting whose arguments may each be a range
        _allocation_args, SETTINGS["allocation_args"].metadata["help"].rstrip(".") + ". An "
        "argument given as a [low, high] pair is searched; one not given is searched over "
        "its allocation's default range where it has one."),
    "depth_exponent": Key(_depth_exponent, "Older name of allocation_args.exponent (of "
                          "allocation depth)."),
    "scope": Key(lambda key, value: from_scope(_validate.choice(key, value,
                                                                tuple(SCOPE_NAMES))),
                 "Older name of allocation: local is uniform, global is global."),
    "sparsity": Key(_sparsities, "Final sparsity in (0, 1); a list of them (one study "
                    "each); or a range {min, max, max_drop} searched as a second "
                    "objective."),
    "families": Key(_arms, "Schedule families compared, each searched alike; "
                    "family-start (scratch, dense or given) runs one from another start than "
                    "init, e.g. one_shot-dense: the pipeline train, prune, fine-tune."),
    "init": Key(_init, "Where the runs start: scratch (random weights), dense (the study's "
                "dense reference of the same seed), or given weights: a state_dict .pt, a "
                ".safetensors file, a folder saved by python -m oneprune --out, or an "
                "MLflow model URI (models:/name/1, runs:/...); then the dense reference is "
                "that model fine-tuned, and the model as given is evaluated too."),
    "teacher": Key(_teacher, "The network the runs distil from: none, dense (the study's "
                   "dense reference of the same seed), or weights of the same model as "
                   "init takes them (a file, a folder, an MLflow model URI); or a mapping "
                   "of arms to those (arms not named: none). Where an arm has a teacher, "
                   "training.distill_weight and distill_temperature are searched over "
                   "their default ranges unless given."),
    "cost": Key(lambda key, value: _validate.choice(key, value, COSTS),
                "A sparsity range's second objective: sparsity, or what the deployed model "
                "costs next to dense: macs (multiply-adds per image), params, bytes (its "
                "weights file) or latency (measured as latency: says)."),
    "latency": Key(lambda key, value: LatencySettings(**section(value, key, _LATENCY)),
                   "How cost: latency is measured (section)."),
    "confirm": Key(lambda key, value: section(value, key, _CONFIRM),
                   "How a sparsity range confirms the point it re-runs (section)."),
    "trials_per_family": Key(_checked(_validate.integer, low=1, high=100_000),
                             "Search trials per family (the equal budget)."),
    "final_seeds": Key(_checked(_validate.integer, low=2, high=1_000),
                       "Fresh seeds each family's best config is re-run with (at least 2: "
                       "an interval needs two)."),
    "checkpoint_every": Key(_checked(_validate.integer, low=1, high=10_000),
                            "Epochs between a trial's checkpoints (only the newest is "
                            "kept)."),
    "search": Key(lambda key, value: SearchSettings(**section(value, key, _SEARCH)),
                  "How each family's study samples (section)."),
    "training": Key(lambda key, value: section(value, key, _TRAINING),
                    "Training settings, fixed or searched (section)."),
    "resources": Key(lambda key, value: Resources(**section(value, key, _RESOURCES)),
                     "What one trial holds on the cluster (section)."),
    "tracking": Key(lambda key, value: section(value, key, _TRACKING),
                    "Where results are stored (section)."),
    "faults": Key(lambda key, value: Faults(**section(value, key, _FAULTS)),
                  "Test-only fault injection (section)."),
}
SECTIONS: Mapping[str, Mapping[str, Key]] = {
    "": _TOP, "sparsity": _RANGE, "confirm": _CONFIRM, "latency": _LATENCY, "search": _SEARCH,
    "training": _TRAINING, "resources": _RESOURCES, "tracking": _TRACKING, "faults": _FAULTS}
"""Every key an experiment file accepts, by section ("": the top level; "sparsity": the
keys of a sparsity range): the one declaration the parser and the key reference read."""
