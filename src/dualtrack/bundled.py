"""Where the shipped ``rules/`` and ``scenarios/`` folders are.

In a wheel they are copied into ``dualtrack/_bundled/`` (see
``pyproject.toml``); in a source checkout (editable install) they are read
from the top of the repository, so there is one copy of each file.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


def bundled_dir(name: str) -> Path:
    """The shipped folder ``name`` ("rules" or "scenarios")."""
    inside = Path(__file__).resolve().parent / "_bundled" / name
    if inside.is_dir():
        return inside
    checkout = Path(__file__).resolve().parents[2] / name
    if checkout.is_dir():
        return checkout
    raise ConfigError(f"the bundled {name}/ folder is missing from this installation")
