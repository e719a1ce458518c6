"""`oneprune-compare BASE OTHER`: what changed between two studies, family by family.

Two studies that differ in one thing (a teacher, a start, a training setting) and share
their seeds, data and budgets answer "did it help, and whom?": for every arm both have,
the mean test accuracy of its final runs in each, and OTHER minus BASE paired by seed (the
Student-t interval of the per-seed differences, as the verdict pairs families), with the
seeds on which OTHER was ahead. The dense references of two such studies are the same
runs, so their row reads +0.00: a check that the two are comparable. Last, which family
each study ranks first.

    oneprune-compare quick quick_distill --tracking-uri sqlite:///mlflow.db

Both are MLflow experiments of one tracking store (the study names, `name-s90` for one
sparsity of several). Bad input (a study that is not there, two studies with no arm in
common) gets one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path

from mlflow.tracking import MlflowClient

from oneprune.cli import OneLineParser
from search.experiment.schema import DEFAULT_TRACKING_URI
from search.plan.stats import paired_difference
from search.plan.trials import DENSE
from search.tracking.runs import FAMILY, ROLE, SEED, check_tracking_uri, find_runs

Accuracies = dict[str, dict[int, float]]  # arm -> seed -> test accuracy


def final_accuracies(client: MlflowClient, study: str) -> Accuracies:
    """The test accuracy of every finished final run of `study`, by arm and seed;
    `ValueError` (one line) when the store has no such study or it has no final run."""
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise ValueError(f"no study {study!r} in {client.tracking_uri}")
    found: Accuracies = {}
    for run in find_runs(client, experiment.experiment_id, {ROLE: "final"}):
        if run.info.status == "FINISHED" and "test_acc" in run.data.metrics:
            found.setdefault(run.data.tags[FAMILY], {})[int(run.data.tags[SEED])] = \
                run.data.metrics["test_acc"]
    if not found:
        raise ValueError(f"study {study!r} has no finished final run yet")
    return found


def comparison_table(base: str, other: str, accuracies: Mapping[str, Accuracies]) -> str:
    """The Markdown table of every arm both studies have (BASE's order, dense last)."""
    arms = [arm for arm in accuracies[base] if arm in accuracies[other] and arm != DENSE]
    arms += [DENSE] if DENSE in accuracies[base] and DENSE in accuracies[other] else []
    if not arms:
        raise ValueError(f"studies {base!r} and {other!r} have no family in common")
    lines = [f"| family | {base} test acc % | {other} test acc % | Δ {other} − {base} "
             f"[95%, paired] | {other} ahead on seeds |", "| --- | --- | --- | --- | --- |"]
    for arm in arms:
        a, b = accuracies[base][arm], accuracies[other][arm]
        diff = paired_difference(list(b.values()), list(b), list(a.values()), list(a))
        interval = "" if diff.low != diff.low else (
            f" [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}]")
        method = "" if diff.method == "paired" else f" ({diff.method})"
        lines.append(f"| {arm} | {100 * statistics.fmean(a.values()):.2f} (n={len(a)}) | "
                     f"{100 * statistics.fmean(b.values()):.2f} (n={len(b)}) | "
                     f"{100 * diff.diff:+.2f}{interval}{method} | "
                     f"{diff.wins}/{diff.paired_seeds} |")
    return "\n".join(lines)


def leaders(accuracies: Mapping[str, Accuracies]) -> str:
    """Which arm (dense aside) each study ranks first by mean test accuracy."""
    def first(arms: Accuracies) -> str:
        return max((arm for arm in arms if arm != DENSE), default="no family",
                   key=lambda arm: statistics.fmean(arms[arm].values()))
    return "; ".join(f"{study} ranks {first(arms)} first"
                     for study, arms in accuracies.items())


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="oneprune-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the study compared against (its MLflow experiment)")
    parser.add_argument("other", help="the study that changed one thing")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI",
                                                                  DEFAULT_TRACKING_URI),
                        help="MLflow tracking URI of both (default: $MLFLOW_TRACKING_URI, "
                             "else sqlite:///mlflow.db)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.base == args.other:
            raise ValueError(f"compare two studies, got {args.base!r} twice")
        store = args.tracking_uri.removeprefix("sqlite:///")
        if store != args.tracking_uri and not Path(store).expanduser().is_file():
            raise ValueError(f"no MLflow store at {store} (--tracking-uri)")
        check_tracking_uri(args.tracking_uri)
        client = MlflowClient(args.tracking_uri)
        accuracies = {study: final_accuracies(client, study)
                      for study in (args.base, args.other)}
        table = comparison_table(args.base, args.other, accuracies)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(f"{table}\n\n{leaders(accuracies)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
