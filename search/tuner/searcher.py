"""One Tuner for a whole experiment: the searcher that decides what each free slot runs.

`ExperimentSearcher` (a Ray Tune `Searcher`) owns one Optuna study per (sparsity, family),
in Optuna's RDB storage, driven by ask/tell with the family's define-by-run space. It hands
out, in this order:

1. what other runs start from: the dense reference with the search seed (where an arm
   starts from `dense`) and the model as given (where `init` names weights);
2. the final re-runs of a (sparsity, family) whose search has ended (every one of its
   `trials_per_family` trials finished), with its best config and each final seed whose
   starting point is there (an arm from `dense`: the dense run of that seed has ended);
   under a sparsity range with confirmation, first the confirmation runs of its cheapest
   feasible points, one point after another, and the final runs once one held;
3. the dense references (any time: they depend on nothing);
4. a search trial of the (sparsity, family) with the fewest trials in flight (an arm from
   `dense` once the dense run with the search seed has ended),

so every family of every sparsity gets exactly `trials_per_family` search trials, and a
family's final runs are handed out as soon as its own search is over (Tune starts them in
a slot that frees). No more trials are live than the cluster has slots, plus one waiting
(so a freed slot is filled at once, and an autoscaler sees demand). One family's results
only reach its own study.

With a sparsity range each study has two objectives, validation accuracy and sparsity (or
the share of the experiment's `cost` saved; both maximised), and one constraint: a trial is
feasible when its validation accuracy reaches the floor the dense references set
(`search.plan.outcomes.accuracy_floor`), set on each trial with `Trial.set_constraint`
before it is told: Optuna's samplers rank infeasible trials below feasible ones, and
`study.best_trials` is the feasible front. A search trial that ends before every dense
reference has is told to Optuna once they have; until then Optuna counts it as running. A
family's final runs re-run its cheapest feasible trial that held the floor in its
confirmation (`search.plan.outcomes.chosen_point`).

The searcher learns of every trial Tune adds, including the trials `Tuner.restore` brings
back, from `search.tuner.scheduler.GroupScheduler`: it then forgets the trials the restored state
lost (Tune's snapshot and the searcher's can be a moment apart when a driver is killed) and
hands them out again, so budgets stay exact across a resume.
"""

from __future__ import annotations

import math
import pickle
import time
from collections import Counter
from typing import Any

import optuna
import ray
from ray.tune.experiment import Trial
from ray.tune.search import Searcher

from oneprune._validate import first_line
from search.experiment.schema import Experiment
from search.plan.outcomes import (
    METRIC,
    TrialRecord,
    accuracy_floor,
    chosen_point,
    confirmation_configs,
    objectives,
)
from search.plan.space import define_by_run
from search.plan.trials import (
    AS_GIVEN,
    CONFIRM,
    DENSE,
    FINAL,
    SEARCH,
    START,
    Group,
    final_config,
    final_seeds,
    group_of,
    optuna_study_name,
    search_config,
    start_config,
)

SLOTS_REFRESH_SECONDS = 5.0
FLOOR_GAP = "floor_gap"  # Optuna constraint: the floor minus val_acc (<= 0: feasible)


def check_optuna_storage(url: str) -> None:
    """Raise `ValueError` (one line) unless Optuna's RDB storage at `url` opens (it creates
    a new sqlite file's tables): a study must not fail after its first trials."""
    try:
        optuna.storages.RDBStorage(url)
    except Exception as error:  # SQLAlchemy raises many kinds: driver, connection, schema
        reason = first_line(error)
        raise ValueError(f"optuna_storage {url} cannot be opened: {reason}") from None


def make_sampler(experiment: Experiment) -> optuna.samplers.BaseSampler:
    """Seeded TPE (a quarter of the trials random first; constant liar for concurrent
    trials; multi-objective under a sparsity range) or seeded random sampling."""
    seed = experiment.search.seed
    if experiment.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(2, experiment.trials_per_family // 4),
        constant_liar=True)


def _set_constraint(study: optuna.Study, number: int, key: str, value: float) -> None:
    """`Trial.set_constraint` on trial `number` of `study` unless it is told already (a
    resumed study); ask/tell hands out numbers, and an `optuna.Trial` is made from the
    trial's storage id."""
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if not frozen.state.is_finished():
        optuna.Trial(study, frozen._trial_id).set_constraint(key, value)


def concurrent_slots(experiment: Experiment) -> int:
    """How many trials fit on the cluster now (0: a resource the trials need is not there
    yet, e.g. GPU workers that an autoscaler adds on demand)."""
    available = ray.cluster_resources()
    resources = experiment.resources
    needs = {"CPU": resources.cpus_per_trial * resources.workers_per_trial,
             "GPU": resources.gpus_per_trial * resources.workers_per_trial}
    return min(math.floor(available.get(name, 0) / need)
               for name, need in needs.items() if need > 0)


class ExperimentSearcher(Searcher):
    """Every trial of one experiment (see the module docstring). Its studies live in
    `optuna_storage`; its own state (the samplers, what it handed out and how each trial
    ended) is saved with Tune's experiment state."""

    def __init__(self, experiment: Experiment, optuna_storage: str):
        super().__init__(metric=METRIC, mode="max")
        self.experiment = experiment
        self.optuna_storage = optuna_storage
        self.groups = [(sparsity, family) for sparsity in experiment.sparsity
                       for family in experiment.families]
        self._samplers = {group: make_sampler(experiment) for group in self.groups}
        # Tune trial id -> {"config", "live", "result", "error"}
        self._trials: dict[str, dict[str, Any]] = {}
        self._confirmed: set[str] | None = None  # after a restore: the trials Tune still has
        self._studies: dict[Group, optuna.Study] = {}
        self._slots = (0, -math.inf)  # (slots, when counted)
        self._wanted: tuple[list[dict], bool] | None = None  # see `_finals_wanted`

    def __getstate__(self):
        return {**self.__dict__, "_studies": {}, "_slots": (0, -math.inf), "_wanted": None}

    # -- the Optuna studies ------------------------------------------------------------

    def study(self, group: Group) -> optuna.Study:
        if group not in self._studies:
            objectives = 1 if self.experiment.sparsity_range is None else 2
            self._studies[group] = optuna.create_study(
                storage=self.optuna_storage,
                study_name=optuna_study_name(self.experiment, group),
                sampler=self._samplers[group], directions=["maximize"] * objectives,
                load_if_exists=True)
        return self._studies[group]

    def _tell(self, entry: dict[str, Any], floor: float | None) -> None:
        """Tell a search trial's Optuna trial how it ended: its validation accuracy at the
        end of the budget (COMPLETE, also for a diverged trial, so TPE learns to avoid its
        region), PRUNED when early stopping ended it, FAIL on an error. Under a sparsity
        range, a completed trial is told its two objectives and how far it is below the
        `floor`, and waits (untold) while the floor is unknown."""
        config, result = entry["config"], entry["result"]
        study = self.study(group_of(config))
        value = result.get(METRIC)
        finite = isinstance(value, int | float) and math.isfinite(value)
        ranged = self.experiment.sparsity_range is not None
        if entry["error"] or not finite:
            study.tell(config["number"], state=optuna.trial.TrialState.FAIL,
                       skip_if_finished=True)
        elif result.get("epoch", 0) < self.experiment.epochs and not result.get("diverged"):
            study.tell(config["number"], state=optuna.trial.TrialState.PRUNED,
                       skip_if_finished=True)
        elif not ranged:
            study.tell(config["number"], value, skip_if_finished=True)
        elif floor is not None:
            accuracy, gain = objectives(TrialRecord(config, result), self.experiment.cost)
            _set_constraint(study, config["number"], FLOOR_GAP, floor - accuracy)
            study.tell(config["number"], [accuracy, gain], skip_if_finished=True)
        else:
            return
        entry["told"] = True

    def _tell_ended(self) -> None:
        """Tell Optuna every ended search trial not yet told (under a sparsity range they
        wait for the floor)."""
        floor = self._floor()
        for entry in self._trials.values():
            if entry["config"]["part"] == SEARCH and not entry["live"] \
                    and not entry.get("told"):
                self._tell(entry, floor)

    # -- what Tune calls ---------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | str | None:
        if self._confirmed is not None:
            self._forget_lost_trials()
        if sum(entry["live"] for entry in self._trials.values()) >= self._max_live():
            return None
        config = self._next_final() or self._next_search()
        if config is None:
            return Searcher.FINISHED if self._all_handed_out() else None
        self._trials[trial_id] = {"config": config, "live": True, "result": {},
                                  "error": False}
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        entry = self._trials.get(trial_id)
        if entry is None:  # not ours (a trial the restored state lost, already replaced)
            return
        entry.update(live=False, result=dict(result or {}), error=error)
        self._wanted = None
        self._tell_ended()

    def track(self, trial: Trial) -> None:
        """Note a trial Tune has added (by `GroupScheduler.on_trial_add`): new, or brought
        back by a restore (then its saved status and last result count)."""
        finished = trial.status in (Trial.TERMINATED, Trial.ERROR)
        entry = self._trials.setdefault(trial.trial_id, {
            "config": dict(trial.config), "live": True, "result": {}, "error": False})
        entry["live"] = not finished
        if finished:
            entry.update(result=dict(trial.last_result or {}),
                         error=trial.status == Trial.ERROR)
        if self._confirmed is not None:
            self._confirmed.add(trial.trial_id)
        self._wanted = None

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as out:
            pickle.dump({"samplers": self._samplers, "trials": self._trials}, out)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as saved:
            state = pickle.load(saved)
        self._samplers, self._trials = state["samplers"], state["trials"]
        self._studies, self._wanted = {}, None
        self._confirmed = set()  # filled by `track` as Tune re-adds its trials

    # -- deciding ----------------------------------------------------------------------

    def _forget_lost_trials(self) -> None:
        """Drop the trials this searcher handed out that the restored Tune state lacks;
        they are handed out again. Every Optuna trial still RUNNING that no remaining trial
        holds is marked FAIL: a lost one, or one asked after the searcher's saved state
        (Optuna's storage is written at once, the saved state only at Tune's snapshots)."""
        lost = set(self._trials) - self._confirmed
        if lost:
            print(f"[{self.experiment.name}] {len(lost)} trial(s) missing from the saved Tune "
                  f"state are handed out again", flush=True)
        for trial_id in lost:
            del self._trials[trial_id]
        held = {(group_of(e["config"]), e["config"]["number"]) for e in self._trials.values()
                if e["config"]["part"] == SEARCH}
        for group in self.groups:
            study = self.study(group)
            for trial in study.get_trials(deepcopy=False,
                                          states=(optuna.trial.TrialState.RUNNING,)):
                if (group, trial.number) not in held:
                    study.tell(trial.number, state=optuna.trial.TrialState.FAIL,
                               skip_if_finished=True)
        self._confirmed, self._wanted = None, None
        self._tell_ended()  # those whose floor became known just before the interruption

    def _max_live(self) -> int:
        if time.monotonic() - self._slots[1] > SLOTS_REFRESH_SECONDS:
            self._slots = (concurrent_slots(self.experiment), time.monotonic())
        return self._slots[0] + 1

    def _records(self, parts: tuple[str, ...], group: Group) -> list[TrialRecord]:
        """The ended trials of `group` of `parts`."""
        return [TrialRecord(entry["config"], entry["result"], entry["error"])
                for entry in self._trials.values() if not entry["live"]
                and entry["config"]["part"] in parts and group_of(entry["config"]) == group]

    def _floor(self, sparsity: float | None = None) -> float | None:
        """The accuracy floor of a sparsity range once every dense reference has ended
        (None: no range, or not yet known)."""
        if self.experiment.sparsity_range is None:
            return None  # (the list below is built on every trial's end)
        return accuracy_floor(self.experiment, [
            TrialRecord(e["config"], e["result"], e["error"]) for e in self._trials.values()
            if not e["live"]], self.experiment.sparsity[0] if sparsity is None else sparsity)

    def _dense_ended(self, sparsity: float, seed: int) -> bool:
        """Whether the dense reference's run with `seed` (the search seed: its `start` run)
        has ended, so that an arm from `dense` may start from its weights (a failed one
        too: the runs that needed it then fail, saying so)."""
        part = START if seed == self.experiment.search.seed else FINAL
        return any(not entry["live"] for entry in self._trials.values()
                   if entry["config"]["part"] == part and entry["config"]["seed"] == seed
                   and group_of(entry["config"]) == (sparsity, DENSE))

    def _can_start(self, group: Group, seed: int) -> bool:
        """Whether a run of `group` with `seed` has what it starts from and its teacher."""
        return not self.experiment.needs_dense(group[1]) or self._dense_ended(group[0], seed)

    def _finals_wanted(self) -> tuple[list[dict], bool]:
        """Every final run that can be handed out now (dense references, the dense runs with
        the search seed that arms from `dense` start from, the model as given, and each
        ended search's best config with every final seed whose start is there; under a
        sparsity range, once the floor is known), and whether every search has ended and
        no final run waits for its start. Cached until a trial ends or is added: Tune asks
        for trials far more often."""
        if self._wanted is None:
            live, handed_out = set(), Counter()
            for entry in self._trials.values():
                if entry["config"]["part"] == SEARCH:
                    handed_out[group_of(entry["config"])] += 1
                    if entry["live"]:
                        live.add(group_of(entry["config"]))
            ended = [group for group in self.groups if group not in live
                     and handed_out[group] == self.experiment.trials_per_family]
            seeds = final_seeds(self.experiment)
            # What others start from first; then families' final runs before the dense
            # references, which wait on nothing else.
            wanted, ranged, waiting = [], self.experiment.sparsity_range is not None, 0
            if self.experiment.keeps_dense:
                wanted += [start_config(sparsity, self.experiment.search.seed)
                           for sparsity in self.experiment.sparsity]
            if self.experiment.given:
                wanted += [final_config((sparsity, AS_GIVEN), seeds[0], {})
                           for sparsity in self.experiment.sparsity]
            for group in ended:
                floor = self._floor(group[0])
                if ranged and floor is None:
                    continue
                records = self._records((SEARCH, CONFIRM), group)
                confirming = confirmation_configs(self.experiment, records, floor) \
                    if ranged else []
                if confirming:  # started from the search seed's dense run, if any
                    if self._can_start(group, self.experiment.search.seed):
                        wanted += confirming
                    waiting += 1
                    continue
                best = chosen_point(self.experiment, records, floor)
                if best is not None:
                    ready = [seed for seed in seeds if self._can_start(group, seed)]
                    waiting += len(seeds) - len(ready)
                    wanted += [final_config(group, seed, best.config["params"])
                               for seed in ready]
            wanted += [final_config((sparsity, DENSE), seed, {})
                       for sparsity in self.experiment.sparsity for seed in seeds]
            self._wanted = (wanted, len(ended) == len(self.groups) and not waiting)
        return self._wanted

    def _next_final(self) -> dict | None:
        def key(config):
            return config["part"], group_of(config), config["seed"], config.get("number")

        handed_out = {key(e["config"]) for e in self._trials.values()
                      if e["config"]["part"] != SEARCH}
        return next((config for config in self._finals_wanted()[0]
                     if key(config) not in handed_out), None)

    def _next_search(self) -> dict | None:
        """A new trial of the open search with the fewest live trials (then the fewest
        handed out): each study then has as few trials in flight as the slots allow,
        which is what TPE samples best with, and a search of quick trials is not held
        back by a slow one."""
        load = {group: [0, 0] for group in self.groups}
        for entry in self._trials.values():
            if entry["config"]["part"] == SEARCH:
                counts = load[group_of(entry["config"])]
                counts[0] += entry["live"]
                counts[1] += 1
        open_groups = [g for g in self.groups if load[g][1] < self.experiment.trials_per_family
                       and self._can_start(g, self.experiment.search.seed)]
        if not open_groups:
            return None
        group = min(open_groups, key=lambda g: load[g])
        sparsity, arm = group
        family = self.experiment.family_of(arm)
        span = self.experiment.sparsity_range
        trial = self.study(group).ask()
        define_by_run(trial, family=family,
                      sparsity=sparsity if span is None else (span.min, span.max),
                      bounds=self.experiment.search.space.get(family),
                      tuned=self.experiment.tuned_for(arm), fixed=self.experiment.train,
                      allocation_space=self.experiment.allocation_space)
        return search_config(group, trial.number, trial.params)

    def _all_handed_out(self) -> bool:
        return self._finals_wanted()[1] and self._next_final() is None
