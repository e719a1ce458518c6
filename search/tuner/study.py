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
trial's Ray Train run lives in `<that folder>/train/<trial id>`, and the weights runs start
or distil from in `<that folder>/starts/` until the verdict is written. The storage path is
a local folder or a URI (s3://...: shared storage for a multi-node cluster).

It reads start -> fit -> verdict: `check_can_start` refuses what cannot start (before
anything runs), `_fresh_tuner` or `Tuner.restore` and `_fit` run the trials, then
`search.plan.outcomes.aggregate` (pure) turns them into per-family outcomes and
`search.tracking.record` writes each study's verdict to MLflow and registers its models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import mlflow
import optuna
import ray
import torch
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from oneprune.cost import SPARSITY, measure_costs
from oneprune.data import ImageData
from oneprune.distill import frozen_teacher
from oneprune.starts import read_weights, weights_digest, write_weights
from oneprune.train import check_data, check_model, new_model_unseeded, new_pruner
from search.environment import environment
from search.experiment.schema import Experiment
from search.experiment.train_configs import base_config
from search.plan.outcomes import (
    TrialRecord,
    accuracy_floor,
    aggregate,
    chosen_point,
    confirmation_configs,
)
from search.plan.trials import (
    AS_GIVEN,
    CONFIRM,
    DENSE,
    FINAL,
    SEARCH,
    START,
    final_seeds,
    group_of,
    optuna_study_name,
)
from search.tracking import runs
from search.tracking.record import StudyResult, record_study, record_sweep
from search.tuner import storage
from search.tuner.faults import kill_driver_if
from search.tuner.progress import TrialProgress
from search.tuner.scheduler import GroupScheduler
from search.tuner.searcher import ExperimentSearcher, concurrent_slots
from search.tuner.trainable import run_trial
from search.tuner.trial_logger import trial_logger

MAX_FAILURES = 2  # a failed trial is retried this often before it counts as failed


class StudyRefused(ValueError):
    """An experiment that cannot start: it has results and `resume` is off, or one of its
    MLflow experiments is deleted. Raised before anything runs."""


class StudyInterrupted(Exception):
    """Tune stopped before every trial ended (Ctrl+C); its state is saved for --resume."""


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
    if tune.Tuner.can_restore(storage.tune_path(storage_path, experiment.name)):
        found.insert(0, storage.tune_path(storage_path, experiment.name))
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
               folders: storage.StudyFolders):
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
                             folders=folders),
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
    """Raise `StudyInterrupted` unless every search ran its budget, its confirmation runs
    ran, every chosen config and dense reference ran every final seed, and what the study
    starts from ran (a Tuner stopped between two trials ends with all of its trials
    finished, yet short)."""
    seeds = set(final_seeds(experiment))
    for sparsity in experiment.sparsity:
        floor = accuracy_floor(experiment, records, sparsity)
        extra = ([(START, DENSE, experiment.search.seed)] if experiment.keeps_dense else []) \
            + ([(FINAL, AS_GIVEN, min(seeds))] if experiment.given else [])
        for part, family, seed in extra:
            if not any(r.config["part"] == part and group_of(r.config) == (sparsity, family)
                       and r.config["seed"] == seed for r in records):
                raise StudyInterrupted(f"the {family} run with seed {seed} at {sparsity:g} "
                                       f"did not run")
        for family in (*experiment.families, DENSE):
            group = (sparsity, family)
            searched = [r for r in records
                        if r.config["part"] == SEARCH and group_of(r.config) == group]
            finals = {r.config["seed"] for r in records
                      if r.config["part"] == FINAL and group_of(r.config) == group}
            short = family != DENSE and len(searched) < experiment.trials_per_family
            confirming = [r for r in records
                          if r.config["part"] == CONFIRM and group_of(r.config) == group]
            unconfirmed = family != DENSE and floor is not None and bool(
                confirmation_configs(experiment, [*searched, *confirming], floor))
            wants_finals = family == DENSE or chosen_point(experiment, [*searched,
                                                                        *confirming], floor)
            if short or unconfirmed or (wants_finals and finals != seeds):
                raise StudyInterrupted(f"the search or final runs of {family} at "
                                       f"{sparsity:g} did not all run")


def load_data(experiment: Experiment, progress: bool = False,
              given: Mapping[str, torch.Tensor] | None = None,
              teacher: Mapping[str, torch.Tensor] | None = None) -> ImageData:
    """The experiment's dataset and splits, checked against its model (`ValueError`: files
    missing or unreadable, a model that cannot be built for them, does not take the `given`
    weights the study starts from, takes no such images, has nothing to prune or cannot be
    pruned to a sparsity by one of the allocations); `progress`: a bar while an image
    folder is first decoded."""
    data = base_config(experiment).load_data(progress=progress)
    check_model(base_config(experiment, experiment.families[0], experiment.sparsity[0]), data,
                sparsities=experiment.trained_sparsities, allocations=experiment.allocations,
                initial=given)
    if teacher is not None:  # a teacher of the same model, so of the same classes
        frozen_teacher(new_model_unseeded(base_config(experiment), data), teacher,
                       f"teacher {experiment.teacher_source!r}")
    if experiment.measures_cost:
        _check_measurable(experiment, data)
    return data


def _check_measurable(experiment: Experiment, data: ImageData) -> None:
    """Measure the model, pruned to the range's upper end, as every trial will (briefly
    where it is timed): a model the runtime cannot take is refused here, in one line, not
    in every trial."""
    cfg = base_config(experiment, experiment.families[0], experiment.sparsity[0])
    model = new_model_unseeded(cfg, data)
    new_pruner(cfg, model, data).prune_to(cfg.schedule.final_sparsity)
    latency = experiment.latency and dataclasses.replace(
        experiment.latency, batch=1, rounds=3, warmup=0)
    try:
        measure_costs(model, granularity=cfg.granularity, mean=data.mean, std=data.std,
                      image_size=data.image_size, latency=latency)
    except ValueError as error:
        raise ValueError(f"cost: {experiment.cost} cannot measure {cfg.model!r}: "
                         f"{error}") from None


def _keep_weights(role: str, source: str | None, weights: Mapping[str, torch.Tensor] | None,
                  path: str, name: str, echo: Callable[[str], None]) -> None:
    """Store the weights `source` names (the study's `init` or `teacher`: the `role`) at
    `path`, where every run reads them, once: a resumed study goes on from the weights it
    started with, even if the file changed since (it says so)."""
    if source is None:
        return
    if weights is None:
        raise StudyRefused(f"{role} {source!r} names weights, but none were read")
    if storage.exists(path):
        with storage.local_copy(path) as local:
            kept = weights_digest(read_weights(local))
        if kept != weights_digest(weights):
            echo(f"[{name}] {role} {source!r} changed since the study started; it goes on "
                 f"from the weights it started with ({kept[:12]})")
        return
    with tempfile.TemporaryDirectory() as folder:
        storage.upload_file(write_weights(weights, Path(folder) / "w.safetensors"), path)


def run_experiment(experiment: Experiment, data: ImageData, *, storage_path: str,
                   resume: bool = False, echo: Callable[[str], None] = print,
                   trial_function: Callable = run_trial,
                   given: Mapping[str, torch.Tensor] | None = None,
                   teacher: Mapping[str, torch.Tensor] | None = None) -> list[StudyResult]:
    """Run (or resume) every study of `experiment` in one Tuner on the connected Ray
    cluster; returns each study's verdict. `data` comes from `load_data(experiment)`,
    `given` are the weights `init` names, `teacher` those `teacher` names
    (`search.tracking.downloads.given_weights`).
    `trial_function` runs one trial (`trainable.run_trial`'s signature); benchmarks and
    tests pass a stand-in that sleeps instead of training."""
    check_data(base_config(experiment), data)
    check_can_start(experiment, storage_path, resume)
    # MLflow's model logging and registry read the process's tracking URI in places.
    mlflow.set_tracking_uri(experiment.tracking_uri)
    client = MlflowClient(experiment.tracking_uri)
    experiment_ids = {sparsity: runs.open_experiment(client,
                                                         experiment.study_name(sparsity))
                      for sparsity in experiment.sparsity}
    family_run_ids = {
        (sparsity, family): runs.ensure_run(
            client, experiment_ids[sparsity],
            {runs.ROLE: "family", runs.FAMILY: family}, family)
        for sparsity in experiment.sparsity for family in (
            *experiment.families, DENSE, *([AS_GIVEN] if experiment.given else []))}
    folders = storage.StudyFolders.of(storage_path, experiment.name)
    path = folders.tune
    distributed = experiment.resources.workers_per_trial > 1
    trainable = _trainable(trial_function, experiment, ray.put(data), folders)
    slots = concurrent_slots(experiment)
    span = experiment.sparsity_range
    over, chosen = ("", "each best config") if span is None else (
        f" over sparsity [{span.min:.0%}, {span.max:.0%}]"
        + ("" if experiment.cost == SPARSITY else f" against {experiment.cost}"),
        f"each family's {'sparsest' if experiment.cost == SPARSITY else 'cheapest'} point "
        f"within {span.max_drop:g} point(s) of dense"
        + (f" (confirmed with {experiment.confirm.seeds} seeds: up to "
           f"{experiment.confirm.candidates} points)," if experiment.confirm.candidates
           else ","))
    echo(f"[{experiment.name}] {len(experiment.sparsity)} x {len(experiment.families)} "
         f"searches of {experiment.trials_per_family} trials x {experiment.epochs} epochs"
         f"{over}, then {experiment.final_seeds} seeds of {chosen} and of dense; one "
         f"Tuner, {slots} slots")
    if experiment.cost_note:
        echo(f"[{experiment.name}] {experiment.cost_note}")
    # Tune asks a custom searcher for one trial at a time unless told otherwise: let it
    # keep a trial waiting for every slot, so a freed slot starts its next trial at once.
    # With `num_to_keep=1` Tune snapshots its state at every checkpoint, by design; its
    # warning about frequent snapshots is muted. Tune's automatic loggers are replaced by
    # the JSON and CSV ones: no TensorBoard writer thread per trial (MLflow has the curves).
    # MLflow's download bars (it copies files as it logs a model) would flood the output.
    # Ctrl+C raises KeyboardInterrupt at once: Tune's own handler would let the Tuner end
    # "normally" with the trials it stopped marked failed, which read as a finished study.
    with environment(TUNE_MAX_PENDING_TRIALS_PG=str(max(slots, 1) + 1),
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
                trial_logger(experiment, experiment_ids, family_run_ids, data,
                             folders.models),
                TrialProgress(experiment), JsonLoggerCallback(), CSVLoggerCallback()])
        _keep_weights("init", experiment.init if experiment.given else None, given,
                      folders.given_weights, experiment.name, echo)
        _keep_weights("teacher", experiment.teacher_source, teacher, folders.teacher_weights,
                      experiment.name, echo)
        records = _fit(tuner, folders.train if distributed else None)
    storage.delete(folders.models)  # every final run's model is in MLflow now
    _check_complete(experiment, records)
    outcomes = aggregate(experiment, records)
    studies = [record_study(client, experiment, sparsity, experiment_ids[sparsity],
                            family_run_ids, outcomes[sparsity],
                            accuracy_floor(experiment, records, sparsity),
                            registered=lambda: kill_driver_if(experiment.faults,
                                                              "registering"))
               for sparsity in experiment.sparsity]
    if len(studies) > 1:
        record_sweep(client, experiment, studies)
    storage.delete(folders.starts)  # every run that starts from them has ended
    return studies
