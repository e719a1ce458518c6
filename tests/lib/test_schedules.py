"""Schedules: formulas at hand-computed points, properties of every family, validation,
serialisation, Optuna search spaces and the plot helper."""

import dataclasses
import math
import re
from typing import ClassVar

import numpy as np
import optuna
import pytest
from hypothesis import given
from hypothesis import strategies as st
from testkit import ROOT

from oneprune import schedules as schedule_module
from oneprune.cli import _parser as train_parser
from oneprune.cli import config_from_args
from oneprune.parameters import parameter
from oneprune.plots import plot_schedules
from oneprune.schedules import (
    AGP,
    FAMILIES,
    Cosine,
    Iterative,
    Linear,
    OneCycle,
    OneShot,
    schedule_from_dict,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

# -- formulas at hand-computed points ------------------------------------------------------


@pytest.mark.parametrize(("schedule", "t", "expected"), [
    # one_cycle at u = 0.5 with alpha 14, beta 6: 0.9 (1 + e^-8) / (1 + e^-1)
    (OneCycle(final_sparsity=0.9), 0.5, 0.6581734393),
    (OneCycle(0.9, start=0.2, end=0.8), 0.5, 0.6581734393),
    (OneCycle(0.9), 1.0, 0.9),
    # u = 0: (1 + e^-8) / (1 + e^6) of the way, the paper's curve starts just above s_i
    (OneCycle(0.9), 0.0, 0.9 * 1.00033546263 / 404.428793493),
    (OneCycle(0.8, start=0.1, end=0.9, alpha=10.0, beta=5.0, initial_sparsity=0.2), 0.05, 0.2),
    # one_cycle alpha 10 beta 5 at u = 0.5: logistic centre, (1 + e^-5) / 2 of the way
    (OneCycle(0.8, start=0.1, end=0.9, alpha=10.0, beta=5.0, initial_sparsity=0.2), 0.5,
     0.2 + 0.6 * 1.00673794700 / 2),
    # agp: s_f + (s_i - s_f) (1 - u)^p
    (AGP(0.9, 0.1, 0.9), 0.5, 0.7875),
    (AGP(0.9, 0.0, 1.0, initial_sparsity=0.5, power=2.0), 0.5, 0.8),
    (AGP(0.9, 0.1, 0.9), 0.05, 0.0),
    # iterative: ceil(u n) / n
    (Iterative(0.9, 0.0, 1.0, steps=3), 0.0, 0.0),
    (Iterative(0.9, 0.0, 1.0, steps=3), 0.1, 0.3),
    (Iterative(0.9, 0.0, 1.0, steps=3), 0.5, 0.6),
    (Iterative(0.9, 0.0, 1.0, steps=3), 0.7, 0.9),
    (Iterative(0.8, 0.2, 0.6, steps=4), 0.35, 0.4),
    # one_shot
    (OneShot(0.8, 0.3), 0.2999, 0.0),
    (OneShot(0.8, 0.3), 0.3, 0.8),
    (OneShot(0.8, 0.3, initial_sparsity=0.1), 0.0, 0.1),
    # linear and cosine
    (Linear(0.8, 0.2, 0.6, initial_sparsity=0.2), 0.4, 0.5),
    (Cosine(0.8), 0.25, 0.8 * (1 - math.sqrt(0.5)) / 2),
    (Cosine(0.8), 0.5, 0.4),
])
def test_formula_at_hand_computed_points(schedule, t, expected):
    assert schedule(t) == pytest.approx(expected, rel=1e-7)
    assert isinstance(schedule(t), float)


@pytest.mark.parametrize(("schedule", "expected"), [
    (OneCycle(0.9), (6 - math.log(1 + 2 * math.exp(-8))) / 14),
    (OneCycle(0.9, start=0.2, end=0.6, alpha=10, beta=5),
     0.2 + 0.4 * (5 - math.log(1 + 2 * math.exp(-5))) / 10),
    (OneCycle(0.9, start=0.2, end=0.6, beta=-1.0), 0.2),  # starts above 1/2 already
    (AGP(0.9, 0.1, 0.9), 0.1 + (1 - 2 ** (-1 / 3)) * 0.8),
    (AGP(0.9, 0.0, 1.0, power=1.0), 0.5),
    (OneShot(0.9, 0.4), 0.4),
    (Iterative(0.9, 0.0, 1.0, steps=4), 0.25),  # step 2 of 4 comes just after u = 1/4
    (Iterative(0.9, 0.0, 1.0, steps=3), 1 / 3),  # step 2 of 3 comes just after u = 1/3
    (Iterative(0.9, 0.2, 0.8, steps=1), 0.2),
    (Linear(0.9, 0.2, 0.6), 0.4),
    (Cosine(0.9, 0.2, 0.6), 0.4),
])
def test_midpoint(schedule, expected):
    assert schedule.midpoint() == pytest.approx(expected, abs=1e-12)


def test_vectorised_over_numpy_arrays():
    schedule = OneCycle(0.9, start=0.1, end=0.9)
    t = np.linspace(0.0, 1.0, 101)
    values = schedule(t)
    assert isinstance(values, np.ndarray) and values.shape == t.shape
    assert np.array_equal(values, [schedule(float(x)) for x in t])
    assert schedule(t.reshape(101, 1)).shape == (101, 1)
    assert schedule([0.0, 1.0]).tolist() == [schedule(0.0), 0.9]


def test_done_when_command_value():
    # The check: OneCycle(final_sparsity=0.9)(0.5) prints the formula's value.
    expected = 0.9 * (1 + math.exp(-14 + 6)) / (1 + math.exp(-14 * 0.5 + 6))
    assert OneCycle(final_sparsity=0.9)(0.5) == pytest.approx(expected, rel=1e-15)


# -- properties of every family ------------------------------------------------------------

sparsity = st.floats(0.0, 0.99, allow_nan=False)


def allowed_values(spec):
    """Values of a schedule parameter well beyond its default search range (three times as
    wide, within what its check allows): a property must hold for any valid schedule."""
    low, high = spec.bounds
    span = high - low
    low, high = low - span, high + 2 * span
    limits = spec.limits
    if "low" in limits:
        low = max(low, limits["low"] + (0.1 if limits.get("low_open") else 0.0))
    if "high" in limits:
        high = min(high, limits["high"] - (0.1 if limits.get("high_open") else 0.0))
    if spec.kind is int:
        return st.integers(math.ceil(low), math.floor(high))
    return st.floats(low, high)


@st.composite
def schedules(draw, families=tuple(FAMILIES)):
    """Any valid schedule of any family: its progress parameters anywhere in [0, 1], its
    other parameters from `allowed_values`."""
    cls = FAMILIES[draw(st.sampled_from(families))]
    s_i, s_f = sorted([draw(sparsity), draw(sparsity)])
    start = draw(st.floats(0.0, 0.98))
    params = {"start": start}
    if "end" in cls.parameters():
        params["end"] = draw(st.floats(start + 1e-3, 1.0))
    for name, spec in cls.parameters().items():
        if spec.searched and name not in params:
            params[name] = draw(allowed_values(spec))
    return cls(s_f, initial_sparsity=s_i, **params)


@given(schedules(), st.lists(st.floats(0.0, 1.0), min_size=2, max_size=50))
def test_monotone_non_decreasing_and_bounded(schedule, ts):
    t = np.sort(np.array(ts + [0.0, 1.0, schedule.start, getattr(schedule, "end", 1.0)]))
    values = schedule(t)
    assert np.all(np.diff(values) >= 0)
    assert np.all(values >= schedule.initial_sparsity)
    assert np.all(values <= schedule.final_sparsity)


@given(schedules(), st.floats(0.0, 1.0))
def test_initial_before_start_final_from_end(schedule, t):
    end = getattr(schedule, "end", schedule.start)  # one_shot is final from `start` on
    if t < schedule.start:
        assert schedule(t) == schedule.initial_sparsity
    if t >= end:
        assert schedule(t) == schedule.final_sparsity
    assert schedule(1.0) == schedule.final_sparsity


@given(schedules())
def test_round_trip_is_exact(schedule):
    spec = schedule.to_dict()
    assert spec["family"] == schedule.family
    rebuilt = schedule_from_dict(spec)
    assert rebuilt == schedule and type(rebuilt) is type(schedule)
    assert rebuilt.to_dict() == spec
    assert all(type(v) in (str, int, float) for v in spec.values())


@given(schedules())
def test_half_the_increase_is_reached_at_the_midpoint(schedule):
    mid = schedule.midpoint()
    half = (schedule.initial_sparsity + schedule.final_sparsity) / 2
    assert schedule.start <= mid <= getattr(schedule, "end", schedule.start)
    assert schedule(min(mid + 1e-9, 1.0)) >= half - 1e-6
    if mid - 1e-9 > schedule.start:
        assert schedule(mid - 1e-9) <= half + 1e-6


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(("build", "message"), [
    (lambda: OneCycle(final_sparsity=1.0), r"OneCycle.final_sparsity must be in \[0, 1\)"),
    (lambda: OneCycle(final_sparsity=-0.1), r"OneCycle.final_sparsity must be in \[0, 1\)"),
    (lambda: OneCycle(final_sparsity=float("nan")), "OneCycle.final_sparsity"),
    (lambda: OneCycle(final_sparsity="0.9"), "OneCycle.final_sparsity must be a real number"),
    (lambda: OneCycle(final_sparsity=True), "OneCycle.final_sparsity must be a real number"),
    (lambda: OneCycle(0.5, initial_sparsity=0.6), "OneCycle.initial_sparsity must be <= "),
    (lambda: OneCycle(0.9, start=0.5, end=0.5), "OneCycle.start must be < end"),
    (lambda: OneCycle(0.9, start=-0.1), r"OneCycle.start must be in \[0, 1\)"),
    (lambda: OneCycle(0.9, end=1.5), r"OneCycle.end must be in \(0, 1\]"),
    (lambda: OneCycle(0.9, alpha=0.0), r"OneCycle.alpha must be in \(0, inf\)"),
    (lambda: OneCycle(0.9, beta=float("inf")), "OneCycle.beta must be in"),
    (lambda: AGP(0.9, 0.0, 1.0, power=-1.0), r"AGP.power must be in \(0, inf\)"),
    (lambda: AGP(0.9, 0.6, 0.5), "AGP.start must be < end"),
    (lambda: Iterative(0.9, 0.0, 1.0, steps=0), r"Iterative.steps must be in \[1, inf\]"),
    (lambda: Iterative(0.9, 0.0, 1.0, steps=2.5), "Iterative.steps must be an integer"),
    (lambda: OneShot(0.9, 1.0), r"OneShot.start must be in \[0, 1\)"),
    (lambda: Linear(0.9, 0.3, 0.2), "Linear.start must be < end"),
    (lambda: Cosine(0.9, initial_sparsity=0.95), "Cosine.initial_sparsity must be <="),
])
def test_invalid_parameters_raise_naming_the_field(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("t", [-0.01, 1.01, float("nan"), [0.5, 2.0], "half", ["a"], None])
def test_progress_outside_unit_interval_raises(t):
    with pytest.raises(ValueError, match=r"progress t must be in \[0, 1\]"):
        OneCycle(0.9)(t)


@pytest.mark.parametrize(("spec", "message"), [
    ({"family": "cubic", "final_sparsity": 0.9}, "schedule.family must be one of"),
    ({"final_sparsity": 0.9}, "'family' key"),
    ([("family", "agp")], "'family' key"),
    ({"family": "agp", "final_sparsity": 0.9, "gamma": 1}, "has no field 'gamma'"),
    ({"family": "one_shot"}, "needs field 'final_sparsity'"),
    ({"family": "agp", "final_sparsity": 0.9, "power": "3"}, "AGP.power must be a real"),
])
def test_schedule_from_dict_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        schedule_from_dict(spec)


def test_schedules_are_frozen_and_ints_normalised():
    schedule = OneCycle(0.9, start=0, end=1)
    assert schedule == OneCycle(0.9) and type(schedule.start) is float
    with pytest.raises(AttributeError):
        schedule.alpha = 3.0  # type: ignore[misc]
    assert type(Iterative(0.9, steps=np.int64(4)).steps) is int


# -- Optuna search spaces ------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["tpe", "random"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_optuna_study_samples_only_valid_schedules(family, sampler):
    cls = FAMILIES[family]
    bounds = cls.search_bounds()
    sampled = []

    def objective(trial):
        schedule = cls.suggest(trial, final_sparsity=0.9)  # raises if it does not validate
        sampled.append(schedule)
        return schedule(0.5)  # any objective will do: TPE steers toward it

    samplers = {"tpe": optuna.samplers.TPESampler(seed=0, n_startup_trials=8),
                "random": optuna.samplers.RandomSampler(seed=0)}
    study = optuna.create_study(direction="maximize", sampler=samplers[sampler])
    study.optimize(objective, n_trials=30)

    assert len(sampled) == 30 and all(t.state.name == "COMPLETE" for t in study.trials)
    for schedule in sampled:
        assert type(schedule) is cls and schedule.final_sparsity == 0.9
        assert bounds["start"][0] <= schedule.start <= bounds["start"][1]
        if "end" in bounds:
            assert bounds["end"][0] <= schedule.end <= bounds["end"][1]
            assert schedule.end - schedule.start >= bounds["min_length"] - 1e-12
        if family == "one_cycle":
            assert bounds["alpha"][0] <= schedule.alpha <= bounds["alpha"][1]
            assert bounds["beta"][0] <= schedule.beta < schedule.alpha
        for name in ("power", "steps"):
            if name in bounds:
                assert bounds[name][0] <= getattr(schedule, name) <= bounds[name][1]
    params = set(study.trials[0].params)
    assert params == {k for k in bounds if k != "min_length"}


def test_the_docs_document_every_familys_default_bounds():
    """The docs' table of families (docs/concepts/schedules.md) states each one's
    `DEFAULT_BOUNDS` (and the text its `min_length`), as the code has them."""
    readme = (ROOT / "docs" / "concepts" / "schedules.md").read_text()
    documented = {}
    for family, bounds in re.findall(r"^\| `(\w+)` \| `\w+\(.*\| (.*) \|$", readme, re.M):
        documented[family] = {name: (float(low), float(high)) for name, low, high
                              in re.findall(r"(\w+) \[([\d.]+), ([\d.]+)\]", bounds)}
    assert set(documented) == set(FAMILIES)
    for family, cls in FAMILIES.items():
        ranges = {k: v for k, v in cls.DEFAULT_BOUNDS.items() if k != "min_length"}
        assert documented[family] == ranges, family
        if "min_length" in cls.DEFAULT_BOUNDS:
            assert f"`min_length` {cls.DEFAULT_BOUNDS['min_length']:g}" in readme


def test_bounds_overrides_are_used():
    bounds = {"start": [0.1, 0.1], "power": (2.0, 2.5)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(lambda trial: AGP.suggest(trial, 0.8, bounds)(0.5), n_trials=10)
    for trial in study.trials:
        assert trial.params["start"] == 0.1
        assert 2.0 <= trial.params["power"] <= 2.5
        assert trial.params["end"] >= 0.5


@pytest.mark.parametrize(("cls", "bounds", "message"), [
    (OneCycle, {"gamma": (0, 1)}, "one_cycle.bounds has no key 'gamma'"),
    (OneCycle, {1: (0, 1)}, "one_cycle.bounds has no key 1"),
    (OneCycle, {"alpha": {"low": 4, "high": 5}}, r"one_cycle.bounds.alpha must be a \[low, high\]"),
    (OneCycle, {"alpha": (5, 4)}, "one_cycle.bounds.alpha must have low <= high"),
    (OneCycle, {"alpha": (0, 4)}, r"one_cycle.bounds.alpha must be in \(0, inf\)"),
    (OneCycle, {"alpha": 4}, r"one_cycle.bounds.alpha must be a \[low, high\] pair"),
    (OneCycle, {"alpha": "4,5"}, r"one_cycle.bounds.alpha must be a \[low, high\] pair"),
    (OneCycle, {"beta": (5, 6), "alpha": (4, 24)}, "beta low .* must be < alpha low"),
    (AGP, {"start": (0.0, 0.95)}, "must leave room for every start"),
    (AGP, {"end": (0.5, 1.2)}, r"agp.bounds.end must be in \(0, 1\]"),
    (AGP, {"min_length": 0.0}, r"agp.bounds.min_length must be in \(0, 1\]"),
    (Iterative, {"steps": (0.5, 3)}, "iterative.bounds.steps must be an integer"),
    (OneShot, {"start": (0.2, 1.0)}, r"one_shot.bounds.start must be in \[0, 1\)"),
    (OneShot, ["start"], "one_shot.bounds must be a mapping"),
])
def test_invalid_bounds_raise_naming_the_key(cls, bounds, message):
    with pytest.raises(ValueError, match=message):
        cls.search_bounds(bounds)
    study = optuna.create_study()
    with pytest.raises(ValueError, match=message):
        cls.suggest(study.ask(), 0.9, bounds)


# -- a new family: one class ------------------------------------------------------------


@pytest.fixture
def staircase():
    """A family defined here, as a user would add one: a ramp of `rungs` equal steps whose
    last rung comes early by `lead` (a new int and a new float parameter). It registers
    itself on definition and is removed from the registry afterwards."""
    @dataclasses.dataclass(frozen=True)
    class Staircase(schedule_module._Ramp):
        rungs: int = parameter(4, kind=int, help="number of rungs", limits={"low": 1},
                               bounds=(2, 6))
        lead: float = parameter(0.0, help="how early the last rung comes, in ramp units",
                                limits={"low": 0.0, "high": 0.5}, bounds=(0.0, 0.25))

        family: ClassVar[str] = "staircase"

        def _shape(self, u):
            return np.minimum(np.ceil(u / (1.0 - self.lead) * self.rungs) / self.rungs, 1.0)

        def _shape_midpoint(self):
            return (math.ceil(self.rungs / 2) - 1) / self.rungs * (1.0 - self.lead)

    yield Staircase
    del schedule_module._FAMILIES["staircase"]


def test_a_new_family_registers_and_its_parameters_follow_from_their_declaration(staircase):
    assert FAMILIES["staircase"] is staircase
    assert dict(staircase.DEFAULT_BOUNDS) == {"start": (0.0, 0.5), "end": (0.5, 1.0),
                                              "rungs": (2, 6), "lead": (0.0, 0.25),
                                              "min_length": 0.1}
    with pytest.raises(ValueError, match=r"Staircase.lead must be in \[0, 0.5\], got 0.7"):
        staircase(0.9, lead=0.7)
    assert schedule_from_dict({"family": "staircase", "final_sparsity": 0.9,
                               "rungs": 3}) == staircase(0.9, rungs=3)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    drawn = staircase.suggest(trial, 0.9)
    assert list(trial.params) == ["start", "end", "rungs", "lead"]  # declaration order
    assert isinstance(drawn.rungs, int) and 2 <= drawn.rungs <= 6
    args = train_parser().parse_args(["--schedule", "staircase", "--rungs", "5",
                                      "--lead", "0.1"])
    assert config_from_args(args).schedule == staircase(0.9, rungs=5, lead=0.1)
    with pytest.raises(SystemExit):  # an int parameter's flag takes ints only
        train_parser().parse_args(["--schedule", "staircase", "--rungs", "2.5"])


def test_a_family_name_cannot_be_taken_twice():
    with pytest.raises(ValueError, match="schedule family 'agp' is defined twice"):
        @dataclasses.dataclass(frozen=True)
        class OtherAGP(schedule_module._Ramp):
            family: ClassVar[str] = "agp"
    assert FAMILIES["agp"] is AGP


# -- plot helper ---------------------------------------------------------------------------


def test_plot_schedules_writes_a_png(tmp_path):
    curves = {"one_cycle": OneCycle(0.9), "agp": AGP(0.9, 0.1, 0.8), "one_shot": OneShot(0.9, 0.5)}
    lr = {"one_cycle": lambda t: 1e-3 * np.sin(np.pi * t)}
    path = plot_schedules(curves, tmp_path / "schedules.png", lr=lr, title="90%")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_plot_schedules_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="at least one schedule"):
        plot_schedules({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="lr labels"):
        plot_schedules({"a": OneCycle(0.9)}, tmp_path / "x.png", lr={"b": np.cos})
