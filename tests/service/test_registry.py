"""The models a study hands over, on a real sqlite MLflow store: logged once per final run
(a stale half-logged one replaced), slim where removal is exact and masked where it is
not, pickled with their code where torch.export refuses them, registered once per
family with one `@best`, chosen by validation accuracy."""

import json
import os
import subprocess
import sys

import pytest
import torch
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from oneprune.config import TrainConfig
from oneprune.data import load_dataset
from oneprune.saving import save_pruned
from oneprune.schedules import OneCycle
from oneprune.train import train
from search.tracking.registry import (
    BEST,
    choose_seed,
    log_final_model,
    logged_model_id,
    mark_best,
    register_family,
)

USER_MODULE = '''
import torch
from torch import nn


class Gated(nn.Module):
    """A Python branch on a tensor's value: torch.export refuses it."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        if x.mean() > 0:
            x = x * 2
        return self.head(x.mean(dim=(2, 3)))


class Rotated(nn.Module):
    """Rotates its channels by one between two convolutions: Torch-Pruning's graph does not
    follow that, so removing filters would change the function."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.first = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.second = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.roll(torch.relu(self.first(x)), 1, dims=1)
        return self.head(torch.relu(self.second(x)).mean(dim=(2, 3)))
'''


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store with one run (the final run whose model is logged), in a
    temporary working folder (MLflow puts a sqlite store's artifacts under ./mlruns)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("study")
    return {"uri": uri, "client": client, "experiment_id": experiment_id,
            "run": client.create_run(experiment_id).info.run_id, "folder": tmp_path}


@pytest.fixture
def user_code(user_code_folder):
    return user_code_folder("registrynets", USER_MODULE)


def saved_run(digits, folder, **settings):
    result = train(TrainConfig(epochs=1, lr_max=1e-2, device="cpu", **settings), data=digits)
    save_pruned(result, folder, dense=False)
    return result


def example(digits):
    return (digits.test.images[:2].float() / 255.0).numpy()


def models_of(store):
    return list(store["client"].search_logged_models([store["experiment_id"]]))


def test_a_final_runs_model_is_logged_once_and_a_stale_half_logged_one_is_replaced(
        digits, store):
    saved_run(digits, store["folder"] / "run", schedule=OneCycle(0.9))
    client = store["client"]
    stale = client.create_logged_model(store["experiment_id"], name="x",
                                       source_run_id=store["run"])  # a killed driver's
    first = log_final_model(store["uri"], store["run"], store["folder"] / "run",
                            name="agp-seed1", example=example(digits))
    again = log_final_model(store["uri"], store["run"], store["folder"] / "run",
                            name="agp-seed1", example=example(digits))
    assert first == again == logged_model_id(store["uri"], store["run"])
    (model,) = models_of(store)
    assert model.model_id == first != stale.model_id
    assert model.status == LoggedModelStatus.READY and model.tags["oneprune.format"] == "pt2"


def test_a_filter_model_whose_removal_would_not_be_exact_is_logged_masked(
        digits, store, user_code):
    saved_run(digits, store["folder"] / "run", model="registrynets:Rotated",
              granularity="filter", schedule=OneCycle(0.5))
    said = []
    log_final_model(store["uri"], store["run"], store["folder"] / "run", name="rotated",
                    example=example(digits), echo=said.append)
    assert len(said) == 1 and said[0].startswith("[rotated] removing the zeroed filters of "
                                                 "Rotated changed its outputs")
    (model,) = models_of(store)
    assert model.tags["oneprune.slim"] == "False" and model.tags["oneprune.format"] == "pt2"


@pytest.mark.slow  # a subprocess
def test_a_model_torch_export_refuses_is_pickled_with_its_code(digits, store, user_code,
                                                               tmp_path):
    result = saved_run(digits, store["folder"] / "run", model="registrynets:Gated",
                       schedule=OneCycle(0.5))
    said = []
    model_id = log_final_model(store["uri"], store["run"], store["folder"] / "run",
                               name="gated", example=example(digits), echo=said.append)
    assert len(said) == 1 and "torch.export cannot export 'registrynets:Gated'" in said[0]
    assert "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true" in said[0]
    (model,) = models_of(store)
    assert model.tags["oneprune.format"] == "pickle" and model.model_id == model_id
    # A process without this project's path or the user's folder: the pickle's code
    # travels with the model (code_paths).
    torch.save({"images": digits.test.images.float() / 255.0,
                "labels": digits.test.labels}, tmp_path / "split.pt")
    script = (
        "import json, mlflow, torch\n"
        f"model = mlflow.pytorch.load_model('models:/{model_id}')\n"
        f"split = torch.load({str(tmp_path / 'split.pt')!r})\n"
        "with torch.no_grad():\n"
        "    logits = model(split['images'])\n"
        "print(json.dumps(int((logits.argmax(1) == split['labels']).sum())))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, timeout=120,
                          capture_output=True, text=True,
                          env={**env, "MLFLOW_TRACKING_URI": store["uri"],
                               "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == round(result.test_acc * 360)


def test_a_family_is_registered_once_and_best_moves_to_the_winner(digits, store):
    saved_run(digits, store["folder"] / "run", schedule=OneCycle(0.9))
    client = store["client"]
    other = client.create_run(store["experiment_id"]).info.run_id
    for run in (store["run"], other):
        log_final_model(store["uri"], run, store["folder"] / "run", name="m",
                        example=example(digits))
    versions = {}
    for family, run in (("agp", store["run"]), ("one_cycle", other)):
        for _ in range(2):  # a resumed study registers again: the same version
            versions[family] = register_family(store["uri"], "study", family, run,
                                               description="d", tags={"oneprune.seed": "1"})
    assert [len(client.search_model_versions(f"name = 'study.{f}'")) for f in versions] \
        == [1, 1]
    mark_best(store["uri"], "study", versions, "agp")
    mark_best(store["uri"], "study", versions, "one_cycle")
    assert client.get_registered_model("study.one_cycle").aliases == {BEST: 1}
    assert not client.get_registered_model("study.agp").aliases


def test_the_seed_is_chosen_by_validation_accuracy_never_test():
    assert choose_seed([1, 2, 3], [0.90, 0.95, 0.95]) == 2  # ties: the lower seed
    assert choose_seed([4, 5], [float("nan"), 0.5]) == 5
    assert choose_seed([4], [float("nan")]) is None
