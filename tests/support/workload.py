"""A synthetic workload that turns the real exporter into Prometheus history.

The dashboards and recording rules are only proven by running their queries
against a Prometheus holding data the library itself produced. This module
drives real ``DualTrackOptimizer`` instances (the exporter under test, not a
copy of its metric names) through half an hour of *virtual* time and
renders their registries every scrape interval into OpenMetrics text with
timestamps, ready for ``PrometheusServer.backfill_openmetrics()``::

    history = run_workload(tmp_path, end=time.time())
    prom.backfill_openmetrics(history.openmetrics())
    prom.start()
    prom.query("sum(rate(dualtrack_requests_total[2m]))", time=history.end - 30)

The topology is the one ``docker-compose.yml`` runs, with one more router:

- ``router-a:9464`` adapts in-process (the embedded adapter): a laptop with
  a GPU and a battery that drains below its threshold near the end.
- ``router-b:9464`` obeys a preferences file (``preferences_file``): a
  server with a GPU, no battery, no temperature sensors (absent, not 0) and
  no cost budget (``dualtrack_cost_budget_dollars_per_hour`` absent).
- ``adapter:9465`` publishes that file every cycle. The adapter process is
  being written separately; until it lands, :class:`AdapterStandIn` runs
  the real rule engine (``AdaptiveOptimizer``) over router-b's windows,
  publishes through the real ``PreferencesWriter`` and exports the adapter's
  metric contract (the names in docs/prometheus.md) itself.

Machines are faked with ``tests/fakes`` (psutil, NVML) so every resource
gauge has real values on any machine. Traffic covers every path (local,
api, parallel), query class and outcome, plus a few deliberately bad inputs
so the instrumentation-health counters have series. Everything is seeded:
the same call produces the same history.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dualtrack.adapter.embedded import AdaptiveOptimizer
from dualtrack.adapter.learned_state import StateCollector
from dualtrack.adapter.plan_view import PlanCollector
from dualtrack.clock import VirtualClock
from dualtrack.config import ModelPrice, OptimizationConfig, ResourceConstraints
from dualtrack.exporter.monitor import ResourceMonitor
from dualtrack.optimizer import DualTrackOptimizer
from dualtrack.preferences import PreferencesWriter
from fakes.fake_nvml import FakeGpu, FakeNvml
from fakes.fake_psutil import MISSING, FakeProc, FakePsutil, sbattery, shwtemp, svmem

from .prometheus import PrometheusServer, openmetrics_text

GIB = 1024 ** 3
MIB = 1024 ** 2

ROUTER_JOB = "dualtrack-router"
ADAPTER_JOB = "dualtrack-adapter"
ROUTER_A = "router-a:9464"
ROUTER_B = "router-b:9464"
ADAPTER = "adapter:9465"

CLASSES = ("short", "medium", "long")
PATHS = ("local", "api", "parallel")
LOCAL_MODEL = "llama-3.1-8b-instruct"
API_MODEL = "gpt-4o-mini"
PRICES = {LOCAL_MODEL: ModelPrice(0.0, 0.0), API_MODEL: ModelPrice(2.5, 10.0)}

# Median latency (seconds) per path and class; parallel is the faster leg.
_LATENCY = {
    ("local", "short"): 0.35, ("local", "medium"): 1.4, ("local", "long"): 4.5,
    ("api", "short"): 0.8, ("api", "medium"): 1.6, ("api", "long"): 3.2,
}
_QUALITY = {"local": 0.74, "api": 0.9, "parallel": 0.88}
_TOKENS_IN = {"short": 120, "medium": 900, "long": 3200}
_CLASS_MIX = (("short", 0.5), ("medium", 0.35), ("long", 0.15))

Series = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], List[Tuple[float, float]]]


# --------------------------------------------------------------------------- the adapter


class AdapterStandIn:
    """The adapter process's job and metric contract, in-process and in virtual time.

    Runs the real rule engine over a router's sliding windows and publishes
    real preferences files; exports ``dualtrack_adapter_*`` under the names
    the adapter process serves (see docs/prometheus.md).
    """

    def __init__(self, config: OptimizationConfig, router: DualTrackOptimizer, clock: VirtualClock,
                 output: Path) -> None:
        self.clock = clock
        # It keeps its learned state beside the preferences, as the compose stack's adapter does.
        config = dataclasses.replace(config, adaptation_state_file=str(output.parent / "adapter-state.json"))
        self.engine = AdaptiveOptimizer(config, router.collector, router.resource_monitor, clock=clock,
                                        in_flight=router.in_flight_count)
        self.writer = PreferencesWriter(output, clock=clock)
        r = self.registry = CollectorRegistry()
        self.cycles = Counter("dualtrack_adapter_cycles", "Adaptation cycles, by result.", ["result"], registry=r)
        for result in ("ok", "no_data", "error"):
            self.cycles.labels(result)
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
        self.cycle_duration = Histogram("dualtrack_adapter_cycle_duration_seconds", "Cycle duration.",
                                        buckets=buckets, registry=r)
        self.query_duration = Histogram("dualtrack_adapter_query_duration_seconds", "PromQL query duration.",
                                        buckets=buckets, registry=r)
        self.query_errors = Counter("dualtrack_adapter_query_errors", "Failed queries, by type.", ["type"],
                                    registry=r)
        for kind in ("unavailable", "timeout", "auth", "bad_query", "bad_response"):
            self.query_errors.labels(kind)
        self.evaluations = Counter("dualtrack_adapter_rule_evaluations", "Rule evaluations.",
                                   ["strategy", "rule"], registry=r)
        self.fires = Counter("dualtrack_adapter_rule_fires", "Rules fired.", ["strategy", "rule"], registry=r)
        self.preference = Gauge("dualtrack_adapter_preference", "Published preferences.",
                                ["preference", "query_class"], registry=r)
        self.last_publish = Gauge("dualtrack_adapter_last_publish_timestamp_seconds", "Last publish.",
                                  registry=r)
        self.reload_success = Gauge("dualtrack_adapter_rules_reload_success", "Rules reload ok.", registry=r)
        self.last_reload = Gauge("dualtrack_adapter_rules_last_reload_timestamp_seconds", "Last reload.",
                                 registry=r)
        self.mode_info = Gauge("dualtrack_adapter_mode_info", "Strategy and mode.", ["strategy", "mode"],
                               registry=r)
        assert self.engine.state is not None
        r.register(StateCollector(self.engine.state, "dualtrack_adapter"))  # the process's own exporter
        # No history to replay: the stand-in starts with its routers (the process replays what Prometheus holds).
        self.replayed = Counter("dualtrack_adapter_replayed_intervals", "History replayed at start.", registry=r)
        # The real collector of what the objective-driven strategy believes, as the process registers it.
        r.register(PlanCollector(lambda: self.engine.engine.plan, "dualtrack_adapter"))
        self.reload_success.set(1)
        self.last_reload.set(clock.time())
        self._rng = random.Random(7)
        self._mode: Optional[Tuple[str, str]] = None

    def cycle(self) -> None:
        # The engine's own work takes no virtual time; the durations are what
        # a PromQL round trip on loopback typically costs.
        for _ in range(4):
            self.query_duration.observe(self._rng.uniform(0.004, 0.03))
        note = self.engine.adapt_strategy()
        self.cycle_duration.observe(self._rng.uniform(0.02, 0.12))
        if not note.get("ok"):
            self.cycles.labels("error").inc()
            return
        self.cycles.labels("ok").inc()
        # Rules belong to the strategy being followed (an adaptive strategy's mode).
        active = self.engine.engine.active_strategy()
        for rule in active.rules:
            self.evaluations.labels(active.name, rule.name).inc()
        for name in note.get("fired", []):
            self.fires.labels(active.name, name).inc()
        prefs = dataclasses.replace(self.engine.current_preferences(), source="prometheus")
        self.writer.publish(prefs)
        self.last_publish.set(self.clock.time())
        for qc in CLASSES:
            for name, value in prefs.routing_for(qc).as_dict().items():
                self.preference.labels(name, qc).set(value)
        mode = (note["strategy"], note.get("mode") or "")
        if mode != self._mode:
            if self._mode is not None:
                self.mode_info.remove(*self._mode)
            self.mode_info.labels(*mode).set(1)
            self._mode = mode


# --------------------------------------------------------------------------- routers


@dataclass
class _Machine:
    """A faked machine whose readings follow the virtual time."""

    psutil: FakePsutil
    nvml: FakeNvml
    battery: bool

    def at(self, f: float) -> None:
        """Set the readings for fraction ``f`` (0..1) of the run."""
        wave = math.sin(f * 6 * math.pi)
        self.psutil.cpu = 35.0 + 20.0 * wave
        used = int((5.0 + 2.0 * f) * GIB)
        self.psutil.memory = svmem(16 * GIB, 16 * GIB - used, used / (16 * GIB) * 100, used, 16 * GIB - used)
        self.psutil.procs[os.getpid()] = FakeProc(rss=int((700 + 500 * f) * MIB), cpu_percent=60.0 + 30 * wave)
        gpu = self.nvml.gpus[0]
        gpu.utilization_percent = int(50 + 30 * wave)
        gpu.memory_used = int((6.0 + 3.0 * f) * GIB)
        gpu.temperature = int(55 + 15 * f)
        gpu.power_mw = int(180_000 + 60_000 * wave)
        if self.battery:
            percent = 60.0 - 48.0 * f  # crosses the 20 % threshold at f ≈ 0.83
            self.psutil.battery = sbattery(percent, int(percent * 90), False)
            self.psutil.temperatures = {"coretemp": [shwtemp("Core 0", 58.0, 90.0, 100.0),
                                                     shwtemp("Package id 0", 60.0 + 10 * f, 90.0, 100.0)]}


@dataclass
class SimulatedRouter:
    instance: str
    optimizer: DualTrackOptimizer
    machine: _Machine
    rate_per_second: float
    rng: random.Random
    started: int = 0


def _router(instance: str, clock: VirtualClock, *, battery: bool, budget: Optional[float],
            preferences_file: Optional[str], seed: int) -> SimulatedRouter:
    config = OptimizationConfig(
        strategy="adaptive",
        constraints=ResourceConstraints(max_memory_mb=4096, max_cpu_percent=80, max_gpu_memory_mb=16384,
                                        max_concurrent_requests=8, target_latency_ms=4000,
                                        max_cost_per_request=0.01, battery_threshold_percent=20,
                                        max_cost_per_hour=budget, min_quality_score=0.6),
        prices=dict(PRICES),
        preferences_file=preferences_file,
        adaptation_interval_seconds=30.0,
        enable_caching=True,
    )
    ps = FakePsutil(battery=None if battery else MISSING, temperatures={} if battery else MISSING, ncpu=8)
    nv = FakeNvml([FakeGpu("NVIDIA RTX 4090" if battery else "NVIDIA L4", memory_total=24 * GIB)])
    machine = _Machine(ps, nv, battery)
    machine.at(0.0)
    registry = CollectorRegistry()
    monitor = ResourceMonitor(config, clock=clock, psutil_module=ps, nvml=nv, registry=registry)
    monitor.min_cpu_window_seconds = 0.0  # fakes have no counters to difference
    optimizer = DualTrackOptimizer(config, registry=registry, clock=clock, resource_monitor=monitor)
    return SimulatedRouter(instance, optimizer, machine, rate_per_second=2.0, rng=random.Random(seed))


# --------------------------------------------------------------------------- the run


@dataclass
class History:
    """The rendered history: samples per series, and the span they cover."""

    start: float
    end: float
    scrape_interval: float
    series: Series = field(default_factory=dict)
    preferences_file: Optional[Path] = None

    def openmetrics(self) -> str:
        return openmetrics_text((name, dict(labels), points) for (name, labels), points in self.series.items())

    def names(self) -> List[str]:
        return sorted({name for name, _ in self.series})


def _scrape(series: Series, registry: CollectorRegistry, ts: float, target: Mapping[str, str]) -> None:
    """Append one scrape of ``registry`` at ``ts``, with the target's job and instance labels."""
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue  # scraped as separate series only by some setups; nothing here reads them
            labels = dict(sample.labels)
            labels.update(target)
            key = (sample.name, tuple(sorted(labels.items())))
            series.setdefault(key, []).append((ts, float(sample.value)))
    key = ("up", tuple(sorted(target.items())))
    series.setdefault(key, []).append((ts, 1.0))


def _pick(rng: random.Random, weighted: Iterable[Tuple[str, float]]) -> str:
    x, acc = rng.random(), 0.0
    items = list(weighted)
    for value, weight in items:
        acc += weight
        if x < acc:
            return value
    return items[-1][0]


def run_workload(workdir: Path, *, end: float, duration_seconds: float = 1800.0,
                 scrape_interval: float = 15.0, adapt_interval: float = 30.0) -> History:
    """Run the workload so that its last scrape is at ``end`` (unix seconds); return the history."""
    end = float(int(end))
    start = end - duration_seconds
    clock = VirtualClock(start=start)
    prefs_file = Path(workdir) / "preferences.json"
    prefs_file.parent.mkdir(parents=True, exist_ok=True)

    a = _router(ROUTER_A, clock, battery=True, budget=50.0, preferences_file=None, seed=1)
    b = _router(ROUTER_B, clock, battery=False, budget=None, preferences_file=str(prefs_file), seed=2)
    adapter_config = dataclasses.replace(b.optimizer.config, preferences_file=None)
    adapter = AdapterStandIn(adapter_config, b.optimizer, clock, prefs_file)
    routers = (a, b)
    history = History(start=start, end=end, scrape_interval=scrape_interval, preferences_file=prefs_file)

    events: List[Tuple[float, int, str, Any]] = []
    seq = 0

    def push(at: float, kind: str, payload: Any = None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, seq, kind, payload))

    for router in routers:
        push(start + router.rng.expovariate(router.rate_per_second), "arrive", router)
    t = start
    while t <= end + 1e-9:
        push(t, "scrape")
        t += scrape_interval
    t = start + adapt_interval
    while t <= end:
        push(t - 1e-3, "adapt")  # just before the scrape at the same second
        t += adapt_interval
    push(start + 300.0, "bad_inputs")
    adapter.cycle()  # the adapter publishes once at start, as the process does

    while events:
        at, _, kind, payload = heapq.heappop(events)
        if at > end + 1e-9:
            break
        if at > clock.time():
            clock.advance(at - clock.time())
        f = (clock.time() - start) / duration_seconds
        if kind == "arrive":
            router = payload
            _arrive(router, push, clock.time())
            push(clock.time() + router.rng.expovariate(router.rate_per_second), "arrive", router)
        elif kind == "complete":
            router, rid, path, result, success, error_type = payload
            router.optimizer.record_request_completion(rid, path, result, success=success, error_type=error_type)
        elif kind == "adapt":
            a.optimizer.adapt_now()
            adapter.cycle()
        elif kind == "scrape":
            for router in routers:
                router.machine.at(f)
                router.optimizer.resource_monitor.sample_now()
                _scrape(history.series, router.optimizer.registry, clock.time(),
                        {"job": ROUTER_JOB, "instance": router.instance})
            _scrape(history.series, adapter.registry, clock.time(), {"job": ADAPTER_JOB, "instance": ADAPTER})
        elif kind == "bad_inputs":
            _bad_inputs(a.optimizer)
    return history


def _arrive(router: SimulatedRouter, push: Callable[..., None], now: float) -> None:
    rng = router.rng
    router.started += 1
    rid = f"{router.instance}-{router.started}"
    qc = _pick(rng, _CLASS_MIX)
    context = {"query_class": qc, "estimated_tokens": _TOKENS_IN[qc], "complexity": rng.random()}
    rec = router.optimizer.get_optimization_recommendations("", context)
    # Mostly obey the recommendation; explore the rest so every path has traffic.
    path = rec["preferred_path"] if rng.random() < 0.7 else rng.choice(PATHS)
    router.optimizer.record_request_start(rid, "", context)

    if path == "parallel":
        median = min(_LATENCY[("local", qc)], _LATENCY[("api", qc)]) * 0.95
    else:
        median = _LATENCY[(path, qc)]
    latency = median * math.exp(rng.gauss(0.0, 0.35))
    timeout = rec["timeouts_seconds"].get(path, 30.0)
    tokens_in = _TOKENS_IN[qc] + rng.randint(0, 40)
    tokens_out = rng.randint(150, 600)
    model = LOCAL_MODEL if path == "local" else API_MODEL
    quality = min(1.0, max(0.0, rng.gauss(_QUALITY[path] - (0.08 if qc == "long" and path == "local" else 0.0), 0.05)))
    result: Dict[str, Any] = {"tokens_in": tokens_in, "tokens_out": tokens_out, "model": model}
    success, error_type = True, None
    roll = rng.random()
    if latency > timeout or roll < 0.015:
        latency = min(latency, timeout)
        success, error_type = False, "timeout"
        tokens_out = 0
        result["tokens_out"] = 0
    elif roll < 0.04 + (0.02 if path == "api" else 0.0):
        # The API's last sixth of its errors is a rate limit's refusal (HTTP 429).
        success, error_type = False, "rate_limited" if roll >= 0.05 else "upstream_5xx"
        result["tokens_out"] = 0
    elif roll < 0.05 + (0.02 if path == "api" else 0.0):
        success, error_type = False, "cancelled"
        latency *= 0.5
    else:
        result["quality_score"] = round(quality, 3)
    push(now + latency, "complete", (router, rid, path, result, success, error_type))


def _bad_inputs(optimizer: DualTrackOptimizer) -> None:
    """A few inputs a careless caller sends, so the health counters have series."""
    optimizer.record_request_completion("never-started", "local", {"tokens_out": 10, "model": LOCAL_MODEL})
    optimizer.record_request_start("bad-quality", "", {"query_class": "short"})
    optimizer.record_request_completion("bad-quality", "local", {"quality_score": 1.7, "model": LOCAL_MODEL})
    optimizer.record_request_start("odd-path", "", {"query_class": "short"})
    optimizer.record_request_completion("odd-path", "gpu-cluster", {"tokens_out": 10, "model": LOCAL_MODEL})
    optimizer.record_request_start("unpriced", "", {"query_class": "medium"})
    optimizer.record_request_completion("unpriced", "api", {"tokens_out": 10, "model": "mystery-model"})


# --------------------------------------------------------------------------- a Prometheus holding the history


@dataclass
class BackfilledStack:
    """A real Prometheus holding a workload's history, with the rule files loaded.

    The history ends when the workload starts (``history.end`` is about
    "now"), so the recording and alerting rules, evaluated live every
    second, see the last two minutes of real traffic; dashboard queries run
    at ``query_time``, an explicit time inside the history (a "now" query
    would only reach 5 minutes back).
    """

    prom: PrometheusServer
    history: History

    @property
    def query_time(self) -> float:
        return self.history.end - 30.0

    def close(self) -> None:
        self.prom.close()


_STACKS: Dict[Tuple[str, ...], BackfilledStack] = {}
#: How old a stack's history may be for another test module to reuse it.
STACK_REUSE_SECONDS = 45.0


def backfilled_stack(workdir: Path, rule_files: Iterable[Path] = ()) -> BackfilledStack:
    """The one stack of this test session for ``rule_files`` (built on first use).

    Test modules share it through session fixtures that call this: building
    it (workload, backfill, start) takes a few seconds, once.
    """
    key = tuple(str(p) for p in rule_files)
    stack = _STACKS.get(key)
    # Reuse only a recent stack: the rules evaluate live over the history's
    # last minutes. A rate over 2m needs two scrapes (15 s apart) in its
    # window, so the request rules go empty about 105 s after the history's
    # end (a stack built early in a long test run goes stale).
    if stack is not None and stack.prom.running and time.time() - stack.history.end < STACK_REUSE_SECONDS:
        return stack
    if stack is not None:
        stack.close()
    workdir = Path(workdir)
    history = run_workload(workdir / "workload", end=time.time())
    prom = PrometheusServer(workdir / "prometheus", rule_files=[Path(p) for p in key])
    prom.backfill_openmetrics(history.openmetrics())
    prom.start()
    stack = _STACKS[key] = BackfilledStack(prom, history)
    return stack
