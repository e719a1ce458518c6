"""The verdict's statistics (`search.plan.stats`), checked against scipy: the Student-t interval
of a mean, Welch's interval, and the difference paired by seed; and the docstring
examples, which run and agree with scipy."""

import doctest
import math

import numpy as np
import pytest
from scipy import stats
from testkit.accuracies import AGP, ONE_CYCLE, SEEDS

from search.plan import pareto
from search.plan import stats as verdict_stats
from search.plan.stats import difference_interval, mean_interval, paired_difference


@pytest.mark.parametrize("module", [verdict_stats, pareto], ids=lambda module: module.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_the_docstring_examples_agree_with_scipy():
    """The numbers `search.plan.stats`' docstring prints are scipy's."""
    values = [0.90, 0.92, 0.94]
    interval = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert mean_interval(values)[2:] == pytest.approx(interval)
    a, b = [0.91, 0.93, 0.95], [0.90, 0.92, 0.93]
    paired = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert paired_difference(a, [1, 2, 3], b, [1, 2, 3])[1:3] == pytest.approx(paired)
    welch = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert difference_interval(a, b)[1:] == pytest.approx(welch)
    for line in ("(0.92, 0.02, 0.8703, 0.9697)", "('paired', 0.0133, -0.001, 0.0277, 3)",
                 "(0.0133, -0.0281, 0.0548)"):
        assert line in verdict_stats.__doc__


def test_the_mean_interval_is_clipped_to_accuracies_and_nan_when_undefined():
    assert mean_interval([0.99, 1.0, 1.0])[3] == 1.0
    assert math.isnan(mean_interval([0.9])[1]) and math.isnan(mean_interval([])[0])


def test_the_paired_interval_is_students_t_of_the_per_seed_differences():
    diff = paired_difference(AGP, SEEDS, ONE_CYCLE, SEEDS)
    reference = stats.ttest_rel(AGP, ONE_CYCLE).confidence_interval(0.95)
    assert diff.method == "paired" and diff.paired_seeds == 5 and diff.wins == 4
    assert diff.diff == pytest.approx(np.mean(AGP - ONE_CYCLE))
    assert (diff.low, diff.high) == pytest.approx((reference.low, reference.high))
    assert diff.low > 0  # separable once paired ...
    welch = difference_interval(AGP, ONE_CYCLE)
    reference = stats.ttest_ind(AGP, ONE_CYCLE, equal_var=False).confidence_interval(0.95)
    assert welch[1:] == pytest.approx((reference.low, reference.high))
    assert welch[1] < 0 < welch[2]  # ... not when the seeds' shared effects are ignored


def test_pairing_follows_the_seeds_not_the_order():
    shuffled = [4, 0, 3, 1, 2]
    diff = paired_difference(AGP[shuffled], [SEEDS[i] for i in shuffled], ONE_CYCLE, SEEDS)
    assert diff == paired_difference(AGP, SEEDS, ONE_CYCLE, SEEDS)


def test_missing_seeds_fall_back_to_welch():
    diff = paired_difference(AGP[:4], SEEDS[:4], ONE_CYCLE, SEEDS)  # seed 5 failed
    assert diff.method == "welch" and diff.paired_seeds == 4
    assert diff[:3] == pytest.approx(difference_interval(AGP[:4], ONE_CYCLE))
    single = paired_difference(AGP[:1], SEEDS[:1], ONE_CYCLE[:1], SEEDS[:1])
    assert single.method == "welch" and math.isnan(single.low)
