"""Teachers, through the real service: families that distil from the dense reference of the
same seed (search trials: the dense run with the search seed), the distillation settings
searched with the schedule, what each model cost with its teacher, a teacher file that a
resumed study reads again as it was, and bad teachers refused before anything runs."""

import re

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from testkit.driver import kill_search_when, run_search, runs_by_role, runs_of

from oneprune.config import TrainConfig
from oneprune.models import ConvNet
from oneprune.starts import weights_digest
from oneprune.train import train
from search.experiment.loading import ConfigError, parse_experiment
from search.run import main
from search.tracking.downloads import given_weights

EPOCHS, TRIALS, SEEDS = 2, 2, 2
VALID = {"name": "taught", "dataset": "digits", "sparsity": 0.9}


# -- the experiment file ---------------------------------------------------------------


def test_a_teacher_searches_the_distillation_settings_of_its_arms_only():
    experiment = parse_experiment({**VALID, "families": ["one_cycle", "agp"],
                                   "teacher": {"one_cycle": "dense"}})
    assert experiment.tuned_for("one_cycle")["distill_weight"] == (0.0, 1.0)  # w = 0 in it
    assert experiment.tuned_for("one_cycle")["distill_temperature"] == (1.0, 8.0)
    assert "distill_weight" not in experiment.tuned_for("agp")
    assert "distill_weight" not in experiment.tuned_for("dense")
    assert experiment.keeps_dense and experiment.counts_model_cost
    fixed = parse_experiment({**VALID, "teacher": "dense",
                              "training": {"distill_temperature": 2.0,
                                           "distill_weight": [0.2, 0.8]}})
    assert fixed.tuned["distill_weight"] == (0.2, 0.8) and "distill_temperature" not in \
        fixed.tuned
    plain = parse_experiment(VALID)
    assert not plain.distils and "distill_weight" not in plain.tuned


@pytest.mark.parametrize(("raw", "expected"), [
    ({"training": {"distill_weight": 0.5}}, "training.distill_weight is given, but no arm "
                                            "has a teacher"),
    ({"teacher": "dense", "training": {"distill_weight": 1.5}},
     "training.distill_weight must be in [0, 1], got 1.5"),
    ({"teacher": "dense", "training": {"distill_temperature": 0}},
     "training.distill_temperature must be in (0, 100], got 0"),
    ({"teacher": "dense", "training": {"distill_temperature": [-1, 4]}},
     "training.distill_temperature must be in (0, 100], got -1"),
    ({"teacher": {"agp": "dense"}, "families": ["one_cycle"]},
     "teacher.agp: not an arm of this study"),
    ({"teacher": {"one_cycle": "a.pt", "agp": "b.pt"}, "families": ["one_cycle", "agp"]},
     "teacher names 2 weights (a.pt, b.pt); a study reads one"),
    ({"teacher": 3}, "teacher must be none, dense, the path of a weights file"),
])
def test_bad_teachers_and_settings_are_refused_in_one_line(raw, expected):
    with pytest.raises(ConfigError) as error:
        parse_experiment({**VALID, **raw})
    assert expected in str(error.value) and "\n" not in str(error.value)


# -- studies with a teacher ----------------------------------------------------------------


def write_study(folder, address, teacher, name="taught"):
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "dataset": "digits", "sparsity": 0.9, "epochs": EPOCHS,
        "teacher": teacher, "families": ["one_cycle", "agp"], "trials_per_family": TRIALS,
        "final_seeds": SEEDS, "checkpoint_every": 1, "search": {"seed": 0},
        "training": {"lr_max": [3e-3, 3e-2], "distill_weight": [0.3, 0.9]},
        "tracking": {"tracking_uri": f"sqlite:///{folder}/mlflow.db"}}))
    return {"args": ["--experiment", str(path), "--storage-path", str(folder / "ray"),
                     "--address", address],
            "uri": f"sqlite:///{folder}/mlflow.db", "folder": folder, "name": name}


@pytest.fixture(scope="module")
def taught(tmp_path_factory, ray_cluster):
    """One study run to its end: One-Cycle and AGP, each distilling from the dense
    reference."""
    folder = tmp_path_factory.mktemp("taught")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        study = write_study(folder, ray_cluster, "dense")
        assert main(study["args"]) == 0
        yield study


def test_every_run_distils_from_the_dense_reference_of_its_seed(taught):
    client, by_role = runs_by_role(taught["uri"], taught["name"])
    dense = {}
    for seed, run in runs_of(by_role, "final", "dense").items():
        (model,) = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
        dense[seed] = weights_digest(given_weights(f"models:/{model.model_id}",
                                                   client.tracking_uri))
        assert "oneprune.teacher_digest" not in run.data.tags  # the teacher has none
    assert len(set(dense.values())) == SEEDS
    (start,) = by_role["start"]  # the dense run with the search seed
    for family in ("one_cycle", "agp"):
        finals = runs_of(by_role, "final", family)
        assert {seed: run.data.tags["oneprune.teacher_digest"]
                for seed, run in finals.items()} == dense  # paired by seed
        trials = runs_of(by_role, "trial", family).values()
        (digest,) = {run.data.tags["oneprune.teacher_digest"] for run in trials}
        assert digest not in dense.values() and start.data.tags["oneprune.seed"] == "0"
        for run in [*finals.values(), *trials]:
            assert 0.3 <= float(run.data.params["distill_weight"]) <= 0.9
            assert run.data.params["teacher"] == "dense"
            assert "oneprune.init_digest" not in run.data.tags  # from scratch all the same


def test_the_verdict_counts_the_teachers_training(taught):
    client, by_role = runs_by_role(taught["uri"], taught["name"])
    (comparison,) = by_role["comparison"]
    table = client.download_artifacts(comparison.info.run_id, "comparison.md",
                                      str(taught["folder"]))
    text = open(table).read()
    assert text.startswith("# taught: convnet on digits at 90% sparsity, 2 epochs, distilled "
                           "from dense\n")
    rows = {line.split(" | ")[0].lstrip("| "): line
            for line in text.split("\n\n")[1].splitlines()[2:]}
    for family in ("one_cycle", "agp"):
        assert re.search(rf"\| {2 * EPOCHS} \({EPOCHS} dense \+ {EPOCHS}\), \d+\.\d s \|$",
                         rows[family].rstrip())
    assert re.search(rf"\| {EPOCHS}, \d+\.\d s \|$", rows["dense"].rstrip())
    families = {run.data.tags["oneprune.family"]: run for run in by_role["family"]}
    own = {seed: run.data.metrics["train_seconds"]
           for seed, run in runs_of(by_role, "final", "agp").items()}
    dense = {seed: run.data.metrics["train_seconds"]
             for seed, run in runs_of(by_role, "final", "dense").items()}
    assert families["agp"].data.metrics["model_seconds"] == pytest.approx(
        sum(own[seed] + dense[seed] for seed in own) / SEEDS)
    assert "distill_weight=" in rows["agp"]  # searched, and chosen, like the schedule


# -- a teacher file: refusals and resumes ---------------------------------------------------


@pytest.mark.slow  # the CLI in a subprocess
@pytest.mark.parametrize("kind", ["missing", "classes"])
def test_a_teacher_that_cannot_be_read_or_does_not_fit_is_refused_before_anything_runs(
        tmp_path, kind):
    torch.save(ConvNet(num_classes=5, in_channels=1).state_dict(), tmp_path / "five.pt")
    teacher = {"missing": str(tmp_path / "nothing.pt"), "classes": str(tmp_path / "five.pt")}
    study = write_study(tmp_path, "local", teacher[kind])
    done = run_search(*study["args"][:-2], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert {"missing": "teacher '" + teacher["missing"] + "': no such file or folder",
            "classes": "does not fit the model: tensor 'classifier.weight' has shape (5, 64), "
                       "the model's (10, 64)"}[kind] in done.stderr
    assert not (tmp_path / "mlflow.db").exists() or MlflowClient(
        study["uri"]).get_experiment_by_name("taught") is None
    assert not (tmp_path / "ray").exists()


def test_a_resumed_study_distils_from_the_teacher_it_started_with(tmp_path, ray_cluster,
                                                                  monkeypatch, capsys):
    """Kill the driver once a search trial has ended; the teacher's file then changes; the
    resumed study says so, and every run, before the kill and after, carries the digest of
    the teacher the study started with."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "teacher.pt"
    torch.save(train(TrainConfig(schedule=None, epochs=2, lr_max=1e-2, seed=4)).model
               .state_dict(), path)
    original = weights_digest(torch.load(path))
    study = write_study(tmp_path, ray_cluster, str(path))
    kill_search_when(*study["args"], folder=tmp_path, uri=study["uri"], name=study["name"],
                     ready=lambda by_role: any(run.info.status == "FINISHED"
                                               for run in by_role.get("trial", [])))
    torch.save(train(TrainConfig(schedule=None, epochs=1, seed=11)).model.state_dict(), path)
    assert main([*study["args"], "--resume"]) == 0
    assert f"teacher {str(path)!r} changed since the study started; it goes on from the " \
           f"weights it started with" in capsys.readouterr().out
    _, by_role = runs_by_role(study["uri"], study["name"])
    for role in ("trial", "final"):
        for family in ("one_cycle", "agp"):
            runs = runs_of(by_role, role, family).values()
            assert runs and {run.data.tags["oneprune.teacher_digest"] for run in runs} == {
                original}, (role, family)
    assert not (tmp_path / "ray" / "taught" / "starts").exists()
