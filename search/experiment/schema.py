"""What a study is: a validated experiment file (`Experiment`) and its parts.

`search.experiment.loading` parses a file into these; everything after reads them. The
fixed training settings are `Experiment.train`, the searched ones `Experiment.tuned`; the
`TrainConfig` a trial trains is derived from them by `search.plan.trials`.

A sparsity range (`SparsityRange`) makes the final sparsity a searched parameter of every
family (`final_sparsity`) and a second objective: one study, whose trials maximise
validation accuracy and sparsity, feasible when their validation accuracy is at most
`max_drop` points below the dense reference's (`search.plan.outcomes.accuracy_floor`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from oneprune.config import TrainConfig
from oneprune.cost import SPARSITY, LatencySettings
from oneprune.distill import DISTILL_SETTINGS, NO_TEACHER

SETTINGS = TrainConfig.settings()
DEFAULT_FAMILIES = ("one_cycle", "one_shot", "iterative", "agp")
KILL_POINTS = ("registering",)  # where a test-only fault may kill the driver
SAMPLERS = ("tpe", "random")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
OPTUNA_FILE = "optuna.db"  # the default Optuna storage: this file beside a sqlite MLflow store
# Where an arm's run starts: random weights, the study's dense reference of the same seed,
# or the weights `init` names (a file or an MLflow model URI).
SCRATCH, DENSE_START, GIVEN = "scratch", "dense", "given"
STARTS = (SCRATCH, DENSE_START, GIVEN)
ARM_SEPARATOR = "-"  # `one_shot-dense`: family one_shot, started from the dense reference


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
class Confirmation:
    """`confirm: {candidates, seeds, margin}` of a sparsity range: before the final seeds,
    a family's cheapest feasible points (its front, the cheapest first, then the front of
    the points left) are re-trained one after another with `seeds` fresh seeds each
    (validation only), and the first whose mean over them reaches the floor plus `margin`
    points is the one re-run; after `candidates` points none did: the one whose mean is
    highest. `candidates: 0` re-runs the cheapest feasible point unconfirmed."""

    candidates: int = 0
    seeds: int = 2
    margin: float = 0.0

    BUDGET: ClassVar[float] = 0.15  # the default's extra runs, at most, per family run
    MOST_CANDIDATES: ClassVar[int] = 6

    @classmethod
    def of(cls, given: Mapping[str, Any], trials_per_family: int,
           final_seeds: int) -> Confirmation:
        """The `confirm:` section `given`, its candidates by default as many (2 to 6) as
        fit, with their seeds, in 15% of a family's search and final runs; none where fewer
        than 2 fit (a choice of one is none)."""
        seeds = given.get("seeds", cls.seeds)
        fit = min(cls.MOST_CANDIDATES,
                  int(cls.BUDGET * (trials_per_family + final_seeds)) // seeds)
        return cls(**{"candidates": fit if fit >= 2 else 0, **given})

    @property
    def runs(self) -> int:
        """Confirmation runs per family, at most."""
        return self.candidates * self.seeds


@dataclass(frozen=True)
class SearchSettings:
    """How each family's study samples: Optuna sampler and seed, optional ASHA, bounds."""

    sampler: str = "tpe"
    seed: int = 0
    asha: bool = False
    grace_period: int = 1
    space: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


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
    choices per setting, in file order (the order Optuna suggests them in).
    `allocation_space` holds, per allocation a trial may use, the (low, high) range of each
    of its arguments that is searched (the fixed ones are in `train["allocation_args"]`).
    With a `sparsity_range`, `sparsity` is its upper end alone: the one study's key (each
    trial's own sparsity is its `final_sparsity` parameter); its second objective is
    `cost` (`oneprune.cost.COSTS`: the sparsity, or the share of the dense network's
    multiply-adds, parameters, bytes or latency, measured as `latency` says, that pruning
    saved), and `confirm` says how its delivered point is confirmed.
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
    cost: str = SPARSITY
    latency: LatencySettings | None = None
    confirm: Confirmation = field(default_factory=Confirmation)
    init: str = SCRATCH
    teacher: str | Mapping[str, str] = NO_TEACHER
    train: Mapping[str, Any] = field(default_factory=dict)
    tuned: Mapping[str, tuple] = field(default_factory=dict)
    allocation_space: Mapping[str, Mapping[str, tuple]] = field(default_factory=dict)

    @staticmethod
    def family_of(arm: str) -> str:
        """The schedule family an arm (`families` entry) trains: `one_shot-dense` is
        one_shot."""
        return arm.partition(ARM_SEPARATOR)[0]

    @property
    def given(self) -> bool:
        """Whether `init` names weights the study is given (a file or an MLflow URI)."""
        return self.init not in (SCRATCH, DENSE_START)

    def start_of(self, arm: str) -> str:
        """Where an arm's runs start (`STARTS`): its `-start`, else the study's `init`
        (weights a file or URI names: `given`). The dense reference starts from the given
        weights, if any (it is then that model fine-tuned), else from scratch."""
        start = arm.partition(ARM_SEPARATOR)[2]
        if start:
            return start
        if arm == "dense":
            return GIVEN if self.given else SCRATCH
        return GIVEN if self.given else self.init

    def teacher_of(self, arm: str) -> str:
        """The teacher an arm's runs distil from: `none`, `dense` (the dense reference of the
        same seed) or the weights `teacher` names (a file or an MLflow URI); the study's
        `teacher`, or the arm's entry where it maps arms to teachers. The dense reference
        and the model as given have none."""
        if arm in ("dense", GIVEN):
            return NO_TEACHER
        if isinstance(self.teacher, Mapping):
            return self.teacher.get(arm, NO_TEACHER)
        return self.teacher

    @property
    def teacher_source(self) -> str | None:
        """The weights file or MLflow URI a teacher is read from, if any arm has one."""
        named = {self.teacher_of(arm) for arm in self.families} - {NO_TEACHER, DENSE_START}
        return next(iter(named), None)

    @property
    def distils(self) -> bool:
        """Whether some arm learns from a teacher."""
        return any(self.teacher_of(arm) != NO_TEACHER for arm in self.families)

    def tuned_for(self, arm: str) -> Mapping[str, tuple]:
        """The searched settings of an arm: all of `tuned`, but the distillation settings
        only where the arm has a teacher."""
        if self.teacher_of(arm) != NO_TEACHER:
            return self.tuned
        return {name: space for name, space in self.tuned.items()
                if name not in DISTILL_SETTINGS}

    def needs_dense(self, arm: str) -> bool:
        """Whether an arm's runs start from, or distil from, the dense reference of their
        seed (they wait for it, and their models cost its training too)."""
        return DENSE_START in (self.start_of(arm), self.teacher_of(arm))

    @property
    def keeps_dense(self) -> bool:
        """Whether some arm needs the dense reference (whose runs then keep their trained
        weights for it)."""
        return any(self.needs_dense(arm) for arm in self.families)

    @property
    def counts_model_cost(self) -> bool:
        """Whether any run starts from other than random weights or learns from a teacher
        (the verdict then counts what each model cost, its start and teacher included)."""
        return self.given or any(self.start_of(arm) != SCRATCH
                                 or self.teacher_of(arm) != NO_TEACHER
                                 for arm in self.families)

    @property
    def measures_cost(self) -> bool:
        """Whether every trial's model is measured (its cost is not its sparsity)."""
        return self.cost != SPARSITY

    @property
    def cost_note(self) -> str | None:
        """What a cost other than sparsity measures under weight pruning, said once at the
        start (None: nothing to say): the network keeps dense shapes."""
        if not self.measures_cost or self.train.get(
                "granularity", SETTINGS["granularity"].default) != "weight":
            return None
        measured = {"macs": "its multiply-adds are the dense network's",
                    "latency": "its latency is the dense network's (the front is noise)",
                    "params": "it counts the non-zero parameters",
                    "bytes": "it counts the file that stores only the non-zeros"}[self.cost]
        return (f"cost: {self.cost} with weight pruning: a weight-pruned network keeps dense "
                f"shapes, so {measured}; granularity: filter removes what it prunes")

    @property
    def allocations(self) -> tuple[str, ...]:
        """The allocations the trials may use: the searched ones, or the one fixed."""
        return self.tuned.get("allocation", (self.train.get("allocation",
                                                            SETTINGS["allocation"].default),))

    @property
    def trained_sparsities(self) -> tuple[float, ...]:
        """The final sparsities a run may train to, at their extremes: every listed one, or
        both ends of the range."""
        if self.sparsity_range is None:
            return self.sparsity
        return (self.sparsity_range.min, self.sparsity_range.max)

    @property
    def dataset(self) -> str:
        return self.train.get("dataset", SETTINGS["dataset"].default)

    @property
    def epochs(self) -> int:
        return self.train.get("epochs", SETTINGS["epochs"].default)

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
