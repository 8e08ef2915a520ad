"""The embedded adapter: the rule engine inside the router process.

``EmbeddedSource`` computes every built-in signal from the in-process
sliding windows (``MetricsCollector``) and the machine readings
(``ResourceMonitor``), with the same meaning as its PromQL form (the same
window length, ratios of sums, cancelled requests excluded where PromQL
excludes them). User PromQL-only signals have no embedded form and read as
no data. It reads the windows and the readings through the small Protocols
below, so the adapter does not depend on the exporter that fills them.

``AdaptiveOptimizer`` (the spec's name) runs the one adaptation controller
(``adapter.controller``) over that source with an in-memory publisher:
``adapt_strategy()`` is one cycle; ``get_routing_preferences()`` the current
routing; ``current_preferences()`` the current document (it is a
``PreferenceSource``). ``DualTrackOptimizer`` owns one and runs it on a
thread every ``adaptation_interval_seconds`` (or on demand with
``adapt_now()``; the simulator calls it in virtual time).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Protocol, Sequence, Tuple

from .._quantile import quantile
from ..bundled import bundled_dir
from ..clock import SYSTEM_CLOCK, Clock
from ..config import OptimizationConfig
from ..constraints import MB, ConstraintCheck, MachineState, request_checks, resource_checks
from ..preferences import ConstraintState, Preferences, Routing
from ..vocabulary import RATE_LIMITED
from .controller import AdaptationController, MemoryPublisher
from .engine import RuleEngine
from .estimator import MEMORY_SIGNALS
from .learned_state import StateFile
from .signals import Catalog, SignalValues
from .strategy import StrategySet, load_strategies

log = logging.getLogger(__name__)


class RequestRecord(Protocol):
    """One finished request in a window (``exporter.collector.PerformanceMetrics``)."""

    timestamp: float
    latency_ms: float
    tokens_processed: int
    cost_estimate: float
    quality_score: float
    outcome: str
    error_type: Optional[str]
    has_cost: bool
    has_quality: bool


class RequestWindows(Protocol):
    """The sliding windows of recent requests (``exporter.collector.MetricsCollector``)."""

    def records(self, path: Optional[str] = None, query_class: Optional[str] = None,
                since: Optional[float] = None) -> Sequence[RequestRecord]: ...

    def paths_and_classes(self) -> Sequence[Tuple[str, str]]: ...


class MachineReading(MachineState, Protocol):
    """A machine reading as the signals read it (``exporter.readings.ResourceSnapshot``)."""

    @property
    def gpu_utilization_ratio(self) -> Optional[float]: ...


class MachineMonitor(Protocol):
    """Where machine readings come from (``exporter.monitor.ResourceMonitor``, the simulator's machine).

    Both also keep their recent readings (``readings_between(start, end)``: those taken in that
    span, oldest first), which the interval's extremes are read from; a monitor without that
    method gives the latest reading only."""

    def snapshot(self) -> Optional[MachineReading]: ...


#: ``readings_between(start, end)`` of a monitor that keeps its recent readings.
RecentReadingsProbe = Callable[[float, float], Sequence[MachineReading]]


class LocalServerReading(Protocol):
    """The local model server's own load (``exporter.local_server.LocalServerLoad``, the simulator's).

    None where the server does not say (llama.cpp has no KV-cache gauge, no
    server exports its slots: they are declared)."""

    @property
    def queue_depth(self) -> Optional[float]: ...

    @property
    def running(self) -> Optional[float]: ...

    @property
    def slots(self) -> Optional[float]: ...

    @property
    def kv_cache_usage_ratio(self) -> Optional[float]: ...

    @property
    def preemptions_per_second(self) -> Optional[float]: ...


#: Where the embedded source reads the local server's load: None when it exports none.
LocalServerProbe = Callable[[], Optional[LocalServerReading]]


def _request_signals(records: Sequence[RequestRecord], span: float) -> Dict[str, Optional[float]]:
    """Every request signal over one window of records (``span`` seconds long)."""
    decided = [r for r in records if r.outcome != "cancelled"]
    latencies = sorted(r.latency_ms / 1000.0 for r in decided)
    costed = [r for r in records if r.has_cost]
    quality = [r.quality_score for r in decided if r.outcome == "success" and r.has_quality]
    n = len(decided)
    out: Dict[str, Optional[float]] = {
        "requests_per_second": len(records) / span if span > 0 else None,
        "latency_p50_seconds": quantile(latencies, 0.50) if latencies else None,
        "latency_p95_seconds": quantile(latencies, 0.95) if latencies else None,
        "latency_p99_seconds": quantile(latencies, 0.99) if latencies else None,
        "latency_mean_seconds": sum(latencies) / len(latencies) if latencies else None,
        "success_ratio": sum(1 for r in decided if r.outcome == "success") / n if n else None,
        "error_ratio": sum(1 for r in decided if r.outcome == "error") / n if n else None,
        "timeout_ratio": sum(1 for r in decided if r.outcome == "timeout") / n if n else None,
        "rate_limited_ratio": (sum(1 for r in decided if r.outcome == "error" and r.error_type == RATE_LIMITED) / n
                               if n else None),
        "cost_per_request_dollars": sum(r.cost_estimate for r in costed) / len(costed) if costed else None,
        "cost_burn_dollars_per_hour": (sum(r.cost_estimate for r in costed) / span * 3600.0
                                       if costed and span > 0 else None),
        "quality_mean": sum(quality) / len(quality) if quality else None,
        "tokens_per_second": sum(r.tokens_processed for r in records) / span if span > 0 and records else None,
    }
    return out


class EmbeddedSource:
    """Signals from the in-process windows. No server, no network."""

    name = "embedded"

    def __init__(self, config: OptimizationConfig, collector: RequestWindows,
                 snapshot: Callable[[], Optional[MachineReading]], *, in_flight: Callable[[], int] = lambda: 0,
                 clock: Clock = SYSTEM_CLOCK, local_server: Optional[LocalServerProbe] = None,
                 calls_in_flight: Optional[Callable[[str], Optional[int]]] = None,
                 readings: Optional[RecentReadingsProbe] = None) -> None:
        self.config = config
        self.collector = collector
        self._snapshot = snapshot
        self._readings = readings
        self._in_flight = in_flight
        self._local_server = local_server
        self._calls_in_flight = calls_in_flight
        self.clock = clock

    def _span(self, window: Sequence[RequestRecord], kept: Sequence[RequestRecord], now: float) -> float:
        """Seconds the kept records cover: the whole window, unless the bounded
        deque dropped records inside it (then from the oldest record kept)."""
        length = self.config.signal_window_seconds
        if kept and len(window) >= self.config.metrics_window_size and len(kept) == len(window):
            return max(now - min(r.timestamp for r in kept), 1e-6)
        return length

    def fetch(self, catalog: Optional[Catalog] = None, at: Optional[float] = None,
              deadline: Optional[float] = None) -> SignalValues:
        """Every built-in signal at wall time ``at`` (default: now). Reading the
        windows takes microseconds: ``deadline`` is accepted and not needed."""
        now = self.clock.time() if at is None else at
        since = now - self.config.signal_window_seconds
        values = SignalValues()
        classes = {qc for _, qc in self.collector.paths_and_classes()}
        paths = {p for p, _ in self.collector.paths_and_classes()}
        selections: List[Tuple[Optional[str], Optional[str]]] = [(None, None)]
        selections += [(p, None) for p in sorted(paths)]
        selections += [(None, qc) for qc in sorted(classes)]
        selections += [(p, qc) for p, qc in self.collector.paths_and_classes()]
        for path, qc in selections:
            window = self.collector.records(path, qc)
            # Records stamped after ``now`` were made before the wall clock was
            # set back: out of the window, or they would stand in for fresh
            # traffic for as long as the jump (an hour back: an hour of stale
            # signals) and make the span negative.
            kept = [r for r in window if since <= r.timestamp <= now]
            if not kept:
                continue
            labels = {}
            if path is not None:
                labels["path"] = path
            if qc is not None:
                labels["query_class"] = qc
            for name, value in _request_signals(kept, self._span(window, kept, now)).items():
                values.set(name, labels, value)

        self._interval_counts(values, now)
        c = self.config.constraints
        snap = self._snapshot()
        in_flight = self._in_flight()
        values.set("in_flight_requests", {}, in_flight)
        values.set("concurrency_used_ratio", {}, in_flight / c.max_concurrent_requests)
        values.set("latency_target_seconds", {}, c.target_latency_ms / 1000.0)
        values.set("cost_per_request_limit_dollars", {}, c.max_cost_per_request)
        values.set("cost_budget_dollars_per_hour", {}, c.max_cost_per_hour)
        values.set("battery_threshold_ratio", {}, c.battery_threshold_percent / 100.0)
        values.set("min_quality_ratio", {}, c.min_quality_score)
        values.set("cpu_limit_ratio", {}, c.max_cpu_percent / 100.0)
        for name, check in self.constraint_checks_from(values, snap, in_flight).items():
            if check.value is not None and check.limit is not None:
                values.set("constraint_violated", {"constraint": name}, 1.0 if check.violated else 0.0)
        violated = values.series("constraint_violated")
        if violated:
            values.set("constraint_violated", {}, max(violated.values()))
        self._server_signals(values)
        if snap is not None:
            values.set("cpu_usage_ratio", {}, snap.cpu_ratio)
            values.set("memory_used_bytes", {}, snap.process_memory_bytes)
            values.set("gpu_memory_used_bytes", {}, snap.gpu_memory_used_bytes)
            for name, value in self._memory_readings(snap).items():
                values.set(name, {}, value)
            values.set("gpu_utilization_ratio", {}, snap.gpu_utilization_ratio)
            if snap.battery is not None:
                values.set("battery_ratio", {}, snap.battery.ratio)
                values.set("battery_seconds_left", {}, getattr(snap.battery, "seconds_left", None))
                if snap.battery.power_plugged is not None:
                    values.set("battery_discharging", {}, 0.0 if snap.battery.power_plugged else 1.0)
        self._interval_extremes(values, now)
        return values

    def _memory_readings(self, reading: MachineReading) -> Dict[str, Optional[float]]:
        """A reading's memory gauges as shares of their limits, and the local calls counted with it."""
        c = self.config.constraints
        process, gpu = reading.process_memory_bytes, reading.gpu_memory_used_bytes
        return {
            "memory_used_ratio": process / (c.max_memory_mb * MB) if process is not None else None,
            "gpu_memory_used_ratio": gpu / (c.max_gpu_memory_mb * MB) if gpu is not None else None,
            # getattr: a custom monitor's readings need not carry the count.
            "memory_reading_local_calls": getattr(reading, "local_calls_in_flight", None),
        }

    def _interval_extremes(self, values: SignalValues, now: float) -> None:
        """The ``*_max`` and ``*_min`` signals: the readings taken in the last adaptation interval
        (where the monitor keeps them: ``readings_between``) with the most memory and with the
        least, each read as the latest one is (its memory gauges as shares of their limits and
        the local calls counted with it). Memory is the larger of the two shares a reading has."""
        if self._readings is None:
            return
        read = [self._memory_readings(r) for r in self._readings(now - self.config.adaptation_interval_seconds, now)]

        def memory(reading: Dict[str, Optional[float]]) -> float:
            return max((v for name in MEMORY_SIGNALS if (v := reading[name]) is not None), default=-1.0)

        read = [r for r in read if memory(r) >= 0.0]
        if not read:
            return
        for end, reading in (("max", max(read, key=memory)), ("min", min(read, key=memory))):
            for name, value in reading.items():
                values.set(f"{name}_{end}", {}, value)

    def _server_signals(self, values: SignalValues) -> None:
        """The ``local_server_*`` signals from the last scrape, and the local calls in flight."""
        if self._calls_in_flight is not None:
            values.set("local_calls_in_flight", {}, self._calls_in_flight("local"))
            values.set("api_calls_in_flight", {}, self._calls_in_flight("api"))
        server = self._local_server() if self._local_server is not None else None
        if server is None:
            return
        values.set("local_server_queue_depth", {}, server.queue_depth)
        values.set("local_server_running", {}, server.running)
        values.set("local_server_slots", {}, server.slots)
        values.set("local_server_kv_cache_usage_ratio", {}, server.kv_cache_usage_ratio)
        values.set("local_server_preemptions_per_second", {}, server.preemptions_per_second)

    def _interval_counts(self, values: SignalValues, now: float) -> None:
        """The ``interval_*`` signals: the last adaptation interval's counts per path and class."""
        interval = self.config.adaptation_interval_seconds
        since = now - interval
        target = self.config.constraints.target_latency_ms
        floor = self.config.constraints.min_quality_score
        for path, qc in self.collector.paths_and_classes():
            window = self.collector.records(path, qc)
            kept = [r for r in window if since < r.timestamp <= now]
            if not kept:
                continue
            # A full deque may have dropped part of the interval: scale to the whole of it.
            scale = 1.0
            if len(window) >= self.config.metrics_window_size and len(kept) == len(window):
                covered = now - min(r.timestamp for r in kept)
                scale = interval / covered if covered > 0 else 1.0
            calls = successes = timeouts = within = useful = q_sum = q_count = cost = latency = 0.0
            limited = 0.0
            for r in kept:
                cost += r.cost_estimate
                if r.outcome == "cancelled":
                    continue
                calls += 1
                latency += r.latency_ms / 1000.0
                if r.outcome == "timeout":
                    timeouts += 1
                elif r.outcome == "error" and r.error_type == RATE_LIMITED:
                    limited += 1
                elif r.outcome == "success":
                    successes += 1
                    if r.latency_ms <= target:
                        within += 1
                    if r.has_quality:
                        q_sum += r.quality_score
                        q_count += 1
                        if r.quality_score >= floor:
                            useful += 1
            labels = {"path": path, "query_class": qc}
            for name, count in (("interval_calls", calls), ("interval_successes", successes),
                                ("interval_timeouts", timeouts), ("interval_within_target", within),
                                ("interval_useful", useful), ("interval_quality_sum", q_sum),
                                ("interval_quality_count", q_count), ("interval_cost_dollars", cost),
                                ("interval_latency_sum", latency), ("interval_latency_count", calls),
                                ("interval_rate_limited", limited)):
                values.set(name, labels, count * scale)

    def constraint_checks(self, values: Optional[SignalValues] = None) -> Dict[str, ConstraintCheck]:
        """Every constraint, from the machine and from the request windows."""
        values = values if values is not None else self.fetch()
        return self.constraint_checks_from(values, self._snapshot(), self._in_flight())

    def constraint_states(self, values: SignalValues) -> Dict[str, ConstraintState]:
        """The constraints for the preferences document: measured value, limit, violated."""
        return {name: ConstraintState(c.violated, c.value, c.limit)
                for name, c in self.constraint_checks(values).items()}

    def constraint_checks_from(self, values: SignalValues, snap: Optional[MachineState],
                               in_flight: int) -> Dict[str, ConstraintCheck]:
        checks = resource_checks(self.config.constraints, snap)
        checks.update(request_checks(
            self.config.constraints,
            in_flight=in_flight,
            latency_p95_seconds=values.get("latency_p95_seconds", {}),
            cost_per_request=values.get("cost_per_request_dollars", {"path": "api"}),
            cost_per_hour=values.get("cost_burn_dollars_per_hour", {}),
            quality_mean=values.get("quality_mean", {}),
        ))
        return checks


class AdaptiveOptimizer:
    """Adapts routing preferences in-process (the embedded adapter).

    >>> adaptive = AdaptiveOptimizer(config, collector, monitor)
    >>> notification = adaptive.adapt_strategy()   # one cycle
    >>> adaptive.get_routing_preferences()["local_bias"]
    """

    def __init__(self, config: OptimizationConfig, metrics_collector: RequestWindows,
                 resource_monitor: Optional[MachineMonitor], *, clock: Clock = SYSTEM_CLOCK,
                 strategies: Optional[StrategySet] = None,
                 in_flight: Callable[[], int] = lambda: 0, local_server: Optional[LocalServerProbe] = None,
                 calls_in_flight: Optional[Callable[[str], Optional[int]]] = None) -> None:
        self.config = config
        self.clock = clock
        self.strategies = strategies or load_strategies(config.rules_path or bundled_dir("rules"))
        self.engine = RuleEngine(self.strategies, config.strategy.value, query_classes=config.query_classes,
                                 interval_seconds=config.adaptation_interval_seconds)
        snapshot = resource_monitor.snapshot if resource_monitor is not None else (lambda: None)
        self.source = EmbeddedSource(config, metrics_collector, snapshot, in_flight=in_flight, clock=clock,
                                     local_server=local_server, calls_in_flight=calls_in_flight,
                                     readings=getattr(resource_monitor, "readings_between", None))
        # What the strategy learned before a restart (config.adaptation_state_file): restored
        # here, the first interval routes as the last one did; saved after each good cycle.
        self.state: Optional[StateFile] = None
        if config.adaptation_state_file is not None:
            self.state = StateFile(config.adaptation_state_file,
                                   max_age_seconds=config.adaptation_state_max_age_seconds,
                                   interval_seconds=config.adaptation_interval_seconds, clock=clock)
            self.state.restore(self.engine)
        base = self.engine.routing
        self.routing_preferences: Dict[str, float] = dict(base)
        self.history: Deque[Dict[str, Any]] = deque(maxlen=config.history_size)
        self.cycles = {"ok": 0, "error": 0}
        self.last_error: Optional[str] = None
        validity = 3 * config.adaptation_interval_seconds
        initial = Preferences.defaults(now=clock.time(), validity_seconds=validity)
        per_class = {qc: Routing(**p) for qc, p in self.engine.class_prefs.items()
                     if any(abs(p[name] - base[name]) > 1e-9 for name in base)}
        initial = Preferences(**{**initial.__dict__, "strategy": self.engine.strategy, "source": "embedded",
                                 "routing": Routing(**base), "query_classes": per_class, "mode": self.engine.mode})
        self.publisher = MemoryPublisher(initial)
        self.controller = AdaptationController(self.engine, self.source, self.publisher, source_name="embedded",
                                               validity_seconds=validity, clock=clock)
        self._lock = threading.Lock()  # one cycle (and its notification) at a time

    @property
    def state_load(self) -> Optional[str]:
        """What reading the learned state at start gave (``learned_state.RESULTS``; None: no state file)."""
        return self.state.at_start if self.state is not None else None

    @property
    def preferences(self) -> Preferences:
        return self.publisher.current

    def adapt_strategy(self) -> Dict[str, Any]:
        """Run one cycle; return the adaptation notification.

        On an error the current preferences stay (the spec's "maintain
        current strategy if adaptation fails") and the notification says so.
        """
        with self._lock:
            return self._adapt()

    def _adapt(self) -> Dict[str, Any]:
        now = self.clock.time()
        previous = dict(self.routing_preferences)
        cycle = self.controller.run_cycle()
        if not cycle.ok or cycle.decision is None or cycle.preferences is None:
            self.cycles["error"] += 1
            self.last_error = cycle.error
            note: Dict[str, Any] = {"timestamp": now, "ok": False, "error": self.last_error,
                                    "strategy": self.engine.strategy, "routing": previous, "changes": {},
                                    "reasons": []}
            self.history.append(note)
            return note
        decision = cycle.decision
        self.routing_preferences = dict(decision.routing)
        self.cycles["ok"] += 1
        if self.state is not None:
            self.state.save(self.engine)
        changes = {p: round(decision.routing[p] - previous[p], 6) for p in previous
                   if abs(decision.routing[p] - previous[p]) > 1e-9}
        note = {
            "timestamp": now, "ok": True, "sequence": cycle.preferences.sequence,
            "strategy": decision.strategy, "mode": decision.mode,
            "previous": previous, "routing": dict(decision.routing), "changes": changes,
            "query_classes": decision.class_overrides(),
            "timeouts_seconds": dict(decision.timeouts_seconds),
            "fired": decision.fired,
            "reasons": [{"rule": r.rule, "message": r.message, "query_class": r.query_class,
                         "signals": r.signals, "changes": r.changes} for r in decision.reasons],
        }
        self.history.append(note)
        return note

    def get_routing_preferences(self) -> Dict[str, float]:
        return dict(self.routing_preferences)

    def current_preferences(self) -> Preferences:
        return self.publisher.current

    def reload(self, strategies: StrategySet) -> None:
        with self._lock:
            self.engine.replace_strategies(strategies)
            self.strategies = strategies
