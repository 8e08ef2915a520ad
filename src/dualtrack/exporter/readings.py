"""What one reading of the machine holds: immutable snapshot types.

:class:`ResourceSnapshot` is what :class:`~dualtrack.exporter.monitor.ResourceMonitor`
(and the simulator's machine) publish; :class:`GpuReading` and
:class:`BatteryReading` are its parts. A capability the machine lacks is
``None`` / empty, never a made-up ``0``. :class:`RecentReadings` keeps the
last ones, for what an adaptation interval's readings say beyond its last.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple


@dataclass(frozen=True)
class GpuReading:
    """One GPU through NVML. A field NVML cannot read is ``None`` (absent).

    ``memory_used_bytes`` excludes the memory the driver and firmware reserve
    whenever the driver reports that amount apart (``memory_reserved_bytes``
    set, NVML's v2 memory info); where it cannot (v1 only), used includes it
    and ``memory_reserved_bytes`` is ``None``.
    """

    index: int
    name: str
    utilization_ratio: Optional[float] = None  # 0..1
    memory_used_bytes: Optional[int] = None
    memory_total_bytes: Optional[int] = None
    temperature_celsius: Optional[float] = None
    power_watts: Optional[float] = None
    # Last, so that readings built positionally before it existed keep their meaning.
    memory_reserved_bytes: Optional[int] = None


@dataclass(frozen=True)
class BatteryReading:
    ratio: float  # charge, 0..1
    power_plugged: Optional[bool]  # None when the OS cannot tell
    seconds_left: Optional[float] = None  # None when unknown or unlimited (plugged)


@dataclass(frozen=True)
class ResourceSnapshot:
    """One reading of the machine. Absent capabilities are ``None`` / empty, never 0."""

    timestamp: float  # wall clock of the reading
    cpu_ratio: Optional[float] = None  # system-wide CPU utilisation, 0..1
    process_cpu_ratio: Optional[float] = None  # this process + monitored pids, 0..1 of the whole machine
    memory_used_bytes: Optional[int] = None  # system
    memory_total_bytes: Optional[int] = None  # system
    process_memory_bytes: Optional[int] = None  # RSS of this process + monitored pids
    gpus: Tuple[GpuReading, ...] = ()  # empty: no GPU / no driver
    battery: Optional[BatteryReading] = None  # None: no battery
    temperatures: Mapping[str, float] = field(default_factory=dict)  # sensor -> celsius
    # The router's local model calls in flight at the moment of this reading (None: the
    # monitor has no load probe). Memory follows the calls being served at a moment, so the
    # estimator pairs each memory reading with the count taken with it, not a later one.
    local_calls_in_flight: Optional[int] = None

    @property
    def gpu_memory_used_bytes(self) -> Optional[int]:
        """Memory used summed over GPUs that report it; ``None`` without a GPU."""
        used = [g.memory_used_bytes for g in self.gpus if g.memory_used_bytes is not None]
        return sum(used) if used else None

    @property
    def gpu_memory_total_bytes(self) -> Optional[int]:
        total = [g.memory_total_bytes for g in self.gpus if g.memory_total_bytes is not None]
        return sum(total) if total else None

    @property
    def gpu_utilization_ratio(self) -> Optional[float]:
        """Mean utilisation over GPUs that report it."""
        util = [g.utilization_ratio for g in self.gpus if g.utilization_ratio is not None]
        return sum(util) / len(util) if util else None


def clamp_ratio(ratio: float) -> float:
    """``ratio`` forced into 0..1: sources overshoot (rounding, counters read mid-update)."""
    return min(max(ratio, 0.0), 1.0)


class RecentReadings:
    """The latest readings, oldest first (at most ``keep``: at one a second, 17 minutes).

    The embedded adaptation reads an interval's extremes from them (memory's highest and
    lowest reading, and the local calls counted with them): the latest reading alone is one
    moment of the interval, and memory that went over its limit between two cycles (an
    immediate override then moved load off local) is missed by a reading taken after it.
    The monitor's thread adds while the adaptation reads: a lock keeps the two apart.
    """

    def __init__(self, keep: int = 1024) -> None:
        self._readings: Deque[ResourceSnapshot] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, reading: ResourceSnapshot) -> None:
        with self._lock:
            self._readings.append(reading)

    # A lock does not pickle or copy: a simulation's results, and its machine with them, cross
    # to the bench's worker processes. The copy gets a lock of its own.
    def __getstate__(self) -> Dict[str, Any]:
        with self._lock:
            return {"readings": list(self._readings), "keep": self._readings.maxlen}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._readings = deque(state["readings"], maxlen=state["keep"])
        self._lock = threading.Lock()

    def between(self, start: float, end: float) -> List[ResourceSnapshot]:
        """The readings taken after ``start`` and at or before ``end`` (wall clock seconds)."""
        with self._lock:
            return [r for r in self._readings if start < r.timestamp <= end]
