"""The training loop: schedule followed, LR coupled, determinism, export round trip."""

import dataclasses

import numpy as np
import pytest
import torch

from oneprune.config import TrainConfig
from oneprune.data import Batches
from oneprune.saving import MODEL_FILE, load_pruned, save_pruned
from oneprune.schedules import AGP, Iterative, OneCycle, OneShot
from oneprune.state import load_state, save_state
from oneprune.train import evaluate, train

QUICK = TrainConfig(epochs=3, batch_size=128, lr_max=1e-2, device="cpu")
REPORT_KEYS = {"epoch", "step", "progress", "lr", "target_sparsity", "sparsity", "train_loss",
               "val_loss", "val_acc", "epoch_seconds", "diverged"}


def without_times(history):
    return [{k: v for k, v in epoch.items() if k != "epoch_seconds"} for epoch in history]


def test_reports_every_epoch_and_follows_the_schedule(digits):
    reports = []
    cfg = dataclasses.replace(QUICK, epochs=4, schedule=AGP(0.8, start=0.0, end=0.75))
    result = train(cfg, reports.append, data=digits)
    assert [r["epoch"] for r in reports] == [1, 2, 3, 4]
    assert all(set(r) == REPORT_KEYS for r in reports)
    steps = reports[0]["step"]
    assert [r["step"] for r in reports] == [steps, 2 * steps, 3 * steps, 4 * steps]
    for r in reports:  # the masks track the schedule to within the prune resolution
        assert r["target_sparsity"] == pytest.approx(cfg.schedule(r["progress"]))
        assert abs(r["sparsity"] - r["target_sparsity"]) <= cfg.prune_resolution + 1e-4
    assert reports[-1]["progress"] == 1.0 and reports[2]["sparsity"] == pytest.approx(0.8,
                                                                                   abs=1e-4)
    assert result.history == reports and result.sparsity == reports[-1]["sparsity"]
    assert 0.0 <= result.test_acc <= 1.0 and result.val_acc == reports[-1]["val_acc"]


@pytest.mark.parametrize("allocation, granularity", [
    ("uniform", "weight"), ("global", "weight"), ("erk", "weight"), ("lamp", "weight"),
    ("uniform", "filter"), ("global", "filter"), ("lamp", "filter")])
def test_final_sparsity_is_reached(digits, allocation, granularity):
    cfg = dataclasses.replace(QUICK, epochs=2, allocation=allocation, granularity=granularity,
                              schedule=OneCycle(0.9))
    result = train(cfg, data=digits)
    convs = [m.weight for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)]
    if granularity == "weight":
        assert result.sparsity == pytest.approx(0.9, abs=1e-3)
        zeros = sum(int((w == 0).sum()) for w in convs)
        assert zeros >= sum(r.pruned for r in result.pruner.layer_report())
    else:  # the pruned units are whole filters: 90% of them are all zero
        dead = sum(int((w.flatten(1) == 0).all(1).sum()) for w in convs)
        total = sum(w.shape[0] for w in convs)
        assert dead == round(0.9 * total)


def test_one_shot_prunes_at_its_start(digits):
    cfg = dataclasses.replace(QUICK, epochs=4, schedule=OneShot(0.7, start=0.5))
    sparsity = [r["sparsity"] for r in train(cfg, data=digits).history]
    # epoch 2 ends at progress 0.5: its last step prunes everything at once
    assert sparsity == [0.0] + [pytest.approx(0.7, abs=1e-4)] * 3


def test_the_learning_rate_is_the_coupled_policy(digits):
    cfg = dataclasses.replace(QUICK, schedule=Iterative(0.8, start=0.1, end=0.9, steps=4),
                              coupling="align", recovery_gain=1.5)
    history = train(cfg, data=digits).history
    policy = cfg.lr_policy()
    assert policy.effective_pct_start != cfg.pct_start
    for epoch in history:
        assert epoch["lr"] == pytest.approx(policy(epoch["progress"]))
    assert history[-1]["lr"] == pytest.approx(cfg.lr_max / 25 / 1e4)


def test_same_seed_same_metrics_other_seed_other_metrics(digits):
    first = train(QUICK, data=digits)
    second = train(QUICK, data=digits)
    other = train(dataclasses.replace(QUICK, seed=1), data=digits)
    assert without_times(first.history) == without_times(second.history)
    assert first.test_acc == second.test_acc
    assert without_times(first.history) != without_times(other.history)


def test_dense_training_learns_digits(digits):
    result = train(dataclasses.replace(QUICK, epochs=5, schedule=None), data=digits)
    assert result.pruner is None and result.sparsity == 0.0
    assert result.test_acc > 0.9  # chance is 0.1


def test_sgd_and_cifar_shaped_models_train(cifar10_dir):
    cfg = TrainConfig(dataset="cifar10", data_dir=str(cifar10_dir), verify_data=False,
                      model="resnet18", width=0.125, epochs=1, batch_size=16, optimizer="sgd",
                      lr_max=0.05, weight_decay=5e-4, val_fraction=0.2, device="cpu",
                      channels_last=True, schedule=OneCycle(0.5))
    result = train(cfg)
    assert result.sparsity == pytest.approx(0.5, abs=1e-3)
    assert np.isfinite(result.history[-1]["train_loss"])


def test_vgg16_on_caltech101(caltech_dir):
    cfg = TrainConfig(dataset="caltech101", data_dir=str(caltech_dir), image_size=32,
                      model="vgg16", width=0.0625, epochs=2, batch_size=8, val_fraction=0.2,
                      device="cpu", schedule=AGP(0.8), allocation="global")
    result = train(cfg)
    assert result.sparsity == pytest.approx(0.8, abs=1e-3)
    assert result.model.classifier.out_features == 3 and len(result.history) == 2


def test_export_round_trip(digits, tmp_path):
    result = train(dataclasses.replace(QUICK, schedule=OneCycle(0.9)), data=digits)
    files = save_pruned(result, tmp_path / "out")
    assert files["sparse_model"].stat().st_size < files["model"].stat().st_size / 3
    dense_state = torch.load(tmp_path / "out" / MODEL_FILE, weights_only=True)
    test = Batches(digits.test, 512, mean=digits.mean, std=digits.std)
    for sparse in (True, False):
        loaded = load_pruned(tmp_path / "out", sparse=sparse)
        state = loaded.model.state_dict()
        assert all(torch.equal(state[k], dense_state[k]) for k in dense_state)
        _, accuracy = evaluate(loaded.model, test)
        assert accuracy == loaded.metrics["test_acc"] == result.test_acc
    assert loaded.config["train"] == result.config.to_dict()
    assert TrainConfig.from_dict(loaded.config["train"]) == result.config
    assert loaded.metrics["sparsity"] == pytest.approx(0.9, abs=1e-3)
    (tmp_path / "out" / MODEL_FILE).write_bytes(b"not a model")
    with pytest.raises(ValueError, match="is not a saved pruned model"):
        load_pruned(tmp_path / "out", sparse=False)
    with pytest.raises(ValueError, match="is not a saved pruned model"):
        load_pruned(tmp_path / "nowhere")


def test_data_loaded_otherwise_than_the_config_says_is_refused(digits):
    with pytest.raises(ValueError, match="data was loaded with dataset='digits' but the "
                                         "config has dataset='cifar10'"):
        train(dataclasses.replace(QUICK, dataset="cifar10"), data=digits)
    with pytest.raises(ValueError, match="data was loaded with split_seed=0 but the config "
                                         "has split_seed=1"):
        train(dataclasses.replace(QUICK, split_seed=1), data=digits)


@pytest.mark.parametrize("kwargs, message", [
    ({"dataset": "mnist"}, "dataset must be one of"),
    ({"model": "alexnet"}, "model must be one of 'convnet', 'resnet18', 'vgg16'"),
    ({"epochs": 0}, "epochs must be in [1, 10000]"),
    ({"epochs": 2.5}, "epochs must be an integer"),
    ({"optimizer": "lion"}, "optimizer must be one of 'adam', 'sgd'"),
    ({"lr_max": -1.0}, "lr_max must be in (0, 10]"),
    ({"schedule": {"family": "one_cycle", "final_sparsity": 1.0}},
     "OneCycle.final_sparsity must be in [0, 1)"),
    ({"schedule": {"family": "one_cycle", "final_sparsity": 0.9, "alpha": -1}},
     "OneCycle.alpha must be in (0, inf)"),
    ({"schedule": None, "coupling": "align"}, "coupling 'align' needs a pruning schedule"),
    ({"allocation": "layer"}, "allocation must be one of"),
    ({"allocation": "erk", "granularity": "filter"}, "allocation 'erk' cannot prune filters"),
    ({"allocation": "depth", "allocation_args": {"exponent": -9}},
     "allocation_args.exponent must be in [-8, 8]"),
    ({"allocation_args": {"exponent": 1}},
     "allocation_args has no argument 'exponent' for allocation 'uniform'"),
    ({"device": "tpu"}, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    ({"device": "cuda:x"}, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ({"download": "yes"}, "download must be true or false"),
    ({"val_fraction": 0.9}, "val_fraction must be in (0, 0.5]"),
])
def test_bad_config_names_the_field(kwargs, message):
    with pytest.raises(ValueError) as error:
        TrainConfig(**kwargs)
    assert message in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_is_checked_where_the_run_trains(digits):
    cfg = dataclasses.replace(QUICK, device="cuda")  # a CPU-only driver may configure it
    with pytest.raises(ValueError, match="device 'cuda' requested but CUDA is not available"):
        train(cfg, data=digits)


def test_config_dict_round_trip_and_unknown_keys():
    cfg = TrainConfig(schedule=AGP(0.8, power=2.0), coupling="align", seed=4)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig(model=None).model == "convnet"
    assert TrainConfig(dataset="cifar10").model == "resnet18"
    with pytest.raises(ValueError, match="train config has no field 'lr'"):
        TrainConfig.from_dict({"lr": 0.1})


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason="needs a CUDA device"))])
@pytest.mark.slow
def test_bf16_autocast_and_channels_last(digits, device):
    cfg = dataclasses.replace(QUICK, device=device, bf16=True, channels_last=True)
    result = train(cfg, data=digits)
    weight = next(m.weight for m in result.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert weight.device.type == device and weight.dtype == torch.float32  # autocast only
    assert result.sparsity == pytest.approx(0.9, abs=1e-3)
    assert result.test_acc > 0.3 and np.isfinite(result.history[-1]["train_loss"])


@pytest.mark.parametrize("schedule", [OneCycle(0.9), None], ids=["pruned", "dense"])
@pytest.mark.slow
def test_a_run_resumed_from_a_saved_state_equals_the_uninterrupted_run(digits, tmp_path,
                                                                       schedule):
    cfg = dataclasses.replace(QUICK, epochs=4, schedule=schedule)
    whole = train(cfg, data=digits)
    saved = []

    def checkpoint(metrics, state):
        path = tmp_path / f"epoch{metrics['epoch']}.pt"
        save_state(state, path)
        saved.append(path)

    train(cfg, data=digits, checkpoint=checkpoint)
    assert len(saved) == 4
    resumed = train(cfg, data=digits, resume=load_state(saved[1]))  # after epoch 2
    assert without_times(resumed.history) == without_times(whole.history)
    assert resumed.test_acc == whole.test_acc
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_a_state_of_another_run_is_refused(digits, tmp_path):
    train(QUICK, data=digits,
          checkpoint=lambda metrics, state: save_state(state, tmp_path / "state.pt"))
    with pytest.raises(ValueError, match="another config .*seed"):
        train(dataclasses.replace(QUICK, seed=1), data=digits,
              resume=load_state(tmp_path / "state.pt"))
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read training state"):
        load_state(tmp_path / "broken.pt")
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="is not a training state"):
        load_state(tmp_path / "partial.pt")


def test_a_non_finite_loss_ends_the_run_as_diverged(digits):
    def poison_after_epoch_1(metrics, state):
        if metrics["epoch"] == 1:
            next(iter(state["model"].values())).fill_(float("nan"))

    result = train(dataclasses.replace(QUICK, epochs=4), data=digits,
                   checkpoint=poison_after_epoch_1)
    assert result.diverged and [h["diverged"] for h in result.history] == [False, True]
    assert result.metrics()["diverged"] is True
    assert not train(QUICK, data=digits).diverged
