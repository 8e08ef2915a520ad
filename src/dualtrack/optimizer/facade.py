"""``DualTrackOptimizer``: the spec's facade, what a router talks to.

    optimizer = DualTrackOptimizer(OptimizationConfig(strategy="adaptive", metrics_port=9464))
    optimizer.start()
    rec = optimizer.get_optimization_recommendations(query)
    optimizer.record_request_start(request_id, query)
    ...  # run the query on rec["preferred_path"]
    optimizer.record_request_completion(request_id, "local", {"tokens_in": 120, "tokens_out": 300,
                                                               "quality_score": 0.9})
    optimizer.stop()

It wires the two halves together. From the exporter: the request metrics
and their recorder (``exporter.recorder``), the sliding windows
(``MetricsCollector``), the machine (``ResourceMonitor``) and ``/metrics``.
From the adapter or the file contract: ONE preference source
(:class:`~dualtrack.preferences.PreferenceSource`), either the embedded
adapter (``AdaptiveOptimizer``, the default) or a reader of the file a
separate ``dualtrack adapter`` process writes (``preferences_file``).
Recommendations are the source's preferences with the immediate overrides
applied (``optimizer.overrides``), cached until either changes.

Nothing here raises into the caller's request: bad input is counted in
``dualtrack_inputs_rejected_total``, internal errors in
``dualtrack_optimizer_errors_total``.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Mapping, Optional, Protocol, Tuple

from prometheus_client import CollectorRegistry, Counter

from ..adapter.embedded import AdaptiveOptimizer, EmbeddedSource, LocalServerProbe
from ..adapter.learned_state import StateCollector
from ..adapter.plan_view import PlanCollector
from ..adapter.strategy import StrategySet
from ..clock import SYSTEM_CLOCK, Clock
from ..config import OptimizationConfig
from ..constraints import ConstraintCheck
from ..exporter.collector import MetricsCollector
from ..exporter.exposition import MetricsServer, serve_metrics
from ..exporter.local_server import LocalServerScraper
from ..exporter.metrics import RequestMetrics
from ..exporter.monitor import ResourceMonitor
from ..exporter.query_classes import QueryClassifier
from ..exporter.recorder import MachineUsage, RequestRecorder
from ..preferences import Preferences, PreferenceSource, PreferencesReader, Routing
from ..vocabulary import OTHER
from .overrides import Overrides, build_recommendation, compute_overrides
from .state_gauges import StateGauges


class MachineMonitor(Protocol):
    """What the facade needs from a resource monitor (``ResourceMonitor``, or the simulator's machine)."""

    @property
    def running(self) -> bool: ...

    def snapshot(self) -> Optional[MachineUsage]: ...

    def start_monitoring(self) -> None: ...

    def stop_monitoring(self) -> None: ...

    def get_current_usage(self) -> Dict[str, Any]: ...


class DualTrackOptimizer:
    """Measures both tracks, watches the machine, and recommends routing.

    ``registry`` defaults to a private ``CollectorRegistry`` (pass
    ``prometheus_client.REGISTRY`` to use the global one, or serve
    ``optimizer.registry`` from your own app); ``clock`` defaults to the
    system clock (the simulator passes a virtual one); ``resource_monitor``
    replaces the real machine (the simulator's); ``strategies`` is a
    preloaded ``StrategySet`` for the embedded adapter.
    """

    def __init__(self, config: Optional[OptimizationConfig] = None, *,
                 registry: Optional[CollectorRegistry] = None, clock: Optional[Clock] = None,
                 resource_monitor: Optional[MachineMonitor] = None,
                 strategies: Optional[StrategySet] = None,
                 local_server: Optional[LocalServerProbe] = None) -> None:
        self.config = config = config if config is not None else OptimizationConfig()
        self.clock = clock or SYSTEM_CLOCK
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = RequestMetrics(self.registry, config.query_classes, known_models=config.prices,
                                      max_model_labels=config.max_model_labels,
                                      latency_target_seconds=config.constraints.target_latency_ms / 1000.0,
                                      quality_floor=config.constraints.min_quality_score)
        self._overrides_total = Counter(
            "dualtrack_recommendation_overrides", "Recommendations changed by an immediate constraint override.",
            ["override"], registry=self.registry)
        self._cycles = Counter("dualtrack_adaptation_cycles", "Embedded adaptation cycles, by result.",
                               ["result"], registry=self.registry)
        if config.adaptation_state_file is not None and config.preferences_file:
            raise ValueError("adaptation_state_file: the embedded adapter's learned state; with preferences_file "
                             "the adapter process keeps its own (dualtrack adapter --state-file)")
        self.collector = MetricsCollector(config)
        self.classifier = QueryClassifier(config, fold=self.metrics.fold_class)
        if resource_monitor is None and config.enable_resource_monitoring:
            resource_monitor = ResourceMonitor(config, clock=self.clock, registry=self.registry)
        self.resource_monitor: Optional[MachineMonitor] = resource_monitor
        self.recorder = RequestRecorder(config, clock=self.clock, registry=self.registry, metrics=self.metrics,
                                        collector=self.collector, classifier=self.classifier,
                                        snapshot=self._snapshot)
        self._probe_monitor()

        # The local model server's own load: the simulator's, or its /metrics scraped.
        self.local_server_scraper: Optional[LocalServerScraper] = None
        if local_server is None and config.local_server_metrics_url:
            self.local_server_scraper = LocalServerScraper(
                config.local_server_metrics_url, slots=config.local_server_slots,
                interval=config.monitor_interval_seconds, registry=self.registry, clock=self.clock)
            local_server = self.local_server_scraper.reading

        self.reader: Optional[PreferencesReader] = None
        self.adaptive: Optional[AdaptiveOptimizer] = None
        self.preference_source: PreferenceSource
        if config.preferences_file:
            self.reader = PreferencesReader(config.preferences_file, clock=self.clock,
                                            check_interval_seconds=config.preferences_check_interval_seconds,
                                            registry=self.registry)
            self.preference_source = self.reader
            # Constraint status for get_optimization_status() from the local windows.
            self._signals = EmbeddedSource(config, self.collector, self._snapshot,
                                           in_flight=self.in_flight_count, clock=self.clock)
        else:
            self.adaptive = AdaptiveOptimizer(config, self.collector, self.resource_monitor, clock=self.clock,
                                              strategies=strategies, in_flight=self.in_flight_count,
                                              local_server=local_server, calls_in_flight=self.recorder.calls_in_flight)
            self.preference_source = self.adaptive
            self._signals = self.adaptive.source
            engine = self.adaptive.engine
            self.registry.register(PlanCollector(lambda: engine.plan, "dualtrack_adaptation"))
            if self.adaptive.state is not None:
                self.registry.register(StateCollector(self.adaptive.state, "dualtrack_adaptation"))

        self._cache: Dict[Tuple[str, bool, bool], Tuple[float, Any, Any, Dict[str, Any]]] = {}
        self._overrides: Optional[Overrides] = None
        self._overrides_until = 0.0  # monotonic time the overrides are recomputed by (with no new reading)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._server: Optional[MetricsServer] = None
        self._running = False
        self.registry.register(StateGauges(self))

    def _local_in_flight(self) -> int:
        return self.recorder.calls_in_flight("local")

    def _probe_monitor(self) -> None:
        """A monitor that takes a load probe (``ResourceMonitor``, the simulator's machine) and has
        none counts this optimizer's local calls in flight with each reading."""
        monitor = self.resource_monitor
        if monitor is not None and getattr(monitor, "load_probe", False) is None:
            monitor.load_probe = self._local_in_flight  # type: ignore[attr-defined]

    def _snapshot(self) -> Optional[MachineUsage]:
        monitor = self.resource_monitor
        return monitor.snapshot() if monitor is not None else None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start monitoring, the embedded adaptation thread and (if configured) /metrics."""
        if self._running:
            return
        if self.config.metrics_port is not None:
            # First: a busy port (MetricsPortInUse) must fail start() before
            # any thread is started, so a failed start leaves nothing behind.
            self._server = serve_metrics(self.registry, self.config)
        self._running = True
        self._stop.clear()
        if self.resource_monitor is not None:
            self.resource_monitor.start_monitoring()
        if self.local_server_scraper is not None:
            self.local_server_scraper.start()
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
        if self.local_server_scraper is not None:
            self.local_server_scraper.stop()
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
        self.recorder.sweep(self.clock.monotonic())  # expire orphans even when no request arrives
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
        return self.recorder.in_flight_count()

    def record_request_start(self, request_id: str, query: str, context: Optional[Dict] = None) -> None:
        """Record the start of a request. Latency is measured from here (monotonic clock).

        ``context`` may carry ``query_class`` (or the classifier decides from the
        query), ``estimated_tokens``, ``complexity``, and ``path="parallel"`` for
        a parallel request whose legs are recorded as their own calls. Never raises.
        """
        self.recorder.start(request_id, query, context)

    def record_request_completion(self, request_id: str, processing_path: str, result: Dict[str, Any],
                                  success: bool = True, error_type: Optional[str] = None) -> None:
        """Record the completion of a request.

        ``result`` keys (all optional): ``tokens_in``, ``tokens_out`` (or
        ``tokens_processed``, counted as output), ``cost`` (dollars; from the
        price table per ``model`` when absent), ``quality_score`` (0..1),
        ``latency_ms`` (overrides the measured time),
        ``time_to_first_token_ms`` (a streamed call's first token, observed in
        ``dualtrack_time_to_first_token_seconds``), ``model``,
        ``outcome`` (success, error, timeout, cancelled; otherwise derived
        from ``success`` and ``error_type``). Bad values are dropped and
        counted; this method never raises.
        """
        self.recorder.complete(request_id, processing_path, result, success, error_type)

    # ------------------------------------------------------------ recommendations

    def current_preferences(self) -> Preferences:
        """The preferences recommendations are made from (before overrides)."""
        return self.preference_source.current_preferences()

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
                self.recorder.reject("recommendation", "context_not_a_mapping", type(context).__name__)
                context = None  # recommend for the query alone
            return self._recommend(query, context)
        except Exception as err:
            self.recorder.internal_error("get_optimization_recommendations", err)
            return self._safe_default(err)

    def _recommend(self, query: str, context: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        qc = self.classifier.classify(query, context)
        complexity = self.classifier.complexity(query, context)
        prefs = self.current_preferences()
        now = self.clock.monotonic()
        overrides = self._current_overrides(prefs, now)
        self.recorder.sweep_if_due(now)  # orphans past their TTL must not count as in flight
        # API calls in flight do not load the machine: steering away from local would relieve nothing.
        concurrency_full = self.recorder.machine_calls_in_flight() >= self.config.constraints.max_concurrent_requests
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
        result = build_recommendation(prefs, qc, routing, parallel, concurrency_full, overrides)
        for name in result["overrides"]:
            self._overrides_total.labels(name).inc()
        if self.config.enable_caching:
            self._cache[key] = (now + self.config.cache_ttl_seconds, prefs, overrides, result)
            result = dict(result)
        result["complexity"] = complexity
        return result

    def _current_overrides(self, prefs: Preferences, now: float) -> Overrides:
        """Immediate overrides from the latest resource reading and windows, recomputed when
        the reading or the preferences change (the monitor reads in the background), or a
        monitor interval after they were (``now``: monotonic), not per request. (Without the
        time, a router with no resource monitor kept the overrides of each cycle's first
        request: a track failing after it was not steered from until the next cycle.)"""
        snap = self._snapshot()
        current = self._overrides
        if current is not None and current.snapshot is snap and current.prefs is prefs \
                and now < self._overrides_until:
            return current
        self._overrides = compute_overrides(self.config, self.classifier.classes, self.collector, snap, prefs,
                                            self.clock.time(), self.recorder.call_ages("api"))
        self._overrides_until = now + self.config.monitor_interval_seconds
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
        """Every constraint, from the machine and from the request windows."""
        return self._signals.constraint_checks()

    def get_optimization_status(self) -> Dict[str, Any]:
        """Strategy, preferences, per-path summaries, resources, violations, history, health."""
        prefs = self.current_preferences()
        try:
            checks = self.constraint_checks()
        except Exception as err:  # status must answer even when a signal source fails
            self.recorder.internal_error("constraint_checks", err)
            checks = {}
        monitor = self.resource_monitor
        health: Dict[str, Any] = {
            "metrics_collector": "ok",
            "resource_monitor": ("disabled" if monitor is None else
                                 "running" if monitor.running else "stopped"),
        }
        if self.adaptive is not None:
            health["adapter"] = {"mode": "embedded", "cycles": dict(self.adaptive.cycles),
                                 "last_error": self.adaptive.last_error}
            state = self.adaptive.state
            if state is not None:
                health["adapter"]["learned_state"] = {"file": state.path, "at_start": state.at_start,
                                                      "saves": dict(state.saves)}
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


__all__ = ["DualTrackOptimizer", "MachineMonitor"]
