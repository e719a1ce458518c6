"""Test settings and fixtures shared by the whole suite."""

import gc
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import settings
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# Torch's first calls are slow to warm up; hypothesis' per-example deadline would flake.
settings.register_profile("oneprune", deadline=None, max_examples=100)
settings.load_profile("oneprune")


# -- real torch.distributed: gloo process groups of spawned processes ----------------------


def _distributed_entry(rank, worker, world_size, store, out):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world_size)
    try:
        result = worker(rank)
        if rank == 0:
            torch.save(result, out)
    finally:
        # A DDP module sits in reference cycles: left to the interpreter's exit, it is
        # freed after the process group, and the process aborted there ("terminate called
        # without an active exception", SIGABRT; 1 run in 12 to 50 of test_pruning_ddp).
        gc.collect()
        dist.destroy_process_group()


@pytest.fixture
def run_distributed(tmp_path):
    """`run_distributed(worker, world_size=2)`: run the module-level function `worker(rank)`
    in a gloo process group of spawned processes; returns what rank 0 returned (tensors,
    plain containers)."""
    def run(worker, world_size=2):
        out = tmp_path / "rank0.pt"
        mp.spawn(_distributed_entry, nprocs=world_size,
                 args=(worker, world_size, str(tmp_path / "store"), str(out)))
        return torch.load(out, weights_only=True)
    return run


# -- small dataset files in the real on-disk formats, read through torchvision's loaders --


def write_cifar(root, name="cifar10", per_class_train=12, per_class_test=4, classes=None):
    """CIFAR-10 / CIFAR-100 python-pickle batches (the layout of the official tarballs).

    Each class gets its own mean colour, so a model can learn them."""
    rng = np.random.default_rng(0)
    classes = classes or (10 if name == "cifar10" else 100)

    def images_and_labels(per_class):
        labels = np.repeat(np.arange(classes), per_class)
        rng.shuffle(labels)
        colours = (labels[:, None] * 97 % 256).astype(np.int16)
        noise = rng.integers(-30, 31, size=(len(labels), 3072))
        data = np.clip(colours + noise, 0, 255).astype(np.uint8)  # rows: R plane, G, B
        return data, labels.tolist()

    def dump(path, entry):
        with open(path, "wb") as f:
            pickle.dump(entry, f)

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i in range(1, 6):
            data, labels = images_and_labels(per_class_train // 5 or 1)
            dump(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5",
                                              "data": data, "labels": labels,
                                              "filenames": [f"{j}.png" for j in labels]})
        data, labels = images_and_labels(per_class_test)
        dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": data,
                                     "labels": labels, "filenames": []})
        dump(folder / "batches.meta", {"label_names": [f"class{c}" for c in range(classes)],
                                       "num_cases_per_batch": 10000, "num_vis": 3072})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for split, per_class in (("train", per_class_train), ("test", per_class_test)):
            data, labels = images_and_labels(per_class)
            dump(folder / split, {"data": data, "fine_labels": labels,
                                  "coarse_labels": [c // 5 for c in labels], "filenames": []})
        dump(folder / "meta", {"fine_label_names": [f"class{c}" for c in range(classes)],
                               "coarse_label_names": [f"super{c}" for c in range(20)]})
    return root


def write_caltech101(root, categories=3, per_category=10):
    """The Caltech-101 folder layout: 101_ObjectCategories/<category>/image_NNNN.jpg, with
    the BACKGROUND_Google clutter class, JPEGs of mixed sizes and grey-scale ones."""
    rng = np.random.default_rng(1)
    base = root / "caltech101" / "101_ObjectCategories"
    for category in ["BACKGROUND_Google"] + [f"category_{c}" for c in range(categories)]:
        (base / category).mkdir(parents=True)
        for i in range(1, per_category + 1):
            height, width = rng.integers(40, 120, size=2)
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if i % 4 == 0:
                image = image.convert("L")
            image.save(base / category / f"image_{i:04d}.jpg")
    return root


def write_image_folder(root, classes=("ant", "bee", "cat"), per_class=8, test_per_class=3,
                       size=(24, 40)):
    """torchvision's ImageFolder layout, train/<class>/ and (test_per_class > 0) test/
    <class>/, as a user's folder looks: JPEGs and PNGs of odd sizes, a greyscale and an
    RGBA (palette, alpha) image per class. Each image is filled with its class's colour
    plus noise, so a model can learn it."""
    rng = np.random.default_rng(2)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for label, name in enumerate(classes):
            if count == 0:
                continue
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                height, width = (int(v) for v in rng.integers(*size, size=2))
                colour = np.array([(label * 97) % 256, (label * 57 + 80) % 256, 200 - label * 60])
                pixels = np.clip(colour + rng.normal(0, 25, (height, width, 3)), 0, 255)
                image = Image.fromarray(pixels.astype(np.uint8))
                if i == 1:
                    image = image.convert("L")
                if i == 2:
                    image = image.convert("RGBA")
                image.save(folder / f"{i:03d}.{'png' if i % 2 or i == 2 else 'jpg'}")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def cifar10_dir(tmp_path):
    return write_cifar(tmp_path / "data", "cifar10")


@pytest.fixture
def caltech_dir(tmp_path):
    return write_caltech101(tmp_path / "data")


@pytest.fixture
def cifar100_dir(tmp_path):
    return write_cifar(tmp_path / "data", "cifar100")


# -- a user's own model code, importable as if on PYTHONPATH -----------------------------


@pytest.fixture
def user_code_folder(tmp_path, monkeypatch):
    """`user_code_folder(name, source)`: write the module `name` into a folder of its own
    on sys.path and return the folder; the module is forgotten after the test."""
    folder = tmp_path / "usercode"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    written = []

    def write(name, source):
        (folder / f"{name}.py").write_text(source)
        written.append(name)
        return folder
    yield write
    for name in written:
        sys.modules.pop(name, None)


# -- a real two-node Ray cluster on this machine, shared by the search service's tests -----


@pytest.fixture(scope="session")
def ray_cluster():
    """A Ray cluster of two nodes (a head and a worker raylet) of 1 CPU each, started on
    this machine for the session and joined by this process: trials, Train workers and
    objects really cross nodes. Token auth is off so that another driver process can join
    by the address, which is yielded. (Never a bare `ray.init()`: it attaches to any
    cluster already running.)"""
    import os

    import ray
    from ray.cluster_utils import Cluster

    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()
        if previous is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous


@pytest.fixture
def tune_results():
    """`tune_results(folder)`: every trial's reported rows (with its config) under a Tuner's
    folder, by trial folder."""
    def read(folder):
        return {path.parent.name: [json.loads(line) for line in path.read_text().splitlines()]
                for path in folder.glob("*/result.json")}
    return read


# -- the search service's driver in another process, and what it left in MLflow -----------


def _driver_env(extra):
    """The environment of a driver process: token auth off, so it can join the session's
    cluster (`ray_cluster`) by its address."""
    return {**os.environ, "RAY_AUTH_MODE": "disabled", **(extra or {})}


def _search_command(args):
    return [sys.executable, str(ROOT / "search" / "run.py"), *map(str, args)]


def run_search(*args, cwd, timeout=120, env=None):
    """`python search/run.py ARGS` in another process, run to its end in `cwd`; returns the
    finished process with its stdout and stderr as text. `env`: more variables."""
    return subprocess.run(_search_command(args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=_driver_env(env))


def start_search(*args, log, env=None):
    """`python search/run.py ARGS` started in another process (stdout and stderr to the
    open file `log`, unbuffered); returns the running `subprocess.Popen`."""
    return subprocess.Popen(_search_command(args), stdout=log, stderr=subprocess.STDOUT,
                            env=_driver_env({"PYTHONUNBUFFERED": "1", **(env or {})}))


def runs_by_role(uri, experiment_name):
    """The MLflow client of `uri` and the runs of its experiment `experiment_name`, by
    their `oneprune.role` tag (family, trial, final, comparison)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    by_role = {}
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        by_role.setdefault(run.data.tags["oneprune.role"], []).append(run)
    return client, by_role
