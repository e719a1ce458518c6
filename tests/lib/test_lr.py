"""The one-cycle LR policy and its coupling to the schedule, formula by formula."""

import math

import numpy as np
import pytest
import torch

from oneprune.lr import CoupledLR, one_cycle_lr
from oneprune.schedules import AGP, Cosine, Iterative, OneCycle, OneShot


def test_one_cycle_endpoints_and_phases():
    lr_max, pct = 0.01, 0.3
    assert one_cycle_lr(0.0, lr_max, pct) == pytest.approx(lr_max / 25)
    assert one_cycle_lr(pct, lr_max, pct) == pytest.approx(lr_max)
    assert one_cycle_lr(1.0, lr_max, pct) == pytest.approx(lr_max / 25 / 1e4)
    # half-way through each phase, half-way between its ends (half a cosine)
    assert one_cycle_lr(pct / 2, lr_max, pct) == pytest.approx((lr_max / 25 + lr_max) / 2)
    assert one_cycle_lr(pct + (1 - pct) / 2, lr_max, pct) == pytest.approx(
        (lr_max + lr_max / 25 / 1e4) / 2)
    t = np.linspace(0, 1, 1001)
    lr = one_cycle_lr(t, lr_max, pct)
    peak = int(np.argmax(lr))
    assert np.all(np.diff(lr[: peak + 1]) >= 0) and np.all(np.diff(lr[peak:]) <= 0)


def test_one_cycle_matches_torch_one_cycle_lr():
    """torch's OneCycleLR indexes steps 0..T-1 and ends its warm-up at step pct*T - 1; in
    progress t = i / (T - 1) that is pct_start = (pct*T - 1) / (T - 1)."""
    total, pct, lr_max = 200, 0.3, 0.02
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr_max)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr_max, total_steps=total, pct_start=pct, cycle_momentum=False)
    torch_lrs = []
    for _ in range(total):
        torch_lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    ours = one_cycle_lr(np.arange(total) / (total - 1), lr_max, (pct * total - 1) / (total - 1))
    np.testing.assert_allclose(ours, torch_lrs, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("schedule, midpoint", [
    # one_cycle: the logistic crosses half of its increase
    (OneCycle(0.9, start=0.1, end=0.9, alpha=14, beta=6), None),
    (AGP(0.9, start=0.2, end=0.8, power=3), 0.2 + (1 - 2 ** (-1 / 3)) * 0.6),
    (OneShot(0.9, start=0.4), 0.4),
    # iterative with 4 steps over [0, 1]: ceil(4u)/4 reaches 1/2 on (1/4, 1/2]
    (Iterative(0.9, start=0.0, end=1.0, steps=4), 0.25),
])
def test_align_uses_the_schedules_midpoint(schedule, midpoint):
    if midpoint is None:
        t = np.linspace(0, 1, 200_001)
        midpoint = t[np.argmax(schedule(t) >= schedule.final_sparsity / 2)]
    policy = CoupledLR(schedule, lr_max=1e-3, pct_start=0.25, coupling="align")
    assert policy.effective_pct_start == pytest.approx(midpoint, abs=1e-4)
    assert policy(policy.effective_pct_start) == pytest.approx(1e-3)
    assert CoupledLR(schedule, 1e-3, 0.25, "none").effective_pct_start == 0.25


def test_align_is_clamped():
    early = CoupledLR(OneShot(0.9, start=0.01), 1e-3, coupling="align")
    late = CoupledLR(OneShot(0.9, start=0.99), 1e-3, coupling="align")
    assert early.effective_pct_start == 0.05 and late.effective_pct_start == 0.95


def test_recovery_gain_formula():
    schedule = Cosine(0.8, start=0.2, end=0.6)
    gain, window = 2.0, 0.1
    policy = CoupledLR(schedule, 1e-2, 0.3, "none", recovery_gain=gain, recovery_window=window)
    for t in (0.0, 0.1, 0.25, 0.4, 0.65, 0.7, 1.0):
        added = schedule(t) - schedule(max(t - window, 0.0))
        expected = one_cycle_lr(t, 1e-2, 0.3) * (1 + gain * added / 0.8)
        assert policy(t) == pytest.approx(expected, rel=1e-12)
    # outside the ramp (and more than a window after it) the gain is exactly 1
    assert policy(0.1) == one_cycle_lr(0.1, 1e-2, 0.3)
    assert policy(0.75) == one_cycle_lr(0.75, 1e-2, 0.3)
    # while pruning, it is raised
    assert policy(0.4) > one_cycle_lr(0.4, 1e-2, 0.3)


def test_recovery_gain_of_one_shot_covers_the_window_after_the_jump():
    policy = CoupledLR(OneShot(0.9, start=0.5), 1e-2, 0.25, recovery_gain=1.0,
                       recovery_window=0.05)
    base = one_cycle_lr(np.array([0.49, 0.5, 0.54, 0.56]), 1e-2, 0.25)
    np.testing.assert_allclose(policy(np.array([0.49, 0.5, 0.54, 0.56])),
                               base * np.array([1, 2, 2, 1]))


def test_coupling_is_vectorised_and_dense_has_no_gain():
    t = np.linspace(0, 1, 11)
    policy = CoupledLR(AGP(0.9), 1e-3, coupling="align", recovery_gain=0.5)
    np.testing.assert_allclose(policy(t), [policy(float(x)) for x in t])
    dense = CoupledLR(None, 1e-3, recovery_gain=3.0)
    assert dense(0.5) == one_cycle_lr(0.5, 1e-3, 0.25)
    assert CoupledLR(OneCycle(0.0), 1e-3, recovery_gain=3.0)(0.5) == one_cycle_lr(0.5, 1e-3,
                                                                                  0.25)


@pytest.mark.parametrize("kwargs, message", [
    ({"lr_max": 0.0}, "lr_max must be in (0, 10]"),
    ({"lr_max": math.nan}, "lr_max"),
    ({"pct_start": 1.0}, "pct_start must be in (0, 1)"),
    ({"coupling": "sync"}, "coupling must be one of 'none', 'align'"),
    ({"recovery_gain": -0.1}, "recovery_gain must be in [0, 100]"),
    ({"recovery_window": 0.0}, "recovery_window must be in (0, 1]"),
    ({"schedule": None, "coupling": "align"}, "coupling 'align' needs a pruning schedule"),
    ({"schedule": {"family": "agp"}}, "schedule must be a Schedule or None"),
])
def test_bad_arguments_name_the_field(kwargs, message):
    arguments = {"schedule": AGP(0.9), "lr_max": 1e-3, **kwargs}
    with pytest.raises(ValueError) as error:
        CoupledLR(**arguments)
    assert message in str(error.value)


def test_progress_outside_the_budget_is_refused():
    with pytest.raises(ValueError, match=r"progress t must be in \[0, 1\]"):
        CoupledLR(AGP(0.9), 1e-3)(1.5)
