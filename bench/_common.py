"""What every benchmark shares: the machine it ran on and the JSON result file (their
parser is `oneprune.cli.OneLineParser`, one-line errors like every command's)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """When and where a benchmark ran (goes into every result file)."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu_name(), "cpu_cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__}


def write_json(path: Path | None, result: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")


def json_path(value: str) -> Path:
    """argparse type of `--json`: a file that can be written, checked before the run (an
    hour's measurement must not be lost to a typo)."""
    path = Path(value)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write {value}: {error.strerror}") from None
    return path
