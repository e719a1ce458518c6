"""Fixtures of the whole suite: hypothesis' profile, small dataset files in the real formats,
and a user's own model code on sys.path. Each tier adds its own (tests/lib, tests/service)."""

import sys

import pytest
from hypothesis import settings
from testkit.files import write_caltech101, write_cifar, write_image_folder

# Torch's first calls are slow to warm up; hypothesis' per-example deadline would flake.
settings.register_profile("oneprune", deadline=None, max_examples=100)
settings.load_profile("oneprune")


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
