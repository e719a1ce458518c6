"""Parameter importances of a family's search (`search.verdict.importance`): fANOVA over the whole
define-by-run space, whose ranges depend on earlier draws."""

import optuna
import pytest

from search.verdict.importance import MIN_TRIALS, param_importances

pytestmark = pytest.mark.slow  # fits fANOVA forests (seconds each)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def ramp_study(objective, trials=24):
    """A study over a ramp family's space as `search.plan.space` draws it: `end` from
    [start + 0.1, 1], so its range differs from trial to trial."""
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))

    def sample(trial):
        start = trial.suggest_float("start", 0.0, 0.5)
        end = trial.suggest_float("end", start + 0.1, 1.0)
        lr_max = trial.suggest_float("lr_max", 1e-3, 1e-1, log=True)
        coupling = trial.suggest_categorical("coupling", ["none", "align"])
        return objective(start=start, end=end, lr_max=lr_max, coupling=coupling)

    study.optimize(sample, n_trials=trials)
    return study


def test_a_parameter_with_a_dependent_range_is_rated():
    study = ramp_study(lambda end, **_: -abs(end - 0.7))
    importances = param_importances(study)
    assert set(importances) == {"start", "end", "lr_max", "coupling"}
    assert max(importances, key=importances.get) == "end"
    assert sum(importances.values()) == pytest.approx(1.0)
    assert param_importances(study) == importances  # seeded: the same every time
    # What Optuna's evaluator does with the raw study: `end` is left out of the space.
    raw = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert "end" not in raw or raw["end"] == 0.0


def test_the_parameter_that_drives_accuracy_comes_first():
    study = ramp_study(lambda lr_max, coupling, **_: lr_max + (0.01 if coupling == "align"
                                                                  else 0.0))
    importances = param_importances(study)
    assert list(importances)[0] == "lr_max" and importances["lr_max"] > 0.5


def test_too_few_or_uninformative_trials():
    assert param_importances(ramp_study(lambda **_: 0.5, trials=MIN_TRIALS - 1)) == {}
    flat = param_importances(ramp_study(lambda **_: 0.5, trials=MIN_TRIALS))
    assert flat == {"start": 0.0, "end": 0.0, "lr_max": 0.0, "coupling": 0.0}
