"""Your own model: `package.module:callable` (a module outside the repository and the
installed packages), `timm:<name>`, `model_args`, the `prune` selection, and export / load
rebuilding the model through the same import path."""

import sys

import pytest
import torch
from testkit import ROOT

from oneprune.cli import main
from oneprune.config import TrainConfig
from oneprune.models import build_model
from oneprune.saving import load_pruned, save_pruned
from oneprune.train import check_model, train

USER_MODULE = '''
from torch import nn


def build(num_classes, in_channels, hidden=8, head_only=False):
    if head_only:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(),
        nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, num_classes))


def not_a_model(num_classes, in_channels):
    return "model"


VALUE = 3


class Fixed32(nn.Module):
    """Takes 32x32 images only."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3)
        self.head = nn.Linear(4 * 30 * 30, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).flatten(1))
'''


@pytest.fixture
def user_code(user_code_folder):
    """`usernet.py` in a folder of its own, importable like a user's code on PYTHONPATH."""
    return user_code_folder("usernet", USER_MODULE)


def test_a_user_model_trains_prunes_and_is_rebuilt_on_load(user_code, digits, tmp_path):
    cfg = TrainConfig(model="usernet:build", model_args={"hidden": 6}, epochs=2)
    check_model(cfg, digits)
    result = train(cfg, data=digits)
    assert result.pruner.layer_names == ["0", "2"]  # both convolutions, not the head
    assert abs(result.sparsity - 0.9) < 0.01
    save_pruned(result, tmp_path / "out")
    loaded = load_pruned(tmp_path / "out")
    assert loaded.config["model"] == {"name": "usernet:build", "num_classes": 10,
                                      "in_channels": 1, "width": 1.0,
                                      "model_args": {"hidden": 6}}
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.model(images), result.model.eval()(images))


def test_prune_selects_layer_kinds_and_excludes_by_name(user_code, digits):
    cfg = TrainConfig(model="usernet:build", epochs=1,
                      prune={"layers": ["conv", "linear"], "exclude": ["0"]})
    result = train(cfg, data=digits)
    assert result.pruner.layer_names == ["2", "6"]
    assert result.model[0].weight.count_nonzero() == result.model[0].weight.numel()
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["prune"] == {"layers": ["conv", "linear"], "exclude": ["0"]}


@pytest.mark.parametrize("settings, message", [
    ({"model": "nowhere_at_all:build"},
     "model 'nowhere_at_all:build': cannot import 'nowhere_at_all': ModuleNotFoundError"),
    ({"model": "usernet:missing"}, "module 'usernet' has no 'missing'"),
    ({"model": "usernet:VALUE"}, "'VALUE' is not callable"),
    ({"model": "usernet:not_a_model"}, "returned str, not an nn.Module"),
    ({"model": "usernet:build", "model_args": {"depth": 3}},
     "could not be built with num_classes=10, in_channels=1, depth=3: TypeError"),
    ({"model": "usernet:build", "model_args": {"head_only": True}},
     "model has no prunable layers of types ['Conv2d']"),
    ({"model": "usernet:build", "prune": {"exclude": ["9"]}},
     "exclude pattern '9' matches no prunable layer; layers: 0, 2"),
    ({"model": "convnet", "image_size": 8, "model_args": {"hidden": 6}},
     "unexpected keyword argument 'hidden'"),
])
def test_unusable_models_are_refused_before_training(user_code, digits, settings, message):
    with pytest.raises(ValueError) as error:
        check_model(TrainConfig(**settings), digits)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("settings, message", [
    ({"model": "usernet:build", "width": 0.5}, "width scales the built-in models only"),
    ({"model": "usernet"}, "model must be one of 'convnet', 'resnet18', 'vgg16', "
                           "'package.module:callable' or 'timm:<name>'"),
    ({"model_args": {"num_classes": 3}}, "model_args cannot set 'num_classes'"),
    ({"model_args": {"f": object()}}, "model_args values must be numbers, strings"),
    ({"prune": {"layers": ["attention"]}}, "prune.layers must be one of 'conv', 'linear'"),
    ({"prune": {"layers": []}}, "prune.layers must name at least one"),
    ({"prune": {"kinds": ["conv"]}}, "prune must be a mapping with keys layers and exclude"),
])
def test_bad_model_settings_name_the_field(settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        TrainConfig(**settings)


def test_a_model_that_cannot_take_the_images_is_refused(user_code, digits):
    with pytest.raises(ValueError, match=r"cannot take 1x8x8 images of digits: RuntimeError"):
        check_model(TrainConfig(model="usernet:Fixed32"), digits)


@pytest.mark.slow
def test_the_example_module_through_the_train_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))  # as `python -m oneprune` run in the repo
    assert main(["--model", "examples.mobilenet:MobileNetLite", "--model-arg",
                 "channels=[8, 16]", "--prune-exclude", "stem.0", "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "out")]) == 0
    assert "examples.mobilenet:MobileNetLite on digits" in capsys.readouterr().out
    loaded = load_pruned(tmp_path / "out")
    assert type(loaded.model).__name__ == "MobileNetLite"
    assert loaded.model.stem[0].weight.count_nonzero() == loaded.model.stem[0].weight.numel()
    assert loaded.metrics["sparsity"] == pytest.approx(0.9, abs=0.02)


@pytest.mark.slow
def test_timm_models_by_name(digits, tmp_path):
    pytest.importorskip("timm")
    cfg = TrainConfig(model="timm:resnet18", image_size=32, epochs=1, batch_size=128,
                      model_args={"drop_rate": 0.1})
    check_model(cfg, digits)
    model = build_model("timm:resnet18", 10, 1, model_args={"drop_rate": 0.1})
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    result = train(cfg, data=digits)
    save_pruned(result, tmp_path / "out")
    loaded = load_pruned(tmp_path / "out")
    assert loaded.config["model"]["name"] == "timm:resnet18"
    with pytest.raises(ValueError, match="timm has no model 'resnet_nope'"):
        build_model("timm:resnet_nope", 10, 3)


def test_timm_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if the extra were not installed
    with pytest.raises(ValueError) as error:
        build_model("timm:resnet18", 10, 3)
    assert str(error.value) == ("model 'timm:resnet18' needs timm, which is not installed: "
                                "pip install -e \".[timm]\" (or pip install timm)")
