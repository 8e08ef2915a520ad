"""Field validators shared by the configuration, the preferences file, the
backends and the scenario loader: one message per kind of mistake.

Each takes the field's label (``"constraints.max_memory_mb"``) and the value,
returns the value normalized (ints to floats where a float is meant) and
raises ``ValueError("<label>: <what is wrong>, got <value>")`` otherwise;
callers turn that into a ``ConfigError`` naming the file where there is one.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Optional

_LABEL_VALUE_RE = re.compile(r"^(?=.*[A-Za-z0-9])[A-Za-z0-9_-]{1,64}$")


def number(label: str, value: Any, *, lower: Optional[float] = None, upper: Optional[float] = None,
           lower_open: bool = False) -> float:
    """A finite number within ``lower..upper`` (``lower_open``: strictly above ``lower``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{label}: expected a number, got {type(value).__name__} {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float range (10**400)
        raise ValueError(f"{label}: expected a finite number, got an integer of {len(str(value))} digits") from None
    if not math.isfinite(value):
        raise ValueError(f"{label}: expected a finite number, got {value!r}")
    if lower is not None:
        if lower_open and value <= lower:
            raise ValueError(f"{label}: must be greater than {lower:g}, got {value!r}")
        if not lower_open and value < lower:
            bound = "must not be negative" if lower == 0 else f"must be at least {lower:g}"
            raise ValueError(f"{label}: {bound}, got {value!r}")
    if upper is not None and value > upper:
        raise ValueError(f"{label}: must be at most {upper:g}, got {value!r}")
    return value


def optional_number(label: str, value: Any, **bounds: Any) -> Optional[float]:
    return None if value is None else number(label, value, **bounds)


def integer(label: str, value: Any, *, minimum: int = 1) -> int:
    """An integer (a float with no fraction is accepted) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{label}: expected an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{label}: must be at least {minimum}, got {value!r}")
    return int(value)


def boolean(label: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{label}: expected true or false, got {type(value).__name__} {value!r}")
    return value


def optional_str(label: str, value: Any) -> Optional[str]:
    """A non-empty string (a ``Path`` becomes its string) or ``None``."""
    if value is None:
        return None
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{label}: expected a non-empty string or null, got {value!r}")
    return value


def label_value(label: str, value: Any) -> str:
    """A short name fit for a metric label value: letters, digits, ``_`` or ``-``, at most 64."""
    if not isinstance(value, str) or not _LABEL_VALUE_RE.match(value):
        raise ValueError(f"{label}: expected a short name of letters, digits, '_' or '-', got {value!r}")
    return value


__all__ = ["boolean", "integer", "label_value", "number", "optional_number", "optional_str"]
