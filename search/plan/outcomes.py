"""What the trials of a study add up to: each family's outcome, a pure function of the
finished trials (no Ray, no MLflow).

`aggregate` turns the finished trials (`TrialRecord`) into each study's per-family outcomes
(`FamilyOutcome`): search statistics, the best trial (`select_best`) and the final runs'
accuracies. With a sparsity range every search trial has two objectives (`objectives`),
and a family's "best" trial is its sparsest within `max_drop` of dense (`select_best` with
the `accuracy_floor` the dense references set).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from oneprune.distill import NO_TEACHER
from oneprune.lr import CoupledLR
from oneprune.schedules import Schedule
from search.experiment.train_configs import base_config
from search.plan.pareto import FrontPoint, hypervolume, pareto_front
from search.plan.stats import mean_interval
from search.plan.trials import (
    AS_GIVEN,
    DENSE,
    FINAL,
    SEARCH,
    Group,
    group_of,
    target_sparsity,
    train_config,
)

if TYPE_CHECKING:
    from search.experiment.schema import Experiment

METRIC = "val_acc"


@dataclass
class FamilyOutcome:
    """What a family's search and final re-runs produced (`schedule=None`: dense)."""

    family: str
    schedule: Schedule | None
    lr_policy: CoupledLR | None
    start: str = "scratch"  # where its runs start: scratch, dense or given
    teacher: str = NO_TEACHER  # what its runs distil from: none, dense or given weights
    epochs: int = 0  # what each of its runs trained (the model as given: none)
    best_params: dict = field(default_factory=dict)
    best_val_acc: float = math.nan
    best_number: int | None = None  # the Optuna trial of `best_params`
    trials: int = 0
    trials_completed: int = 0
    trials_diverged: int = 0  # ended by a non-finite loss (not completed)
    search_trial_seconds: list[float] = field(default_factory=list)  # each trial's training
    test_accs: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # of `test_accs`, in the same order
    val_accs: list[float] = field(default_factory=list)  # each final run's, at its end
    final_run_seconds: list[float] = field(default_factory=list)  # each final run's training
    histories: list[list[dict]] = field(default_factory=list)
    importances: dict[str, float] = field(default_factory=dict)  # fANOVA, of the search
    # A sparsity range: every completed search trial (`FrontPoint`) and the
    # share of the feasible box its front dominates.
    points: list = field(default_factory=list)
    hypervolume: float = math.nan

    @property
    def search_seconds(self) -> float:
        """The training seconds of its search trials, in all."""
        return sum(self.search_trial_seconds)

    @property
    def final_seconds(self) -> float:
        """The training seconds of its final runs, in all."""
        return sum(self.final_run_seconds)


@dataclass(frozen=True)
class TrialRecord:
    """A finished (or stopped) Tune trial: its config, its last result ({} if it reported
    nothing), whether it ended in error, and its per-epoch rows (one per epoch)."""

    config: Mapping[str, Any]
    result: Mapping[str, Any] = field(default_factory=dict)
    error: bool = False
    history: Sequence[Mapping[str, Any]] = ()


def completed(record: TrialRecord, epochs: int) -> bool:
    """Trained its whole budget without error or a non-finite loss."""
    result = record.result
    return (not record.error and not result.get("diverged")
            and result.get("epoch") == epochs and METRIC in result)


def objectives(record: TrialRecord) -> tuple[float, float]:
    """A search trial's two objectives under a sparsity range, both maximised: its
    validation accuracy at the end and its final sparsity (the sampled target, which the
    pruner's exact budgets meet to within one weight per layer)."""
    return record.result[METRIC], target_sparsity(record.config)


def accuracy_floor(experiment: Experiment, records: Iterable[TrialRecord],
                   sparsity: float) -> float | None:
    """The validation accuracy a trial of the study at `sparsity` must reach under a
    sparsity range: the mean over the dense reference's final runs that completed, minus
    `max_drop` points (inf when none did: nothing can be shown to be within the drop).
    `records`: those that have ended (any part and group); None until every dense final
    run is among them (or without a range)."""
    if experiment.sparsity_range is None:
        return None
    ended = [r for r in records
             if r.config["part"] == FINAL and group_of(r.config) == (sparsity, DENSE)]
    if len({r.config["seed"] for r in ended}) < experiment.final_seeds:
        return None
    values = [r.result[METRIC] for r in ended if completed(r, experiment.epochs)]
    if not values:
        return math.inf
    return statistics.fmean(values) - experiment.sparsity_range.max_drop / 100


def select_best(records: Iterable[TrialRecord], epochs: int,
                floor: float | None = None) -> TrialRecord | None:
    """The search trial a family's final runs re-run, among those that completed the
    budget: the highest validation accuracy; or with a `floor` (a sparsity range) the
    sparsest trial whose validation accuracy reaches it (then the more accurate), the
    sparsest point of the feasible Pareto front. A tie goes to the lower Optuna trial
    number (deterministic, whatever the order the trials finished in)."""
    candidates = [r for r in records if r.config["part"] == SEARCH and completed(r, epochs)]
    if floor is None:
        return max(candidates, key=lambda r: (r.result[METRIC], -r.config["number"]),
                   default=None)
    feasible = [r for r in candidates if r.result[METRIC] >= floor]
    return max(feasible, key=lambda r: (*reversed(objectives(r)), -r.config["number"]),
               default=None)


def front_points(records: Iterable[TrialRecord], epochs: int,
                 floor: float) -> list[FrontPoint]:
    """Every search trial that completed the budget as a point of the accuracy-sparsity
    plane, in trial order."""
    points = []
    for record in records:
        if record.config["part"] == SEARCH and completed(record, epochs):
            accuracy, sparsity = objectives(record)
            points.append(FrontPoint(record.config["number"], sparsity, accuracy,
                                     accuracy >= floor))
    return sorted(points, key=lambda point: point.number)


def aggregate(experiment: Experiment,
              records: Iterable[TrialRecord]) -> dict[float, list[FamilyOutcome]]:
    """Per sparsity, the outcome of every family (in the experiment's order) and of the
    dense reference (last): search statistics, best config and the final runs' test
    accuracies, in seed order; with a sparsity range, also each family's trials in the
    accuracy-sparsity plane and the hypervolume of its feasible front."""
    by_group: dict[tuple[str, Group], list[TrialRecord]] = {}
    for record in records:
        by_group.setdefault((record.config["part"], group_of(record.config)), []).append(record)
    studies = {}
    for sparsity in experiment.sparsity:
        outcomes = []
        floor = accuracy_floor(experiment, by_group.get((FINAL, (sparsity, DENSE)), []),
                               sparsity)
        for family in (*experiment.families, DENSE, *([AS_GIVEN] if experiment.given else [])):
            group = (sparsity, family)
            searched = by_group.get((SEARCH, group), [])
            outcome = FamilyOutcome(family, schedule=None, lr_policy=None,
                                    start=experiment.start_of(family),
                                    teacher=experiment.teacher_of(family),
                                    epochs=0 if family == AS_GIVEN else experiment.epochs,
                                    trials=len(searched))
            for record in searched:
                outcome.search_trial_seconds.append(record.result.get("train_seconds", 0.0))
                if record.result.get("diverged"):
                    outcome.trials_diverged += 1
                elif completed(record, experiment.epochs):
                    outcome.trials_completed += 1
            best = select_best(searched, experiment.epochs, floor)
            if floor is not None and family != DENSE:
                span = experiment.sparsity_range
                outcome.points = front_points(searched, experiment.epochs, floor)
                outcome.hypervolume = hypervolume(pareto_front(outcome.points),
                                                  (span.min, floor), (span.max, 1.0))
            if best is not None:
                cfg = train_config(experiment, best.config)
                outcome.schedule, outcome.lr_policy = cfg.schedule, cfg.lr_policy()
                outcome.best_params = dict(best.config["params"])
                outcome.best_val_acc = best.result[METRIC]
                outcome.best_number = best.config["number"]
            elif family == DENSE:
                outcome.lr_policy = base_config(experiment).lr_policy()
            finals = sorted(by_group.get((FINAL, group), []), key=lambda r: r.config["seed"])
            for record in finals:
                if record.error or "test_acc" not in record.result:
                    continue
                outcome.test_accs.append(record.result["test_acc"])
                outcome.seeds.append(record.config["seed"])
                outcome.val_accs.append(record.result.get(METRIC, math.nan))
                outcome.final_run_seconds.append(record.result["train_seconds"])
                outcome.histories.append([{key: row[key] for key in ("epoch", METRIC,
                                                                    "sparsity")}
                                          for row in record.history])
            outcomes.append(outcome)
        studies[sparsity] = outcomes
    return studies


class ModelCost(NamedTuple):
    """What one final model of a row cost to train in all, its start included: epochs and
    seconds (the mean over its seeds), and whether given weights came before them (whose
    cost the study does not know)."""

    epochs: int
    seconds: float
    given: bool


def model_cost(outcome: FamilyOutcome, dense: FamilyOutcome | None) -> ModelCost:
    """`ModelCost` of `outcome`'s models: its own runs' (a teacher's forward passes
    included), plus, where they start from or distil from the dense reference, the dense
    run of the same seed (epochs and seconds, once); the model as given costs nothing the
    study spent."""
    seconds = list(outcome.final_run_seconds)
    epochs = outcome.epochs
    if "dense" in (outcome.start, outcome.teacher) and dense is not None:
        dense_by_seed = dict(zip(dense.seeds, dense.final_run_seconds, strict=True))
        seconds = [s + dense_by_seed.get(seed, math.nan)
                   for seed, s in zip(outcome.seeds, seconds, strict=True)]
        epochs += dense.epochs
    given = (outcome.start == "given" or outcome.teacher not in (NO_TEACHER, "dense")
             or ("dense" in (outcome.start, outcome.teacher) and dense is not None
                 and dense.start == "given"))  # weights whose training the study never saw
    return ModelCost(epochs, statistics.fmean(seconds) if seconds else math.nan, given)


def sparsest_then_most_accurate(outcome: FamilyOutcome) -> tuple[float, float]:
    """How a range verdict ranks the families it re-ran (the registry's `best`): the
    sparsity reached within the drop, then the mean test accuracy there."""
    return outcome.schedule.final_sparsity, mean_interval(outcome.test_accs)[0]
