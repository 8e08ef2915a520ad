"""Resource gauges for ``/metrics``, read from the latest snapshot at scrape time.

:func:`register_resource_gauges` exports ``dualtrack_cpu_usage_ratio``,
memory, per-GPU, battery and per-sensor temperature gauges of anything with
``snapshot() -> Optional[ResourceSnapshot]``: the :class:`~.monitor.ResourceMonitor`
registers itself, the simulator's machine goes through the same function.
Nothing is read per scrape but the snapshot, and a value absent from it is
absent from the exposition (no series), never ``0``.
"""

from __future__ import annotations

from typing import Iterator, Optional, Protocol, Tuple

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from .readings import ResourceSnapshot


class SnapshotSource(Protocol):
    """Anything that holds the latest reading of a machine."""

    def snapshot(self) -> Optional[ResourceSnapshot]: ...


def register_resource_gauges(registry: CollectorRegistry, source: SnapshotSource) -> None:
    """Export the resource gauges of ``source``'s latest snapshot in ``registry``.

    Registering a second source with the same registry raises ``ValueError``
    (duplicate series names): one machine per registry."""
    registry.register(_ResourceGauges(source))


class _ResourceGauges:
    """Resource gauges read from the latest snapshot at scrape time; absent stays absent."""

    _GPU_LABELS = ("gpu", "name")

    def __init__(self, source: SnapshotSource) -> None:
        self._source = source

    def describe(self) -> Iterator[Metric]:
        # Lets the registry reject a second source registering the same names.
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        snap = self._source.snapshot()
        if snap is None:
            return iter(())
        return self._families(snap)

    def _families(self, snap: Optional[ResourceSnapshot]) -> Iterator[Metric]:
        def gauge(name: str, doc: str, value: Optional[float], labels: Tuple[str, ...] = ()) -> Iterator[Metric]:
            if snap is None:
                yield GaugeMetricFamily(name, doc, labels=list(labels) or None)
            elif value is not None:
                yield GaugeMetricFamily(name, doc, value=value)

        s = snap
        yield from gauge("dualtrack_cpu_usage_ratio", "System-wide CPU utilisation, 0..1.",
                         s.cpu_ratio if s is not None else None)
        yield from gauge("dualtrack_process_cpu_usage_ratio",
                         "CPU used by this process and the monitored pids, 0..1 of the whole machine.",
                         s.process_cpu_ratio if s is not None else None)
        yield from gauge("dualtrack_memory_used_bytes", "System memory in use (total minus available).",
                         s.memory_used_bytes if s is not None else None)
        yield from gauge("dualtrack_memory_total_bytes", "System memory installed.",
                         s.memory_total_bytes if s is not None else None)
        yield from gauge("dualtrack_process_memory_bytes",
                         "Resident memory of this process and the monitored pids.",
                         s.process_memory_bytes if s is not None else None)
        yield from gauge("dualtrack_resource_reading_local_calls",
                         "The router's local model calls in flight when these resource gauges were read "
                         "(memory against local load is fitted on pairs of the same moment).",
                         s.local_calls_in_flight if s is not None else None)

        gpu_families = (
            ("dualtrack_gpu_utilization_ratio", "GPU utilisation reported by NVML, 0..1.", "utilization_ratio"),
            ("dualtrack_gpu_memory_used_bytes",
             "GPU memory in use; excludes driver-reserved memory where the driver reports it apart.",
             "memory_used_bytes"),
            ("dualtrack_gpu_memory_reserved_bytes",
             "GPU memory reserved by the driver and firmware (NVML v2 memory info; absent with older drivers).",
             "memory_reserved_bytes"),
            ("dualtrack_gpu_memory_total_bytes", "GPU memory installed.", "memory_total_bytes"),
            ("dualtrack_gpu_temperature_celsius", "GPU core temperature.", "temperature_celsius"),
            ("dualtrack_gpu_power_watts", "GPU power draw.", "power_watts"),
        )
        for name, doc, attr in gpu_families:
            if s is None:
                yield GaugeMetricFamily(name, doc, labels=list(self._GPU_LABELS))
                continue
            family = GaugeMetricFamily(name, doc, labels=list(self._GPU_LABELS))
            for gpu in s.gpus:
                value = getattr(gpu, attr)
                if value is not None:
                    family.add_metric([str(gpu.index), gpu.name], value)
            if family.samples:
                yield family

        battery = s.battery if s is not None else None
        yield from gauge("dualtrack_battery_ratio", "Battery charge, 0..1.",
                         battery.ratio if battery is not None else None)
        plugged = battery.power_plugged if battery is not None else None
        yield from gauge("dualtrack_battery_power_plugged", "1 when on mains power, 0 when on battery.",
                         None if plugged is None else float(plugged))
        yield from gauge("dualtrack_battery_seconds_left", "Estimated battery time left while discharging.",
                         battery.seconds_left if battery is not None else None)

        if s is None:
            yield GaugeMetricFamily("dualtrack_temperature_celsius",
                                    "Temperature per sensor chip (package sensor where there is one).",
                                    labels=["sensor"])
        elif s.temperatures:
            family = GaugeMetricFamily("dualtrack_temperature_celsius",
                                       "Temperature per sensor chip (package sensor where there is one).",
                                       labels=["sensor"])
            for sensor, celsius in s.temperatures.items():
                family.add_metric([sensor], celsius)
            yield family
