"""Figures of pruning schedules (matplotlib, no pyplot state: safe in workers and threads)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from oneprune.schedules import Schedule


def plot_schedules(schedules: Mapping[str, Schedule], path: str | Path, *,
                   lr: Mapping[str, Callable[[np.ndarray], np.ndarray]] | None = None,
                   title: str | None = None, points: int = 501) -> Path:
    """Draw target sparsity against training progress for each labelled schedule to a PNG.

    `lr` optionally maps the same labels to learning-rate policies (vectorised functions of
    progress), drawn dashed in the schedule's colour on a second axis. Returns the path.
    """
    if not schedules:
        raise ValueError("schedules must name at least one schedule")
    if lr is not None and not set(lr) <= set(schedules):
        raise ValueError(f"lr labels must be among the schedules' labels {sorted(schedules)}, "
                         f"got {sorted(lr)}")
    progress = np.linspace(0.0, 1.0, points)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    lr_ax = ax.twinx() if lr else None
    for label, schedule in schedules.items():
        (line,) = ax.plot(progress, schedule(progress), label=label)
        if lr_ax is not None and label in lr:
            lr_ax.plot(progress, lr[label](progress), linestyle="--", color=line.get_color(),
                       label=f"{label} lr")
    ax.set_xlabel("training progress")
    ax.set_ylabel("target sparsity")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if lr_ax is not None:
        lr_ax.set_ylabel("learning rate (dashed)")
        more_handles, more_labels = lr_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4),
               fontsize="small", frameon=False)
    if title:
        ax.set_title(title)
    path = Path(path)
    fig.savefig(path, format="png", dpi=120)
    return path
