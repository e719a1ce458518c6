"""The search service end to end on a real local Ray cluster, real Optuna and a real sqlite
MLflow store: the MLflow structure, equal budgets, and resuming an interrupted study."""

import contextlib
import csv
import io
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pytest
import ray
import torch
import yaml
from mlflow.exceptions import MlflowException
from testkit.driver import runs_by_role, start_search

from oneprune.data import load_dataset
from oneprune.schedules import FAMILIES, schedule_from_dict
from search.run import main

pytestmark = pytest.mark.slow  # studies on the two-node Ray cluster

FAMILIES_UNDER_TEST = ["one_cycle", "agp"]
TRIALS, EPOCHS, SEEDS = 2, 2, 2


def write_study(folder, address, **changes):
    """A tiny study (2 families x 2 trials x 2 epochs, 2 final seeds, ASHA from epoch 1;
    `changes`: keys replaced) in `folder`, on the session's cluster at `address`: its CLI
    arguments and where its results go."""
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "dataset": "digits", "sparsity": 0.9, "epochs": EPOCHS,
        "families": FAMILIES_UNDER_TEST, "trials_per_family": TRIALS, "final_seeds": SEEDS,
        # Every ramp ends by epoch 1, so ASHA's rung there is neutral to when it prunes.
        "search": {"seed": 0, "asha": True, "grace_period": 1, "space": {
            family: {"start": [0.0, 0.3], "end": [0.4, 0.5]} for family in FAMILIES_UNDER_TEST}},
        "checkpoint_every": 1,
        "training": {"lr_max": [3e-3, 3e-2], "coupling": ["none", "align"]},
        "tracking": {"tracking_uri": f"sqlite:///{folder}/mlflow.db"}, **changes}))
    args = ["--experiment", str(path), "--storage-path", str(folder / "ray")]
    return {"args": args, "uri": f"sqlite:///{folder}/mlflow.db", "folder": folder,
            "address": address}


@pytest.fixture
def study(tmp_path, monkeypatch, ray_cluster):
    """A tiny study not yet run, in a temp folder that is also the working folder (MLflow
    puts artifacts under ./mlruns)."""
    monkeypatch.chdir(tmp_path)
    return write_study(tmp_path, ray_cluster)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_cluster):
    """The tiny study run to its end once, in this process, for every test that only
    reads it: `printed` is what it printed."""
    folder = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        study = write_study(folder, ray_cluster)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(study["args"]) == 0
        yield {**study, "printed": printed.getvalue()}


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
    """Exactly one run per family, trial, final run and comparison, all finished; one
    READY logged model per final run; one registered version per family and dense, and
    one `@best`."""
    client, by_role = runs_by_role(uri, "tiny")
    assert {role: len(runs) for role, runs in by_role.items()} == {
        "family": 3, "trial": 2 * TRIALS, "final": 3 * SEEDS, "comparison": 1}
    unfinished = [(run.data.tags["oneprune.role"], run.data.tags["oneprune.family"],
                   run.info.status) for runs in by_role.values() for run in runs
                  if run.info.status != "FINISHED"]
    assert not unfinished
    family_ids = {run.data.tags["oneprune.family"]: run.info.run_id
                  for run in by_role["family"]}
    assert sorted(family_ids) == sorted([*FAMILIES_UNDER_TEST, "dense"])
    trial_ids = [run.data.tags["oneprune.trial_id"] for run in by_role["trial"]]
    assert len(set(trial_ids)) == len(trial_ids)
    finals = Counter((r.data.tags["oneprune.family"], r.data.tags["oneprune.seed"])
                     for r in by_role["final"])
    assert set(finals.values()) == {1} and {f for f, _ in finals} == set(family_ids)
    experiment_id = client.get_experiment_by_name("tiny").experiment_id
    logged = client.search_logged_models([experiment_id])
    assert Counter(model.source_run_id for model in logged) == Counter(
        run.info.run_id for run in by_role["final"])
    assert all(model.status.name == "READY" for model in logged)
    registered = {model.name: model for model in client.search_registered_models()}
    assert set(registered) == {f"tiny.{family}" for family in family_ids}
    for name in registered:
        (version,) = client.search_model_versions(f"name = '{name}'")
        assert version.run_id in {run.info.run_id for run in by_role["final"]}
    assert sum(bool(model.aliases) for model in registered.values()) == 1
    return client, by_role, family_ids


def test_the_table_has_every_family_and_dense(finished):
    for family in (*FAMILIES_UNDER_TEST, "dense"):
        assert f"| {family} |" in finished["printed"]


def test_one_finished_mlflow_run_per_family_trial_final_run_and_comparison(finished):
    assert_complete_study(finished["uri"])


def test_trials_are_nested_under_their_family_with_one_budget(finished):
    client, by_role, family_ids = assert_complete_study(finished["uri"])
    budgets = set()
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
        assert "test_acc" not in run.data.metrics  # tuning never sees the test split
    assert len(budgets) == 1  # every trial of every family: same epochs, data, seed


def test_final_runs_retrain_their_familys_best_config(finished):
    client, by_role, family_ids = assert_complete_study(finished["uri"])
    for run in by_role["final"]:
        assert 0.0 <= run.data.metrics["test_acc"] <= 1.0
        family = run.data.tags["oneprune.family"]
        # Every final run, the dense reference's too, is a child of its family's run.
        assert run.data.tags["mlflow.parentRunId"] == family_ids[family]
        best = client.get_run(family_ids[family]).data.params
        assert {k: v for k, v in run.data.params.items() if k != "seed"} == {
            k: v for k, v in best.items() if k != "seed"}
        if family == "dense":
            assert run.data.params["schedule"] == "None"
    dense = client.get_run(family_ids["dense"])
    assert dense.data.metrics["test_acc_mean"] == pytest.approx(
        sum(r.data.metrics["test_acc"] for r in by_role["final"]
            if r.data.tags["oneprune.family"] == "dense") / SEEDS)


def test_runs_carry_their_dataset_and_code_version_and_the_runs_view_is_printed(finished):
    client, by_role, _ = assert_complete_study(finished["uri"])
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for run in by_role["trial"] + by_role["final"]:
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.dataset.name == "digits" and len(dataset.dataset.digest) == 16
        sizes = json.loads(dataset.dataset.profile)
        assert (sizes["train"], sizes["val"], sizes["test"]) == (1293, 144, 360)
        context = {tag.key: tag.value for tag in dataset.tags}["mlflow.data.context"]
        assert context == ("training" if run.data.tags["oneprune.role"] == "trial"
                           else "training+testing")
    digests = {r.inputs.dataset_inputs[0].dataset.digest for r in by_role["final"]}
    assert len(digests) == 1  # one dataset, one digest
    for runs in by_role.values():
        for run in runs:
            assert run.data.tags["mlflow.source.type"] == "LOCAL"
            assert "mlflow.user" in run.data.tags and "mlflow.source.name" in run.data.tags
    url = (f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}"
           f"?workflowType=machine_learning")
    assert f"mlflow ui --backend-store-uri {finished['uri']}" in finished["printed"]
    assert f"{url}   (tiny)\n" in finished["printed"]


def test_each_familys_model_is_registered_and_the_winner_is_printed_best(finished):
    client, by_role, _ = assert_complete_study(finished["uri"])
    finals = {(r.data.tags["oneprune.family"], int(r.data.tags["oneprune.seed"])): r
              for r in by_role["final"]}
    means = {family: sum(r.data.metrics["test_acc"] for (f, _), r in finals.items()
                         if f == family) / SEEDS for family in FAMILIES_UNDER_TEST}
    winner = max(means, key=means.get)
    printed = finished["printed"].rstrip().splitlines()
    models = printed[printed.index("Models (MLflow registry; mlflow.pytorch.load_model(URI) "
                                   "needs only mlflow and torch):") + 1:]
    assert [line.split()[0] for line in models] == [
        f"models:/tiny.{family}@best" if family == winner else f"models:/tiny.{family}/1"
        for family in (*FAMILIES_UNDER_TEST, "dense")]  # the output ends with them
    for family in (*FAMILIES_UNDER_TEST, "dense"):
        (version,) = client.search_model_versions(f"name = 'tiny.{family}'")
        seed = int(version.tags["oneprune.seed"])
        # the seed whose final run ended with the best validation accuracy
        best_val = max(r.data.metrics["val_acc"] for (f, _), r in finals.items()
                       if f == family)
        assert finals[(family, seed)].data.metrics["val_acc"] == best_val
        assert version.run_id == finals[(family, seed)].info.run_id
        assert float(version.tags["test_acc"]) == pytest.approx(
            finals[(family, seed)].data.metrics["test_acc"], rel=1e-5)
    assert str(client.get_model_version_by_alias(f"tiny.{winner}", "best").version) == "1"


def test_a_final_runs_logged_model_carries_its_signature_files_and_metrics(finished):
    client, by_role, _ = assert_complete_study(finished["uri"])
    run = next(r for r in by_role["final"] if r.data.tags["oneprune.family"] == "agp")
    experiment_id = client.get_experiment_by_name("tiny").experiment_id
    (model,) = client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    metrics = {m.key: m.value for m in model.metrics}
    assert metrics["test_acc"] == run.data.metrics["test_acc"]
    assert metrics["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert 0 < metrics["nonzero_weights"] < 0.2 * metrics["parameters"]
    assert metrics["parameter_bytes"] == 4 * metrics["parameters"]
    assert metrics["macs_per_image"] > metrics["nonzero_macs_per_image"] > 0
    assert model.params["schedule.family"] == "agp"  # the run's config
    folder = Path(mlflow.artifacts.download_artifacts(
        f"models:/{model.model_id}", dst_path=str(finished["folder"] / "download"),
        tracking_uri=finished["uri"]))
    info = mlflow.models.Model.load(folder)
    assert info.flavors["pytorch"]["pytorch_version"] and (folder / "data/model.pt2").exists()
    assert info.signature.inputs.inputs[0].shape == (-1, 1, 8, 8)
    assert info.signature.outputs.inputs[0].shape == (-1, 10)
    assert info.metadata["mean"] and info.metadata["std"] and not info.metadata["slim"]
    assert "ToTensor" in info.metadata["input"]
    assert {path.name for path in (folder / "extra_files").iterdir()} == {
        "model_sparse.pt", "config.json", "metrics.json", "layers.csv"}
    assert (folder / "input_example.json").exists()


def test_a_registered_model_loads_and_scores_in_a_process_with_only_mlflow_and_torch(finished):
    """No Ray, no oneprune, no model code: the test accuracy recomputed from the registry's
    `@best` equals the one logged with it."""
    data = load_dataset("digits")
    torch.save({"images": data.test.images.float() / 255.0, "labels": data.test.labels},
               finished["folder"] / "test-split.pt")
    script = (
        "import sys, json, mlflow, torch\n"
        f"mlflow.set_tracking_uri({finished['uri']!r})\n"
        "uri = next(line.split()[0] for line in sys.stdin if '@best' in line)\n"
        "model = mlflow.pytorch.load_model(uri)\n"
        f"split = torch.load({str(finished['folder'] / 'test-split.pt')!r})\n"
        "with torch.no_grad():\n"
        "    correct = int((model(split['images']).argmax(1) == split['labels']).sum())\n"
        "name = uri.removeprefix('models:/').split('@')[0]\n"
        "version = mlflow.MlflowClient().get_model_version_by_alias(name, 'best')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'oneprune', "
        "'search'))\n"
        "print(json.dumps({'correct': correct, 'logged': version.tags['test_acc'], "
        "'total': len(split['labels']), 'loaded': loaded}))\n")
    done = subprocess.run([sys.executable, "-c", script], input=finished["printed"],
                          capture_output=True, text=True, cwd=finished["folder"], timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["correct"] == round(float(result["logged"]) * result["total"])


def test_one_tuner_ran_every_trial_on_both_nodes_and_kept_no_checkpoint(finished,
                                                                         tune_results):
    # One Tuner ran every trial, on both nodes of the cluster (1 CPU each: two at once).
    trials = tune_results(finished["folder"] / "ray" / "tiny")
    assert len(trials) == 2 * TRIALS + 3 * SEEDS
    rows = [row for trial in trials.values() for row in trial]
    assert {row["rank_nodes"] for row in rows} == {
        node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert all(row["resumed_from"] == 0 for row in rows)  # nothing failed
    # A finished trial keeps no checkpoint (each reported one, after epoch 1).
    assert not list((finished["folder"] / "ray").rglob("checkpoint_*"))


def test_each_family_is_an_optuna_study_and_counts_its_completed_trials(finished):
    # Each family's search is an Optuna study of its own, in the storage beside MLflow.
    storage = f"sqlite:///{finished['folder']}/optuna.db"
    assert sorted(optuna.get_all_study_names(storage)) == ["tiny/agp", "tiny/one_cycle"]
    for family in FAMILIES_UNDER_TEST:
        searched = optuna.load_study(study_name=f"tiny/{family}", storage=storage).trials
        assert [trial.state.name in ("COMPLETE", "PRUNED") for trial in searched] == [
            True] * TRIALS
    _, by_role, _ = assert_complete_study(finished["uri"])
    completed = Counter(run.data.tags["oneprune.family"] for run in by_role["trial"]
                        if "oneprune.stopped_early" not in run.data.tags)
    searched = [run for run in by_role["family"] if run.data.tags["oneprune.family"] != "dense"]
    for run in searched:  # ASHA always lets the first trial at a rung go on
        assert run.data.metrics["trials_completed"] == completed[
            run.data.tags["oneprune.family"]] >= 1


def test_the_comparison_run_holds_the_table_and_figures(finished):
    client, by_role, _ = assert_complete_study(finished["uri"])
    comparison = by_role["comparison"][0]
    artifacts = {a.path for a in client.list_artifacts(comparison.info.run_id)}
    assert artifacts == {"comparison.md", "comparison.csv", "schedules.png", "curves.png"}
    csv_text = Path(client.download_artifacts(comparison.info.run_id, "comparison.csv",
                                              str(finished["folder"]))).read_text()
    assert [line.split(",")[0] for line in csv_text.splitlines()] == [
        "family", *FAMILIES_UNDER_TEST, "dense"]


def test_a_finished_study_is_refused_afresh_and_reprinted_on_resume(finished, capsys):
    # A fresh run of a study that has results is refused; --resume of a finished study
    # reprints its table and adds no run.
    with pytest.raises(SystemExit) as refused:
        main(finished["args"])
    assert refused.value.code == 2 and "--resume" in capsys.readouterr().err
    assert main([*finished["args"], "--resume"]) == 0
    assert "| dense |" in capsys.readouterr().out
    assert_complete_study(finished["uri"])


def test_a_study_whose_mlflow_experiment_was_deleted_is_refused(finished, capsys):
    # Refused rather than half-written; restored afterwards for the other tests.
    client, _ = runs_by_role(finished["uri"], "tiny")
    experiment_id = client.get_experiment_by_name("tiny").experiment_id
    client.delete_experiment(experiment_id)
    try:
        with pytest.raises(SystemExit) as refused:
            main([*finished["args"], "--resume"])
        assert refused.value.code == 2 and "is deleted" in capsys.readouterr().err
    finally:
        client.restore_experiment(experiment_id)
    assert_complete_study(finished["uri"])


def start_driver(study):
    """`search/run.py` on the study in another process, on the session's cluster."""
    log = open(study["folder"] / "driver.log", "w")
    return log, start_search(*study["args"], "--address", study["address"], log=log)


def kill(log, driver):
    driver.send_signal(signal.SIGKILL)
    assert driver.wait(timeout=30) == -signal.SIGKILL
    log.close()


def interrupt(log, driver, study):
    """Ctrl+C: the driver ends with one line that says how to resume, and no traceback."""
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=120) == 130
    log.close()
    printed = (study["folder"] / "driver.log").read_text()
    # The driver's own output; Ray forwards its workers' lines with a "(name pid=N)" prefix,
    # and a reused Tune actor that Ray's SIGTERM stops at teardown may print Python's
    # "Exception ignored ... SystemExit" there (the signal reached a weakref callback).
    own = [line for line in printed.splitlines()
           if not re.match(r"(\x1b\[\d+m)?\(\S+ pid=\d+(, ip=\S+)?\)", line)]
    assert not any("Traceback" in line for line in own), printed
    assert printed.rstrip().splitlines()[-1] == (
        f"interrupted; continue with: python search/run.py {' '.join(study['args'])} "
        f"--address {study['address']} --resume")


@pytest.mark.parametrize(("role", "finished", "stop"), [
    (None, 0, kill),                  # the Tuner has just started (its first state)
    ("trial", TRIALS + 1, kill),      # mid-search
    ("final", 1, kill),               # a family's final runs (and their models) have begun
    (None, 0, interrupt),             # Ctrl+C as the Tuner starts
    # Ctrl+C mid-search: after the first search trial (MLflow lags behind Tune while models
    # are logged; a Ctrl+C that reaches Tune after its last trial lets the study finish)
    ("trial", 1, interrupt),
], ids=["at-the-start", "mid-search", "mid-final-runs", "ctrl-c-at-the-start",
        "ctrl-c-mid-search"])
def test_a_killed_study_resumes_without_lost_or_duplicated_runs(study, role, finished, stop):
    """SIGKILL (or SIGINT) the driver once `finished` runs of `role` have finished (dense
    runs aside), then `--resume` in this process."""
    log, driver = start_driver(study)
    finished_before = set()
    deadline = time.monotonic() + 240
    while True:
        assert driver.poll() is None, (study["folder"] / "driver.log").read_text()
        assert time.monotonic() < deadline, "the driver did not get there in time"
        # Read MLflow only once the Tuner has started (the driver has created its database
        # by then): two processes creating one sqlite schema collide.
        if (study["folder"] / "ray" / "tiny" / "tuner.pkl").exists():
            if role is None:
                break
            try:
                _, by_role = runs_by_role(study["uri"], "tiny")
            except MlflowException:  # the driver holds sqlite's write lock: poll again
                time.sleep(0.05)
                continue
            finished_before = {run.info.run_id for run in by_role.get(role, [])
                               if run.info.status == "FINISHED"
                               and run.data.tags["oneprune.family"] != "dense"}
            if len(finished_before) >= finished:
                break
        time.sleep(0.05)
    if stop is kill:
        kill(log, driver)
    else:
        interrupt(log, driver, study)

    assert main([*study["args"], "--resume"]) == 0
    _, by_role, _ = assert_complete_study(study["uri"])
    assert finished_before <= {run.info.run_id for run in by_role.get(role, [])}


def wait_for_finished_runs(study, driver, role, count):
    """Poll MLflow (once the Tuner has started) until `count` runs of `role` finished."""
    deadline = time.monotonic() + 240
    while True:
        assert driver.poll() is None, (study["folder"] / "driver.log").read_text()
        assert time.monotonic() < deadline, "the driver did not get there in time"
        if (study["folder"] / "ray" / "tiny" / "tuner.pkl").exists():
            with contextlib.suppress(MlflowException):  # the driver holds sqlite's lock
                _, by_role = runs_by_role(study["uri"], "tiny")
                if sum(run.info.status == "FINISHED" for run in by_role.get(role, [])) \
                        >= count:
                    return
        time.sleep(0.05)


def test_a_killed_range_study_resumes_with_the_front_of_all_its_trials(tmp_path, monkeypatch,
                                                                       ray_cluster):
    """A sparsity range (max_drop 100 points: every trial is feasible, so every family
    has final runs) killed mid-search: after `--resume`, each family's Optuna study has its
    budget of completed trials, and the front in MLflow is the front of all of them, the
    trials before the kill included."""
    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path, ray_cluster,
                        sparsity={"min": 0.5, "max": 0.9, "max_drop": 100.0},
                        search={"seed": 0, "asha": False})
    log, driver = start_driver(study)
    wait_for_finished_runs(study, driver, "trial", 2)
    kill(log, driver)
    assert main([*study["args"], "--resume"]) == 0
    client, by_role, _ = assert_complete_study(study["uri"])
    (comparison,) = by_role["comparison"]
    pareto = list(csv.DictReader(Path(client.download_artifacts(
        comparison.info.run_id, "pareto.csv", str(tmp_path))).open()))
    storage = f"sqlite:///{tmp_path}/optuna.db"
    for family in FAMILIES_UNDER_TEST:
        optuna_study = optuna.load_study(study_name=f"tiny/{family}", storage=storage)
        complete = [t for t in optuna_study.trials if t.state.name == "COMPLETE"]
        assert len(complete) == TRIALS
        assert {t.state.name for t in optuna_study.trials} <= {"COMPLETE", "FAIL"}
        # Each completed Optuna trial is a finished MLflow trial run of the same sparsity
        # and accuracy: none was lost or counted twice by the resume.
        runs = sorted((float(run.data.params["schedule.final_sparsity"]),
                       run.data.metrics["val_acc"]) for run in by_role["trial"]
                      if run.data.tags["oneprune.family"] == family)
        assert runs == sorted((t.params["final_sparsity"], t.values[0]) for t in complete)
        assert {int(row["trial"]) for row in pareto if row["family"] == family} == {
            t.number for t in optuna_study.best_trials}


def test_a_driver_killed_while_registering_the_models_resumes_to_one_version_each(study):
    """A test-only fault SIGKILLs the driver right after it registered the first family's
    model (the rest of the verdict unwritten); `--resume` registers the others, once."""
    path = Path(study["args"][1])
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "faults": {"kill_driver_at": "registering"}}))
    log, driver = start_driver(study)
    assert driver.wait(timeout=300) == -signal.SIGKILL, (
        study["folder"] / "driver.log").read_text()
    log.close()
    client, _ = runs_by_role(study["uri"], "tiny")
    assert len(client.search_registered_models()) == 1
    path.write_text(yaml.safe_dump(spec))
    assert main([*study["args"], "--resume"]) == 0
    assert_complete_study(study["uri"])


def test_trials_the_saved_state_lost_are_run_again(study, capsys):
    """A driver killed while Tune writes its snapshot can leave a searcher state that
    counted a trial the experiment state lacks. Made here by dropping, from the newest
    snapshot of a killed study, a trial that the searcher's saved state has: the resume
    hands it out again and still ends with one run per trial and exact budgets."""
    log, driver = start_driver(study)
    state_dir = study["folder"] / "ray" / "tiny"
    deadline = time.monotonic() + 240

    def saved_trials():
        """Trial ids in the newest experiment state and in the newest searcher state."""
        states = sorted(state_dir.glob("experiment_state-*.json"))
        searchers = sorted(state_dir.glob("searcher-state-*.pkl"))
        if not states or not searchers:
            return set(), set()
        try:
            tune_ids = {json.loads(item[0])["trial_id"]
                        for item in json.loads(states[-1].read_text())["trial_data"]}
            searched = set(pickle.loads(searchers[-1].read_bytes())["trials"])
        except (ValueError, EOFError, pickle.UnpicklingError):  # caught mid-write
            return set(), set()
        return tune_ids, searched

    while not (set.intersection(*saved_trials())):
        assert driver.poll() is None, (study["folder"] / "driver.log").read_text()
        assert time.monotonic() < deadline, "Tune saved no trial in time"
        time.sleep(0.05)
    kill(log, driver)
    newest = max(state_dir.glob("experiment_state-*.json"))
    state = json.loads(newest.read_text())
    tune_ids, searched = saved_trials()
    dropped = sorted(tune_ids & searched)[0]
    state["trial_data"] = [item for item in state["trial_data"]
                           if json.loads(item[0])["trial_id"] != dropped]
    newest.write_text(json.dumps(state))

    assert main([*study["args"], "--resume"]) == 0
    assert "1 trial(s) missing from the saved Tune state" in capsys.readouterr().out
    assert_complete_study(study["uri"])


def test_failing_and_diverging_trials_do_not_stop_the_study(study, capsys, tune_results):
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

    client, by_role = runs_by_role(study["uri"], "tiny")
    assert {role: len(runs) for role, runs in by_role.items()} == {
        "family": 3, "trial": 2 * TRIALS, "final": 2 * SEEDS, "comparison": 1}
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
    searched = [rows for rows in tune_results(study["folder"] / "ray" / "tiny").values()
                if rows[0]["config"]["part"] == "search"
                and rows[0]["config"]["family"] == "one_cycle"]
    assert len(searched) == TRIALS
    for rows in searched:  # retried from the checkpoint of epoch 1, then deleted
        assert [(row["epoch"], row["resumed_from"]) for row in rows] == [(1, 0), (2, 1)]
    assert not list((study["folder"] / "ray").rglob("checkpoint_*"))


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser",
                                                "google-chrome") if shutil.which(name)), None)


@pytest.mark.skipif(BROWSER is None and os.environ.get("CI") != "true",
                    reason="needs Chromium (apt install chromium)")
def test_the_printed_url_opens_the_runs_table_in_a_browser(finished, tmp_path):
    """`mlflow ui` on the study's store, and the printed URL opened in headless Chromium:
    what loads is the runs table with the family parents (their trials nested under them),
    not MLflow 3's GenAI overview. Under CI=true a missing browser fails the test."""
    assert BROWSER is not None, "CI=true and no Chromium: .ci/run installs it (apt)"
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", finished["uri"],
         "--host", "127.0.0.1", "--port", str(port)], cwd=finished["folder"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow ui did not come up"
                time.sleep(0.5)
        printed = next(line.split()[0] for line in finished["printed"].splitlines()
                       if "workflowType=machine_learning" in line)
        url = printed.replace("http://127.0.0.1:5000", f"http://127.0.0.1:{port}")
        page = subprocess.run(
            [BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1600,4000",
             "--virtual-time-budget=20000",
             "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = re.sub(r"<[^>]+>", " ", page)
    for name in ("one_cycle", "agp", "dense", "comparison"):
        assert re.search(rf"\b{name}\b", text), name
    assert "Run Name" in text  # the runs table's header
    # Trials and final runs (the dense seeds too) are nested under their parent rows, not
    # loose at the top; MLflow 3's GenAI overview (token usage, traces) is not what loads.
    assert not re.search(r"\btrial [0-9a-f]{8}\b|\bseed [0-9]\b", text)
    assert "Token Usage" not in text
