"""Early stopping inside each (sparsity, family), and only where it is neutral.

`GroupScheduler` (a Ray Tune `TrialScheduler`) gives each (sparsity, family) its own ASHA
bracket, so a trial is only ever compared with trials of its own family; final runs are
never stopped. Its first rung is the grace period, which an experiment file is only
accepted with once every family's trials have reached their final sparsity
(`search.experiment.neutral_asha`): a rung never compares a still-dense trial with a pruned
one. It also tells the searcher of every trial Tune adds, including the trials
`Tuner.restore` brings back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from search.plan.outcomes import METRIC
from search.plan.trials import FINAL, SEARCH, group_of

if TYPE_CHECKING:
    from search.experiment.schema import Experiment
    from search.tuner.searcher import ExperimentSearcher


class GroupScheduler(TrialScheduler):
    """ASHA per (sparsity, family) when the experiment asks for it, FIFO otherwise; final
    runs are never stopped. Tells `searcher` of every trial Tune adds."""

    def __init__(self, searcher: ExperimentSearcher, experiment: Experiment):
        super().__init__()
        self.searcher = searcher
        self.experiment = experiment
        self._metric = METRIC
        self._brackets: dict[Any, TrialScheduler] = {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return metric in (None, METRIC) and mode in (None, "max")

    def _bracket(self, trial: Trial) -> TrialScheduler:
        config = trial.config
        key = group_of(config) if config["part"] == SEARCH and self.experiment.search.asha \
            else FINAL
        if key not in self._brackets:
            if key == FINAL:
                self._brackets[key] = FIFOScheduler()
            else:
                epochs = self.experiment.epochs
                self._brackets[key] = ASHAScheduler(
                    time_attr="epoch", metric=METRIC, mode="max", max_t=epochs,
                    grace_period=min(self.experiment.search.grace_period, epochs))
        return self._brackets[key]

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self.searcher.track(trial)
        self._bracket(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._bracket(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        return self._bracket(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._bracket(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._bracket(trial).on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        for status in (Trial.PENDING, Trial.PAUSED):
            for trial in tune_controller.get_trials():
                if trial.status == status:
                    return trial
        return None

    def debug_string(self) -> str:
        return f"one {'ASHA bracket' if self.experiment.search.asha else 'FIFO queue'} " \
               f"per (sparsity, family); final runs FIFO"
