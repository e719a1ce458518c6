"""Accuracy against sparsity over the studies of an experiment with several sparsities: a
row per sparsity, a column per family (mean % [95% interval]), as sweep.md / .csv / .png.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from search.experiment.train_configs import base_config
from search.plan.outcomes import FamilyOutcome
from search.plan.stats import mean_interval
from search.plan.trials import DENSE
from search.verdict.columns import percent, write_csv

if TYPE_CHECKING:
    from search.experiment.schema import Experiment


def sweep_title(experiment: Experiment) -> str:
    """The heading of an experiment's accuracy-against-sparsity table and figure."""
    return (f"{experiment.name}: {base_config(experiment).model} on {experiment.dataset}, "
            f"test accuracy against sparsity, {experiment.epochs} epochs")


def sweep_rows(studies: Sequence[tuple[float, Sequence[FamilyOutcome]]]) -> list[dict]:
    """Test accuracy (mean and 95% interval over the final seeds) per sparsity and family,
    from each study's (sparsity, outcomes): sparsity, family, test_acc_mean, ci95_low,
    ci95_high, seeds; sparsity ascending."""
    rows = []
    for sparsity, outcomes in sorted(studies, key=lambda study: study[0]):
        for outcome in outcomes:
            mean, _, low, high = mean_interval(outcome.test_accs)
            rows.append({"sparsity": sparsity, "family": outcome.family,
                         "test_acc_mean": mean, "ci95_low": low, "ci95_high": high,
                         "seeds": len(outcome.test_accs)})
    return rows


def sweep_table(rows: Sequence[dict]) -> str:
    """Accuracy against sparsity as Markdown: a row per sparsity, a column per family
    (mean % [95% interval])."""
    families = list(dict.fromkeys(row["family"] for row in rows))
    cells = {(row["sparsity"], row["family"]): row for row in rows}
    lines = ["| sparsity | " + " | ".join(families) + " |",
             "| --- |" + " --- |" * len(families)]
    for sparsity in dict.fromkeys(row["sparsity"] for row in rows):
        values = []
        for family in families:
            row = cells.get((sparsity, family))
            values.append("–" if row is None or math.isnan(row["test_acc_mean"]) else
                          f"{percent(row['test_acc_mean'])} [{percent(row['ci95_low'])}, "
                          f"{percent(row['ci95_high'])}]")
        lines.append(f"| {sparsity:.0%} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def plot_sweep(rows: Sequence[dict], path: Path, title: str) -> Path:
    """Test accuracy against sparsity: a line per family (dense dashed), its 95% interval
    shaded."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for family in dict.fromkeys(row["family"] for row in rows):
        mine = [row for row in rows if row["family"] == family]
        x = [row["sparsity"] for row in mine]
        line, = ax.plot(x, [row["test_acc_mean"] for row in mine], marker="o",
                        linestyle="--" if family == DENSE else "-", label=family)
        ax.fill_between(x, [row["ci95_low"] for row in mine],
                        [row["ci95_high"] for row in mine], color=line.get_color(), alpha=0.15)
    ax.set(xlabel="sparsity", ylabel="test accuracy (mean, 95% interval)")
    ax.set_title(title, fontsize="medium", wrap=True)
    ax.set_xticks(sorted({row["sparsity"] for row in rows}))
    ax.xaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, format="png", dpi=120)
    return path


def write_sweep(studies: Sequence[tuple[float, Sequence[FamilyOutcome]]], folder: Path,
                title: str) -> str:
    """Write sweep.md, sweep.csv and sweep.png into `folder`; returns the Markdown table."""
    rows = sweep_rows(studies)
    table = sweep_table(rows)
    (folder / "sweep.md").write_text(f"# {title}\n\n{table}\n", encoding="utf-8")
    write_csv(rows, folder / "sweep.csv")
    plot_sweep(rows, folder / "sweep.png", title)
    return table
