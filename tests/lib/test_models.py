"""The model zoo: shapes, width multiplier, torchvision's blocks, argument checks."""

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from oneprune.models import build_model


def conv_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name, in_channels, size", [
    ("convnet", 1, 8), ("convnet", 3, 32), ("resnet18", 3, 32), ("resnet18", 1, 8),
    ("vgg16", 3, 32), ("vgg16", 1, 64)])
def test_forward_shapes(name, in_channels, size):
    model = build_model(name, num_classes=7, in_channels=in_channels, width=0.25).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_channels, size, size)).shape == (2, 7)


def test_full_width_sizes_match_the_papers_networks():
    # CIFAR ResNet-18 has 11.2M conv weights, VGG-16 14.7M (13 3x3 conv layers)
    assert conv_weights(build_model("resnet18", 10, 3)) == 11_159_232
    vgg = build_model("vgg16", 10, 3)
    assert conv_weights(vgg) == 14_710_464
    assert sum(isinstance(m, nn.Conv2d) for m in vgg.modules()) == 13
    assert sum(isinstance(m, nn.BatchNorm2d) for m in vgg.modules()) == 13


def test_resnet_is_torchvisions_with_a_cifar_stem():
    model = build_model("resnet18", 10, 3, width=0.5)
    assert sum(isinstance(m, BasicBlock) for m in model.modules()) == 8
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.in_features == 256
    with torch.no_grad():  # no down-sampling in the stem: 32x32 reaches layer1 whole
        features = model.maxpool(model.relu(model.bn1(model.conv1(torch.randn(1, 3, 32, 32)))))
    assert features.shape[-2:] == (32, 32)


@pytest.mark.parametrize("name", ["convnet", "resnet18", "vgg16"])
def test_width_scales_conv_weights_quadratically(name):
    full = conv_weights(build_model(name, 10, 3, width=1.0))
    half = conv_weights(build_model(name, 10, 3, width=0.5))
    assert 0.24 < half / full < 0.26


def test_same_seed_same_weights():
    torch.manual_seed(3)
    first = build_model("resnet18", 10, 3, 0.25).state_dict()
    torch.manual_seed(3)
    second = build_model("resnet18", 10, 3, 0.25).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "resnet50"}, "model must be one of 'convnet', 'resnet18', 'vgg16'"),
    ({"num_classes": 1}, "num_classes must be in [2, inf]"),
    ({"in_channels": 0}, "in_channels must be in [1, inf]"),
    ({"width": 0}, "width must be in (0, 4]"),
    ({"width": "wide"}, "width must be a real number"),
])
def test_bad_arguments_name_the_field(kwargs, message):
    arguments = {"name": "convnet", "num_classes": 10, "in_channels": 1, **kwargs}
    with pytest.raises(ValueError) as error:
        build_model(**arguments)
    assert message in str(error.value)
