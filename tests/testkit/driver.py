"""The search service's driver (`python search/run.py`) in another process, and what it
left in MLflow."""

import os
import subprocess
import sys

from testkit import ROOT


def driver_env(extra):
    """The environment of a driver process: token auth off, so it can join the session's
    cluster (`ray_cluster`) by its address."""
    return {**os.environ, "RAY_AUTH_MODE": "disabled", **(extra or {})}


def _search_command(args):
    return [sys.executable, str(ROOT / "search" / "run.py"), *map(str, args)]


def run_search(*args, cwd, timeout=120, env=None):
    """`python search/run.py ARGS` in another process, run to its end in `cwd`; returns the
    finished process with its stdout and stderr as text. `env`: more variables."""
    return subprocess.run(_search_command(args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=driver_env(env))


def start_search(*args, log, env=None):
    """`python search/run.py ARGS` started in another process (stdout and stderr to the
    open file `log`, unbuffered); returns the running `subprocess.Popen`."""
    return subprocess.Popen(_search_command(args), stdout=log, stderr=subprocess.STDOUT,
                            env=driver_env({"PYTHONUNBUFFERED": "1", **(env or {})}))


def runs_by_role(uri, experiment_name):
    """The MLflow client of `uri` and the runs of its experiment `experiment_name`, by
    their `oneprune.role` tag (family, trial, final, comparison)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    by_role = {}
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        by_role.setdefault(run.data.tags["oneprune.role"], []).append(run)
    return client, by_role
