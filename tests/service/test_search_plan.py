"""What the experiment's Tuner runs and what it adds up to (`search.plan`), without Ray:
trial configs -> training runs, the best trial of a search, the per-family outcomes; and
under a sparsity range, the floor, the fronts and their hypervolumes."""

import math

import numpy as np
import optuna
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oneprune.schedules import AGP, OneCycle
from oneprune.train import initial_model
from search.experiment.loading import parse_experiment
from search.experiment.train_configs import base_config
from search.plan.outcomes import TrialRecord, accuracy_floor, aggregate, select_best
from search.plan.pareto import FrontPoint, hypervolume, pareto_front
from search.plan.trials import final_config, final_seeds, search_config, train_config

EPOCHS = 3


@pytest.fixture
def experiment():
    return parse_experiment({"name": "plan", "dataset": "digits", "sparsity": [0.8, 0.9],
                             "epochs": EPOCHS, "families": ["one_cycle", "agp"],
                             "final_seeds": 2, "search": {"seed": 4},
                             "training": {"lr_max": [1e-3, 1e-1]}})


def search(sparsity, family, number, val_acc, epoch=EPOCHS, **result):
    params = {"lr_max": 0.01, "start": 0.1 * number}
    return TrialRecord(search_config((sparsity, family), number, params),
                       {"val_acc": val_acc, "epoch": epoch, "train_seconds": 2.0, **result})


def final(sparsity, family, seed, test_acc, params=None, error=False):
    history = [{"epoch": e, "val_acc": 0.5, "sparsity": 0.1 * e, "lr": 1.0}
               for e in range(1, EPOCHS + 1)]
    return TrialRecord(final_config((sparsity, family), seed, params or {}),
                       {} if error else {"test_acc": test_acc, "train_seconds": 3.0},
                       error, history)


def test_a_trial_config_is_the_training_run_it_stands_for(experiment):
    run = train_config(experiment, search_config((0.9, "agp"), 0, {"power": 2.0,
                                                                   "lr_max": 0.02}))
    assert isinstance(run.schedule, AGP) and run.schedule.power == 2.0
    assert run.schedule.final_sparsity == 0.9 and run.lr_max == 0.02 and run.seed == 4
    rerun = train_config(experiment, final_config((0.9, "agp"), 6, {"power": 2.0}))
    assert rerun.schedule == run.schedule and rerun.seed == 6
    dense = train_config(experiment, final_config((0.9, "dense"), 5, {}))
    assert dense.schedule is None and dense.seed == 5
    assert final_seeds(experiment) == [5, 6]  # never the tuning seed


def test_the_best_trial_completed_the_budget_and_ties_go_to_the_earlier_trial():
    records = [search(0.9, "agp", 0, 0.80),
               search(0.9, "agp", 1, 0.95, epoch=1),          # stopped early
               search(0.9, "agp", 2, 0.95, diverged=True),    # non-finite loss
               search(0.9, "agp", 3, 0.90),
               search(0.9, "agp", 4, 0.90),
               TrialRecord(search_config((0.9, "agp"), 5, {}), {}, error=True)]
    assert select_best(records, EPOCHS).config["number"] == 3
    assert select_best(list(reversed(records)), EPOCHS).config["number"] == 3
    assert select_best(records[1:3], EPOCHS) is None


def test_aggregate_makes_each_studys_outcomes(experiment):
    best = {"lr_max": 0.01, "start": 0.1}
    records = [search(0.9, "one_cycle", 0, 0.7), search(0.9, "one_cycle", 1, 0.8),
               search(0.9, "agp", 0, 0.9, diverged=True),
               final(0.9, "one_cycle", 6, 0.81, best), final(0.9, "one_cycle", 5, 0.79, best),
               final(0.9, "dense", 5, 0.99), final(0.9, "dense", 6, 0.0, error=True),
               search(0.8, "agp", 0, 0.6)]
    studies = aggregate(experiment, records)
    assert list(studies) == [0.8, 0.9]
    one_cycle, agp, dense = studies[0.9]
    assert [o.family for o in studies[0.9]] == ["one_cycle", "agp", "dense"]
    assert (one_cycle.trials, one_cycle.trials_completed, one_cycle.trials_diverged) == (2, 2, 0)
    assert one_cycle.best_val_acc == 0.8 and one_cycle.best_params == best
    assert isinstance(one_cycle.schedule, OneCycle) and one_cycle.schedule.start == 0.1
    assert one_cycle.test_accs == [0.79, 0.81]  # in seed order
    assert one_cycle.search_seconds == 4.0 and one_cycle.final_seconds == 6.0
    assert one_cycle.histories[0] == [{"epoch": e, "val_acc": 0.5, "sparsity": 0.1 * e}
                                      for e in range(1, EPOCHS + 1)]
    assert (agp.trials, agp.trials_completed, agp.trials_diverged) == (1, 0, 1)
    assert agp.schedule is None and agp.test_accs == []
    assert dense.test_accs == [0.99] and dense.lr_policy is not None  # the failed seed left out
    assert studies[0.8][1].trials == 1 and studies[0.8][0].trials == 0


def test_final_runs_of_one_seed_start_alike_in_every_family(experiment):
    """What pairs the differences by seed: final seed s gives every family and the dense
    reference the same initial weights, batch size and data split, whatever its best
    params; another seed gives other weights."""
    data = base_config(experiment).load_data()
    best = {"one_cycle": {"alpha": 20.0, "beta": 3.0, "lr_max": 0.05},
            "agp": {"power": 4.0, "lr_max": 0.002}, "dense": {}}
    runs = {family: train_config(experiment, final_config((0.9, family), 5, params))
            for family, params in best.items()}
    weights = {family: initial_model(cfg, data).state_dict() for family, cfg in runs.items()}
    for family in ("agp", "dense"):
        assert all(torch.equal(weights[family][k], value)
                   for k, value in weights["one_cycle"].items()), family
    order = {(cfg.seed, cfg.batch_size, cfg.split_seed, cfg.val_fraction, cfg.dataset)
             for cfg in runs.values()}
    assert len(order) == 1
    other = initial_model(train_config(experiment, final_config((0.9, "agp"), 6, {})), data)
    first = next(iter(weights["agp"]))
    assert not torch.equal(other.state_dict()[first], weights["agp"][first])


@pytest.fixture
def ranged():
    return parse_experiment({"name": "range", "dataset": "digits", "epochs": EPOCHS,
                             "sparsity": {"min": 0.5, "max": 0.95, "max_drop": 2.0},
                             "families": ["one_cycle", "agp"], "final_seeds": 2,
                             "training": {"lr_max": [1e-3, 1e-1]}})


def point(family, number, sparsity, val_acc, **result):
    params = {"final_sparsity": sparsity, "lr_max": 0.01}
    return TrialRecord(search_config((0.95, family), number, params),
                       {"val_acc": val_acc, "epoch": EPOCHS, "train_seconds": 1.0, **result})


def dense_final(seed, val_acc, error=False):
    return TrialRecord(final_config((0.95, "dense"), seed, {}),
                       {} if error else {"val_acc": val_acc, "test_acc": val_acc,
                                         "epoch": EPOCHS, "train_seconds": 1.0}, error)


def test_the_floor_is_the_dense_mean_minus_max_drop_once_every_dense_run_ended(ranged):
    assert accuracy_floor(ranged, [dense_final(1, 0.96)], 0.95) is None  # one of two seeds
    assert accuracy_floor(ranged, [dense_final(1, 0.96), dense_final(2, 0.98)], 0.95) \
        == pytest.approx(0.97 - 0.02)
    assert accuracy_floor(ranged, [dense_final(1, 0.96), dense_final(2, 0, error=True)], 0.95) \
        == pytest.approx(0.94)
    assert accuracy_floor(ranged, [dense_final(1, 0, True), dense_final(2, 0, True)], 0.95) \
        == math.inf  # no dense accuracy: nothing is within the drop
    single = parse_experiment({"name": "one", "dataset": "digits", "epochs": EPOCHS})
    assert accuracy_floor(single, [dense_final(1, 0.96)], 0.95) is None


def test_under_a_floor_the_sparsest_feasible_trial_is_re_run():
    records = [point("agp", 0, 0.70, 0.97), point("agp", 1, 0.90, 0.93),  # below the floor
               point("agp", 2, 0.85, 0.95), point("agp", 3, 0.85, 0.96),  # same sparsity
               point("agp", 4, 0.88, 0.99, epoch=1)]                       # stopped early
    assert select_best(records, EPOCHS, floor=0.94).config["number"] == 3
    assert select_best(records, EPOCHS, floor=0.99) is None
    assert select_best(records, EPOCHS).config["number"] == 0  # no floor: most accurate


def brute_force_front(points):
    """Feasible points no feasible point is at least as good as in both and better in one."""
    feasible = [p for p in points if p.feasible]
    return {p.number for p in feasible
            if not any(q.sparsity >= p.sparsity and q.val_acc >= p.val_acc
                       and (q.sparsity, q.val_acc) != (p.sparsity, p.val_acc)
                       for q in feasible)}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.5, 0.6, 0.7, 0.8, 0.9]),
                          st.sampled_from([0.90, 0.92, 0.94, 0.96, 0.98])),
                min_size=1, max_size=12))
def test_the_front_and_its_hypervolume_agree_with_optuna(values):
    """The front is Optuna's constrained `best_trials`; the hypervolume is Optuna's own
    (minimisation, hence the signs) divided by the box [0.5, 0.95] x [floor, 1]."""
    floor = 0.93
    points = [FrontPoint(i, s, v, v >= floor) for i, (s, v) in enumerate(values)]
    front = pareto_front(points)
    assert {p.number for p in front} == brute_force_front(points)
    study = optuna.create_study(directions=["maximize", "maximize"])
    study.add_trials([optuna.trial.create_trial(
        values=[v, s], system_attrs={"constraints:floor_gap": floor - v})
        for s, v in values])
    assert {t.number for t in study.best_trials} == {p.number for p in front}
    expected = 0.0
    if front:
        expected = optuna._hypervolume.compute_hypervolume(
            -np.array([[p.sparsity, p.val_acc] for p in front]),
            -np.array([0.5, floor])) / ((0.95 - 0.5) * (1.0 - floor))
    assert hypervolume(front, (0.5, floor), (0.95, 1.0)) == pytest.approx(expected)


def test_aggregate_under_a_range_places_every_trial_and_re_runs_the_sparsest_feasible(ranged):
    records = [point("agp", 0, 0.60, 0.97), point("agp", 1, 0.80, 0.955),
               point("agp", 2, 0.90, 0.93), point("agp", 3, 0.70, 0.95),
               point("one_cycle", 0, 0.92, 0.96),
               dense_final(1, 0.97), dense_final(2, 0.97),
               final(0.95, "agp", 1, 0.95, {"final_sparsity": 0.8, "lr_max": 0.01}),
               final(0.95, "agp", 2, 0.96, {"final_sparsity": 0.8, "lr_max": 0.01})]
    one_cycle, agp, dense = aggregate(ranged, records)[0.95]
    assert agp.schedule.final_sparsity == 0.8 and agp.best_number == 1
    assert [p.number for p in agp.points] == [0, 1, 2, 3]
    assert [p.feasible for p in agp.points] == [True, True, False, True]  # floor 0.95
    assert [p.number for p in pareto_front(agp.points)] == [1, 0]  # 3 is dominated by 1
    assert agp.hypervolume == pytest.approx(
        ((0.8 - 0.5) * (0.955 - 0.95) + (0.6 - 0.5) * (0.97 - 0.955)) / (0.45 * 0.05))
    assert agp.test_accs == [0.95, 0.96]
    assert one_cycle.schedule.final_sparsity == 0.92 and not one_cycle.test_accs
    assert dense.points == [] and math.isnan(dense.hypervolume)
