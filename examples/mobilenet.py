"""A small MobileNet-style network: an example of bringing your own model to oneprune.

Any importable callable that takes `num_classes` and `in_channels` (plus your own keyword
arguments) and returns an `nn.Module` can be trained, pruned and searched. From the
repository root:

    python -m oneprune --model examples.mobilenet:MobileNetLite \\
        --model-arg channels=[16,32,64] --epochs 5

or in an experiment file (README, "Bring your own model"):

    model: examples.mobilenet:MobileNetLite
    model_args: {channels: [16, 32, 64]}
    prune: {layers: [conv], exclude: [stem.0]}   # leave the first convolution dense

`search/run.py` ships the module's top-level package (here the `examples` folder) to every
Ray node, so it needs no shared filesystem.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1,
                  groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class MobileNetLite(nn.Module):
    """A 3x3 stem, then one depthwise-separable block (3x3 depthwise, 1x1 pointwise) per
    entry of `channels`, each after the first halving the resolution, global average
    pool and a linear head (MobileNet v1's building block, Howard et al. 2017)."""

    def __init__(self, num_classes: int, in_channels: int = 3,
                 channels: Sequence[int] = (32, 64, 128)):
        super().__init__()
        if not channels or any(not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive integers, "
                             f"got {channels!r}")
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, channels[0], 3))
        blocks, cin = [], channels[0]
        for i, cout in enumerate(channels):
            blocks += _conv_bn_relu(cin, cin, 3, stride=1 if i == 0 else 2, groups=cin)
            blocks += _conv_bn_relu(cin, cout, 1)
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))
