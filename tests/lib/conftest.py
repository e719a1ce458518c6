"""Fixtures of the library's tests (no Ray, no MLflow)."""

import pytest

from oneprune.data import load_dataset


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits with the default split (what `TrainConfig()` trains on),
    loaded once for the tier; tests read it, never change it."""
    return load_dataset("digits")
