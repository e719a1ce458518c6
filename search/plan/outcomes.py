"""What the trials of a study add up to: each family's outcome, a pure function of the
finished trials (no Ray, no MLflow).

`aggregate` turns the finished trials (`TrialRecord`) into each study's per-family outcomes
(`FamilyOutcome`): search statistics, the point its final runs re-run (`chosen_point`) and
the final runs' accuracies. With a sparsity range every search trial has two objectives
(`objectives`: accuracy, and the sparsity or the share of a cost saved), and a family's
point is its cheapest within `max_drop` of dense (`select_best` with the `accuracy_floor`
the dense references set), confirmed: the cheapest front points are re-trained with fresh
seeds and the cheapest whose mean holds the floor is the one re-run (`chosen_point`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from oneprune.cost import COST_METRICS, SPARSITY
from oneprune.distill import NO_TEACHER
from oneprune.lr import CoupledLR
from oneprune.schedules import Schedule
from search.experiment.train_configs import base_config
from search.plan.pareto import FrontPoint, hypervolume, pareto_front
from search.plan.stats import mean_interval
from search.plan.trials import (
    AS_GIVEN,
    CONFIRM,
    DENSE,
    FINAL,
    SEARCH,
    Group,
    confirm_config,
    confirm_seeds,
    group_of,
    target_sparsity,
    train_config,
)

if TYPE_CHECKING:
    from search.experiment.schema import Experiment

METRIC = "val_acc"
COST_SAVING = "cost_saving"  # a trial's second objective under a cost: the share saved
# A final run's speed-up and spread when the driver timed every final model again together
# (`search.tracking.retime`), beside its own measured costs.
RETIMED, RETIMED_SPREAD = "retimed_speedup", "retimed_spread"


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
    # Its confirmation: each candidate's (trial number's) validation accuracies at fresh
    # seeds, and each run's training seconds.
    confirmed: dict[int, list[float]] = field(default_factory=dict)
    confirm_run_seconds: list[float] = field(default_factory=list)
    # Under a cost: what each final run's model measured (`oneprune.cost.measure_costs`).
    final_costs: list[dict[str, float]] = field(default_factory=list)

    @property
    def search_seconds(self) -> float:
        """The training seconds of its search trials, in all."""
        return sum(self.search_trial_seconds)

    @property
    def final_seconds(self) -> float:
        """The training seconds of its final runs, in all."""
        return sum(self.final_run_seconds)

    @property
    def confirm_seconds(self) -> float:
        """The training seconds of its confirmation runs, in all."""
        return sum(self.confirm_run_seconds)


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


def objectives(record: TrialRecord, cost: str = SPARSITY) -> tuple[float, float]:
    """A search trial's two objectives under a sparsity range, both maximised: its
    validation accuracy at the end and its final sparsity (the sampled target, which the
    pruner's exact budgets meet to within one weight per layer), or under another `cost`
    the share of the dense network's cost its model saved (`COST_SAVING`, measured)."""
    gain = target_sparsity(record.config) if cost == SPARSITY else record.result[COST_SAVING]
    return record.result[METRIC], gain


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
                floor: float | None = None, cost: str = SPARSITY) -> TrialRecord | None:
    """The best search trial among those that completed the budget: the highest
    validation accuracy; or with a `floor` (a sparsity range) the sparsest (under a `cost`,
    the cheapest) trial whose validation accuracy reaches it (then the more accurate), the
    first point of the feasible Pareto front. A tie goes to the lower Optuna trial number
    (deterministic, whatever the order the trials finished in)."""
    candidates = [r for r in records if r.config["part"] == SEARCH and completed(r, epochs)]
    if floor is None:
        return max(candidates, key=lambda r: (r.result[METRIC], -r.config["number"]),
                   default=None)
    feasible = [r for r in candidates if r.result[METRIC] >= floor]
    return max(feasible, key=lambda r: (*reversed(objectives(r, cost)), -r.config["number"]),
               default=None)


def front_points(records: Iterable[TrialRecord], epochs: int, floor: float,
                 cost: str = SPARSITY) -> list[FrontPoint]:
    """Every search trial that completed the budget as a point of the plane of the two
    objectives, in trial order."""
    points = []
    for record in records:
        if record.config["part"] == SEARCH and completed(record, epochs):
            accuracy, gain = objectives(record, cost)
            points.append(FrontPoint(record.config["number"], target_sparsity(record.config),
                                     accuracy, accuracy >= floor,
                                     None if cost == SPARSITY else gain))
    return sorted(points, key=lambda point: point.number)


def confirmation_candidates(experiment: Experiment, records: Iterable[TrialRecord],
                            floor: float) -> list[TrialRecord]:
    """The search trials of one group a sparsity range may confirm, in the order it
    confirms them: its feasible points front by front (its front, the cheapest first, then
    the front of the points left, ...), at most `confirm.candidates`; none without
    confirmation."""
    searched = {r.config["number"]: r for r in records if r.config["part"] == SEARCH}
    left = [p for p in front_points(searched.values(), experiment.epochs, floor,
                                    experiment.cost) if p.feasible]
    order: list[FrontPoint] = []
    while left and len(order) < experiment.confirm.candidates:
        front = pareto_front(left)
        order += front
        left = [p for p in left if p not in front]
    return [searched[point.number] for point in order[:experiment.confirm.candidates]]


def confirmations(experiment: Experiment, records: Iterable[TrialRecord]
                  ) -> dict[int, list[float]]:
    """Per confirmed search trial (its number), the validation accuracies of its
    confirmation runs that completed the budget, in seed order."""
    runs = sorted((r for r in records if r.config["part"] == CONFIRM
                   and completed(r, experiment.epochs)), key=lambda r: r.config["seed"])
    confirmed: dict[int, list[float]] = {}
    for record in runs:
        confirmed.setdefault(record.config["number"], []).append(record.result[METRIC])
    return confirmed


def _confirming(experiment: Experiment, records: Sequence[TrialRecord], floor: float
                ) -> tuple[TrialRecord | None, TrialRecord | None]:
    """Where the confirmation of one ended search stands: the candidate whose confirmation
    runs have not all ended (None: none), else the chosen one. Candidates are confirmed one
    after another (`confirmation_candidates`); the first whose runs all completed with a
    mean at or above the floor plus `confirm.margin` points is chosen; none: the one whose
    confirmed mean is highest (none confirmed: the cheapest)."""
    ended = {(r.config["number"], r.config["seed"]) for r in records
             if r.config["part"] == CONFIRM}
    confirmed = confirmations(experiment, records)
    bar = floor + experiment.confirm.margin / 100
    candidates = confirmation_candidates(experiment, records, floor)
    for candidate in candidates:
        number = candidate.config["number"]
        if any((number, seed) not in ended for seed in confirm_seeds(experiment)):
            return candidate, None
        values = confirmed.get(number, [])
        if len(values) == experiment.confirm.seeds and statistics.fmean(values) >= bar:
            return None, candidate
    means = [(statistics.fmean(confirmed[c.config["number"]]) if c.config["number"]
              in confirmed else -math.inf, -i) for i, c in enumerate(candidates)]
    return None, (candidates[max(range(len(candidates)), key=means.__getitem__)]
                  if candidates else None)


def chosen_point(experiment: Experiment, records: Sequence[TrialRecord],
                 floor: float | None) -> TrialRecord | None:
    """The search trial a family's final runs re-run, from its group's `records` (search
    and confirmation runs): `select_best`; under a sparsity range with confirmation, the
    first candidate that holds the floor (`_confirming`; its confirmation must have ended:
    `confirmation_configs` is empty)."""
    if floor is None or not experiment.confirm.candidates:
        return select_best(records, experiment.epochs, floor, experiment.cost)
    return _confirming(experiment, records, floor)[1]


def confirmation_configs(experiment: Experiment, records: Sequence[TrialRecord],
                         floor: float) -> list[dict]:
    """The confirmation runs (configs) one ended search with a known floor wants now: the
    candidate being confirmed with each confirmation seed (some may be handed out or have
    ended already); none once a candidate held or every candidate was confirmed."""
    candidate = _confirming(experiment, records, floor)[0] \
        if experiment.confirm.candidates else None
    if candidate is None:
        return []
    return [confirm_config(group_of(candidate.config), seed, candidate.config["number"],
                           candidate.config["params"]) for seed in confirm_seeds(experiment)]


def _objective_box(experiment: Experiment, floor: float
                   ) -> tuple[tuple[float, float], tuple[float, float]]:
    """The (gain, accuracy) box a front's hypervolume is a share of: [min, max] of the
    sparsity range, or under a cost [0, 1] of the share saved; from the floor to 1."""
    if experiment.measures_cost:
        return (0.0, floor), (1.0, 1.0)
    span = experiment.sparsity_range
    return (span.min, floor), (span.max, 1.0)


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
            confirming = by_group.get((CONFIRM, group), [])
            best = chosen_point(experiment, [*searched, *confirming], floor)
            if floor is not None and family != DENSE:
                outcome.points = front_points(searched, experiment.epochs, floor,
                                              experiment.cost)
                outcome.hypervolume = hypervolume(pareto_front(outcome.points),
                                                  *_objective_box(experiment, floor))
                outcome.confirmed = confirmations(experiment, confirming)
                outcome.confirm_run_seconds = [r.result.get("train_seconds", 0.0)
                                               for r in confirming]
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
                if experiment.measures_cost:
                    outcome.final_costs.append({key: record.result[key]
                                                for key in (COST_SAVING, *COST_METRICS)
                                                if key in record.result})
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


def cheapest_then_most_accurate(cost: str) -> Callable[[FamilyOutcome], tuple[float, float]]:
    """How a range verdict ranks the families it re-ran (the registry's `best`): the
    sparsity reached within the drop (under a `cost`, the mean share of it its final
    models saved), then the mean test accuracy there."""
    def rank(outcome: FamilyOutcome) -> tuple[float, float]:
        savings = [run[COST_SAVING] for run in outcome.final_costs if COST_SAVING in run]
        gain = (outcome.schedule.final_sparsity if cost == SPARSITY
                else statistics.fmean(savings) if savings else -math.inf)
        return gain, mean_interval(outcome.test_accs)[0]
    return rank
