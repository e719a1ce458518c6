"""Helpers the test suite imports (`pytest`'s `pythonpath` puts tests/ on sys.path): small
dataset files in the real on-disk formats (`testkit.files`), real gloo process groups
(`testkit.distributed`), the search service's driver in another process and what it left
in MLflow (`testkit.driver`)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
