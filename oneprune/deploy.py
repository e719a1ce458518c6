"""What a deployment gets from a pruned network: one module that takes images as
torchvision's `ToTensor` gives them (float32 in [0, 1], N x C x H x W) with the training
normalisation inside, physically smaller where whole filters were pruned, measured, and
exported (torch.export's pt2, ONNX) so that running it needs neither this project nor the
network's own code.

    >>> import torch
    >>> from oneprune.deploy import deployable
    >>> from oneprune.models import build_model
    >>> from oneprune.pruning import Pruner
    >>> model = build_model("convnet", num_classes=10, in_channels=1)
    >>> images = torch.zeros(2, 1, 8, 8)
    >>> Pruner(model, granularity="filter", example_inputs=images).prune_to(0.5)
    >>> ready = deployable(model, mean=(0.3,), std=(0.4,), image_size=8, slim=True)
    >>> ready.footprint["parameters"] < sum(p.numel() for p in model.parameters())
    True
    >>> ready.module(images).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from oneprune._validate import first_line
from oneprune.structured import LAYERS, evaluated, layer_rows
from oneprune.structured import slim as remove_filters

INPUT = ("float32 images in [0, 1] as torchvision's ToTensor gives them, N x C x H x W; "
         "the model normalises them itself")
LAYERS_FILE = "layers.csv"  # `save_layers`'s name for it beside a model
LAYER_COLUMNS = ("layer", "shape", "weights", "sparsity", "filters", "filters_masked",
                 "filters_removed", "slim_shape")


class Normalized(nn.Module):
    """`model` behind the normalisation it was trained with: takes images in [0, 1] (what
    `ToTensor` gives) and feeds `(images - mean) / std` to the network."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


@dataclass(frozen=True)
class Deployable:
    """A pruned network ready to ship: `module` (eval mode, takes [0, 1] images), whether
    its zeroed filters were removed, a row per conv / linear layer (`LAYER_COLUMNS`) and
    its `footprint` (`footprint()`'s keys)."""

    module: Normalized
    slim: bool
    layers: list[dict[str, Any]]
    footprint: dict[str, int]
    image_shape: tuple[int, int, int]

    def example(self, batch: int = 2) -> torch.Tensor:
        """A batch of mid-grey images of the right shape (to trace or export with)."""
        return torch.full((batch, *self.image_shape), 0.5)


def deployable(model: nn.Module, *, mean: Sequence[float], std: Sequence[float],
               image_size: int, slim: bool = False) -> Deployable:
    """`model` (masked: pruned weights are zero) wrapped with its normalisation, measured,
    and with `slim` its zeroed filters removed (`oneprune.structured.slim`: exact, or a
    `ValueError` saying why not). The model itself is not changed."""
    shape = (len(mean), image_size, image_size)
    probe = torch.rand(4, *shape)
    if slim:
        network, rows = remove_filters(model, (probe - torch.tensor(mean).view(1, -1, 1, 1))
                                       / torch.tensor(std).view(1, -1, 1, 1))
    else:
        network, rows = model, layer_rows(model)
    zeros = {name: int((m.weight == 0).sum()) for name, m in model.named_modules()
             if isinstance(m, LAYERS)}
    layers = [{"layer": row.name, "shape": "x".join(map(str, row.shape)),
               "weights": int(torch.Size(row.shape).numel()),
               "sparsity": zeros[row.name] / torch.Size(row.shape).numel(),
               "filters": row.filters, "filters_masked": row.filters_masked,
               "filters_removed": row.filters_removed,
               "slim_shape": "x".join(map(str, row.slim_shape))} for row in rows]
    module = Normalized(network, mean, std).eval()
    return Deployable(module, slim, layers, footprint(module, shape), shape)


def count_macs(module: nn.Module, image_shape: Sequence[int]) -> int:
    """Multiply-adds `module` executes on one image of `image_shape` (C, H, W), in eval
    mode, as torch counts them (`torch.utils.flop_counter.FlopCounterMode`, FLOPs / 2:
    every operation it has a formula for, convolutions, matrix products, attention)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        evaluated(module, torch.zeros(1, *image_shape))
    return counter.get_total_flops() // 2


def footprint(model: nn.Module, image_shape: Sequence[int]) -> dict[str, int]:
    """What running `model` on one image costs: its parameters and their bytes, the
    non-zero weights of its conv and linear layers, and their multiply-adds per image as
    dense kernels execute them (`macs`, `count_macs`) and counting only non-zero weights
    (`nonzero_macs`, what a sparse kernel would need: no counter knows sparse kernels, so a
    hook per conv / linear layer counts output positions x non-zero weights)."""
    counts = {"nonzero_macs": 0}

    def count(module, inputs, output):
        positions = output[0, 0].numel() if isinstance(module, nn.Conv2d) else 1
        counts["nonzero_macs"] += positions * int(torch.count_nonzero(module.weight))

    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    hooks = [layer.register_forward_hook(count) for layer in layers]
    try:
        with torch.no_grad():
            evaluated(model, torch.zeros(1, *image_shape))
    finally:
        for hook in hooks:
            hook.remove()
    parameters = list(model.parameters())
    return {"parameters": sum(p.numel() for p in parameters),
            "parameter_bytes": sum(p.numel() * p.element_size() for p in parameters),
            "nonzero_weights": sum(int(torch.count_nonzero(m.weight)) for m in layers),
            "macs_per_image": count_macs(model, image_shape),
            "nonzero_macs_per_image": counts["nonzero_macs"]}


def export_program(ready: Deployable) -> torch.export.ExportedProgram:
    """`ready.module` as a torch.export program with a dynamic batch size; `ValueError`
    (one line) when torch.export cannot trace it."""
    try:
        return torch.export.export(ready.module, (ready.example(),),
                                   dynamic_shapes=({0: torch.export.Dim.AUTO},))
    except Exception as error:  # torch.export raises many kinds on a user's forward
        reason = first_line(error)
        raise ValueError(f"torch.export cannot export the model: {type(error).__name__}: "
                         f"{reason}") from None


def save_layers(ready: Deployable, path: str | os.PathLike) -> Path:
    """Write `ready`'s per-layer report as CSV (`LAYER_COLUMNS`, a row per conv / linear
    layer: shape, sparsity, filters masked and removed)."""
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=LAYER_COLUMNS)
        writer.writeheader()
        writer.writerows(ready.layers)
    return Path(path)


def save_program(ready: Deployable, path: str | os.PathLike) -> Path:
    """Write `ready` as a pt2 archive (`torch.export.save`; `torch.export.load(path)
    .module()` runs it with torch alone)."""
    torch.export.save(export_program(ready), path)
    return Path(path)


def save_onnx(ready: Deployable, path: str | os.PathLike) -> Path:
    """Write `ready` as one ONNX file (input `images`, output `logits`, dynamic batch, the
    weights inside), with torch.onnx's exporter (it needs `onnx` and `onnxscript`)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ValueError(f"ONNX export needs {error.name}, which is not installed: "
                         f"pip install -e \".[onnx]\"") from None
    try:
        torch.onnx.export(ready.module, (ready.example(),), path, dynamo=True,
                          input_names=["images"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
                          external_data=False)  # one file, weights inside
    except Exception as error:  # the exporter raises many kinds on a user's forward
        reason = first_line(error)
        raise ValueError(f"torch.onnx cannot export the model: {type(error).__name__}: "
                         f"{reason}") from None
    return Path(path)
