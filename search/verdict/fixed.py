"""The verdict at one sparsity: test accuracy per family (mean, std, 95% interval), the
difference to One-Cycle, and the report files (the table, the importances, the figures).

Intervals come from `search.plan.stats`: Student-t over the final seeds, the difference to
One-Cycle paired by seed (with the number of seeds on which the family beat One-Cycle), or
Welch's where the seeds differ. "One-Cycle wins" is only read off when the interval
excludes 0. The table is `COLUMNS` (`search.verdict.columns`): a column more is one
declaration in that list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from oneprune.plots import plot_schedules
from search.plan.outcomes import FamilyOutcome
from search.plan.stats import difference_interval
from search.verdict.columns import (
    BEST_PARAMS,
    BEST_VAL_ACCURACY,
    COMPUTE_SECONDS,
    FAMILY,
    INTERVAL,
    TEST_ACCURACY,
    TRIALS,
    Column,
    Row,
    Table,
    versus_reference_cell,
    versus_reference_fields,
    write_csv,
)
from search.verdict.importance import importance_table, plot_importance

VERSUS_ONE_CYCLE = Column(lambda row: versus_reference_fields(row.versus_reference),
                          "Δ vs one_cycle [95%, paired]", versus_reference_cell)
AHEAD_ON_SEEDS = Column(
    lambda row: {"wins_over_one_cycle": row.versus_reference.wins,
                 "paired_seeds": row.versus_reference.paired_seeds}, "ahead on seeds",
    lambda values, table: ("–" if math.isnan(values["diff_to_one_cycle"])
                           else f"{values['wins_over_one_cycle']}/{values['paired_seeds']}"))


def _welch(row: Row) -> dict[str, float]:
    reference = row.table.reference
    low, high = math.nan, math.nan
    if reference is not None and not row.is_reference:
        _, low, high = difference_interval(row.outcome.test_accs, reference.test_accs)
    return {"welch_ci95_low": low, "welch_ci95_high": high}


WELCH_INTERVAL = Column(_welch)  # the CSV only: the unpaired interval, for comparison

COLUMNS: list[Column] = [FAMILY, TEST_ACCURACY, INTERVAL, VERSUS_ONE_CYCLE, AHEAD_ON_SEEDS,
                         WELCH_INTERVAL, BEST_VAL_ACCURACY, TRIALS, COMPUTE_SECONDS,
                         BEST_PARAMS]
"""The fixed-sparsity verdict's columns, in order (the Markdown table shows those with a
header)."""


def plot_curves(outcomes: Sequence[FamilyOutcome], path: Path, title: str) -> Path:
    """Validation accuracy and measured sparsity per epoch, mean over the final seeds."""
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    acc_ax, sparsity_ax = fig.subplots(1, 2)
    for outcome in outcomes:
        if not outcome.histories:
            continue
        epochs = [m["epoch"] for m in outcome.histories[0]]
        for ax, key in ((acc_ax, "val_acc"), (sparsity_ax, "sparsity")):
            values = np.mean([[m[key] for m in h] for h in outcome.histories], axis=0)
            ax.plot(epochs, values, marker=".", label=outcome.family)
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy")
    sparsity_ax.set(xlabel="epoch", ylabel="sparsity (measured)", ylim=(0, 1))
    for ax in (acc_ax, sparsity_ax):
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.savefig(path, format="png", dpi=120)
    return path


def write_report(outcomes: Sequence[FamilyOutcome], folder: Path, title: str, *,
                 columns: Sequence[Column] = COLUMNS, table: Table | None = None,
                 note: str = "") -> str:
    """Write comparison.md/.csv, schedules.png, curves.png and (when the searches have
    any) importance.png into `folder`; returns the Markdown table of `columns` (a sparsity
    range's: `search.verdict.sparsity_range`, with its `table` and a `note` below it)."""
    table = Table(outcomes) if table is None else table
    rows = table.rows(columns)
    markdown = table.markdown(columns, rows)
    text = f"# {title}\n\n{markdown}\n" + (f"\n{note}\n" if note else "")
    importance = importance_table(outcomes)
    if importance:
        text += ("\n## Which searched parameters mattered\n\nfANOVA importance of each "
                 "parameter for the validation accuracy over the family's search trials "
                 f"(% of the explained variance; each row sums to 100):\n\n{importance}\n")
        plot_importance(outcomes, folder / "importance.png",
                        "parameter importance per family (fANOVA)")
    (folder / "comparison.md").write_text(text, encoding="utf-8")
    write_csv(rows, folder / "comparison.csv")
    pruned = [o for o in outcomes if o.schedule is not None]
    if pruned:
        plot_schedules({o.family: o.schedule for o in pruned}, folder / "schedules.png",
                       lr={o.family: o.lr_policy for o in pruned},
                       title="best schedule (solid) and LR (dashed) per family")
    plot_curves(outcomes, folder / "curves.png", title)
    return markdown
