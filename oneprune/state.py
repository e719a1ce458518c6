"""A training run's resumable state: what `train(..., checkpoint=)` hands out after every
epoch and `train(..., resume=)` continues from, and its file I/O.

A state is a dict of plain values and tensors (`STATE_KEYS`): the config it was taken
with, the world size, the epoch and step reached, the model, optimizer and pruner state,
every rank's batch-order generator and the RNG. Files are written atomically and read
with `weights_only=True`, so a crash never leaves half a file and loading runs no code.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from oneprune._files import write_atomically

if TYPE_CHECKING:
    from oneprune.config import TrainConfig

STATE_KEYS = frozenset({"config", "world_size", "epoch", "step", "pruned_to", "history",
                        "seconds", "model", "optimizer", "pruner", "batches", "rng"})


def save_state(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a `checkpoint` state to `path` atomically (a crash never leaves half a file)."""
    write_atomically(Path(path), lambda f: torch.save(dict(state), f))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state written by `save_state`, with `weights_only=True` (no pickled code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as error:
        raise ValueError(f"cannot read training state {os.fspath(path)!r}: {error}") from None
    if not isinstance(state, dict) or not STATE_KEYS <= set(state):
        raise ValueError(f"{os.fspath(path)!r} is not a training state "
                         f"(keys {sorted(STATE_KEYS)})")
    return state


def check_resume(state: Mapping[str, Any], cfg: TrainConfig, world_size: int) -> None:
    """Refuse a state taken from another run: it would silently mix two trainings."""
    if not isinstance(state, Mapping) or not STATE_KEYS <= set(state):
        raise ValueError(f"resume must be a training state with keys {sorted(STATE_KEYS)}")
    saved = state["config"]
    with contextlib.suppress(ValueError):  # a state of an older version: its names updated
        saved = type(cfg).from_dict(saved).to_dict()
    if saved != cfg.to_dict():
        differs = sorted(k for k, v in cfg.to_dict().items() if saved.get(k) != v)
        raise ValueError(f"resume state was taken with another config (differs in "
                         f"{', '.join(differs)})")
    if state["world_size"] != world_size:
        raise ValueError(f"resume state was taken with world_size={state['world_size']}, "
                         f"this run has {world_size}")
    if not 1 <= state["epoch"] <= cfg.epochs:
        raise ValueError(f"resume state epoch must be in [1, {cfg.epochs}], "
                         f"got {state['epoch']}")
