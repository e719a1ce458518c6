"""What a deployment gets: filters removed exactly (same predictions, logits within 1e-4) for
the built-in networks and a user's residual module, the normalisation inside, the footprint
measured, and pt2 / ONNX files that run without this project."""

import dataclasses

import numpy as np
import pytest
import torch
from testkit.files import write_cifar
from torch import nn

from oneprune.config import TrainConfig
from oneprune.data import Batches, load_dataset
from oneprune.deploy import Normalized, deployable, footprint, save_onnx, save_program
from oneprune.pruning import Pruner
from oneprune.saving import deployable_of, load_pruned, save_pruned
from oneprune.schedules import OneCycle
from oneprune.structured import slim
from oneprune.train import train

FILTERS = TrainConfig(epochs=2, batch_size=32, lr_max=1e-2, device="cpu",
                      granularity="filter", schedule=OneCycle(0.5))


def images_in_zero_one(data) -> torch.Tensor:
    """The test split as ToTensor gives it: float32 in [0, 1]."""
    return data.test.images.float() / 255.0


def check_same_function(model: nn.Module, data, slim_model: nn.Module) -> None:
    """Identical predictions on the whole test split, logits within 1e-4 (float32)."""
    batches = Batches(data.test, 4096, mean=data.mean, std=data.std)
    with torch.no_grad():
        for images, _ in batches:
            masked, slimmed = model.eval()(images), slim_model(images)
            assert torch.equal(masked.argmax(1), slimmed.argmax(1))
            assert (masked - slimmed).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = write_cifar(tmp_path_factory.mktemp("cifar"), "cifar10", per_class_train=10)
    return load_dataset("cifar10", root, verify=False)


def trained(cfg: TrainConfig, data):
    result = train(cfg, data=data, test=False)
    assert 0.45 < result.sparsity < 0.55  # filters of different sizes: about half
    return result


def test_a_pruned_filter_zeroes_its_batchnorm_channel_in_training(digits):
    result = trained(FILTERS, digits)
    features = result.model.features
    for conv, norm in ((features[0], features[1]), (features[3], features[4])):
        dead = (conv.weight.flatten(1) == 0).all(dim=1)
        assert dead.sum() > 0
        assert torch.all(norm.weight[dead] == 0) and torch.all(norm.bias[dead] == 0)
        assert torch.all(norm.weight[~dead] != 0)


@pytest.mark.parametrize("model", ["convnet", "resnet18", "vgg16"])
def test_removing_the_pruned_filters_keeps_the_function(model, digits, cifar):
    data = digits if model == "convnet" else cifar
    cfg = dataclasses.replace(FILTERS, model=model, width=0.25 if model != "convnet" else 1.0,
                              dataset=data.name, epochs=1 if model != "convnet" else 2)
    result = trained(cfg, data)
    probe = torch.rand(2, data.in_channels, data.image_size, data.image_size)
    slim_model, rows = slim(result.model, probe)
    check_same_function(result.model, data, slim_model)
    before = sum(p.numel() for p in result.model.parameters())
    after = sum(p.numel() for p in slim_model.parameters())
    assert after < before
    assert sum(r.filters_removed for r in rows) > 0
    assert all(r.filters_removed <= r.filters_masked for r in rows)
    if model != "resnet18":  # no residual groups: every masked filter goes
        assert all(r.filters_removed == r.filters_masked for r in rows)


class ResidualNet(nn.Module):
    """A user's module: a stem, a residual block whose addition couples three convolutions'
    channels, a bias-only (no BatchNorm) convolution and a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(24), nn.ReLU(),
                                    nn.Conv2d(24, 16, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(16))
        self.mix = nn.Conv2d(16, 32, 1)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.branch(x))
        return self.head(torch.relu(self.mix(x)).mean(dim=(2, 3)))


def test_a_users_residual_module_slims_exactly_keeping_its_coupled_channels(digits):
    torch.manual_seed(0)
    model = ResidualNet()
    images = torch.zeros(2, 1, 8, 8)
    pruner = Pruner(model, granularity="filter", example_inputs=images)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = Batches(digits.train, 64, mean=digits.mean, std=digits.std, shuffle=True)
    for step, (x, y) in enumerate(batches):
        pruner.prune_to(min(0.6, 0.1 * step))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.apply_masks()
    slim_model, rows = slim(model, torch.rand(2, 1, 8, 8))
    check_same_function(model, digits, slim_model)
    by_name = {r.name: r for r in rows}
    assert by_name["branch.0"].filters_removed == by_name["branch.0"].filters_masked > 0
    assert by_name["mix"].filters_removed == by_name["mix"].filters_masked > 0  # its bias too
    # stem and branch.3 are added together: only the channels both zeroed can go
    both = by_name["stem.0"].filters - by_name["stem.0"].slim_shape[0]
    assert both == by_name["branch.3"].filters_removed <= min(
        by_name["stem.0"].filters_masked, by_name["branch.3"].filters_masked)


def test_slim_refuses_a_model_it_cannot_trace_in_one_line():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            with torch.no_grad():  # no autograd graph: nothing to trace
                return self.conv(x).mean(dim=(2, 3))

    model = Untraceable()
    Pruner(model, granularity="filter").prune_to(0.5)
    with pytest.raises(ValueError, match="cannot remove the pruned filters of Untraceable: "
                                         "Torch-Pruning cannot trace it") as error:
        slim(model, torch.rand(2, 1, 8, 8))
    assert "\n" not in str(error.value)


def test_the_deployable_takes_images_in_zero_one_and_is_measured(digits, tmp_path):
    result = trained(FILTERS, digits)
    save_pruned(result, tmp_path / "run", dense=False)
    loaded = load_pruned(tmp_path / "run")
    assert loaded.config["data"] == {"image_size": 8, "channels": 1,
                                     "mean": list(digits.mean), "std": list(digits.std)}
    masked, slimmed = deployable_of(loaded), deployable_of(loaded, slim=True)
    assert isinstance(masked.module, Normalized) and slimmed.slim and not masked.slim
    images = images_in_zero_one(digits)
    with torch.no_grad():
        expected = result.model.eval()(next(iter(Batches(
            digits.test, 4096, mean=digits.mean, std=digits.std)))[0])
        for ready in (masked, slimmed):
            np.testing.assert_allclose(ready.module(images), expected, atol=1e-4)
    assert slimmed.footprint["macs_per_image"] < 0.5 * masked.footprint["macs_per_image"]
    assert slimmed.footprint["parameter_bytes"] < masked.footprint["parameter_bytes"]
    # the live filters' weights that read a removed channel go too
    assert slimmed.footprint["nonzero_weights"] < masked.footprint["nonzero_weights"]
    rows = {row["layer"]: row for row in slimmed.layers}
    assert rows["features.0"]["shape"] == "32x1x3x3" and rows["features.0"]["sparsity"] > 0.4
    assert rows["features.0"]["filters_removed"] == rows["features.0"]["filters_masked"]


def test_footprint_counts_the_convnets_multiply_adds_by_hand():
    # 8x8 digits: 64 positions x (1*32 + 32*32) * 9, then 16 positions after the max-pool
    # x (32*64 + 64*64) * 9, and the 64 x 10 head.
    from oneprune.models import build_model

    model = build_model("convnet", 10, 1)
    counts = footprint(model, (1, 8, 8))
    assert counts["macs_per_image"] == 64 * 9 * (32 + 1024) + 16 * 9 * (2048 + 4096) + 640
    assert counts["nonzero_macs_per_image"] == counts["macs_per_image"]
    with torch.no_grad():
        model.features[0].weight.zero_()
    assert footprint(model, (1, 8, 8))["nonzero_macs_per_image"] == (
        counts["macs_per_image"] - 64 * 9 * 32)


def test_pt2_and_onnx_files_predict_what_torch_does(digits, tmp_path):
    import onnxruntime

    result = trained(FILTERS, digits)
    ready = deployable(result.model, mean=digits.mean, std=digits.std, image_size=8, slim=True)
    images = images_in_zero_one(digits)
    with torch.no_grad():
        expected = ready.module(images)
    program = torch.export.load(save_program(ready, tmp_path / "model.pt2")).module()
    with torch.no_grad():
        np.testing.assert_allclose(program(images), expected, atol=1e-5)
    session = onnxruntime.InferenceSession(str(save_onnx(ready, tmp_path / "model.onnx")),
                                           providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": images.numpy()})[0]
    assert np.array_equal(logits.argmax(1), expected.argmax(1).numpy())
    np.testing.assert_allclose(logits, expected, atol=1e-4)
