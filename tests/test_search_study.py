"""The search service end to end on a real local Ray cluster, real Optuna and a real sqlite
MLflow store: the MLflow structure, equal budgets, and resuming an interrupted study."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from oneprune.schedules import FAMILIES, schedule_from_dict
from search.run import main

ROOT = Path(__file__).resolve().parents[1]
FAMILIES_UNDER_TEST = ["one_cycle", "agp"]
TRIALS, EPOCHS, SEEDS = 2, 2, 2


@pytest.fixture
def study(tmp_path, monkeypatch, ray_cluster):
    """A tiny study (2 families x 2 trials x 2 epochs, 2 final seeds, ASHA from epoch 1)
    in a temp folder, which is also the working folder (MLflow puts artifacts under
    ./mlruns)."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "dataset": "digits", "sparsity": 0.9, "epochs": EPOCHS,
        "families": FAMILIES_UNDER_TEST, "trials_per_family": TRIALS, "final_seeds": SEEDS,
        "search": {"seed": 0, "asha": True, "grace_period": 1},
        "training": {"lr_max": [3e-3, 3e-2], "coupling": ["none", "align"]},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}}))
    args = ["--experiment", str(path), "--storage-path", str(tmp_path / "ray")]
    return {"args": args, "uri": f"sqlite:///{tmp_path}/mlflow.db", "folder": tmp_path,
            "address": ray_cluster}


def tune_results(folder):
    """Every trial's reported rows under a Tuner's folder, by trial folder."""
    return {path.parent.name: [json.loads(line) for line in path.read_text().splitlines()]
            for path in folder.glob("*/result.json")}


def runs_by_role(uri):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_role = {}
    for run in runs:
        by_role.setdefault(run.data.tags["oneprune.role"], []).append(run)
    return client, by_role


def parse(value):
    if value == "None":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def assert_complete_study(uri):
    """Exactly one run per family, trial, final run and comparison, all finished."""
    client, by_role = runs_by_role(uri)
    assert {role: len(runs) for role, runs in by_role.items()} == {
        "family": 2, "trial": 2 * TRIALS, "final": 3 * SEEDS, "comparison": 1}
    assert all(run.info.status == "FINISHED" for runs in by_role.values() for run in runs)
    family_ids = {run.data.tags["oneprune.family"]: run.info.run_id
                  for run in by_role["family"]}
    assert sorted(family_ids) == sorted(FAMILIES_UNDER_TEST)
    trial_ids = [run.data.tags["oneprune.trial_id"] for run in by_role["trial"]]
    assert len(set(trial_ids)) == len(trial_ids)
    finals = Counter((r.data.tags["oneprune.family"], r.data.tags["oneprune.seed"])
                     for r in by_role["final"])
    assert set(finals.values()) == {1} and {f for f, _ in finals} == {*family_ids, "dense"}
    return client, by_role, family_ids


def test_a_tiny_study_end_to_end(study, capsys):
    assert main(study["args"]) == 0
    printed = capsys.readouterr().out
    for family in (*FAMILIES_UNDER_TEST, "dense"):
        assert f"| {family} |" in printed
    client, by_role, family_ids = assert_complete_study(study["uri"])

    budgets, completed = set(), Counter()
    for run in by_role["trial"]:
        family = run.data.tags["oneprune.family"]
        assert run.data.tags["mlflow.parentRunId"] == family_ids[family]
        params = run.data.params
        schedule = schedule_from_dict({key.removeprefix("schedule."): parse(value)
                                       for key, value in params.items()
                                       if key.startswith("schedule.")})
        assert isinstance(schedule, FAMILIES[family]) and schedule.final_sparsity == 0.9
        assert 3e-3 <= float(params["lr_max"]) <= 3e-2
        budgets.add((params["epochs"], params["batch_size"], params["split_seed"],
                     params["val_fraction"], params["seed"], params["dataset"]))
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
        if "oneprune.stopped_early" in run.data.tags:  # by ASHA, after the grace period
            assert steps == [1]
        else:
            assert steps == list(range(1, EPOCHS + 1))
            completed[family] += 1
        assert "test_acc" not in run.data.metrics  # tuning never sees the test split
    assert len(budgets) == 1  # every trial of every family: same epochs, data, seed

    for run in by_role["final"]:
        assert 0.0 <= run.data.metrics["test_acc"] <= 1.0
        family = run.data.tags["oneprune.family"]
        if family != "dense":
            assert run.data.tags["mlflow.parentRunId"] == family_ids[family]
            best = client.get_run(family_ids[family]).data.params
            assert {k: v for k, v in run.data.params.items() if k != "seed"} == {
                k: v for k, v in best.items() if k != "seed"}
        else:
            assert run.data.params["schedule"] == "None"
    # The trials ran on both nodes of the cluster (1 CPU each: two at once).
    rows = [row for part in (*FAMILIES_UNDER_TEST, "final")
            for trial in tune_results(study["folder"] / "ray" / f"tiny-{part}").values()
            for row in trial]
    assert {row["rank_nodes"] for row in rows} == {
        node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert all(row["resumed_from"] == 0 for row in rows)  # nothing failed
    for run in by_role["family"]:  # ASHA always lets the first trial at a rung go on
        assert run.data.metrics["trials_completed"] == completed[
            run.data.tags["oneprune.family"]] >= 1
    comparison = by_role["comparison"][0]
    artifacts = {a.path for a in client.list_artifacts(comparison.info.run_id)}
    assert artifacts == {"comparison.md", "comparison.csv", "schedules.png", "curves.png"}
    csv_text = Path(client.download_artifacts(comparison.info.run_id, "comparison.csv",
                                              str(study["folder"]))).read_text()
    assert [line.split(",")[0] for line in csv_text.splitlines()] == [
        "family", *FAMILIES_UNDER_TEST, "dense"]

    # A fresh run of a study that has results is refused; --resume of a finished study
    # reprints its table and adds no run.
    with pytest.raises(SystemExit) as refused:
        main(study["args"])
    assert refused.value.code == 2 and "--resume" in capsys.readouterr().err
    assert main([*study["args"], "--resume"]) == 0
    assert "| dense |" in capsys.readouterr().out
    assert_complete_study(study["uri"])

    # A study whose MLflow experiment was deleted is refused rather than half-written.
    client.delete_experiment(client.get_experiment_by_name("tiny").experiment_id)
    with pytest.raises(SystemExit) as refused:
        main([*study["args"], "--resume"])
    assert refused.value.code == 2 and "is deleted" in capsys.readouterr().err


@pytest.mark.parametrize(("started", "role", "finished"), [
    ("one_cycle: ", "trial", TRIALS + 1),  # the second family's search has begun
    ("agp: ", "trial", 0),                 # Tune is writing agp's first state snapshot
    ("final: ", "final", 1),               # the final re-runs have begun
], ids=["mid-search", "at-a-family-start", "mid-final-runs"])
def test_a_killed_study_resumes_without_lost_or_duplicated_runs(study, started, role,
                                                                 finished):
    """SIGKILL the driver once it printed `[tiny] {started}` and `finished` runs of `role`
    have finished, then `--resume` in this process."""
    log = open(study["folder"] / "driver.log", "w")
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "search" / "run.py"), *study["args"],
         "--address", study["address"]], stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"})
    finished_before = set()
    deadline = time.monotonic() + 240
    while True:
        assert driver.poll() is None, (study["folder"] / "driver.log").read_text()
        assert time.monotonic() < deadline, "the driver did not get there in time"
        # Read MLflow only once the driver has created its database (it prints a family's
        # start after that): two processes creating one sqlite schema collide.
        if f"[tiny] {started}" in (study["folder"] / "driver.log").read_text():
            _, by_role = runs_by_role(study["uri"])
            finished_before = {run.info.run_id for run in by_role.get(role, [])
                               if run.info.status == "FINISHED"}
            if len(finished_before) >= finished:
                break
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    assert driver.wait(timeout=30) == -signal.SIGKILL
    log.close()

    assert main([*study["args"], "--resume"]) == 0
    _, by_role, _ = assert_complete_study(study["uri"])
    assert finished_before <= {run.info.run_id for run in by_role[role]}


def test_a_saved_state_that_lost_trials_is_searched_again(study, capsys):
    """A driver killed while Tune writes a snapshot can leave state whose searcher counted
    more trials than the snapshot holds (seen with Ray 2.60): the restored search would end
    short. Made here by dropping a trial from the newest snapshot of a killed study; the
    resume must search that family again and still end with one run per trial."""
    log = open(study["folder"] / "driver.log", "w")
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "search" / "run.py"), *study["args"],
         "--address", study["address"]], stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"})
    state_dir = study["folder"] / "ray" / "tiny-one_cycle"
    deadline = time.monotonic() + 240
    while not list(state_dir.glob("experiment_state-*.json")):
        assert driver.poll() is None, (study["folder"] / "driver.log").read_text()
        assert time.monotonic() < deadline, "Tune wrote no state in time"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    assert driver.wait(timeout=30) == -signal.SIGKILL
    log.close()
    newest = max(state_dir.glob("experiment_state-*.json"))
    state = json.loads(newest.read_text())
    assert state["trial_data"], "the snapshot holds no trial to drop"
    state["trial_data"].pop()
    newest.write_text(json.dumps(state))

    assert main([*study["args"], "--resume"]) == 0
    assert "the saved state is incomplete" in capsys.readouterr().out
    assert_complete_study(study["uri"])


def test_failing_and_diverging_trials_do_not_stop_the_study(study, capsys):
    """Test-only faults: every one_cycle run raises at the end of epoch 2 once, and every
    agp trial's loss turns NaN at epoch 2. The one_cycle runs resume from their epoch-1
    checkpoint and complete; the agp trials end as diverged; the study completes."""
    path = Path(study["args"][1])
    spec = yaml.safe_load(path.read_text())
    spec["search"]["asha"] = False
    spec["faults"] = {"raise_at_epoch": 2, "raise_families": ["one_cycle"],
                      "nan_at_epoch": 2, "nan_families": ["agp"]}
    path.write_text(yaml.safe_dump(spec))
    assert main(study["args"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("failed, retrying") == TRIALS + SEEDS  # search + final one_cycle
    assert printed.count("diverged: non-finite loss") == TRIALS

    client, by_role = runs_by_role(study["uri"])
    assert {role: len(runs) for role, runs in by_role.items()} == {
        "family": 2, "trial": 2 * TRIALS, "final": 2 * SEEDS, "comparison": 1}
    for run in by_role["trial"]:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert run.info.status == "FINISHED"
        if run.data.tags["oneprune.family"] == "agp":
            assert run.data.tags["oneprune.status"] == "diverged" and steps == [1, 2]
            assert "oneprune.stopped_early" not in run.data.tags
        else:
            assert "oneprune.status" not in run.data.tags
            assert sorted(steps) == [1, 2]  # each epoch logged once, though retried
    families = {run.data.tags["oneprune.family"]: run for run in by_role["family"]}
    assert families["agp"].info.status == "FAILED"  # no trial completed its budget
    assert families["agp"].data.metrics["trials_diverged"] == TRIALS
    assert families["one_cycle"].data.metrics["trials_completed"] == TRIALS
    assert {r.data.tags["oneprune.family"] for r in by_role["final"]} == {"one_cycle",
                                                                          "dense"}
    for rows in tune_results(study["folder"] / "ray" / "tiny-one_cycle").values():
        assert [(row["epoch"], row["resumed_from"]) for row in rows] == [(1, 0), (2, 1)]
