"""An experiment's run: one Ray Tune `Tuner` for all of it, then the verdict per study.

A study is one sparsity of the experiment (one MLflow experiment each). One `Tuner` runs
every trial of every study: `ExperimentSearcher` hands out each (sparsity, family)'s search
trials from its own Optuna study, each family's final re-runs as soon as its search has
ended, and the dense references; `GroupScheduler` keeps ASHA inside a (sparsity, family).
Slots never wait for a whole search to end, and Ray starts its trial processes once.

The Tuner's state lives under `storage_path/<experiment name>`: Tune keeps the newest
checkpoint of each trial, and once the Tuner is done the finished trials' checkpoints are
deleted (a finished trial is never run again). `resume=True` continues an interrupted run with
`Tuner.restore`; MLflow runs are found again by their tags, never duplicated. A distributed
trial's Ray Train run lives in `<that folder>/train/<trial id>`. The storage path is a
local folder or a URI (s3://...: shared storage for a multi-node cluster).

When the Tuner is done, `plan.aggregate` (pure) turns its trials into per-family outcomes,
and each study's family runs (with the importances of their searched parameters) and
comparison are written to MLflow, and each family's model is registered
(`search.registry`: the final runs' models were logged as they ended); an experiment with
several sparsities also gets a `sweep` run, accuracy against sparsity. Under a sparsity
range the comparison is `search.front`'s: each family's front (`pareto.csv`, `pareto.png`)
and hypervolume, and how sparse its re-run point got within `max_drop` of dense.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from oneprune.data import ImageData
from oneprune.train import check_data, check_model
from search import registry, storage, tracking
from search.config import Experiment
from search.faults import kill_driver_if
from search.front import pareto_front, sparsest_then_most_accurate, write_front_report
from search.importance import study_importances
from search.plan import (
    DENSE,
    FINAL,
    METRIC,
    SEARCH,
    TrialRecord,
    accuracy_floor,
    aggregate,
    final_config,
    final_seeds,
    group_of,
    select_best,
    train_config,
)
from search.report import FamilyOutcome, format_params, write_report, write_sweep
from search.searcher import (
    ExperimentSearcher,
    GroupScheduler,
    concurrent_slots,
    optuna_study_name,
)
from search.trainable import run_trial

MAX_FAILURES = 2  # a failed trial is retried this often before it counts as failed


class StudyRefused(ValueError):
    """An experiment that cannot start: it has results and `resume` is off, or one of its
    MLflow experiments is deleted. Raised before anything runs."""


class StudyInterrupted(Exception):
    """Tune stopped before every trial ended (Ctrl+C); its state is saved for --resume."""


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


def _label(experiment: Experiment, config: Mapping) -> str:
    study = experiment.study_name(config["sparsity"])
    return f"{study} {config['family'] if config['part'] == SEARCH else FINAL}"


def _ended(trials, trial) -> list:
    """The trials that have ended, `trial` among them (a callback learns of a trial's end
    before Tune sets its status)."""
    return [t for t in trials if t.status in ("TERMINATED", "ERROR") or t is trial]


def _records(trials, config: Mapping, part: str) -> list[TrialRecord]:
    """`trials` of `config`'s (sparsity, family) and `part`, as records."""
    return [TrialRecord(t.config, t.last_result or {}, t.status == "ERROR") for t in trials
            if t.config["part"] == part and group_of(t.config) == group_of(config)]


class TrialProgress(tune.Callback):
    """One line per finished, retried or failed trial on stdout, and each family's best
    config once its search has ended (Tune's own tables are switched off: hundreds of lines
    for a quick study)."""

    def __init__(self, experiment: Experiment):
        self.experiment = experiment

    def _total(self, trials, config: Mapping) -> int:
        exp = self.experiment
        if config["part"] == SEARCH:
            return exp.trials_per_family
        # Dense, and every family of this sparsity but those whose search found nothing.
        searches = [_records(trials, {**config, "family": family}, SEARCH)
                    for family in exp.families]
        floor = accuracy_floor(exp, _records(trials, {**config, "family": DENSE}, FINAL),
                               config["sparsity"])
        unknown = exp.sparsity_range is not None and floor is None
        failed = sum(len(ended) == exp.trials_per_family and not unknown
                     and select_best(ended, exp.epochs, floor) is None for ended in searches)
        return (len(exp.families) + 1 - failed) * exp.final_seeds

    def _line(self, trials, trial, what: str) -> None:
        label = _label(self.experiment, trial.config)
        ended = sum(_label(self.experiment, t.config) == label for t in _ended(trials, trial))
        result = trial.last_result or {}
        metrics = (f"val_acc {result[METRIC]:.4f} at epoch {result['epoch']}, "
                   f"{result['train_seconds']:.1f} s" if METRIC in result else "no result")
        if "test_acc" in result:
            metrics = f"test_acc {result['test_acc']:.4f}, " + metrics
        if result.get("diverged"):
            what = f"{what} (diverged: non-finite loss)"
        total = self._total(_ended(trials, trial), trial.config)
        print(f"[{label}] {ended}/{total} {trial.trial_id} "
              f"{what}: {metrics}", flush=True)

    def _search_summary(self, trials, trial) -> None:
        """Once the last search trial of a family has ended: its best config."""
        config = trial.config
        if config["part"] != SEARCH:
            return
        ended = _records(_ended(trials, trial), config, SEARCH)
        if len(ended) < self.experiment.trials_per_family:
            return
        exp = self.experiment
        study, family = exp.study_name(config["sparsity"]), config["family"]
        span = exp.sparsity_range
        if span is None:
            best = select_best(ended, exp.epochs)
            if best is None:
                print(f"[{study}] {family}: no trial completed the budget", flush=True)
            else:
                print(f"[{study}] {family}: best val_acc {best.result[METRIC]:.4f} with "
                      f"{format_params(best.config['params'])}", flush=True)
            return
        dense = _records(_ended(trials, trial), {**config, "family": DENSE}, FINAL)
        floor = accuracy_floor(exp, dense, config["sparsity"])
        best = None if floor is None else select_best(ended, exp.epochs, floor)
        if floor is None:
            print(f"[{study}] {family}: search done; its point waits for the dense "
                  f"reference's floor", flush=True)
        elif best is None:
            print(f"[{study}] {family}: no trial within {span.max_drop:g} point(s) of dense "
                  f"(val_acc >= {floor:.4f})", flush=True)
        else:
            print(f"[{study}] {family}: sparsest within {span.max_drop:g} point(s) of dense "
                  f"(val_acc >= {floor:.4f}): val_acc {best.result[METRIC]:.4f} with "
                  f"{format_params(best.config['params'])}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trials, trial, "done")
        self._search_summary(trials, trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._line(trials, trial, "failed, retrying")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, trial, "FAILED")
        self._search_summary(trials, trial)


def tune_path(experiment: Experiment, storage_path: str) -> str:
    """Where the experiment's Tuner keeps its state."""
    return storage.join(storage_path, experiment.name)


def check_can_start(experiment: Experiment, storage_path: str, resume: bool) -> None:
    """Raise `StudyRefused` if a study's MLflow experiment is deleted, or, without
    `resume`, if the experiment already has results (Tune state, MLflow runs, Optuna
    trials)."""
    client = MlflowClient(experiment.tracking_uri)
    names = [experiment.study_name(sparsity) for sparsity in experiment.sparsity]
    found = []
    for name in names:
        mlflow_experiment = client.get_experiment_by_name(name)
        if mlflow_experiment is None:
            continue
        if mlflow_experiment.lifecycle_stage != "active":
            raise StudyRefused(f"MLflow experiment {name!r} is deleted; restore it "
                               f"(mlflow experiments restore) or pass --name to start another")
        if client.search_runs([mlflow_experiment.experiment_id], max_results=1):
            found.append(f"MLflow experiment {name!r}")
    if resume:
        return
    if tune.Tuner.can_restore(tune_path(experiment, storage_path)):
        found.insert(0, tune_path(experiment, storage_path))
    studies = set(optuna.get_all_study_names(experiment.optuna_storage_url))
    found += [f"Optuna study {study!r}" for study in _optuna_studies(experiment)
              if study in studies]
    if found:
        raise StudyRefused(f"experiment {experiment.name!r} already has results "
                           f"({', '.join(found)}): pass --resume to continue it, or --name "
                           f"to start another")


def _optuna_studies(experiment: Experiment) -> list[str]:
    return [optuna_study_name(experiment, (sparsity, family))
            for sparsity in experiment.sparsity for family in experiment.families]


def trial_dirname(trial) -> str:
    """A trial's folder: `<trial id>-<family>-<search|final>` (Tune's default is a long
    string of every parameter)."""
    return f"{trial.trial_id}-{trial.config['family']}-{trial.config['part']}"


def _fresh_tuner(experiment: Experiment, trainable, storage_path: str,
                 callbacks: list[tune.Callback]) -> tune.Tuner:
    """A new Tuner for the whole experiment; Optuna studies left by an attempt that never
    saved any Tune state are dropped first (nothing refers to their trials)."""
    existing = set(optuna.get_all_study_names(experiment.optuna_storage_url))
    for study in _optuna_studies(experiment):
        if study in existing:
            optuna.delete_study(study_name=study, storage=experiment.optuna_storage_url)
    searcher = ExperimentSearcher(experiment, experiment.optuna_storage_url)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher,
                                    scheduler=GroupScheduler(searcher, experiment),
                                    num_samples=-1, reuse_actors=True,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=experiment.name, storage_path=storage_path, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0))


def _trainable(trial_function: Callable, experiment: Experiment, data_ref: ray.ObjectRef,
               train_storage: str, model_storage: str):
    """`trial_function` with its arguments and resources: a single-process trial holds its
    CPUs and GPUs; a distributed one is a light Tune driver (a token of memory, since Tune
    wants some request) whose Ray Train workers hold them."""
    resources = experiment.resources
    if resources.workers_per_trial == 1:
        request = {"CPU": resources.cpus_per_trial, "GPU": resources.gpus_per_trial}
        data = data_ref
    else:
        request = {"CPU": 0, "memory": 1}
        data = (data_ref,)  # workers fetch it; the tuple keeps Tune from resolving it
    return tune.with_resources(
        tune.with_parameters(trial_function, experiment=experiment, data=data,
                             train_storage=train_storage, model_storage=model_storage),
        request)


def _fit(tuner: tune.Tuner, train_storage: str | None) -> list[TrialRecord]:
    """`tuner.fit()` as records, raising `StudyInterrupted` if Tune was stopped before its
    trials ended (Tune returns normally after a Ctrl+C).

    Then the checkpoint of every finished trial is deleted (and, for distributed trials,
    its Ray Train run under `train_storage`): only a trial that may run again needs one,
    and a finished trial never does. A failed trial keeps its checkpoint for `--resume`.
    (Not earlier: until Tune's next state snapshot, a restore would still resume a trial
    that has just finished from its checkpoint.)"""
    results = tuner.fit()
    if results.num_terminated + results.num_errors < len(results) or not all(
            result.config for result in results):  # a trial that never wrote its files
        raise StudyInterrupted(f"{results.experiment_path} stopped before its trials ended")
    records = []
    for result in results:
        if result.error is None and result.checkpoint is not None:
            with contextlib.suppress(FileNotFoundError):
                result.checkpoint.filesystem.delete_dir(result.checkpoint.path)
        trial_id = (result.metrics or {}).get("trial_id")
        if result.error is None and train_storage is not None and trial_id:
            storage.delete(storage.join(train_storage, trial_id))
        history = result.metrics_dataframe
        rows = [] if history is None or "epoch" not in history else (
            # A trial retried from a checkpoint has its first attempt's rows too.
            history.drop_duplicates("epoch", keep="last").sort_values("epoch")
            .to_dict("records"))
        records.append(TrialRecord(result.config, result.metrics or {},
                                   result.error is not None, rows))
    return records


def _check_complete(experiment: Experiment, records: list[TrialRecord]) -> None:
    """Raise `StudyInterrupted` unless every search ran its budget and every best config and
    dense reference ran every final seed (a Tuner stopped between two trials ends with all
    of its trials finished, yet short)."""
    seeds = set(final_seeds(experiment))
    for sparsity in experiment.sparsity:
        floor = accuracy_floor(experiment, records, sparsity)
        for family in (*experiment.families, DENSE):
            group = (sparsity, family)
            searched = [r for r in records
                        if r.config["part"] == SEARCH and group_of(r.config) == group]
            finals = {r.config["seed"] for r in records
                      if r.config["part"] == FINAL and group_of(r.config) == group}
            short = family != DENSE and len(searched) < experiment.trials_per_family
            wants_finals = family == DENSE or select_best(searched, experiment.epochs, floor)
            if short or (wants_finals and finals != seeds):
                raise StudyInterrupted(f"the search or final runs of {family} at "
                                       f"{sparsity:g} did not all run")


def _record_study(client: MlflowClient, experiment: Experiment, sparsity: float,
                  experiment_id: str, family_run_ids: Mapping[tuple[float, str], str],
                  outcomes: list[FamilyOutcome], floor: float | None) -> StudyResult:
    """Close each family run with its search metrics and best config (the dense
    reference's with its config and mean test accuracy), and log the comparison of the
    study at `sparsity` (`floor`: a sparsity range's accuracy floor, else None)."""
    name = experiment.study_name(sparsity)
    span = experiment.sparsity_range
    test_acc_means = {o.family: sum(o.test_accs) / len(o.test_accs)
                      for o in outcomes if o.test_accs}
    for outcome in outcomes:
        if outcome.family == DENSE:
            tracking.finish_family(
                client, family_run_ids[(sparsity, DENSE)], experiment.base_config().to_dict(),
                {"test_acc_mean": test_acc_means[DENSE]} if DENSE in test_acc_means else {})
            continue
        outcome.importances = study_importances(
            experiment.optuna_storage_url, optuna_study_name(experiment, (sparsity,
                                                                           outcome.family)))
        run_id = family_run_ids[(sparsity, outcome.family)]
        metrics = {"trials": outcome.trials, "trials_completed": outcome.trials_completed,
                   "trials_diverged": outcome.trials_diverged,
                   "search_seconds": outcome.search_seconds}
        if span is not None:
            metrics.update(hypervolume=outcome.hypervolume,
                           trials_feasible=sum(p.feasible for p in outcome.points),
                           front_points=len(pareto_front(outcome.points)))
        if outcome.schedule is None:
            if span is not None and outcome.trials_completed:  # none within the drop
                tracking.finish_family(client, run_id, {}, metrics)
            else:
                tracking.fail_family(client, run_id, metrics)
            continue
        best = train_config(experiment, final_config((sparsity, outcome.family),
                                                     experiment.search.seed,
                                                     outcome.best_params))
        if span is not None:
            metrics["sparsity_reached"] = best.schedule.final_sparsity
        tracking.finish_family(client, run_id, best.to_dict(), {
            "best_val_acc": outcome.best_val_acc, **metrics,
            **{f"importance.{param}": value for param, value in outcome.importances.items()}})
    headline = {f"test_acc_mean.{family}": mean for family, mean in test_acc_means.items()}
    with tempfile.TemporaryDirectory() as folder:
        if span is None:
            title = (f"{name}: {experiment.model} on {experiment.dataset} at "
                     f"{sparsity:.0%} sparsity, {experiment.epochs} epochs")
            table = write_report(outcomes, Path(folder), title)
        else:
            title = (f"{name}: {experiment.model} on {experiment.dataset}, how sparse within "
                     f"{span.max_drop:g} point(s) of dense (sparsity searched in "
                     f"[{span.min:.0%}, {span.max:.0%}]), {experiment.epochs} epochs")
            table = write_front_report(outcomes, Path(folder), title, floor=floor,
                                       max_drop=span.max_drop)
            headline.update({f"hypervolume.{o.family}": o.hypervolume for o in outcomes
                             if o.family != DENSE})
            headline.update({f"sparsity_reached.{o.family}": o.schedule.final_sparsity
                             for o in outcomes if o.schedule is not None})
            if math.isfinite(floor):
                headline["accuracy_floor"] = floor
        tracking.finish_report_run(client, experiment_id, "comparison", folder, headline)

    def final_run(family: str, seed: int) -> str:
        return tracking.find_runs(client, experiment_id, {
            tracking.ROLE: "final", tracking.FAMILY: family, tracking.SEED: str(seed)}
        )[0].info.run_id

    models = registry.hand_over(experiment.tracking_uri, name, outcomes, final_run, title,
                                rank=None if span is None else sparsest_then_most_accurate,
                                registered=lambda: kill_driver_if(experiment.faults,
                                                                  "registering"))
    return StudyResult(name, sparsity, title, table, outcomes, experiment_id, models)


def load_data(experiment: Experiment, progress: bool = False) -> ImageData:
    """The experiment's dataset and splits, checked against its model (`ValueError`: files
    missing or unreadable, a model that cannot be built for them, takes no such images,
    has nothing to prune or cannot be pruned to a sparsity by one of the allocations);
    `progress`: a bar while an image folder is first decoded."""
    data = experiment.dense_config.load_data(progress=progress)
    check_model(experiment.base_config(experiment.families[0], experiment.sparsity[0]), data,
                sparsities=experiment.trained_sparsities, allocations=experiment.allocations)
    return data


def run_experiment(experiment: Experiment, data: ImageData, *, storage_path: str,
                   resume: bool = False, echo: Callable[[str], None] = print,
                   trial_function: Callable = run_trial) -> list[StudyResult]:
    """Run (or resume) every study of `experiment` in one Tuner on the connected Ray
    cluster; returns each study's verdict. `data` comes from `load_data(experiment)`.
    `trial_function` runs one trial (`trainable.run_trial`'s signature); benchmarks and
    tests pass a stand-in that sleeps instead of training."""
    check_data(experiment.base_config(), data)
    check_can_start(experiment, storage_path, resume)
    # MLflow's model logging and registry read the process's tracking URI in places.
    mlflow.set_tracking_uri(experiment.tracking_uri)
    client = MlflowClient(experiment.tracking_uri)
    experiment_ids = {sparsity: tracking.open_experiment(client,
                                                         experiment.study_name(sparsity))
                      for sparsity in experiment.sparsity}
    family_run_ids = {
        (sparsity, family): tracking.ensure_run(
            client, experiment_ids[sparsity],
            {tracking.ROLE: "family", tracking.FAMILY: family}, family)
        for sparsity in experiment.sparsity for family in (*experiment.families, DENSE)}
    path = tune_path(experiment, storage_path)
    distributed = experiment.resources.workers_per_trial > 1
    train_storage, model_storage = storage.join(path, "train"), storage.join(path, "models")
    trainable = _trainable(trial_function, experiment, ray.put(data), train_storage,
                           model_storage)
    slots = concurrent_slots(experiment)
    span = experiment.sparsity_range
    over, chosen = ("", "each best config") if span is None else (
        f" over sparsity [{span.min:.0%}, {span.max:.0%}]",
        f"each family's sparsest point within {span.max_drop:g} point(s) of dense,")
    echo(f"[{experiment.name}] {len(experiment.sparsity)} x {len(experiment.families)} "
         f"searches of {experiment.trials_per_family} trials x {experiment.epochs} epochs"
         f"{over}, then {experiment.final_seeds} seeds of {chosen} and of dense; one "
         f"Tuner, {slots} slots")
    # Tune asks a custom searcher for one trial at a time unless told otherwise: let it
    # keep a trial waiting for every slot, so a freed slot starts its next trial at once.
    # With `num_to_keep=1` Tune snapshots its state at every checkpoint, by design; its
    # warning about frequent snapshots is muted. Tune's automatic loggers are replaced by
    # the JSON and CSV ones: no TensorBoard writer thread per trial (MLflow has the curves).
    # MLflow's download bars (it copies files as it logs a model) would flood the output.
    # Ctrl+C raises KeyboardInterrupt at once: Tune's own handler would let the Tuner end
    # "normally" with the trials it stopped marked failed, which read as a finished study.
    with tracking.environment(TUNE_MAX_PENDING_TRIALS_PG=str(max(slots, 1) + 1),
                              TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S="0",
                              TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1",
                              TUNE_DISABLE_SIGINT_HANDLER="1",
                              MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
        if resume and storage.has_tune_state(path):
            echo(f"[{experiment.name}] resuming from {path}")
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        else:
            storage.delete(path)  # nothing to resume from: a Tuner killed before its first state
            tuner = _fresh_tuner(experiment, trainable, storage_path, [
                tracking.trial_logger(experiment, experiment_ids, family_run_ids, data,
                                      model_storage),
                TrialProgress(experiment), JsonLoggerCallback(), CSVLoggerCallback()])
        records = _fit(tuner, train_storage if distributed else None)
    storage.delete(model_storage)  # every final run's model is in MLflow now
    _check_complete(experiment, records)
    outcomes = aggregate(experiment, records)
    studies = [_record_study(client, experiment, sparsity, experiment_ids[sparsity],
                             family_run_ids, outcomes[sparsity],
                             accuracy_floor(experiment, records, sparsity))
               for sparsity in experiment.sparsity]
    if len(studies) > 1:
        with tempfile.TemporaryDirectory() as folder:
            write_sweep([(study.sparsity, study.outcomes) for study in studies],
                        Path(folder), sweep_title(experiment))
            tracking.finish_report_run(
                client, tracking.open_experiment(client, experiment.name), "sweep", folder)
    return studies


def sweep_title(experiment: Experiment) -> str:
    """The heading of an experiment's accuracy-against-sparsity table and figure."""
    return (f"{experiment.name}: {experiment.model} on {experiment.dataset}, test accuracy "
            f"against sparsity, {experiment.epochs} epochs")
