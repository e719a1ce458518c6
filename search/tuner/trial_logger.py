"""Each Tune trial of a study mirrored into an MLflow run, live, from the driver.

`trial_logger` builds the `TrialLogger` callback of an experiment's Tuner: a search trial's
run (role=trial) is found by its Tune trial id, a final run's (role=final) by family and
seed, each a child of its family's run, with the whole training config as params, metrics
per epoch (step = epoch), the dataset as an MLflow dataset input (`dataset`: name, digest,
split sizes), and for a final run its trained model (`search.tracking.registry.log_final_model`).
Writes go through one writer thread, in order, so Tune's event loop never waits for the
tracking store; a resumed study finds its runs again and logs each step once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from ray import tune

from oneprune.data import ImageData
from search.experiment.schema import Experiment
from search.experiment.train_configs import base_config
from search.plan.trials import (
    AS_GIVEN,
    CONFIRM,
    FINAL,
    SEARCH,
    START,
    group_of,
    train_config,
)
from search.tracking import registry
from search.tracking.runs import (
    DIVERGED,
    ERROR,
    FAMILY,
    INIT_DIGEST,
    METRICS,
    PARENT,
    ROLE,
    SEED,
    STATUS,
    STOPPED_EARLY,
    TEACHER_DIGEST,
    TRIAL_ID,
    TRIAL_NUMBER,
    WORKERS,
    find_runs,
    flat_params,
    metrics_at,
    source_tags,
)
from search.tuner import storage


def dataset(data: ImageData, experiment: Experiment) -> Dataset:
    """`data` as an MLflow dataset: its name, a digest of its contents (every split's images
    and labels, read once), where it came from and its split sizes."""
    digest = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        for tensor in (split.images, split.labels):
            digest.update(tensor.contiguous().numpy())  # its buffer, not a copy
    cfg = base_config(experiment)
    source = {"dataset": data.name, "data_dir": cfg.data_dir, "split_seed": data.split_seed,
              "val_fraction": data.val_fraction, "image_size": data.image_size}
    profile = {"train": len(data.train), "val": len(data.val), "test": len(data.test),
               "classes": data.num_classes, "channels": data.in_channels,
               "image_size": data.image_size}
    return Dataset(name=data.name, digest=digest.hexdigest()[:16], source_type="local",
                   source=json.dumps(source), profile=json.dumps(profile))


@dataclass(frozen=True)
class RunSpec:
    """What a Tune trial's MLflow run is: its MLflow experiment, identity tags, other tags,
    params, name."""

    experiment_id: str
    identity: dict[str, str]
    run_name: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    inputs: tuple[DatasetInput, ...] = ()


class TrialLogger(tune.Callback):
    """Mirror each Tune trial into an MLflow run, live, from the driver.

    `describe(trial_id, trial.config)` says which run a trial is. `scopes` (pairs of an
    MLflow experiment id and tags) select the runs this logger owns: when the Tuner ends,
    owned runs that match no trial (a trial the interrupted driver started after Tune's
    last state snapshot) are deleted, so a resumed study keeps exactly one run per trial.
    `log_model(run_id, config, folder)` logs the model a final run left in
    `models_root/<trial id>` once it has ended, and the files are deleted; when the Tuner
    ends, so are those of every ended final run whose run has no model yet (after a
    resume: runs that ended before the interruption). The writes run in order on a writer
    thread, and `on_experiment_end` waits for them (and raises a failed one): the study's
    own reads after `Tuner.fit` see everything. The callback pickles without its client and
    thread (Tune stores it for `Tuner.restore`).
    """

    def __init__(self, tracking_uri: str, scopes: Sequence[tuple[str, Mapping[str, str]]],
                 describe: Callable[[str, Mapping[str, Any]], RunSpec], epochs: int,
                 log_model: Callable[[str, Mapping[str, Any], str], Any] | None = None,
                 models_root: str = ""):
        self.tracking_uri = tracking_uri
        self.scopes = [(experiment_id, dict(tags)) for experiment_id, tags in scopes]
        self.describe = describe
        self.epochs = epochs
        self.log_model = log_model
        self.models_root = models_root
        self._client: MlflowClient | None = None
        self._runs: dict[str, tuple[str, int]] = {}  # trial id -> (run id, last step)
        self._writes: queue.Queue | None = None
        self._error: Exception | None = None

    def __getstate__(self):
        return {**self.__dict__, "_client": None, "_runs": {}, "_writes": None,
                "_error": None}

    # Tune's event loop (which starts the next trial, takes the next report) must not wait
    # for the tracking store: the bench measured ~0.3 s of MLflow calls per trial.
    # The writer is not a daemon thread: the interpreter's exit (after a Ctrl+C) would kill
    # a daemon in the middle of a write, and one killed inside torch (logging a model)
    # aborts the process. It ends after the write in flight once the main thread has ended;
    # the writes it then drops are made good by the resumed study's reconcile.

    def _submit(self, write: Callable[[], None]) -> None:
        if self._writes is None:
            self._writes = queue.Queue()
            threading.Thread(target=self._write_until_exit, name="mlflow-writer").start()
        self._writes.put(write)

    def _write_until_exit(self) -> None:
        while threading.main_thread().is_alive():
            try:
                write = self._writes.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                write()
            except Exception as error:  # raised again, with the first, in `flush`
                self._error = self._error or error
            finally:
                self._writes.task_done()

    def flush(self) -> None:
        """Wait until every submitted write is done; raise the first that failed."""
        if self._writes is not None:
            self._writes.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _run_of(self, trial_id: str, config: Mapping[str, Any]) -> tuple[str, int]:
        if trial_id not in self._runs:
            spec = self.describe(trial_id, config)
            found = find_runs(self.client, spec.experiment_id, spec.identity)
            run = found[0] if found else self.client.create_run(
                spec.experiment_id, tags={**source_tags(), **spec.identity, **spec.tags},
                run_name=spec.run_name)
            # A found run may lack them: a driver killed between creating it and this.
            missing = [Param(k, v) for k, v in spec.params.items() if k not in run.data.params]
            if missing:
                self.client.log_batch(run.info.run_id, params=missing)
            if spec.inputs and not run.inputs.dataset_inputs:
                self.client.log_inputs(run.info.run_id, datasets=list(spec.inputs))
            history = self.client.get_metric_history(run.info.run_id, "val_acc") if found \
                else []
            self._runs[trial_id] = (run.info.run_id, max((m.step for m in history), default=0))
        return self._runs[trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        trial_id, config = trial.trial_id, dict(trial.config)

        def write():
            run_id, _ = self._run_of(trial_id, config)
            self.client.update_run(run_id, status="RUNNING")  # again, if resumed
        self._submit(write)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        trial_id, config, result = trial.trial_id, dict(trial.config), dict(result)
        self._submit(lambda: self._log_result(trial_id, config, result))

    def _log_result(self, trial_id: str, config: Mapping[str, Any],
                    result: Mapping[str, Any]) -> None:
        """Log one epoch's result, unless its step was (before an interruption)."""
        run_id, last_step = self._run_of(trial_id, config)
        step = int(result["epoch"])
        if step <= last_step:
            return
        metrics = {key: result[key] for key in METRICS
                   if key in result and not math.isnan(float(result[key]))}
        self.client.log_batch(run_id, metrics=metrics_at(metrics, step))
        if result.get("diverged"):
            self.client.set_tag(run_id, STATUS, DIVERGED)
        self._runs[trial_id] = (run_id, step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        ended = self._ended(trial, failed=False)
        self._submit(lambda: self._close(*ended))

    def on_trial_error(self, iteration, trials, trial, **info):
        ended = self._ended(trial, failed=True)  # its status is set after this call
        self._submit(lambda: self._close(*ended))

    def _ended(self, trial, failed: bool) -> tuple:
        """What closing an ended trial's run needs, read in Tune's thread."""
        error = str(trial.error_file or "see the Tune logs") if failed else None
        return (trial.trial_id, dict(trial.config), dict(trial.last_result or {}), error,
                None if failed else self._model_of(trial))

    def _close(self, trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any],
               error: str | None, model) -> None:
        """Close a trial's run as Tune ended it: FAILED with the error file, or FINISHED
        (its last result logged if it was not, tagged if ASHA stopped it early) and, for a
        final run, its model logged."""
        run_id, _ = self._run_of(trial_id, config)
        if error is not None:
            self.client.set_tag(run_id, ERROR, error)
            self.client.set_terminated(run_id, "FAILED")
            return
        if "epoch" in result:
            self._log_result(trial_id, config, result)
        for key, tag in (("init_digest", INIT_DIGEST), ("teacher_digest", TEACHER_DIGEST)):
            if result.get(key):  # what it started from (not scratch), what it distilled from
                self.client.set_tag(run_id, tag, result[key])
        last_step = self._runs[trial_id][1]
        if last_step < self.epochs and not result.get("diverged"):
            self.client.set_tag(run_id, STOPPED_EARLY, f"after epoch {last_step}")
        self.client.set_terminated(run_id, "FINISHED")
        if model is not None:
            self._log_model(run_id, config, model)

    def _model_of(self, trial) -> str | None:
        """Where a final run left its trained model (None for anything else, and for the
        model as given, which the study did not train)."""
        if self.log_model is None or trial.config["part"] != FINAL or (
                trial.last_result or {}).get("test_acc") is None \
                or trial.config["family"] == AS_GIVEN:
            return None
        return storage.join(self.models_root, trial.trial_id)

    def _log_model(self, run_id: str, config: Mapping[str, Any], path: str) -> None:
        """Log the model at `path` (`log_model` keeps a run's model if it has one; no files
        are there for a stand-in trial), then delete the files."""
        if storage.exists(path):
            with storage.local_copy(path) as folder:
                self.log_model(run_id, config, folder)
        storage.delete(path)

    def on_experiment_end(self, trials, **info):
        known = [(trial.trial_id, dict(trial.config)) for trial in trials]
        ended = [self._ended(trial, failed=trial.status == "ERROR") for trial in trials
                 if trial.status in ("TERMINATED", "ERROR")]

        def reconcile():
            kept = {self._run_of(trial_id, config)[0] for trial_id, config in known}
            status = {}
            for experiment_id, tags in self.scopes:
                for run in find_runs(self.client, experiment_id, tags):
                    if run.info.run_id not in kept:
                        self.client.delete_run(run.info.run_id)
                    status[run.info.run_id] = run.info.status
            # Trials that ended before an interruption whose run the killed driver had not
            # closed yet, or whose model it had not logged: closed now, as Tune ended them.
            for trial_id, config, result, error, model in ended:
                run_id = self._run_of(trial_id, config)[0]
                if status.get(run_id) == "RUNNING" or (
                        model is not None and registry.logged_model_id(
                            self.tracking_uri, run_id) is None):
                    self._close(trial_id, config, result, error, model)
        self._submit(reconcile)
        self.flush()


def describe_run(trial_id: str, config: Mapping[str, Any], *, experiment: Experiment,
                 experiment_ids: Mapping[float, str],
                 family_run_ids: Mapping[tuple[float, str], str],
                 inputs: Mapping[str, DatasetInput]) -> RunSpec:
    """A trial's run, in the MLflow experiment of its sparsity, child of its family run
    (or of the dense reference's), with the whole training config as params and the
    dataset input of its part (`inputs`: by "search" / "final"). A search trial is
    identified by its Tune trial id; a final run by family and seed, so that it is found
    again when it runs anew after an interruption."""
    family = config["family"]
    train = train_config(experiment, config).to_dict()
    if config["part"] == SEARCH:
        identity = {ROLE: "trial", FAMILY: family, TRIAL_ID: trial_id}
        name = f"trial {trial_id}"
    elif config["part"] == CONFIRM:  # a search trial's config re-trained with a fresh seed
        identity = {ROLE: CONFIRM, FAMILY: family, SEED: str(config["seed"]),
                    TRIAL_NUMBER: str(config["number"])}
        name = f"{family} trial {config['number']} seed {config['seed']} (confirmation)"
    else:  # a final run, or the dense run arms from dense start their search from
        identity = {ROLE: config["part"], FAMILY: family, SEED: str(config["seed"])}
        name = f"{family} seed {config['seed']}" + (
            " (start of the search)" if config["part"] == START else "")
    parent = family_run_ids.get(group_of(config))
    tags = {WORKERS: str(experiment.resources.workers_per_trial)}
    if parent:
        tags[PARENT] = parent
    return RunSpec(experiment_ids[config["sparsity"]], identity, name,
                   params=flat_params(train), tags=tags, inputs=(inputs[config["part"]],))


def log_final_model(run_id: str, config: Mapping[str, Any], folder: str, *,
                    experiment: Experiment, example: np.ndarray) -> None:
    """`registry.log_final_model` for a final run of `experiment` (`TrialLogger.log_model`)."""
    registry.log_final_model(experiment.tracking_uri, run_id, folder,
                             name=f"{config['family']}-seed{config['seed']}",
                             example=example)


def trial_logger(experiment: Experiment, experiment_ids: Mapping[float, str],
                 family_run_ids: Mapping[tuple[float, str], str],
                 data: ImageData, models_root: str) -> TrialLogger:
    """The logger of every trial of an experiment's Tuner: search trials and final runs
    of every sparsity (`experiment_ids`: its MLflow experiment per sparsity), which train
    on `data` (a search trial on its train and val splits, a final run on all three); it
    logs the model each final run leaves under `models_root`, with two test images as the
    input example."""
    scopes = [(experiment_id, {ROLE: role}) for experiment_id in experiment_ids.values()
              for role in ("trial", FINAL, START, CONFIRM)]
    trained_on = dataset(data, experiment)
    inputs = {part: DatasetInput(trained_on, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
              for part, context in ((SEARCH, "training"), (FINAL, "training+testing"),
                                    (START, "training"), (CONFIRM, "training"))}
    example = (data.test.images[:2].float() / 255.0).numpy()
    return TrialLogger(experiment.tracking_uri, scopes,
                       functools.partial(describe_run, experiment=experiment,
                                         experiment_ids=dict(experiment_ids),
                                         family_run_ids=dict(family_run_ids),
                                         inputs=inputs),
                       experiment.epochs,
                       functools.partial(log_final_model, experiment=experiment,
                                         example=example), models_root)
