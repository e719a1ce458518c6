"""Draw the schedule figures of the documentation (run from the repository root):

    python docs/figures/make_figures.py

- families.png: every schedule family at its class defaults, pruning to 90%.
- quick_best_schedules.png: the best schedule of each family in the default study
  (`python search/run.py`, the run shown in docs/results.md), with its coupled learning
  rate, drawn from the best params that run printed (4 significant digits, pct_start at
  its default 0.25).
- lr_coupling.png: one One-Cycle schedule with the one-cycle LR uncoupled, aligned to the
  schedule's midpoint, and with a recovery gain.

how_sparse_pareto.png is not drawn here: it is the pareto.png a real run of
experiments/how_sparse.yaml logged to MLflow.
"""

from pathlib import Path

from oneprune.lr import CoupledLR
from oneprune.plots import plot_schedules
from oneprune.schedules import AGP, Cosine, Iterative, Linear, OneCycle, OneShot

HERE = Path(__file__).resolve().parent


def main() -> None:
    plot_schedules({
        "one_cycle": OneCycle(0.9), "agp": AGP(0.9), "iterative": Iterative(0.9),
        "one_shot": OneShot(0.9, 0.5), "linear": Linear(0.9), "cosine": Cosine(0.9)},
        HERE / "families.png",
        title="Each family at its defaults, to 90% (OneShot at start=0.5)")

    # Best params of the default study's families, as printed in its verdict table.
    best = {
        "one_cycle": (OneCycle(0.98, start=0.1473, end=0.7951, alpha=16.07, beta=5.759),
                      0.0414, "align"),
        "one_shot": (OneShot(0.98, start=0.05531), 0.01245, "none"),
        "iterative": (Iterative(0.98, start=0.3756, end=0.5644, steps=2), 0.02058, "none"),
        "agp": (AGP(0.98, start=0.1863, end=0.551, power=3.312), 0.01603, "align"),
    }
    plot_schedules(
        {family: schedule for family, (schedule, _, _) in best.items()},
        HERE / "quick_best_schedules.png",
        lr={family: CoupledLR(schedule, lr_max=lr_max, coupling=coupling)
            for family, (schedule, lr_max, coupling) in best.items()},
        title="Default study: each family's best schedule at 98% and its LR")

    schedule = OneCycle(0.9, start=0.1, end=0.8)
    plot_schedules(
        {"none": schedule, "align": schedule, "align, recovery gain 2": schedule},
        HERE / "lr_coupling.png",
        lr={"none": CoupledLR(schedule, lr_max=0.01, coupling="none"),
            "align": CoupledLR(schedule, lr_max=0.01, coupling="align"),
            "align, recovery gain 2": CoupledLR(schedule, lr_max=0.01, coupling="align",
                                                recovery_gain=2.0)},
        title="One schedule (solid), three LR couplings (dashed)")


if __name__ == "__main__":
    main()
