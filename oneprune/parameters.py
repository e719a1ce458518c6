"""A tunable parameter of a pluggable kind, declared once: its type, the values it may take,
its default search range and what it means.

Schedule families (`oneprune.schedules`) and allocations (`oneprune.allocation`) are frozen
dataclasses whose fields are declared with `parameter(...)`. The `Parameter` in a field's
metadata checks the value when an instance is made (`check_fields`), gives the default
bounds a study searches it in, its type (an integer is suggested as one) and its help (the
command line's and the key reference's). So a new parameter is one field, and everything
that reads parameters (validation, search spaces, flags, docs) follows.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Ramp:
    ...     power: float = parameter(3.0, help="exponent of the ramp", limits={"low": 0.0},
    ...                              bounds=(1.0, 5.0))
    ...     def __post_init__(self):
    ...         check_fields(self)
    >>> Ramp(power=2).power, parameters_of(Ramp)["power"].bounds
    (2.0, (1.0, 5.0))
    >>> Ramp(power=-1)
    Traceback (most recent call last):
    ...
    ValueError: Ramp.power must be in [0, inf), got -1.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from oneprune import _validate

METADATA_KEY = "oneprune.parameter"


@dataclass(frozen=True)
class Parameter:
    """How one parameter is checked, searched and described.

    `kind` is `float` or `int` (checked by `_validate.real` / `.integer` with `limits`, their
    keyword arguments). `bounds` is the default search range `(low, high)`; a single number
    is a search option that takes no range (such as a ramp's `min_length`); None: never
    searched. `help` says what it is.
    """

    kind: type
    help: str
    limits: Mapping[str, Any] = field(default_factory=dict)
    bounds: tuple[float, float] | float | None = None

    def check(self, key: str, value: Any) -> float | int:
        """`value` as this parameter's type if it is within `limits`; else `ValueError`
        naming `key` and the allowed range."""
        if self.kind is int:
            return _validate.integer(key, value, **self.limits)
        return _validate.real(key, value, **self.limits)

    @property
    def searched(self) -> bool:
        """Whether a study searches it over a range by default."""
        return isinstance(self.bounds, tuple)


def parameter(default: Any = dataclasses.MISSING, *, help: str, kind: type = float,
              limits: Mapping[str, Any] | None = None,
              bounds: tuple[float, float] | float | None = None,
              kw_only: bool = False) -> Any:
    """A dataclass field declared with its `Parameter` (see the module docstring)."""
    spec = Parameter(kind, help, MappingProxyType(dict(limits or {})), bounds)
    return field(default=default, kw_only=kw_only, metadata={METADATA_KEY: spec})


def parameters_of(cls: type) -> dict[str, Parameter]:
    """Every field of the dataclass `cls` declared with `parameter`, in declaration order."""
    return {f.name: f.metadata[METADATA_KEY] for f in dataclasses.fields(cls)
            if METADATA_KEY in f.metadata}


def check_fields(instance: Any) -> None:
    """Check every parameter field of a frozen dataclass instance and store it as its
    `Parameter` normalises it (call from `__post_init__`); `ValueError` names
    `<Class>.<field>`."""
    for name, spec in parameters_of(type(instance)).items():
        value = spec.check(f"{type(instance).__name__}.{name}", getattr(instance, name))
        object.__setattr__(instance, name, value)


def register(registry: dict[str, type], kind: str, name: str | None, cls: type) -> None:
    """Enter the class `cls` in `registry` as `name` (a plug-in's `__init_subclass__`; None:
    an intermediate base, not entered). A name another class holds is refused; the same
    class defined again (its module reloaded) takes its place."""
    if name is None:
        return
    known = registry.get(name)
    where = f"{cls.__module__}.{cls.__qualname__}"
    if known is not None and f"{known.__module__}.{known.__qualname__}" != where:
        raise ValueError(f"{kind} {name!r} is defined twice: by {known.__module__}."
                         f"{known.__qualname__} and {where}")
    registry[name] = cls
