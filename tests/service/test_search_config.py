"""Experiment files: the shipped ones load; bad ones are refused with one line naming the
key, through the library and through the real CLI (exit 2, nothing written to MLflow)."""

import copy
import subprocess
import sys

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from testkit import ROOT
from testkit.driver import run_search

from oneprune.cli import _parser as train_parser
from oneprune.config import TrainConfig
from oneprune.schedules import OneCycle
from search.experiment.loading import (
    DEFAULT_EXPERIMENT,
    ConfigError,
    load_experiment,
    parse_experiment,
)
from search.experiment.schema import Faults, SparsityRange
from search.experiment.train_configs import base_config, midpoint_schedule, trial_config
from search.plan.space import define_by_run
from search.tuner.study import load_data

EXPERIMENTS = sorted((ROOT / "experiments").rglob("*.yaml"))

VALID = {"name": "t", "dataset": "digits", "sparsity": 0.9, "epochs": 2,
         "families": ["one_cycle", "agp"], "trials_per_family": 2, "final_seeds": 2,
         # Every ramp ends by half the budget: ASHA's rung at epoch 1 is neutral.
         "search": {"sampler": "tpe", "seed": 0, "asha": True, "grace_period": 1,
                    "space": {"agp": {"power": [1.0, 4.0], "start": [0.0, 0.3],
                                      "end": [0.4, 0.5]},
                              "one_cycle": {"start": [0.0, 0.3], "end": [0.4, 0.5]}}},
         "training": {"optimizer": "adam", "lr_max": [1e-3, 1e-2],
                      "coupling": ["none", "align"], "recovery_gain": [0.0, 2.0]},
         "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0, "workers_per_trial": 1},
         "tracking": {"tracking_uri": "sqlite:///x.db"}}


def with_value(path, value):
    raw = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return raw


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_experiments_load(path):
    experiment = load_experiment(path)
    assert experiment.final_seeds >= 3 and set(experiment.families) >= {"one_cycle"}


@pytest.mark.slow  # a subprocess
def test_loading_an_experiment_imports_neither_ray_nor_mlflow():
    """The schema and its checks are pure: a file is validated (on a laptop, in an editor's
    check, in the docs build) without Ray Tune, Ray or MLflow."""
    script = ("import sys; from search.experiment.loading import load_experiment; "
              f"load_experiment({str(ROOT / 'experiments' / 'quick.yaml')!r}); "
              "print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_the_default_experiment_is_the_shipped_quick_study():
    assert DEFAULT_EXPERIMENT == ROOT / "experiments" / "quick.yaml"
    assert load_experiment(DEFAULT_EXPERIMENT).name == "quick"


def test_paper_grid_is_complete():
    grid = {(base_config(e).model, e.dataset, s) for e in map(load_experiment, EXPERIMENTS)
            if e.epochs == 25 for s in e.sparsity}
    assert grid == {(m, d, s) for m in ("vgg16", "resnet18")
                    for d in ("cifar10", "cifar100", "caltech101") for s in (0.8, 0.9, 0.95)}


def test_a_valid_experiment_parses_with_its_ranges():
    experiment = parse_experiment(VALID)
    assert experiment.tuned["lr_max"] == (1e-3, 1e-2)
    assert experiment.tuned["coupling"] == ("none", "align")
    assert experiment.sparsity == (0.9,) and experiment.study_name(0.9) == "t"
    assert experiment.tracking_uri == "sqlite:///x.db"
    several = parse_experiment(with_value("sparsity", [0.8, 0.95]))
    assert [several.study_name(s) for s in several.sparsity] == ["t-s80", "t-s95"]
    assert parse_experiment({"name": "minimal"}).families == (
        "one_cycle", "one_shot", "iterative", "agp")


@pytest.mark.parametrize(("path", "value", "key"), [
    ("name", "", "name"),
    ("name", "a/b", "name"),
    ("dataset", "mnist", "dataset"),
    ("model", "alexnet", "model"),
    ("width", 0, "width"),
    ("sparsity", 1.0, "sparsity"),
    ("sparsity", [], "sparsity"),
    ("sparsity", [0.9, 0.9], "sparsity"),
    ("sparsity", "0.9", "sparsity"),
    ("epochs", 0, "epochs"),
    ("epochs", 2.5, "epochs"),
    ("batch_size", True, "batch_size"),
    ("families", [], "families"),
    ("families", ["one_cycle", "magic"], "families"),
    ("trials_per_family", 0, "trials_per_family"),
    ("final_seeds", 1, "final_seeds"),
    ("val_fraction", 0.9, "val_fraction"),
    ("scope", "galactic", "scope"),
    ("granularity", "channel", "granularity"),
    ("download", "yes", "download"),
    ("data_dir", 3, "data_dir"),
    ("surprise", 1, "surprise"),
    ("search.sampler", "grid", "search.sampler"),
    ("search.seed", -1, "search.seed"),
    ("search.asha", 1, "search.asha"),
    ("search.grace_period", 0, "search.grace_period"),
    ("search.space", {"one_cycle": {"start": [0.6, 0.2]}}, "search.space.one_cycle"),
    ("search.space", {"one_cycle": {"gamma": [1, 2]}}, "search.space.one_cycle"),
    ("search.space", {"zigzag": {}}, "search.space"),
    ("search.extra", 1, "search.extra"),
    ("search", [1, 2], "search"),
    ("training.lr_max", 0, "training.lr_max"),
    ("training.lr_max", [1e-2, 1e-3], "training.lr_max"),
    ("training.lr_max", [1e-3], "training.lr_max"),
    ("training.coupling", "tight", "training.coupling"),
    ("training.coupling", [], "training.coupling"),
    ("training.recovery_gain", [-1, 1], "training.recovery_gain"),
    ("training.optimizer", "lion", "training.optimizer"),
    ("training.pct_start", 1.0, "training.pct_start"),
    ("resources.cpus_per_trial", 0, "resources.cpus_per_trial"),
    ("resources.gpus_per_trial", -1, "resources.gpus_per_trial"),
    ("resources.workers_per_trial", 0, "resources.workers_per_trial"),
    ("resources.workers_per_trial", 1.5, "resources.workers_per_trial"),
    ("faults.raise_at_epoch", 0, "faults.raise_at_epoch"),
    ("faults.raise_at_epoch", 3, "faults.raise_at_epoch"),  # past epochs=2
    ("faults.nan_at_epoch", 1, "faults.nan_at_epoch"),
    ("faults.nan_families", ["agp", "nope"], "faults.nan_families"),
    ("faults.when", 1, "faults.when"),
    ("tracking.tracking_uri", "", "tracking.tracking_uri"),
    ("tracking.server", "x", "tracking.server"),
    ("tracking.optuna_storage", "optuna.db", "tracking.optuna_storage"),
    ("checkpoint_every", 0, "checkpoint_every"),
    ("model", "my.module", "model"),
    ("model_args", {"num_classes": 3}, "model_args"),
    ("model_args", [1], "model_args"),
    ("prune", {"layers": ["rnn"]}, "prune.layers"),
    ("prune", {"exclude": 3}, "prune.exclude"),
    ("bf16", "yes", "bf16"),
    ("training.momentum", [0.9, 1.0], "training.momentum"),
    ("training.momentum", [0.95, 0.9], "training.momentum"),
    ("training.recovery_window", 0, "training.recovery_window"),
    ("training.optimizer", ["adam", "adam"], "training.optimizer"),
    ("training.prune_resolution", [0.0, 0.01], "training.prune_resolution"),  # not tunable
    ("training.epochs", 3, "training.epochs"),  # a top-level key
    ("momentum", 0.9, "momentum"),  # under training:
    ("seed", 1, "seed"),  # set per trial
])
def test_bad_values_name_their_key(path, value, key):
    with pytest.raises(ConfigError) as error:
        parse_experiment(with_value(path, value))
    message = str(error.value)
    assert key in message and "\n" not in message


def test_misplaced_settings_say_where_they_go():
    cases = {"momentum": "('momentum' goes under training:)",
             "training.epochs": "('epochs' is a top-level key)",
             "seed": "('seed' is set by the service for each trial)"}
    for path, hint in cases.items():
        with pytest.raises(ConfigError, match=hint.replace("(", r"\(").replace(")", r"\)")):
            parse_experiment(with_value(path, 1))


def test_every_training_setting_is_an_experiment_key_and_reaches_the_trials():
    """TrainConfig declares the settings once: each with a place in an experiment file is
    accepted there and arrives in the trial's config; tunable ones may be searched."""
    values = {"bf16": True, "channels_last": True, "model_args": {},
              "prune": {"layers": ["conv", "linear"], "exclude": ["features.0"]},
              "verify_data": False, "image_size": 16}
    training = {"momentum": 0.8, "recovery_window": 0.1, "prune_resolution": 0.01,
                "weight_decay": 0.001, "coupling": "align", "recovery_gain": 1.5,
                "pct_start": 0.3, "optimizer": "sgd"}
    raw = {**VALID, **values, "training": training}
    experiment = parse_experiment(raw)
    placed = {name for name, spec in TrainConfig.settings().items()
              if spec.metadata["where"] is not None}
    cfg = base_config(experiment, "agp", 0.9)
    for name, value in {**values, **training}.items():
        assert name in placed
        got = getattr(cfg, name)
        assert (got.to_dict() if name == "prune" else got) == value, name
    # A fixed coupling and recovery gain reach the trials (the dense reference has none).
    assert base_config(experiment).coupling == "none"

    tuned = parse_experiment({**VALID, "training": {"momentum": [0.8, 0.95],
                                                    "optimizer": ["sgd", "adam"]}})
    assert tuned.tuned == {"momentum": (0.8, 0.95), "optimizer": ("sgd", "adam")}
    assert base_config(tuned, "agp", 0.9).momentum == pytest.approx(0.875)
    assert base_config(tuned, "agp", 0.9).optimizer == "sgd"
    study = optuna.create_study()
    trial = study.ask()
    define_by_run(trial, family="agp", sparsity=0.9, bounds=None, tuned=tuned.tuned)
    assert {"momentum", "optimizer"} <= set(trial.params)
    run = trial_config(base_config(tuned, "agp", 0.9), trial.params)
    assert run.momentum == trial.params["momentum"]


def test_every_training_setting_has_a_train_cli_flag():
    parser = train_parser()
    dests = {action.dest.partition(".")[0] for action in parser._actions}
    assert set(TrainConfig.settings()) <= dests


def test_a_model_too_big_for_the_images_is_refused_with_the_data():
    # VGG-16 needs 32x32 images; digits are 8x8. Known once the data is loaded, which the
    # CLI does before it connects to Ray or MLflow (see test_cli_refuses_...).
    experiment = parse_experiment(with_value("model", "vgg16"))
    with pytest.raises(ValueError, match="vgg16"):
        load_data(experiment)


def test_missing_name_non_mapping_and_broken_yaml(tmp_path):
    with pytest.raises(ConfigError, match="name"):
        parse_experiment({"dataset": "digits"})
    with pytest.raises(ConfigError, match="mapping"):
        parse_experiment([1, 2])
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_experiment(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_experiment(tmp_path / "absent.yaml")


def test_midpoint_and_define_by_run_give_valid_trial_configs():
    import optuna

    experiment = parse_experiment(VALID)
    for family in experiment.families:
        base = base_config(experiment, family, 0.9)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        for _ in range(20):
            trial = study.ask()
            define_by_run(trial, family=family, sparsity=0.9,
                          bounds=experiment.search.space.get(family),
                          tuned=experiment.tuned)
            cfg = trial_config(base, trial.params)
            assert cfg.schedule.family == family and cfg.schedule.final_sparsity == 0.9
            assert 1e-3 <= cfg.lr_max <= 1e-2 and cfg.coupling in ("none", "align")
            assert cfg.epochs == base.epochs and cfg.seed == base.seed
            study.tell(trial, 0.5)
    middle = midpoint_schedule("one_cycle", 0.9)
    assert isinstance(middle, OneCycle) and middle.start < middle.end
    with pytest.raises(ValueError, match="belong to no field"):
        trial_config(base_config(experiment, "agp", 0.9), {"alpha": 3.0})


@pytest.mark.parametrize(("raw", "expected"), [
    (with_value("epochs", -3), "epochs"),
    (with_value("model", "vgg16"), "vgg16"),
    ({**VALID, "dataset": "cifar10", "data_dir": "nothing"}, "data_dir"),  # no files there
    ("name: [unclosed\n", "YAML"),
])
@pytest.mark.slow
def test_cli_refuses_bad_input_with_one_line_and_writes_nothing(tmp_path, raw, expected):
    path = tmp_path / "bad.yaml"
    if isinstance(raw, dict):
        raw = yaml.safe_dump({**raw, "tracking": {"tracking_uri": "sqlite:///mlflow.db"}})
    path.write_text(raw)
    done = run_search("--experiment", str(path), "--storage-path", str(tmp_path / "ray"),
                          cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert expected in done.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_faults_select_families_and_distributed_trials_parse():
    raw = with_value("faults", {"raise_at_epoch": 2, "nan_at_epoch": 2,
                                "nan_families": ["agp", "dense"]})
    raw["resources"]["workers_per_trial"] = 4
    experiment = parse_experiment(raw)
    assert experiment.resources.workers_per_trial == 4
    faults = experiment.faults
    assert faults.for_family("one_cycle") == Faults(raise_at_epoch=2)
    assert faults.for_family("dense") == Faults(raise_at_epoch=2, nan_at_epoch=2)
    only_nan = parse_experiment(with_value("faults", {"nan_at_epoch": 2,
                                                      "nan_families": ["agp"]})).faults
    assert only_nan.for_family("one_cycle") is None
    assert parse_experiment(VALID).faults is None


def test_a_command_line_override_is_merged_into_its_section(tmp_path):
    """--tracking-uri replaces the URI only: a bad key beside it is still refused (found by
    the fuzz test: the override used to replace the whole section)."""
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(with_value("tracking.server", "x")))
    with pytest.raises(ConfigError, match="tracking.server"):
        load_experiment(path, {"tracking": {"tracking_uri": "sqlite:///y.db"}})
    path.write_text(yaml.safe_dump(VALID))
    assert load_experiment(path, {"tracking": {"tracking_uri": "sqlite:///y.db"}}
                           ).tracking_uri == "sqlite:///y.db"


@pytest.mark.parametrize(("where", "value", "expected"), [
    ("--tracking-uri", "http://127.0.0.1:9", "does not answer"),        # nothing listens
    ("--tracking-uri", "sqlite:///{file}/mlflow.db", "does not answer"),  # under a file
    ("--storage-path", "{file}/ray", "is not writable"),
], ids=["tracking-unreachable", "tracking-unwritable", "storage-unwritable"])
@pytest.mark.slow
def test_cli_fails_fast_when_mlflow_or_storage_is_unusable(tmp_path, where, value, expected):
    """Found before Ray starts and before any trial: one line, exit 2."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = {"--experiment": str(ROOT / "experiments" / "quick.yaml"),
            "--storage-path": str(tmp_path / "ray"),
            "--tracking-uri": f"sqlite:///{tmp_path}/mlflow.db"}
    args[where] = value.format(file=blocker)
    done = run_search(*[item for pair in args.items() for item in pair], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert expected in done.stderr and where.lstrip("-").split("-")[0] in done.stderr
    assert "Ray" not in done.stderr  # never got as far as starting a cluster


def test_optuna_studies_live_beside_a_sqlite_mlflow_store_by_default():
    base = {"name": "x", "tracking": {"tracking_uri": "sqlite:////data/runs/mlflow.db"}}
    assert parse_experiment(base).optuna_storage_url == "sqlite:////data/runs/optuna.db"
    assert parse_experiment({"name": "x"}).optuna_storage_url == "sqlite:///optuna.db"
    server = {"name": "x", "tracking": {"tracking_uri": "http://127.0.0.1:5000"}}
    assert parse_experiment(server).optuna_storage_url == "sqlite:///optuna.db"
    chosen = {"name": "x", "tracking": {"optuna_storage": "postgresql://u@db/optuna"}}
    assert parse_experiment(chosen).optuna_storage_url == "postgresql://u@db/optuna"


@pytest.mark.slow
def test_cli_fails_fast_when_the_optuna_storage_cannot_be_opened(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    spec = yaml.safe_load((ROOT / "experiments" / "quick.yaml").read_text())
    spec["tracking"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                        "optuna_storage": f"sqlite:///{blocker}/optuna.db"}
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(spec))
    MlflowClient(spec["tracking"]["tracking_uri"]).search_experiments()  # a store exists
    done = run_search("--experiment", str(path), "--storage-path", str(tmp_path / "ray"),
                          cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "optuna_storage" in done.stderr
    assert "cannot be opened" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("space", "grace", "epochs", "expected"), [
    # one_cycle's default end reaches 1.0: no rung before the last epoch is fair
    ({}, 5, 25, "search.asha can stop no trial fairly: one_cycle may prune until epoch 25 "
                "of 25 (end up to 1); narrow search.space.one_cycle.end or set asha: false"),
    # the paper files' former setting, with ramps that may end at 80% of 25 epochs
    ({"one_cycle": {"end": [0.7, 0.8]}, "agp": {"end": [0.5, 0.8]}}, 5, 25,
     "search.grace_period must be >= 20: until epoch 20 of 25 a one_cycle trial may still "
     "be pruning (end up to 0.8), and ASHA would favour late-pruning trials; got 5"),
    ({"one_cycle": {"end": [0.7, 0.8]}, "agp": {"end": [0.5, 0.8]}}, 20, 25, None),
])
def test_asha_is_refused_where_it_would_favour_late_pruning(space, grace, epochs, expected):
    raw = {**VALID, "epochs": epochs,
           "search": {"asha": True, "grace_period": grace, "space": space}}
    if expected is None:
        assert parse_experiment(raw).search.grace_period == grace
        return
    with pytest.raises(ConfigError) as error:
        parse_experiment(raw)
    assert str(error.value) == expected


def test_a_list_of_allocations_is_searched_with_depths_exponent_conditional():
    experiment = parse_experiment({**VALID, "allocation": ["uniform", "erk", "depth"]})
    assert experiment.tuned["allocation"] == ("uniform", "erk", "depth")
    assert experiment.allocation_space == {"depth": {"exponent": (-4.0, 4.0)}}  # by default
    assert experiment.allocations == ("uniform", "erk", "depth")
    assert base_config(experiment, "agp", 0.9).allocation == "uniform"  # the first choice
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        define_by_run(trial, family="agp", sparsity=0.9, bounds=None, tuned=experiment.tuned,
                      fixed=experiment.train, allocation_space=experiment.allocation_space)
        chosen = trial.params["allocation"]
        seen.add(chosen)
        # the exponent exists exactly where allocation is depth: one space for every family
        assert ("depth_exponent" in trial.params) == (chosen == "depth")
        cfg = trial_config(base_config(experiment, "agp", 0.9), trial.params)
        assert cfg.allocation == chosen
        if chosen == "depth":
            assert -4.0 <= cfg.allocation_args["exponent"] <= 4.0
            assert cfg.allocation_args["exponent"] == trial.params["depth_exponent"]
        else:
            assert cfg.allocation_args == {}
        study.tell(trial, 0.5)
    assert seen == {"uniform", "erk", "depth"}
    fixed = parse_experiment({**VALID, "allocation": "depth", "depth_exponent": 1.5})
    assert fixed.allocation_space == {} and fixed.train["allocation_args"] == {"exponent": 1.5}
    assert "depth" in parse_experiment({**VALID, "allocation": "depth"}).allocation_space


def test_allocation_args_fix_or_range_each_argument_for_the_allocations_that_take_it():
    ranged = parse_experiment({**VALID, "allocation": ["uniform", "depth"],
                               "allocation_args": {"exponent": [-2, 1]}})
    assert ranged.allocation_space == {"depth": {"exponent": (-2.0, 1.0)}}
    assert "allocation_args" not in ranged.train
    fixed = parse_experiment({**VALID, "allocation": ["uniform", "depth"],
                              "allocation_args": {"exponent": 2}})
    assert fixed.allocation_space == {}
    assert trial_config(base_config(fixed, "agp", 0.9), {"allocation": "depth"},
                        fixed.train["allocation_args"]).allocation_args == {"exponent": 2.0}
    assert trial_config(base_config(fixed, "agp", 0.9), {"allocation": "uniform"},
                        fixed.train["allocation_args"]).allocation_args == {}
    assert base_config(fixed, "agp", 0.9).allocation_args == {}  # uniform, the first choice
    assert parse_experiment({**VALID, "allocation": "depth", "depth_exponent": [-1, 3]}
                            ).allocation_space == {"depth": {"exponent": (-1.0, 3.0)}}


def test_scope_is_the_older_name_of_two_allocations():
    assert parse_experiment({**VALID, "scope": "global"}).train["allocation"] == "global"
    assert parse_experiment({**VALID, "scope": "local"}).train["allocation"] == "uniform"
    with pytest.raises(ConfigError, match="scope and allocation are two names"):
        parse_experiment({**VALID, "scope": "local", "allocation": "erk"})


@pytest.mark.parametrize(("raw", "expected"), [
    ({"allocation": "magic"}, "allocation must be one of 'uniform', 'global', 'erk'"),
    ({"allocation": ["erk", "erk"]}, "allocation lists a value twice"),
    ({"allocation": ["uniform", "erk"], "granularity": "filter"},
     "allocation 'erk' cannot prune filters"),
    ({"allocation": "depth", "depth_exponent": 12}, "depth_exponent must be in [-8, 8]"),
    ({"allocation": "depth", "depth_exponent": [-9, 1]}, "depth_exponent must be in [-8, 8]"),
    ({"allocation": "depth", "allocation_args": {"exponent": [-9, 1]}},
     "allocation_args.exponent must be in [-8, 8]"),
    ({"allocation": "uniform", "allocation_args": {"exponent": 1}},
     "allocation_args.exponent: no allocation of this study takes it"),
    ({"allocation": "depth", "allocation_args": {"exponent": 1}, "depth_exponent": 1},
     "depth_exponent and allocation_args.exponent are two names of one setting"),
])
def test_bad_allocations_are_refused_in_one_line(raw, expected):
    with pytest.raises(ConfigError) as error:
        parse_experiment({**VALID, **raw})
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_an_allocation_that_cannot_reach_a_sparsity_is_refused_with_the_model():
    # uniform+ keeps the convnet's first layer dense and a fifth of its last, 36,864 of
    # its 64,800 weights: it cannot reach 95%.
    experiment = parse_experiment({**VALID, "sparsity": [0.5, 0.95],
                                   "allocation": ["uniform", "uniform_plus"]})
    with pytest.raises(ValueError, match="allocation 'uniform_plus' cannot reach sparsity "
                                         "0.95: it keeps the first pruned layer "
                                         "'features.0' dense"):
        load_data(experiment)
    load_data(parse_experiment({**VALID, "allocation": ["uniform", "uniform_plus"],
                                "sparsity": 0.8}))


RANGE = {**VALID, "search": {**VALID["search"], "asha": False},
         "sparsity": {"min": 0.8, "max": 0.99, "max_drop": 0.5}}


def test_a_sparsity_range_is_one_study_whose_trials_sample_their_sparsity():
    experiment = parse_experiment(RANGE)
    assert experiment.sparsity_range == SparsityRange(0.8, 0.99, 0.5)
    assert experiment.sparsity == (0.99,) and experiment.study_name(0.99) == "t"
    assert experiment.trained_sparsities == (0.8, 0.99)
    assert parse_experiment({**RANGE, "sparsity": {"min": 0.8, "max": 0.9}}
                            ).sparsity_range.max_drop == 1.0
    study = optuna.create_study(directions=["maximize", "maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        define_by_run(trial, family="agp", sparsity=(0.8, 0.99), bounds=None,
                      tuned=experiment.tuned)
        assert next(iter(trial.params)) == "final_sparsity"  # sampled first
        assert 0.8 <= trial.params["final_sparsity"] <= 0.99
        cfg = trial_config(base_config(experiment, "agp", 0.99), trial.params)
        assert cfg.schedule.final_sparsity == trial.params["final_sparsity"]


@pytest.mark.parametrize(("sparsity", "message"), [
    ({"min": 0.0, "max": 0.9}, "sparsity.min must be in (0, 1), got 0.0"),
    ({"min": 0.8, "max": 1.0}, "sparsity.max must be in (0, 1), got 1.0"),
    ({"min": 0.9, "max": 0.9}, "sparsity must have min < max, got min=0.9, max=0.9"),
    ({"min": 0.95, "max": 0.9}, "sparsity must have min < max"),
    ({"min": 0.8, "max": 0.9, "max_drop": -0.5}, "sparsity.max_drop must be in [0, 100]"),
    ({"max": 0.9}, "sparsity.min is missing"),
    ({"min": "0.8", "max": 0.9}, "sparsity.min must be a real number"),
    ({"min": 0.8, "max": 0.9, "step": 0.01}, "unknown key 'sparsity.step'"),
    ([0.8, {"min": 0.8, "max": 0.9}], "a sparsity range cannot be combined with a list"),
])
def test_a_bad_sparsity_range_is_refused_in_one_line(sparsity, message):
    with pytest.raises(ConfigError) as error:
        parse_experiment({**RANGE, "sparsity": sparsity})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_asha_is_refused_with_a_sparsity_range():
    """A rung would compare trials that end at different sparsities."""
    with pytest.raises(ConfigError, match="search.asha cannot be used with a sparsity range"):
        parse_experiment({**RANGE, "search": VALID["search"]})
