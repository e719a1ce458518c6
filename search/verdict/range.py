"""How sparse within the drop, rendered: the verdict of a sparsity range, its fronts
(`search.plan.pareto`) as pareto.csv and pareto.png.

The verdict re-runs each family's sparsest feasible point with the final seeds. Families
then stand at different sparsities: they are compared on how sparse they got within the
drop (and the test accuracy they kept there), not on accuracy at one sparsity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from search.plan.outcomes import FamilyOutcome
from search.plan.pareto import pareto_front
from search.plan.stats import mean_interval, paired_difference
from search.plan.trials import DENSE
from search.verdict.fixed import REFERENCE, format_params, percent, write_csv, write_report

FRONT_COLUMNS = (
    "family", "sparsity", "test_acc_mean", "test_acc_std", "ci95_low", "ci95_high", "seeds",
    "drop_from_dense", "drop_ci95_low", "drop_ci95_high", "drop_method", "seeds_within_drop",
    "paired_seeds", "sparsity_vs_one_cycle", "diff_to_one_cycle", "diff_ci95_low",
    "diff_ci95_high", "diff_method", "front_points", "trials_feasible", "trials_completed",
    "hypervolume", "best_val_acc", "trials", "compute_seconds", "best_params")
PARETO_COLUMNS = ("family", "trial", "sparsity", "val_acc", "chosen")


def _drop_and_wins(outcome: FamilyOutcome, dense: FamilyOutcome | None,
                   max_drop: float) -> tuple:
    """The family's drop from dense in test accuracy, paired by seed (dense minus
    family), and on how many of the seeds both ran it stayed within `max_drop` points."""
    if dense is None or outcome is dense:
        return paired_difference([], [], [], []), 0
    drop = paired_difference(dense.test_accs, dense.seeds, outcome.test_accs, outcome.seeds)
    dense_by_seed = dict(zip(dense.seeds, dense.test_accs, strict=True))
    within = sum(dense_by_seed[seed] - acc <= max_drop / 100 + 1e-12
                 for seed, acc in zip(outcome.seeds, outcome.test_accs, strict=True)
                 if seed in dense_by_seed)
    return drop, within


def front_rows(outcomes: Sequence[FamilyOutcome], max_drop: float) -> list[dict]:
    """One row per family (dense last), in `FRONT_COLUMNS`: the sparsity its verdict point
    reached, its test accuracy there, its drop from dense and One-Cycle's difference to it
    (both paired by seed), and its front over the search."""
    by_family = {o.family: o for o in outcomes}
    dense, reference = by_family.get(DENSE), by_family.get(REFERENCE)
    rows = []
    for outcome in outcomes:
        mean, std, low, high = mean_interval(outcome.test_accs)
        sparsity = 0.0 if outcome.family == DENSE else (
            outcome.schedule.final_sparsity if outcome.schedule else math.nan)
        drop, within = _drop_and_wins(outcome, dense, max_drop)
        versus = paired_difference([], [], [], [])
        sparser = math.nan
        if reference is not None and outcome is not reference and outcome is not dense:
            versus = paired_difference(outcome.test_accs, outcome.seeds,
                                       reference.test_accs, reference.seeds)
            if reference.schedule is not None:
                sparser = sparsity - reference.schedule.final_sparsity
        front = pareto_front(outcome.points)
        rows.append({
            "family": outcome.family, "sparsity": sparsity, "test_acc_mean": mean,
            "test_acc_std": std, "ci95_low": low, "ci95_high": high,
            "seeds": len(outcome.test_accs), "drop_from_dense": drop.diff,
            "drop_ci95_low": drop.low, "drop_ci95_high": drop.high,
            "drop_method": drop.method, "seeds_within_drop": within,
            "paired_seeds": drop.paired_seeds, "sparsity_vs_one_cycle": sparser,
            "diff_to_one_cycle": versus.diff, "diff_ci95_low": versus.low,
            "diff_ci95_high": versus.high, "diff_method": versus.method,
            "front_points": len(front), "trials_feasible": sum(p.feasible
                                                                for p in outcome.points),
            "trials_completed": outcome.trials_completed, "hypervolume": outcome.hypervolume,
            "best_val_acc": outcome.best_val_acc, "trials": outcome.trials,
            "compute_seconds": outcome.search_seconds + outcome.final_seconds,
            "best_params": format_params(outcome.best_params)})
    return rows


def _interval(diff: float, low: float, high: float, method: str) -> str:
    if math.isnan(diff):
        return "–"
    return (f"{percent(diff, True)} [{percent(low, True)}, {percent(high, True)}]"
            f"{' (Welch)' if method == 'welch' else ''}")


def front_table(rows: Sequence[dict], max_drop: float) -> str:
    """The verdict of a sparsity range as Markdown (sparsities and accuracies in %,
    differences in points)."""
    lines = [f"| family | sparsity % | test acc % (mean ± std) | 95% interval | drop from dense "
             f"[95%, paired] | within {max_drop:g} pt on seeds | vs one_cycle: sparsity | "
             f"vs one_cycle: test acc [95%, paired] | front (feasible/completed) | "
             f"hypervolume | best val acc % | compute s | best params |",
             "| --- |" + " --- |" * 12]
    for row in rows:
        dense = row["family"] == DENSE
        if not dense and math.isnan(row["sparsity"]):
            reached = f"none within {max_drop:g} pt"
        else:
            reached = percent(row["sparsity"])
        front, volume, within = "–", "–", "–"
        if not dense:
            front = f"{row['front_points']} ({row['trials_feasible']}/{row['trials_completed']})"
            volume = f"{row['hypervolume']:.3f}"
            if row["paired_seeds"]:
                within = f"{row['seeds_within_drop']}/{row['paired_seeds']}"
        drop = _interval(*(row[key] for key in ("drop_from_dense", "drop_ci95_low",
                                                "drop_ci95_high", "drop_method")))
        versus = _interval(*(row[key] for key in ("diff_to_one_cycle", "diff_ci95_low",
                                                  "diff_ci95_high", "diff_method")))
        lines.append(
            f"| {row['family']} | {reached} | {percent(row['test_acc_mean'])} ± "
            f"{percent(row['test_acc_std'])} (n={row['seeds']}) | [{percent(row['ci95_low'])}, "
            f"{percent(row['ci95_high'])}] | {drop} | {within} | "
            f"{percent(row['sparsity_vs_one_cycle'], True)} | {versus} | {front} | {volume} | "
            f"{percent(row['best_val_acc'])} | {row['compute_seconds']:.0f} | "
            f"{row['best_params'] or '–'} |")
    return "\n".join(lines)


def verdict_note(floor: float, max_drop: float) -> str:
    """What the range verdict compares, said under its table."""
    return (f"Each family's search looked for its sparsest schedule whose validation "
            f"accuracy stays within {max_drop:g} point(s) of dense (floor "
            f"{percent(floor)}%); that point was re-run with the final seeds. Families "
            f"stand at different sparsities: they are compared on how sparse they got "
            f"within the drop (and the test accuracy kept there), not on accuracy at one "
            f"sparsity. Drops and differences are in points, paired by seed; hypervolume "
            f"is the share of [min, max] x [floor, 100%] the family's front dominates.")


def pareto_rows(outcomes: Sequence[FamilyOutcome]) -> list[dict]:
    """Each family's front (sparsest first), in `PARETO_COLUMNS`; `chosen` marks the point
    its final runs re-ran."""
    rows = []
    for outcome in outcomes:
        for point in pareto_front(outcome.points):
            rows.append({"family": outcome.family, "trial": point.number,
                         "sparsity": point.sparsity, "val_acc": point.val_acc,
                         "chosen": point.number == outcome.best_number})
    return rows


def plot_fronts(outcomes: Sequence[FamilyOutcome], floor: float, path: Path,
                title: str) -> Path:
    """Validation accuracy against sparsity: every completed search trial (hollow where
    below the floor), each family's front as a staircase, its verdict point as a star, and
    the floor. The accuracy axis shows three drops' worth below the floor (the trials
    further down are counted in the legend)."""
    fig = Figure(figsize=(7.0, 4.6), layout="constrained")
    ax = fig.subplots()
    bottom = floor - 3 * (1.0 - floor) if math.isfinite(floor) else 0.0
    for outcome in outcomes:
        if not outcome.points:
            continue
        feasible = [p for p in outcome.points if p.feasible]
        below = [p for p in outcome.points if not p.feasible]
        front = pareto_front(outcome.points)
        line, = ax.step([p.sparsity for p in front], [p.val_acc for p in front],
                        where="post", marker="o", label=outcome.family)
        color = line.get_color()
        ax.scatter([p.sparsity for p in feasible], [p.val_acc for p in feasible],
                   color=color, alpha=0.35, s=16)
        ax.scatter([p.sparsity for p in below], [p.val_acc for p in below],
                   facecolors="none", edgecolors=color, alpha=0.5, s=16)
        if outcome.schedule is not None:
            ax.scatter([outcome.schedule.final_sparsity], [outcome.best_val_acc],
                       marker="*", s=180, color=color, edgecolors="black", zorder=3)
    if math.isfinite(floor):
        ax.axhline(floor, color="gray", linestyle="--", linewidth=1,
                   label=f"floor: dense − max_drop ({floor:.2%})")
        hidden = sum(p.val_acc < bottom for o in outcomes for p in o.points)
        if hidden:
            ax.plot([], [], " ", label=f"{hidden} trials below {bottom:.0%} not shown")
        ax.set_ylim(bottom, 1.0 + (1.0 - bottom) * 0.03)
    ax.set(xlabel="sparsity", ylabel="validation accuracy")
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_title(title, fontsize="medium", wrap=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", title="front (★ re-run)", title_fontsize="small")
    fig.savefig(path, format="png", dpi=120)
    return path


def write_front_report(outcomes: Sequence[FamilyOutcome], folder: Path, title: str, *,
                       floor: float, max_drop: float) -> str:
    """`search.report.write_report` with the range verdict as the comparison, plus
    pareto.csv and pareto.png; returns the Markdown table."""
    rows = front_rows(outcomes, max_drop)
    table = front_table(rows, max_drop)
    write_report(outcomes, folder, title, rows=rows, table=table, columns=FRONT_COLUMNS,
                 note=verdict_note(floor, max_drop))
    write_csv(pareto_rows(outcomes), folder / "pareto.csv", PARETO_COLUMNS)
    plot_fronts(outcomes, floor, folder / "pareto.png", title)
    return table
