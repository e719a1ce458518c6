"""The verdict of a study, rendered: test accuracy per family (mean, std, 95% interval),
the difference to One-Cycle, the importances, the sweep over sparsities, and the figures.

Intervals come from `search.plan.stats`: Student-t over the final seeds, the difference to
One-Cycle paired by seed (with the number of seeds on which the family beat One-Cycle), or
Welch's where the seeds differ. "One-Cycle wins" is only read off when the interval
excludes 0.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from oneprune.plots import plot_schedules
from oneprune.schedules import schedule_parameters
from search.plan.outcomes import FamilyOutcome
from search.plan.stats import Difference, difference_interval, mean_interval, paired_difference
from search.plan.trials import DENSE

REFERENCE = "one_cycle"
COLUMNS = ("family", "best_params", "test_acc_mean", "test_acc_std", "ci95_low", "ci95_high",
           "seeds", "diff_to_one_cycle", "diff_ci95_low", "diff_ci95_high", "diff_method",
           "wins_over_one_cycle", "paired_seeds", "welch_ci95_low", "welch_ci95_high",
           "best_val_acc", "trials_completed", "trials_diverged", "trials", "compute_seconds")


def format_params(params: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in params.items())


def comparison_rows(outcomes: Sequence[FamilyOutcome]) -> list[dict]:
    """One row per family (dense last), in `COLUMNS`."""
    reference = next((o for o in outcomes if o.family == REFERENCE), None)
    rows = []
    for outcome in outcomes:
        mean, std, low, high = mean_interval(outcome.test_accs)
        diff = Difference(math.nan, math.nan, math.nan, "", 0, 0)
        welch = (math.nan,) * 3
        if reference is not None and outcome is not reference:
            diff = paired_difference(outcome.test_accs, outcome.seeds, reference.test_accs,
                                     reference.seeds)
            welch = difference_interval(outcome.test_accs, reference.test_accs)
        rows.append({
            "family": outcome.family, "best_params": format_params(outcome.best_params),
            "test_acc_mean": mean, "test_acc_std": std, "ci95_low": low, "ci95_high": high,
            "seeds": len(outcome.test_accs), "diff_to_one_cycle": diff.diff,
            "diff_ci95_low": diff.low, "diff_ci95_high": diff.high,
            "diff_method": diff.method, "wins_over_one_cycle": diff.wins,
            "paired_seeds": diff.paired_seeds, "welch_ci95_low": welch[1],
            "welch_ci95_high": welch[2],
            "best_val_acc": outcome.best_val_acc, "trials_completed": outcome.trials_completed,
            "trials_diverged": outcome.trials_diverged, "trials": outcome.trials,
            "compute_seconds": outcome.search_seconds + outcome.final_seconds})
    return rows


def percent(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "–"
    return f"{value * 100:+.2f}" if signed else f"{value * 100:.2f}"


def markdown_table(rows: Sequence[dict]) -> str:
    """The comparison as a Markdown table (accuracies in %)."""
    lines = ["| family | test acc % (mean ± std) | 95% interval | Δ vs one_cycle [95%, paired] | "
             "ahead on seeds | best val acc % | trials | compute s | best params |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        diff, wins = "–", "–"
        if row["family"] != REFERENCE and not math.isnan(row["diff_to_one_cycle"]):
            diff = (f"{percent(row['diff_to_one_cycle'], True)} "
                    f"[{percent(row['diff_ci95_low'], True)}, "
                    f"{percent(row['diff_ci95_high'], True)}]"
                    f"{' (Welch)' if row['diff_method'] == 'welch' else ''}")
            wins = f"{row['wins_over_one_cycle']}/{row['paired_seeds']}"
        trials = f"{row['trials_completed']}/{row['trials']}" if row["trials"] else "–"
        lines.append(
            f"| {row['family']} | {percent(row['test_acc_mean'])} ± {percent(row['test_acc_std'])} "
            f"(n={row['seeds']}) | [{percent(row['ci95_low'])}, {percent(row['ci95_high'])}] | "
            f"{diff} | {wins} | {percent(row['best_val_acc'])} | {trials} | "
            f"{row['compute_seconds']:.0f} | {row['best_params'] or '–'} |")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], path: Path, columns: Sequence[str] = COLUMNS) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


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


def _importance_params(outcomes: Sequence[FamilyOutcome]) -> list[str]:
    """Every parameter some family has an importance for: the schedules' first, in the
    order their classes declare them, then the training settings in the order first seen."""
    seen = list(dict.fromkeys(name for o in outcomes for name in o.importances))
    order = list(schedule_parameters())
    return sorted(seen, key=lambda name: order.index(name) if name in order else len(order))


def importance_table(outcomes: Sequence[FamilyOutcome]) -> str:
    """Each family's fANOVA importances (% of the explained variance of validation
    accuracy over its search) as a Markdown table; '' when no family has any."""
    names = _importance_params(outcomes)
    if not names:
        return ""
    lines = ["| family | " + " | ".join(names) + " |",
             "| --- |" + " --- |" * len(names)]
    for outcome in outcomes:
        if outcome.importances:
            cells = [percent(outcome.importances.get(name, math.nan)) for name in names]
            lines.append(f"| {outcome.family} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_importance(outcomes: Sequence[FamilyOutcome], path: Path, title: str) -> Path:
    """The importance table as a heat map: families down, parameters across."""
    names = _importance_params(outcomes)
    rated = [o for o in outcomes if o.importances]
    values = np.array([[o.importances.get(n, np.nan) for n in names] for o in rated])
    fig = Figure(figsize=(1.2 + 0.9 * len(names), 1.2 + 0.5 * len(rated)),
                 layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.0%}", ha="center", va="center",
                    color="white" if value > 0.6 else "black", fontsize="small")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(rated)), [o.family for o in rated])
    fig.colorbar(image, ax=ax, label="share of variance (fANOVA)")
    ax.set_title(title, fontsize="medium")
    fig.savefig(path, format="png", dpi=120)
    return path


def write_report(outcomes: Sequence[FamilyOutcome], folder: Path, title: str, *,
                 rows: Sequence[dict] | None = None, table: str | None = None,
                 columns: Sequence[str] = COLUMNS, note: str = "") -> str:
    """Write comparison.md/.csv, schedules.png, curves.png and (when the searches have
    any) importance.png into `folder`; returns the Markdown table. The comparison is
    `comparison_rows` / `markdown_table` unless `rows` (in `columns`) and `table` are given
    (a sparsity range's, `search.verdict.range`), with `note` below the table."""
    if rows is None:
        rows = comparison_rows(outcomes)
        table = markdown_table(rows)
    text = f"# {title}\n\n{table}\n" + (f"\n{note}\n" if note else "")
    importance = importance_table(outcomes)
    if importance:
        text += ("\n## Which searched parameters mattered\n\nfANOVA importance of each "
                 "parameter for the validation accuracy over the family's search trials "
                 f"(% of the explained variance; each row sums to 100):\n\n{importance}\n")
        plot_importance(outcomes, folder / "importance.png",
                        "parameter importance per family (fANOVA)")
    (folder / "comparison.md").write_text(text, encoding="utf-8")
    write_csv(rows, folder / "comparison.csv", columns)
    pruned = [o for o in outcomes if o.schedule is not None]
    if pruned:
        plot_schedules({o.family: o.schedule for o in pruned}, folder / "schedules.png",
                       lr={o.family: o.lr_policy for o in pruned},
                       title="best schedule (solid) and LR (dashed) per family")
    plot_curves(outcomes, folder / "curves.png", title)
    return table


SWEEP_COLUMNS = ("sparsity", "family", "test_acc_mean", "ci95_low", "ci95_high", "seeds")


def sweep_rows(studies: Sequence[tuple[float, Sequence[FamilyOutcome]]]) -> list[dict]:
    """Test accuracy (mean and 95% interval over the final seeds) per sparsity and family,
    from each study's (sparsity, outcomes); in `SWEEP_COLUMNS`, sparsity ascending."""
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
    write_csv(rows, folder / "sweep.csv", SWEEP_COLUMNS)
    plot_sweep(rows, folder / "sweep.png", title)
    return table
