"""A study: every family searched alike by Ray Tune + Optuna, then the final re-runs and
the verdict, all mirrored into MLflow.

Per sparsity (one study each):

1. per family, a `Tuner` with `OptunaSearch` (define-by-run: the family's `suggest` plus
   the shared training space), the same trials, epochs, data split and training seed for
   every family, tuned on validation accuracy at the end of the budget (optional ASHA);
2. one more `Tuner` re-runs each family's best config with `final_seeds` fresh seeds,
   plus the dense reference, and reports test accuracy;
3. the comparison (table and plots) goes to MLflow and is returned.

Each `Tuner` keeps its state under `storage_path/<study>-<family>` (and `<study>-final`),
so `resume=True` continues an interrupted search with `Tuner.restore` (the final re-runs
start over); MLflow runs are found again by their tags, never duplicated. A distributed
trial's Ray Train run lives in `<its Tuner's folder>/train/<trial id>`. The storage path
is a local folder or a URI (s3://...: shared storage for a multi-node cluster).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import optuna
import pyarrow.fs
import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from oneprune.data import ImageData
from oneprune.train import check_data
from search import tracking
from search.config import Experiment
from search.report import FamilyOutcome, format_params, write_report
from search.space import define_by_run, trial_config
from search.trainable import Launch, final_run, search_trial

METRIC = "val_acc"
MAX_FAILURES = 2  # a failed trial is retried this often before it counts as failed


class StudyRefused(ValueError):
    """A study that cannot start: it has results and `resume` is off, or its MLflow
    experiment is deleted. Raised before any study runs."""


class StudyInterrupted(Exception):
    """Tune stopped before every trial ended (Ctrl+C); its state is saved for --resume."""


class _TrialsLost(Exception):
    """A Tuner ended with fewer trials than it was asked for, none of them unfinished."""


def _fit(tuner: tune.Tuner, trials: int) -> tune.ResultGrid:
    """`tuner.fit()`, raising `StudyInterrupted` if Tune was stopped before its trials
    ended (Tune returns normally after a Ctrl+C), `_TrialsLost` if it ended with fewer
    than `trials`."""
    results = tuner.fit()
    if results.num_terminated + results.num_errors < len(results):
        raise StudyInterrupted(f"{results.experiment_path} stopped before its trials ended")
    if len(results) < trials:
        raise _TrialsLost(f"{results.experiment_path} has {len(results)} of {trials} trials")
    return results


def _sampler(experiment: Experiment) -> optuna.samplers.BaseSampler:
    """Seeded TPE (a quarter of the trials random first; constant liar for concurrent
    trials) or seeded random sampling."""
    seed = experiment.search.seed
    if experiment.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(2, experiment.trials_per_family // 4),
        constant_liar=True)


def concurrent_slots(experiment: Experiment) -> int | None:
    """How many trials fit on the cluster at once (None: a resource the trials need is not
    there yet, e.g. GPU workers an autoscaler adds on demand)."""
    available = ray.cluster_resources()
    resources = experiment.resources
    needs = {"CPU": resources.cpus_per_trial * resources.workers_per_trial,
             "GPU": resources.gpus_per_trial * resources.workers_per_trial}
    slots = [math.floor(available.get(name, 0) / need) for name, need in needs.items()
             if need > 0]
    return None if min(slots) < 1 else min(slots)


class TrialProgress(tune.Callback):
    """One line per finished, retried or failed trial on stdout (Tune's own tables are
    switched off: hundreds of lines for a quick study)."""

    def __init__(self, label: str, total: int):
        self.label, self.total = label, total

    def _line(self, trials, trial, what: str) -> None:
        ended = len({t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
                    | {trial.trial_id})
        result = trial.last_result or {}
        metrics = (f"val_acc {result[METRIC]:.4f} at epoch {result['epoch']}, "
                   f"{result['train_seconds']:.1f} s" if METRIC in result else "no result")
        if "test_acc" in result:
            metrics = f"test_acc {result['test_acc']:.4f}, " + metrics
        if result.get("diverged"):
            what = f"{what} (diverged: non-finite loss)"
        print(f"[{self.label}] {ended}/{self.total} {trial.trial_id} {what}: {metrics}",
              flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trials, trial, "done")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._line(trials, trial, "failed, retrying")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, trial, "FAILED")


def join_storage(storage_path: str, name: str) -> str:
    """`storage_path/name` for a local folder or a URI."""
    return f"{storage_path.rstrip('/')}/{name}"


def _remove_storage(path: str) -> None:
    filesystem, inner = pyarrow.fs.FileSystem.from_uri(path)
    filesystem.delete_dir(inner)


class Study:
    """One study of an experiment (one sparsity); `run()` returns the comparison table."""

    def __init__(self, experiment: Experiment, sparsity: float, data_ref: ray.ObjectRef, *,
                 storage_path: str, echo: Callable[[str], None] = print):
        self.experiment = experiment
        self.sparsity = sparsity
        self.name = experiment.study_name(sparsity)
        self.data_ref = data_ref
        self.storage_path = storage_path
        self.echo = echo
        self.client = MlflowClient(experiment.tracking_uri)
        self.experiment_id: str | None = None  # opened by run(), not before the checks

    def tune_path(self, part: str) -> str:
        return join_storage(self.storage_path, f"{self.name}-{part}")

    def _trainable(self, trainable: Callable, part: str, **arguments) -> tune.Trainable:
        """`trainable` with its arguments and resources: a single-process trial holds its
        CPUs and GPUs; a distributed one is a light Tune driver (a token of memory, since
        Tune wants some request) whose Ray Train workers hold them."""
        resources = self.experiment.resources
        launch = Launch(workers=resources.workers_per_trial,
                        cpus_per_worker=resources.cpus_per_trial,
                        gpus_per_worker=resources.gpus_per_trial,
                        train_storage=join_storage(self.tune_path(part), "train"),
                        faults=self.experiment.faults)
        if launch.workers == 1:
            request = {"CPU": launch.cpus_per_worker, "GPU": launch.gpus_per_worker}
            data = self.data_ref
        else:
            request = {"CPU": 0, "memory": 1}
            data = (self.data_ref,)  # workers fetch it; the tuple keeps Tune from resolving
        return tune.with_resources(
            tune.with_parameters(trainable, data=data, launch=launch, **arguments), request)

    def check_can_start(self, resume: bool) -> None:
        """Raise `StudyRefused` if this study's MLflow experiment is deleted, or, without
        `resume`, if it already has results (Tune state or MLflow runs)."""
        mlflow_experiment = self.client.get_experiment_by_name(self.name)
        if mlflow_experiment is not None and mlflow_experiment.lifecycle_stage != "active":
            raise StudyRefused(f"MLflow experiment {self.name!r} is deleted; restore it "
                               f"(mlflow experiments restore) or pass --name to start another")
        if resume:
            return
        found = [str(self.tune_path(part))
                 for part in (*self.experiment.families, "final")
                 if tune.Tuner.can_restore(self.tune_path(part))]
        if mlflow_experiment is not None and self.client.search_runs(
                [mlflow_experiment.experiment_id], max_results=1):
            found.append(f"MLflow experiment {self.name!r}")
        if found:
            raise StudyRefused(f"study {self.name!r} already has results ({', '.join(found)}):"
                               f" pass --resume to continue it, or --name to start another")

    def _fit_or_resume(self, part: str, trainable, trials: int, resume: bool,
                       fresh: Callable[[], tune.Tuner]) -> tune.ResultGrid:
        """Fit `part`'s Tuner: restored from its saved state when resuming, else `fresh()`.

        A driver killed while Tune writes its first state snapshot of a part leaves state
        whose search has fewer trials than asked (seen with Ray 2.60: the searcher counted
        a trial the snapshot lacks). That part is then searched again from scratch; it had
        only just started.
        """
        path = self.tune_path(part)
        if resume and tune.Tuner.can_restore(path):
            self.echo(f"[{self.name}] {part}: resuming from {path}")
            try:
                return _fit(tune.Tuner.restore(path, trainable=trainable,
                                               resume_errored=True), trials)
            except _TrialsLost as lost:
                self.echo(f"[{self.name}] {part}: the saved state is incomplete ({lost}); "
                          f"starting this part again")
                _remove_storage(path)
        try:
            return _fit(fresh(), trials)
        except _TrialsLost as lost:  # stopped before all trials were created
            raise StudyInterrupted(str(lost)) from None

    def _run_config(self, part: str, logger: tracking.TrialLogger,
                    trials: int) -> tune.RunConfig:
        return tune.RunConfig(
            name=f"{self.name}-{part}", storage_path=self.storage_path,
            callbacks=[logger, TrialProgress(f"{self.name} {part}", trials)],
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES), verbose=0)

    def search_family(self, family: str, resume: bool) -> FamilyOutcome:
        """Tune `family` and record its best trial on its MLflow family run."""
        exp = self.experiment
        base = exp.base_config(family, self.sparsity)
        run_id = tracking.ensure_run(self.client, self.experiment_id,
                                     {tracking.ROLE: "family", tracking.FAMILY: family}, family)
        trainable = self._trainable(search_trial, part=family, base=base.to_dict())

        def fresh() -> tune.Tuner:
            searcher = OptunaSearch(
                space=functools.partial(define_by_run, family=family, sparsity=self.sparsity,
                                        bounds=exp.search.space.get(family),
                                        training=exp.training),
                metric=METRIC, mode="max", sampler=_sampler(exp))
            scheduler = None
            if exp.search.asha:
                scheduler = ASHAScheduler(time_attr="training_iteration", max_t=exp.epochs,
                                          grace_period=min(exp.search.grace_period,
                                                           exp.epochs))
            logger = tracking.trial_logger(exp.tracking_uri, self.experiment_id,
                                           family=family, family_run_id=run_id,
                                           base=base.to_dict(), epochs=exp.epochs,
                                           workers=exp.resources.workers_per_trial)
            return tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    metric=METRIC, mode="max", search_alg=searcher, scheduler=scheduler,
                    num_samples=exp.trials_per_family,
                    max_concurrent_trials=concurrent_slots(exp), reuse_actors=True),
                run_config=self._run_config(family, logger, exp.trials_per_family))

        self.echo(f"[{self.name}] {family}: {exp.trials_per_family} trials x "
                  f"{exp.epochs} epochs")
        results = self._fit_or_resume(family, trainable, exp.trials_per_family, resume, fresh)
        outcome = FamilyOutcome(family, schedule=None, lr_policy=None,
                                trials=len(results))
        best = None
        for result in results:
            metrics = result.metrics or {}
            outcome.search_seconds += metrics.get("train_seconds", 0.0)
            if metrics.get("diverged"):
                outcome.trials_diverged += 1
            elif result.error is None and metrics.get("epoch") == exp.epochs:
                outcome.trials_completed += 1
                if best is None or metrics[METRIC] > best.metrics[METRIC]:
                    best = result
        search_metrics = {"trials": outcome.trials,
                          "trials_completed": outcome.trials_completed,
                          "trials_diverged": outcome.trials_diverged,
                          "search_seconds": outcome.search_seconds}
        if best is None:
            self.echo(f"[{self.name}] {family}: no trial completed the budget")
            tracking.fail_family(self.client, run_id, search_metrics)
            return outcome
        cfg = trial_config(base, best.config)
        self.echo(f"[{self.name}] {family}: best val_acc {best.metrics[METRIC]:.4f} with "
                  f"{format_params(best.config)}")
        outcome.schedule, outcome.lr_policy = cfg.schedule, cfg.lr_policy()
        outcome.best_params = dict(best.config)
        outcome.best_val_acc = best.metrics[METRIC]
        tracking.finish_family(self.client, run_id, cfg.to_dict(), {
            "best_val_acc": outcome.best_val_acc, **search_metrics})
        return outcome

    def final_runs(self, outcomes: list[FamilyOutcome]) -> FamilyOutcome:
        """Re-run each best config with fresh seeds, and the dense reference; fills the
        outcomes' test accuracies and returns the dense outcome."""
        exp = self.experiment
        seeds = [exp.search.seed + 1 + i for i in range(exp.final_seeds)]
        dense = FamilyOutcome(tracking.DENSE, schedule=None,
                              lr_policy=exp.base_config().lr_policy())
        by_family = {o.family: o for o in outcomes if o.schedule is not None}
        configs = [exp.base_config(seed=seed).to_dict() for seed in seeds]
        for family, outcome in by_family.items():
            cfg = trial_config(exp.base_config(family, self.sparsity), outcome.best_params)
            configs += [dataclasses.replace(cfg, seed=seed).to_dict() for seed in seeds]
        family_runs = {family: tracking.ensure_run(
            self.client, self.experiment_id, {tracking.ROLE: "family", tracking.FAMILY: family},
            family) for family in by_family}
        trainable = self._trainable(final_run, part="final", runs=configs)

        def fresh() -> tune.Tuner:
            logger = tracking.final_logger(exp.tracking_uri, self.experiment_id, runs=configs,
                                           family_run_ids=family_runs, epochs=exp.epochs,
                                           workers=exp.resources.workers_per_trial)
            return tune.Tuner(
                trainable, param_space={"run": tune.grid_search(list(range(len(configs))))},
                tune_config=tune.TuneConfig(max_concurrent_trials=concurrent_slots(exp),
                                            reuse_actors=True),
                run_config=self._run_config("final", logger, len(configs)))

        self.echo(f"[{self.name}] final: {len(by_family)} best configs + dense x "
                  f"{len(seeds)} seeds, test accuracy")
        # Never restored: after a kill while Tune wrote this grid's first snapshot, its
        # restored trials came back without their config (Ray 2.60). Re-running is safe:
        # the MLflow runs are found by family and seed, and logged steps are not logged
        # again.
        results = self._fit_or_resume("final", trainable, len(configs), False, fresh)
        by_family[tracking.DENSE] = dense
        for result in results:
            train = configs[result.config["run"]]
            family = train["schedule"]["family"] if train["schedule"] else tracking.DENSE
            metrics = result.metrics or {}
            if result.error is not None or "test_acc" not in metrics:
                self.echo(f"[{self.name}] final {family} seed {train['seed']} failed")
                continue
            outcome = by_family[family]
            outcome.test_accs.append(metrics["test_acc"])
            outcome.final_seconds += metrics["train_seconds"]
            # A trial restarted after an interruption has its first attempt's rows too.
            history = (result.metrics_dataframe.drop_duplicates("epoch", keep="last")
                       .sort_values("epoch"))
            outcome.histories.append(history[["epoch", "val_acc", "sparsity"]]
                                     .to_dict("records"))
        return dense

    def run(self, resume: bool) -> str:
        self.experiment_id = tracking.open_experiment(self.client, self.name)
        outcomes = [self.search_family(family, resume) for family in self.experiment.families]
        dense = self.final_runs(outcomes)
        outcomes.append(dense)
        title = (f"{self.name}: {self.experiment.model or 'default model'} on "
                 f"{self.experiment.dataset} at {self.sparsity:.0%} sparsity, "
                 f"{self.experiment.epochs} epochs")
        with tempfile.TemporaryDirectory() as folder:
            table = write_report(outcomes, Path(folder), title)
            tracking.finish_comparison(self.client, self.experiment_id, folder, {
                f"test_acc_mean.{o.family}": sum(o.test_accs) / len(o.test_accs)
                for o in outcomes if o.test_accs})
        return f"{title}\n\n{table}"


def load_data(experiment: Experiment) -> ImageData:
    """The experiment's dataset and splits, checked against its model (`ValueError`: files
    missing, images too small)."""
    base = experiment.base_config()
    data = base.load_data()
    check_data(base, data)
    return data


def run_experiment(experiment: Experiment, data: ImageData, *, storage_path: str,
                   resume: bool = False, echo: Callable[[str], None] = print) -> list[str]:
    """Run (or resume) every study of `experiment` on the connected Ray cluster; returns
    each study's comparison table. `data` comes from `load_data(experiment)`."""
    check_data(experiment.base_config(), data)
    data_ref = ray.put(data)
    studies = [Study(experiment, sparsity, data_ref, storage_path=storage_path, echo=echo)
               for sparsity in experiment.sparsity]
    for study in studies:
        study.check_can_start(resume)
    return [study.run(resume) for study in studies]
