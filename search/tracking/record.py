"""The verdict of each study, written to MLflow once its Tuner is done.

Each family run is closed with its search metrics, the importances of its searched
parameters (`search.verdict.importance`) and its best config (the dense reference's with
its config and mean test accuracy); the comparison run gets the table and figures
(`search.verdict.fixed`, or under a sparsity range `search.verdict.sparsity_range`: each
family's front and hypervolume, and how sparse its re-run point got within `max_drop` of
dense); each family's model is registered (`search.tracking.registry`: the final runs'
models were logged as they ended). An experiment with several sparsities also gets a
`sweep` run, accuracy against sparsity (`search.verdict.sweep`).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from oneprune.cost import COST_METRICS, SPARSITY
from search.experiment.schema import SCRATCH, Experiment
from search.experiment.train_configs import base_config
from search.plan.outcomes import FamilyOutcome, cheapest_then_most_accurate, model_cost
from search.plan.pareto import pareto_front
from search.plan.trials import AS_GIVEN, DENSE, final_config, optuna_study_name, train_config
from search.tracking import registry, runs
from search.tracking.retime import retime_finals
from search.verdict import fixed
from search.verdict.columns import MODEL_COST
from search.verdict.fixed import write_report
from search.verdict.importance import study_importances
from search.verdict.sparsity_range import write_front_report
from search.verdict.sweep import sweep_title, write_sweep


@dataclass(frozen=True)
class StudyResult:
    """One study's verdict: its sparsity, title, comparison table (Markdown) and each
    family's outcome (dense last)."""

    name: str
    sparsity: float
    title: str
    table: str
    outcomes: list[FamilyOutcome]
    experiment_id: str  # its MLflow experiment
    models: list[registry.Handover]  # each family's registered model


def _teachers(experiment: Experiment) -> str:
    """What the title says of the study's teachers ("": none)."""
    if not experiment.distils:
        return ""
    if isinstance(experiment.teacher, str):
        return f", distilled from {experiment.teacher}"
    return ", distilled: " + ", ".join(f"{arm} from {teacher}"
                                       for arm, teacher in experiment.teacher.items())


def record_study(client: MlflowClient, experiment: Experiment, sparsity: float,
                 experiment_id: str, family_run_ids: Mapping[tuple[float, str], str],
                 outcomes: list[FamilyOutcome], floor: float | None, *,
                 registered: Callable[[], None] = lambda: None) -> StudyResult:
    """Close each family run with its search metrics and best config (the dense
    reference's with its config and mean test accuracy), log the comparison of the study at
    `sparsity` (`floor`: a sparsity range's accuracy floor, else None) and register its
    models (`registered()` is called after each family's: the test-only faults' hook)."""
    name, model = experiment.study_name(sparsity), base_config(experiment).model
    span = experiment.sparsity_range
    test_acc_means = {o.family: sum(o.test_accs) / len(o.test_accs)
                      for o in outcomes if o.test_accs}
    dense = next(o for o in outcomes if o.family == DENSE)
    for outcome in outcomes:
        cost = {}
        if experiment.counts_model_cost:  # what its models cost, their start included
            epochs, seconds, _ = model_cost(outcome, dense)
            cost = {"model_epochs": epochs, "model_seconds": seconds}
        if outcome.family in (DENSE, AS_GIVEN):
            mean = test_acc_means.get(outcome.family)
            runs.finish_family(
                client, family_run_ids[(sparsity, outcome.family)],
                base_config(experiment).to_dict(),
                {**({} if mean is None else {"test_acc_mean": mean}), **cost})
            continue
        outcome.importances = study_importances(
            experiment.optuna_storage_url, optuna_study_name(experiment, (sparsity,
                                                                           outcome.family)))
        run_id = family_run_ids[(sparsity, outcome.family)]
        metrics = {"trials": outcome.trials, "trials_completed": outcome.trials_completed,
                   "trials_diverged": outcome.trials_diverged,
                   "search_seconds": outcome.search_seconds, **cost}
        if span is not None:
            metrics.update(hypervolume=outcome.hypervolume,
                           trials_feasible=sum(p.feasible for p in outcome.points),
                           front_points=len(pareto_front(outcome.points)),
                           confirm_runs=len(outcome.confirm_run_seconds),
                           confirm_seconds=outcome.confirm_seconds)
            if outcome.best_number in outcome.confirmed:
                values = outcome.confirmed[outcome.best_number]
                metrics["confirmed_val_acc"] = sum(values) / len(values)
            for key in COST_METRICS:
                values = [run[key] for run in outcome.final_costs if key in run]
                if values:
                    metrics[f"{key}_mean"] = sum(values) / len(values)
        if outcome.schedule is None:
            if span is not None and outcome.trials_completed:  # none within the drop
                runs.finish_family(client, run_id, {}, metrics)
            else:
                runs.fail_family(client, run_id, metrics)
            continue
        best = train_config(experiment, final_config((sparsity, outcome.family),
                                                     experiment.search.seed,
                                                     outcome.best_params))
        if span is not None:
            metrics["sparsity_reached"] = best.schedule.final_sparsity
        runs.finish_family(client, run_id, best.to_dict(), {
            "best_val_acc": outcome.best_val_acc, **metrics,
            **{f"importance.{param}": value for param, value in outcome.importances.items()}})
    def final_run(family: str, seed: int) -> str:
        return runs.find_runs(client, experiment_id, {
            runs.ROLE: "final", runs.FAMILY: family, runs.SEED: str(seed)}
        )[0].info.run_id

    if experiment.cost == "latency":  # every final model again, on this machine, together
        retime_finals(experiment.tracking_uri, outcomes, final_run, experiment.latency)
    headline = {f"test_acc_mean.{family}": mean for family, mean in test_acc_means.items()}
    starts = (f", from {experiment.init}" if experiment.init != SCRATCH else "") + _teachers(
        experiment)
    extra = [MODEL_COST] if experiment.counts_model_cost else []
    with tempfile.TemporaryDirectory() as folder:
        if span is None:
            title = (f"{name}: {model} on {experiment.dataset} at "
                     f"{sparsity:.0%} sparsity, {experiment.epochs} epochs{starts}")
            table = write_report(outcomes, Path(folder), title, columns=[*fixed.COLUMNS,
                                                                         *extra])
        else:
            question = ("how sparse" if experiment.cost == SPARSITY
                        else f"least {experiment.cost}")
            title = (f"{name}: {model} on {experiment.dataset}, {question} within "
                     f"{span.max_drop:g} point(s) of dense (sparsity searched in "
                     f"[{span.min:.0%}, {span.max:.0%}]), {experiment.epochs} epochs{starts}")
            table = write_front_report(outcomes, Path(folder), title, floor=floor,
                                       max_drop=span.max_drop, extra=extra,
                                       cost=experiment.cost, confirm=experiment.confirm)
            headline.update({f"hypervolume.{o.family}": o.hypervolume for o in outcomes
                             if o.family != DENSE})
            headline.update({f"sparsity_reached.{o.family}": o.schedule.final_sparsity
                             for o in outcomes if o.schedule is not None})
            if math.isfinite(floor):
                headline["accuracy_floor"] = floor
        runs.finish_report_run(client, experiment_id, "comparison", folder, headline)

    trained = [o for o in outcomes if o.family != AS_GIVEN]  # the model as given: the user's
    models = registry.hand_over(experiment.tracking_uri, name, trained, final_run, title,
                                rank=None if span is None
                                else cheapest_then_most_accurate(experiment.cost),
                                registered=registered)
    return StudyResult(name, sparsity, title, table, outcomes, experiment_id, models)


def record_sweep(client: MlflowClient, experiment: Experiment,
                 studies: Sequence[StudyResult]) -> None:
    """Log accuracy against sparsity over every study of `experiment` (several
    sparsities) as a `sweep` run in the MLflow experiment named after it."""
    with tempfile.TemporaryDirectory() as folder:
        write_sweep([(study.sparsity, study.outcomes) for study in studies], Path(folder),
                    sweep_title(experiment))
        runs.finish_report_run(client, runs.open_experiment(client, experiment.name),
                                   "sweep", folder)
