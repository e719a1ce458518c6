"""Pruning schedules: target sparsity as a pure function of training progress t in [0, 1].

Every family is a small frozen dataclass. Calling it gives the target sparsity at progress
t (a float for a float, an array for an array); `to_dict()` / `schedule_from_dict()`
round-trip it exactly; `midpoint()` is where half of the sparsity increase is reached
(used to couple the learning rate to the schedule); `suggest(trial, final_sparsity)`
samples it from an Optuna define-by-run search space.

With s_i the initial and s_f the final sparsity, every ramp family (all but `OneShot`) is
s(t) = s_i for t < start, s_f for t >= end, and in between s_i + (s_f - s_i) * shape(u)
with u = (t - start) / (end - start) and the family's shape:

- one_cycle (Hubens et al. 2021): (1 + e^(-alpha + beta)) / (1 + e^(-alpha * u + beta))
- agp (Zhu & Gupta 2017): 1 - (1 - u)^power
- iterative: ceil(u * steps) / steps
- linear: u;  cosine: (1 - cos(pi * u)) / 2

`OneShot` jumps from s_i to s_f at `start`.

Search spaces: `DEFAULT_BOUNDS` of each family documents its default ranges; `suggest`
takes overrides for any subset of them. Ramp families draw `start` first, then `end` from
[max(end_low, start + min_length), end_high], so that end - start >= min_length always
holds; one_cycle draws `alpha` first, then `beta` below it (the logistic's centre
u = beta / alpha then lies inside the ramp).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from oneprune import _validate

_SPARSITY = {"low": 0.0, "high": 1.0, "high_open": True}
_POSITIVE = {"low": 0.0, "low_open": True}

# How each field is checked, by name: keyword arguments of `_validate.real` / `.integer`.
_FIELD_RULES: Mapping[str, tuple[Any, dict]] = MappingProxyType({
    "final_sparsity": (_validate.real, _SPARSITY),
    "initial_sparsity": (_validate.real, _SPARSITY),
    "start": (_validate.real, {"low": 0.0, "high": 1.0, "high_open": True}),
    "end": (_validate.real, {"low": 0.0, "high": 1.0, "low_open": True}),
    "alpha": (_validate.real, _POSITIVE),
    "beta": (_validate.real, {}),
    "power": (_validate.real, _POSITIVE),
    "steps": (_validate.integer, {"low": 1}),
    "min_length": (_validate.real, {"low": 0.0, "high": 1.0, "low_open": True}),
})


def half_cosine(start, stop, u):
    """From `start` (u = 0) to `stop` (u = 1) along half a cosine: the `cosine` family's
    ramp and both phases of the one-cycle learning rate (`oneprune.lr`)."""
    return stop + (start - stop) * (1.0 + np.cos(np.pi * u)) / 2.0


def _check_field(field: str, name: str, value):
    check, limits = _FIELD_RULES[name]
    return check(field, value, **limits)


@dataclass(frozen=True)
class Schedule(ABC):
    """Base of all families: validation, evaluation, serialisation and search space.

    >>> from oneprune.schedules import OneCycle, schedule_from_dict
    >>> schedule = OneCycle(final_sparsity=0.9, start=0.1, end=0.9)
    >>> schedule(0.0), round(schedule(0.5), 4), schedule(1.0)
    (0.0, 0.6582, 0.9)
    >>> schedule([0.0, 0.05, 0.95]).tolist()  # arrays too
    [0.0, 0.0, 0.9]
    >>> round(schedule.midpoint(), 4)  # where half of the sparsity is reached
    0.4428
    >>> schedule_from_dict(schedule.to_dict()) == schedule
    True

    Sampled from an Optuna trial (define-by-run), within `DEFAULT_BOUNDS` or overrides:

    >>> import optuna
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    >>> sampled = OneCycle.suggest(trial, 0.9, bounds={"start": (0.1, 0.1)})
    >>> sampled.start, sorted(trial.params)
    (0.1, ['alpha', 'beta', 'end', 'start'])
    """

    final_sparsity: float
    # Keyword-only, so that each family's own fields keep their positions after
    # final_sparsity: OneCycle(0.9, 0.1, 0.9), OneShot(0.9, 0.5).
    initial_sparsity: float = dataclasses.field(default=0.0, kw_only=True)

    family: ClassVar[str]
    DEFAULT_BOUNDS: ClassVar[Mapping[str, Any]]
    # The parameter whose value is the progress by which the final sparsity is reached.
    ENDS_AT: ClassVar[str] = "end"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _check_field(f"{type(self).__name__}.{f.name}", f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(
                f"{type(self).__name__}.initial_sparsity must be <= final_sparsity "
                f"({self.final_sparsity!r}), got {self.initial_sparsity!r}")

    def __call__(self, t):
        """Target sparsity at progress `t` (float or array-like, every value in [0, 1])."""
        try:
            progress = np.asarray(t, dtype=np.float64)
        except (TypeError, ValueError):
            progress = np.asarray(np.nan)
        if not np.all((progress >= 0.0) & (progress <= 1.0)):  # NaN fails too
            raise ValueError(f"progress t must be in [0, 1], got {t!r}")
        sparsity = self._sparsity(progress)
        return float(sparsity) if sparsity.ndim == 0 else sparsity

    @abstractmethod
    def _sparsity(self, t: np.ndarray) -> np.ndarray:
        """Target sparsity for an array of valid progress values."""

    @abstractmethod
    def midpoint(self) -> float:
        """Progress at which half of the sparsity increase has been reached."""

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-ready dict; `schedule_from_dict` inverts it exactly."""
        return {"family": self.family, **dataclasses.asdict(self)}

    @classmethod
    def search_bounds(cls, bounds: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """`DEFAULT_BOUNDS` updated with `bounds`, validated; raises `ValueError` if invalid."""
        if bounds is None:
            bounds = {}
        if not isinstance(bounds, Mapping):
            raise ValueError(f"{cls.family}.bounds must be a mapping, got {bounds!r}")
        unknown = [key for key in bounds if key not in cls.DEFAULT_BOUNDS]
        if unknown:
            raise ValueError(f"{cls.family}.bounds has no key {unknown[0]!r}; "
                             f"allowed: {', '.join(cls.DEFAULT_BOUNDS)}")
        merged = {**cls.DEFAULT_BOUNDS, **bounds}
        checked = {}
        for name, value in merged.items():
            field = f"{cls.family}.bounds.{name}"
            if not isinstance(cls.DEFAULT_BOUNDS[name], tuple):  # a scalar such as min_length
                checked[name] = _check_field(field, name, value)
                continue
            if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
                raise ValueError(f"{field} must be a [low, high] pair, got {value!r}")
            low, high = (_check_field(field, name, v) for v in value)
            if low > high:
                raise ValueError(f"{field} must have low <= high, got {list(value)!r}")
            checked[name] = (low, high)
        cls._check_bounds_relations(checked)
        return checked

    @classmethod
    def latest_end(cls, bounds: Mapping[str, Any] | None = None) -> float:
        """The latest progress at which a schedule drawn from `bounds` (`DEFAULT_BOUNDS`
        updated with them) has reached its final sparsity: the high bound of `ENDS_AT`."""
        return cls.search_bounds(bounds)[cls.ENDS_AT][1]

    @classmethod  # noqa: B027 (an optional hook, not abstract)
    def _check_bounds_relations(cls, bounds: dict[str, Any]) -> None:
        """Family-specific feasibility of a merged set of bounds (none by default)."""

    @classmethod
    def suggest(cls, trial, final_sparsity: float,
                bounds: Mapping[str, Any] | None = None) -> Schedule:
        """Sample this family from `trial` (an `optuna.Trial`) at `final_sparsity`.

        Parameters are suggested under the field names (`start`, `end`, `alpha`, ...), so
        they read naturally in Optuna, Ray Tune and MLflow.
        """
        params = cls._suggest_params(trial, cls.search_bounds(bounds))
        return cls(final_sparsity=final_sparsity, **params)

    @classmethod
    @abstractmethod
    def _suggest_params(cls, trial, bounds: dict[str, Any]) -> dict[str, Any]:
        """The family's parameters but final_sparsity, drawn from `trial` within `bounds`."""


@dataclass(frozen=True)
class _Ramp(Schedule):
    """A family that rises from s_i to s_f over [start, end] following `_shape(u)`."""

    start: float = 0.0
    end: float = 1.0

    DEFAULT_BOUNDS: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"start": (0.0, 0.5), "end": (0.5, 1.0), "min_length": 0.1})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.start >= self.end:
            raise ValueError(f"{type(self).__name__}.start must be < end ({self.end!r}), "
                             f"got {self.start!r}")

    @abstractmethod
    def _shape(self, u: np.ndarray) -> np.ndarray:
        """Fraction of the sparsity increase reached at ramp position u in [0, 1]."""

    @abstractmethod
    def _shape_midpoint(self) -> float:
        """Ramp position u where `_shape` first reaches 1/2."""

    def _sparsity(self, t: np.ndarray) -> np.ndarray:
        s_i, s_f = self.initial_sparsity, self.final_sparsity
        u = np.clip((t - self.start) / (self.end - self.start), 0.0, 1.0)
        # Clipping keeps rounding from stepping past s_f just before `end` (monotonicity).
        ramp = np.clip(s_i + (s_f - s_i) * self._shape(u), s_i, s_f)
        return np.where(t < self.start, s_i, np.where(t >= self.end, s_f, ramp))

    def midpoint(self) -> float:
        return self.start + self._shape_midpoint() * (self.end - self.start)

    @classmethod
    def _check_bounds_relations(cls, bounds: dict[str, Any]) -> None:
        start_high, (_, end_high) = bounds["start"][1], bounds["end"]
        if start_high + bounds["min_length"] > end_high:
            raise ValueError(
                f"{cls.family}.bounds must leave room for every start: start high "
                f"({start_high:g}) + min_length ({bounds['min_length']:g}) must be <= end high "
                f"({end_high:g})")

    @classmethod
    def _suggest_params(cls, trial, bounds: dict[str, Any]) -> dict[str, Any]:
        start = trial.suggest_float("start", *bounds["start"])
        end_low, end_high = bounds["end"]
        end = trial.suggest_float("end", max(end_low, start + bounds["min_length"]), end_high)
        return {"start": start, "end": end}


@dataclass(frozen=True)
class OneCycle(_Ramp):
    """One-Cycle Pruning's logistic ramp (Hubens et al. 2021); steep for large alpha."""

    alpha: float = 14.0
    beta: float = 6.0

    family: ClassVar[str] = "one_cycle"
    DEFAULT_BOUNDS: ClassVar[Mapping[str, Any]] = MappingProxyType({
        "alpha": (4.0, 24.0), "beta": (1.0, 12.0),
        "start": (0.0, 0.3), "end": (0.7, 1.0), "min_length": 0.1})

    def _shape(self, u):
        with np.errstate(over="ignore"):  # exp overflow -> inf -> shape 0, which is exact
            return (1.0 + np.exp(self.beta - self.alpha)) / (
                1.0 + np.exp(self.beta - self.alpha * u))

    def _shape_midpoint(self) -> float:
        # (1 + e^(b-a)) / (1 + e^(b-a*u)) = 1/2  <=>  u = (b - ln(1 + 2 e^(b-a))) / a;
        # for beta <= ~0 the curve starts at or above 1/2, so the midpoint is u = 0.
        u = (self.beta - math.log1p(2.0 * math.exp(self.beta - self.alpha))) / self.alpha
        return min(max(u, 0.0), 1.0)

    @classmethod
    def _check_bounds_relations(cls, bounds):
        super()._check_bounds_relations(bounds)
        if bounds["beta"][0] >= bounds["alpha"][0]:
            raise ValueError(f"{cls.family}.bounds.beta low ({bounds['beta'][0]:g}) must be < "
                             f"alpha low ({bounds['alpha'][0]:g}) so that beta < alpha is possible")

    @classmethod
    def _suggest_params(cls, trial, bounds):
        params = super()._suggest_params(trial, bounds)
        alpha = trial.suggest_float("alpha", *bounds["alpha"])
        beta_low, beta_high = bounds["beta"]
        beta = trial.suggest_float("beta", beta_low, min(beta_high, math.nextafter(alpha, 0.0)))
        return {**params, "alpha": alpha, "beta": beta}


@dataclass(frozen=True)
class AGP(_Ramp):
    """Automated Gradual Pruning (Zhu & Gupta 2017): fast early, slow near the end."""

    power: float = 3.0

    family: ClassVar[str] = "agp"
    DEFAULT_BOUNDS: ClassVar[Mapping[str, Any]] = MappingProxyType({
        "start": (0.0, 0.5), "end": (0.5, 1.0), "min_length": 0.1, "power": (1.0, 5.0)})

    def _shape(self, u):
        return 1.0 - (1.0 - u) ** self.power

    def _shape_midpoint(self) -> float:
        return 1.0 - 2.0 ** (-1.0 / self.power)

    @classmethod
    def _suggest_params(cls, trial, bounds):
        return {**super()._suggest_params(trial, bounds),
                "power": trial.suggest_float("power", *bounds["power"])}


@dataclass(frozen=True)
class Iterative(_Ramp):
    """Prune-and-fine-tune in `steps` equal jumps spread over [start, end]."""

    steps: int = 3

    family: ClassVar[str] = "iterative"
    DEFAULT_BOUNDS: ClassVar[Mapping[str, Any]] = MappingProxyType({
        "start": (0.0, 0.5), "end": (0.5, 1.0), "min_length": 0.1, "steps": (2, 10)})

    def _shape(self, u):
        return np.ceil(u * self.steps) / self.steps

    def _shape_midpoint(self) -> float:
        # Step k = ceil(steps / 2) is the first to reach 1/2; it happens just after
        # u = (k - 1) / steps.
        return (math.ceil(self.steps / 2) - 1) / self.steps

    @classmethod
    def _suggest_params(cls, trial, bounds):
        return {**super()._suggest_params(trial, bounds),
                "steps": trial.suggest_int("steps", *bounds["steps"])}


@dataclass(frozen=True)
class Linear(_Ramp):
    """Constant pruning rate over [start, end]."""


    family: ClassVar[str] = "linear"

    def _shape(self, u):
        return u

    def _shape_midpoint(self) -> float:
        return 0.5


@dataclass(frozen=True)
class Cosine(_Ramp):
    """Half-cosine ramp: slow at both ends of [start, end]."""


    family: ClassVar[str] = "cosine"

    def _shape(self, u):
        return half_cosine(0.0, 1.0, u)

    def _shape_midpoint(self) -> float:
        return 0.5


@dataclass(frozen=True)
class OneShot(Schedule):
    """Train dense, then prune to the final sparsity at once at `start`."""

    start: float

    family: ClassVar[str] = "one_shot"
    ENDS_AT: ClassVar[str] = "start"  # it prunes everything at once, at `start`
    DEFAULT_BOUNDS: ClassVar[Mapping[str, Any]] = MappingProxyType({"start": (0.05, 0.9)})

    def _sparsity(self, t):
        return np.where(t >= self.start, self.final_sparsity, self.initial_sparsity)

    def midpoint(self) -> float:
        return self.start

    @classmethod
    def _suggest_params(cls, trial, bounds):
        return {"start": trial.suggest_float("start", *bounds["start"])}


FAMILIES: Mapping[str, type[Schedule]] = MappingProxyType(
    {cls.family: cls for cls in (OneCycle, OneShot, Iterative, AGP, Linear, Cosine)})
# Every family's parameters but final_sparsity, in the order the classes declare them.
PARAMETERS: tuple[str, ...] = tuple(dict.fromkeys(
    f.name for cls in FAMILIES.values() for f in dataclasses.fields(cls)
    if f.name != "final_sparsity"))


def schedule_from_dict(spec: Mapping[str, Any]) -> Schedule:
    """Build a schedule from `Schedule.to_dict()` output (or hand-written YAML)."""
    if not isinstance(spec, Mapping) or "family" not in spec:
        raise ValueError(f"schedule must be a mapping with a 'family' key, got {spec!r}")
    family = _validate.choice("schedule.family", spec["family"], tuple(FAMILIES))
    cls = FAMILIES[family]
    params = {k: v for k, v in spec.items() if k != "family"}
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in params if key not in names]
    if unknown:
        raise ValueError(f"schedule {family!r} has no field {unknown[0]!r}; "
                         f"fields: {', '.join(names)}")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.name not in params]
    if missing:
        raise ValueError(f"schedule {family!r} needs field {missing[0]!r}")
    return cls(**params)
