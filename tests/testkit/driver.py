"""The search service's driver (`python search/run.py`) in another process, and what it
left in MLflow."""

import contextlib
import os
import signal
import subprocess
import sys
import time

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


def _default_sigint():
    """Ctrl+C as a terminal delivers it: a test run from a background job of a shell
    without job control inherits SIGINT ignored, and a driver that ignores it cannot be
    interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_search(*args, log, env=None):
    """`python search/run.py ARGS` started in another process (stdout and stderr to the
    open file `log`, unbuffered), with SIGINT's default disposition; returns the running
    `subprocess.Popen`."""
    return subprocess.Popen(_search_command(args), stdout=log, stderr=subprocess.STDOUT,
                            env=driver_env({"PYTHONUNBUFFERED": "1", **(env or {})}),
                            preexec_fn=_default_sigint)


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


def runs_of(by_role, role, family):
    """The runs of `family` with `role` (from `runs_by_role`), by seed (search trials: by
    trial id)."""
    return {run.data.tags.get("oneprune.seed", run.data.tags.get("oneprune.trial_id")): run
            for run in by_role.get(role, []) if run.data.tags["oneprune.family"] == family}


def kill_search_when(*args, folder, uri, name, ready, timeout=240):
    """Start `python search/run.py ARGS` (its output in `folder/driver.log`), and SIGKILL it
    as soon as `ready(by_role)` holds for the runs of the study `name` in MLflow at `uri`,
    once Tune has written its state (`folder/ray/<name>/tuner.pkl`)."""
    from mlflow.exceptions import MlflowException

    with open(folder / "driver.log", "w") as log:
        driver = start_search(*args, log=log)
        deadline = time.monotonic() + timeout
        while True:
            assert driver.poll() is None, (folder / "driver.log").read_text()
            assert time.monotonic() < deadline, "the driver did not get there in time"
            if (folder / "ray" / name / "tuner.pkl").exists():
                with contextlib.suppress(MlflowException):  # the driver holds sqlite's lock
                    if ready(runs_by_role(uri, name)[1]):
                        break
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        assert driver.wait(timeout=30) == -signal.SIGKILL
