"""The MLflow structure of a study, written by the driver only (sqlite takes one writer).

One MLflow experiment per study, tagged as a model-training experiment
(`mlflow.experimentKind`). Every run is tagged with `oneprune.role` and `oneprune.family`,
and with the source tags MLflow's fluent API sets (`mlflow.source.name`, `mlflow.user`,
`mlflow.source.git.commit` when the working folder is a git checkout):

    role=family      one parent run per family and one for the dense reference: its best
                     parameters and metrics (`importance.<param>`: fANOVA, see
                     `search.verdict.importance`)
    role=trial       one child run per Tune trial (mlflow.parentRunId = its family run):
                     params = the whole training config, metrics per epoch (step = epoch),
                     the dataset as an MLflow dataset input (name, digest, split sizes),
                     tags oneprune.workers (DDP processes) and, for a run whose loss went
                     NaN/inf, oneprune.status=diverged
    role=final       the seed re-runs of each family's best config and of the dense
                     reference, children of their family's run, with the dataset input
                     too, and each with its trained model as a logged model
                     (`search.tracking.registry`); a run that started from given
                     weights or the dense reference is tagged oneprune.init_digest (of
                     those weights), one with a teacher oneprune.teacher_digest; the
                     model as given, evaluated, is family `given`
    role=start       (where arms start from or distil from the dense reference) the dense
                     reference
                     trained with the search seed, which their search trials start from
    role=comparison  the table (comparison.md / .csv) and plots (schedules.png, curves.png,
                     importance.png)
    role=sweep       (an experiment with several sparsities, in the MLflow experiment named
                     after it) accuracy against sparsity: sweep.md / .csv / .png

Runs are found again by identity tags before one is created, and a step is logged once,
so a resumed study continues its runs instead of duplicating them.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from oneprune._validate import first_line
from oneprune.cost import COST_METRICS
from search.environment import environment

ROLE = "oneprune.role"
FAMILY = "oneprune.family"
TRIAL_ID = "oneprune.trial_id"
SEED = "oneprune.seed"
TRIAL_NUMBER = "oneprune.trial_number"  # the search trial a confirmation run re-trains
PARENT = "mlflow.parentRunId"
STOPPED_EARLY = "oneprune.stopped_early"
ERROR = "oneprune.error"
WORKERS = "oneprune.workers"
STATUS = "oneprune.status"
INIT_DIGEST = "oneprune.init_digest"  # SHA-256 of the weights a run started from
TEACHER_DIGEST = "oneprune.teacher_digest"  # SHA-256 of the weights of its teacher
DIVERGED = "diverged"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# The MLflow 3 UI opens an experiment on its GenAI overview unless the URL asks for runs.
RUNS_VIEW = "#/experiments/{}?workflowType=machine_learning"
METRICS = ("lr", "target_sparsity", "sparsity", "train_loss", "val_loss", "val_acc",
           "epoch_seconds", "train_seconds", "test_loss", "test_acc", "cost_saving",
           *COST_METRICS)


def _now_ms() -> int:
    return int(time.time() * 1000)


def metrics_at(values: Mapping[str, float], step: int = 0) -> list[Metric]:
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
        with environment(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                          MLFLOW_HTTP_REQUEST_TIMEOUT="10"):
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:  # MLflow raises many kinds: connection, schema, OS, parse
        reason = first_line(error)
        raise ValueError(f"tracking URI {uri} does not answer: {reason}") from None


def _filter(tags: Mapping[str, str]) -> str:
    return " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())


def open_experiment(client: MlflowClient, name: str) -> str:
    """The id of the active MLflow experiment `name`, created if missing, tagged as a
    model-training experiment."""
    experiment = client.get_experiment_by_name(name)
    experiment_id = (client.create_experiment(name) if experiment is None
                     else experiment.experiment_id)
    client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
    return experiment_id


@functools.cache
def source_tags() -> dict[str, str]:
    """The tags MLflow's fluent API gives a run started here: source name and type, user,
    and the git commit of the working folder's checkout (resolved once per driver)."""
    return {key: value for key, value in resolve_tags().items() if key != MLFLOW_RUN_NAME}


def browse_lines(tracking_uri: str, experiments: Sequence[tuple[str, str]]) -> list[str]:
    """What opens the runs of `experiments` ((name, id) pairs) in MLflow's UI: the command
    that serves a local store (run it in this folder), and each experiment's address."""
    remote = tracking_uri.startswith(("http://", "https://"))
    lines = ["MLflow: open" if remote else
             f"MLflow: mlflow ui --backend-store-uri {tracking_uri}   then open"]
    lines += [f"  {runs_url(tracking_uri, experiment_id)}   ({name})"
              for name, experiment_id in experiments]
    return lines


def runs_url(tracking_uri: str, experiment_id: str) -> str:
    """The address of an experiment's runs table: on the tracking server, or on the
    `mlflow ui` a local store is browsed with (its default address)."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) \
        else "http://127.0.0.1:5000"
    return f"{base}/{RUNS_VIEW.format(experiment_id)}"


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
    return client.create_run(experiment_id, tags={**source_tags(), **tags},
                             run_name=run_name).info.run_id


def finish_family(client: MlflowClient, run_id: str, best_config: Mapping[str, Any],
                  metrics: Mapping[str, float]) -> None:
    """Record a family's best config (params are write-once: kept if already there, as
    on a resumed study) and its search metrics, and close its run."""
    params = []
    if not client.get_run(run_id).data.params:
        params = [Param(k, v) for k, v in flat_params(best_config).items()]
    client.log_batch(run_id, params=params, metrics=metrics_at(metrics))
    client.set_terminated(run_id, "FINISHED")


def fail_family(client: MlflowClient, run_id: str, metrics: Mapping[str, float]) -> None:
    """Close the run of a family none of whose trials completed, with its search metrics."""
    client.log_batch(run_id, metrics=metrics_at(metrics))
    client.set_terminated(run_id, "FAILED")


def finish_report_run(client: MlflowClient, experiment_id: str, role: str, folder: str,
                      metrics: Mapping[str, float] | None = None) -> None:
    """Upload the report files in `folder` (and its headline `metrics`) to the experiment's
    run of `role`, "comparison" or "sweep" (created if missing), and close it."""
    run_id = ensure_run(client, experiment_id, {ROLE: role}, role)
    client.log_artifacts(run_id, folder)
    client.log_batch(run_id, metrics=metrics_at(metrics or {}))
    client.set_terminated(run_id, "FINISHED")
