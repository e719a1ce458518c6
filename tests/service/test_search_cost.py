"""A sparsity range against what the user pays for (`cost:`), and the confirmation of the
point it delivers (`confirm:`): the keys and their refusals; the confirmation's choice
where the luckiest edge point is known to be lucky; a stand-in study through the real
`run_experiment` whose front in the cost is known; and a real study that times every
trial's and final run's model in onnxruntime."""

import csv
import math
import sys
import time
from pathlib import Path

import pytest
import ray.cloudpickle
import yaml
from mlflow.tracking import MlflowClient
from testkit.driver import run_search

from search.experiment.loading import ConfigError, parse_experiment
from search.experiment.schema import Confirmation
from search.plan.outcomes import (
    TrialRecord,
    chosen_point,
    confirmation_candidates,
    confirmation_configs,
    select_best,
)
from search.plan.trials import confirm_config, confirm_seeds, search_config, target_sparsity
from search.tuner.study import load_data, run_experiment

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

RANGE = {"name": "c", "dataset": "digits", "epochs": 2, "final_seeds": 2,
         "sparsity": {"min": 0.5, "max": 0.9, "max_drop": 1.0}, "granularity": "filter"}


@pytest.mark.parametrize(("changes", "message"), [
    ({"cost": "speed"}, "cost must be one of 'sparsity', 'macs', 'params', 'bytes', 'latency'"),
    ({"sparsity": 0.9, "cost": "macs"}, "cost needs a sparsity range"),
    ({"sparsity": 0.9, "confirm": {"candidates": 2}}, "confirm needs a sparsity range"),
    ({"cost": "macs", "latency": {"batch": 1}}, "latency is read only with cost: latency"),
    ({"cost": "latency", "latency": {"runtime": "tensorrt"}}, "latency.runtime must be one"),
    ({"cost": "latency", "latency": {"batch": 0}}, "latency.batch must be in [1, 4096]"),
    ({"confirm": {"candidates": -1}}, "confirm.candidates must be in [0, 50]"),
    ({"confirm": {"seeds": 0}}, "confirm.seeds must be in [1, 100]"),
    ({"confirm": {"tries": 3}}, "unknown key 'confirm.tries'"),
])
def test_bad_cost_latency_and_confirmation_keys_are_refused_in_one_line(changes, message):
    with pytest.raises(ConfigError) as error:
        parse_experiment({**RANGE, **changes})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_default_confirmation_costs_at_most_15_percent_of_a_familys_runs():
    for trials, finals in ((150, 5), (40, 3), (20, 3), (8, 3), (500, 5)):
        confirm = parse_experiment({**RANGE, "trials_per_family": trials,
                                    "final_seeds": finals}).confirm
        assert confirm.runs <= 0.15 * (trials + finals)
        assert confirm.candidates == 0 or 2 <= confirm.candidates <= 6
    assert parse_experiment({**RANGE, "trials_per_family": 150, "final_seeds": 5}
                            ).confirm == Confirmation(candidates=6, seeds=2)
    assert parse_experiment({**RANGE, "trials_per_family": 8}).confirm.candidates == 0
    given = parse_experiment({**RANGE, "confirm": {"seeds": 3, "margin": 0.5},
                              "trials_per_family": 100})
    assert given.confirm == Confirmation(candidates=5, seeds=3, margin=0.5)


def test_a_cost_of_a_weight_pruned_network_says_what_it_measures():
    weight = parse_experiment({**RANGE, "granularity": "weight", "cost": "latency"})
    assert "latency is the dense network's" in weight.cost_note
    assert "non-zero" in parse_experiment({**RANGE, "granularity": "weight",
                                           "cost": "params"}).cost_note
    assert parse_experiment({**RANGE, "cost": "latency"}).cost_note is None  # filters
    assert parse_experiment(RANGE).cost_note is None


def records(experiment, points, confirmed):
    """Search trials (number: (sparsity, val_acc)) and confirmation runs (number: their
    val_accs, one per confirmation seed) of one family."""
    group = (0.9, "agp")
    done = [TrialRecord(search_config(group, number, {"final_sparsity": sparsity}),
                        {"val_acc": accuracy, "epoch": experiment.epochs, "diverged": False})
            for number, (sparsity, accuracy) in points.items()]
    for number, values in confirmed.items():
        for seed, value in zip(confirm_seeds(experiment), values, strict=True):
            done.append(TrialRecord(
                confirm_config(group, seed, number, {"final_sparsity": points[number][0]}),
                {"val_acc": value, "epoch": experiment.epochs, "diverged": False}))
    return done


def test_the_confirmation_re_runs_the_cheapest_point_that_holds_not_the_luckiest():
    """Trials 4 and 3 are the sparsest feasible points only by luck: re-trained with fresh
    seeds they fall below the floor (0.95); trial 2 holds. The candidates are confirmed one
    after another, front by front, at most `candidates` of them: 4, 3, 2 and 0 are the
    front (1 and 6, which 2 dominates, would come next)."""
    experiment = parse_experiment({**RANGE, "confirm": {"candidates": 4, "seeds": 2}})
    floor = 0.95
    points = {0: (0.60, 0.99), 1: (0.70, 0.965), 2: (0.75, 0.97), 3: (0.80, 0.955),
              4: (0.85, 0.951), 5: (0.88, 0.90), 6: (0.72, 0.96)}
    unconfirmed = records(experiment, points, {})
    assert select_best(unconfirmed, experiment.epochs, floor).config["number"] == 4
    assert [r.config["number"] for r in confirmation_candidates(
        experiment, unconfirmed, floor)] == [4, 3, 2, 0]
    wanted = confirmation_configs(experiment, unconfirmed, floor)
    assert [(c["number"], c["seed"]) for c in wanted] == [
        (4, seed) for seed in confirm_seeds(experiment)]
    failed = {4: [0.93, 0.94]}
    assert {c["number"] for c in confirmation_configs(
        experiment, records(experiment, points, failed), floor)} == {3}
    confirmed = {4: [0.93, 0.94], 3: [0.96, 0.93], 2: [0.955, 0.96]}
    done = records(experiment, points, confirmed)
    assert confirmation_configs(experiment, done, floor) == []
    assert chosen_point(experiment, done, floor).config["number"] == 2
    # A margin moves the bar up: 2 no longer holds, 0 is confirmed next and holds.
    strict = parse_experiment({**RANGE, "confirm": {"candidates": 4, "seeds": 2,
                                                     "margin": 1.0}})
    assert {c["number"] for c in confirmation_configs(
        strict, records(strict, points, confirmed), floor)} == {0}
    assert chosen_point(strict, records(strict, points, {**confirmed, 0: [0.98, 0.97]}),
                        floor).config["number"] == 0
    # None holds after the last candidate: the one whose mean is highest.
    assert chosen_point(strict, records(strict, points, {**confirmed, 0: [0.95, 0.95]}),
                        floor).config["number"] == 2
    holds = {4: [0.95, 0.96]}
    assert chosen_point(experiment, records(experiment, points, holds),
                        floor).config["number"] == 4


# A stand-in family: its true validation accuracy falls past sparsity 0.7; a search trial
# between 0.7 and 0.8 is lucky (+3 points, what the luckiest of many draws gets), a
# confirmation or final run is not. The cost saved grows with sparsity but drops with
# lr_max (a schedule that saves less at the same sparsity), so the front in the cost is not
# the front in sparsity.
DENSE_VAL, KNEE = 0.98, 0.7


def true_accuracy(config):
    return 0.99 - max(0.0, target_sparsity(config) - KNEE)


def stand_in_accuracy(config):
    lucky = config["part"] == "search" and KNEE < target_sparsity(config) <= 0.8
    return true_accuracy(config) + (0.03 if lucky else 0.0)


def stand_in_saving(config):
    lr = config["params"].get("lr_max", 1e-2)
    return target_sparsity(config) * (1 - 0.2 * math.log10(lr / 1e-3))


def stand_in(config, *, experiment, data, folders):
    from ray import tune

    started = time.time()
    dense = config["family"] == "dense"
    for epoch in range(1, experiment.epochs + 1):
        value = DENSE_VAL if dense else stand_in_accuracy(config)
        row = {"epoch": epoch, "val_acc": value, "train_seconds": time.time() - started,
               "sparsity": target_sparsity(config), "diverged": False}
        if epoch == experiment.epochs and not dense:
            saved = stand_in_saving(config)
            row.update(cost_saving=saved, macs=1e6 * (1 - saved), dense_macs=1e6,
                       params=1.0, dense_params=1.0, bytes=1.0, dense_bytes=1.0)
        if config["part"] == "final" and epoch == experiment.epochs:
            row["test_acc"] = value
        tune.report(row)


def test_a_range_against_a_cost_finds_the_front_in_the_cost_and_confirms_its_point(
        tmp_path, monkeypatch, ray_cluster, tune_results):
    """Through the real `run_experiment`: Optuna is told (val_acc, share saved); the verdict
    and pareto.csv hold the front in the cost; the confirmation runs re-train the cheapest
    front points with fresh seeds, are logged to MLflow, and the final runs re-run the
    cheapest one that holds the floor, not the lucky one."""
    import optuna

    monkeypatch.chdir(tmp_path)
    trials = 12
    experiment = parse_experiment({
        **RANGE, "name": "costly", "families": ["agp"], "trials_per_family": trials,
        "cost": "macs", "confirm": {"candidates": 4, "seeds": 2},
        "sparsity": {"min": 0.5, "max": 0.9, "max_drop": 1.0},
        "search": {"sampler": "random", "seed": 3},
        "training": {"lr_max": [1e-3, 1e-1]},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}})
    (study,) = run_experiment(experiment, load_data(experiment),
                              storage_path=str(tmp_path / "ray"), trial_function=stand_in)
    floor = DENSE_VAL - 0.01
    told = optuna.load_study(study_name="costly/agp",
                             storage=f"sqlite:///{tmp_path}/optuna.db").trials
    points = []
    for trial in told:
        config = {"part": "search", "family": "agp", "params": trial.params, "sparsity": 0.9}
        assert trial.values == pytest.approx([stand_in_accuracy(config),
                                              stand_in_saving(config)])
        points.append((trial.number, stand_in_saving(config), stand_in_accuracy(config),
                       trial.params))
    feasible = [p for p in points if p[2] >= floor]
    order, left = [], list(feasible)  # front by front, the cheapest first: brute force
    while left:
        front = sorted((p for p in left if not any(
            q[1] >= p[1] and q[2] >= p[2] and (q[1], q[2]) != (p[1], p[2]) for q in left)),
            key=lambda p: (-p[1], p[0]))
        order += front
        left = [p for p in left if p not in front]
    first_front = {p[0] for p in order if not any(
        q[1] >= p[1] and q[2] >= p[2] and (q[1], q[2]) != (p[1], p[2]) for q in feasible)}
    outcome = next(o for o in study.outcomes if o.family == "agp")
    assert sorted(p.number for p in outcome.points if p.feasible) == sorted(
        p[0] for p in feasible)
    holds = [true_accuracy({"params": p[3], "family": "agp", "sparsity": 0.9}) >= floor
             for p in order[:4]]
    # The sampler's seed is such that a lucky point leads the front and one behind holds.
    assert not holds[0] and any(holds)
    chosen = holds.index(True)
    assert outcome.best_number == order[chosen][0]
    candidates = order[:chosen + 1]  # confirmed one after another until one held
    assert sorted(outcome.confirmed) == sorted(p[0] for p in candidates)
    results = tune_results(tmp_path / "ray" / "costly")
    confirmations = [rows for rows in results.values()
                     if rows[0]["config"]["part"] == "confirm"]
    assert len(confirmations) == 2 * len(candidates)
    finals = [rows for rows in results.values() if rows[0]["config"]["part"] == "final"
              and rows[0]["config"]["family"] == "agp"]
    assert {tuple(sorted(rows[0]["config"]["params"].items())) for rows in finals} == {
        tuple(sorted(outcome.best_params.items()))}
    client = MlflowClient(experiment.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("costly").experiment_id])
    logged = [run for run in runs if run.data.tags["oneprune.role"] == "confirm"]
    assert len(logged) == 2 * len(candidates)
    assert all("oneprune.trial_number" in run.data.tags for run in logged)
    family = next(run for run in runs if run.data.tags["oneprune.role"] == "family"
                  and run.data.tags["oneprune.family"] == "agp")
    assert family.data.metrics["confirm_runs"] == 2 * len(candidates)
    assert "MACs: dense / model" in study.table
    (comparison,) = [run for run in runs if run.data.tags["oneprune.role"] == "comparison"]
    pareto = list(csv.DictReader(Path(client.download_artifacts(
        comparison.info.run_id, "pareto.csv", str(tmp_path))).open()))
    assert {int(row["trial"]) for row in pareto} == first_front
    assert {int(row["trial"]) for row in pareto if row["chosen"] == "True"} == (
        {outcome.best_number} & first_front)  # marked where the point re-run is on it
    assert all(float(row["saving"]) == pytest.approx(stand_in_saving(
        {"params": told[int(row["trial"])].params, "family": "agp", "sparsity": 0.9}))
        for row in pareto)


def test_a_latency_range_times_every_trial_and_final_model_in_onnxruntime(
        tmp_path, monkeypatch, ray_cluster):
    """A real study (digits, filter pruning, `cost: latency` in onnxruntime): every search
    trial's and final run's MLflow run holds its model's latency, its dense twin's timed
    interleaved with it, their ratio and its spread; the driver times the final models
    again together, and the verdict gives that speed-up."""
    monkeypatch.chdir(tmp_path)
    experiment = parse_experiment({
        **RANGE, "name": "timed", "families": ["one_cycle"], "trials_per_family": 3,
        "epochs": 3, "checkpoint_every": 3, "cost": "latency",
        "latency": {"runtime": "onnxruntime", "batch": 16, "rounds": 3},
        "sparsity": {"min": 0.3, "max": 0.7, "max_drop": 50.0},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}})
    (study,) = run_experiment(experiment, load_data(experiment),
                              storage_path=str(tmp_path / "ray"))
    client = MlflowClient(experiment.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("timed").experiment_id])
    timed = [run for run in runs if run.data.tags["oneprune.role"] in ("trial", "final")
             and run.data.tags["oneprune.family"] == "one_cycle"]
    assert len(timed) == 3 + 2
    for run in timed:
        metrics = run.data.metrics
        assert metrics["latency_ms"] > 0 and metrics["dense_latency_ms"] > 0
        assert metrics["speedup"] > 0 and metrics["latency_spread"] >= 0
        assert metrics["macs"] < metrics["dense_macs"]  # slim: filters removed
        assert metrics["cost_saving"] == pytest.approx(1 - 1 / metrics["speedup"])
    assert "speed-up vs dense" in study.table
    # The driver timed the final models again, together, against the dense reference's.
    (outcome,) = [o for o in study.outcomes if o.family == "one_cycle"]
    assert len(outcome.final_costs) == 2
    assert all(run["retimed_speedup"] > 0 and run["retimed_spread"] >= 0
               for run in outcome.final_costs)


@pytest.mark.slow
def test_cost_latency_without_onnxruntime_is_refused_in_one_line(tmp_path):
    """`cost: latency` in onnxruntime where it is not installed (a path that hides it):
    exit 2, one line, before Ray or MLflow."""
    hider = tmp_path / "hide"
    hider.mkdir()
    (hider / "sitecustomize.py").write_text("import sys\nsys.modules['onnxruntime'] = None\n")
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({**RANGE, "cost": "latency",
                                    "tracking": {"tracking_uri": "sqlite:///mlflow.db"}}))
    done = run_search("--experiment", str(path), "--storage-path", str(tmp_path / "ray"),
                      cwd=tmp_path, env={"PYTHONPATH": str(hider)})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "latency.runtime onnxruntime needs onnxruntime" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()
