"""Models by name: the built-in zoo, any importable constructor, or any timm model.

A model name is one of
- a built-in name (`MODELS`): CIFAR-style ResNet-18 and VGG-16 (from torchvision's blocks)
  and a small ConvNet;
- `package.module:callable`: any importable callable (a function or an `nn.Module` class,
  `callable` may be dotted) returning an `nn.Module`;
- `timm:<name>`: a timm model, randomly initialised (`pip install -e ".[timm]"`).

`build_model` calls it as `constructor(num_classes=..., in_channels=..., **model_args)`
(timm: `timm.create_model(name, num_classes=..., in_chans=..., **model_args)`).

Every built-in model takes `num_classes`, `in_channels` and a `width` multiplier that scales the
channel count of every layer (at least one channel each), so the paper's networks can be
shrunk for CPU experiments without changing their depth or shape. All of them end in a
global average pool, so they accept any input size from `MIN_IMAGE_SIZE` on (VGG-16: 32).
torchvision is imported when a ResNet or VGG is built (its import costs about a second in
every new trial process, which the small ConvNet does not need).
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable, Mapping
from typing import Any

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


TIMM_PREFIX = "timm:"


def check_model_name(key: str, value) -> str:
    """`value` if it has the form of a model name (nothing is imported here)."""
    if isinstance(value, str) and (value in MODELS or _timm_name(value) or _import_path(value)):
        return value
    raise ValueError(f"{key} must be one of {', '.join(map(repr, MODELS))}, "
                     f"'package.module:callable' or 'timm:<name>', got {value!r}")


def _timm_name(name: str) -> str | None:
    model = name.removeprefix(TIMM_PREFIX)
    return model if name.startswith(TIMM_PREFIX) and model else None


def _import_path(name: str) -> tuple[str, str] | None:
    """(module, attribute) of a `package.module:callable` name, None if it is not one."""
    module, colon, attribute = name.partition(":")
    parts = [*module.split("."), *attribute.split(".")]
    if colon and module != "timm" and all(part.isidentifier() for part in parts):
        return module, attribute
    return None


def user_module(name: str) -> str | None:
    """The module a `package.module:callable` model name imports (None: built-in, timm)."""
    path = _import_path(name) if name not in MODELS else None
    return path[0] if path else None


def user_code_path(name: str) -> str | None:
    """The file (a module) or folder (a package, regular or namespace) of the top-level
    module a `package.module:callable` model comes from: what must travel with the model's
    code (to Ray's nodes, into a pickled model). None for a built-in or timm model. Call
    after the model was imported."""
    module = user_module(name)
    if module is None:
        return None
    found = importlib.import_module(module.partition(".")[0])
    if hasattr(found, "__path__"):
        return str(next(iter(found.__path__)))
    return found.__file__


def check_model_args(key: str, value) -> dict[str, Any]:
    """A copy of `value` if it is a mapping of argument names to JSON values (numbers,
    strings, booleans, null, lists and mappings of them): it is recorded with the run."""
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and k.isidentifier() for k in value):
        raise ValueError(f"{key} must be a mapping of argument names to values, "
                         f"got {value!r}")
    reserved = {"num_classes", "in_channels", "in_chans"} & set(value)
    if reserved:
        raise ValueError(f"{key} cannot set {sorted(reserved)[0]!r}: it comes from the data")
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError):
        raise ValueError(f"{key} values must be numbers, strings, booleans, null or "
                         f"lists / mappings of them, got {value!r}") from None


def _timm_model(model: str, *, num_classes: int, in_channels: int, **model_args) -> nn.Module:
    import timm

    return timm.create_model(model, pretrained=False, num_classes=num_classes,
                             in_chans=in_channels, **model_args)


def model_constructor(name: str) -> Callable[..., nn.Module]:
    """The callable a model name stands for (importing its module); `ValueError` (one
    line) when it cannot be found."""
    check_model_name("model", name)
    if name in MODELS:
        return MODELS[name]
    timm_model = _timm_name(name)
    if timm_model is not None:
        try:
            import timm
        except ImportError:
            raise ValueError(f"model {name!r} needs timm, which is not installed: "
                             f"pip install -e \".[timm]\" (or pip install timm)") from None
        if not timm.is_model(timm_model):
            raise ValueError(f"model {name!r}: timm has no model {timm_model!r} "
                             f"(timm.list_models() lists them)")
        return functools.partial(_timm_model, timm_model)
    module_name, attribute = _import_path(name)
    try:
        found = importlib.import_module(module_name)
    except Exception as error:  # a user's module can raise anything
        raise ValueError(f"model {name!r}: cannot import {module_name!r}: "
                         f"{type(error).__name__}: {error}") from None
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ValueError(f"model {name!r}: module {module_name!r} has no {attribute!r}")
    if not callable(found):
        raise ValueError(f"model {name!r}: {attribute!r} is not callable")
    return found


def build_model(name: str, num_classes: int, in_channels: int, width: float = 1.0,
                model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """A freshly initialised model by name (see the module docstring); raises
    `ValueError` (one line) on bad arguments or when the constructor fails."""
    constructor = model_constructor(name)
    _validate.integer("num_classes", num_classes, low=2)
    _validate.integer("in_channels", in_channels, low=1)
    _validate.real("width", width, **_validate.WIDTH)
    arguments = check_model_args("model_args", model_args or {})
    if name in MODELS:
        if "width" in arguments:
            raise ValueError(f"model_args cannot set width of {name!r}: use the width setting")
        arguments["width"] = width
    elif width != 1.0:
        raise ValueError(f"width scales the built-in models only; size model {name!r} "
                         f"through model_args, got width={width:g}")
    try:
        model = constructor(num_classes=num_classes, in_channels=in_channels, **arguments)
    except Exception as error:  # a user's constructor can raise anything
        raise ValueError(f"model {name!r} could not be built with num_classes="
                         f"{num_classes}, in_channels={in_channels}"
                         f"{''.join(f', {k}={v!r}' for k, v in arguments.items())}: "
                         f"{type(error).__name__}: {error}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r} returned {type(model).__name__}, not an nn.Module")
    return model
