"""Distributed trials on a real two-node Ray cluster (the session fixture): a study with
`workers_per_trial: 2` runs each trial as a Ray Train `TorchTrainer` whose two DDP workers
land on the two nodes, keep identical masks, distil from the same teacher on both ranks,
resume from their checkpoint after a worker fails, and log to MLflow like single-process
trials. Its model is a user's module that
lives outside the repository and the installed packages, importable by the driver only
(PYTHONPATH): `search/run.py` ships it to both nodes through Ray's runtime environment."""

import json
import os
import subprocess

import pytest
import ray
import yaml
from testkit import ROOT
from testkit.driver import run_search, runs_by_role

pytestmark = pytest.mark.slow  # a study on the two-node Ray cluster

EPOCHS, SEEDS = 2, 2

USER_MODULE = '''
import json
import os
import sys
import time
from pathlib import Path

import ray
from torch import nn


def build(num_classes, in_channels, marker_dir):
    """A small ConvNet that leaves a note of where it was imported from, on which Ray node
    (None: not connected yet) and whether by the driver (search/run.py: its checks before
    it connects, and the final runs' models it logs)."""
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    note = {"file": __file__, "node": node, "driver": sys.argv[0].endswith("run.py")}
    Path(marker_dir, f"{os.getpid()}-{time.monotonic_ns()}.json").write_text(json.dumps(note))
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
'''


@pytest.fixture
def distributed_study(tmp_path, ray_cluster):
    code = tmp_path / "usercode"
    code.mkdir()
    (code / "ddpnet.py").write_text(USER_MODULE)
    (tmp_path / "markers").mkdir()
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump({
        "name": "ddp", "dataset": "digits", "sparsity": 0.9, "epochs": EPOCHS,
        "model": "ddpnet:build", "model_args": {"marker_dir": str(tmp_path / "markers")},
        "families": ["one_cycle"], "trials_per_family": 1, "final_seeds": SEEDS,
        "teacher": "dense", "training": {"lr_max": [3e-3, 3e-2], "distill_weight": 0.5},
        "resources": {"workers_per_trial": 2, "cpus_per_trial": 1}, "checkpoint_every": 1,
        # The one_cycle runs' workers raise after epoch 2 once: Ray Train restarts the
        # worker group from the epoch-1 checkpoint.
        "faults": {"raise_at_epoch": 2, "raise_families": ["one_cycle"]},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}}))
    return tmp_path, ["--experiment", str(path), "--storage-path", str(tmp_path / "ray"),
                      "--address", ray_cluster]


def test_a_study_with_two_workers_per_trial(distributed_study, tune_results):
    folder, args = distributed_study
    pythonpath = os.pathsep.join([str(folder / "usercode"), os.environ.get("PYTHONPATH", "")])
    done = run_search(*args, cwd=folder, timeout=600, env={"PYTHONPATH": pythonpath})
    assert done.returncode == 0, done.stderr[-3000:]

    client, by_role = runs_by_role(f"sqlite:///{folder}/mlflow.db", "ddp")
    assert {role: len(r) for role, r in by_role.items()} == {  # one_cycle, dense; the
        "family": 2, "trial": 1, "final": 2 * SEEDS, "comparison": 1, "start": 1}  # teacher
    for run in by_role["trial"] + by_role["final"]:
        assert run.info.status == "FINISHED"
        assert run.data.tags["oneprune.workers"] == "2"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, EPOCHS + 1))
    assert all(0 <= run.data.metrics["test_acc"] <= 1 for run in by_role["final"])
    # The code version, as MLflow's fluent API records it: search/run.py's git checkout.
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert {run.data.tags["mlflow.source.git.commit"] for runs in by_role.values()
                for run in runs} == {head}

    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(nodes) == 2
    # The user's module reached the workers of both nodes from Ray's runtime environment,
    # not from its own folder (which only the driver's PYTHONPATH names).
    notes = [json.loads(p.read_text()) for p in (folder / "markers").glob("*.json")]
    on_workers = [note for note in notes if not note["driver"]]
    assert {note["node"] for note in on_workers} == nodes
    assert all("runtime_resources" in note["file"] and str(folder / "usercode")
               not in note["file"] for note in on_workers)
    driver = [note for note in notes if note["driver"]]
    assert {note["file"] for note in driver} == {str(folder / "usercode" / "ddpnet.py")}
    assert any(note["node"] is None for note in driver)  # its check, before it connects
    trials = tune_results(folder / "ray" / "ddp")
    (search_rows,) = [rows for rows in trials.values() if rows[0]["config"]["part"] == "search"]
    finals = [rows for rows in trials.values() if rows[0]["config"]["part"] == "final"]
    assert len(finals) == 2 * SEEDS
    for rows in [search_rows, *finals]:
        for row in rows:
            # One DDP worker on each node, and the same masks on both ranks.
            assert set(row["rank_nodes"].split()) == nodes
            masks = row["rank_masks"].split(" ")
            assert len(masks) == 2 and len(set(masks)) == 1
            # Both ranks distil from the same teacher: the dense run of the seed (none for
            # the dense runs themselves).
            teachers = row["rank_teachers"].split(" ")
            assert len(teachers) == 2 and len(set(teachers)) == 1
            assert (teachers[0] != "") == (row["config"]["family"] == "one_cycle")
    pruned = {row["rank_masks"] for row in search_rows}
    assert len(pruned) == EPOCHS and "" not in pruned  # the masks moved with the schedule
    # The injected worker failures at epoch 2 were resumed from the epoch-1 checkpoint:
    # epoch 1 was reported once, epoch 2 by an attempt that started from it (the dense
    # runs got no fault).
    for rows in [search_rows, *finals]:
        assert [row["epoch"] for row in rows] == [1, 2]
        faulty = rows[0]["rank_masks"].strip() != ""  # pruned: one_cycle, not dense
        assert [row["resumed_from"] for row in rows] == ([0, 1] if faulty else [0, 0])
    # The finished trials' Ray Train runs and checkpoints are gone.
    assert not list((folder / "ray").rglob("checkpoint_*"))
    assert not list((folder / "ray" / "ddp" / "train").glob("*"))
