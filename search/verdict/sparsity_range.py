"""How sparse within the drop, rendered: the verdict of a sparsity range, its fronts
(`search.plan.pareto`) as pareto.csv and pareto.png.

The verdict re-runs each family's sparsest feasible point with the final seeds. Families
then stand at different sparsities: they are compared on how sparse they got within the
drop (and the test accuracy they kept there), not on accuracy at one sparsity. The table is
`COLUMNS` (`search.verdict.columns`), sharing the fixed-sparsity table's common columns.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from oneprune.cost import SPARSITY
from search.experiment.schema import Confirmation
from search.plan.outcomes import RETIMED, RETIMED_SPREAD, FamilyOutcome
from search.plan.pareto import pareto_front
from search.verdict.columns import (
    BEST_PARAMS,
    BEST_VAL_ACCURACY,
    COMPUTE_SECONDS,
    FAMILY,
    INTERVAL,
    NO_DIFFERENCE,
    TEST_ACCURACY,
    TRIALS,
    UNPRUNED,
    Column,
    Row,
    Table,
    interval,
    percent,
    versus_reference_cell,
    versus_reference_fields,
    write_csv,
)
from search.verdict.fixed import write_report


def _reached(row: Row) -> float:
    """The sparsity its verdict point reached (dense: 0; NaN: none within the drop)."""
    if row.is_dense:
        return 0.0
    return row.outcome.schedule.final_sparsity if row.outcome.schedule else math.nan


def _reached_cell(values: Mapping[str, Any], table: Table) -> str:
    if values["family"] not in UNPRUNED and math.isnan(values["sparsity"]):
        return f"none within {table.max_drop:g} pt"
    return percent(values["sparsity"])


SPARSITY_REACHED = Column(lambda row: {"sparsity": _reached(row)}, "sparsity %",
                          _reached_cell)
DROP_FROM_DENSE = Column(
    lambda row: {"drop_from_dense": row.drop_from_dense[0].diff,
                 "drop_ci95_low": row.drop_from_dense[0].low,
                 "drop_ci95_high": row.drop_from_dense[0].high,
                 "drop_method": row.drop_from_dense[0].method},
    "drop from dense [95%, paired]",
    lambda values, table: interval(values["drop_from_dense"], values["drop_ci95_low"],
                                   values["drop_ci95_high"], values["drop_method"]))
SEEDS_WITHIN_DROP = Column(
    lambda row: {"seeds_within_drop": row.drop_from_dense[1],
                 "paired_seeds": row.drop_from_dense[0].paired_seeds},
    lambda table: f"within {table.max_drop:g} pt on seeds",
    lambda values, table: (f"{values['seeds_within_drop']}/{values['paired_seeds']}"
                           if values["family"] not in UNPRUNED and values["paired_seeds"]
                           else "–"))


def _sparser_than_reference(row: Row) -> float:
    reference = row.table.reference
    if (reference is None or row.is_reference or row.is_dense
            or reference.schedule is None):
        return math.nan
    return _reached(row) - reference.schedule.final_sparsity


SPARSITY_VS_ONE_CYCLE = Column(
    lambda row: {"sparsity_vs_one_cycle": _sparser_than_reference(row)},
    "vs one_cycle: sparsity",
    lambda values, table: percent(values["sparsity_vs_one_cycle"], True))
ACCURACY_VS_ONE_CYCLE = Column(  # pruned families only: dense stands at another sparsity
    lambda row: versus_reference_fields(NO_DIFFERENCE if row.is_dense
                                        else row.versus_reference),
    "vs one_cycle: test acc [95%, paired]", versus_reference_cell)


def _front(row: Row) -> dict[str, int]:
    points = row.outcome.points
    return {"front_points": len(pareto_front(points)),
            "trials_feasible": sum(p.feasible for p in points)}


FRONT = Column(
    _front, "front (feasible/completed)",
    lambda values, table: ("–" if values["family"] in UNPRUNED else
                           f"{values['front_points']} ({values['trials_feasible']}/"
                           f"{values['trials_completed']})"))
HYPERVOLUME = Column(
    lambda row: {"hypervolume": row.outcome.hypervolume}, "hypervolume",
    lambda values, table: ("–" if values["family"] in UNPRUNED
                           else f"{values['hypervolume']:.3f}"))

COST_LABELS = {"macs": "MACs", "params": "parameters", "bytes": "bytes",
               "latency": "latency"}


def _measured(row: Row, cost: str) -> dict[str, float]:
    """The mean over its final runs of its model's `cost` and of dense / it; for latency,
    the speed-up of the models timed again together on one machine (`RETIMED`, where they
    were) and of each run timed on its node, and the spread of the timings; dense: 1x."""
    key = "latency_ms" if cost == "latency" else cost
    runs = row.outcome.final_costs
    values = {f"{cost}_mean": math.nan, f"{cost}_vs_dense": 1.0 if row.is_dense else math.nan}
    if cost == "latency":
        values.update(speedup_on_nodes=values[f"{cost}_vs_dense"], latency_spread=math.nan)
    if row.is_dense or not runs:
        return values
    values[f"{cost}_mean"] = statistics.fmean(run[key] for run in runs)
    if cost != "latency":
        values[f"{cost}_vs_dense"] = statistics.fmean(run[f"dense_{cost}"] / run[cost]
                                                      for run in runs)
        return values
    retimed = all(RETIMED in run for run in runs)
    values.update(
        latency_vs_dense=statistics.fmean(run[RETIMED if retimed else "speedup"]
                                          for run in runs),
        speedup_on_nodes=statistics.fmean(run["speedup"] for run in runs),
        latency_spread=statistics.fmean(run[RETIMED_SPREAD if retimed else "latency_spread"]
                                        for run in runs))
    return values


def _measured_cell(cost: str) -> Callable[[Mapping[str, Any], Table], str]:
    def cell(values: Mapping[str, Any], table: Table) -> str:
        ratio, mean = values[f"{cost}_vs_dense"], values[f"{cost}_mean"]
        if math.isnan(ratio):
            return "–"
        if math.isnan(mean):
            return f"{ratio:.2f}×"
        shown = (f"{mean:.3g} ms ± {values['latency_spread']:.1%}" if cost == "latency"
                 else f"{mean / 1e6:.3g} M" if cost in ("macs", "params")
                 else f"{mean / 1e3:.3g} kB")
        return f"{ratio:.2f}× ({shown})"
    return cell


def cost_column(cost: str) -> Column:
    """The column of a range verdict under `cost`: what each family's re-run models cost
    as deployed, as dense / model (× faster, × fewer) and their mean."""
    header = ("speed-up vs dense (ms per batch ± spread)" if cost == "latency"
              else f"{COST_LABELS[cost]}: dense / model (mean)")
    return Column(lambda row: _measured(row, cost), header, _measured_cell(cost))


COLUMNS: list[Column] = [
    FAMILY, SPARSITY_REACHED, TEST_ACCURACY, INTERVAL, DROP_FROM_DENSE, SEEDS_WITHIN_DROP,
    SPARSITY_VS_ONE_CYCLE, ACCURACY_VS_ONE_CYCLE, TRIALS.in_csv_only(), FRONT, HYPERVOLUME,
    BEST_VAL_ACCURACY, COMPUTE_SECONDS, BEST_PARAMS]
"""The range verdict's columns, in order (the Markdown table shows those with a header;
the front's cell reads the trial counts, which this table keeps in the CSV only)."""
PARETO_COLUMNS = ("family", "trial", "sparsity", "saving", "val_acc", "chosen")


def verdict_note(floor: float, max_drop: float, cost: str = SPARSITY,
                 confirm: Confirmation | None = None) -> str:
    """What the range verdict compares, said under its table."""
    aim = ("sparsest schedule" if cost == SPARSITY else
           f"schedule whose deployed model saves the largest share of dense's "
           f"{COST_LABELS[cost]}")
    confirmed = (f" Before that, its cheapest feasible points were re-trained with "
                 f"{confirm.seeds} fresh seeds each, one after another (at most "
                 f"{confirm.candidates}), and the first whose mean validation accuracy "
                 f"reached the floor{f' + {confirm.margin:g} pt' if confirm.margin else ''} "
                 f"was the one re-run (none: the one whose mean was highest)."
                 if confirm is not None and confirm.candidates else "")
    box = "[min, max]" if cost == SPARSITY else f"[0, 1] (share of {COST_LABELS[cost]} saved)"
    return (f"Each family's search looked for its {aim} whose validation accuracy stays "
            f"within {max_drop:g} point(s) of dense (floor {percent(floor)}%); that point "
            f"was re-run with the final seeds.{confirmed} Families stand at different "
            f"sparsities: they are compared on how far they got within the drop (and the "
            f"test accuracy kept there), not on accuracy at one sparsity. Drops and "
            f"differences are in points, paired by seed; hypervolume is the share of {box} "
            f"x [floor, 100%] the family's front dominates.")


def pareto_rows(outcomes: Sequence[FamilyOutcome]) -> list[dict]:
    """Each family's front (sparsest first), in `PARETO_COLUMNS`; `chosen` marks the point
    its final runs re-ran."""
    rows = []
    for outcome in outcomes:
        for point in pareto_front(outcome.points):
            rows.append({"family": outcome.family, "trial": point.number,
                         "sparsity": point.sparsity, "saving": point.saving,
                         "val_acc": point.val_acc,
                         "chosen": point.number == outcome.best_number})
    return rows


def plot_fronts(outcomes: Sequence[FamilyOutcome], floor: float, path: Path,
                title: str, cost: str = SPARSITY) -> Path:
    """Validation accuracy against sparsity (or the share of `cost` saved): every completed
    search trial (hollow where below the floor), each family's front as a staircase, its
    verdict point as a star, and the floor. The accuracy axis shows three drops' worth
    below the floor (the trials further down are counted in the legend)."""
    fig = Figure(figsize=(7.0, 4.6), layout="constrained")
    ax = fig.subplots()
    bottom = floor - 3 * (1.0 - floor) if math.isfinite(floor) else 0.0
    for outcome in outcomes:
        if not outcome.points:
            continue
        feasible = [p for p in outcome.points if p.feasible]
        below = [p for p in outcome.points if not p.feasible]
        front = pareto_front(outcome.points)
        line, = ax.step([p.gain for p in front], [p.val_acc for p in front],
                        where="post", marker="o", label=outcome.family)
        color = line.get_color()
        ax.scatter([p.gain for p in feasible], [p.val_acc for p in feasible],
                   color=color, alpha=0.35, s=16)
        ax.scatter([p.gain for p in below], [p.val_acc for p in below],
                   facecolors="none", edgecolors=color, alpha=0.5, s=16)
        chosen = [p for p in outcome.points if p.number == outcome.best_number]
        if chosen:
            ax.scatter([chosen[0].gain], [outcome.best_val_acc],
                       marker="*", s=180, color=color, edgecolors="black", zorder=3)
    if math.isfinite(floor):
        ax.axhline(floor, color="gray", linestyle="--", linewidth=1,
                   label=f"floor: dense − max_drop ({floor:.2%})")
        hidden = sum(p.val_acc < bottom for o in outcomes for p in o.points)
        if hidden:
            ax.plot([], [], " ", label=f"{hidden} trials below {bottom:.0%} not shown")
        ax.set_ylim(bottom, 1.0 + (1.0 - bottom) * 0.03)
    ax.set(xlabel="sparsity" if cost == SPARSITY else
           f"share of the dense network's {COST_LABELS[cost]} saved",
           ylabel="validation accuracy")
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_title(title, fontsize="medium", wrap=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", title="front (★ re-run)", title_fontsize="small")
    fig.savefig(path, format="png", dpi=120)
    return path


def write_front_report(outcomes: Sequence[FamilyOutcome], folder: Path, title: str, *,
                       floor: float, max_drop: float, extra: Sequence[Column] = (),
                       cost: str = SPARSITY, confirm: Confirmation | None = None) -> str:
    """`search.verdict.fixed.write_report` with the range verdict (and the `extra` columns;
    under a `cost`, what each family's models cost next to dense) as the comparison, plus
    pareto.csv and pareto.png; returns the Markdown table."""
    columns = [*COLUMNS[:2], cost_column(cost), *COLUMNS[2:]] if cost != SPARSITY else COLUMNS
    markdown = write_report(outcomes, folder, title, columns=[*columns, *extra],
                            table=Table(outcomes, max_drop),
                            note=verdict_note(floor, max_drop, cost, confirm))
    write_csv(pareto_rows(outcomes), folder / "pareto.csv", PARETO_COLUMNS)
    plot_fronts(outcomes, floor, folder / "pareto.png", title, cost)
    return markdown
