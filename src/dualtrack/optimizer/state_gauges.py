"""Scrape-time gauges of the facade: constraint limits and violations, the
effective routing preferences per query class, the per-path timeouts and
the optimizer's strategy, mode and preference source.

They are read when Prometheus scrapes (``collect()``), so they are always
current and cost nothing per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..constraints import CONSTRAINTS, MB
from ..vocabulary import TRACKS

if TYPE_CHECKING:  # pragma: no cover - the facade registers these gauges on itself
    from .facade import DualTrackOptimizer


class StateGauges(Collector):
    """Scrape-time gauges: constraint limits and violations, effective preferences."""

    def __init__(self, optimizer: "DualTrackOptimizer") -> None:
        self.optimizer = optimizer

    def describe(self) -> Iterator[Any]:
        return iter(())  # collected lazily; nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        o = self.optimizer
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
            calls = GaugeMetricFamily("dualtrack_calls_in_flight",
                                      "Model calls in flight per track, of those whose start named the track.",
                                      labels=["track"])
            for track in TRACKS:
                calls.add_metric([track], o.recorder.calls_in_flight(track))
            yield calls
            info = GaugeMetricFamily("dualtrack_optimizer_info",
                                     "The optimizer's strategy, mode and preference source.",
                                     labels=["strategy", "mode", "source"])
            info.add_metric([prefs.strategy, prefs.mode or "", prefs.source], 1.0)
            yield info
        except Exception as err:  # a scrape must not fail because of us
            o.recorder.internal_error("state_collector", err)
