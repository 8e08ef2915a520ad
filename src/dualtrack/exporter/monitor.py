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
    monitor.readings_between(t0, t1)     # the readings taken in (t0, t1], oldest first
    if snap is not None and snap.battery is not None:
        print(snap.battery.ratio)
    monitor.get_current_usage()          # the same as a plain dict
    monitor.check_constraints(config.constraints)["memory"].violated
    monitor.stop_monitoring()

Tests and the simulator inject the world: ``psutil_module=`` and ``nvml=``
take fakes (``False`` disables one), ``proc_root=`` points the ``/proc``
fallbacks at a fixture folder, and ``clock=`` drives the NVML backoff.

This module holds the monitor itself: the thread, the psutil reads and the
adaptive interval. Its parts live next door: the snapshot types in
:mod:`.readings`, the NVML session and its backoff in :mod:`.nvml`, the
``/proc`` fallbacks in :mod:`.procfs`, the failure counts in
:mod:`.read_errors` and the scrape-time gauges in :mod:`.resource_gauges`.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from prometheus_client import CollectorRegistry, Gauge

from ..clock import SYSTEM_CLOCK, Clock
from ..config import OptimizationConfig, ResourceConstraints
from ..constraints import MB, ConstraintCheck, resource_checks
from . import procfs
from .nvml import NvmlReader
from .read_errors import ReadErrors, log
from .readings import BatteryReading, RecentReadings, ResourceSnapshot, clamp_ratio
from .resource_gauges import register_resource_gauges

#: At most this many ``dualtrack_temperature_celsius{sensor}`` series.
MAX_TEMPERATURE_SENSORS = 16

IDLE_CPU_RATIO = 0.2
# "Comfortably below a limit" for the idle test; "near a limit" for the busy test.
COMFORTABLE_FRACTION = 0.5
NEAR_LIMIT_FRACTION = 0.9
SLOWEST_FACTOR, SLOWEST_SECONDS = 4.0, 10.0
FASTEST_FACTOR, FASTEST_SECONDS = 0.5, 0.1

_SENSOR_CHARS = re.compile(r"[^a-z0-9_]+")


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
        load_probe: Optional[Callable[[], Optional[int]]] = None,
    ) -> None:
        self.config = config
        #: Called at each reading for the router's local calls in flight (``local_calls_in_flight``);
        #: the optimizer sets it to its recorder's count.
        self.load_probe = load_probe
        self._clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self._ps = _default_module("psutil") if psutil_module is None else (psutil_module or None)
        nvml_module = _default_module("pynvml") if nvml is None else (nvml or None)
        self._proc_root = proc_root

        self._base = float(config.monitor_interval_seconds)
        self._slowest = max(self._base, min(self._base * SLOWEST_FACTOR, SLOWEST_SECONDS))
        self._fastest = min(self._base, max(self._base * FASTEST_FACTOR, FASTEST_SECONDS))
        self._interval = self._base

        self._snapshot: Optional[ResourceSnapshot] = None
        self._recent = RecentReadings()
        # One reading at a time: psutil's per-process CPU baselines and the
        # NVML state are not safe to share between concurrent samplers.
        self._sample_lock = threading.Lock()
        self._lifecycle_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

        self._errors = ReadErrors()

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

        self._nvml: Optional[NvmlReader] = (
            None if nvml_module is None else NvmlReader(nvml_module, clock=self._clock, errors=self._errors))

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
        return self._errors.counts

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
                     "yes" if self._ps is not None else "no", "yes" if self._nvml is not None else "no")

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
                    if self._nvml is not None:
                        self._nvml.close()  # a later sample may start NVML again at once
                finally:
                    self._sample_lock.release()

    def sample_now(self) -> ResourceSnapshot:
        """Take a reading now, store it as the latest snapshot and return it."""
        with self._sample_lock:
            snap = self._read()
            self._snapshot = snap
            self._recent.add(snap)
            self._interval = self._next_interval(snap)
        if self._interval_gauge is not None:
            self._interval_gauge.set(self._interval)
        return snap

    def snapshot(self) -> Optional[ResourceSnapshot]:
        """The latest reading, or ``None`` before the first one."""
        return self._snapshot

    def readings_between(self, start: float, end: float) -> List[ResourceSnapshot]:
        """The readings taken after ``start`` and at or before ``end`` (wall clock; the last
        1,024 are kept): what an adaptation interval's readings held besides its last."""
        return self._recent.between(start, end)

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
        """Memory, CPU, GPU memory and battery checked against the latest snapshot (no new reading)."""
        return resource_checks(constraints, self.snapshot())

    # ------------------------------------------------------------ thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_now()
            except Exception as err:  # one bad cycle must not end monitoring
                self._errors.log_once("monitor", err, "resource reading failed; monitoring continues")
            if self._stop.wait(self._interval):
                break

    # ------------------------------------------------------------ reading

    def _read(self) -> ResourceSnapshot:
        used, total = self._read_memory()
        rss, proc_cpu = self._read_processes()
        return ResourceSnapshot(
            timestamp=self._clock.time(),
            cpu_ratio=self._read_cpu(),
            process_cpu_ratio=proc_cpu,
            memory_used_bytes=used,
            memory_total_bytes=total,
            process_memory_bytes=rss,
            gpus=self._nvml.read() if self._nvml is not None else (),
            battery=self._read_battery(),
            temperatures=MappingProxyType(self._read_temperatures()),
            local_calls_in_flight=self._read_load(),
        )

    def _read_load(self) -> Optional[int]:
        probe = self.load_probe
        if probe is None:
            return None
        try:
            return probe()
        except Exception as err:  # the optimizer's count; never fails in practice, never breaks a reading
            self._errors.log_once("load_probe", err, "reading the local calls in flight failed")
            return None

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
                    self._errors.count("cpu", err, "psutil.cpu_percent failed; using the load average")
                else:
                    self._mark_cpu_baseline(tid, now)
                    if last is not None:
                        return clamp_ratio(percent / 100.0)
        try:
            return procfs.load_average_ratio()
        except procfs.LOADAVG_ERRORS as err:
            self._errors.count("cpu", err, "os.getloadavg failed; CPU is absent from this reading")
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
                self._errors.count("memory", err, "psutil.virtual_memory failed; reading /proc/meminfo")
        try:
            return procfs.read_meminfo(self._proc_root)
        except procfs.MEMINFO_ERRORS as err:
            self._errors.count("memory", err, "/proc/meminfo unreadable; memory is absent from this reading")
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
                clamp_ratio(cpu_total / 100.0 / self._ncpu) if own_cpu is not None else None)

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
                    self._errors.count("process", err, f"psutil could not read the memory of process {pid}; "
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
                self._errors.count("process", err, f"monitored process {pid} is gone; no longer counted")
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
            self._errors.count("process", err, f"psutil could not read the CPU time of process {pid}")
            return None
        self._proc_cpu[pid] = (now, value if last_at is not None else None)
        return value if last_at is not None else None

    def _is_gone(self, err: Exception) -> bool:
        gone = getattr(self._ps, "NoSuchProcess", None)
        return isinstance(gone, type) and isinstance(err, gone)

    def _fallback_rss(self, pid: int) -> Optional[int]:
        own = pid == self._own_pid
        statm = procfs.statm_path(self._proc_root, pid, own)
        try:
            return procfs.statm_rss(statm)
        except procfs.STATM_ERRORS as err:
            self._errors.count("process", err, f"{statm} unreadable")
        if own:
            try:
                return procfs.peak_rss_of_self()
            except procfs.GETRUSAGE_ERRORS as err:
                self._errors.count("process", err, "resource.getrusage failed; process memory is absent")
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
            self._errors.count("battery", err, "psutil.sensors_battery failed; battery absent from this reading")
            return None
        if battery is None or battery.percent is None or not math.isfinite(battery.percent):
            return None
        plugged = battery.power_plugged if isinstance(battery.power_plugged, bool) else None
        secs = battery.secsleft
        # POWER_TIME_UNKNOWN (-1) and POWER_TIME_UNLIMITED (-2) are negative.
        seconds_left = float(secs) if secs is not None and secs >= 0 else None
        return BatteryReading(clamp_ratio(float(battery.percent) / 100.0), plugged, seconds_left)

    def _read_temperatures(self) -> Dict[str, float]:
        read = getattr(self._ps, "sensors_temperatures", None)
        if read is None:
            return {}
        try:
            chips = read() or {}
        except Exception as err:
            self._errors.count("temperature", err, "psutil.sensors_temperatures failed; temperatures absent")
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
                self._errors.log_once("temperature", None, f"more than {MAX_TEMPERATURE_SENSORS} temperature "
                                      "sensors; the rest are not exported")
                break
            temperatures[name] = float(pick.current)
        return temperatures

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

    # ------------------------------------------------------------ metrics

    def _register(self, registry: CollectorRegistry) -> None:
        register_resource_gauges(registry, self)
        self._errors.register(registry)
        self._interval_gauge = Gauge(
            "dualtrack_resource_monitor_interval_seconds",
            "Current (adaptive) interval between resource readings.", registry=registry)
        self._interval_gauge.set(self._interval)


# ------------------------------------------------------------ helpers


def _default_module(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        log.info("%s is not installed; its readings are absent or use fallbacks", name)
        return None


def _scale(value: Optional[float], factor: float) -> Optional[float]:
    return None if value is None else value * factor


def _sensor_name(chip: str) -> str:
    name = _SENSOR_CHARS.sub("_", str(chip).lower()).strip("_")[:32]
    return name or "sensor"

