"""`oneprune-export`: a saved folder or a registered model to pt2 and ONNX files that run
without this project; bad sources get one line and exit 2."""

import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from mlflow.tracking import MlflowClient

from oneprune.config import TrainConfig
from oneprune.data import load_dataset
from oneprune.saving import save_pruned
from oneprune.schedules import OneCycle
from oneprune.train import train
from search.export_command import main
from search.tracking.registry import log_final_model, register_family


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A filter-pruned convnet trained on digits and saved as `--out` saves it."""
    folder = tmp_path_factory.mktemp("saved")
    data = load_dataset("digits")
    result = train(TrainConfig(epochs=2, lr_max=1e-2, device="cpu", granularity="filter",
                               schedule=OneCycle(0.5)), data=data)
    save_pruned(result, folder / "run")
    return {"folder": folder / "run", "data": data, "result": result}


def images(data):
    return data.test.images.float() / 255.0


def test_a_saved_folder_exports_slim_pt2_and_onnx_that_predict_alike(saved, tmp_path,
                                                                      capsys):
    assert main([str(saved["folder"]), "--out", str(tmp_path / "out"), "--slim",
                 "--onnx"]) == 0
    printed = capsys.readouterr().out
    assert "filters removed" in printed and "onnxruntime agrees with torch: 8/8" in printed
    program = torch.export.load(tmp_path / "out" / "model.pt2").module()
    with torch.no_grad():
        logits = program(images(saved["data"]))
    predictions = logits.argmax(1)
    assert int((predictions == saved["data"].test.labels).sum()) == round(
        saved["result"].test_acc * len(saved["data"].test))
    assert not (tmp_path / "out" / "model.onnx.data").exists()  # one file, weights inside
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"images": images(saved["data"]).numpy()})[0]
    assert np.array_equal(onnx_logits.argmax(1), predictions.numpy())
    rows = (tmp_path / "out" / "layers.csv").read_text().splitlines()
    assert rows[0] == ("layer,shape,weights,sparsity,filters,filters_masked,filters_removed,"
                       "slim_shape") and len(rows) == 6  # four convolutions and the head
    masked = tmp_path / "masked"
    assert main([str(saved["folder"]), "--out", str(masked)]) == 0
    assert (masked / "model.pt2").stat().st_size > (tmp_path / "out" / "model.pt2").stat(
    ).st_size


def test_a_registered_model_exports_by_its_uri(saved, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # MLflow puts a sqlite store's artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("study")).info.run_id
    log_final_model(uri, run, saved["folder"], name="agp-seed1",
                    example=images(saved["data"])[:2].numpy())
    register_family(uri, "study", "agp", run, description="d", tags={})
    capsys.readouterr()
    assert main(["models:/study.agp/1", "--out", str(tmp_path / "out"), "--slim",
                 "--tracking-uri", uri]) == 0
    assert capsys.readouterr().err == ""  # no download bar: the output is the summary
    program = torch.export.load(tmp_path / "out" / "model.pt2").module()
    with torch.no_grad():
        predictions = program(images(saved["data"])).argmax(1)
    assert int((predictions == saved["data"].test.labels).sum()) == round(
        saved["result"].test_acc * len(saved["data"].test))


@pytest.mark.slow  # a subprocess
@pytest.mark.parametrize(("source", "expected"), [
    ("models:/nothing.here/1", "cannot read models:/nothing.here/1 from sqlite:///"),
    ("{tmp}", "is not a saved pruned model"),
])
def test_a_bad_source_gets_one_line_and_exit_2(tmp_path, source, expected):
    done = subprocess.run(
        [sys.executable, "-m", "search.export_command", source.format(tmp=tmp_path), "--out",
         str(tmp_path / "out"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("oneprune-export: error: ") and expected in done.stderr
