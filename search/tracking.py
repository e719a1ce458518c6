"""The MLflow structure of a study, written by the driver only (sqlite takes one writer).

One MLflow experiment per study. Every run is tagged with `oneprune.role` and
`oneprune.family`:

    role=family      one parent run per family: its best parameters and metrics
    role=trial       one child run per Tune trial (mlflow.parentRunId = its family run):
                     params = the whole training config, metrics per epoch (step = epoch),
                     tags oneprune.workers (DDP processes) and, for a run whose loss went
                     NaN/inf, oneprune.status=diverged
    role=final       the seed re-runs of each family's best config, and the dense reference
    role=comparison  the table (comparison.md / .csv) and plots (schedules.png, curves.png)

Runs are found again by identity tags before one is created, and a step is logged once,
so a resumed study continues its runs instead of duplicating them.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray import tune

from oneprune.train import TrainConfig
from search.space import trial_config

ROLE = "oneprune.role"
FAMILY = "oneprune.family"
TRIAL_ID = "oneprune.trial_id"
SEED = "oneprune.seed"
PARENT = "mlflow.parentRunId"
STOPPED_EARLY = "oneprune.stopped_early"
ERROR = "oneprune.error"
WORKERS = "oneprune.workers"
STATUS = "oneprune.status"
DIVERGED = "diverged"
DENSE = "dense"
METRICS = ("lr", "target_sparsity", "sparsity", "train_loss", "val_loss", "val_acc",
           "epoch_seconds", "train_seconds", "test_loss", "test_acc")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _metrics(values: Mapping[str, float], step: int = 0) -> list[Metric]:
    stamp = _now_ms()
    return [Metric(key, float(value), stamp, step) for key, value in values.items()]


def flat_params(spec: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: `schedule.alpha`, ... (values as strings)."""
    params = {}
    for key, value in spec.items():
        if isinstance(value, Mapping):
            params.update(flat_params(value, f"{prefix}{key}."))
        else:
            params[f"{prefix}{key}"] = str(value)
    return params


@contextlib.contextmanager
def _environment(**values: str):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_tracking_uri(uri: str) -> None:
    """Raise `ValueError` (one line) unless the MLflow store at `uri` answers at once and,
    for sqlite, its file can be written: a study must not fail after hours of training.
    (The probe asks once, without MLflow's minutes of retries; it may create the store.)"""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///")).expanduser()
        folder = next(parent for parent in path.absolute().parents if parent.exists())
        if (path.exists() and not os.access(path, os.W_OK)) or (
                not path.exists() and not os.access(folder, os.W_OK)):
            raise ValueError(f"tracking URI {uri}: {path} is not writable")
    try:
        with _environment(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                          MLFLOW_HTTP_REQUEST_TIMEOUT="10"):
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:  # MLflow raises many kinds: connection, schema, OS, parse
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise ValueError(f"tracking URI {uri} does not answer: {reason}") from None


def _filter(tags: Mapping[str, str]) -> str:
    return " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())


def open_experiment(client: MlflowClient, name: str) -> str:
    """The id of the active MLflow experiment `name`, created if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name)
    return experiment.experiment_id


def find_runs(client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> list:
    """Active runs of the experiment carrying all `tags`, oldest first."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], _filter(tags), max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def ensure_run(client: MlflowClient, experiment_id: str, tags: Mapping[str, str],
               run_name: str) -> str:
    """The run identified by `tags`, created (with those tags) if there is none."""
    identity = {k: v for k, v in tags.items() if k != PARENT}
    found = find_runs(client, experiment_id, identity)
    if found:
        return found[0].info.run_id
    return client.create_run(experiment_id, tags=dict(tags), run_name=run_name).info.run_id


@dataclass(frozen=True)
class RunSpec:
    """What a Tune trial's MLflow run is: identity tags, other tags, params, name."""

    identity: dict[str, str]
    run_name: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


class TrialLogger(tune.Callback):
    """Mirror each Tune trial into an MLflow run, live, from the driver.

    `describe(trial_id, trial.config)` says which run a trial is; `tags` go on every run it
    creates. `scope` tags select the runs this logger owns: when the experiment ends, owned
    runs that match no trial (a trial the interrupted driver started after Tune's last state
    snapshot) are deleted, so a resumed study keeps exactly one run per trial. The writes
    run in order on a writer thread, and `on_experiment_end` waits for them (and raises a
    failed one): the study's own reads after `Tuner.fit` see everything. The callback
    pickles without its client and thread (Tune stores it for `Tuner.restore`).
    """

    def __init__(self, tracking_uri: str, experiment_id: str, scope: Mapping[str, str],
                 describe: Callable[[str, Mapping[str, Any]], RunSpec], epochs: int,
                 tags: Mapping[str, str]):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.scope = dict(scope)
        self.tags = dict(tags)
        self.describe = describe
        self.epochs = epochs
        self._client: MlflowClient | None = None
        self._runs: dict[str, tuple[str, int]] = {}  # trial id -> (run id, last step)
        self._writes: queue.Queue | None = None
        self._error: Exception | None = None

    def __getstate__(self):
        return {**self.__dict__, "_client": None, "_runs": {}, "_writes": None,
                "_error": None}

    # Tune's event loop (which starts the next trial, takes the next report) must not wait
    # for the tracking store: the bench measured ~0.3 s of MLflow calls per trial.

    def _submit(self, write: Callable[[], None]) -> None:
        if self._writes is None:
            self._writes = queue.Queue()
            threading.Thread(target=self._write_forever, name="mlflow-writer",
                             daemon=True).start()
        self._writes.put(write)

    def _write_forever(self) -> None:
        while True:
            write = self._writes.get()
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
            identity = {**self.scope, **spec.identity}
            found = find_runs(self.client, self.experiment_id, identity)
            if found:
                run_id = found[0].info.run_id
                history = self.client.get_metric_history(run_id, "val_acc")
                last_step = max((m.step for m in history), default=0)
            else:
                run_id = self.client.create_run(
                    self.experiment_id, tags={**identity, **self.tags, **spec.tags},
                    run_name=spec.run_name).info.run_id
                self.client.log_batch(run_id, params=[Param(k, v)
                                                      for k, v in spec.params.items()])
                last_step = 0
            self._runs[trial_id] = (run_id, last_step)
        return self._runs[trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        trial_id, config = trial.trial_id, dict(trial.config)

        def write():
            run_id, _ = self._run_of(trial_id, config)
            self.client.update_run(run_id, status="RUNNING")  # again, if resumed
        self._submit(write)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        trial_id, config = trial.trial_id, dict(trial.config)
        step = int(result["epoch"])
        metrics = {key: result[key] for key in METRICS
                   if key in result and not math.isnan(float(result[key]))}
        diverged = bool(result.get("diverged"))

        def write():
            run_id, last_step = self._run_of(trial_id, config)
            if step <= last_step:  # already logged before an interruption
                return
            self.client.log_batch(run_id, metrics=_metrics(metrics, step))
            if diverged:
                self.client.set_tag(run_id, STATUS, DIVERGED)
            self._runs[trial_id] = (run_id, step)
        self._submit(write)

    def on_trial_complete(self, iteration, trials, trial, **info):
        trial_id, config = trial.trial_id, dict(trial.config)
        diverged = bool((trial.last_result or {}).get("diverged"))

        def write():
            run_id, last_step = self._run_of(trial_id, config)
            if last_step < self.epochs and not diverged:
                self.client.set_tag(run_id, STOPPED_EARLY, f"after epoch {last_step}")
            self.client.set_terminated(run_id, "FINISHED")
        self._submit(write)

    def on_trial_error(self, iteration, trials, trial, **info):
        trial_id, config = trial.trial_id, dict(trial.config)
        error_file = str(trial.error_file or "see the Tune logs")

        def write():
            run_id, _ = self._run_of(trial_id, config)
            self.client.set_tag(run_id, ERROR, error_file)
            self.client.set_terminated(run_id, "FAILED")
        self._submit(write)

    def on_experiment_end(self, trials, **info):
        known = [(trial.trial_id, dict(trial.config)) for trial in trials]

        def reconcile():
            kept = {self._run_of(trial_id, config)[0] for trial_id, config in known}
            for run in find_runs(self.client, self.experiment_id, self.scope):
                if run.info.run_id not in kept:
                    self.client.delete_run(run.info.run_id)
        self._submit(reconcile)
        self.flush()


def finish_family(client: MlflowClient, run_id: str, best_config: Mapping[str, Any],
                  metrics: Mapping[str, float]) -> None:
    """Record a family's best config (params are write-once: kept if already there, as
    on a resumed study) and its search metrics, and close its run."""
    params = []
    if not client.get_run(run_id).data.params:
        params = [Param(k, v) for k, v in flat_params(best_config).items()]
    client.log_batch(run_id, params=params, metrics=_metrics(metrics))
    client.set_terminated(run_id, "FINISHED")


def fail_family(client: MlflowClient, run_id: str, metrics: Mapping[str, float]) -> None:
    """Close the run of a family none of whose trials completed, with its search metrics."""
    client.log_batch(run_id, metrics=_metrics(metrics))
    client.set_terminated(run_id, "FAILED")


def finish_comparison(client: MlflowClient, experiment_id: str, folder: str,
                      metrics: Mapping[str, float]) -> None:
    """Upload the comparison's files from `folder` and its headline metrics."""
    run_id = ensure_run(client, experiment_id, {ROLE: "comparison"}, "comparison")
    client.log_artifacts(run_id, folder)
    client.log_batch(run_id, metrics=_metrics(metrics))
    client.set_terminated(run_id, "FINISHED")


def describe_trial(trial_id: str, config: Mapping[str, Any], *, base: Mapping[str, Any],
                   family_run_id: str) -> RunSpec:
    """A search trial's run: child of its family run, identified by the Tune trial id;
    its params are the whole training config the trial ran."""
    train = trial_config(TrainConfig.from_dict(base), config).to_dict()
    return RunSpec(identity={TRIAL_ID: trial_id}, run_name=f"trial {trial_id}",
                   params=flat_params(train), tags={PARENT: family_run_id})


def describe_final(trial_id: str, config: Mapping[str, Any], *,
                   runs: Sequence[Mapping[str, Any]],
                   family_run_ids: Mapping[str, str]) -> RunSpec:
    """A final re-run (`runs[config["run"]]`): identified by family and seed, child of its
    family run."""
    train = runs[config["run"]]
    family = train["schedule"]["family"] if train["schedule"] else DENSE
    parent = family_run_ids.get(family)
    return RunSpec(identity={FAMILY: family, SEED: str(train["seed"])},
                   run_name=f"{family} seed {train['seed']}", params=flat_params(train),
                   tags={PARENT: parent} if parent else {})


def trial_logger(tracking_uri: str, experiment_id: str, *, family: str, family_run_id: str,
                 base: Mapping[str, Any], epochs: int, workers: int) -> TrialLogger:
    """The logger of one family's search trials (`base`: their `TrainConfig.to_dict()`;
    `workers`: DDP processes per trial)."""
    return TrialLogger(tracking_uri, experiment_id, {ROLE: "trial", FAMILY: family},
                       functools.partial(describe_trial, base=dict(base),
                                         family_run_id=family_run_id), epochs,
                       {WORKERS: str(workers)})


def final_logger(tracking_uri: str, experiment_id: str, *, runs: Sequence[Mapping[str, Any]],
                 family_run_ids: Mapping[str, str], epochs: int,
                 workers: int) -> TrialLogger:
    """The logger of the final re-runs (every family and the dense reference)."""
    return TrialLogger(tracking_uri, experiment_id, {ROLE: "final"},
                       functools.partial(describe_final, runs=list(runs),
                                         family_run_ids=dict(family_run_ids)), epochs,
                       {WORKERS: str(workers)})
