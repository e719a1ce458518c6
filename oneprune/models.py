"""Model zoo: CIFAR-style ResNet-18 and VGG-16 (from torchvision's blocks) and a small ConvNet.

Every model takes `num_classes`, `in_channels` and a `width` multiplier that scales the
channel count of every layer (at least one channel each), so the paper's networks can be
shrunk for CPU experiments without changing their depth or shape. All of them end in a
global average pool, so they accept any input size from `MIN_IMAGE_SIZE` on (VGG-16: 32).
torchvision is imported when a ResNet or VGG is built (its import costs about a second in
every new trial process, which the small ConvNet does not need).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from oneprune import _validate


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _init_like_torchvision(model: nn.Module) -> None:
    """He (fan-out) init for convolutions, identity batch norm: torchvision's ResNet/VGG init."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def cifar_resnet18(num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem: one 3x3 stride-1 conv and no max-pool."""
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    planes = [_scaled(c, width) for c in (64, 128, 256, 512)]
    model.conv1 = nn.Conv2d(in_channels, planes[0], kernel_size=3, stride=1, padding=1,
                            bias=False)
    model.bn1 = nn.BatchNorm2d(planes[0])
    model.maxpool = nn.Identity()
    model.inplanes = planes[0]  # `_make_layer` chains stages through this attribute
    model.layer1 = model._make_layer(BasicBlock, planes[0], 2)
    model.layer2 = model._make_layer(BasicBlock, planes[1], 2, stride=2)
    model.layer3 = model._make_layer(BasicBlock, planes[2], 2, stride=2)
    model.layer4 = model._make_layer(BasicBlock, planes[3], 2, stride=2)
    model.fc = nn.Linear(planes[3], num_classes)
    _init_like_torchvision(model)
    return model


class CifarVGG16(nn.Module):
    """VGG-16 with batch norm (torchvision's `make_layers`, config "D") and a CIFAR head:
    global average pool and one linear layer instead of the 4096-wide ImageNet classifier."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0):
        from torchvision.models.vgg import cfgs, make_layers

        super().__init__()
        config = [v if v == "M" else _scaled(v, width) for v in cfgs["D"]]
        self.features = make_layers(config, batch_norm=True)
        first = self.features[0]  # make_layers assumes RGB input
        self.features[0] = nn.Conv2d(in_channels, first.out_channels, kernel_size=3, padding=1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(config[-2], num_classes)
        _init_like_torchvision(self)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


class ConvNet(nn.Module):
    """Four 3x3 conv/BN/ReLU layers (32, 32, 64, 64 channels at width 1) with one 2x2
    max-pool, global average pool and a linear head: sized for 8x8 digits, trains in
    seconds on a CPU, and still has enough conv weights (65k) to prune 90% of them."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: float = 1.0):
        super().__init__()
        c1, c2 = _scaled(32, width), _scaled(64, width)

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*block(in_channels, c1), *block(c1, c1),
                                      nn.MaxPool2d(2), *block(c1, c2), *block(c2, c2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c2, num_classes)
        _init_like_torchvision(self)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "convnet": ConvNet,
    "resnet18": cifar_resnet18,
    "vgg16": CifarVGG16,
}


# Smallest input side each model takes: VGG-16 halves it five times, ConvNet once.
MIN_IMAGE_SIZE = {"convnet": 2, "resnet18": 1, "vgg16": 32}


def build_model(name: str, num_classes: int, in_channels: int, width: float = 1.0) -> nn.Module:
    """A freshly initialised model by name (`MODELS`); raises `ValueError` on bad arguments."""
    _validate.choice("model", name, tuple(MODELS))
    _validate.integer("num_classes", num_classes, low=2)
    _validate.integer("in_channels", in_channels, low=1)
    _validate.real("width", width, **_validate.WIDTH)
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, width=width)
