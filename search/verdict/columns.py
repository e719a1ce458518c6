"""A verdict column, declared once; a verdict table is a list of them.

A `Column` says which values it adds to a family's row (`fields`: the CSV's columns, named),
its header and how its Markdown cell is written from the row; a column without a header is
in the CSV only. `Table` holds the families' outcomes a verdict compares (dense last) and
writes a list of columns as rows (`rows`: the CSV), as Markdown (`markdown`) and as a CSV
file (`write_csv`), one loop each. The fixed-sparsity table (`search.verdict.fixed`) and
the range table (`search.verdict.sparsity_range`) are lists of columns that share the ones
declared here.

What several columns of a row need (the accuracy interval, the difference to One-Cycle, the
drop from dense, all from `search.plan.stats`) is computed once per row (`Row`).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from search.plan.outcomes import FamilyOutcome, model_cost
from search.plan.stats import Difference, mean_interval, paired_difference
from search.plan.trials import AS_GIVEN, DENSE

REFERENCE = "one_cycle"  # the family every other is compared with
UNPRUNED = (DENSE, AS_GIVEN)  # rows of models the study did not prune
NO_DIFFERENCE = Difference(math.nan, math.nan, math.nan, "", 0, 0)


def percent(value: float, signed: bool = False) -> str:
    """A fraction in percent with two decimals ("–" for NaN)."""
    if math.isnan(value):
        return "–"
    return f"{value * 100:+.2f}" if signed else f"{value * 100:.2f}"


def format_params(params: Mapping[str, Any]) -> str:
    """Parameters as `name=value` pairs, floats with four significant digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in params.items())


def interval(diff: float, low: float, high: float, method: str) -> str:
    """A difference in points with its 95% interval, marked when it is Welch's."""
    if math.isnan(diff):
        return "–"
    return (f"{percent(diff, True)} [{percent(low, True)}, {percent(high, True)}]"
            f"{' (Welch)' if method == 'welch' else ''}")


@dataclass(frozen=True)
class Table:
    """The outcomes a verdict table compares (dense last), and, for a sparsity range, the
    points of accuracy a family may lose to dense (`max_drop`)."""

    outcomes: Sequence[FamilyOutcome]
    max_drop: float | None = None

    def _family(self, name: str) -> FamilyOutcome | None:
        return next((o for o in self.outcomes if o.family == name), None)

    @cached_property
    def reference(self) -> FamilyOutcome | None:
        return self._family(REFERENCE)

    @cached_property
    def dense(self) -> FamilyOutcome | None:
        return self._family(DENSE)

    def epochs(self, family: str) -> int:
        """What each run of `family` trained itself (its start not counted)."""
        return self._family(family).epochs

    def rows(self, columns: Sequence[Column]) -> list[dict[str, Any]]:
        """One row per family (dense last): every column's fields, in column order."""
        rows = []
        for outcome in self.outcomes:
            row, values = Row(outcome, self), {}
            for column in columns:
                values.update(column.fields(row))
            rows.append(values)
        return rows

    def markdown(self, columns: Sequence[Column],
                 rows: Sequence[Mapping[str, Any]] | None = None) -> str:
        """The columns with a header as a Markdown table (accuracies in %)."""
        shown = [column for column in columns if column.header is not None]
        rows = self.rows(columns) if rows is None else rows
        lines = ["| " + " | ".join(column.heading(self) for column in shown) + " |",
                 "|" + " --- |" * len(shown)]
        lines += ["| " + " | ".join(column.cell(row, self) for column in shown) + " |"
                  for row in rows]
        return "\n".join(lines)


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path,
              columns: Sequence[str] | None = None) -> Path:
    """`rows` (dicts with the same keys) as a CSV file with a header: `columns`, or the
    rows' keys."""
    if columns is None:
        columns = list(rows[0]) if rows else []
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


@dataclass
class Row:
    """One family's outcome in its table, with the statistics its columns share."""

    outcome: FamilyOutcome
    table: Table

    @property
    def is_dense(self) -> bool:
        """A row of a model the study did not prune: the dense reference, or the model as
        it was given."""
        return self.outcome.family in UNPRUNED

    @property
    def is_reference(self) -> bool:
        return self.outcome is self.table.reference

    @cached_property
    def accuracy(self) -> tuple[float, float, float, float]:
        """Mean, std and 95% interval of its final runs' test accuracies."""
        return mean_interval(self.outcome.test_accs)

    @cached_property
    def versus_reference(self) -> Difference:
        """Its test accuracy minus One-Cycle's, paired by seed (none for One-Cycle)."""
        reference = self.table.reference
        if reference is None or self.is_reference:
            return NO_DIFFERENCE
        return paired_difference(self.outcome.test_accs, self.outcome.seeds,
                                 reference.test_accs, reference.seeds)

    @cached_property
    def drop_from_dense(self) -> tuple[Difference, int]:
        """Dense's test accuracy minus its own, paired by seed, and on how many of the seeds
        both ran it stayed within the table's `max_drop` points."""
        dense = self.table.dense
        if dense is None or self.is_dense:
            return NO_DIFFERENCE, 0
        outcome = self.outcome
        drop = paired_difference(dense.test_accs, dense.seeds, outcome.test_accs,
                                 outcome.seeds)
        dense_by_seed = dict(zip(dense.seeds, dense.test_accs, strict=True))
        within = sum(dense_by_seed[seed] - acc <= self.table.max_drop / 100 + 1e-12
                     for seed, acc in zip(outcome.seeds, outcome.test_accs, strict=True)
                     if seed in dense_by_seed)
        return drop, within


@dataclass(frozen=True)
class Column:
    """One column of a verdict table, declared once: `fields(row)` gives the values it adds
    to a family's row (named; the CSV's columns), `header` its Markdown header (a string,
    or a function of the `Table`; None: the column is in the CSV only) and
    `format(values, table)` its Markdown cell from the row's values."""

    fields: Callable[[Row], dict[str, Any]]
    header: str | Callable[[Table], str] | None = None
    format: Callable[[Mapping[str, Any], Table], str] | None = None

    def heading(self, table: Table) -> str:
        return self.header(table) if callable(self.header) else self.header

    def cell(self, values: Mapping[str, Any], table: Table) -> str:
        return self.format(values, table)

    def in_csv_only(self) -> Column:
        """This column without its Markdown cell (a table that shows it otherwise)."""
        return dataclasses.replace(self, header=None, format=None)


# -- the columns both tables share -----------------------------------------------------

FAMILY = Column(lambda row: {"family": row.outcome.family}, "family",
                lambda values, table: values["family"])


def _test_accuracy(row: Row) -> dict[str, Any]:
    mean, std, _, _ = row.accuracy
    return {"test_acc_mean": mean, "test_acc_std": std, "seeds": len(row.outcome.test_accs)}


TEST_ACCURACY = Column(
    _test_accuracy, "test acc % (mean ± std)",
    lambda values, table: (f"{percent(values['test_acc_mean'])} ± "
                           f"{percent(values['test_acc_std'])} (n={values['seeds']})"))
INTERVAL = Column(
    lambda row: {"ci95_low": row.accuracy[2], "ci95_high": row.accuracy[3]}, "95% interval",
    lambda values, table: f"[{percent(values['ci95_low'])}, {percent(values['ci95_high'])}]")


def versus_reference_fields(difference: Difference) -> dict[str, Any]:
    """The CSV values of a family's test accuracy minus One-Cycle's."""
    return {"diff_to_one_cycle": difference.diff, "diff_ci95_low": difference.low,
            "diff_ci95_high": difference.high, "diff_method": difference.method}


def versus_reference_cell(values: Mapping[str, Any], table: Table) -> str:
    return interval(values["diff_to_one_cycle"], values["diff_ci95_low"],
                    values["diff_ci95_high"], values["diff_method"])


BEST_VAL_ACCURACY = Column(lambda row: {"best_val_acc": row.outcome.best_val_acc},
                           "best val acc %",
                           lambda values, table: percent(values["best_val_acc"]))
TRIALS = Column(
    lambda row: {"trials_completed": row.outcome.trials_completed,
                 "trials_diverged": row.outcome.trials_diverged,
                 "trials": row.outcome.trials}, "trials",
    lambda values, table: (f"{values['trials_completed']}/{values['trials']}"
                           if values["trials"] else "–"))
COMPUTE_SECONDS = Column(
    lambda row: {"compute_seconds": row.outcome.search_seconds + row.outcome.confirm_seconds
                 + row.outcome.final_seconds},
    "compute s", lambda values, table: f"{values['compute_seconds']:.0f}")
BEST_PARAMS = Column(lambda row: {"best_params": format_params(row.outcome.best_params)},
                     "best params", lambda values, table: values["best_params"] or "–")


def _cost_cell(values: Mapping[str, Any], table: Table) -> str:
    epochs, seconds = values["model_epochs"], values["model_seconds"]
    if values["family"] == AS_GIVEN:
        return "given"
    own = table.epochs(values["family"])
    trained = (f"{epochs} ({epochs - own} dense + {own})"
               if "dense" in (values["start"], values["teacher"]) else str(epochs))
    return f"{'given + ' if values['model_given'] else ''}{trained}, {seconds:.1f} s"


MODEL_COST = Column(  # where runs start from other than random weights, or have a teacher
    lambda row: {"start": row.outcome.start, "teacher": row.outcome.teacher,
                 **dict(zip(("model_epochs", "model_seconds", "model_given"),
                            model_cost(row.outcome, row.table.dense), strict=True))},
    "cost per model (epochs, s)", _cost_cell)
