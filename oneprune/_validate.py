"""Argument checks shared by the library: one `ValueError` naming the field and its range."""

from __future__ import annotations

import math
import numbers

# Limits shared by every entry point that takes these arguments (keyword arguments of
# `real` / `integer`), so a config is refused up front exactly when its run would be.
SEED = {"low": 0, "high": 2**32 - 1}
WIDTH = {"low": 0.0, "high": 4.0, "low_open": True}
VAL_FRACTION = {"low": 0.0, "high": 0.5, "low_open": True}
IMAGE_SIZE = {"low": 8, "high": 1024}


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message (its type's name if it has none): how a one-line
    refusal quotes an exception from torch, MLflow, Optuna or a user's code."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def real(field: str, value, *, low: float = -math.inf, high: float = math.inf,
         low_open: bool = False, high_open: bool = False) -> float:
    """Return `value` as a float if it is a finite real number in the given interval.

    Raises `ValueError` naming `field` and the allowed interval otherwise (bools, strings,
    NaN and infinities are refused).
    """
    left = "(" if low_open or low == -math.inf else "["
    right = ")" if high_open or high == math.inf else "]"
    interval = f"{left}{low:g}, {high:g}{right}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{field} must be a real number in {interval}, got {value!r}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:
        raise ValueError(f"{field} must be in {interval}, got {value!r}")
    return value


def integer(field: str, value, *, low: int, high: int | None = None) -> int:
    """Return `value` as an int if it is an integer (not a bool, not a float) in [low, high]."""
    interval = f"[{low}, {'inf' if high is None else high}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{field} must be an integer in {interval}, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        raise ValueError(f"{field} must be in {interval}, got {value!r}")
    return value


def choice(field: str, value, allowed) -> str:
    """Return `value` if it is one of `allowed`, else raise naming the allowed values."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{field} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value
