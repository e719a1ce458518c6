"""Pruning schedules: target sparsity as a pure function of training progress t in [0, 1].

Every family is a small frozen dataclass that registers itself by defining `family` (no
list to keep in sync: `FAMILIES` is filled as the classes are defined). Its parameters are
fields declared with `oneprune.parameters.parameter`: type, allowed values, default search
bounds and help, once. Calling a schedule gives the target sparsity at progress t (a float
for a float, an array for an array); `to_dict()` / `schedule_from_dict()` round-trip it
exactly; `midpoint()` is where half of the sparsity increase is reached (used to couple
the learning rate to the schedule); `suggest(trial, final_sparsity)` samples it from an
Optuna define-by-run search space.

With s_i the initial and s_f the final sparsity, every ramp family (all but `OneShot`) is
s(t) = s_i for t < start, s_f for t >= end, and in between s_i + (s_f - s_i) * shape(u)
with u = (t - start) / (end - start) and the family's shape:

- one_cycle (Hubens et al. 2021): (1 + e^(-alpha + beta)) / (1 + e^(-alpha * u + beta))
- agp (Zhu & Gupta 2017): 1 - (1 - u)^power
- iterative: ceil(u * steps) / steps
- linear: u;  cosine: (1 - cos(pi * u)) / 2

`OneShot` jumps from s_i to s_f at `start`.

Search spaces: `DEFAULT_BOUNDS` of each family (its parameters' declared bounds, with the
family's own `BOUNDS` where it searches an inherited parameter differently, and its
`SEARCH_OPTIONS` such as `min_length`) documents its default ranges; `suggest` takes
overrides for any subset of them. Every searched parameter is drawn in declaration order
(an int one as an int), except where a family draws it from a range that depends on an
earlier draw: ramp families draw `start` first, then `end` from
[max(end_low, start + min_length), end_high], so that end - start >= min_length always
holds; one_cycle draws `alpha`, then `beta` below it (the logistic's centre u = beta /
alpha then lies inside the ramp).
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
from oneprune.parameters import Parameter, check_fields, parameter, parameters_of, register

_SPARSITY = {"low": 0.0, "high": 1.0, "high_open": True}
_PROGRESS_FROM = {"low": 0.0, "high": 1.0, "high_open": True}  # start: may be 0, not 1
_PROGRESS_TO = {"low": 0.0, "high": 1.0, "low_open": True}  # end: may be 1, not 0

_FAMILIES: dict[str, type[Schedule]] = {}
FAMILIES: Mapping[str, type[Schedule]] = MappingProxyType(_FAMILIES)
"""Every schedule family by name, in the order the classes were defined (filled as they
are: a subclass of `Schedule` that sets `family` registers itself)."""


def half_cosine(start, stop, u):
    """From `start` (u = 0) to `stop` (u = 1) along half a cosine: the `cosine` family's
    ramp and both phases of the one-cycle learning rate (`oneprune.lr`)."""
    return stop + (start - stop) * (1.0 + np.cos(np.pi * u)) / 2.0


class _DefaultBounds:
    """`Schedule.DEFAULT_BOUNDS`, read off the family's declarations when first asked (a
    class is a dataclass only once its decorator has run, after it registered)."""

    def __get__(self, instance, owner: type[Schedule]) -> Mapping[str, Any]:
        if not dataclasses.is_dataclass(owner):  # read by the decorator of `Schedule` itself
            return self
        return owner.default_bounds()


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

    A new family is a subclass that sets `family`, declares its parameters with
    `parameter(...)` and defines the sparsity it prescribes (a ramp family: `_shape` and
    `_shape_midpoint`); it registers itself, and its flags, search space and key
    reference follow from the declarations.
    """

    final_sparsity: float = parameter(help="sparsity reached at the end", limits=_SPARSITY)
    # Keyword-only, so that each family's own fields keep their positions after
    # final_sparsity: OneCycle(0.9, 0.1, 0.9), OneShot(0.9, 0.5).
    initial_sparsity: float = parameter(0.0, kw_only=True, limits=_SPARSITY,
                                        help="sparsity before pruning starts")

    family: ClassVar[str]
    # Default search bounds of inherited parameters that this family searches differently.
    BOUNDS: ClassVar[Mapping[str, tuple[float, float]]] = MappingProxyType({})
    # Settings of the search space that are not parameters (a number each, no range).
    SEARCH_OPTIONS: ClassVar[Mapping[str, Parameter]] = MappingProxyType({})
    # The parameter whose value is the progress by which the final sparsity is reached.
    ENDS_AT: ClassVar[str] = "end"
    DEFAULT_BOUNDS: ClassVar[Mapping[str, Any]] = _DefaultBounds()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        register(_FAMILIES, "schedule family", cls.__dict__.get("family"), cls)

    def __post_init__(self) -> None:
        check_fields(self)
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
    def parameters(cls) -> dict[str, Parameter]:
        """The family's parameters but final_sparsity, in declaration order."""
        return {name: spec for name, spec in parameters_of(cls).items()
                if name != "final_sparsity"}

    @classmethod
    def default_bounds(cls) -> Mapping[str, Any]:
        """The default search space: each searched parameter's (low, high), then each
        search option's value (`DEFAULT_BOUNDS`)."""
        bounds = {name: cls.BOUNDS.get(name, spec.bounds)
                  for name, spec in cls.parameters().items() if spec.searched}
        bounds.update({name: spec.bounds for name, spec in cls.SEARCH_OPTIONS.items()})
        return MappingProxyType(bounds)

    @classmethod
    def search_bounds(cls, bounds: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """`DEFAULT_BOUNDS` updated with `bounds`, validated; raises `ValueError` if invalid."""
        if bounds is None:
            bounds = {}
        if not isinstance(bounds, Mapping):
            raise ValueError(f"{cls.family}.bounds must be a mapping, got {bounds!r}")
        defaults = cls.default_bounds()
        unknown = [key for key in bounds if key not in defaults]
        if unknown:
            raise ValueError(f"{cls.family}.bounds has no key {unknown[0]!r}; "
                             f"allowed: {', '.join(defaults)}")
        specs = {**cls.parameters(), **cls.SEARCH_OPTIONS}
        checked = {}
        for name, value in {**defaults, **bounds}.items():
            field = f"{cls.family}.bounds.{name}"
            if not isinstance(defaults[name], tuple):  # a search option such as min_length
                checked[name] = specs[name].check(field, value)
                continue
            if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
                raise ValueError(f"{field} must be a [low, high] pair, got {value!r}")
            low, high = (specs[name].check(field, v) for v in value)
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
        they read naturally in Optuna, Ray Tune and MLflow: first those a family draws from
        dependent ranges (`_suggest_dependent`), then every other searched one in
        declaration order.
        """
        bounds = cls.search_bounds(bounds)
        params = cls._suggest_dependent(trial, bounds)
        for name, spec in cls.parameters().items():
            if name in bounds and isinstance(bounds[name], tuple) and name not in params:
                suggest = trial.suggest_int if spec.kind is int else trial.suggest_float
                params[name] = suggest(name, *bounds[name])
        return cls(final_sparsity=final_sparsity, **params)

    @classmethod
    def _suggest_dependent(cls, trial, bounds: dict[str, Any]) -> dict[str, Any]:
        """The parameters this family draws from ranges that depend on earlier draws
        (none by default)."""
        return {}


@dataclass(frozen=True)
class _Ramp(Schedule):
    """A family that rises from s_i to s_f over [start, end] following `_shape(u)`."""

    start: float = parameter(0.0, help="progress at which pruning starts",
                             limits=_PROGRESS_FROM, bounds=(0.0, 0.5))
    end: float = parameter(1.0, help="progress at which the final sparsity is reached",
                           limits=_PROGRESS_TO, bounds=(0.5, 1.0))

    SEARCH_OPTIONS: ClassVar[Mapping[str, Parameter]] = MappingProxyType({
        "min_length": Parameter(float, "shortest ramp allowed, end - start (a number, not a "
                                "range)", MappingProxyType(_PROGRESS_TO), 0.1)})

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
    def _suggest_dependent(cls, trial, bounds: dict[str, Any]) -> dict[str, Any]:
        start = trial.suggest_float("start", *bounds["start"])
        end_low, end_high = bounds["end"]
        end = trial.suggest_float("end", max(end_low, start + bounds["min_length"]), end_high)
        return {"start": start, "end": end}


@dataclass(frozen=True)
class OneCycle(_Ramp):
    """One-Cycle Pruning's logistic ramp (Hubens et al. 2021); steep for large alpha."""

    alpha: float = parameter(14.0, help="steepness of the logistic ramp",
                             limits={"low": 0.0, "low_open": True}, bounds=(4.0, 24.0))
    beta: float = parameter(6.0, help="centre of the logistic, at u = beta / alpha (drawn "
                            "below alpha)", bounds=(1.0, 12.0))

    family: ClassVar[str] = "one_cycle"
    BOUNDS: ClassVar[Mapping[str, tuple[float, float]]] = MappingProxyType(
        {"start": (0.0, 0.3), "end": (0.7, 1.0)})

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
    def _suggest_dependent(cls, trial, bounds):
        params = super()._suggest_dependent(trial, bounds)
        alpha = trial.suggest_float("alpha", *bounds["alpha"])
        beta_low, beta_high = bounds["beta"]
        beta = trial.suggest_float("beta", beta_low, min(beta_high, math.nextafter(alpha, 0.0)))
        return {**params, "alpha": alpha, "beta": beta}


@dataclass(frozen=True)
class OneShot(Schedule):
    """Train dense, then prune to the final sparsity at once at `start`."""

    start: float = parameter(help="progress at which it prunes to the final sparsity, at "
                             "once", limits=_PROGRESS_FROM, bounds=(0.05, 0.9))

    family: ClassVar[str] = "one_shot"
    ENDS_AT: ClassVar[str] = "start"  # it prunes everything at once, at `start`

    def _sparsity(self, t):
        return np.where(t >= self.start, self.final_sparsity, self.initial_sparsity)

    def midpoint(self) -> float:
        return self.start


@dataclass(frozen=True)
class Iterative(_Ramp):
    """Prune-and-fine-tune in `steps` equal jumps spread over [start, end]."""

    steps: int = parameter(3, kind=int, help="number of equal pruning steps",
                           limits={"low": 1}, bounds=(2, 10))

    family: ClassVar[str] = "iterative"

    def _shape(self, u):
        return np.ceil(u * self.steps) / self.steps

    def _shape_midpoint(self) -> float:
        # Step k = ceil(steps / 2) is the first to reach 1/2; it happens just after
        # u = (k - 1) / steps.
        return (math.ceil(self.steps / 2) - 1) / self.steps


@dataclass(frozen=True)
class AGP(_Ramp):
    """Automated Gradual Pruning (Zhu & Gupta 2017): fast early, slow near the end."""

    power: float = parameter(3.0, help="exponent p of the ramp s_f + (s_i - s_f)(1 - u)^p",
                             limits={"low": 0.0, "low_open": True}, bounds=(1.0, 5.0))

    family: ClassVar[str] = "agp"

    def _shape(self, u):
        return 1.0 - (1.0 - u) ** self.power

    def _shape_midpoint(self) -> float:
        return 1.0 - 2.0 ** (-1.0 / self.power)


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


def schedule_parameters() -> dict[str, Parameter]:
    """Every registered family's parameters but final_sparsity, by name, in the order the
    families and their fields are declared (a name two families share: its first
    declaration)."""
    found: dict[str, Parameter] = {}
    for cls in FAMILIES.values():
        for name, spec in cls.parameters().items():
            found.setdefault(name, spec)
    return found


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
