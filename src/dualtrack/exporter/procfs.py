"""Basic readings for when psutil cannot answer: ``/proc``, the load average, ``getrusage``.

Each function raises on failure, one of the ``*_ERRORS`` tuple next to it;
the monitor catches exactly those, counts the failure and leaves the field
absent. ``proc_root`` arguments let tests point the reads at a fixture
folder instead of ``/proc``.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, Optional, Tuple, Type

from .readings import clamp_ratio

try:  # not on Windows
    import resource as _resource
except ImportError:  # pragma: no cover
    _resource = None  # type: ignore[assignment]

_Errors = Tuple[Type[Exception], ...]

#: What :func:`load_average_ratio` raises (``AttributeError``: no ``os.getloadavg`` here).
LOADAVG_ERRORS: _Errors = (OSError, AttributeError)
#: What :func:`read_meminfo` and :func:`parse_meminfo` raise.
MEMINFO_ERRORS: _Errors = (OSError, ValueError)
#: What :func:`statm_rss` raises.
STATM_ERRORS: _Errors = (OSError, ValueError, IndexError)
#: What :func:`peak_rss_of_self` raises.
GETRUSAGE_ERRORS: _Errors = (OSError, ValueError, AttributeError)


def load_average_ratio() -> float:
    """The 1-minute load average per CPU, 0..1."""
    return clamp_ratio(os.getloadavg()[0] / (os.cpu_count() or 1))


def read_meminfo(proc_root: str) -> Tuple[int, int]:
    """(used, total) system memory bytes from ``<proc_root>/meminfo``."""
    return parse_meminfo(os.path.join(proc_root, "meminfo"))


def parse_meminfo(path: str) -> Tuple[int, int]:
    """(used, total) bytes from a /proc/meminfo file, used = total - available."""
    fields: Dict[str, int] = {}
    with open(path, encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[key.strip()] = int(parts[0]) * 1024  # kB
    total = fields["MemTotal"] if "MemTotal" in fields else None
    if total is None:
        raise ValueError(f"{path}: no MemTotal")
    available = fields.get("MemAvailable")
    if available is None:  # kernels before 3.14
        available = fields.get("MemFree", 0) + fields.get("Buffers", 0) + fields.get("Cached", 0)
    return total - available, total


def statm_path(proc_root: str, pid: int, own: bool) -> str:
    """The ``statm`` file of ``pid`` (``self`` for this process)."""
    return os.path.join(proc_root, "self" if own else str(pid), "statm")


def statm_rss(path: str) -> int:
    """Resident bytes from a ``statm`` file."""
    with open(path, encoding="ascii") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_of_self() -> Optional[int]:
    """Peak resident bytes of this process; ``None`` without the ``resource`` module.

    Peak, not current, RSS: an over-estimate, the safe side for a memory
    limit.
    """
    if _resource is None:
        return None
    peak = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
