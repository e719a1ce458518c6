"""Does the search pay: TPE against random sampling for one family, same trials, several seeds.

    python bench/search_efficiency.py --json bench/results/search_efficiency.json

Searches one family (one_cycle; `--family`) of the quick study (experiments/quick.yaml, or
`--experiment`) with the service's own `run_experiment` (one family, the fewest final
seeds) on a fresh local Ray cluster, once per sampler and seed, and records the best
validation accuracy reached after each number of finished trials (trials in the order they
finished), and the mean accuracy of the second half of the trials (where TPE exploits what
it learnt). The search seed also seeds training (as in the service), so both samplers see
the same training noise per seed. Printed: the means over seeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import ray
from _common import json_path, machine, write_json

from oneprune.cli import OneLineParser
from oneprune.data import ImageData
from search.experiment.loading import DEFAULT_EXPERIMENT, load_experiment
from search.experiment.schema import SAMPLERS, Experiment
from search.tuner.study import load_data, run_experiment


def search_once(experiment: Experiment, data: ImageData) -> list[float]:
    """Run the one-family `experiment` as the service does; every search trial's final
    val_acc, in the order they finished."""
    with tempfile.TemporaryDirectory() as folder:
        experiment = dataclasses.replace(experiment, final_seeds=2,  # the fewest allowed
                                         tracking_uri=f"sqlite:///{folder}/mlflow.db")
        with contextlib.redirect_stdout(io.StringIO()):
            run_experiment(experiment, data, storage_path=folder, echo=lambda line: None)
        finals = []
        for result in Path(folder, experiment.name).glob("*/result.json"):
            last = json.loads(result.read_text().splitlines()[-1])
            if last["config"]["part"] == "search":
                finals.append((last["timestamp"], last["val_acc"]))
    return [acc for _, acc in sorted(finals)]


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python bench/search_efficiency.py",
                           description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, default=DEFAULT_EXPERIMENT,
                        help="experiment YAML (default: experiments/quick.yaml)")
    parser.add_argument("--family", default="one_cycle", help="family to search")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="search seeds (default: 0 1 2)")
    parser.add_argument("--json", type=json_path, help="write the results here")
    args = parser.parse_args(argv)
    try:
        base = load_experiment(args.experiment)
        if args.family not in base.families:
            raise ValueError(f"--family must be one of {', '.join(base.families)}")
        if min(args.seeds) < 0:
            raise ValueError("--seeds must be >= 0")
        data = load_data(base)
    except ValueError as error:
        parser.error(str(error))
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    trials: dict[str, dict[int, list[float]]] = {sampler: {} for sampler in SAMPLERS}
    try:
        for seed in args.seeds:
            for sampler in SAMPLERS:
                experiment = dataclasses.replace(
                    base, name=f"bench-{sampler}-{seed}", families=(args.family,),
                    search=dataclasses.replace(base.search, sampler=sampler, seed=seed))
                trials[sampler][seed] = search_once(experiment, data)
                print(f"{sampler} seed {seed}: best val_acc {max(trials[sampler][seed]):.4f}",
                      flush=True)
    finally:
        ray.shutdown()

    count = base.trials_per_family
    marks = sorted({*range(5, count + 1, 5), count})
    curves = {sampler: {seed: np.maximum.accumulate(accs).tolist()
                        for seed, accs in by_seed.items()}
              for sampler, by_seed in trials.items()}
    summary = {sampler: {
        **{f"best_after_{n}": statistics.mean(curve[n - 1] for curve in by_seed.values())
           for n in marks},
        "mean_of_second_half": statistics.mean(statistics.mean(accs[count // 2:])
                                               for accs in trials[sampler].values())}
        for sampler, by_seed in curves.items()}
    print(f"\nmeans over seeds {args.seeds} ({args.family}): best val_acc after n trials, "
          f"mean val_acc of trials {count // 2 + 1}-{count}")
    print("sampler  " + "".join(f"{f'n={n}':>9}" for n in marks) + "  2nd half")
    for sampler, row in summary.items():
        print(f"{sampler:<9}" + "".join(f"{row[f'best_after_{n}']:9.4f}" for n in marks)
              + f"{row['mean_of_second_half']:10.4f}")
    write_json(args.json, {**machine(), "experiment": str(args.experiment),
                           "family": args.family, "trials": count, "seeds": args.seeds,
                           "val_acc_by_trial": trials, "best_val_acc_after_trials": curves,
                           "summary": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
