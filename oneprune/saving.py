"""Save and load a pruned model.

`save_pruned(result, folder)` writes:

- `model.pt`: the dense `state_dict` with the masks baked in (pruned weights are 0);
- `model_sparse.pt`: the same weights holding only the non-zeros of the pruned layers
  (a packed bitmask of their positions plus their values; other tensors as they are);
- `config.json`: the training config, how to rebuild the model (`build_model`'s
  arguments: a built-in name, `package.module:callable` or `timm:<name>`, with its
  `model_args`), so `load_pruned` rebuilds it through the same import path, and the
  inputs it takes (`data`: image size, channels, the normalisation's mean and std), so
  `oneprune.deploy` can wrap it;
- `metrics.json`: test / val metrics, measured sparsity, per-layer sparsity, history.

Both weight files hold only tensors, dicts, lists and strings, so `load_pruned` reads
them with `torch.load(weights_only=True)`: loading never runs pickled code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from oneprune._files import write_atomically
from oneprune._validate import first_line
from oneprune.deploy import Deployable, deployable
from oneprune.models import build_model

MODEL_FILE = "model.pt"
SPARSE_FILE = "model_sparse.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
SPARSE_FORMAT = "oneprune.sparse/1"


class PrunedModel(NamedTuple):
    """A loaded model (eval mode), the config it was trained with, and its metrics."""

    model: nn.Module
    config: dict[str, Any]
    metrics: dict[str, Any]


def to_sparse(state: dict[str, torch.Tensor], names: list[str]) -> dict[str, Any]:
    """Encode the tensors `names` of `state` as (shape, packed non-zero bitmask, values)."""
    sparse, dense = {}, {}
    for name, tensor in state.items():
        if name not in names:
            dense[name] = tensor
            continue
        flat = tensor.detach().cpu().flatten()
        nonzero = flat != 0
        sparse[name] = {"shape": list(tensor.shape),
                        "bits": torch.from_numpy(np.packbits(nonzero.numpy())),
                        "values": flat[nonzero].clone()}
    return {"format": SPARSE_FORMAT, "dense": dense, "sparse": sparse}


def from_sparse(packed: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Invert `to_sparse`: the dense state dict."""
    if not isinstance(packed, dict) or packed.get("format") != SPARSE_FORMAT:
        raise ValueError(f"not a {SPARSE_FORMAT} file")
    state = dict(packed["dense"])
    for name, entry in packed["sparse"].items():
        count = int(np.prod(entry["shape"]))
        nonzero = torch.from_numpy(
            np.unpackbits(entry["bits"].numpy(), count=count).astype(bool))
        flat = torch.zeros(count, dtype=entry["values"].dtype)
        flat[nonzero] = entry["values"]
        state[name] = flat.view(entry["shape"])
    return state


def save_pruned(result, folder: str | os.PathLike, *, dense: bool = True) -> dict[str, Path]:
    """Write a `TrainResult`'s model, config and metrics to `folder`; returns the files
    (`dense=False`: no `model.pt`, the sparse file alone holds the weights)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = result.model
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    pruned = [] if result.pruner is None else [f"{n}.weight" for n in result.pruner.layer_names]
    config = {"model": {"name": result.config.model, "num_classes": result.num_classes,
                        "in_channels": result.in_channels, "width": result.config.width,
                        "model_args": result.config.model_args},
              "data": {"image_size": result.image_size, "channels": result.in_channels,
                       "mean": list(result.mean), "std": list(result.std)},
              "train": result.config.to_dict()}
    files = {"model": folder / MODEL_FILE, "sparse_model": folder / SPARSE_FILE,
             "config": folder / CONFIG_FILE, "metrics": folder / METRICS_FILE}
    if dense:
        write_atomically(files["model"], lambda f: torch.save(state, f))
    else:
        del files["model"]
    write_atomically(files["sparse_model"], lambda f: torch.save(to_sparse(state, pruned), f))
    for key, content in (("config", config), ("metrics", result.metrics())):
        text = json.dumps(content, indent=2) + "\n"
        write_atomically(files[key], lambda f, text=text: f.write(text.encode()))
    return files


def load_pruned(folder: str | os.PathLike, *, sparse: bool = True,
                map_location: str | torch.device = "cpu") -> PrunedModel:
    """Load what `save_pruned` wrote, from the sparse file (default) or the dense one."""
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
        metrics = json.loads((folder / METRICS_FILE).read_text())
        weights = torch.load(folder / (SPARSE_FILE if sparse else MODEL_FILE),
                             map_location="cpu", weights_only=True)
    except Exception as error:  # a broken file makes torch.load raise almost anything
        raise ValueError(f"{str(folder)!r} is not a saved pruned model: {error!r}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError(f"{str(folder)!r} is not a saved pruned model: its {CONFIG_FILE} "
                         f"says no model")
    state = from_sparse(weights) if sparse else weights
    model = build_model(**config["model"])  # ValueError if its module cannot be imported
    try:
        model.load_state_dict(state)
    except RuntimeError as error:  # weights of another architecture
        reason = first_line(error)
        raise ValueError(f"{str(folder)!r}: its weights do not fit {config['model']['name']!r}:"
                         f" {reason}") from None
    return PrunedModel(model.to(map_location).eval(), config, metrics)


def deployable_of(pruned: PrunedModel, *, slim: bool = False) -> Deployable:
    """`oneprune.deploy.deployable` of a loaded folder, with the inputs its config records."""
    data = pruned.config.get("data") or {}
    if not data.get("mean"):
        raise ValueError("the folder's config.json records no input normalisation (saved "
                         "before oneprune recorded it); train it again with --out")
    return deployable(pruned.model, mean=data["mean"], std=data["std"],
                      image_size=data["image_size"], slim=slim)
