"""``SimulatedMachine``: the machine the simulated local model runs on.

It stands in for :class:`~dualtrack.exporter.resources.ResourceMonitor`:
the optimizer and the embedded adapter call ``snapshot()`` and get a
``ResourceSnapshot`` computed from the simulated local model at the
virtual time of the latest reading. Like the real monitor it reads on an
interval (the runner calls :meth:`sample` every ``monitor_interval``) and
``snapshot()`` returns the latest reading, so readings cost nothing per
request and the optimizer's overrides see a fresh object once per interval.

What a reading holds:

- process memory: the router plus the local model server (base + per running request);
- CPU: a base load plus a share per unit of local utilisation;
- one simulated GPU: utilisation = the local model's, memory = weights + KV cache
  per running request, temperature and power from its heat level;
- the battery (when the scenario has one): drains while unplugged, faster
  while the local model runs; charges while plugged. Below ``critical_level``
  and unplugged the OS suspends the local model (its calls fail) until the
  charge is back above it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from ..clock import Clock
from ..config import ResourceConstraints
from ..constraints import MB, ConstraintCheck, resource_checks
from ..exporter.local_server import LocalServerLoad
from ..exporter.readings import BatteryReading, GpuReading, RecentReadings, ResourceSnapshot
from .models import LocalModelSim


class SimulatedMachine:
    """A ResourceMonitor-compatible view of the simulated machine.

    ``params`` is the scenario's live parameter state (``machine`` and
    ``battery`` sections); ``local`` the simulated local model.
    """

    def __init__(self, params: Dict[str, Any], local: LocalModelSim, clock: Clock) -> None:
        self.params = params
        self.local = local
        self.clock = clock
        self._origin = clock.monotonic()
        self._snapshot: Optional[ResourceSnapshot] = None
        self._recent = RecentReadings()
        self._running = False
        self._t = 0.0
        self._busy = local.busy_seconds
        self.samples = 0
        #: Set by the optimizer, as on ``ResourceMonitor``: its local calls in flight, read with each sample.
        self.load_probe: Optional[Callable[[], Optional[int]]] = None

    # -------------------------------------------------------------- ResourceMonitor interface

    @property
    def running(self) -> bool:
        return self._running

    def start_monitoring(self) -> None:
        """No thread: the simulation samples in virtual time."""
        self._running = True

    def stop_monitoring(self, timeout: float = 5.0) -> None:
        self._running = False

    def snapshot(self) -> Optional[ResourceSnapshot]:
        return self._snapshot

    def readings_between(self, start: float, end: float) -> List[ResourceSnapshot]:
        return self._recent.between(start, end)

    def sample_now(self) -> ResourceSnapshot:
        return self.sample(self.clock.monotonic() - self._origin)

    def check_constraints(self, constraints: ResourceConstraints) -> Dict[str, ConstraintCheck]:
        return resource_checks(constraints, self._snapshot)

    def get_current_usage(self) -> Dict[str, Any]:
        snap = self._snapshot if self._snapshot is not None else self.sample_now()
        gpu = snap.gpus[0]
        return {
            "timestamp": snap.timestamp,
            "cpu_percent": snap.cpu_ratio * 100.0 if snap.cpu_ratio is not None else None,
            "process_cpu_percent": snap.process_cpu_ratio * 100.0 if snap.process_cpu_ratio is not None else None,
            "memory_used_mb": snap.memory_used_bytes / MB if snap.memory_used_bytes is not None else None,
            "memory_total_mb": snap.memory_total_bytes / MB if snap.memory_total_bytes is not None else None,
            "process_memory_mb": snap.process_memory_bytes / MB if snap.process_memory_bytes is not None else None,
            "gpus": [{
                "index": gpu.index, "name": gpu.name,
                "utilization_percent": gpu.utilization_ratio * 100.0 if gpu.utilization_ratio is not None else None,
                "memory_used_mb": gpu.memory_used_bytes / MB if gpu.memory_used_bytes is not None else None,
                "memory_total_mb": gpu.memory_total_bytes / MB if gpu.memory_total_bytes is not None else None,
                "temperature_celsius": gpu.temperature_celsius, "power_watts": gpu.power_watts,
            }],
            "battery": None if snap.battery is None else {
                "percent": snap.battery.ratio * 100.0, "power_plugged": snap.battery.power_plugged,
                "seconds_left": snap.battery.seconds_left,
            },
            "temperatures": dict(snap.temperatures),
        }

    # -------------------------------------------------------------- simulation

    @property
    def battery(self) -> Optional[Dict[str, Any]]:
        return self.params["battery"]

    def sample(self, t: float) -> ResourceSnapshot:
        """Take a reading at simulation time ``t`` (seconds since the start)."""
        local = self.local
        local.touch(t)
        dt = t - self._t
        busy = local.busy_seconds - self._busy
        self._t, self._busy = t, local.busy_seconds
        m = self.params["machine"]
        lp = local.p
        util = local.utilisation()
        battery = self.params["battery"]
        reading = None
        if battery is not None:
            if dt > 0:
                hours = dt / 3600.0
                if battery["plugged"]:
                    level = battery["level"] + battery["charge_per_hour"] * hours
                else:
                    level = battery["level"] - battery["idle_drain_per_hour"] * hours \
                        - lp["battery_drain_per_hour"] * busy / 3600.0
                battery["level"] = 0.0 if level < 0.0 else 1.0 if level > 1.0 else level
            unplugged = not battery["plugged"]
            critical = battery["critical_level"]
            # Hysteresis of one percent point, as an OS would do: resume a little above critical.
            if unplugged and battery["level"] <= critical:
                local.suspended = True
            elif local.suspended and (not unplugged or battery["level"] > critical + 0.01):
                local.suspended = False
            rate = battery["idle_drain_per_hour"] + lp["battery_drain_per_hour"] * util
            seconds_left = battery["level"] / rate * 3600.0 if unplugged and rate > 0 else None
            reading = BatteryReading(battery["level"], battery["plugged"], seconds_left)
        process_mb = m["router_memory_mb"] + local.memory_mb()
        gpu_used = local.gpu_memory_mb()
        heat = local.heat
        gpu = GpuReading(
            index=0, name="simulated-gpu", utilization_ratio=util,
            memory_used_bytes=int(gpu_used * MB), memory_total_bytes=int(lp["gpu_memory_total_mb"] * MB),
            temperature_celsius=round(40.0 + 50.0 * heat, 2), power_watts=round(25.0 + 150.0 * util, 2),
        )
        cpu = m["cpu_base"] + lp["cpu_per_utilisation"] * util
        snap = ResourceSnapshot(
            timestamp=self.clock.time(),
            cpu_ratio=cpu if cpu < 1.0 else 1.0,
            process_cpu_ratio=min(1.0, lp["cpu_per_utilisation"] * util + 0.01),
            memory_used_bytes=int((m["system_memory_used_mb"] + process_mb) * MB),
            memory_total_bytes=int(m["memory_total_mb"] * MB),
            process_memory_bytes=int(process_mb * MB),
            gpus=(gpu,),
            battery=reading,
            temperatures={"gpu": round(40.0 + 50.0 * heat, 2)},
            local_calls_in_flight=self.load_probe() if self.load_probe is not None else None,
        )
        self._snapshot = snap
        self._recent.add(snap)
        self.samples += 1
        return snap


__all__ = ["SimulatedMachine"]


#: How often the simulated local server's /metrics is read: its gauges are this old at worst.
SERVER_SCRAPE_SECONDS = 5.0


class SimulatedServerMetrics:
    """The simulated local model server's load gauges, as a scrape of its /metrics sees them.

    It stands in for :class:`~dualtrack.exporter.local_server.LocalServerScraper`
    (a vLLM-like server: queue depth, running requests, declared slots). A
    reading is taken at most every ``scrape_seconds`` (the runner calls
    :meth:`sample` on its monitor ticks) and ``reading()`` returns the latest,
    so the gauges lag the real queue by up to a scrape interval, as scraped
    gauges do.
    """

    def __init__(self, local: LocalModelSim, *, scrape_seconds: float = SERVER_SCRAPE_SECONDS) -> None:
        self.local = local
        self.scrape_seconds = scrape_seconds
        self._last: Optional[LocalServerLoad] = None
        self._at = -float("inf")

    def sample(self, t: float) -> None:
        if t - self._at < self.scrape_seconds - 1e-9:
            return
        local = self.local
        self._at = t
        self._last = LocalServerLoad("simulated", float(local.queued), float(local.active),
                                     float(local.p["concurrency"]), None, None, t)

    def reading(self) -> Optional[LocalServerLoad]:
        return self._last
