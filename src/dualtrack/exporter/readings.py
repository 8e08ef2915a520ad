"""What one reading of the machine holds: immutable snapshot types.

:class:`ResourceSnapshot` is what :class:`~dualtrack.exporter.monitor.ResourceMonitor`
(and the simulator's machine) publish; :class:`GpuReading` and
:class:`BatteryReading` are its parts. A capability the machine lacks is
``None`` / empty, never a made-up ``0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple


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
