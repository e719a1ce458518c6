"""Models a study logged, read back from MLflow: a source that is a folder or an MLflow
model URI (`models:/name/1`, `models:/name@alias`, `runs:/<run id>/<name>`), as the folder
`oneprune.saving.save_pruned` wrote (its files are the logged model's `extra_files`).

`oneprune-export` exports such a source; a study's `init` starts from one, its `teacher`
may be one (`given_weights`). MLflow is imported only for a URI (it is slow to import).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from oneprune._validate import first_line
from oneprune.starts import read_weights
from search.environment import environment

URI_SCHEMES = ("models:/", "runs:/")


def is_model_uri(source: str) -> bool:
    return source.startswith(URI_SCHEMES)


@contextlib.contextmanager
def saved_folder(source: str, tracking_uri: str) -> Iterator[Path]:
    """The `save_pruned` folder of `source`: itself, or the files a study logged with its
    model (downloaded from MLflow at `tracking_uri`); `ValueError` (one line) when there is
    none."""
    if not is_model_uri(source):
        yield Path(source)
        return
    import mlflow

    with tempfile.TemporaryDirectory() as scratch:
        try:
            with environment(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):  # no bar per file
                folder = mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=scratch, tracking_uri=tracking_uri)
        except Exception as error:  # MLflow raises many kinds: not found, store, network
            reason = first_line(error)
            raise ValueError(f"cannot read {source} from {tracking_uri}: {reason}") from None
        files = Path(folder) / "extra_files"
        if not files.is_dir():
            raise ValueError(f"{source} is not a model a oneprune study logged (it has no "
                             f"extra_files/config.json)")
        yield files


def given_weights(source: str, tracking_uri: str, role: str = "init",
                  ) -> Mapping[str, torch.Tensor]:
    """The weights a study's `init` (or `teacher`: the `role`) names: a weights file or a
    saved folder (`oneprune.starts.read_weights`), or a model a study logged (an MLflow
    model URI, read from `tracking_uri`); `ValueError` (one line) when there are none."""
    with saved_folder(source, tracking_uri) as folder:
        return read_weights(folder, role)
