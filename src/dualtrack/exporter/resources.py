"""Deprecated path: the resource monitor was split into modules named for what they hold.

``from dualtrack.exporter.resources import ...`` keeps working for one
release (removed in 0.3); import from the new modules instead:

- :mod:`.readings`: ``ResourceSnapshot``, ``GpuReading``, ``BatteryReading``;
- :mod:`.monitor`: ``ResourceMonitor`` and its interval and sensor limits;
- :mod:`.nvml`: ``NvmlReader`` (NVML lifecycle and retry backoff);
- :mod:`.procfs`: the ``/proc`` fallbacks used when psutil cannot answer;
- :mod:`.read_errors`: ``RESOURCES``, the failed-read counts;
- :mod:`.resource_gauges`: ``register_resource_gauges``.
"""

from .monitor import (
    COMFORTABLE_FRACTION,
    FASTEST_FACTOR,
    FASTEST_SECONDS,
    IDLE_CPU_RATIO,
    MAX_TEMPERATURE_SENSORS,
    NEAR_LIMIT_FRACTION,
    SLOWEST_FACTOR,
    SLOWEST_SECONDS,
    ResourceMonitor,
)
from .nvml import NVML_RETRY_INITIAL_SECONDS, NVML_RETRY_MAX_SECONDS
from .read_errors import RESOURCES
from .readings import BatteryReading, GpuReading, ResourceSnapshot
from .resource_gauges import register_resource_gauges

__all__ = [
    "COMFORTABLE_FRACTION",
    "FASTEST_FACTOR",
    "FASTEST_SECONDS",
    "IDLE_CPU_RATIO",
    "MAX_TEMPERATURE_SENSORS",
    "NEAR_LIMIT_FRACTION",
    "NVML_RETRY_INITIAL_SECONDS",
    "NVML_RETRY_MAX_SECONDS",
    "RESOURCES",
    "SLOWEST_FACTOR",
    "SLOWEST_SECONDS",
    "BatteryReading",
    "GpuReading",
    "ResourceMonitor",
    "ResourceSnapshot",
    "register_resource_gauges",
]
