"""The experiment's one Tuner on the session's two-node Ray cluster, through the service's
real path (`run_experiment`: searcher, scheduler, MLflow logging, aggregation, Optuna
storage), with a stand-in trial that reports chosen accuracies instead of training:
exact budgets, ASHA comparing a trial only with its own family, and Optuna studies that
Optuna's tools read; and the searcher alone, handing out a family's final runs as soon as
its own search has ended."""

import csv
import dataclasses
import math
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import ray.cloudpickle
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from search.experiment.loading import ConfigError, parse_experiment
from search.experiment.neutral_asha import first_neutral_rung
from search.plan.pareto import FrontPoint, hypervolume
from search.plan.trials import target_sparsity
from search.tuner.scheduler import GroupScheduler
from search.tuner.searcher import ExperimentSearcher
from search.tuner.study import load_data, run_experiment

pytestmark = pytest.mark.slow  # studies on the two-node Ray cluster

# The stand-in trials and their accuracy functions travel to Ray's workers by value: this
# folder is not importable there.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def stand_in(seconds: dict, accuracy: dict):
    """A trial function that sleeps `seconds[family]` per epoch and reports
    `accuracy[family](config)` as its validation accuracy every epoch (the test accuracy of
    a final run too)."""
    from ray import tune

    def trial(config, *, experiment, data, folders):
        started = time.time()
        value = accuracy[config["family"]](config)
        for epoch in range(1, experiment.epochs + 1):
            time.sleep(seconds[config["family"]])
            row = {"epoch": epoch, "val_acc": value, "train_seconds": time.time() - started,
                   "sparsity": target_sparsity(config),
                   "diverged": False}
            if config["part"] == "final" and epoch == experiment.epochs:
                row["test_acc"] = value
            tune.report(row)
    return trial


def experiment_in(folder, **values):
    return parse_experiment({
        "name": "sched", "dataset": "digits", "epochs": 2, "final_seeds": 2,
        "training": {"lr_max": [1e-3, 1e-1]},
        "tracking": {"tracking_uri": f"sqlite:///{folder}/mlflow.db"}, **values})


def by_part(results):
    """The stand-in's reported rows by (part, sparsity, family) from Tune's result files."""
    rows = {}
    for trial in results.values():
        config = trial[0]["config"]
        rows.setdefault((config["part"], config["sparsity"], config["family"]),
                        []).append(trial)
    return rows


def lr_accuracy(config):
    """Validation accuracy that grows with log(lr_max) and depends on nothing else."""
    return 0.5 + 0.4 * math.log(config["params"]["lr_max"] / 1e-3) / math.log(100)


def test_budgets_are_exact_across_sparsities_and_families(tmp_path, monkeypatch, ray_cluster,
                                                          tune_results, capsys):
    monkeypatch.chdir(tmp_path)
    trials = 8
    experiment = experiment_in(tmp_path, sparsity=[0.8, 0.9], families=["agp", "one_cycle"],
                               trials_per_family=trials)
    studies = run_experiment(experiment, load_data(experiment),
                             storage_path=str(tmp_path / "ray"),
                             trial_function=stand_in({"agp": 0.05, "one_cycle": 0.05,
                                                      "dense": 0.05},
                                                     {"agp": lr_accuracy,
                                                      "one_cycle": lr_accuracy,
                                                      "dense": lambda config: 0.95}))
    printed = capsys.readouterr().out
    rows = by_part(tune_results(tmp_path / "ray" / "sched"))
    for sparsity in (0.8, 0.9):
        study = f"sched-s{sparsity * 100:g}"
        for family in ("agp", "one_cycle"):
            assert len(rows["search", sparsity, family]) == trials
            assert len(rows["final", sparsity, family]) == 2
            assert printed.count(f"[{study}] {family}: best val_acc") == 1
            assert f"[{study} {family}] {trials}/{trials} " in printed
        assert len(rows["final", sparsity, "dense"]) == 2
        assert f"[{study} final] 6/6 " in printed
    assert len(rows) == 2 * 5

    # The final runs re-ran each family's best search trial; the verdict is returned.
    for study in studies:
        outcomes = {outcome.family: outcome for outcome in study.outcomes}
        assert list(outcomes) == ["agp", "one_cycle", "dense"]
        for family in ("agp", "one_cycle"):
            assert outcomes[family].trials == outcomes[family].trials_completed == trials
            assert outcomes[family].test_accs == [outcomes[family].best_val_acc] * 2
        assert outcomes["dense"].test_accs == [0.95, 0.95]

    # One Optuna study per (sparsity, family) that Optuna's own tools read: the accuracy
    # depends on lr_max alone, and the importance evaluator says so.
    storage = f"sqlite:///{tmp_path}/optuna.db"
    assert sorted(optuna.get_all_study_names(storage)) == [
        "sched-s80/agp", "sched-s80/one_cycle", "sched-s90/agp", "sched-s90/one_cycle"]
    study = optuna.load_study(study_name="sched-s90/agp", storage=storage)
    assert [trial.state.name for trial in study.trials] == ["COMPLETE"] * trials
    importances = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert max(importances, key=importances.get) == "lr_max"

    # MLflow: one experiment per sparsity, each with its own trials and final runs.
    client = MlflowClient(experiment.tracking_uri)
    for name in ("sched-s80", "sched-s90"):
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert Counter(run.data.tags["oneprune.role"] for run in runs) == {
            "family": 3, "trial": 2 * trials, "final": 6, "comparison": 1}  # agp, one_cycle, dense
        # Each family run holds the importances of its searched parameters (fANOVA over
        # the whole space, `end` and `beta` too, though their ranges depend on other draws).
        for run in runs:
            if run.data.tags["oneprune.role"] == "family" \
                    and run.data.tags["oneprune.family"] != "dense":
                importance = {key.removeprefix("importance."): value
                              for key, value in run.data.metrics.items()
                              if key.startswith("importance.")}
                searched = {"agp": {"start", "end", "power", "lr_max"},
                            "one_cycle": {"start", "end", "alpha", "beta", "lr_max"}}
                assert set(importance) == searched[run.data.tags["oneprune.family"]]
                assert max(importance, key=importance.get) == "lr_max"
                assert sum(importance.values()) == pytest.approx(1.0)
            elif run.data.tags["oneprune.role"] == "comparison":
                artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
                assert "importance.png" in artifacts
    # The experiment's own MLflow experiment has the accuracy-against-sparsity sweep.
    (sweep,) = client.search_runs([client.get_experiment_by_name("sched").experiment_id])
    assert sweep.data.tags["oneprune.role"] == "sweep" and sweep.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(sweep.info.run_id)} == {
        "sweep.md", "sweep.csv", "sweep.png"}
    csv_text = Path(client.download_artifacts(sweep.info.run_id, "sweep.csv",
                                              str(tmp_path))).read_text().splitlines()
    assert [line.split(",")[:2] for line in csv_text[1:]] == [
        [sparsity, family] for sparsity in ("0.8", "0.9")
        for family in ("agp", "one_cycle", "dense")]


def test_a_familys_final_runs_are_handed_out_while_another_familys_search_runs(
        tmp_path, ray_cluster):
    """The searcher as Tune drives it on the two 1-CPU nodes (2 slots, so 3 live trials):
    one_cycle's search trials never end, agp's end as soon as they are handed out. Once
    agp's budget is spent, its final runs come next, while one_cycle's search is still
    live; one_cycle's finals come once its own search ends, then the searcher is done.

    (Deterministic on purpose. When Tune starts those final runs depends on Tune: a trial
    that ends before a second actor has started hands its actor to the next one
    (`reuse_actors`), so a test timing real starts measures actor start-up, 9-16 s here.)"""
    experiment = experiment_in(tmp_path, sparsity=0.9, families=["agp", "one_cycle"],
                               trials_per_family=4)
    searcher = ExperimentSearcher(experiment, f"sqlite:///{tmp_path}/optuna.db")
    live, order = {}, []

    def hand_out():
        while (config := searcher.suggest(f"t{len(order)}")) is not None:
            if config == Searcher.FINISHED:
                return
            live[f"t{len(order)}"] = config
            order.append((config["part"], config["family"]))

    def end(keep):
        for trial_id in [t for t, config in live.items() if not keep(config)]:
            searcher.on_trial_complete(trial_id, {"epoch": experiment.epochs, "diverged": False,
                                                  "val_acc": 0.8 + len(order) / 1e3})
            del live[trial_id]

    def one_cycle_search(config):
        return config["part"] == "search" and config["family"] == "one_cycle"

    handed = -1
    while handed < len(order):  # until nothing more is handed out
        handed = len(order)
        hand_out()
        end(keep=one_cycle_search)
    assert order.count(("search", "agp")) == 4
    assert order.count(("final", "agp")) == 2  # handed out, though one_cycle's search is live
    assert sum(map(one_cycle_search, live.values())) > 0
    assert ("final", "one_cycle") not in order
    while live:
        end(keep=lambda config: False)
        hand_out()
    assert Counter(order) == {("search", "agp"): 4, ("search", "one_cycle"): 4,
                              ("final", "agp"): 2, ("final", "one_cycle"): 2,
                              ("final", "dense"): 2}
    assert order.index(("final", "one_cycle")) > max(
        i for i, kind in enumerate(order) if kind == ("search", "one_cycle"))
    assert searcher.suggest("last") == Searcher.FINISHED


def test_asha_compares_a_trial_only_with_its_own_family(tmp_path, monkeypatch, ray_cluster,
                                                        tune_results):
    """`good` trials report high accuracies (each a little lower than the one before, so
    ASHA stops some of them); `bad` trials all report the same low accuracy, later. Against
    the good family's rungs every bad trial would be stopped; against its own, none is."""
    monkeypatch.chdir(tmp_path)
    experiment = experiment_in(tmp_path, sparsity=0.9, families=["agp", "one_cycle"],
                               trials_per_family=6, epochs=3,
                               search={"asha": True, "grace_period": 1, "space": {
                                   family: {"start": [0.0, 0.1], "end": [0.2, 0.33]}
                                   for family in ("agp", "one_cycle")}})
    run_experiment(experiment, load_data(experiment), storage_path=str(tmp_path / "ray"),
                   trial_function=stand_in(
                       {"agp": 0.1, "one_cycle": 0.3, "dense": 0.0},
                       {"agp": lambda config: 0.9 - 0.01 * config.get("number", 0),
                        "one_cycle": lambda config: 0.1, "dense": lambda config: 0.95}))
    rows = by_part(tune_results(tmp_path / "ray" / "sched"))
    assert [len(trial) for trial in rows["search", 0.9, "one_cycle"]] == [3] * 6
    assert any(len(trial) < 3 for trial in rows["search", 0.9, "agp"])  # ASHA is on
    pruned = optuna.load_study(study_name="sched/agp",
                               storage=f"sqlite:///{tmp_path}/optuna.db").trials
    assert {trial.state.name for trial in pruned} == {"COMPLETE", "PRUNED"}


def allocation_accuracy(config):
    """Validation accuracy set by the allocation alone: ERK and LAMP far ahead."""
    return {"uniform": 0.4, "global": 0.5, "erk": 0.9, "lamp": 0.85,
            "depth": 0.6}[config["params"]["allocation"]]


def test_a_searched_allocation_is_recorded_per_trial_and_family_with_its_importance(
        tmp_path, monkeypatch, ray_cluster):
    monkeypatch.chdir(tmp_path)
    trials = 10
    # Seeded random sampling: the same draws however the trials interleave (TPE's depend on
    # the order results arrive in; 1 run in 8 drew a sample in which fANOVA credited lr_max).
    experiment = experiment_in(tmp_path, sparsity=0.9, families=["agp", "one_cycle"],
                               trials_per_family=trials, search={"sampler": "random"},
                               allocation=["uniform", "global", "erk", "lamp", "depth"])
    run_experiment(experiment, load_data(experiment), storage_path=str(tmp_path / "ray"),
                   trial_function=stand_in(
                       {"agp": 0.0, "one_cycle": 0.0, "dense": 0.0},
                       {"agp": allocation_accuracy, "one_cycle": allocation_accuracy,
                        "dense": lambda config: 0.95}))
    storage = f"sqlite:///{tmp_path}/optuna.db"
    client = MlflowClient(experiment.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("sched").experiment_id])
    for family in ("agp", "one_cycle"):
        studied = optuna.load_study(study_name=f"sched/{family}", storage=storage).trials
        assert len(studied) == trials
        for trial in studied:  # depth's exponent exactly where depth was drawn
            assert ("depth_exponent" in trial.params) == (trial.params["allocation"]
                                                          == "depth")
        by_number = {trial.number: trial.params for trial in studied}
        searched = [run for run in runs if run.data.tags["oneprune.role"] == "trial"
                    and run.data.tags["oneprune.family"] == family]
        assert len(searched) == trials
        for run in searched:  # every trial's run records what it trained with
            assert run.data.params["allocation"] in ("uniform", "global", "erk", "lamp",
                                                     "depth")
        assert Counter(run.data.params["allocation"] for run in searched) == Counter(
            params["allocation"] for params in by_number.values())
        (parent,) = [run for run in runs if run.data.tags["oneprune.role"] == "family"
                     and run.data.tags["oneprune.family"] == family]
        assert parent.data.params["allocation"] in ("erk", "lamp")  # the best config's
        importance = {key.removeprefix("importance."): value
                      for key, value in parent.data.metrics.items()
                      if key.startswith("importance.")}
        assert max(importance, key=importance.get) == "allocation"


class _Tracked:
    """What `GroupScheduler` tells its searcher of (nothing to search here)."""

    def track(self, trial):
        pass


# Validation accuracy per epoch (10 epochs) of two agp trials: `late` prunes over
# [0.5, 0.8] of the budget (dense and ahead until then) and ends worse; `early` prunes
# over [0, 0.3], trails while it recovers, and ends better.
CURVES = {"late": [0.95] * 5 + [0.70, 0.72, 0.75, 0.78, 0.80],
          "early": [0.40, 0.55, 0.65, 0.75, 0.80, 0.84, 0.86, 0.88, 0.89, 0.90]}


def asha_decisions(experiment, order):
    """Feed the two curves to the experiment's scheduler epoch by epoch, in `order` within
    each epoch; returns the epoch at which each trial was stopped early (None: never)."""
    scheduler = GroupScheduler(_Tracked(), experiment)
    trials = {name: Trial("stand_in", stub=True, trial_id=name, config={
        "part": "search", "sparsity": 0.9, "family": "agp", "number": i, "params": {}})
        for i, name in enumerate(order)}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)
    stopped = dict.fromkeys(order)
    for epoch in range(1, experiment.epochs):  # (at the last epoch every trial ends)
        for name in order:
            if stopped[name] is None and scheduler.on_trial_result(
                    None, trials[name], {"epoch": epoch, "val_acc": CURVES[name][epoch - 1]}
            ) == TrialScheduler.STOP:
                stopped[name] = epoch
    return stopped


def test_asha_never_prefers_a_late_pruning_trial_that_ends_worse(tmp_path):
    """With the rung where the README puts it (after the latest `end` the space allows),
    the early-pruning trial that ends better goes on, whichever reports first; a rung
    while `late` is still dense (grace period 1, which the schema refuses) stops it."""
    neutral = experiment_in(tmp_path, sparsity=0.9, families=["agp"], epochs=10,
                            search={"asha": True, "grace_period": 8,
                                    "space": {"agp": {"end": [0.5, 0.8]}}})
    assert first_neutral_rung(neutral) == (8, "agp", 0.8)
    assert asha_decisions(neutral, ["late", "early"]) == {"late": None, "early": None}
    assert asha_decisions(neutral, ["early", "late"]) == {"early": None, "late": 8}
    biased = dataclasses.replace(neutral, search=dataclasses.replace(neutral.search,
                                                                     grace_period=1))
    assert asha_decisions(biased, ["late", "early"])["early"] == 1
    with pytest.raises(ConfigError, match="grace_period must be >= 8"):
        experiment_in(tmp_path, sparsity=0.9, families=["agp"], epochs=10,
                      search={"asha": True, "grace_period": 1,
                              "space": {"agp": {"end": [0.5, 0.8]}}})


# Under a sparsity range: validation accuracy falls with sparsity past a knee (later for
# one_cycle than for agp) and with lr_max's distance from 1e-2; dense scores 0.98, so with
# max_drop 1 point the floor is 0.97.
KNEE = {"one_cycle": 0.75, "agp": 0.65}
DENSE_VAL, MAX_DROP = 0.98, 1.0


def range_accuracy(config):
    family, params = config["family"], config["params"]
    sparsity = params["final_sparsity"]
    return (0.99 - 0.5 * max(0.0, sparsity - KNEE[family])
            - 0.03 * abs(math.log10(params["lr_max"] / 1e-2)))


def front_of(trials, floor):
    """Brute force: the numbers of the feasible (sparsity, accuracy) points that no
    feasible point matches in both and beats in one."""
    feasible = [t for t in trials if t[2] >= floor]
    return {n for n, s, v in feasible
            if not any(s2 >= s and v2 >= v and (s2, v2) != (s, v) for _, s2, v2 in feasible)}


def test_a_sparsity_range_finds_each_familys_front_and_re_runs_its_sparsest_point_within_the_drop(
        tmp_path, monkeypatch, ray_cluster, tune_results, capsys):
    """Two objectives through the real `run_experiment` with stand-in trials whose accuracy
    is `range_accuracy`: the front Optuna, MLflow and the verdict hold is the front that
    function defines; the floor is a constraint; the finals re-ran the sparsest feasible
    point; every budget is exact."""
    monkeypatch.chdir(tmp_path)
    trials = 10
    experiment = experiment_in(tmp_path, families=["agp", "one_cycle"],
                               trials_per_family=trials,
                               sparsity={"min": 0.5, "max": 0.95, "max_drop": MAX_DROP})
    (study,) = run_experiment(
        experiment, load_data(experiment), storage_path=str(tmp_path / "ray"),
        trial_function=stand_in({"agp": 0.02, "one_cycle": 0.02, "dense": 0.02},
                                {"agp": range_accuracy, "one_cycle": range_accuracy,
                                 "dense": lambda config: DENSE_VAL}))
    floor = DENSE_VAL - MAX_DROP / 100
    printed = capsys.readouterr().out
    rows = by_part(tune_results(tmp_path / "ray" / "sched"))
    client = MlflowClient(experiment.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("sched").experiment_id])
    (comparison,) = [run for run in runs if run.data.tags["oneprune.role"] == "comparison"]
    pareto = list(csv.DictReader(Path(client.download_artifacts(
        comparison.info.run_id, "pareto.csv", str(tmp_path))).open()))
    outcomes = {outcome.family: outcome for outcome in study.outcomes}
    for family in ("agp", "one_cycle"):
        # Exact budgets: every search trial and final run, once.
        assert len(rows["search", 0.95, family]) == trials
        assert len(rows["final", 0.95, family]) == 2
        # Optuna: two objectives, each trial told its accuracy and sparsity and how far it
        # is below the floor; the constrained front is the function's.
        optuna_study = optuna.load_study(study_name=f"sched/{family}",
                                         storage=f"sqlite:///{tmp_path}/optuna.db")
        told = optuna_study.trials
        assert len(told) == trials and {t.state.name for t in told} == {"COMPLETE"}
        points = []
        for trial in told:
            accuracy = range_accuracy({"family": family, "params": trial.params})
            assert trial.values == pytest.approx([accuracy, trial.params["final_sparsity"]])
            assert trial.constraints["floor_gap"] == pytest.approx(floor - accuracy)
            assert 0.5 <= trial.params["final_sparsity"] <= 0.95
            points.append((trial.number, trial.params["final_sparsity"], accuracy))
        expected = front_of(points, floor)
        assert any(v < floor for _, _, v in points)  # the constraint had work to do
        assert {t.number for t in optuna_study.best_trials} == expected
        mine = [row for row in pareto if row["family"] == family]
        assert {int(row["trial"]) for row in mine} == expected
        # The finals re-ran the sparsest feasible trial, with the final seeds.
        sparsest = max((s, v, -n) for n, s, v in points if v >= floor)
        (chosen,) = [row for row in mine if row["chosen"] == "True"]
        assert int(chosen["trial"]) == -sparsest[2]
        chosen_params = next(t.params for t in told if t.number == -sparsest[2])
        for final in rows["final", 0.95, family]:
            assert final[0]["config"]["params"] == chosen_params
        assert outcomes[family].schedule.final_sparsity == sparsest[0]
        assert outcomes[family].test_accs == pytest.approx([sparsest[1]] * 2)
        # Feasible means at most 4 points of sparsity past the family's knee.
        assert sparsest[0] <= KNEE[family] + 0.04 + 1e-9
        # The family run holds its hypervolume over the same box as every family's.
        (family_run,) = [run for run in runs if run.data.tags["oneprune.role"] == "family"
                         and run.data.tags["oneprune.family"] == family]
        front = [FrontPoint(n, s, v, True) for n, s, v in points if n in expected]
        assert family_run.data.metrics["hypervolume"] == pytest.approx(
            hypervolume(front, (0.5, floor), (0.95, 1.0)))
        assert family_run.data.metrics["sparsity_reached"] == pytest.approx(sparsest[0])
        assert f"[sched] {family}: sparsest within 1 point(s) of dense (val_acc >= " \
               f"{floor:.4f})" in printed
    assert len(rows["final", 0.95, "dense"]) == 2 and len(rows) == 5
    assert "not on accuracy at one sparsity" in study.table + Path(client.download_artifacts(
        comparison.info.run_id, "comparison.md", str(tmp_path))).read_text()
    assert {"pareto.csv", "pareto.png", "comparison.md", "comparison.csv"} <= {
        a.path for a in client.list_artifacts(comparison.info.run_id)}
    assert comparison.data.metrics["accuracy_floor"] == pytest.approx(floor)
    assert [h.uri for h in study.models if h.uri.endswith("@best")] == []  # no models here


def test_under_a_range_a_trial_that_ends_before_the_dense_reference_is_told_once_it_has(
        tmp_path, ray_cluster):
    """The floor comes from the dense references: a search trial that ends first stays
    RUNNING in Optuna, and is told (with its constraint) when the last dense run ends; the
    family's final runs wait for the floor too."""
    experiment = experiment_in(tmp_path, families=["agp"], trials_per_family=2,
                               sparsity={"min": 0.5, "max": 0.9, "max_drop": 1.0})
    searcher = ExperimentSearcher(experiment, f"sqlite:///{tmp_path}/optuna.db")
    handed = {}
    while (config := searcher.suggest(f"t{len(handed)}")) not in (None, Searcher.FINISHED):
        handed[f"t{len(handed)}"] = config
    dense = [t for t, c in handed.items() if c["family"] == "dense"]
    search = [t for t, c in handed.items() if c["part"] == "search"]
    assert len(dense) == 2 and search  # the dense references first, then the search
    ended = {"epoch": experiment.epochs, "diverged": False}
    searcher.on_trial_complete(search[0], {**ended, "val_acc": 0.5})
    searcher.on_trial_complete(dense[0], {**ended, "val_acc": 0.9, "test_acc": 0.9})
    study = searcher.study((0.9, "agp"))
    assert study.trials[0].state.name == "RUNNING"
    searcher.on_trial_complete(dense[1], {**ended, "val_acc": 0.8, "test_acc": 0.8})
    told = study.trials[0]
    assert told.state.name == "COMPLETE" and told.values[0] == 0.5
    assert told.constraints == {"floor_gap": pytest.approx(0.85 - 0.01 - 0.5)}
    while (config := searcher.suggest(f"t{len(handed)}")) not in (None, Searcher.FINISHED):
        handed[f"t{len(handed)}"] = config
    for trial_id in [t for t, c in handed.items() if c["part"] == "search" and t != search[0]]:
        searcher.on_trial_complete(trial_id, {**ended, "val_acc": 0.95})
    finals = []
    while (config := searcher.suggest(f"t{len(handed)}")) not in (None, Searcher.FINISHED):
        handed[f"t{len(handed)}"] = config
        finals.append(config)
    assert [c["family"] for c in finals] == ["agp", "agp"]  # the feasible trial's re-runs
    assert finals[0]["params"]["final_sparsity"] == study.trials[1].params["final_sparsity"]
