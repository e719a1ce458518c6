"""Does one Tuner keep a 16-GPU cluster busy on the paper's grid? Simulated through the
service's real code path.

    python bench/cluster_sim.py --json bench/results/cluster_sim.json

Runs `search.tuner.study.run_experiment` (the real searcher, per-family ASHA, final re-runs,
dense references, MLflow logging, Optuna storage, aggregation) on one file of the paper's
grid (`experiments/paper/resnet18_cifar10.yaml`: 3 sparsities x 4 families x 20 trials x
25 epochs, ASHA from epoch 5, 3 final seeds of each best config and of dense), on a local
Ray cluster with `--gpus` logical GPUs (and `cpus_per_trial` logical CPUs per GPU). Only
the trial function is the benchmark's own: it sleeps instead of training.

Assumptions:
- a trial's start (model built, data fetched from the object store): 5 s; an epoch of
  ResNet-18 on CIFAR-10 on an A10G (batch 64): 20 s at the median, log-normal with a 10%
  spread between trials; all times scaled by `--scale` (default 1/25) so that the run
  takes minutes. Scaling makes Tune's fixed cost per trial and per report weigh 25 times
  more than on the real cluster: the figures are pessimistic;
- the validation accuracy of a trial climbs to a final value drawn from its config (normal
  around 0.90, sd 0.02) along 1 - exp(-epoch / 6), so ASHA's rungs see realistic orders;
- a checkpoint (1 KB) every `checkpoint_every` epochs, so Tune snapshots its state at the
  pace of a real study;
- the dataset is digits, which the trials never read (the grid's data cannot be loaded
  here), with the small convnet so that it passes the service's data checks.

Measured: utilisation = sum of the trials' busy seconds (first line of the trial function
to its last report) / (makespan x slots), where the makespan runs from the call of
`run_experiment` to its return; the ideal makespan is that sum / slots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from _common import json_path, machine, write_json

from oneprune.cli import OneLineParser
from search.experiment.loading import load_experiment
from search.plan.trials import target_sparsity
from search.tuner.study import load_data, run_experiment

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "experiments" / "paper" / "resnet18_cifar10.yaml"
START_SECONDS, EPOCH_SECONDS, SPREAD = 5.0, 20.0, 0.10


def _draw(config: dict, salt: str) -> float:
    """A standard normal value that is a function of the trial's config (any process)."""
    key = f"{salt}:{sorted(config.items())}".encode()
    seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
    return float(np.random.default_rng(seed).standard_normal())


def sleeping_trial(config, *, experiment, data, folders, scale: float):
    """Sleep like a trial of the grid, and report like one."""
    from ray import tune

    started = time.time()
    time.sleep(START_SECONDS * scale)
    epoch_seconds = EPOCH_SECONDS * scale * math.exp(SPREAD * _draw(config, "speed"))
    final = 0.90 + 0.02 * _draw(config, "accuracy")
    first = 1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            first = int(Path(folder, "epoch").read_text()) + 1
    for epoch in range(first, experiment.epochs + 1):
        time.sleep(epoch_seconds)
        val_acc = final * (1 - math.exp(-epoch / 6))
        row = {"epoch": epoch, "val_acc": val_acc, "diverged": False,
               "sparsity": target_sparsity(config),
               "train_seconds": time.time() - started, "started": started,
               "ended": time.time()}
        if config["part"] == "final" and epoch == experiment.epochs:
            row["test_acc"] = val_acc
        if epoch % experiment.checkpoint_every or epoch == experiment.epochs:
            tune.report(row)
            continue
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "epoch").write_text(str(epoch))
            Path(folder, "state").write_bytes(b"\0" * 1024)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))


def simulate(gpus: int, scale: float) -> dict:
    grid = load_experiment(GRID)
    with tempfile.TemporaryDirectory() as folder:
        experiment = dataclasses.replace(
            grid, train={**grid.train, "dataset": "digits", "model": "convnet",
                         "download": False},
            tracking_uri=f"sqlite:///{folder}/mlflow.db", optuna_storage=None)
        data = load_data(experiment)
        cpus = experiment.resources.cpus_per_trial
        ray.init(address="local", num_cpus=int(gpus * cpus), num_gpus=gpus,
                 include_dashboard=False, log_to_driver=False)
        working_folder = os.getcwd()
        try:
            os.chdir(folder)  # MLflow puts the artifacts of a sqlite store in ./mlruns
            trial = _with_scale(scale)
            started = time.time()
            with contextlib.redirect_stdout(io.StringIO()):
                studies = run_experiment(experiment, data, storage_path=f"{folder}/ray",
                                         trial_function=trial)
            makespan = time.time() - started
        finally:
            os.chdir(working_folder)
            ray.shutdown()
        spans = _trial_spans(Path(folder) / "ray" / grid.name)
    busy = sum(end - start for start, end, _ in spans)
    # A 2-core machine starts the 16 trial processes (each importing torch) one after
    # another; a real cluster starts one per node, in parallel. So utilisation is also
    # given from the moment every slot first held a trial.
    full = sorted(start for start, _, _ in spans)[min(gpus, len(spans)) - 1]
    busy_after_full = sum(max(0.0, end - max(start, full)) for start, end, _ in spans)
    ended = started + makespan
    ideal = busy / gpus
    return {
        "experiment": str(GRID.relative_to(ROOT)), "slots": gpus, "scale": scale,
        "trials": len(spans), "epochs_trained": sum(epochs for _, _, epochs in spans),
        "makespan_seconds": makespan, "busy_slot_seconds": busy,
        "ideal_makespan_seconds": ideal, "utilisation": busy / (makespan * gpus),
        "makespan_over_ideal": makespan / ideal,
        "seconds_until_every_slot_was_busy": full - started,
        "utilisation_once_every_slot_was_busy": busy_after_full / ((ended - full) * gpus),
        "search_trials_stopped_by_asha": sum(
            o.trials - o.trials_completed for s in studies for o in s.outcomes),
    }


def _with_scale(scale: float):
    def trial(config, **arguments):
        sleeping_trial(config, scale=scale, **arguments)
    return trial


def _trial_spans(tune_folder: Path) -> list[tuple[float, float, int]]:
    """Each trial's start and end (wall clock) and epochs trained, from Tune's results."""
    spans = []
    for result in tune_folder.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines()]
        spans.append((rows[0]["started"], rows[-1]["ended"],
                      len({row["epoch"] for row in rows})))
    return spans


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python bench/cluster_sim.py", description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=16, help="logical GPU slots (16)")
    parser.add_argument("--scale", type=float, default=1 / 25,
                        help="factor on every simulated time (1/25)")
    parser.add_argument("--json", type=json_path, help="write the results here")
    args = parser.parse_args(argv)
    if not 1 <= args.gpus <= 256:
        parser.error(f"--gpus must be in [1, 256], got {args.gpus}")
    if not 0 < args.scale <= 1:
        parser.error(f"--scale must be in (0, 1], got {args.scale}")
    result = {**machine(), **simulate(args.gpus, args.scale)}
    print(f"{result['trials']} trials ({result['epochs_trained']} epochs) on "
          f"{result['slots']} GPU slots: makespan {result['makespan_seconds']:.0f} s against "
          f"an ideal {result['ideal_makespan_seconds']:.0f} s; utilisation "
          f"{result['utilisation']:.3f} ({result['utilisation_once_every_slot_was_busy']:.3f} "
          f"once every slot was busy, after {result['seconds_until_every_slot_was_busy']:.0f} s)")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
