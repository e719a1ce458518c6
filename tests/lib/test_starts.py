"""Starting points: a run from given weights (a state_dict, a safetensors file, a folder this
project saved) starts exactly from them; weights that do not fit, or a file that is not
weights, are refused in one line before anything trains."""

import pickle
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from testkit.forward import first_forward

from oneprune.config import TrainConfig
from oneprune.models import ConvNet
from oneprune.saving import save_pruned
from oneprune.schedules import OneCycle
from oneprune.starts import fit_weights, read_weights, weights_digest, write_weights
from oneprune.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A dense convnet trained two epochs on digits, saved in each format a run starts from."""
    folder = tmp_path_factory.mktemp("trained")
    result = train(TrainConfig(schedule=None, epochs=2, lr_max=1e-2, seed=5))
    state = {name: tensor.detach().clone() for name, tensor in result.model.state_dict().items()}
    torch.save(state, folder / "model.pt")
    save_file({name: tensor.contiguous() for name, tensor in state.items()},
              folder / "model.safetensors")
    save_pruned(result, folder / "saved")
    return {"state": state, "folder": folder}


@pytest.mark.parametrize("name", ["model.pt", "model.safetensors", "saved"])
def test_every_format_reads_the_same_weights(trained, name):
    state = read_weights(trained["folder"] / name)
    assert state.keys() == trained["state"].keys()
    assert all(torch.equal(state[key], trained["state"][key]) for key in state)
    assert weights_digest(state) == weights_digest(trained["state"])


def test_a_run_from_a_file_starts_from_exactly_its_model(trained):
    """The first forward pass of the run (train mode, its first batch) equals the file's
    model's on the same batch; and the run records the digest of what it started from."""
    with first_forward(ConvNet) as seen:
        cfg = TrainConfig(init=str(trained["folder"] / "model.safetensors"), epochs=1,
                          seed=9, schedule=OneCycle(0.9, start=0.2, end=0.9))  # t=0: dense
        result = train(cfg)
    images, logits = seen[0]
    reference = ConvNet(num_classes=10, in_channels=1)
    reference.load_state_dict(trained["state"])
    with torch.no_grad():
        assert torch.equal(reference.train()(images), logits)
    assert result.init_digest == weights_digest(trained["state"])
    assert train(TrainConfig(epochs=1, seed=9)).init_digest is None  # scratch
    assert result.metrics()["init"] == cfg.init


def test_given_weights_override_the_file_and_scratch_refuses_them(trained):
    cfg = TrainConfig(init="anything that is not read", epochs=1, schedule=None)
    assert train(cfg, initial=trained["state"]).init_digest == weights_digest(
        trained["state"])
    with pytest.raises(ValueError, match="init weights were given, but the config's "
                                         "init is 'scratch'"):
        train(TrainConfig(epochs=1), initial=trained["state"])


def test_weights_that_do_not_fit_are_refused_naming_the_first_tensor(trained):
    state = trained["state"]
    with pytest.raises(ValueError, match=r"tensor 'features.0.weight' has shape \(32, 1, 3, "
                                         r"3\), the model's \(16, 1, 3, 3\)"):
        fit_weights(ConvNet(10, 1, width=0.5), state, "init 'x'")
    missing = {k: v for k, v in state.items() if k != "classifier.bias"}
    with pytest.raises(ValueError, match="it has no tensor 'classifier.bias'"):
        fit_weights(ConvNet(10, 1), missing, "init 'x'")
    with pytest.raises(ValueError, match="it has a tensor 'extra' the model does not"):
        fit_weights(ConvNet(10, 1), {**state, "extra": torch.zeros(1)}, "init 'x'")


def test_a_file_that_is_not_weights_is_refused_without_running_its_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    (tmp_path / "pickled.pt").write_bytes(pickle.dumps(Payload()))
    torch.save({"weights": [1, 2]}, tmp_path / "lists.pt")
    (tmp_path / "text.safetensors").write_text("not weights")
    (tmp_path / "folder").mkdir()
    for name, message in [("pickled.pt", "is not a weights file torch.load reads with "
                                         "weights_only=True"),
                          ("lists.pt", "its entry 'weights' is a list, not a tensor"),
                          ("text.safetensors", "is not a safetensors file"),
                          ("folder", "is a folder but not one this project saved"),
                          ("missing.pt", "no such file or folder")]:
        with pytest.raises(ValueError, match=message):
            read_weights(tmp_path / name)
    assert not (tmp_path / "ran").exists()


def test_written_weights_read_back_exactly(trained, tmp_path):
    path = write_weights(trained["state"], tmp_path / "kept" / "w.safetensors")
    assert weights_digest(read_weights(path)) == weights_digest(trained["state"])


@pytest.mark.slow  # a subprocess
def test_the_train_cli_starts_from_a_file_and_refuses_one_that_does_not_fit(trained,
                                                                            tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "oneprune", "--quiet", "--epochs", "1",
                               *args], capture_output=True, text=True, cwd=tmp_path,
                              timeout=120)

    done = cli("--init", str(trained["folder"] / "model.pt"), "--out", "run")
    assert done.returncode == 0, done.stderr
    assert '"init_digest"' in (tmp_path / "run" / "metrics.json").read_text()
    refused = cli("--init", str(trained["folder"] / "model.pt"), "--width", "0.5", "--out",
                  "refused")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "does not fit the model: tensor 'features.0.weight'" in refused.stderr
    assert not (tmp_path / "refused" / "metrics.json").exists()
