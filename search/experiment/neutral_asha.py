"""When early stopping is neutral to when a schedule prunes (pure: no Ray).

ASHA compares the trials of a (sparsity, family) at rungs of epochs. Before every trial has
reached its final sparsity, a trial that prunes late is still dense and looks better than
one that pruned early, for a reason unrelated to its final accuracy. So the first rung, the
grace period, must come after `first_neutral_rung`, and an experiment file that asks for
ASHA is only accepted where it does (`check_neutral_asha`, called when a file is loaded;
`search.tuner.scheduler` runs the brackets).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from oneprune.schedules import FAMILIES

if TYPE_CHECKING:
    from search.experiment.schema import Experiment


def first_neutral_rung(experiment: Experiment) -> tuple[int, str, float]:
    """The first epoch at which every search trial of every family has reached its final
    sparsity, whatever its sampled schedule (`Schedule.latest_end` of each family's space),
    with the family and progress that set it. Before it, a trial that prunes late is still
    dense and would look better to ASHA than one that pruned early."""
    families = dict.fromkeys(experiment.family_of(arm) for arm in experiment.families)
    latest, family = max((FAMILIES[f].latest_end(experiment.search.space.get(f)), f)
                         for f in families)
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
