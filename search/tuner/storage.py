"""The study's storage path: a local folder or a URI (s3://... on a multi-node cluster,
where every node must reach it), read and written through pyarrow's filesystems, as Ray
Tune does.

Under `<storage>/<experiment>`: Tune's state and trials, the Ray Train runs of
distributed trials (`train/<trial id>`), the trained models final runs hand to the
driver (`models/<trial id>`, deleted once logged to MLflow), and the weights runs start
from or distil from (`starts/`: the given weights, the teacher's, and the dense reference's
of each seed where arms start or distil from it; deleted once the study has its verdict).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow
import pyarrow.fs

from search.experiment.schema import ConfigError


def join(storage_path: str, *names: str) -> str:
    """`storage_path/name/...` for a local folder or a URI."""
    return "/".join([storage_path.rstrip("/"), *names])


def tune_path(storage_path: str, experiment_name: str) -> str:
    """Where an experiment's Tuner keeps its state."""
    return join(storage_path, experiment_name)


@dataclass(frozen=True)
class StudyFolders:
    """An experiment's folders under the storage path: its Tuner's state (`tune`), the Ray
    Train runs of distributed trials (`train`), the models final runs hand to the driver
    (`models`) and the weights runs start from (`starts`). Every trial gets it."""

    tune: str

    @classmethod
    def of(cls, storage_path: str, experiment_name: str) -> StudyFolders:
        return cls(tune_path(storage_path, experiment_name))

    @property
    def train(self) -> str:
        return join(self.tune, "train")

    @property
    def models(self) -> str:
        return join(self.tune, "models")

    @property
    def starts(self) -> str:
        return join(self.tune, "starts")

    @property
    def given_weights(self) -> str:
        """Where the study keeps the weights it is given (`init`), for every run and resume."""
        return join(self.starts, "given.safetensors")

    @property
    def teacher_weights(self) -> str:
        """Where the study keeps the weights `teacher` names, for every run and resume."""
        return join(self.starts, "teacher.safetensors")

    def dense_weights(self, sparsity: float, seed: int) -> str:
        """Where the dense reference of the study at `sparsity` keeps its trained weights of
        `seed`, for the runs of arms that start or distil from `dense` with that seed."""
        return join(self.starts, f"dense-s{sparsity:g}-seed{seed}.safetensors")


def delete(path: str) -> None:
    """Delete the folder `path` (a local path or a URI); gone already is fine."""
    filesystem, inner = pyarrow.fs.FileSystem.from_uri(path)
    with contextlib.suppress(FileNotFoundError):
        filesystem.delete_dir(inner)


def exists(path: str) -> bool:
    filesystem, inner = pyarrow.fs.FileSystem.from_uri(path)
    return filesystem.get_file_info(inner).type != pyarrow.fs.FileType.NotFound


def has_tune_state(path: str) -> bool:
    """Whether Tune wrote an experiment state under `path` (a Tuner killed before its first
    snapshot leaves only `tuner.pkl`, which `Tuner.restore` cannot resume)."""
    filesystem, inner = pyarrow.fs.FileSystem.from_uri(path)
    found = filesystem.get_file_info(pyarrow.fs.FileSelector(inner, allow_not_found=True))
    return any(info.base_name.startswith("experiment_state-") for info in found)


def upload(folder: str | os.PathLike, path: str) -> None:
    """Copy the local `folder`'s files to `path` (replacing what is there)."""
    delete(path)
    filesystem, inner = pyarrow.fs.FileSystem.from_uri(path)
    filesystem.create_dir(inner)
    pyarrow.fs.copy_files(str(Path(folder).resolve()), inner,
                          source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=filesystem)


def upload_file(local: str | os.PathLike, path: str) -> None:
    """Copy the local file `local` to `path` (a local path or a URI)."""
    filesystem, inner = pyarrow.fs.FileSystem.from_uri(path)
    filesystem.create_dir(inner.rpartition("/")[0])
    pyarrow.fs.copy_files(str(Path(local).resolve()), inner,
                          source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=filesystem)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """`path` (a folder or a file) as a local one: itself if it is, else a temporary
    download."""
    filesystem, inner = pyarrow.fs.FileSystem.from_uri(path)
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        yield inner
        return
    with tempfile.TemporaryDirectory() as folder:
        local = folder
        if filesystem.get_file_info(inner).type == pyarrow.fs.FileType.File:
            local = str(Path(folder) / inner.rpartition("/")[2])
        pyarrow.fs.copy_files(inner, local, source_filesystem=filesystem,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
        yield local


def writable(storage: str) -> str:
    """`storage` (a folder, made absolute, or a URI) once a probe file was written and
    removed there; `ConfigError` (one line) if it cannot be, before any trial starts."""
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(storage)
        filesystem.create_dir(path)
        probe = f"{path.rstrip('/')}/.oneprune-write-check-{os.getpid()}"
        with filesystem.open_output_stream(probe) as stream:
            stream.write(b"ok")
        filesystem.delete_file(probe)
    except (OSError, pyarrow.ArrowException) as error:
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise ConfigError(f"--storage-path {storage} is not writable: {reason}") from None
    return storage
