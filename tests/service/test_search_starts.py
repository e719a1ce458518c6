"""Where runs start, through the real service: arms of one family from different starts in
one study (`one_shot-dense`: the pipeline train, prune, fine-tune), the dense reference's
weights of the same seed for them, weights a study is given (a file, an MLflow model URI),
what each model cost in all, and a resumed study that goes on from the same weights."""

import pickle
import re

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from testkit.driver import kill_search_when, run_search, runs_by_role, runs_of

from oneprune.config import TrainConfig
from oneprune.starts import weights_digest
from oneprune.train import train
from search.experiment.loading import ConfigError, parse_experiment
from search.run import main
from search.tracking.downloads import given_weights

EPOCHS, TRIALS, SEEDS = 2, 2, 2
ARMS = ["one_cycle", "one_cycle-scratch", "one_shot-dense"]
VALID = {"name": "starts", "dataset": "digits", "sparsity": 0.9}


# -- the experiment file ---------------------------------------------------------------


def test_arms_start_where_their_suffix_or_init_says():
    experiment = parse_experiment({**VALID, "families": ["one_cycle", "one_shot-dense"]})
    assert [experiment.start_of(arm) for arm in experiment.families] == ["scratch", "dense"]
    assert experiment.family_of("one_shot-dense") == "one_shot"
    assert experiment.keeps_dense and experiment.counts_model_cost
    given = parse_experiment({**VALID, "init": "trained.pt",
                              "families": ["one_cycle", "one_cycle-scratch"]})
    assert [given.start_of(arm) for arm in given.families] == ["given", "scratch"]
    assert given.start_of("dense") == "given" and not given.keeps_dense
    plain = parse_experiment(VALID)
    assert not plain.counts_model_cost and plain.start_of("dense") == "scratch"


@pytest.mark.parametrize(("raw", "expected"), [
    ({"families": ["one_cycle-warm"]}, "the start after '-' must be one of 'scratch', "
                                       "'dense', 'given', got 'warm'"),
    ({"families": ["one_cycle-given"]}, "one_cycle-given starts from given weights, but "
                                        "init does not name any"),
    ({"families": ["one_cycle", "one_cycle-scratch"]}, "one_cycle-scratch and one_cycle "
                                                       "are one arm"),
    ({"families": ["zigzag-dense"]}, "families must be one of 'one_cycle'"),
    ({"init": ""}, "init must be scratch, dense, the path of a weights file"),
])
def test_bad_starts_are_refused_in_one_line(raw, expected):
    with pytest.raises(ConfigError) as error:
        parse_experiment({**VALID, **raw})
    assert expected in str(error.value) and "\n" not in str(error.value)


# -- a study that starts from given weights and from the dense reference -----------------


def write_study(folder, address, init, name="starts"):
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "dataset": "digits", "sparsity": 0.9, "epochs": EPOCHS, "init": init,
        "families": ARMS, "trials_per_family": TRIALS, "final_seeds": SEEDS,
        "checkpoint_every": 1, "search": {"seed": 0},
        "training": {"lr_max": [3e-3, 3e-2]},
        "tracking": {"tracking_uri": f"sqlite:///{folder}/mlflow.db"}}))
    return {"args": ["--experiment", str(path), "--storage-path", str(folder / "ray"),
                     "--address", address],
            "uri": f"sqlite:///{folder}/mlflow.db", "folder": folder, "name": name}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A dense convnet trained on digits, saved as a state_dict file: the weights a user
    brings."""
    folder = tmp_path_factory.mktemp("trained")
    result = train(TrainConfig(schedule=None, epochs=2, lr_max=1e-2, seed=3))
    torch.save(result.model.state_dict(), folder / "trained.pt")
    return folder / "trained.pt"


@pytest.fixture(scope="module")
def started(tmp_path_factory, ray_cluster, trained):
    """The study run to its end once, in this process: one_cycle from the given weights,
    one_cycle from scratch, one_shot from the dense reference (the given model fine-tuned)."""
    folder = tmp_path_factory.mktemp("started")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        study = write_study(folder, ray_cluster, str(trained))
        assert main(study["args"]) == 0
        yield study


def dense_digests(client, by_role):
    """The digest of each dense final run's trained weights, read back from its logged
    model, by seed."""
    digests = {}
    for seed, run in runs_of(by_role, "final", "dense").items():
        (model,) = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
        digests[seed] = weights_digest(given_weights(f"models:/{model.model_id}",
                                                     client.tracking_uri))
    return digests


def assert_runs_start_from_their_weights(study, given_digest):
    client, by_role = runs_by_role(study["uri"], study["name"])
    dense = dense_digests(client, by_role)
    assert len(dense) == SEEDS and len(set(dense.values())) == SEEDS
    for seed, run in runs_of(by_role, "final", "one_shot-dense").items():  # paired by seed
        assert run.data.tags["oneprune.init_digest"] == dense[seed]
    searched = runs_of(by_role, "trial", "one_shot-dense").values()
    (start,) = {run.data.tags["oneprune.init_digest"] for run in searched}
    assert start not in dense.values()  # the dense run with the search seed
    (start_run,) = by_role["start"]
    assert (start_run.data.tags["oneprune.family"], start_run.data.tags["oneprune.seed"]) == (
        "dense", "0")
    assert start_run.data.tags["oneprune.init_digest"] == given_digest  # the given, tuned
    for arm in ("one_cycle", "dense", "given"):
        for role in ("trial", "final"):
            for run in runs_of(by_role, role, arm).values():
                assert run.data.tags["oneprune.init_digest"] == given_digest, (arm, role)
    for role in ("trial", "final"):
        for run in runs_of(by_role, role, "one_cycle-scratch").values():
            assert "oneprune.init_digest" not in run.data.tags
            assert run.data.params["init"] == "scratch"
    return client, by_role


def test_every_run_starts_from_its_weights_paired_by_seed(started, trained):
    assert_runs_start_from_their_weights(started, weights_digest(torch.load(trained)))


def test_the_verdict_has_the_model_as_given_and_what_each_model_cost(started):
    client, by_role = runs_by_role(started["uri"], "starts")
    (comparison,) = by_role["comparison"]
    table = (client.download_artifacts(comparison.info.run_id, "comparison.md",
                                       str(started["folder"])))
    lines = open(table).read().split("\n\n")[1].splitlines()[2:]  # the verdict's rows
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines}
    assert set(rows) == {*ARMS, "dense", "given"}
    assert re.search(rf"\| given \+ {2 * EPOCHS} \({EPOCHS} dense \+ {EPOCHS}\), "
                     rf"\d+\.\d s \|$", rows["one_shot-dense"].rstrip())
    assert re.search(rf"\| {EPOCHS}, \d+\.\d s \|$", rows["one_cycle-scratch"].rstrip())
    assert rows["given"].rstrip().endswith("| given |")
    families = {run.data.tags["oneprune.family"]: run for run in by_role["family"]}
    assert families["one_shot-dense"].data.metrics["model_epochs"] == 2 * EPOCHS
    own = {seed: run.data.metrics["train_seconds"]
           for seed, run in runs_of(by_role, "final", "one_shot-dense").items()}
    dense = {seed: run.data.metrics["train_seconds"]
             for seed, run in runs_of(by_role, "final", "dense").items()}
    assert families["one_shot-dense"].data.metrics["model_seconds"] == pytest.approx(
        sum(own[seed] + dense[seed] for seed in own) / SEEDS)
    assert families["one_cycle-scratch"].data.metrics["model_epochs"] == EPOCHS
    assert families["given"].data.metrics["model_epochs"] == 0


def test_the_weights_runs_start_from_are_deleted_once_the_study_ends(started):
    assert not (started["folder"] / "ray" / "starts" / "starts").exists()
    assert (started["folder"] / "ray" / "starts").is_dir()  # the Tuner's folder stays


def test_a_study_starts_from_a_model_another_study_logged(started, tmp_path, ray_cluster,
                                                          monkeypatch):
    """`init: models:/starts.dense/1`: the dense reference another study registered."""
    monkeypatch.chdir(tmp_path)
    client, by_role = runs_by_role(started["uri"], "starts")
    (version,) = client.search_model_versions("name = 'starts.dense'")
    digest = dense_digests(client, by_role)[version.tags["oneprune.seed"]]
    study = write_study(tmp_path, ray_cluster, "models:/starts.dense/1", name="again")
    path = tmp_path / "again.yaml"
    raw = yaml.safe_load(path.read_text())
    raw.update(families=["one_cycle"], trials_per_family=1,
               tracking={"tracking_uri": started["uri"]})
    path.write_text(yaml.safe_dump(raw))
    assert main(study["args"]) == 0
    _, again = runs_by_role(started["uri"], "again")
    assert {run.data.tags["oneprune.init_digest"] for role in ("trial", "final")
            for run in again[role]} == {digest}


# -- refusals and resumes ----------------------------------------------------------------


@pytest.mark.slow  # the CLI in a subprocess
@pytest.mark.parametrize("kind", ["missing", "pickle", "shapes", "uri"])
def test_a_start_that_cannot_be_read_or_does_not_fit_is_refused_before_anything_runs(
        tmp_path, kind):
    init = {"missing": str(tmp_path / "nothing.pt"), "pickle": str(tmp_path / "code.pt"),
            "shapes": str(tmp_path / "narrow.pt"), "uri": "models:/nothing/1"}[kind]
    (tmp_path / "code.pt").write_bytes(pickle.dumps(print))
    narrow = train(TrainConfig(schedule=None, epochs=1, width=0.5))
    torch.save(narrow.model.state_dict(), tmp_path / "narrow.pt")
    study = write_study(tmp_path, "local", init)
    done = run_search(*study["args"][:-2], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert {"missing": "no such file or folder", "pickle": "is not a weights file",
            "shapes": "does not fit the model: tensor 'features.0.weight' has shape "
                      "(16, 1, 3, 3), the model's (32, 1, 3, 3)",
            "uri": "cannot read models:/nothing/1"}[kind] in done.stderr
    if (tmp_path / "mlflow.db").exists():  # a URI is looked up in the store: nothing added
        assert MlflowClient(study["uri"]).get_experiment_by_name("starts") is None
    assert not (tmp_path / "ray").exists()


def test_a_resumed_study_goes_on_from_the_weights_it_started_with(tmp_path, ray_cluster,
                                                                  trained, monkeypatch,
                                                                  capsys):
    """Kill the driver once a search trial of the arm from dense has ended; the given file
    then changes; the resumed study says so and goes on from the weights it started with,
    and every run (those of the first attempt, and the rest) from the weights it must."""
    monkeypatch.chdir(tmp_path)
    given = tmp_path / "given.pt"
    given.write_bytes(trained.read_bytes())
    study = write_study(tmp_path, ray_cluster, str(given))
    kill_search_when(*study["args"], folder=tmp_path, uri=study["uri"], name="starts",
                     ready=lambda by_role: any(
                         run.info.status == "FINISHED"
                         for run in runs_of(by_role, "trial", "one_shot-dense").values()))
    original = weights_digest(torch.load(given))
    torch.save(train(TrainConfig(schedule=None, epochs=1, seed=11)).model.state_dict(), given)
    assert main([*study["args"], "--resume"]) == 0
    assert "changed since the study started; it goes on from the weights it started with" \
        in capsys.readouterr().out
    assert_runs_start_from_their_weights(study, original)
