"""The console view of a running study: one line per trial that ends, retries or fails,
and each family's best config once its search is over.

Tune's own progress tables are switched off (hundreds of lines for a quick study); this
callback prints, e.g. (the default study, `python search/run.py`):

    [quick agp] 1/20 485e6bce done: val_acc 0.7222 at epoch 12, 1.5 s
    [quick] agp: best val_acc 0.9167 with start=0.1863 end=0.551 power=3.312 ...
"""

from __future__ import annotations

from collections.abc import Mapping

from ray import tune

from search.experiment.schema import Experiment
from search.plan.outcomes import METRIC, TrialRecord, accuracy_floor, select_best
from search.plan.trials import CONFIRM, DENSE, FINAL, SEARCH, START, group_of
from search.verdict.columns import format_params


def _label(experiment: Experiment, config: Mapping) -> str:
    study = experiment.study_name(config["sparsity"])
    return f"{study} {config['family'] if config['part'] == SEARCH else config['part']}"


def _ended(trials, trial) -> list:
    """The trials that have ended, `trial` among them (a callback learns of a trial's end
    before Tune sets its status)."""
    return [t for t in trials if t.status in ("TERMINATED", "ERROR") or t is trial]


def _records(trials, config: Mapping, part: str) -> list[TrialRecord]:
    """`trials` of `config`'s (sparsity, family) and `part`, as records."""
    return [TrialRecord(t.config, t.last_result or {}, t.status == "ERROR") for t in trials
            if t.config["part"] == part and group_of(t.config) == group_of(config)]


class TrialProgress(tune.Callback):
    """One line per finished, retried or failed trial on stdout, and each family's best
    config once its search has ended (Tune's own tables are switched off: hundreds of lines
    for a quick study)."""

    def __init__(self, experiment: Experiment):
        self.experiment = experiment

    def _total(self, trials, config: Mapping) -> int:
        exp = self.experiment
        if config["part"] == SEARCH:
            return exp.trials_per_family
        if config["part"] == START:
            return 1
        if config["part"] == CONFIRM:
            return len(exp.families) * exp.confirm.runs
        # Dense, and every family of this sparsity but those whose search found nothing.
        searches = [_records(trials, {**config, "family": family}, SEARCH)
                    for family in exp.families]
        floor = accuracy_floor(exp, _records(trials, {**config, "family": DENSE}, FINAL),
                               config["sparsity"])
        unknown = exp.sparsity_range is not None and floor is None
        failed = sum(len(ended) == exp.trials_per_family and not unknown
                     and select_best(ended, exp.epochs, floor, exp.cost) is None
                     for ended in searches)
        return (len(exp.families) + 1 - failed) * exp.final_seeds + exp.given  # as given

    def _line(self, trials, trial, what: str) -> None:
        label = _label(self.experiment, trial.config)
        ended = sum(_label(self.experiment, t.config) == label for t in _ended(trials, trial))
        result = trial.last_result or {}
        metrics = (f"val_acc {result[METRIC]:.4f} at epoch {result['epoch']}, "
                   f"{result['train_seconds']:.1f} s" if METRIC in result else "no result")
        if "test_acc" in result:
            metrics = f"test_acc {result['test_acc']:.4f}, " + metrics
        if result.get("diverged"):
            what = f"{what} (diverged: non-finite loss)"
        total = self._total(_ended(trials, trial), trial.config)
        print(f"[{label}] {ended}/{total} {trial.trial_id} "
              f"{what}: {metrics}", flush=True)

    def _search_summary(self, trials, trial) -> None:
        """Once the last search trial of a family has ended: its best config."""
        config = trial.config
        if config["part"] != SEARCH:
            return
        ended = _records(_ended(trials, trial), config, SEARCH)
        if len(ended) < self.experiment.trials_per_family:
            return
        exp = self.experiment
        study, family = exp.study_name(config["sparsity"]), config["family"]
        span = exp.sparsity_range
        if span is None:
            best = select_best(ended, exp.epochs)
            if best is None:
                print(f"[{study}] {family}: no trial completed the budget", flush=True)
            else:
                print(f"[{study}] {family}: best val_acc {best.result[METRIC]:.4f} with "
                      f"{format_params(best.config['params'])}", flush=True)
            return
        dense = _records(_ended(trials, trial), {**config, "family": DENSE}, FINAL)
        floor = accuracy_floor(exp, dense, config["sparsity"])
        best = None if floor is None else select_best(ended, exp.epochs, floor, exp.cost)
        if floor is None:
            print(f"[{study}] {family}: search done; its point waits for the dense "
                  f"reference's floor", flush=True)
        elif best is None:
            print(f"[{study}] {family}: no trial within {span.max_drop:g} point(s) of dense "
                  f"(val_acc >= {floor:.4f})", flush=True)
        else:
            confirming = (f"; confirming up to {exp.confirm.candidates} of its cheapest "
                          f"points, {exp.confirm.seeds} seed(s) each, until one holds"
                          if exp.confirm.candidates else "")
            print(f"[{study}] {family}: {'sparsest' if exp.cost == 'sparsity' else 'cheapest'}"
                  f" within {span.max_drop:g} point(s) of dense (val_acc >= {floor:.4f}): "
                  f"val_acc {best.result[METRIC]:.4f} with "
                  f"{format_params(best.config['params'])}{confirming}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trials, trial, "done")
        self._search_summary(trials, trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._line(trials, trial, "failed, retrying")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, trial, "FAILED")
        self._search_summary(trials, trial)
