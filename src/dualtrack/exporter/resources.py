"""``ResourceMonitor``: the machine, read in the background.

The monitor is the only part of dualtrack that makes system calls about the
machine. A daemon thread takes a reading every interval and stores it as an
immutable :class:`ResourceSnapshot`; everything else (the optimizer, the
embedded adapter, the ``/metrics`` scrape) reads the latest snapshot, so
nothing is measured per request.

What one reading holds:

- system CPU utilisation (``psutil.cpu_percent``) and memory in use
  (``total - available``, the figure ``free`` calls "used");
- resident memory and CPU share of this process plus
  ``config.monitored_pids`` (e.g. a local model server), summed;
- per GPU through NVML (``pynvml``, from ``nvidia-ml-py``): name,
  utilisation, memory, temperature and power;
- the battery (``psutil.sensors_battery``) and one temperature per sensor
  chip (``psutil.sensors_temperatures``).

**Absent means absent.** A capability the machine lacks (no GPU, no NVIDIA
driver, no battery, no sensors) is ``None`` / empty in the snapshot and its
gauges are not exported at all, never a made-up ``0``. A field NVML reports as
not supported for a GPU is absent in the same way.

**Failures degrade, they never stop the monitor.** A psutil read that fails
falls back to a basic method: CPU from the load average, memory from
``/proc/meminfo``, process memory from ``/proc/<pid>/statm`` (then peak RSS
from ``resource.getrusage``). If the fallback fails too the field is ``None``
for that reading. Every failed attempt increments
``dualtrack_resource_read_errors_total{resource}`` and is logged once per
kind. A monitored pid that exits is dropped (counted, logged). If NVML cannot
start, or stops answering mid-run, GPUs are absent and initialisation is
retried with exponential backoff (30 s doubling to 10 min), not every sample.

**Adaptive interval.** Sampling starts at ``config.monitor_interval_seconds``.
While the machine is idle (CPU under 20 % and every resource well below its
limit) the interval doubles per reading up to 4x the base (at most 10 s);
under load or near a limit (CPU over ``max_cpu_percent``, process or GPU
memory within 10 % of its limit, battery under its threshold and
discharging) it drops at once to half the base (at least 0.1 s).

Usage::

    registry = CollectorRegistry()
    monitor = ResourceMonitor(config, registry=registry)
    monitor.start_monitoring()
    ...
    snap = monitor.snapshot()            # latest ResourceSnapshot, or None
    if snap is not None and snap.battery is not None:
        print(snap.battery.ratio)
    monitor.get_current_usage()          # the same as a plain dict
    monitor.check_constraints(config.constraints)["memory"].violated
    monitor.stop_monitoring()

Tests and the simulator inject the world: ``psutil_module=`` and ``nvml=``
take fakes (``False`` disables one), ``proc_root=`` points the ``/proc``
fallbacks at a fixture folder, and ``clock=`` drives the NVML backoff.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Set, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ..clock import SYSTEM_CLOCK, Clock
from ..config import OptimizationConfig, ResourceConstraints
from ..constraints import MB, ConstraintCheck, resource_checks

try:  # not on Windows
    import resource as _resource
except ImportError:  # pragma: no cover
    _resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: The ``resource`` label values of ``dualtrack_resource_read_errors_total``.
RESOURCES: Tuple[str, ...] = ("cpu", "memory", "process", "gpu", "battery", "temperature")

#: At most this many ``dualtrack_temperature_celsius{sensor}`` series.
MAX_TEMPERATURE_SENSORS = 16

NVML_RETRY_INITIAL_SECONDS = 30.0
NVML_RETRY_MAX_SECONDS = 600.0

IDLE_CPU_RATIO = 0.2
# "Comfortably below a limit" for the idle test; "near a limit" for the busy test.
COMFORTABLE_FRACTION = 0.5
NEAR_LIMIT_FRACTION = 0.9
SLOWEST_FACTOR, SLOWEST_SECONDS = 4.0, 10.0
FASTEST_FACTOR, FASTEST_SECONDS = 0.5, 0.1

# pynvml error codes; read from the module when it has them.
_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_ERROR_DRIVER_NOT_LOADED = 9
_NVML_ERROR_LIBRARY_NOT_FOUND = 12

_SENSOR_CHARS = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True)
class GpuReading:
    """One GPU through NVML. A field NVML cannot read is ``None`` (absent)."""

    index: int
    name: str
    utilization_ratio: Optional[float] = None  # 0..1
    memory_used_bytes: Optional[int] = None
    memory_total_bytes: Optional[int] = None
    temperature_celsius: Optional[float] = None
    power_watts: Optional[float] = None


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


@dataclass
class _Gpu:
    """An enumerated NVML device and the fields it does not support."""

    index: int
    handle: Any
    name: str
    unsupported: Set[str] = field(default_factory=set)


class _NvmlDown(Exception):
    """NVML stopped answering as a whole (not one field of one GPU)."""


class ResourceMonitor:
    """Reads CPU, memory, GPUs, battery and temperatures in a background thread.

    ``psutil_module`` and ``nvml`` default to the real ``psutil`` and
    ``pynvml`` (a missing one is treated as absent); pass a fake to test, or
    ``False`` to disable. ``registry`` receives the resource gauges, the read
    error counter and the interval gauge. ``proc_root`` is where the
    ``/proc`` fallbacks read.
    """

    #: psutil's CPU figures are differences of counters since the previous
    #: call; calls closer than this would read a meaningless 0, so the system
    #: figure falls back to the load average and a process keeps its last value.
    min_cpu_window_seconds: float = 0.05

    def __init__(
        self,
        config: OptimizationConfig,
        *,
        clock: Optional[Clock] = None,
        psutil_module: Any = None,
        nvml: Any = None,
        registry: Optional[CollectorRegistry] = None,
        proc_root: str = "/proc",
    ) -> None:
        self.config = config
        self._clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self._ps = _default_module("psutil") if psutil_module is None else (psutil_module or None)
        self._nv = _default_module("pynvml") if nvml is None else (nvml or None)
        self._proc_root = proc_root

        self._base = float(config.monitor_interval_seconds)
        self._slowest = max(self._base, min(self._base * SLOWEST_FACTOR, SLOWEST_SECONDS))
        self._fastest = min(self._base, max(self._base * FASTEST_FACTOR, FASTEST_SECONDS))
        self._interval = self._base

        self._snapshot: Optional[ResourceSnapshot] = None
        # One reading at a time: psutil's per-process CPU baselines and the
        # NVML state are not safe to share between concurrent samplers.
        self._sample_lock = threading.Lock()
        self._lifecycle_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

        self._errors: Dict[str, int] = {r: 0 for r in RESOURCES}
        self._logged: Set[Tuple[str, str]] = set()

        self._ncpu = self._cpu_count()
        # psutil keeps the system CPU baseline per calling thread (monotonic
        # time of this thread's last cpu_percent call).
        self._cpu_baselines: Dict[int, float] = {}
        self._procs: Dict[int, Any] = {}  # pid -> psutil.Process, kept for cpu_percent baselines
        self._procs_gone: Set[int] = set()
        self._proc_cpu: Dict[int, Tuple[float, Optional[float]]] = {}  # pid -> (last call, value)
        self._own_pid = os.getpid()
        # Baselines now, so the first reading from this thread is a real one.
        if self._ps is not None:
            try:
                self._ps.cpu_percent(interval=None)
                self._mark_cpu_baseline(threading.get_ident(), time.monotonic())
            except Exception:  # the first reading meets the same error and counts it
                pass
            try:
                self._process(self._own_pid)
            except Exception:  # likewise
                pass

        self._nv_ready = False
        self._nv_next_try = -math.inf
        self._nv_backoff = NVML_RETRY_INITIAL_SECONDS
        self._gpus: List[_Gpu] = []

        self._error_counter: Optional[Counter] = None
        self._interval_gauge: Optional[Gauge] = None
        if registry is not None:
            self._register(registry)

    # ------------------------------------------------------------ public

    @property
    def current_interval(self) -> float:
        """Seconds until the next background reading (adaptive)."""
        return self._interval

    @property
    def running(self) -> bool:
        """True while the background thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def read_errors(self) -> Mapping[str, int]:
        """Failed read attempts per resource since start (also exported as a counter)."""
        return MappingProxyType(dict(self._errors))

    def start_monitoring(self) -> None:
        """Start the background thread (idempotent).

        With ``config.enable_resource_monitoring`` false nothing starts;
        ``sample_now()`` still reads on demand.
        """
        with self._lifecycle_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if not self.config.enable_resource_monitoring:
                log.info("resource monitoring disabled by config; not starting the monitor thread")
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="dualtrack-resource-monitor", daemon=True)
            self._thread.start()
            log.info("resource monitor started: interval %.3gs (adaptive %.3g..%.3gs), psutil %s, NVML %s",
                     self._base, self._fastest, self._slowest,
                     "yes" if self._ps is not None else "no", "yes" if self._nv is not None else "no")

    def stop_monitoring(self, timeout: float = 5.0) -> None:
        """Stop the thread, wait for it (up to ``timeout``) and shut NVML down. Idempotent."""
        with self._lifecycle_lock:
            self._stop.set()
            thread, self._thread = self._thread, None
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)
                if thread.is_alive():
                    log.warning("resource monitor thread did not stop within %.3gs (stuck in a system call?)",
                                timeout)
            # A thread stuck in NVML holds the sample lock; do not hang with it.
            if self._sample_lock.acquire(timeout=timeout):
                try:
                    self._nvml_shutdown()
                    self._nv_next_try = -math.inf  # a later sample may start NVML again at once
                finally:
                    self._sample_lock.release()

    def sample_now(self) -> ResourceSnapshot:
        """Take a reading now, store it as the latest snapshot and return it."""
        with self._sample_lock:
            snap = self._read()
            self._snapshot = snap
            self._interval = self._next_interval(snap)
        if self._interval_gauge is not None:
            self._interval_gauge.set(self._interval)
        return snap

    def snapshot(self) -> Optional[ResourceSnapshot]:
        """The latest reading, or ``None`` before the first one."""
        return self._snapshot

    def get_current_usage(self) -> Dict[str, Any]:
        """The latest reading as a plain dict (taking one if there is none yet).

        Keys: ``timestamp``, ``cpu_percent``, ``process_cpu_percent``,
        ``memory_used_mb``, ``memory_total_mb``, ``process_memory_mb``,
        ``gpus`` (list of dicts), ``battery`` (dict or ``None``),
        ``temperatures`` (sensor -> celsius). Absent values are ``None``.
        """
        snap = self._snapshot
        if snap is None:
            snap = self.sample_now()
        return {
            "timestamp": snap.timestamp,
            "cpu_percent": _scale(snap.cpu_ratio, 100.0),
            "process_cpu_percent": _scale(snap.process_cpu_ratio, 100.0),
            "memory_used_mb": _scale(snap.memory_used_bytes, 1 / MB),
            "memory_total_mb": _scale(snap.memory_total_bytes, 1 / MB),
            "process_memory_mb": _scale(snap.process_memory_bytes, 1 / MB),
            "gpus": [
                {
                    "index": g.index,
                    "name": g.name,
                    "utilization_percent": _scale(g.utilization_ratio, 100.0),
                    "memory_used_mb": _scale(g.memory_used_bytes, 1 / MB),
                    "memory_total_mb": _scale(g.memory_total_bytes, 1 / MB),
                    "temperature_celsius": g.temperature_celsius,
                    "power_watts": g.power_watts,
                }
                for g in snap.gpus
            ],
            "battery": None if snap.battery is None else {
                "percent": snap.battery.ratio * 100.0,
                "power_plugged": snap.battery.power_plugged,
                "seconds_left": snap.battery.seconds_left,
            },
            "temperatures": dict(snap.temperatures),
        }

    def check_constraints(self, constraints: ResourceConstraints) -> Dict[str, ConstraintCheck]:
        return resource_checks(constraints, self.snapshot())

    # ------------------------------------------------------------ thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_now()
            except Exception as err:  # one bad cycle must not end monitoring
                self._log_once("monitor", err, "resource reading failed; monitoring continues")
            if self._stop.wait(self._interval):
                break

    # ------------------------------------------------------------ reading

    def _read(self) -> ResourceSnapshot:
        now = self._clock.monotonic()
        used, total = self._read_memory()
        rss, proc_cpu = self._read_processes()
        return ResourceSnapshot(
            timestamp=self._clock.time(),
            cpu_ratio=self._read_cpu(),
            process_cpu_ratio=proc_cpu,
            memory_used_bytes=used,
            memory_total_bytes=total,
            process_memory_bytes=rss,
            gpus=self._read_gpus(now),
            battery=self._read_battery(),
            temperatures=MappingProxyType(self._read_temperatures()),
        )

    def _cpu_count(self) -> int:
        if self._ps is not None:
            try:
                n = self._ps.cpu_count()
                if n:
                    return int(n)
            except Exception:  # fall through to the os module
                pass
        return os.cpu_count() or 1

    def _read_cpu(self) -> Optional[float]:
        if self._ps is not None:
            tid = threading.get_ident()
            # Real time, not self._clock: this is about the kernel counters
            # psutil diffs, which move with the real clock only.
            now = time.monotonic()
            last = self._cpu_baselines.get(tid)
            # psutil measures since this thread's previous call: the first
            # call only sets a baseline, and a call right after one has no
            # window to measure over. Both return a meaningless 0, so the
            # load average stands in (and the baseline is left to age).
            if last is None or now - last >= self.min_cpu_window_seconds:
                try:
                    percent = float(self._ps.cpu_percent(interval=None))
                except Exception as err:
                    self._count("cpu", err, "psutil.cpu_percent failed; using the load average")
                else:
                    self._mark_cpu_baseline(tid, now)
                    if last is not None:
                        return _clamp(percent / 100.0)
        try:
            return _clamp(os.getloadavg()[0] / (os.cpu_count() or 1))
        except (OSError, AttributeError) as err:
            self._count("cpu", err, "os.getloadavg failed; CPU is absent from this reading")
            return None

    def _mark_cpu_baseline(self, tid: int, now: float) -> None:
        if len(self._cpu_baselines) > 64 and tid not in self._cpu_baselines:
            self._cpu_baselines.clear()  # thread ids get reused; keep this bounded
        self._cpu_baselines[tid] = now

    def _read_memory(self) -> Tuple[Optional[int], Optional[int]]:
        if self._ps is not None:
            try:
                vm = self._ps.virtual_memory()
                # total - available, not psutil's platform-specific "used": it
                # is what the /proc fallback can compute too, and what `free` shows.
                return int(vm.total - vm.available), int(vm.total)
            except Exception as err:
                self._count("memory", err, "psutil.virtual_memory failed; reading /proc/meminfo")
        try:
            return _parse_meminfo(os.path.join(self._proc_root, "meminfo"))
        except (OSError, ValueError) as err:
            self._count("memory", err, "/proc/meminfo unreadable; memory is absent from this reading")
            return None, None

    def _process(self, pid: int) -> Any:
        """The cached psutil.Process for ``pid``, created with a CPU baseline on first use."""
        proc = self._procs.get(pid)
        if proc is None and self._ps is not None:
            proc = self._ps.Process(pid)
            self._procs[pid] = proc
            try:
                proc.cpu_percent(interval=None)  # baseline: this first value is meaningless
                self._proc_cpu[pid] = (time.monotonic(), None)
            except Exception:  # the reading will meet it again and count it
                pass
        return proc

    def _read_processes(self) -> Tuple[Optional[int], Optional[float]]:
        """RSS and CPU share of this process plus monitored pids; ``None`` if ours is unknown."""
        rss_total = 0
        cpu_total = 0.0
        own_rss: Optional[int] = None
        own_cpu: Optional[float] = None
        for pid in (self._own_pid,) + tuple(p for p in self.config.monitored_pids if p != self._own_pid):
            if pid in self._procs_gone:
                continue
            rss, cpu = self._read_process(pid)
            if pid == self._own_pid:
                own_rss, own_cpu = rss, cpu
            rss_total += rss or 0
            cpu_total += cpu or 0.0
        return (rss_total if own_rss is not None else None,
                _clamp(cpu_total / 100.0 / self._ncpu) if own_cpu is not None else None)

    def _read_process(self, pid: int) -> Tuple[Optional[int], Optional[float]]:
        rss: Optional[int] = None
        cpu: Optional[float] = None
        if self._ps is not None:
            try:
                fresh = pid not in self._procs
                proc = self._process(pid)
                try:
                    rss = int(proc.memory_info().rss)
                except Exception as err:
                    if self._is_gone(err):
                        raise
                    self._count("process", err, f"psutil could not read the memory of process {pid}; "
                                "reading /proc statm")
                if not fresh:  # a new baseline has nothing to measure yet
                    cpu = self._process_cpu(pid, proc)
            except Exception as err:
                if not self._is_gone(err):
                    raise
                # Not retried: the pid may be reused by an unrelated process.
                self._procs.pop(pid, None)
                self._proc_cpu.pop(pid, None)
                self._procs_gone.add(pid)
                self._count("process", err, f"monitored process {pid} is gone; no longer counted")
                return None, None
        if rss is None:
            rss = self._fallback_rss(pid)
        return rss, cpu

    def _process_cpu(self, pid: int, proc: Any) -> Optional[float]:
        """Percent of one CPU since the previous call; the last value if that was too recent."""
        now = time.monotonic()
        last_at, last_value = self._proc_cpu.get(pid, (None, None))
        if last_at is not None and now - last_at < self.min_cpu_window_seconds:
            return last_value
        try:
            value = float(proc.cpu_percent(interval=None))
        except Exception as err:
            if self._is_gone(err):
                raise
            self._count("process", err, f"psutil could not read the CPU time of process {pid}")
            return None
        self._proc_cpu[pid] = (now, value if last_at is not None else None)
        return value if last_at is not None else None

    def _is_gone(self, err: Exception) -> bool:
        gone = getattr(self._ps, "NoSuchProcess", None)
        return isinstance(gone, type) and isinstance(err, gone)

    def _fallback_rss(self, pid: int) -> Optional[int]:
        own = pid == self._own_pid
        statm = os.path.join(self._proc_root, "self" if own else str(pid), "statm")
        try:
            with open(statm, encoding="ascii") as f:
                resident_pages = int(f.read().split()[1])
            return resident_pages * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError) as err:
            self._count("process", err, f"{statm} unreadable")
        if own and _resource is not None:
            try:
                # Peak, not current, RSS: an over-estimate, the safe side for a memory limit.
                peak = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss
                return int(peak if sys.platform == "darwin" else peak * 1024)
            except (OSError, ValueError, AttributeError) as err:
                self._count("process", err, "resource.getrusage failed; process memory is absent")
        return None

    def _read_battery(self) -> Optional[BatteryReading]:
        read = getattr(self._ps, "sensors_battery", None)
        if read is None:
            return None
        try:
            battery = read()
        except AttributeError:  # psutil's way of saying "not on this platform"
            return None
        except Exception as err:
            self._count("battery", err, "psutil.sensors_battery failed; battery absent from this reading")
            return None
        if battery is None or battery.percent is None or not math.isfinite(battery.percent):
            return None
        plugged = battery.power_plugged if isinstance(battery.power_plugged, bool) else None
        secs = battery.secsleft
        # POWER_TIME_UNKNOWN (-1) and POWER_TIME_UNLIMITED (-2) are negative.
        seconds_left = float(secs) if secs is not None and secs >= 0 else None
        return BatteryReading(_clamp(float(battery.percent) / 100.0), plugged, seconds_left)

    def _read_temperatures(self) -> Dict[str, float]:
        read = getattr(self._ps, "sensors_temperatures", None)
        if read is None:
            return {}
        try:
            chips = read() or {}
        except Exception as err:
            self._count("temperature", err, "psutil.sensors_temperatures failed; temperatures absent")
            return {}
        temperatures: Dict[str, float] = {}
        for chip in sorted(chips):
            entries = [e for e in chips[chip] if e.current is not None and math.isfinite(e.current)]
            if not entries:
                continue
            # One series per chip keeps the label set bounded; the package
            # sensor is the one that throttles.
            pick = next((e for e in entries if str(e.label or "").lower().startswith("package")), entries[0])
            name = _sensor_name(chip)
            if name in temperatures:
                name = f"{name}_{sum(1 for k in temperatures if k.startswith(name))}"
            if len(temperatures) >= MAX_TEMPERATURE_SENSORS:
                self._log_once("temperature", None, f"more than {MAX_TEMPERATURE_SENSORS} temperature "
                               "sensors; the rest are not exported")
                break
            temperatures[name] = float(pick.current)
        return temperatures

    # ------------------------------------------------------------ NVML

    def _read_gpus(self, now: float) -> Tuple[GpuReading, ...]:
        if self._nv is None:
            return ()
        if not self._nv_ready and not self._nvml_start(now):
            return ()
        try:
            readings = self._read_gpu_fields()
        except _NvmlDown as err:
            self._nvml_shutdown()
            self._nvml_retry_later(now)
            self._log_once("gpu", err.__cause__, f"NVML stopped answering; GPUs absent, retry in "
                           f"{self._nv_next_try - now:.0f}s")
            return ()
        self._nv_backoff = NVML_RETRY_INITIAL_SECONDS  # healthy again
        return readings

    def _nvml_start(self, now: float) -> bool:
        if now < self._nv_next_try:
            return False
        nv = self._nv
        try:
            nv.nvmlInit()
        except Exception as err:
            self._nvml_retry_later(now)
            code = getattr(err, "value", None)
            no_driver = code in (getattr(nv, "NVML_ERROR_LIBRARY_NOT_FOUND", _NVML_ERROR_LIBRARY_NOT_FOUND),
                                 getattr(nv, "NVML_ERROR_DRIVER_NOT_LOADED", _NVML_ERROR_DRIVER_NOT_LOADED))
            if no_driver or isinstance(err, OSError):
                # No NVIDIA driver is the normal state of most machines: GPUs
                # are absent, not failing, so this is not a read error.
                self._log_once("gpu", err, "NVML not available; no GPU metrics", level=logging.INFO)
            else:
                self._count("gpu", err, "nvmlInit failed; GPUs absent, retrying with backoff")
            return False
        self._nv_ready = True
        try:
            self._gpus = self._enumerate_gpus()
        except Exception as err:
            self._count("gpu", err, "NVML device enumeration failed; GPUs absent, retrying with backoff")
            self._nvml_shutdown()
            self._nvml_retry_later(now)
            return False
        log.info("NVML started: %d GPU(s): %s", len(self._gpus), ", ".join(g.name for g in self._gpus))
        return True

    def _enumerate_gpus(self) -> List[_Gpu]:
        nv = self._nv
        gpus = []
        for index in range(int(nv.nvmlDeviceGetCount())):
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            try:
                name = nv.nvmlDeviceGetName(handle)
                if isinstance(name, bytes):  # older bindings return bytes
                    name = name.decode("utf-8", "replace")
                name = str(name).strip() or "unknown"
            except Exception as err:
                self._count("gpu", err, "nvmlDeviceGetName failed")
                name = "unknown"
            gpus.append(_Gpu(index, handle, name))
        return gpus

    def _read_gpu_fields(self) -> Tuple[GpuReading, ...]:
        nv = self._nv
        try:
            count = int(nv.nvmlDeviceGetCount())
            if count != len(self._gpus):
                self._gpus = self._enumerate_gpus()
        except Exception as err:
            self._count("gpu", err, "nvmlDeviceGetCount failed")
            raise _NvmlDown() from err
        readers: Tuple[Tuple[str, Callable[[Any], Any]], ...] = (
            ("utilization", lambda h: _clamp(nv.nvmlDeviceGetUtilizationRates(h).gpu / 100.0)),
            ("memory", lambda h: nv.nvmlDeviceGetMemoryInfo(h)),
            ("temperature", lambda h: float(nv.nvmlDeviceGetTemperature(
                h, getattr(nv, "NVML_TEMPERATURE_GPU", 0)))),
            ("power", lambda h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),  # milliwatts
        )
        not_supported = getattr(nv, "NVML_ERROR_NOT_SUPPORTED", _NVML_ERROR_NOT_SUPPORTED)
        attempts = failures = 0
        last_error: Optional[Exception] = None
        readings = []
        for gpu in self._gpus:
            values: Dict[str, Any] = {}
            for what, read in readers:
                if what in gpu.unsupported:
                    continue
                attempts += 1
                try:
                    values[what] = read(gpu.handle)
                except Exception as err:
                    if getattr(err, "value", None) == not_supported:
                        # Absent for this GPU for good: stop asking, do not count.
                        gpu.unsupported.add(what)
                        attempts -= 1
                        continue
                    failures += 1
                    last_error = err
                    self._count("gpu", err, f"NVML could not read {what} of GPU {gpu.index}")
            mem = values.get("memory")
            readings.append(GpuReading(
                index=gpu.index,
                name=gpu.name,
                utilization_ratio=values.get("utilization"),
                memory_used_bytes=int(mem.used) if mem is not None else None,
                memory_total_bytes=int(mem.total) if mem is not None else None,
                temperature_celsius=values.get("temperature"),
                power_watts=values.get("power"),
            ))
        if attempts and failures == attempts:
            raise _NvmlDown() from last_error
        return tuple(readings)

    def _nvml_retry_later(self, now: float) -> None:
        self._nv_next_try = now + self._nv_backoff
        self._nv_backoff = min(self._nv_backoff * 2, NVML_RETRY_MAX_SECONDS)

    def _nvml_shutdown(self) -> None:
        if not self._nv_ready:
            return
        self._nv_ready = False
        self._gpus = []
        try:
            self._nv.nvmlShutdown()
        except Exception as err:  # it may be the very thing that is broken
            log.debug("nvmlShutdown failed: %r", err)

    # ------------------------------------------------------------ interval

    def _next_interval(self, snap: ResourceSnapshot) -> float:
        c = self.config.constraints
        limits = (
            (snap.process_memory_bytes, c.max_memory_mb * MB),
            (snap.gpu_memory_used_bytes, c.max_gpu_memory_mb * MB),
        )
        threshold = c.battery_threshold_percent / 100.0
        battery = snap.battery
        discharging = battery is not None and battery.power_plugged is not True
        busy = (
            (snap.cpu_ratio is not None and snap.cpu_ratio > c.max_cpu_percent / 100.0)
            or any(v is not None and v >= NEAR_LIMIT_FRACTION * lim for v, lim in limits)
            or (discharging and battery is not None and battery.ratio < threshold)
        )
        if busy:
            return self._fastest
        idle = (
            snap.cpu_ratio is not None and snap.cpu_ratio < IDLE_CPU_RATIO
            and all(v is None or v < COMFORTABLE_FRACTION * lim for v, lim in limits)
            and not (discharging and battery is not None and battery.ratio < 2 * threshold)
        )
        if idle:
            # Slow down gradually: one idle reading is not a trend.
            return min(max(self._interval, self._base) * 2, self._slowest)
        return self._base

    # ------------------------------------------------------------ errors, metrics

    def _count(self, resource: str, err: Optional[BaseException], message: str) -> None:
        self._errors[resource] += 1
        if self._error_counter is not None:
            self._error_counter.labels(resource).inc()
        self._log_once(resource, err, message)

    def _log_once(self, resource: str, err: Optional[BaseException], message: str,
                  level: int = logging.WARNING) -> None:
        key = (resource, message if err is None else f"{message}:{type(err).__name__}")
        if key in self._logged:
            log.debug("%s: %r", message, err)
            return
        self._logged.add(key)
        log.log(level, "%s%s (logged once)", message, "" if err is None else f": {err!r}")

    def _register(self, registry: CollectorRegistry) -> None:
        registry.register(_ResourceCollector(self))
        self._error_counter = Counter(
            "dualtrack_resource_read_errors",
            "Failed resource read attempts, by resource (cpu, memory, process, gpu, battery, temperature).",
            ["resource"], registry=registry)
        for resource in RESOURCES:  # zero is a true count here, so every series exists from the start
            self._error_counter.labels(resource).inc(self._errors[resource])
        self._interval_gauge = Gauge(
            "dualtrack_resource_monitor_interval_seconds",
            "Current (adaptive) interval between resource readings.", registry=registry)
        self._interval_gauge.set(self._interval)


def register_resource_gauges(registry: CollectorRegistry, source: Any) -> None:
    """Export the resource gauges of anything with ``snapshot() -> ResourceSnapshot``
    (the simulator's machine uses this; a ``ResourceMonitor`` does it itself)."""
    registry.register(_ResourceCollector(source))


class _ResourceCollector:
    """Resource gauges read from the latest snapshot at scrape time; absent stays absent."""

    _GPU_LABELS = ("gpu", "name")

    def __init__(self, monitor: Any) -> None:
        self._monitor = monitor

    def describe(self) -> Iterator[Metric]:
        # Lets the registry reject a second monitor registering the same names.
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        snap = self._monitor.snapshot()
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
                         s and s.cpu_ratio)
        yield from gauge("dualtrack_process_cpu_usage_ratio",
                         "CPU used by this process and the monitored pids, 0..1 of the whole machine.",
                         s and s.process_cpu_ratio)
        yield from gauge("dualtrack_memory_used_bytes", "System memory in use (total minus available).",
                         s and s.memory_used_bytes)
        yield from gauge("dualtrack_memory_total_bytes", "System memory installed.",
                         s and s.memory_total_bytes)
        yield from gauge("dualtrack_process_memory_bytes",
                         "Resident memory of this process and the monitored pids.",
                         s and s.process_memory_bytes)

        gpu_families = (
            ("dualtrack_gpu_utilization_ratio", "GPU utilisation reported by NVML, 0..1.", "utilization_ratio"),
            ("dualtrack_gpu_memory_used_bytes", "GPU memory in use.", "memory_used_bytes"),
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


# ------------------------------------------------------------ helpers


def _default_module(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        log.info("%s is not installed; its readings are absent or use fallbacks", name)
        return None


def _clamp(ratio: float) -> float:
    return min(max(ratio, 0.0), 1.0)


def _scale(value: Optional[float], factor: float) -> Optional[float]:
    return None if value is None else value * factor


def _sensor_name(chip: str) -> str:
    name = _SENSOR_CHARS.sub("_", str(chip).lower()).strip("_")[:32]
    return name or "sensor"


def _parse_meminfo(path: str) -> Tuple[int, int]:
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
