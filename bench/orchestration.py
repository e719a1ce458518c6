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
left idle between trials (Tune scheduling, a new Tuner's trial processes starting and
importing torch, MLflow calls in the driver, the last trial of a Tuner running alone).

For scale, with the service's settings (`reuse_actors`, one CPU per trial, the same
concurrency): the same number of no-op trials (three reports each) through one Tuner gives
Tune's own cost per trial; a Tuner of one no-op trial per slot that imports what a real
trial imports (`search.trainable`: torch, oneprune) gives the fixed cost of each Tuner,
which a study pays once per family search and once for its final runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import tempfile
import time
from pathlib import Path

import ray
from _common import Parser, json_path, machine, write_json
from mlflow.tracking import MlflowClient
from ray import tune

from search import tracking
from search.config import DEFAULT_EXPERIMENT, load_experiment
from search.run import connect
from search.study import concurrent_slots, load_data, run_experiment


def _no_op_trial(config):
    if config["imports"]:
        import search.trainable  # noqa: F401  (torch, oneprune, Ray Train)
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


def measure(experiment_path: Path, num_cpus: int | None) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        experiment = dataclasses.replace(
            load_experiment(experiment_path),
            tracking_uri=f"sqlite:///{folder}/mlflow.db")
        storage = Path(folder) / "ray"
        started = time.perf_counter()
        data = load_data(experiment)
        connect("local", num_cpus)  # as search/run.py does
        ray_ready = time.perf_counter()
        try:
            slots = concurrent_slots(experiment)
            with contextlib.redirect_stdout(io.StringIO()):  # one line per trial
                run_experiment(experiment, data, storage_path=str(storage))
            wall = time.perf_counter() - started
            trial_seconds, trials = _trial_seconds(storage)
            floor = no_op_tuner(trials, slots, folder, imports=False)
            tuner_start = no_op_tuner(slots, slots, folder, imports=True)
        finally:
            ray.shutdown()
        client = MlflowClient(experiment.tracking_uri)
        train_seconds, runs = 0.0, 0
        for name in map(experiment.study_name, experiment.sparsity):
            study = client.get_experiment_by_name(name)
            for run in client.search_runs([study.experiment_id], max_results=10_000):
                if run.data.tags[tracking.ROLE] in ("trial", "final"):
                    train_seconds += run.data.metrics["train_seconds"]
                    runs += 1
    if trials != runs:
        raise RuntimeError(f"Tune has {trials} trials but MLflow {runs} runs")
    capacity = wall * slots
    tuners = len(experiment.sparsity) * (len(experiment.families) + 1)
    return {
        "experiment": str(experiment_path), "slots": slots, "trials": trials,
        "wall_seconds": wall, "ray_start_seconds": ray_ready - started,
        "train_seconds": train_seconds, "trial_seconds": trial_seconds,
        "efficiency": train_seconds / capacity,
        "efficiency_after_ray_start": train_seconds / ((wall - (ray_ready - started)) * slots),
        "tune_floor_seconds_per_trial": floor * slots / trials,
        "efficiency_ceiling": train_seconds / (train_seconds + floor * slots),
        "tuners": tuners, "tuner_start_seconds": tuner_start,
        "tuner_starts_share": tuners * tuner_start * slots / capacity,
        "share": {"training": train_seconds / capacity,
                  "in_trial_not_training": (trial_seconds - train_seconds) / capacity,
                  "ray_start": (ray_ready - started) * slots / capacity,
                  "idle_slots": (capacity - trial_seconds
                                 - (ray_ready - started) * slots) / capacity},
    }


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python bench/orchestration.py", description=__doc__.splitlines()[0])
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
    print(f"a Tuner's start (trial processes importing torch and oneprune): "
          f"{result['tuner_start_seconds']:.1f} s; x {result['tuners']} Tuners = "
          f"{result['tuner_starts_share']:.1%} of the slots")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
