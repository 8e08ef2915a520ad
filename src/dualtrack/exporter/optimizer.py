"""``DualTrackOptimizer``: the spec's facade, what a router talks to.

    optimizer = DualTrackOptimizer(OptimizationConfig(strategy="adaptive", metrics_port=9464))
    optimizer.start()
    rec = optimizer.get_optimization_recommendations(query)
    optimizer.record_request_start(request_id, query)
    ...  # run the query on rec["preferred_path"]
    optimizer.record_request_completion(request_id, "local", {"tokens_in": 120, "tokens_out": 300,
                                                               "quality_score": 0.9})
    optimizer.stop()

It ties together the request metrics (``exporter.metrics``), the sliding
windows (``MetricsCollector``), the machine (``ResourceMonitor``) and the
source of routing preferences: the embedded adapter (default) or a
preferences file written by a separate ``dualtrack adapter`` process
(``preferences_file``).

The request path is cheap and never raises: starts and completions cost a
few dict operations and the metric updates; bad ``result`` dicts are
repaired or rejected field by field and counted in
``dualtrack_inputs_rejected_total``; internal errors are counted and
logged once. Resource readings come from the background monitor, never a
system call per request.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from itertools import islice
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..clock import SYSTEM_CLOCK, Clock
from ..config import OUTCOMES, PATHS, OptimizationConfig
from ..preferences import Preferences, PreferencesReader, Routing
from .collector import MetricsCollector, PerformanceMetrics
from ..constraints import CONSTRAINTS, MB, ConstraintCheck, resource_checks
from .metrics import OTHER, RequestMetrics
from .query_classes import QueryClassifier
from .resources import ResourceMonitor

log = logging.getLogger(__name__)

_NO_START_TIME = -1.0
_MAX_TOKENS = 10**9  # per request and direction; more is a unit mistake
_SWEEP_EVERY = 1024  # starts between sweeps of the in-flight table


@dataclass(frozen=True)
class _Overrides:
    """Immediate constraint overrides, computed from one resource reading."""

    snapshot: Any  # the ResourceSnapshot they came from (identity)
    prefs: Any  # the Preferences they came from (identity)
    over_limit: Tuple[str, ...]  # memory / gpu_memory over their limits
    battery_low: bool
    cost: Dict[str, str]  # query class -> reason, where local is preferred for cost
    api_failing: bool = False  # most recent API calls failed: steering to it would not help


def _usage_of(snap: Any) -> Tuple[float, float, float]:
    """(memory MB, CPU %, GPU %) of a snapshot for ``PerformanceMetrics``; 0.0 where absent."""
    if snap is None:
        return 0.0, 0.0, 0.0
    gpu = snap.gpu_utilization_ratio
    return (snap.process_memory_bytes / MB if snap.process_memory_bytes else 0.0,
            snap.cpu_ratio * 100.0 if snap.cpu_ratio is not None else 0.0,
            gpu * 100.0 if gpu is not None else 0.0)


class _OnceLogger:
    """Logs each distinct problem once, so a bad caller cannot flood the logs."""

    def __init__(self, limit: int = 256) -> None:
        self._seen: set = set()
        self._limit = limit

    def warning(self, key: Tuple[str, ...], message: str, *args: Any) -> None:
        if key in self._seen or len(self._seen) >= self._limit:
            return
        self._seen.add(key)
        log.warning(message, *args)


class DualTrackOptimizer:
    """Measures both tracks, watches the machine, and recommends routing.

    ``registry`` defaults to a private ``CollectorRegistry`` (pass
    ``prometheus_client.REGISTRY`` to use the global one, or serve
    ``optimizer.registry`` from your own app); ``clock`` defaults to the
    system clock (the simulator passes a virtual one).
    """

    def __init__(self, config: Optional[OptimizationConfig] = None, *,
                 registry: Optional[CollectorRegistry] = None, clock: Optional[Clock] = None,
                 resource_monitor: Optional[ResourceMonitor] = None, strategies: Any = None) -> None:
        from ..adapter.embedded import AdaptiveOptimizer

        self.config = config = config if config is not None else OptimizationConfig()
        self.clock = clock or SYSTEM_CLOCK
        self.registry = registry if registry is not None else CollectorRegistry()
        self._once = _OnceLogger()
        self.metrics = RequestMetrics(self.registry, config.query_classes, known_models=config.prices,
                                      max_model_labels=config.max_model_labels)
        self._errors = Counter("dualtrack_optimizer_errors", "Internal errors caught by the optimizer, by component.",
                               ["component"], registry=self.registry)
        self._overrides_total = Counter(
            "dualtrack_recommendation_overrides", "Recommendations changed by an immediate constraint override.",
            ["override"], registry=self.registry)
        self._cycles = Counter("dualtrack_adaptation_cycles", "Embedded adaptation cycles, by result.",
                               ["result"], registry=self.registry)
        self.collector = MetricsCollector(config)
        self.classifier = QueryClassifier(config, fold=self.metrics.fold_class)
        if resource_monitor is None and config.enable_resource_monitoring:
            resource_monitor = ResourceMonitor(config, clock=self.clock, registry=self.registry)
        self.resource_monitor = resource_monitor

        # In-flight tables: request id -> (monotonic start, query class), in
        # start order. ``_calls`` holds what counts as a model call (a
        # single-track request, a parallel request's legs), ``_parents`` the
        # parallel requests themselves (timed, not counted as calls). Bounded:
        # entries older than the TTL are swept out (and counted).
        #
        # No lock on the hot path: every step is one operation on a dict
        # (pop, setitem, len), atomic in CPython. Two Python locks per request
        # (this table's and the windows') made threads queue behind whichever
        # holder the GIL had preempted: 2-3x the single-thread cost per
        # request at 8-16 threads (docs/benchmarks.md).
        self._calls: Dict[Any, Tuple[float, str]] = {}
        self._parents: Dict[Any, Tuple[float, str]] = {}
        self._sweep_lock = threading.Lock()  # one sweeper at a time; never taken per request
        self._starts_since_sweep = 0
        # Also sweep on time, not only every _SWEEP_EVERY starts: at low traffic
        # orphans would otherwise outlive their TTL indefinitely (and pin the
        # concurrency override on).
        self._sweep_period = config.inflight_ttl_seconds / 10.0
        self._next_sweep = self.clock.monotonic() + self._sweep_period

        self.reader: Optional[PreferencesReader] = None
        self.adaptive: Optional[AdaptiveOptimizer] = None
        if config.preferences_file:
            self.reader = PreferencesReader(config.preferences_file, clock=self.clock,
                                            check_interval_seconds=config.preferences_check_interval_seconds,
                                            registry=self.registry)
        else:
            self.adaptive = AdaptiveOptimizer(config, self.collector, self.resource_monitor, clock=self.clock,
                                              strategies=strategies, in_flight=self.in_flight_count)

        self._cache: Dict[Tuple[str, bool, bool], Tuple[float, Any, Any, Dict[str, Any]]] = {}
        self._usage: Tuple[Any, float, float, float] = (object(), 0.0, 0.0, 0.0)  # (snapshot, derived usage)
        self._overrides: Optional[_Overrides] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._server: Any = None
        self._running = False
        self.registry.register(_StateCollector(self))

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start monitoring, the embedded adaptation thread and (if configured) /metrics."""
        if self._running:
            return
        if self.config.metrics_port is not None:
            from .exposition import serve_metrics

            # First: a busy port (MetricsPortInUse) must fail start() before
            # any thread is started, so a failed start leaves nothing behind.
            self._server = serve_metrics(self.registry, self.config)
        self._running = True
        self._stop.clear()
        if self.resource_monitor is not None:
            self.resource_monitor.start_monitoring()
        if self.adaptive is not None:
            self._thread = threading.Thread(target=self._adapt_loop, name="dualtrack-adapter", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop everything started by ``start()``. Idempotent."""
        if not self._running:
            return
        self._running = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.resource_monitor is not None:
            self.resource_monitor.stop_monitoring()
        if self._server is not None:
            self._server.close()
            self._server = None

    def __enter__(self) -> "DualTrackOptimizer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _adapt_loop(self) -> None:
        while not self._stop.wait(self.config.adaptation_interval_seconds):
            self.adapt_now()

    def adapt_now(self) -> Dict[str, Any]:
        """Run one adaptation cycle now and return the adaptation notification.

        With a preferences file, re-reads the file instead and describes it.
        """
        self._sweep(self.clock.monotonic())  # expire orphans even when no request arrives
        if self.adaptive is not None:
            note = self.adaptive.adapt_strategy()
            self._cycles.labels("ok" if note.get("ok") else "error").inc()
        else:
            assert self.reader is not None
            prefs = self.reader.current(force=True)
            note = {"timestamp": self.clock.time(), "ok": True, "source": prefs.source,
                    "strategy": prefs.strategy, "sequence": prefs.sequence,
                    "mode": prefs.mode, "routing": prefs.routing.as_dict(),
                    "fired": [r.rule for r in prefs.reasons], "reasons": [r.message for r in prefs.reasons]}
        self._cache.clear()
        return note

    # ------------------------------------------------------------ request path

    def in_flight_count(self) -> int:
        """Model calls started and not completed (parallel requests count by their legs)."""
        return len(self._calls)

    def record_request_start(self, request_id: str, query: str, context: Optional[Dict] = None) -> None:
        """Record the start of a request. Latency is measured from here (monotonic clock)."""
        try:
            if not _hashable(request_id):
                # A list or dict cannot key the in-flight table: bad input, counted;
                # its completion is then recorded as one without a start.
                self._reject("start", "unhashable_request_id", request_id)
                return
            if context is not None and type(context) is not dict and not isinstance(context, Mapping):
                self._reject("start", "context_not_a_mapping", type(context).__name__)
                context = None  # the request is still timed, classified by its query alone
            qc = self.classifier.classify(query, context)
            now = self.clock.monotonic()
            # A parallel request's legs are recorded as their own calls; the
            # request itself is tracked for its latency but is not extra work.
            counted = not (context and context.get("path") == "parallel")
            calls, parents = self._calls, self._parents
            # pop, then insert: the table stays in start order for the sweep
            previous_call = calls.pop(request_id, None)
            previous = previous_call or parents.pop(request_id, None)
            (calls if counted else parents)[request_id] = (now, qc)
            if previous is not None:
                self._reject("start", "duplicate_request_id", request_id)
                if previous_call is not None:
                    self.metrics.in_flight.dec()
            if counted:
                self.metrics.in_flight.inc()
            # A racy count is fine here: it only decides when to sweep.
            self._starts_since_sweep += 1
            if (self._starts_since_sweep >= _SWEEP_EVERY or now >= self._next_sweep
                    or len(calls) + len(parents) > self.config.max_inflight_tracked):
                self._sweep(now)
        except Exception as err:  # never break the caller's request
            self._internal_error("record_request_start", err)

    def _sweep(self, now: float) -> None:
        if not self._sweep_lock.acquire(blocking=False):
            return  # another thread is sweeping
        try:
            self._starts_since_sweep = 0
            self._next_sweep = now + self._sweep_period
            deadline = now - self.config.inflight_ttl_seconds
            overflow = len(self._calls) + len(self._parents) - self.config.max_inflight_tracked
            calls, overflow = _expire(self._calls, deadline, overflow)
            parents, _ = _expire(self._parents, deadline, overflow)
        finally:
            self._sweep_lock.release()
        expired = calls + parents
        if calls:
            self.metrics.in_flight.dec(calls)
        if expired:
            self.metrics.starts_expired.inc(expired)
            self._once.warning(("expired",), "%d started requests were never completed and expired "
                               "(counted in dualtrack_request_starts_expired_total)", expired)

    def record_request_completion(self, request_id: str, processing_path: str, result: Dict[str, Any],
                                  success: bool = True, error_type: Optional[str] = None) -> None:
        """Record the completion of a request.

        ``result`` keys (all optional): ``tokens_in``, ``tokens_out`` (or
        ``tokens_processed``, counted as output), ``cost`` (dollars; from the
        price table per ``model`` when absent), ``quality_score`` (0..1),
        ``latency_ms`` (overrides the measured time), ``model``,
        ``outcome`` (success, error, timeout, cancelled; otherwise derived
        from ``success`` and ``error_type``). Bad values are dropped and
        counted; this method never raises.
        """
        try:
            self._complete(request_id, processing_path, result, success, error_type)
        except Exception as err:
            self._internal_error("record_request_completion", err)

    def _complete(self, request_id: str, processing_path: str, result: Any, success: bool,
                  error_type: Optional[str]) -> None:
        # Hot path: the common case (a plain dict of valid values) takes the
        # inline fast checks; anything else goes through the full validators.
        now = self.clock.monotonic()
        metrics = self.metrics
        start = None
        if _hashable(request_id):  # an unhashable id was never started (see record_request_start)
            start = self._calls.pop(request_id, None)
            if start is not None:
                metrics.in_flight.dec()
            else:
                start = self._parents.pop(request_id, None)
        if start is not None:
            started, qc = start
        else:
            metrics.completions_without_start.inc()
            started, qc = _NO_START_TIME, OTHER
        # ``type() is dict`` first: isinstance against the Mapping ABC costs ~1 us.
        if type(result) is not dict and not isinstance(result, Mapping):
            if result is not None:
                self._reject("result", "not_a_mapping", type(result).__name__)
            result = {}
        get = result.get
        path = metrics.fold_path(processing_path)
        if start is None and "query_class" in result:
            qc = metrics.fold_class(get("query_class"))

        outcome = get("outcome")
        if outcome is not None and outcome not in OUTCOMES:
            self._reject("result", "bad_outcome", outcome)
            outcome = None
        if outcome is None:
            if success is True:
                outcome = "success"
            elif error_type in ("timeout", "cancelled"):
                outcome = error_type
            else:
                outcome = "error"

        latency_ms = get("latency_ms")
        if latency_ms is not None:
            latency_ms = self._non_negative("latency_ms", latency_ms)
        if latency_ms is None:
            if started == _NO_START_TIME:
                latency_ms = None
            else:
                # A monotonic clock cannot go backwards; max() guards virtual clocks fed badly.
                latency_ms = max(0.0, (now - started) * 1000.0)

        tokens_in = get("tokens_in")
        if tokens_in is None:
            tokens_in = 0
        elif not (type(tokens_in) is int and 0 <= tokens_in < _MAX_TOKENS):
            tokens_in = self._tokens("tokens_in", tokens_in)
        tokens_out = get("tokens_out")
        if tokens_out is None:
            tokens_out = 0
        elif not (type(tokens_out) is int and 0 <= tokens_out < _MAX_TOKENS):
            tokens_out = self._tokens("tokens_out", tokens_out)
        if tokens_in == 0 and tokens_out == 0 and "tokens_processed" in result:
            tokens_out = self._tokens("tokens_processed", get("tokens_processed"))
        model_raw = get("model")
        model_name = model_raw if isinstance(model_raw, str) and model_raw else path
        model = metrics.fold_model(model_name)

        cost = get("cost")
        if cost is not None and not (type(cost) is float and 0.0 <= cost < math.inf):
            cost = self._non_negative("cost", cost)
        if cost is None:
            price = self.config.prices.get(model_name)
            if price is not None:
                cost = price.cost(tokens_in, tokens_out)
            elif path != "parallel":  # a parallel request's cost is on its legs
                metrics.cost_unknown.labels(path).inc()

        quality = get("quality_score")
        if quality is not None and not (type(quality) is float and 0.0 <= quality <= 1.0):
            quality = self._non_negative("quality_score", quality)
            if quality is not None and quality > 1.0:
                self._reject("result", "bad_quality_score", quality)
                quality = None

        if isinstance(error_type, str):
            error_type = error_type[:64]
        elif error_type is not None:
            error_type = type(error_type).__name__

        metrics.observe(path, qc, outcome, latency_ms / 1000.0 if latency_ms is not None else None,
                        tokens_in, tokens_out, model, cost, quality,
                        request_id if isinstance(request_id, str) else None)
        if latency_ms is None:
            return  # no start and no latency: counted, but nothing for the windows
        monitor = self.resource_monitor
        snap = monitor.snapshot() if monitor is not None else None
        usage = self._usage
        if usage[0] is not snap:  # derived once per (immutable) snapshot, not per request
            usage = self._usage = (snap, *_usage_of(snap))
        _, memory_mb, cpu_percent, gpu_percent = usage
        # Positional, in field order: a dataclass takes keywords ~3x slower (0.85 vs 0.27 us).
        self.collector.record_metric(PerformanceMetrics(
            self.clock.time(),  # timestamp
            path,  # processing_path
            str(request_id)[:128],  # request_id
            latency_ms,
            tokens_in + tokens_out,  # tokens_processed
            memory_mb,  # memory_usage_mb
            cpu_percent,  # cpu_usage_percent
            gpu_percent,  # gpu_usage_percent
            cost or 0.0,  # cost_estimate
            quality if quality is not None else 0.0,  # quality_score
            outcome == "success",  # success
            error_type,
            qc,  # query_class
            outcome,
            tokens_in,
            tokens_out,
            cost is not None,  # has_cost
            quality is not None,  # has_quality
            model,
        ))

    def _tokens(self, name: str, value: Any) -> int:
        if value is None:
            return 0
        if type(value) is int and 0 <= value < _MAX_TOKENS:
            return value
        if isinstance(value, float) and value.is_integer() and 0 <= value < _MAX_TOKENS:
            return int(value)
        self._reject("result", f"bad_{name}", value)
        return 0

    def _non_negative(self, name: str, value: Any) -> Optional[float]:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                v = float(value)
            except OverflowError:  # an int beyond float range (10**400): rejected, not an internal error
                v = math.inf
            if v >= 0 and not math.isinf(v):  # NaN fails v >= 0
                return v
        self._reject("result", f"bad_{name}", value)
        return None

    def _reject(self, what: str, reason: str, value: Any) -> None:
        self.metrics.inputs_rejected.labels(what, reason).inc()
        self._once.warning((what, reason), "dualtrack: rejected %s (%s): %.80r "
                           "(counted in dualtrack_inputs_rejected_total)", what, reason, value)

    def _internal_error(self, component: str, err: BaseException) -> None:
        self._errors.labels(component).inc()
        self._once.warning(("error", component, type(err).__name__),
                           "dualtrack: internal error in %s (counted, request unaffected): %r", component, err)

    # ------------------------------------------------------------ recommendations

    def current_preferences(self) -> Preferences:
        if self.reader is not None:
            return self.reader.current()
        assert self.adaptive is not None
        return self.adaptive.current_preferences()

    def get_optimization_recommendations(self, query: str, context: Optional[Dict] = None) -> Dict[str, Any]:
        """Routing recommendation for one query. Never raises.

        Returns ``preferred_path`` (local, api or parallel), ``routing``
        (local_bias, parallel_threshold, timeout_multiplier,
        quality_threshold), ``timeouts_seconds`` per path, ``query_class``,
        ``complexity``, ``strategy``, ``mode``, ``source``, ``overrides`` and
        ``reasons``. The dict is a fresh copy; nested values are shared and
        must not be modified.
        """
        try:
            if context is not None and type(context) is not dict and not isinstance(context, Mapping):
                self._reject("recommendation", "context_not_a_mapping", type(context).__name__)
                context = None  # recommend for the query alone
            return self._recommend(query, context)
        except Exception as err:
            self._internal_error("get_optimization_recommendations", err)
            return self._safe_default(err)

    def _recommend(self, query: str, context: Optional[Dict]) -> Dict[str, Any]:
        qc = self.classifier.classify(query, context)
        complexity = self.classifier.complexity(query, context)
        prefs = self.current_preferences()
        overrides = self._current_overrides(prefs)
        now = self.clock.monotonic()
        if now >= self._next_sweep:  # orphans past their TTL must not count as in flight
            self._sweep(now)
        concurrency_full = len(self._calls) >= self.config.constraints.max_concurrent_requests
        routing = prefs.routing_for(qc)
        parallel = complexity >= routing.parallel_threshold
        key = (qc, parallel, concurrency_full)
        if self.config.enable_caching:
            entry = self._cache.get(key)
            # A cached answer is good while fresh and while neither the
            # preferences nor the override state it was built from changed.
            if entry is not None and entry[0] > now and entry[1] is prefs and entry[2] is overrides:
                result = dict(entry[3])
                result["complexity"] = complexity
                return result
        result = self._build(prefs, qc, routing, parallel, concurrency_full, overrides)
        if self.config.enable_caching:
            self._cache[key] = (now + self.config.cache_ttl_seconds, prefs, overrides, result)
            result = dict(result)
        result["complexity"] = complexity
        return result

    def _build(self, prefs: Preferences, qc: str, routing: Routing, parallel: bool, concurrency_full: bool,
               overrides: "_Overrides") -> Dict[str, Any]:
        reasons: List[str] = [r.message if not r.query_class else f"{r.message} ({r.query_class})"
                              for r in prefs.reasons]
        applied: List[str] = []
        values = routing.as_dict()
        preferred: Optional[str] = None
        steer_away = list(overrides.over_limit)
        if concurrency_full:
            steer_away.append("concurrency")
        # Priority: machine limits, then battery, then cost. Steering to the API
        # is pointless while it fails: then the routing stays as preferred.
        if (steer_away or overrides.battery_low) and overrides.api_failing:
            reasons.append(f"over limit ({', '.join(steer_away or ['battery'])}) but the API is failing: "
                           "not steering to it")
            steer_away = []
        elif steer_away:
            values["local_bias"] = 0.0
            values["parallel_threshold"] = 1.01
            preferred = "api"
            applied.extend(steer_away)
            reasons.append(f"over limit ({', '.join(steer_away)}): steering away from local and parallel")
        elif overrides.battery_low and not overrides.api_failing:
            values["local_bias"] = 0.0
            values["parallel_threshold"] = 1.01
            preferred = "api"
            applied.append("battery")
            reasons.append("battery low and unplugged: preferring the API")
        elif qc in overrides.cost:
            values["local_bias"] = 1.0
            values["parallel_threshold"] = 1.01
            preferred = "local"
            applied.append("cost")
            reasons.append(overrides.cost[qc])
        if preferred is None:
            if parallel and values["parallel_threshold"] <= 1.0:
                preferred = "parallel"
            else:
                preferred = "local" if values["local_bias"] >= 0.5 else "api"
        for name in applied:
            self._overrides_total.labels(name).inc()
        return {
            "preferred_path": preferred,
            "routing": values,
            # Base timeouts times this class's multiplier (preferences.md).
            "timeouts_seconds": {p: round(t * values["timeout_multiplier"], 3)
                                 for p, t in prefs.timeouts_seconds.items()},
            "query_class": qc,
            "strategy": prefs.strategy,
            "mode": prefs.mode,
            "source": prefs.source,
            "sequence": prefs.sequence,
            "overrides": applied,
            "reasons": reasons,
        }

    def _current_overrides(self, prefs: Preferences) -> "_Overrides":
        """Immediate overrides from the latest resource reading and windows.

        Recomputed only when the reading or the preferences change (the
        monitor reads in the background), not per request.
        """
        snap = self.resource_monitor.snapshot() if self.resource_monitor is not None else None
        current = self._overrides
        if current is not None and current.snapshot is snap and current.prefs is prefs:
            return current
        c = self.config.constraints
        checks = resource_checks(c, snap)
        cost: Dict[str, str] = {}
        since = self.clock.time() - self.config.signal_window_seconds
        for qc in self.classifier.classes:
            costs = [r.cost_estimate for r in self.collector.records("api", qc, since) if r.has_cost]
            quality = [r.quality_score for r in self.collector.records("local", qc, since)
                       if r.outcome == "success" and r.has_quality]
            if costs and quality:
                api_cost = sum(costs) / len(costs)
                local_quality = sum(quality) / len(quality)
                if api_cost > c.max_cost_per_request and local_quality >= prefs.routing_for(qc).quality_threshold:
                    cost[qc] = (f"API requests of class {qc} cost ${api_cost:.4f} > cap "
                                f"${c.max_cost_per_request:.4f} and local quality {local_quality:.2f} is "
                                "acceptable: preferring local")
        api_calls = [r for r in self.collector.records("api", None, since) if r.outcome != "cancelled"]
        recent = api_calls[-20:]
        api_failing = len(recent) >= 5 and sum(r.outcome == "success" for r in recent) < len(recent) / 2
        self._overrides = _Overrides(snap, prefs, tuple(n for n in ("memory", "gpu_memory") if checks[n]),
                                     bool(checks["battery"]), cost, api_failing)
        return self._overrides

    def _safe_default(self, err: BaseException) -> Dict[str, Any]:
        routing = Routing.DEFAULT
        return {
            "preferred_path": "local" if routing.local_bias >= 0.5 else "api",
            "routing": routing.as_dict(),
            "timeouts_seconds": dict(Preferences.defaults(now=self.clock.time()).timeouts_seconds),
            "query_class": OTHER, "complexity": 0.0,
            "strategy": self.config.strategy.value, "mode": None, "source": "defaults", "sequence": 0,
            "overrides": [],
            "reasons": [f"internal error ({type(err).__name__}); safe defaults returned"],
        }

    # ------------------------------------------------------------ status

    def constraint_checks(self) -> Dict[str, ConstraintCheck]:
        if self.adaptive is not None:
            return self.adaptive.source.constraint_checks()
        from ..adapter.embedded import EmbeddedSource

        snapshot = self.resource_monitor.snapshot if self.resource_monitor is not None else (lambda: None)
        return EmbeddedSource(self.config, self.collector, snapshot, in_flight=self.in_flight_count,
                              clock=self.clock).constraint_checks()

    def get_optimization_status(self) -> Dict[str, Any]:
        """Strategy, preferences, per-path summaries, resources, violations, history, health."""
        prefs = self.current_preferences()
        try:
            checks = self.constraint_checks()
        except Exception as err:  # status must answer even when a signal source fails
            self._internal_error("constraint_checks", err)
            checks = {}
        monitor = self.resource_monitor
        health: Dict[str, Any] = {
            "metrics_collector": "ok",
            "resource_monitor": ("disabled" if monitor is None else
                                 "running" if getattr(monitor, "running", False) else "stopped"),
        }
        if self.adaptive is not None:
            health["adapter"] = {"mode": "embedded", "cycles": dict(self.adaptive.cycles),
                                 "last_error": self.adaptive.last_error}
        if self.reader is not None:
            health["preferences_file"] = self.reader.status()
        summary = self.collector.get_metrics_summary()
        return {
            "strategy": prefs.strategy,
            "mode": prefs.mode,
            "source": prefs.source,
            "preferences": prefs.to_dict(),
            "metrics": summary,
            "resource_usage": monitor.get_current_usage() if monitor is not None else None,
            "constraint_violations": {n: c.as_dict() for n, c in checks.items() if c.violated},
            "constraints": {n: c.as_dict() for n, c in checks.items()},
            "in_flight": self.in_flight_count(),
            "adaptation_history": list(self.adaptive.history) if self.adaptive is not None else [],
            "health": health,
        }


class _StateCollector(Collector):
    """Scrape-time gauges: constraint limits and violations, effective preferences."""

    def __init__(self, optimizer: DualTrackOptimizer) -> None:
        self.o = optimizer

    def describe(self) -> Iterator[Any]:
        return iter(())  # collected lazily; nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        o = self.o
        c = o.config.constraints
        limits = [
            ("dualtrack_memory_limit_bytes", "max_memory_mb in bytes.", c.max_memory_mb * MB),
            ("dualtrack_cpu_limit_ratio", "max_cpu_percent as a ratio.", c.max_cpu_percent / 100.0),
            ("dualtrack_gpu_memory_limit_bytes", "max_gpu_memory_mb in bytes.", c.max_gpu_memory_mb * MB),
            ("dualtrack_concurrency_limit", "max_concurrent_requests.", c.max_concurrent_requests),
            ("dualtrack_latency_target_seconds", "target_latency_ms in seconds.", c.target_latency_ms / 1000.0),
            ("dualtrack_cost_per_request_limit_dollars", "max_cost_per_request.", c.max_cost_per_request),
            ("dualtrack_battery_threshold_ratio", "battery_threshold_percent as a ratio.",
             c.battery_threshold_percent / 100.0),
            ("dualtrack_quality_min_ratio", "min_quality_score.", c.min_quality_score),
        ]
        if c.max_cost_per_hour is not None:
            limits.append(("dualtrack_cost_budget_dollars_per_hour", "max_cost_per_hour.", c.max_cost_per_hour))
        for name, help_text, value in limits:
            yield GaugeMetricFamily(name, "Constraint: " + help_text, value=value)
        try:
            checks = o.constraint_checks()
            violated = GaugeMetricFamily("dualtrack_constraint_violated",
                                         "1 while a constraint is violated; absent while it cannot be measured.",
                                         labels=["constraint"])
            for name in CONSTRAINTS:
                check = checks.get(name)
                if check is not None and check.value is not None and check.limit is not None:
                    violated.add_metric([name], 1.0 if check.violated else 0.0)
            yield violated
            prefs = o.current_preferences()
            pref_family = GaugeMetricFamily("dualtrack_routing_preference",
                                            "Effective routing preferences, by query class.",
                                            labels=["preference", "query_class"])
            for qc in o.classifier.classes:
                for name, value in prefs.routing_for(qc).as_dict().items():
                    pref_family.add_metric([name, qc], value)
            yield pref_family
            timeouts = GaugeMetricFamily("dualtrack_path_timeout_seconds", "Effective timeout per path.",
                                         labels=["path"])
            for path, value in prefs.timeouts_seconds.items():
                timeouts.add_metric([path], value)
            yield timeouts
            info = GaugeMetricFamily("dualtrack_optimizer_info", "The optimizer's strategy, mode and preference source.",
                                     labels=["strategy", "mode", "source"])
            info.add_metric([prefs.strategy, prefs.mode or "", prefs.source], 1.0)
            yield info
        except Exception as err:  # a scrape must not fail because of us
            o._internal_error("state_collector", err)


__all__ = ["DualTrackOptimizer", "PATHS"]


def _expire(table: Dict[Any, Tuple[float, str]], deadline: float, overflow: int) -> Tuple[int, int]:
    """Drop the entries of ``table`` started before ``deadline``, and the
    ``overflow`` oldest ones; return (how many were dropped, overflow left).

    Insertion order is start order, so this stops at the first live entry: a
    sweep costs what it removes, not the size of the table. Other threads
    insert and pop meanwhile: the table is read a few entries at a time
    (list(islice(...)) runs in C, so no other thread changes the dict while it
    is read), and an entry counts as dropped only if this pop removed it.
    """
    dropped = 0
    while True:
        try:
            head = list(islice(table.items(), 64))
        except RuntimeError:  # changed during iteration (free-threaded builds): next sweep
            return dropped, overflow
        if not head:
            return dropped, overflow
        for rid, (started, _) in head:
            if started >= deadline and overflow <= 0:
                return dropped, overflow
            overflow -= 1
            if table.pop(rid, None) is not None:
                dropped += 1


def _hashable(value: Any) -> bool:
    # str first: the id of nearly every call, without a try block's set-up.
    if type(value) is str:
        return True
    try:
        hash(value)
    except TypeError:
        return False
    return True
