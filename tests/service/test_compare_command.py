"""`oneprune-compare`: two studies' final runs in a real MLflow store (written as the
service tags them), family by family, paired by seed; bad input in one line, exit 2."""

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from search.compare_command import main

BASE = {"one_cycle": {1: 0.80, 2: 0.84, 3: 0.82}, "agp": {1: 0.86, 2: 0.85, 3: 0.88},
        "dense": {1: 0.99, 2: 0.98, 3: 0.99}}
OTHER = {"one_cycle": {1: 0.83, 2: 0.85, 3: 0.86}, "agp": {1: 0.82, 2: 0.86, 3: 0.80},
         "dense": {1: 0.99, 2: 0.98, 3: 0.99}, "one_shot": {1: 0.5, 2: 0.6, 3: 0.7}}


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    for study, families in (("base", BASE), ("other", OTHER)):
        experiment = client.create_experiment(study)
        for family, by_seed in families.items():
            for seed, accuracy in by_seed.items():
                run = client.create_run(experiment, tags={
                    "oneprune.role": "final", "oneprune.family": family,
                    "oneprune.seed": str(seed)})
                client.log_metric(run.info.run_id, "test_acc", accuracy)
                client.set_terminated(run.info.run_id)
        failed = client.create_run(experiment, tags={  # a failed run counts for nothing
            "oneprune.role": "final", "oneprune.family": "agp", "oneprune.seed": "9"})
        client.set_terminated(failed.info.run_id, "FAILED")
    return uri


def test_every_common_family_is_paired_by_seed(store, capsys):
    assert main(["base", "other", "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.splitlines()
            if line.startswith("| ") and not line.startswith(("| family", "| ---"))}
    assert list(rows) == ["one_cycle", "agp", "dense"]  # base's order, dense last
    # one_cycle: +3, +1, +4 points -> mean +2.67, t(0.975, 2) * 1.528 / sqrt(3) = 3.79
    assert rows["one_cycle"] == ("| one_cycle | 82.00 (n=3) | 84.67 (n=3) | "
                                 "+2.67 [-1.13, +6.46] | 3/3 |")
    assert "| agp | 86.33 (n=3) | 82.67 (n=3) | -3.67" in rows["agp"]
    assert rows["agp"].endswith("| 1/3 |")
    assert "| +0.00 [+0.00, +0.00] | 0/3 |" in rows["dense"]
    assert "base ranks agp first; other ranks one_cycle first" in out


@pytest.mark.parametrize(("args", "message"), [
    (["base", "missing"], "no study 'missing' in sqlite:///"),
    (["base", "base"], "compare two studies, got 'base' twice"),
    (["base", "other", "--tracking-uri", "sqlite:////nonexistent/m.db"],
     "no MLflow store at /nonexistent/m.db"),
])
def test_bad_input_is_one_line_and_exit_2(store, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main([*args, *([] if "--tracking-uri" in args else ["--tracking-uri", store])])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_studies_with_nothing_in_common_are_refused(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    for study, family in (("a", "agp"), ("b", "one_cycle")):
        run = client.create_run(client.create_experiment(study), tags={
            "oneprune.role": "final", "oneprune.family": family, "oneprune.seed": "1"})
        client.log_metric(run.info.run_id, "test_acc", 0.5)
        client.set_terminated(run.info.run_id)
    with pytest.raises(SystemExit):
        main(["a", "b", "--tracking-uri", uri])
    assert "studies 'a' and 'b' have no family in common" in capsys.readouterr().err


@pytest.mark.slow  # a subprocess
def test_the_command_is_installed(store):
    done = subprocess.run([sys.executable, "-m", "search.compare_command", "base", "other",
                           "--tracking-uri", store], capture_output=True, text=True)
    assert done.returncode == 0 and "| one_cycle |" in done.stdout, done.stderr
