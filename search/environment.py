"""Environment variables set for the duration of a `with` block (Ray Tune and MLflow read
many of their settings from the environment, some only at the moment they need them)."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def environment(**values: str):
    """Set environment variables for the duration of a `with` block."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
