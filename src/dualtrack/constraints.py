"""Constraint checks: is the system within its ``ResourceConstraints``?

One place decides what "violated" means, so the optimizer's overrides, the
exported ``dualtrack_constraint_violated`` flags, ``check_constraints()``, the
embedded adapter's signals and the simulator's compliance accounting agree.
A constraint whose measurement is absent (no GPU, no battery, no
traffic) is reported with ``value=None`` and is not violated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Protocol

from .config import ResourceConstraints

MB = 1024 * 1024


class BatteryState(Protocol):
    """What the battery check reads (``exporter.readings.BatteryReading``)."""

    @property
    def ratio(self) -> float: ...
    @property
    def power_plugged(self) -> Optional[bool]: ...


class MachineState(Protocol):
    """What the machine checks read from a resource reading
    (``exporter.readings.ResourceSnapshot``, or the simulator's)."""

    @property
    def process_memory_bytes(self) -> Optional[int]: ...
    @property
    def cpu_ratio(self) -> Optional[float]: ...
    @property
    def gpu_memory_used_bytes(self) -> Optional[int]: ...
    @property
    def battery(self) -> Optional[BatteryState]: ...

#: Every constraint name, in a stable order (a bounded metric label).
CONSTRAINTS = (
    "memory", "cpu", "gpu_memory", "concurrency", "latency",
    "cost_per_request", "cost_budget", "battery", "quality",
)


@dataclass(frozen=True)
class ConstraintCheck:
    """One constraint: its measured value, its limit and whether it is violated.

    Truthy when violated, so ``if monitor.check_constraints(c)["memory"]:``
    reads as the spec's ``Dict[str, bool]``.
    """

    name: str
    violated: bool
    value: Optional[float]
    limit: Optional[float]
    unit: str

    def __bool__(self) -> bool:
        return self.violated

    def as_dict(self) -> Dict[str, object]:
        return {"violated": self.violated, "value": self.value, "limit": self.limit, "unit": self.unit}


def _over(name: str, value: Optional[float], limit: Optional[float], unit: str) -> ConstraintCheck:
    violated = value is not None and limit is not None and value > limit
    return ConstraintCheck(name, violated, value, limit, unit)


def resource_checks(constraints: ResourceConstraints,
                    snapshot: Optional[MachineState]) -> Dict[str, ConstraintCheck]:
    """Checks that need only the machine: memory, CPU, GPU memory, battery."""
    s = snapshot
    memory = s.process_memory_bytes if s is not None else None
    cpu = s.cpu_ratio if s is not None else None
    gpu_used = s.gpu_memory_used_bytes if s is not None else None
    checks = {
        "memory": _over("memory", memory, constraints.max_memory_mb * MB, "bytes"),
        "cpu": _over("cpu", cpu, constraints.max_cpu_percent / 100.0, "ratio"),
        "gpu_memory": _over("gpu_memory", gpu_used, constraints.max_gpu_memory_mb * MB, "bytes"),
    }
    battery = s.battery if s is not None else None
    threshold = constraints.battery_threshold_percent / 100.0
    if battery is None:
        checks["battery"] = ConstraintCheck("battery", False, None, threshold, "ratio")
    else:
        # Low battery only matters while discharging; plugged-in is fine.
        low = battery.ratio < threshold and battery.power_plugged is not True
        checks["battery"] = ConstraintCheck("battery", low, battery.ratio, threshold, "ratio")
    return checks


def request_checks(constraints: ResourceConstraints, *, in_flight: Optional[int],
                   latency_p95_seconds: Optional[float], cost_per_request: Optional[float],
                   cost_per_hour: Optional[float], quality_mean: Optional[float]) -> Dict[str, ConstraintCheck]:
    """Checks over the request stream: concurrency, latency, cost, quality."""
    quality_violated = quality_mean is not None and quality_mean < constraints.min_quality_score
    return {
        "concurrency": _over("concurrency", in_flight, constraints.max_concurrent_requests, "requests"),
        "latency": _over("latency", latency_p95_seconds, constraints.target_latency_ms / 1000.0, "seconds"),
        "cost_per_request": _over("cost_per_request", cost_per_request, constraints.max_cost_per_request, "dollars"),
        "cost_budget": _over("cost_budget", cost_per_hour, constraints.max_cost_per_hour, "dollars_per_hour"),
        "quality": ConstraintCheck("quality", quality_violated, quality_mean, constraints.min_quality_score, "ratio"),
    }
