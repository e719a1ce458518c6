"""The search service with a user's own model and images: the code it ships to the nodes,
and what it refuses before Ray and MLflow start (the library's side:
tests/lib/test_user_models.py and tests/lib/test_imagefolder.py)."""

import os
import subprocess
import sys

import pytest
import yaml
from PIL import Image
from testkit import ROOT

from search.experiment.loading import parse_experiment
from search.run import code_to_ship

USER_MODULE = """
from torch import nn


def build(num_classes, in_channels, head_only=False):
    if head_only:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
"""


@pytest.fixture
def user_code(user_code_folder):
    """`usernet.py` in a folder of its own, importable like a user's code on PYTHONPATH."""
    return user_code_folder("usernet", USER_MODULE)


@pytest.mark.slow
def test_the_code_the_service_ships_to_the_nodes(user_code, monkeypatch):
    def ship(model):
        return code_to_ship(parse_experiment({"name": "x", "model": model}))

    assert ship("usernet:build") == [str(user_code / "usernet.py")]   # a module: its file
    monkeypatch.syspath_prepend(str(ROOT))
    assert ship("examples.mobilenet:MobileNetLite") == [str(ROOT / "examples")]  # namespace
    assert ship("convnet") == [] and ship("timm:resnet18") == []
    assert ship("torchvision.models:resnet18") == []  # installed: the nodes have it


@pytest.mark.slow
def test_the_service_refuses_a_model_with_nothing_to_prune_before_ray(user_code, tmp_path):
    experiment = tmp_path / "own.yaml"
    experiment.write_text(
        "name: own\nmodel: usernet:build\nmodel_args: {head_only: true}\n"
        "epochs: 1\ntrials_per_family: 1\nfinal_seeds: 2\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "search" / "run.py"), "--experiment", str(experiment)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(user_code)})
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "search/run.py: error: model has no prunable layers of types ['Conv2d'] left after "
        "exclude"]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


@pytest.mark.slow
def test_the_service_refuses_bad_data_before_ray_and_mlflow(image_folder, tmp_path):
    (image_folder / "test" / "eel").mkdir()  # a test class that train/ lacks
    Image.new("RGB", (20, 20)).save(image_folder / "test" / "eel" / "0.png")
    experiment = tmp_path / "folder.yaml"
    experiment.write_text(yaml.safe_dump({
        "name": "folder", "dataset": "imagefolder", "data_dir": str(image_folder),
        "image_size": 16, "epochs": 1, "trials_per_family": 1, "final_seeds": 2}))
    done = subprocess.run([sys.executable, str(ROOT / "search" / "run.py"), "--experiment",
                           str(experiment)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"search/run.py: error: {str(image_folder / 'test')!r} has classes that train/ "
        f"lacks: eel"]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()
