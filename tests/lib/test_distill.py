"""Distillation from a teacher: the loss is the formula, w = 0 is training without a teacher
exactly, the teacher never trains, and bad teachers or settings are refused in one line."""

import dataclasses
import json
import math

import pytest
import torch

import oneprune.train
from oneprune.cli import main
from oneprune.config import TrainConfig
from oneprune.distill import distillation_loss
from oneprune.models import ConvNet
from oneprune.schedules import OneCycle
from oneprune.starts import weights_digest
from oneprune.train import train

CONFIG = TrainConfig(epochs=2, lr_max=1e-2, seed=3, schedule=OneCycle(0.8))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A dense convnet trained two epochs on digits, as a state_dict file and its tensors."""
    result = train(TrainConfig(schedule=None, epochs=2, lr_max=1e-2, seed=9))
    state = {name: tensor.detach().clone() for name, tensor in result.model.state_dict().items()}
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(state, path)
    return {"state": state, "path": path}


def test_the_loss_is_the_formula_on_fixed_logits():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([1, 2])
    w, t = 0.3, 2.0

    def softmax(row, temperature=1.0):
        exps = [math.exp(v / temperature) for v in row]
        return [e / sum(exps) for e in exps]

    ce = -sum(math.log(softmax(s)[y]) for s, y in zip(student.tolist(), labels.tolist(),
                                                      strict=True)) / 2
    kl = sum(sum(p * math.log(p / q) for p, q in zip(softmax(z_t, t), softmax(z_s, t),
                                                    strict=True))
             for z_s, z_t in zip(student.tolist(), teacher.tolist(), strict=True)) / 2
    expected = (1 - w) * ce + w * t * t * kl
    got = distillation_loss(student, teacher, labels, weight=w, temperature=t)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(distillation_loss(student, teacher, labels, weight=0.0, temperature=t)) \
        == pytest.approx(ce, rel=1e-6)


def test_weight_zero_is_training_without_a_teacher_exactly(teacher, digits):
    alone = train(CONFIG, data=digits)
    taught = train(dataclasses.replace(CONFIG, teacher=str(teacher["path"])), data=digits)
    def timeless(history):
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in history]

    assert timeless(taught.history) == timeless(alone.history)
    assert all(torch.equal(a, b) for a, b in zip(alone.model.state_dict().values(),
                                                 taught.model.state_dict().values(),
                                                 strict=True))
    assert alone.teacher_digest is None
    assert taught.teacher_digest == weights_digest(teacher["state"])  # recorded all the same
    distilled = train(dataclasses.replace(CONFIG, teacher=str(teacher["path"]),
                                          distill_weight=0.5), data=digits)
    assert distilled.history[0]["train_loss"] != alone.history[0]["train_loss"]


def test_the_teacher_gets_no_gradient_and_never_changes(teacher, digits, monkeypatch):
    """Spy on the teacher the run builds: in eval mode throughout, no parameter requires or
    holds a gradient, and its weights and BatchNorm statistics end as they began."""
    built, calls = [], []
    frozen = oneprune.train.frozen_teacher

    def spy(*args, **kwargs):
        built.append(frozen(*args, **kwargs))
        built[-1].register_forward_hook(lambda module, *_: calls.append(module.training))
        return built[-1]

    monkeypatch.setattr(oneprune.train, "frozen_teacher", spy)
    result = train(dataclasses.replace(CONFIG, teacher="given", distill_weight=0.7,
                                       distill_temperature=3.0),
                   data=digits, teacher=teacher["state"])
    (model,) = built
    assert len(calls) == result.history[-1]["step"] and not any(calls)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in teacher["state"].items())


def test_a_run_without_weight_builds_no_teacher(teacher, digits, monkeypatch):
    built = []
    monkeypatch.setattr(oneprune.train, "frozen_teacher", lambda *a, **k: built.append(a))
    train(dataclasses.replace(CONFIG, epochs=1, teacher="given"), data=digits,
          teacher=teacher["state"])
    assert built == []


@pytest.mark.parametrize(("field", "value", "message"), [
    ("distill_weight", 1.5, "distill_weight must be in [0, 1], got 1.5"),
    ("distill_weight", -0.1, "distill_weight must be in [0, 1], got -0.1"),
    ("distill_temperature", 0.0, "distill_temperature must be in (0, 100], got 0.0"),
    ("teacher", "", "teacher must be 'none' or the path of the teacher's weights"),
])
def test_bad_settings_name_the_field_and_range(field, value, message):
    with pytest.raises(ValueError) as error:
        TrainConfig(**{"teacher": "t.pt", field: value})
    assert str(error.value).startswith(message)


def test_a_weight_without_a_teacher_is_refused():
    with pytest.raises(ValueError, match="distill_weight=0.5 needs a teacher"):
        TrainConfig(distill_weight=0.5)


@pytest.mark.parametrize("kind", ["missing", "classes"])
def test_a_bad_teacher_is_one_line_and_exit_2(tmp_path, capsys, kind):
    five = ConvNet(num_classes=5, in_channels=1).state_dict()
    torch.save(five, tmp_path / "five.pt")
    path = {"missing": tmp_path / "none.pt", "classes": tmp_path / "five.pt"}[kind]
    with pytest.raises(SystemExit) as exit_:
        main(["--epochs", "1", "--teacher", str(path), "--distill-weight", "0.5",
              "--quiet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert {"missing": "no such file or folder",
            "classes": "does not fit the model: tensor 'classifier.weight' has shape "
                       "(5, 64), the model's (10, 64)"}[kind] in err


def test_the_cli_distils_and_records_the_teacher(teacher, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--epochs", "1", "--teacher", str(teacher["path"]), "--distill-weight",
                 "0.5", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher_digest"] == weights_digest(teacher["state"])
    config = json.loads((out / "config.json").read_text())["train"]
    assert (config["teacher"], config["distill_weight"]) == (str(teacher["path"]), 0.5)
