"""`python -m oneprune`: a real run with --out, and bad input (one line, exit 2): in
this process through `main`, and once through the module in a subprocess."""

import json
import subprocess
import sys

import pytest
import torch

from oneprune.cli import main
from oneprune.saving import load_pruned


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "oneprune", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # trains
def test_a_run_writes_the_pruned_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--dataset", "digits", "--schedule", "agp", "--sparsity", "0.8",
                 "--power", "2", "--epochs", "2", "--lr", "0.01", "--out", str(out)]) == 0
    done = capsys.readouterr()
    assert "epoch 2/2" in done.err  # the progress bars
    summary = done.out.splitlines()[0]
    assert summary.startswith("test_acc ") and "sparsity 80.00" in summary
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert f"test_acc {metrics['test_acc']:.4f}" in summary
    loaded = load_pruned(out)
    assert loaded.config["train"]["schedule"] == {
        "family": "agp", "final_sparsity": 0.8, "start": 0.0, "end": 1.0,
        "initial_sparsity": 0.0, "power": 2.0}


@pytest.mark.slow  # a subprocess
def test_bad_input_through_the_module_is_one_line_without_traceback(tmp_path):
    done = run_cli("--dataset", "cifar10", "--data-dir", str(tmp_path / "missing"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "data_dir" in done.stderr and "does not exist" in done.stderr


@pytest.mark.parametrize("args, message", [
    (["--dataset", "mnist"], "dataset must be one of 'digits'"),
    (["--model", "alexnet"], "model must be one of 'convnet', 'resnet18', 'vgg16'"),
    (["--schedule", "exponential"], "--schedule must be one of 'one_cycle'"),
    (["--sparsity", "1.0"], "OneCycle.final_sparsity must be in [0, 1), got 1.0"),
    (["--sparsity", "-0.1"], "OneCycle.final_sparsity must be in [0, 1)"),
    (["--epochs", "0"], "epochs must be in [1, 10000], got 0"),
    (["--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
    (["--alpha", "-2"], "OneCycle.alpha must be in (0, inf), got -2.0"),
    (["--alpha", "nan"], "OneCycle.alpha must be in (0, inf), got nan"),
    (["--schedule", "agp", "--alpha", "3"], "--alpha does not apply to --schedule agp"),
    (["--schedule", "one_shot"], "--schedule one_shot needs --start"),
    (["--schedule", "none", "--start", "0.2"], "--start needs a schedule"),
    (["--start", "0.8", "--end", "0.5"], "OneCycle.start must be < end (0.5), got 0.8"),
    (["--coupling", "sync"], "coupling must be one of 'none', 'align'"),
    (["--lr", "0"], "lr_max must be in (0, 10]"),
    (["--dataset", "cifar100", "--data-dir", "/nonexistent/data"], "does not exist"),
    (["--model", "vgg16"], "model 'vgg16' needs images of at least 32x32; digits has 8x8"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("python -m oneprune")
    assert message in captured.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_unavailable_cuda_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--device", "cuda"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(
        "error: device 'cuda' requested but CUDA is not available\n")


def test_out_must_be_a_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exit_:
        main(["--epochs", "1", "--out", str(tmp_path / "file")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith("cannot be a folder here: File exists\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--epochs", "1", "--out", str(tmp_path / "file" / "run")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith("cannot be a folder here: Not a directory\n")
