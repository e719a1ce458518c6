"""Early stopping inside each (sparsity, family), and only where it is neutral.

`GroupScheduler` (a Ray Tune `TrialScheduler`) gives each (sparsity, family) its own ASHA
bracket, so a trial is only ever compared with trials of its own family; final runs are
never stopped. Its first rung is the grace period, which an experiment file is only
accepted with (`check_neutral_asha`) once every family's trials have reached their final
sparsity (`first_neutral_rung`): a rung never compares a still-dense trial with a pruned
one. It also tells the searcher of every trial Tune adds, including the trials
`Tuner.restore` brings back.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from oneprune.schedules import FAMILIES
from search.plan.outcomes import METRIC
from search.plan.trials import FINAL, SEARCH, group_of

if TYPE_CHECKING:
    from search.experiment import Experiment
    from search.searcher import ExperimentSearcher


def first_neutral_rung(experiment: Experiment) -> tuple[int, str, float]:
    """The first epoch at which every search trial of every family has reached its final
    sparsity, whatever its sampled schedule (`Schedule.latest_end` of each family's space),
    with the family and progress that set it. Before it, a trial that prunes late is still
    dense and would look better to ASHA than one that pruned early."""
    latest, family = max((FAMILIES[f].latest_end(experiment.search.space.get(f)), f)
                         for f in experiment.families)
    return math.ceil(latest * experiment.epochs - 1e-9), family, latest


def check_neutral_asha(experiment: Experiment) -> None:
    """Raise `ValueError` (one line) for ASHA settings that would compare trials before all
    of them are pruned, or trials that end at different sparsities."""
    search = experiment.search
    if not search.asha:
        return
    if experiment.sparsity_range is not None:
        raise ValueError(
            "search.asha cannot be used with a sparsity range: the trials of a rung end at "
            "different sparsities, so their validation accuracies do not compare; set "
            "asha: false")
    rung, family, latest = first_neutral_rung(experiment)
    knob = FAMILIES[family].ENDS_AT
    if rung >= experiment.epochs:
        raise ValueError(
            f"search.asha can stop no trial fairly: {family} may prune until epoch {rung} "
            f"of {experiment.epochs} ({knob} up to {latest:g}); narrow search.space."
            f"{family}.{knob} or set asha: false")
    if search.grace_period < rung:
        raise ValueError(
            f"search.grace_period must be >= {rung}: until epoch {rung} of "
            f"{experiment.epochs} a {family} trial may still be pruning ({knob} up to "
            f"{latest:g}), and ASHA would favour late-pruning trials; got "
            f"{search.grace_period}")


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
