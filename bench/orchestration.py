"""How much of a study's wall time the cluster spends training: the orchestration overhead.

    python bench/orchestration.py --json bench/results/orchestration.json

Runs the quick study (experiments/quick.yaml, or `--experiment`) exactly as
`python search/run.py` does, on a fresh local Ray cluster, with a temporary storage path
and sqlite MLflow store, and measures

    efficiency = sum of trial training seconds / (wall seconds x concurrent slots)

where a trial's training seconds are its epochs' time (train + validation, the
`train_seconds` it reports) and the wall time runs from before `ray.init` to the printed
table. The rest is split into where it goes: Ray start-up, time inside trials that is not
training (model set-up, checkpoints, waiting for the driver to take a report), and slots
left idle between trials (Tune scheduling, the trial processes starting and importing
torch, MLflow calls in the driver, the last trials running alone at the end).

For scale, with the service's settings (`reuse_actors`, one CPU per trial, the same
concurrency): the same number of no-op trials (three reports each) through one Tuner gives
Tune's own cost per trial; a Tuner of one no-op trial per slot that imports what a real
trial imports (`search.tuner.trainable`: torch, oneprune) gives the fixed cost of the Tuner's
start, which the experiment pays once.

Also measured: the bytes the study leaves on disk, under the storage path (Tune's state,
trial results, checkpoints), in the MLflow store (sqlite file and artifacts) and in the
Optuna storage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tempfile
import time
from pathlib import Path

import ray
from _common import json_path, machine, write_json
from mlflow.tracking import MlflowClient
from ray import tune

from oneprune.cli import OneLineParser
from search.experiment.loading import DEFAULT_EXPERIMENT, load_experiment
from search.run import code_to_ship, connect
from search.tuner.searcher import concurrent_slots
from search.tuner.study import load_data, run_experiment


def _no_op_trial(config):
    if config["imports"]:
        import search.tuner.trainable  # noqa: F401  (torch, oneprune, Ray Train)
    for epoch in range(3):
        tune.report({"epoch": epoch})


def no_op_tuner(trials: int, slots: int, storage: str, *, imports: bool) -> float:
    """Wall seconds of `trials` no-op trials through one Tuner, `slots` at a time."""
    started = time.perf_counter()
    tune.Tuner(tune.with_resources(_no_op_trial, {"CPU": 1}),
               param_space={"trial": tune.grid_search(list(range(trials))),
                            "imports": imports},
               tune_config=tune.TuneConfig(max_concurrent_trials=slots, reuse_actors=True),
               run_config=tune.RunConfig(storage_path=storage, name=f"no-op-{imports}",
                                         verbose=0)).fit()
    return time.perf_counter() - started


def _trial_seconds(storage: Path) -> tuple[float, int]:
    """Sum of Tune's `time_total_s` over every trial under `storage`, and the trial count."""
    total, trials = 0.0, 0
    for result in storage.glob("*/*/result.json"):
        rows = result.read_text().splitlines()
        if rows:
            total += json.loads(rows[-1])["time_total_s"]
            trials += 1
    return total, trials


def folder_bytes(path: Path) -> int:
    """Bytes of the files under `path` (a file: its size; missing: 0)."""
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def measure(experiment_path: Path, num_cpus: int | None) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        experiment = dataclasses.replace(
            load_experiment(experiment_path),
            tracking_uri=f"sqlite:///{folder}/mlflow.db", optuna_storage=None)
        storage = Path(folder) / "ray"
        started = time.perf_counter()
        data = load_data(experiment)
        connect("local", num_cpus, code_to_ship(experiment))  # as search/run.py does
        ray_ready = time.perf_counter()
        working_folder = os.getcwd()
        try:
            slots = concurrent_slots(experiment)
            os.chdir(folder)  # MLflow puts the artifacts of a sqlite store in ./mlruns
            with contextlib.redirect_stdout(io.StringIO()):  # one line per trial
                run_experiment(experiment, data, storage_path=str(storage))
            wall = time.perf_counter() - started
            trial_seconds, trials = _trial_seconds(storage)
            left_on_disk = {"storage_path": folder_bytes(storage),
                            "checkpoints": sum(folder_bytes(path) for path
                                               in storage.rglob("checkpoint_*")),
                            "mlflow": folder_bytes(Path(folder) / "mlflow.db")
                            + folder_bytes(Path(folder) / "mlruns"),
                            "optuna": folder_bytes(Path(folder) / "optuna.db")}
            floor = no_op_tuner(trials, slots, folder, imports=False)
            tuner_start = no_op_tuner(slots, slots, folder, imports=True)
        finally:
            os.chdir(working_folder)
            ray.shutdown()
        client = MlflowClient(experiment.tracking_uri)
        train_seconds, runs = 0.0, 0
        for name in map(experiment.study_name, experiment.sparsity):
            study = client.get_experiment_by_name(name)
            for run in client.search_runs([study.experiment_id], max_results=10_000):
                if run.data.tags[runs.ROLE] in ("trial", "final"):
                    train_seconds += run.data.metrics["train_seconds"]
                    runs += 1
    if trials != runs:
        raise RuntimeError(f"Tune has {trials} trials but MLflow {runs} runs")
    capacity = wall * slots
    return {
        "experiment": str(experiment_path), "slots": slots, "trials": trials,
        "wall_seconds": wall, "ray_start_seconds": ray_ready - started,
        "train_seconds": train_seconds, "trial_seconds": trial_seconds,
        "efficiency": train_seconds / capacity,
        "efficiency_after_ray_start": train_seconds / ((wall - (ray_ready - started)) * slots),
        "tune_floor_seconds_per_trial": floor * slots / trials,
        "efficiency_ceiling": train_seconds / (train_seconds + floor * slots),
        "tuner_start_seconds": tuner_start,
        "tuner_start_share": tuner_start * slots / capacity,
        "bytes_left": left_on_disk,
        "share": {"training": train_seconds / capacity,
                  "in_trial_not_training": (trial_seconds - train_seconds) / capacity,
                  "ray_start": (ray_ready - started) * slots / capacity,
                  "idle_slots": (capacity - trial_seconds
                                 - (ray_ready - started) * slots) / capacity},
    }


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python bench/orchestration.py",
                           description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, default=DEFAULT_EXPERIMENT,
                        help="experiment YAML (default: experiments/quick.yaml)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local cluster "
                        "(default: all of this machine's)")
    parser.add_argument("--json", type=json_path, help="write the results here")
    args = parser.parse_args(argv)
    if args.num_cpus is not None and args.num_cpus < 1:
        parser.error(f"--num-cpus must be >= 1, got {args.num_cpus}")
    try:
        load_experiment(args.experiment)
    except ValueError as error:
        parser.error(str(error))
    result = {**machine(), **measure(args.experiment, args.num_cpus)}
    print(f"{result['trials']} trials on {result['slots']} slots in "
          f"{result['wall_seconds']:.1f} s wall: efficiency {result['efficiency']:.3f} "
          f"({result['efficiency_after_ray_start']:.3f} after Ray start-up)")
    for part, share in result["share"].items():
        print(f"  {part:<22} {share:6.1%}")
    print(f"Tune's own cost: {result['tune_floor_seconds_per_trial']:.2f} slot-seconds per "
          f"no-op trial; with it alone, efficiency could reach "
          f"{result['efficiency_ceiling']:.3f}")
    print(f"the Tuner's start (trial processes importing torch and oneprune): "
          f"{result['tuner_start_seconds']:.1f} s = {result['tuner_start_share']:.1%} of "
          f"the slots")
    print("left on disk: " + ", ".join(f"{where} {size / 1e6:.1f} MB"
                                       for where, size in result["bytes_left"].items()))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
