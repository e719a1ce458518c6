"""Which searched parameters of a family mattered: fANOVA importances on its Optuna study.

fANOVA (Hutter et al. 2014; Optuna's `FanovaImportanceEvaluator`) fits a random forest to
(params -> validation accuracy) over the study's completed trials and reports each
parameter's share of the variance it explains; the shares sum to 1. It is Optuna's
default evaluator and reads the whole search space. PED-ANOVA, the alternative, scores how
a parameter's distribution in the top quantile of trials differs from the rest: with the
20 trials of a study here, its top 10% is two trials, too few to trust.

The family spaces are define-by-run with bounds that depend on earlier draws (`end` starts
above `start`, `beta` stays below `alpha`), which Optuna's evaluators refuse or drop as a
"dynamic search space". Each parameter is therefore given the one distribution that
encloses all of its draws (the widest low and high) before the evaluation: the values are
the ones sampled, only the box around them is common.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import optuna
from matplotlib.figure import Figure
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from oneprune.schedules import schedule_parameters
from search.plan.outcomes import FamilyOutcome
from search.verdict.columns import percent

MIN_TRIALS = 3  # completed trials below which no importance is computed
SEED = 0  # of fANOVA's forest: the same study gives the same importances


def _enclosing(distributions: list[BaseDistribution]) -> BaseDistribution:
    """One distribution that holds every value of `distributions` (one parameter's, over
    the trials): the widest range, or the union of the choices in first-seen order."""
    first = distributions[0]
    if isinstance(first, CategoricalDistribution):
        choices = list(dict.fromkeys(c for d in distributions for c in d.choices))
        return CategoricalDistribution(choices)
    low = min(d.low for d in distributions)
    high = max(d.high for d in distributions)
    if isinstance(first, IntDistribution):
        return IntDistribution(low, high, log=first.log, step=first.step)
    return FloatDistribution(low, high, log=first.log, step=first.step)


def _completed(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and t.values]


def param_importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importance of each parameter every completed trial of `study` has for its
    first objective (validation accuracy; under a sparsity range the second, sparsity, is
    the sampled `final_sparsity` itself), largest first; {} with fewer than `MIN_TRIALS`
    completed trials or no such parameter."""
    trials = _completed(study.get_trials(deepcopy=False))
    if len(trials) < MIN_TRIALS:
        return {}
    names = [n for n in trials[0].params if all(n in t.params for t in trials)]
    if not names:
        return {}
    spaces = {n: _enclosing([t.distributions[n] for t in trials]) for n in names}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line per family
    try:
        boxed = optuna.create_study(direction=study.directions[0])
    finally:
        optuna.logging.set_verbosity(verbosity)
    boxed.add_trials([optuna.trial.create_trial(
        params={n: t.params[n] for n in names}, distributions=spaces, value=t.values[0])
        for t in trials])
    if len({t.values[0] for t in trials}) == 1:  # nothing to explain
        return dict.fromkeys(names, 0.0)
    importances = optuna.importance.get_param_importances(
        boxed, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=SEED))
    return {name: float(value) for name, value in importances.items()}


def study_importances(storage: str, study_name: str) -> dict[str, float]:
    """`param_importances` of the stored study `study_name` ({} if it does not exist)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return {}
    return param_importances(study)


def _importance_params(outcomes: Sequence[FamilyOutcome]) -> list[str]:
    """Every parameter some family has an importance for: the schedules' first, in the
    order their classes declare them, then the training settings in the order first seen."""
    seen = list(dict.fromkeys(name for o in outcomes for name in o.importances))
    order = list(schedule_parameters())
    return sorted(seen, key=lambda name: order.index(name) if name in order else len(order))


def importance_table(outcomes: Sequence[FamilyOutcome]) -> str:
    """Each family's fANOVA importances (% of the explained variance of validation
    accuracy over its search) as a Markdown table; '' when no family has any."""
    names = _importance_params(outcomes)
    if not names:
        return ""
    lines = ["| family | " + " | ".join(names) + " |",
             "| --- |" + " --- |" * len(names)]
    for outcome in outcomes:
        if outcome.importances:
            cells = [percent(outcome.importances.get(name, math.nan)) for name in names]
            lines.append(f"| {outcome.family} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_importance(outcomes: Sequence[FamilyOutcome], path: Path, title: str) -> Path:
    """The importance table as a heat map: families down, parameters across."""
    names = _importance_params(outcomes)
    rated = [o for o in outcomes if o.importances]
    values = np.array([[o.importances.get(n, np.nan) for n in names] for o in rated])
    fig = Figure(figsize=(1.2 + 0.9 * len(names), 1.2 + 0.5 * len(rated)),
                 layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.0%}", ha="center", va="center",
                    color="white" if value > 0.6 else "black", fontsize="small")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(rated)), [o.family for o in rated])
    fig.colorbar(image, ax=ax, label="share of variance (fANOVA)")
    ax.set_title(title, fontsize="medium")
    fig.savefig(path, format="png", dpi=120)
    return path
