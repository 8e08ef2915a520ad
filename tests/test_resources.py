"""ResourceMonitor: real readings, faked NVML/psutil/battery, /proc fallbacks,
NVML backoff, adaptive interval, lifecycle, constraints and exposition."""

from __future__ import annotations

import copy
import os
import resource
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, Optional

import psutil
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dualtrack.clock import VirtualClock
from dualtrack.config import OptimizationConfig, ResourceConstraints
from dualtrack.constraints import MB
from dualtrack.exporter import resources as resources_module
from dualtrack.exporter.readings import RecentReadings
from dualtrack.exporter.resources import (
    NVML_RETRY_INITIAL_SECONDS,
    BatteryReading,
    GpuReading,
    ResourceMonitor,
    ResourceSnapshot,
)
from fakes.fake_nvml import (
    NVML_ERROR_FUNCTION_NOT_FOUND,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_UNKNOWN,
    FakeGpu,
    FakeNvml,
    nvmlMemory_v2,
)
from fakes.fake_psutil import (
    POWER_TIME_UNKNOWN,
    POWER_TIME_UNLIMITED,
    FakeProc,
    FakePsutil,
    sbattery,
    shwtemp,
)
from support.prometheus import promtool
from support.waiting import wait_until

GIB = 1 << 30
MIB = 1 << 20
OWN = os.getpid()
GPU_FAMILIES = (
    "dualtrack_gpu_utilization_ratio", "dualtrack_gpu_memory_used_bytes", "dualtrack_gpu_memory_reserved_bytes",
    "dualtrack_gpu_memory_total_bytes", "dualtrack_gpu_temperature_celsius", "dualtrack_gpu_power_watts",
)
BATTERY_FAMILIES = ("dualtrack_battery_ratio", "dualtrack_battery_power_plugged", "dualtrack_battery_seconds_left")


def family_names(registry: CollectorRegistry) -> set:
    text = generate_latest(registry).decode()
    # ``*_created`` series come and go with PROMETHEUS_DISABLE_CREATED_SERIES; not ours to test.
    return {f.name for f in text_string_to_metric_families(text) if f.samples and not f.name.endswith("_created")}


def errors(registry: CollectorRegistry, resource_name: str) -> Optional[float]:
    return registry.get_sample_value("dualtrack_resource_read_errors_total", {"resource": resource_name})


def fake_psutil(**kwargs: Any) -> FakePsutil:
    ps = FakePsutil(**kwargs)
    ps.procs[OWN] = FakeProc(rss=100 * MB, cpu_percent=40.0)
    return ps


def make(registry: Optional[CollectorRegistry] = None, *, psutil_module: Any = None, nvml: Any = False,
         clock: Any = None, proc_root: str = "/proc", **config: Any) -> ResourceMonitor:
    """A monitor over fakes; fakes have no real counters, so no minimum CPU window."""
    monitor = ResourceMonitor(
        OptimizationConfig(**config), clock=clock or VirtualClock(),
        psutil_module=psutil_module if psutil_module is not None else fake_psutil(),
        nvml=nvml, registry=registry, proc_root=proc_root)
    monitor.min_cpu_window_seconds = 0.0
    return monitor


def two_gpus(**driver: Any) -> FakeNvml:
    """An H100 and an L4 (whose temperature fails); ``driver``: FakeNvml's memory-version options."""
    return FakeNvml([
        FakeGpu(b"NVIDIA H100 80GB HBM3", utilization_percent=75, memory_used=30 * GIB,
                memory_total=80 * GIB, memory_reserved=615 * MIB, temperature=61, power_mw=350_500),
        FakeGpu("NVIDIA L4", utilization_percent=5, memory_used=1 * GIB, memory_total=24 * GIB,
                memory_reserved=300 * MIB, temperature=45, power_mw=30_000, failing={"temperature"}),
    ], **driver)


def nvml_works_here() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except Exception:
        return False
    pynvml.nvmlShutdown()
    return True


# --------------------------------------------------------------------------- the real machine


def test_real_reading_on_this_machine():
    registry = CollectorRegistry()
    monitor = ResourceMonitor(OptimizationConfig(), registry=registry)
    assert monitor.snapshot() is None
    snap = monitor.sample_now()

    assert monitor.snapshot() is snap
    assert snap.cpu_ratio is not None and 0.0 <= snap.cpu_ratio <= 1.0
    total = psutil.virtual_memory().total
    assert snap.memory_total_bytes == total
    assert snap.memory_used_bytes is not None and 0 < snap.memory_used_bytes < total
    rss = psutil.Process().memory_info().rss
    assert snap.process_memory_bytes is not None and 0.5 * rss < snap.process_memory_bytes < 2 * rss
    assert registry.get_sample_value("dualtrack_memory_total_bytes") == total
    assert registry.get_sample_value("dualtrack_process_memory_bytes") == snap.process_memory_bytes
    assert registry.get_sample_value("dualtrack_cpu_usage_ratio") == snap.cpu_ratio
    for resource_name in ("cpu", "memory", "process"):
        assert errors(registry, resource_name) == 0

    exported = family_names(registry)
    if nvml_works_here():
        assert snap.gpus and "dualtrack_gpu_memory_total_bytes" in exported
    else:  # no NVIDIA driver: absent, and absence is not an error
        assert snap.gpus == ()
        assert not exported & set(GPU_FAMILIES)
        assert errors(registry, "gpu") == 0
    if psutil.sensors_battery() is None:
        assert not exported & set(BATTERY_FAMILIES)


def _returned(value: Any) -> Any:
    """What a worker process sends back of ``value`` (the bench's results cross that way)."""
    return value


def test_the_monitor_keeps_its_recent_readings_for_an_intervals_extremes():
    clock = VirtualClock()
    monitor = ResourceMonitor(OptimizationConfig(), clock=clock, psutil_module=FakePsutil(), nvml=False)
    taken = []
    for _ in range(4):
        taken.append(monitor.sample_now())
        clock.advance(10.0)
    start = taken[0].timestamp
    assert monitor.readings_between(start, start + 20.0) == taken[1:3]  # after start, up to the end
    assert monitor.readings_between(start - 1.0, start + 100.0) == taken
    assert monitor.readings_between(start + 100.0, start + 200.0) == []
    # Bounded: the oldest go first.
    recent = RecentReadings(keep=2)
    for snap in taken:
        recent.add(snap)
    assert recent.between(start - 1.0, start + 100.0) == taken[2:]
    # A simulation (whose machine keeps readings too) is copied to branch (the oracle) and its
    # results cross to worker processes: the readings copy and pickle, each copy with a lock of
    # its own.
    simulated = RecentReadings(keep=2)
    for t in (1.0, 2.0, 3.0):
        simulated.add(ResourceSnapshot(timestamp=t, process_memory_bytes=int(t * MB)))
    with ProcessPoolExecutor(max_workers=1) as pool:
        returned = pool.submit(_returned, simulated).result(timeout=60)
    for copied in (copy.deepcopy(simulated), returned):
        assert [r.timestamp for r in copied.between(0.0, 9.0)] == [2.0, 3.0]
        copied.add(ResourceSnapshot(timestamp=4.0))
        assert [r.timestamp for r in copied.between(0.0, 9.0)] == [3.0, 4.0]
    assert [r.timestamp for r in simulated.between(0.0, 9.0)] == [2.0, 3.0]


def test_process_cpu_is_measured_over_a_window():
    monitor = ResourceMonitor(OptimizationConfig(), nvml=False)
    first = monitor.sample_now()
    busy_until = time.process_time() + 0.15
    while time.process_time() < busy_until:  # burn CPU we can then see
        pass
    second = monitor.sample_now()
    assert first.process_cpu_ratio is None or first.process_cpu_ratio >= 0
    assert second.process_cpu_ratio is not None and second.process_cpu_ratio > 0
    assert second.cpu_ratio is not None and second.cpu_ratio > 0


# --------------------------------------------------------------------------- NVML


def test_fake_nvml_two_gpus_with_a_failing_field():
    registry = CollectorRegistry()
    nvml = two_gpus()
    nvml.gpus[1].unsupported.add("power")
    monitor = make(registry, nvml=nvml)
    snap = monitor.sample_now()

    assert snap.gpus == (
        GpuReading(0, "NVIDIA H100 80GB HBM3", 0.75, 30 * GIB, 80 * GIB, 61.0, 350.5, memory_reserved_bytes=615 * MIB),
        GpuReading(1, "NVIDIA L4", 0.05, 1 * GIB, 24 * GIB, None, None, memory_reserved_bytes=300 * MIB),
    )
    h100 = {"gpu": "0", "name": "NVIDIA H100 80GB HBM3"}
    l4 = {"gpu": "1", "name": "NVIDIA L4"}
    get = registry.get_sample_value
    assert get("dualtrack_gpu_utilization_ratio", h100) == 0.75
    assert get("dualtrack_gpu_memory_used_bytes", h100) == 30 * GIB
    assert get("dualtrack_gpu_memory_total_bytes", l4) == 24 * GIB
    assert get("dualtrack_gpu_temperature_celsius", h100) == 61
    assert get("dualtrack_gpu_power_watts", h100) == 350.5
    assert get("dualtrack_gpu_temperature_celsius", l4) is None  # failed: absent, not 0
    assert get("dualtrack_gpu_power_watts", l4) is None  # not supported: absent
    assert errors(registry, "gpu") == 1  # the failure counts, "not supported" does not
    assert snap.gpu_memory_used_bytes == 31 * GIB

    monitor.sample_now()
    assert errors(registry, "gpu") == 2
    assert nvml.field_calls["power"] == 3  # H100 twice, the L4 once: it is not asked again
    assert nvml.init_calls == 1


def test_nvml_failing_mid_run_backs_off_then_recovers():
    registry = CollectorRegistry()
    clock = VirtualClock()
    nvml = two_gpus()
    monitor = make(registry, nvml=nvml, clock=clock)
    assert len(monitor.sample_now().gpus) == 2

    nvml.broken = True
    snap = monitor.sample_now()
    assert snap.gpus == ()
    assert not family_names(registry) & set(GPU_FAMILIES)
    assert errors(registry, "gpu") == 2  # the L4's temperature, then the lost device
    assert nvml.shutdown_calls == 1  # released before re-initialising later

    nvml.broken = False
    clock.advance(NVML_RETRY_INITIAL_SECONDS - 1)
    assert monitor.sample_now().gpus == ()  # still backing off: no re-init every sample
    assert nvml.init_calls == 1
    clock.advance(2)
    snap = monitor.sample_now()
    assert [g.name for g in snap.gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert nvml.init_calls == 2
    h100 = {"gpu": "0", "name": "NVIDIA H100 80GB HBM3"}
    assert registry.get_sample_value("dualtrack_gpu_utilization_ratio", h100) == 0.75
    assert errors(registry, "gpu") == 3  # the L4's temperature fails again, nothing else


def test_nvml_init_failure_backs_off_exponentially():
    registry = CollectorRegistry()
    clock = VirtualClock()
    nvml = two_gpus()
    nvml.init_error = NVML_ERROR_UNKNOWN
    monitor = make(registry, nvml=nvml, clock=clock)

    attempts_at = []
    for _ in range(200):  # 200 samples, 5 s apart: 1000 s of virtual time
        before = nvml.init_calls
        monitor.sample_now()
        if nvml.init_calls > before:
            attempts_at.append(clock.monotonic())
        clock.advance(5)
    assert attempts_at == [0, 30, 90, 210, 450, 930]  # 30, 60, 120, 240, 480 s apart
    assert errors(registry, "gpu") == len(attempts_at)


def memory_v1_notes(caplog: pytest.LogCaptureFixture) -> int:
    return sum("no v2 memory info" in r.getMessage() for r in caplog.records if r.levelname == "INFO")


def test_v2_memory_info_keeps_reserved_memory_out_of_used(caplog):
    caplog.set_level("INFO", logger="dualtrack.exporter.resources")
    registry = CollectorRegistry()
    nvml = two_gpus()
    monitor = make(registry, nvml=nvml)
    for _ in range(3):
        snap = monitor.sample_now()

    h100 = {"gpu": "0", "name": "NVIDIA H100 80GB HBM3"}
    l4 = {"gpu": "1", "name": "NVIDIA L4"}
    get = registry.get_sample_value
    assert get("dualtrack_gpu_memory_used_bytes", h100) == 30 * GIB  # what nvidia-smi shows, not 30 GiB + 615 MiB
    assert get("dualtrack_gpu_memory_reserved_bytes", h100) == 615 * MIB
    assert get("dualtrack_gpu_memory_reserved_bytes", l4) == 300 * MIB
    assert get("dualtrack_gpu_memory_total_bytes", h100) == 80 * GIB
    assert snap.gpu_memory_used_bytes == 31 * GIB
    assert nvml.field_calls["memory_v2"] == 6 and nvml.field_calls["memory"] == 0  # v1 never asked
    assert errors(registry, "gpu") == 3  # only the L4's temperature, once per reading
    assert memory_v1_notes(caplog) == 0


def test_v2_used_that_still_includes_reserved_is_corrected():
    # NVML's R525 reference documents v2 "used" as including "reserved" (total = used + free).
    registry = CollectorRegistry()
    monitor = make(registry, nvml=two_gpus(v2_used_includes_reserved=True))
    monitor.sample_now()
    h100 = {"gpu": "0", "name": "NVIDIA H100 80GB HBM3"}
    assert registry.get_sample_value("dualtrack_gpu_memory_used_bytes", h100) == 30 * GIB
    assert registry.get_sample_value("dualtrack_gpu_memory_reserved_bytes", h100) == 615 * MIB


def binding_with_constant_but_no_version_parameter() -> FakeNvml:
    nvml = two_gpus(binding_v2=False)
    nvml.nvmlMemory_v2 = nvmlMemory_v2
    return nvml


def wsl_like_driver() -> FakeNvml:
    nvml = two_gpus()  # v2 present, but answers "Unknown Error" on every GPU while v1 works
    for gpu in nvml.gpus:
        gpu.failing.add("memory_v2")
    return nvml


@pytest.mark.parametrize("driver, v2_tries", [
    (lambda: two_gpus(memory_v2_error=NVML_ERROR_FUNCTION_NOT_FOUND), 2),  # driver without the v2 symbol
    (lambda: two_gpus(memory_v2_error=NVML_ERROR_NOT_SUPPORTED), 2),
    (lambda: two_gpus(binding_v2=False), 0),  # nvidia-ml-py < 11.515: v2 cannot even be asked for
    (binding_with_constant_but_no_version_parameter, 0),  # TypeError before reaching the driver
    (wsl_like_driver, 2),
], ids=["function_not_found", "not_supported", "old_binding", "no_version_parameter", "v2_unknown_error"])
def test_v1_only_driver_falls_back_once_and_reserved_is_absent(driver, v2_tries, caplog):
    caplog.set_level("INFO", logger="dualtrack.exporter.resources")
    registry = CollectorRegistry()
    nvml = driver()
    monitor = make(registry, nvml=nvml)
    for _ in range(4):
        snap = monitor.sample_now()

    h100 = {"gpu": "0", "name": "NVIDIA H100 80GB HBM3"}
    assert registry.get_sample_value("dualtrack_gpu_memory_used_bytes", h100) == 30 * GIB + 615 * MIB  # v1's used
    assert registry.get_sample_value("dualtrack_gpu_memory_total_bytes", h100) == 80 * GIB
    assert "dualtrack_gpu_memory_reserved_bytes" not in family_names(registry)  # absent, not 0
    assert [g.memory_reserved_bytes for g in snap.gpus] == [None, None]
    assert snap.gpu_memory_used_bytes == 31 * GIB + 915 * MIB
    assert nvml.field_calls["memory_v2"] == v2_tries  # at most once per GPU, not once per reading
    assert nvml.field_calls["memory"] == 8  # v1 on every reading of both GPUs
    assert errors(registry, "gpu") == 4  # falling back is no error: only the L4's temperature
    assert memory_v1_notes(caplog) == 1  # one line for the whole machine


def test_memory_failing_in_both_versions_is_counted_and_v2_tried_again():
    registry = CollectorRegistry()
    nvml = two_gpus()
    nvml.gpus[0].failing.add("memory")  # v2 and v1 both fail: the device, not the version
    monitor = make(registry, nvml=nvml)
    snap = monitor.sample_now()
    assert snap.gpus[0].memory_used_bytes is None and snap.gpus[0].memory_reserved_bytes is None
    assert errors(registry, "gpu") == 2  # the H100's memory (once, not once per version) + the L4's temperature

    nvml.gpus[0].failing.discard("memory")
    snap = monitor.sample_now()
    assert snap.gpus[0].memory_used_bytes == 30 * GIB and snap.gpus[0].memory_reserved_bytes == 615 * MIB
    assert nvml.field_calls["memory_v2"] == 4


def test_memory_not_supported_at_all_is_absent_and_not_asked_again():
    registry = CollectorRegistry()
    nvml = two_gpus()
    nvml.gpus[0].unsupported.add("memory")
    monitor = make(registry, nvml=nvml)
    monitor.sample_now()
    monitor.sample_now()
    h100 = {"gpu": "0", "name": "NVIDIA H100 80GB HBM3"}
    for family in ("dualtrack_gpu_memory_used_bytes", "dualtrack_gpu_memory_reserved_bytes",
                   "dualtrack_gpu_memory_total_bytes"):
        assert registry.get_sample_value(family, h100) is None
    assert nvml.field_calls["memory_v2"] == 3 and nvml.field_calls["memory"] == 1  # H100 once each, L4 twice
    assert errors(registry, "gpu") == 2  # only the L4's temperature


def test_no_nvidia_driver_is_absent_not_an_error():
    registry = CollectorRegistry()
    nvml = two_gpus()
    nvml.init_error = NVML_ERROR_LIBRARY_NOT_FOUND
    monitor = make(registry, nvml=nvml)
    assert monitor.sample_now().gpus == ()
    assert errors(registry, "gpu") == 0
    assert monitor.get_current_usage()["gpus"] == []


# --------------------------------------------------------------------------- battery, temperatures


def test_battery_gauges_follow_the_battery_and_vanish_with_it():
    registry = CollectorRegistry()
    ps = fake_psutil(battery=sbattery(percent=80.0, secsleft=POWER_TIME_UNLIMITED, power_plugged=True))
    monitor = make(registry, psutil_module=ps)
    get = registry.get_sample_value

    assert monitor.sample_now().battery == BatteryReading(0.8, True, None)
    assert get("dualtrack_battery_ratio") == 0.8
    assert get("dualtrack_battery_power_plugged") == 1
    assert get("dualtrack_battery_seconds_left") is None  # unlimited: absent

    ps.battery = sbattery(percent=15.0, secsleft=3600, power_plugged=False)
    assert monitor.sample_now().battery == BatteryReading(0.15, False, 3600.0)
    assert get("dualtrack_battery_power_plugged") == 0
    assert get("dualtrack_battery_seconds_left") == 3600

    ps.battery = sbattery(percent=15.0, secsleft=POWER_TIME_UNKNOWN, power_plugged=None)
    assert monitor.sample_now().battery == BatteryReading(0.15, None, None)
    assert get("dualtrack_battery_ratio") == 0.15
    assert get("dualtrack_battery_power_plugged") is None  # the OS cannot tell: absent
    assert get("dualtrack_battery_seconds_left") is None

    ps.battery = None  # battery removed
    assert monitor.sample_now().battery is None
    assert not family_names(registry) & set(BATTERY_FAMILIES)
    assert monitor.get_current_usage()["battery"] is None
    assert errors(registry, "battery") == 0


@pytest.mark.parametrize("battery", [AttributeError("no battery API here"), RuntimeError("boom")])
def test_battery_api_failing_is_absent(battery):
    registry = CollectorRegistry()
    monitor = make(registry, psutil_module=fake_psutil(battery=battery))
    assert monitor.sample_now().battery is None
    # AttributeError is psutil saying "unsupported platform": absent, not an error.
    assert errors(registry, "battery") == (0 if isinstance(battery, AttributeError) else 1)


def test_temperatures_one_per_chip_sanitized_and_bounded():
    registry = CollectorRegistry()
    chips: Dict[str, Any] = {
        "coretemp": [shwtemp("Core 0", 50.0, 80, 100), shwtemp("Package id 0", 55.0, 80, 100)],
        "acpitz": [shwtemp("", 40.0, None, None)],
        "My Chip!": [shwtemp("x", 33.0, None, None)],
        "empty": [],
    }
    ps = fake_psutil(temperatures=chips)
    monitor = make(registry, psutil_module=ps)
    assert dict(monitor.sample_now().temperatures) == {"acpitz": 40.0, "coretemp": 55.0, "my_chip": 33.0}
    assert registry.get_sample_value("dualtrack_temperature_celsius", {"sensor": "coretemp"}) == 55.0

    ps.temperatures = {f"chip{i:02d}": [shwtemp("", float(i), None, None)] for i in range(40)}
    snap = monitor.sample_now()
    assert len(snap.temperatures) == resources_module.MAX_TEMPERATURE_SENSORS
    text = generate_latest(registry).decode()
    assert text.count("dualtrack_temperature_celsius{") == resources_module.MAX_TEMPERATURE_SENSORS

    ps.temperatures = {}
    assert monitor.sample_now().temperatures == {}
    assert "dualtrack_temperature_celsius" not in family_names(registry)


def test_no_sensor_functions_means_absent():
    registry = CollectorRegistry()
    monitor = make(registry, psutil_module=fake_psutil())  # neither sensors_* function exists
    snap = monitor.sample_now()
    assert snap.battery is None and snap.temperatures == {}
    assert errors(registry, "battery") == errors(registry, "temperature") == 0


# --------------------------------------------------------------------------- processes


def test_monitored_pids_are_summed_and_a_vanished_one_dropped():
    registry = CollectorRegistry()
    ps = fake_psutil()
    ps.procs[4242] = FakeProc(rss=400 * MB, cpu_percent=200.0)
    monitor = make(registry, psutil_module=ps, monitored_pids=(4242, 9999))

    first = monitor.sample_now()
    assert first.process_memory_bytes == 500 * MB
    assert first.process_cpu_ratio == pytest.approx(40.0 / 100 / 4)  # 4242 has no baseline yet
    assert errors(registry, "process") == 1  # 9999 never existed
    second = monitor.sample_now()
    assert second.process_cpu_ratio == pytest.approx((40.0 + 200.0) / 100 / 4)

    del ps.procs[4242]  # the local model server exits
    third = monitor.sample_now()
    assert third.process_memory_bytes == 100 * MB
    assert errors(registry, "process") == 2
    calls = len(ps.process_calls)
    monitor.sample_now()
    assert len(ps.process_calls) == calls  # dropped pids are not looked up again
    assert errors(registry, "process") == 2


# --------------------------------------------------------------------------- fallbacks


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    (root / "self").mkdir(parents=True)
    (root / "4242").mkdir()
    (root / "meminfo").write_text(
        "MemTotal:        8000000 kB\nMemFree:          500000 kB\n"
        "MemAvailable:    6000000 kB\nBuffers:          100000 kB\nHugePages_Total:       0\n")
    (root / "self" / "statm").write_text("50000 2560 300 10 0 4000 0\n")
    (root / "4242" / "statm").write_text("90000 1024 300 10 0 4000 0\n")
    return root


def failing_psutil() -> FakePsutil:
    ps = fake_psutil(battery=OSError("no"), temperatures=OSError("no"))
    ps.cpu = OSError("cpu counters unreadable")
    ps.memory = OSError("meminfo unreadable")
    ps.procs[OWN].rss = psutil.AccessDenied(OWN)
    ps.procs[OWN].cpu_percent = OSError("stat unreadable")
    ps.procs[4242] = FakeProc(rss=OSError("denied"), cpu_percent=0.0)
    return ps


def test_psutil_failing_falls_back_to_proc_and_loadavg(proc_root, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 1.0, 1.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    registry = CollectorRegistry()
    monitor = make(registry, psutil_module=failing_psutil(), proc_root=str(proc_root), monitored_pids=(4242,))
    snap = monitor.sample_now()

    page = os.sysconf("SC_PAGE_SIZE")
    assert snap.cpu_ratio == 0.75
    assert snap.memory_total_bytes == 8000000 * 1024
    assert snap.memory_used_bytes == (8000000 - 6000000) * 1024
    assert snap.process_memory_bytes == (2560 + 1024) * page
    assert snap.process_cpu_ratio is None  # no fallback for that: absent
    assert registry.get_sample_value("dualtrack_memory_used_bytes") == 2000000 * 1024
    assert "dualtrack_process_cpu_usage_ratio" not in family_names(registry)
    assert errors(registry, "cpu") == 1
    assert errors(registry, "memory") == 1
    assert errors(registry, "process") == 3  # own memory, own CPU, 4242's memory
    assert errors(registry, "battery") == errors(registry, "temperature") == 1


def test_without_psutil_the_proc_fallbacks_are_the_method(proc_root):
    registry = CollectorRegistry()
    monitor = ResourceMonitor(OptimizationConfig(), psutil_module=False, nvml=False,
                              registry=registry, proc_root=str(proc_root))
    snap = monitor.sample_now()
    assert snap.memory_total_bytes == 8000000 * 1024
    assert snap.process_memory_bytes == 2560 * os.sysconf("SC_PAGE_SIZE")
    assert snap.cpu_ratio is not None
    assert snap.battery is None and snap.temperatures == {} and snap.gpus == ()
    assert all(errors(registry, r) == 0 for r in resources_module.RESOURCES)


def test_meminfo_without_memavailable_uses_free_buffers_cached(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n")
    ps = fake_psutil()
    ps.memory = OSError("no")
    snap = make(psutil_module=ps, proc_root=str(tmp_path)).sample_now()
    assert snap.memory_used_bytes == 600 * 1024 and snap.memory_total_bytes == 1000 * 1024


def test_everything_failing_gives_none_and_keeps_going(tmp_path, monkeypatch):
    def boom(*args: Any) -> Any:
        raise OSError("unavailable")

    monkeypatch.setattr(os, "getloadavg", boom)
    monkeypatch.setattr(resource, "getrusage", boom)
    nvml = two_gpus()
    nvml.broken = True  # init succeeds, then every device call fails
    registry = CollectorRegistry()
    monitor = make(registry, psutil_module=failing_psutil(), nvml=nvml, proc_root=str(tmp_path / "nothing"),
                   monitored_pids=(4242,))

    for _ in range(2):
        snap = monitor.sample_now()
        assert snap == ResourceSnapshot(timestamp=snap.timestamp)  # every field absent
    assert family_names(registry) == {"dualtrack_resource_read_errors", "dualtrack_resource_monitor_interval_seconds"}
    for resource_name in resources_module.RESOURCES:
        assert (errors(registry, resource_name) or 0) > 0, resource_name
    usage = monitor.get_current_usage()
    assert usage["cpu_percent"] is None and usage["memory_used_mb"] is None
    assert usage["process_memory_mb"] is None and usage["gpus"] == [] and usage["battery"] is None
    assert monitor.current_interval == 1.0  # nothing known: neither idle nor busy


# --------------------------------------------------------------------------- adaptive interval


def test_interval_slows_when_idle_and_speeds_up_near_a_limit():
    registry = CollectorRegistry()
    ps = fake_psutil(battery=sbattery(90.0, POWER_TIME_UNLIMITED, True))
    ps.cpu = 5.0
    nvml = two_gpus()
    constraints = ResourceConstraints(max_memory_mb=1000, max_cpu_percent=80, max_gpu_memory_mb=100 * 1024,
                                      battery_threshold_percent=20)
    monitor = make(registry, psutil_module=ps, nvml=nvml, monitor_interval_seconds=2.0, constraints=constraints)
    assert monitor.current_interval == 2.0

    intervals = [monitor.sample_now() and monitor.current_interval for _ in range(4)]
    assert intervals == [4.0, 8.0, 8.0, 8.0]  # 4x the base at most
    assert registry.get_sample_value("dualtrack_resource_monitor_interval_seconds") == 8.0

    ps.cpu = 50.0  # neither idle nor near a limit
    monitor.sample_now()
    assert monitor.current_interval == 2.0

    ps.cpu = 95.0  # over max_cpu_percent
    monitor.sample_now()
    assert monitor.current_interval == 1.0

    ps.cpu = 5.0
    ps.procs[OWN].rss = 950 * MB  # within 10 % of max_memory_mb
    monitor.sample_now()
    assert monitor.current_interval == 1.0

    ps.procs[OWN].rss = 100 * MB
    nvml.gpus[0].memory_used = 93 * GIB  # 94 GiB of 100 GiB in use over both GPUs
    monitor.sample_now()
    assert monitor.current_interval == 1.0

    nvml.gpus[0].memory_used = 10 * GIB
    ps.battery = sbattery(10.0, 600, False)  # low and discharging
    monitor.sample_now()
    assert monitor.current_interval == 1.0
    ps.battery = sbattery(10.0, POWER_TIME_UNLIMITED, True)  # low but charging: idle again
    monitor.sample_now()
    assert monitor.current_interval == 4.0


@pytest.mark.parametrize("base, slowest, fastest", [(5.0, 10.0, 2.5), (0.15, 0.6, 0.1), (30.0, 30.0, 15.0)])
def test_interval_bounds(base, slowest, fastest):
    ps = fake_psutil()
    monitor = make(psutil_module=ps, monitor_interval_seconds=base)
    ps.cpu = 1.0
    for _ in range(5):
        monitor.sample_now()
    assert monitor.current_interval == slowest
    ps.cpu = 99.0
    monitor.sample_now()
    assert monitor.current_interval == fastest


# --------------------------------------------------------------------------- lifecycle


def monitor_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "dualtrack-resource-monitor"]


def test_start_and_stop_are_idempotent_and_the_thread_exits():
    nvml = two_gpus()
    registry = CollectorRegistry()
    monitor = make(registry, nvml=nvml, monitor_interval_seconds=10.0)  # long waits: stop must interrupt them
    before = len(monitor_threads())
    monitor.start_monitoring()
    monitor.start_monitoring()
    assert len(monitor_threads()) == before + 1 and monitor.running
    wait_until(lambda: monitor.snapshot() is not None, 3, "a first snapshot")
    snap = monitor.snapshot()
    assert snap is not None and len(snap.gpus) == 2

    started = time.monotonic()
    monitor.stop_monitoring()
    assert time.monotonic() - started < 1.0
    monitor.stop_monitoring()
    assert not monitor.running and len(monitor_threads()) == before
    assert nvml.shutdown_calls == 1 and not nvml.initialized

    monitor.start_monitoring()  # restartable; NVML comes back
    wait_until(lambda: nvml.init_calls == 2, 3, "NVML initialised again")
    monitor.stop_monitoring()
    assert nvml.shutdown_calls == 2 and not monitor.running


def test_thread_samples_repeatedly():
    ps = fake_psutil()
    ps.cpu = 50.0  # not idle: the interval stays at the base
    clock = VirtualClock()  # advanced between readings so each has its own timestamp
    monitor = make(psutil_module=ps, clock=clock, monitor_interval_seconds=0.1)
    seen = set()

    def readings() -> bool:
        snap = monitor.snapshot()
        if snap is not None:
            seen.add(snap.timestamp)
            clock.advance(1)
        return len(seen) >= 3

    monitor.start_monitoring()
    try:
        wait_until(readings, 3, "three readings")
    finally:
        monitor.stop_monitoring()


def test_disabled_monitoring_starts_no_thread():
    monitor = make(enable_resource_monitoring=False)
    monitor.start_monitoring()
    assert not monitor.running
    assert monitor.sample_now().process_memory_bytes == 100 * MB  # on-demand reading still works
    monitor.stop_monitoring()


# --------------------------------------------------------------------------- snapshot, usage, constraints


def test_snapshot_is_immutable_and_usage_is_a_plain_dict():
    ps = fake_psutil(battery=sbattery(50.0, 1800, False), temperatures={"k10temp": [shwtemp("Tctl", 60.0, 0, 0)]})
    monitor = make(psutil_module=ps, nvml=two_gpus())
    usage = monitor.get_current_usage()  # takes the first reading itself
    snap = monitor.snapshot()
    assert snap is not None
    with pytest.raises(TypeError):
        snap.temperatures["x"] = 1.0  # type: ignore[index]
    with pytest.raises(AttributeError):
        snap.cpu_ratio = 0.5  # type: ignore[misc]

    assert usage["timestamp"] == snap.timestamp
    assert usage["cpu_percent"] == pytest.approx(10.0)
    assert usage["process_cpu_percent"] == pytest.approx(10.0)  # 40 % of one CPU out of 4
    assert usage["memory_total_mb"] == 16 * 1024 and usage["memory_used_mb"] == 4 * 1024
    assert usage["process_memory_mb"] == 100
    assert usage["battery"] == {"percent": 50.0, "power_plugged": False, "seconds_left": 1800.0}
    assert usage["temperatures"] == {"k10temp": 60.0}
    assert usage["gpus"][0] == {"index": 0, "name": "NVIDIA H100 80GB HBM3", "utilization_percent": 75.0,
                                "memory_used_mb": 30 * 1024, "memory_total_mb": 80 * 1024,
                                "temperature_celsius": 61.0, "power_watts": 350.5}
    assert usage["gpus"][1]["temperature_celsius"] is None


def test_check_constraints_flags_with_values_and_limits():
    constraints = ResourceConstraints(max_memory_mb=512, max_gpu_memory_mb=16 * 1024, battery_threshold_percent=20)
    ps = fake_psutil(battery=sbattery(12.0, 900, False))
    ps.procs[OWN].rss = 600 * MB
    monitor = make(psutil_module=ps, nvml=two_gpus())
    assert not any(monitor.check_constraints(constraints).values())  # no reading yet: nothing measured
    monitor.sample_now()
    checks = monitor.check_constraints(constraints)

    assert checks["memory"] and checks["memory"].value == 600 * MB and checks["memory"].limit == 512 * MB
    assert checks["gpu_memory"] and checks["gpu_memory"].value == 31 * GIB
    assert checks["gpu_memory"].limit == 16 * 1024 * MB
    assert checks["battery"] and checks["battery"].value == 0.12 and checks["battery"].limit == 0.2
    assert not checks["cpu"] and checks["cpu"].value == 0.1

    bare = make(psutil_module=fake_psutil())  # no GPU, no battery
    bare.sample_now()
    checks = bare.check_constraints(constraints)
    for name in ("gpu_memory", "battery"):
        assert not checks[name] and checks[name].value is None, name
    assert not checks["memory"] and checks["memory"].value == 100 * MB


# --------------------------------------------------------------------------- exposition


def test_nothing_is_exported_before_the_first_reading():
    registry = CollectorRegistry()
    make(registry)
    assert family_names(registry) == {"dualtrack_resource_read_errors", "dualtrack_resource_monitor_interval_seconds"}


def test_a_second_monitor_on_the_same_registry_is_rejected():
    registry = CollectorRegistry()
    make(registry)
    with pytest.raises(ValueError, match="dualtrack_cpu_usage_ratio"):
        make(registry)


@pytest.mark.prometheus
@pytest.mark.parametrize("world", ["fake", "real"])
def test_exposition_parses_and_passes_promtool(world):
    registry = CollectorRegistry()
    if world == "fake":
        ps = fake_psutil(battery=sbattery(42.0, 1234, False),
                         temperatures={"coretemp": [shwtemp("Package id 0", 51.0, 80, 100)]})
        monitor = make(registry, psutil_module=ps, nvml=two_gpus())
    else:
        monitor = ResourceMonitor(OptimizationConfig(), registry=registry)
    monitor.sample_now()
    text = generate_latest(registry).decode()

    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["dualtrack_resource_read_errors"].type == "counter"
    assert families["dualtrack_memory_total_bytes"].type == "gauge"
    if world == "fake":
        expected = {"dualtrack_cpu_usage_ratio", "dualtrack_process_cpu_usage_ratio", "dualtrack_memory_used_bytes",
                    "dualtrack_memory_total_bytes", "dualtrack_process_memory_bytes", "dualtrack_temperature_celsius",
                    *GPU_FAMILIES, *BATTERY_FAMILIES}
        assert expected <= set(families)
        assert all(f.documentation for f in families.values())
    result = promtool("check", "metrics", input=text, check=True)
    assert result.returncode == 0
