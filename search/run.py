"""`python search/run.py`: does One-Cycle Pruning beat the tuned baselines here?

    python search/run.py                                   # experiments/quick.yaml, local Ray
    python search/run.py --experiment experiments/paper/resnet18_cifar10.yaml --address auto
    python search/run.py --resume                          # continue an interrupted study

Searches every family of the experiment alike (Ray Tune + Optuna), re-runs each best
config with several seeds plus a dense reference, records everything in MLflow and prints
the comparison table. Bad input prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient

from oneprune.cli import OneLineParser
from oneprune.models import user_code_path, user_module
from search.experiment.loading import DEFAULT_EXPERIMENT, ConfigError, load_experiment
from search.experiment.schema import Experiment
from search.experiment.train_configs import base_config
from search.tracking.downloads import given_weights
from search.tracking.registry import handover_lines
from search.tracking.runs import browse_lines, check_tracking_uri
from search.tuner.searcher import check_optuna_storage
from search.tuner.storage import writable as writable_storage
from search.tuner.study import StudyInterrupted, StudyRefused, load_data, run_experiment
from search.verdict.importance import importance_table
from search.verdict.sweep import sweep_rows, sweep_table, sweep_title

DEFAULT_STORAGE = "ray_results"  # in the working folder, like ./mlflow.db


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="search/run.py", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", type=Path, default=DEFAULT_EXPERIMENT,
                        help="experiment YAML (default: experiments/quick.yaml)")
    parser.add_argument("--name", help="study name (default: the experiment's `name`)")
    parser.add_argument("--address", default="local",
                        help="Ray cluster: 'local' starts one on this machine (default), "
                             "'auto' joins the running one, or HOST:PORT / ray://HOST:PORT")
    parser.add_argument("--num-cpus", type=int,
                        help="CPUs of the local cluster (default: all of this machine's)")
    parser.add_argument("--storage-path", default=DEFAULT_STORAGE,
                        help="where Ray Tune keeps the experiment's state, trial results "
                             "and checkpoints: a folder (default: ./ray_results) or a URI "
                             "such as s3://bucket/path (shared storage for a multi-node "
                             "cluster)")
    parser.add_argument("--tracking-uri",
                        help="MLflow tracking URI (default: the experiment's "
                             "tracking.tracking_uri, sqlite:///mlflow.db)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the study where it stopped (Tuner.restore); trusts "
                             "the files under --storage-path, which Tune unpickles")
    return parser


def code_to_ship(experiment: Experiment) -> list[str]:
    """The user's code every trial needs: the top-level package (a folder) or module (a
    .py file) of a `package.module:callable` model, unless an installed distribution
    provides it (then the nodes install it like any dependency). Call after the model was
    imported (`load_data` checks it)."""
    model = base_config(experiment).model
    path = user_code_path(model)
    if path is None or user_module(model).partition(".")[0] in (
            importlib.metadata.packages_distributions()):
        return []
    return [path]


def connect(address: str, num_cpus: int | None, py_modules: list[str]) -> None:
    """Start or join the Ray cluster, unless this process is already connected, shipping
    `py_modules` to every node through Ray's runtime environment (no shared filesystem
    needed: Ray uploads them once to the cluster and unpacks them beside every worker)."""
    if ray.is_initialized():
        return
    runtime_env = {"py_modules": py_modules} if py_modules else None
    if address == "local":
        ray.init(address="local", num_cpus=num_cpus, log_to_driver=True,
                 runtime_env=runtime_env)
    else:
        ray.init(address=address, runtime_env=runtime_env)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if os.getcwd() not in sys.path:  # a model module in the working folder, as `python -m`
        sys.path.append(os.getcwd())
    # MLflow's per-file download bars (it copies files as it logs a model), for the whole
    # process: after a Ctrl+C the trial logger's writer still finishes the write in flight,
    # and its bars would land under the line that says how to resume.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    connected = ray.is_initialized()  # by a caller, who keeps its connection
    try:
        studies, experiment = _run(parser, args)
    except (KeyboardInterrupt, StudyInterrupted):  # Ctrl+C: Tune has saved its state
        # Disconnect first: the trial processes Ray then stops no longer print to this
        # terminal, and the line below is the last one.
        if not connected:
            ray.shutdown()
        again = " ".join([*(a for a in argv if a != "--resume"), "--resume"])
        print(f"\ninterrupted; continue with: python search/run.py {again}", file=sys.stderr)
        return 130
    _print_verdict(studies, experiment)
    return 0


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """Check everything, then run (or resume) the experiment: its studies' verdicts."""
    overrides = {"name": args.name}
    if args.tracking_uri is not None:
        overrides["tracking"] = {"tracking_uri": args.tracking_uri}
    try:
        experiment = load_experiment(args.experiment,
                                     {k: v for k, v in overrides.items() if v is not None})
        if args.num_cpus is not None and args.num_cpus < 1:
            raise ConfigError(f"--num-cpus must be >= 1, got {args.num_cpus}")
        given = (given_weights(experiment.init, experiment.tracking_uri) if experiment.given
                 else None)  # before the data: a wrong start is refused at once
        source = experiment.teacher_source
        teacher = (None if source is None
                   else given_weights(source, experiment.tracking_uri, "teacher"))
        data = load_data(experiment, progress=True, given=given, teacher=teacher)
        storage = writable_storage(args.storage_path)
        check_tracking_uri(experiment.tracking_uri)
        check_optuna_storage(experiment.optuna_storage_url)
    except ValueError as error:  # bad config or storage, unusable data, no MLflow
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    try:
        connect(args.address, args.num_cpus, code_to_ship(experiment))
    except ConnectionError as error:
        parser.exit(2, f"{parser.prog}: error: cannot reach the Ray cluster at "
                       f"{args.address!r}: {error}\n")
    try:
        return run_experiment(experiment, data, storage_path=storage, resume=args.resume,
                              given=given, teacher=teacher), experiment
    except StudyRefused as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


def _print_verdict(studies: list, experiment: Experiment) -> None:
    """Each study's table and importances, accuracy against sparsity (several studies),
    where to browse MLflow, and last the registered models to load."""
    for study in studies:
        print(f"\n{study.title}\n\n{study.table}")
        importance = importance_table(study.outcomes)
        if importance:
            print(f"\nparameter importance (fANOVA, % of explained variance of val_acc):"
                  f"\n\n{importance}")
    client = MlflowClient(experiment.tracking_uri)
    browsed = [(study.name, study.experiment_id) for study in studies]
    if len(studies) > 1:
        table = sweep_table(sweep_rows([(study.sparsity, study.outcomes)
                                        for study in studies]))
        print(f"\n{sweep_title(experiment)}\n\n{table}")
        browsed.append((experiment.name,
                        client.get_experiment_by_name(experiment.name).experiment_id))
    print("\n" + "\n".join(browse_lines(experiment.tracking_uri, browsed)))
    handed = [line for study in studies for line in handover_lines(study.models)]
    if handed:
        print("\n" + "\n".join(handed))


if __name__ == "__main__":
    sys.exit(main())
