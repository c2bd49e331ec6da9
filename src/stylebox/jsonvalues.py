"""Values made fit for JSON files: JSON has no NaN or infinity, and a reader (``JSON.parse``,
a strict parser) refuses a whole manifest that holds one. Such a number becomes ``null``."""

from __future__ import annotations

import math
import numbers
from typing import Any


def not_finite(value: Any, path: str = "") -> list[str]:
    """Where in ``value`` (``loss``, ``scores[2]``) a number is NaN or infinite."""
    value = _plain(value)
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return [] if math.isfinite(float(value)) else [path or "(the value)"]
    if isinstance(value, dict):
        return [hit for key, item in value.items() for hit in not_finite(item, _join(path, key))]
    if isinstance(value, list | tuple):
        return [hit for i, item in enumerate(value) for hit in not_finite(item, f"{path}[{i}]")]
    return []


def not_json(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Where in ``value`` something is that JSON cannot hold (a set, a Path, an object), as
    ``(place, what it is)``: written with ``str()``, it reached a manifest as
    ``"<object object at 0x7f...>"`` with nothing said. numpy and torch values count as the
    numbers and lists they hold."""
    value = _plain(value)
    if value is None or isinstance(value, bool | int | float | str):
        return []
    if isinstance(value, dict):
        return [
            hit
            for key, item in value.items()
            for hit in (
                not_json(item, _join(path, key))
                if isinstance(key, str)
                else [(_join(path, key), f"a table key of type {type(key).__name__}")]
            )
        ]
    if isinstance(value, list | tuple):
        return [hit for i, item in enumerate(value) for hit in not_json(item, f"{path}[{i}]")]
    return [(path or "(the value)", f"a value of type {type(value).__name__}")]


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinite number (a Python or numpy float) as ``None``
    and every other real number that is not an integer as a Python float; numpy arrays
    and scalars (and torch tensors) as the lists and numbers they hold."""
    value = _plain(value)
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    return value


def _plain(value: Any) -> Any:
    """numpy arrays and scalars, torch tensors: Python lists and numbers (which JSON writes
    as numbers; a numpy integer or array would be written as its text)."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and not isinstance(value, list | tuple | dict | str | bytes):
        return tolist()
    return value


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)
