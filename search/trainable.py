"""The Tune trainables: one `oneprune.train.train` run per trial, reported every epoch.

Both take the dataset, which the driver loaded once and put in Ray's object store (it passes
the reference to `tune.with_parameters`, which hands trials the object): no trial reads
files or re-splits data. Each report carries the epoch's metrics and `train_seconds`,
the training time so far, from which the service sums its compute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ray
import torch
from ray import tune

from oneprune.data import ImageData
from oneprune.train import TrainConfig, train
from search.space import trial_config


def _use_assigned_cpus() -> None:
    """One torch thread per CPU the trial holds, so concurrent trials don't oversubscribe."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))


def _run(cfg: TrainConfig, data: ImageData, *, test: bool) -> None:
    """Train `cfg`, reporting every epoch; with `test`, the last report adds test metrics."""
    _use_assigned_cpus()
    train_seconds = 0.0
    last: dict[str, Any] = {}

    def report(metrics: dict) -> None:
        nonlocal train_seconds, last
        train_seconds += metrics["epoch_seconds"]
        last = {**metrics, "train_seconds": train_seconds}
        if not (test and metrics["epoch"] == cfg.epochs):
            tune.report(last)

    result = train(cfg, report, data=data, test=test)
    if test:
        tune.report({**last, "test_acc": result.test_acc, "test_loss": result.test_loss})


def search_trial(config: Mapping[str, Any], *, base: Mapping[str, Any],
                 data: ImageData) -> None:
    """A tuning trial: `base` (a `TrainConfig.to_dict()`) with the sampled `config`;
    reports validation metrics only."""
    _run(trial_config(TrainConfig.from_dict(base), config), data, test=False)


def final_run(config: Mapping[str, Any], *, runs: Sequence[Mapping[str, Any]],
              data: ImageData) -> None:
    """A final re-run: `runs[config["run"]]` is its whole `TrainConfig.to_dict()` (the
    grid is over indices: Tune restores plain values, not placeholders of nested dicts);
    its last report adds the test accuracy."""
    _run(TrainConfig.from_dict(runs[config["run"]]), data, test=True)
