"""The verdict's statistics: intervals, and differences to One-Cycle paired by seed; and a
sparsity range's verdict: how sparse each family got within the drop from dense."""

import csv
import math

import pytest
from testkit.accuracies import AGP, ONE_CYCLE, SEEDS

from oneprune.lr import CoupledLR
from oneprune.schedules import AGP as AGP_SCHEDULE
from oneprune.schedules import OneCycle
from search.plan.outcomes import FamilyOutcome
from search.plan.pareto import FrontPoint
from search.verdict import fixed, sparsity_range
from search.verdict.columns import Column, Table
from search.verdict.fixed import write_report
from search.verdict.importance import importance_table
from search.verdict.sparsity_range import write_front_report
from search.verdict.sweep import sweep_rows, write_sweep


def test_the_table_shows_the_paired_interval_and_the_seeds_ahead():
    outcomes = [FamilyOutcome("one_cycle", None, None, test_accs=list(ONE_CYCLE),
                              seeds=SEEDS),
                FamilyOutcome("agp", None, None, test_accs=list(AGP), seeds=SEEDS),
                FamilyOutcome("dense", None, None, test_accs=list(ONE_CYCLE[:3] + 0.05),
                              seeds=SEEDS[:3])]
    table = Table(outcomes)
    rows = table.rows(fixed.COLUMNS)
    assert [row["diff_method"] for row in rows] == ["", "paired", "welch"]
    one_cycle, agp, dense = table.markdown(fixed.COLUMNS, rows).splitlines()[2:]
    assert "| – | – |" in one_cycle  # no difference to itself
    assert agp.startswith("| agp |") and "| 4/5 |" in agp and "(Welch)" not in agp
    assert "(Welch)" in dense and "| 3/3 |" in dense


def test_the_sweep_lists_accuracy_against_sparsity(tmp_path):
    def outcome(family, accs):
        return FamilyOutcome(family, None, None, test_accs=accs, seeds=SEEDS[:len(accs)])

    studies = [(0.98, [outcome("one_cycle", [0.80, 0.84]), outcome("dense", [0.99, 0.99])]),
               (0.9, [outcome("one_cycle", [0.95, 0.97]), outcome("dense", [0.99, 0.99])])]
    rows = sweep_rows(studies)
    assert [(row["sparsity"], row["family"]) for row in rows] == [
        (0.9, "one_cycle"), (0.9, "dense"), (0.98, "one_cycle"), (0.98, "dense")]
    assert rows[0]["test_acc_mean"] == pytest.approx(0.96) and rows[0]["seeds"] == 2
    table = write_sweep(studies, tmp_path, "sweep").splitlines()
    assert table[0] == "| sparsity | one_cycle | dense |"
    assert table[2].startswith("| 90% | 96.00 [") and table[3].startswith("| 98% | 82.00 [")
    assert {p.name for p in tmp_path.iterdir()} == {"sweep.md", "sweep.csv", "sweep.png"}


def test_the_importance_table_puts_schedule_parameters_first(tmp_path):
    outcomes = [FamilyOutcome("one_cycle", None, None,
                              importances={"lr_max": 0.5, "beta": 0.3, "start": 0.2}),
                FamilyOutcome("agp", None, None, importances={"power": 0.9, "lr_max": 0.1}),
                FamilyOutcome("dense", None, None)]
    header, _, one_cycle, agp = importance_table(outcomes).splitlines()
    assert header == "| family | start | beta | power | lr_max |"
    assert one_cycle == "| one_cycle | 20.00 | 30.00 | – | 50.00 |"
    assert agp == "| agp | – | – | 90.00 | 10.00 |"
    write_report(outcomes, tmp_path, "t")
    assert (tmp_path / "importance.png").exists()
    assert "## Which searched parameters mattered" in (tmp_path / "comparison.md").read_text()


def test_a_range_verdict_gives_each_familys_sparsity_drop_and_seeds_within_it(tmp_path):
    """agp reached 90% and stayed within 1 point of dense on 4 of 5 seeds; one_cycle
    reached 95%; iterative found no trial within the drop. Drops are dense minus family,
    paired by seed; files and figure are written."""
    dense_accs = ONE_CYCLE + 0.01
    points = [FrontPoint(0, 0.9, 0.95, True), FrontPoint(1, 0.8, 0.97, True),
              FrontPoint(2, 0.85, 0.94, True), FrontPoint(3, 0.97, 0.5, False)]
    outcomes = [
        FamilyOutcome("one_cycle", OneCycle(0.95), CoupledLR(OneCycle(0.95), 1e-3, 0.25, "none"),
                      test_accs=list(ONE_CYCLE),
                      seeds=SEEDS, points=[FrontPoint(0, 0.95, 0.96, True)],
                      hypervolume=0.5, best_number=0, best_val_acc=0.96),
        FamilyOutcome("agp", AGP_SCHEDULE(0.9), CoupledLR(AGP_SCHEDULE(0.9), 1e-3, 0.25, "none"),
                      test_accs=list(dense_accs - [0.005, 0.005, 0.005, 0.02, 0.0]),
                      seeds=SEEDS, points=points, hypervolume=0.25, best_number=0,
                      best_val_acc=0.95),
        FamilyOutcome("iterative", None, None, points=[FrontPoint(0, 0.9, 0.5, False)],
                      hypervolume=0.0),
        FamilyOutcome("dense", None, None, test_accs=list(dense_accs), seeds=SEEDS)]
    rows = {row["family"]: row
            for row in Table(outcomes, max_drop=1.0).rows(sparsity_range.COLUMNS)}
    assert rows["agp"]["drop_from_dense"] == pytest.approx(0.007)
    assert rows["agp"]["drop_method"] == "paired"
    assert (rows["agp"]["seeds_within_drop"], rows["agp"]["paired_seeds"]) == (4, 5)
    assert rows["agp"]["sparsity_vs_one_cycle"] == pytest.approx(-0.05)
    assert rows["agp"]["front_points"] == 2 and rows["agp"]["trials_feasible"] == 3
    assert rows["one_cycle"]["drop_from_dense"] == pytest.approx(0.01)
    table = write_front_report(outcomes, tmp_path, "range", floor=0.93, max_drop=1.0)
    one_cycle, agp, iterative, dense = table.splitlines()[2:]
    assert agp.startswith("| agp | 90.00 |") and "| 4/5 |" in agp and "| -5.00 |" in agp
    assert iterative.startswith("| iterative | none within 1 pt |")
    assert dense.startswith("| dense | 0.00 |")
    assert [row["trial"] for row in csv.DictReader((tmp_path / "pareto.csv").open())
            if row["family"] == "agp"] == ["0", "1"]  # sparsest first; 2 is dominated
    assert "not on accuracy at one sparsity" in (tmp_path / "comparison.md").read_text()
    assert {"pareto.png", "comparison.csv", "schedules.png", "curves.png"} <= {
        path.name for path in tmp_path.iterdir()}


def test_a_new_column_is_one_declaration_shown_in_the_markdown_and_the_csv(tmp_path):
    """A column over each search trial's own training seconds, appended to the fixed
    table's list, appears in the printed table, comparison.md and comparison.csv."""
    slowest = Column(
        lambda row: {"slowest_trial_s": max(row.outcome.search_trial_seconds,
                                            default=math.nan)},
        "slowest trial s", lambda values, table: f"{values['slowest_trial_s']:.1f}")
    outcomes = [FamilyOutcome("one_cycle", None, None, test_accs=list(ONE_CYCLE), seeds=SEEDS,
                              search_trial_seconds=[1.5, 3.0, 2.0]),
                FamilyOutcome("dense", None, None, test_accs=list(AGP), seeds=SEEDS)]
    header, _, one_cycle, dense = write_report(
        outcomes, tmp_path, "t", columns=[*fixed.COLUMNS, slowest]).splitlines()
    assert header.endswith("| best params | slowest trial s |")
    assert one_cycle.endswith("| 3.0 |") and dense.endswith("| nan |")
    assert "| slowest trial s |" in (tmp_path / "comparison.md").read_text()
    rows = list(csv.DictReader((tmp_path / "comparison.csv").open()))
    assert [row["slowest_trial_s"] for row in rows] == ["3.0", "nan"]
