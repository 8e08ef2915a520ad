"""``MetricsCollector``: sliding windows of recent requests, and their statistics.

The Prometheus histograms and counters (``exporter.metrics``) are the
long-term record; these windows are the short-term memory the embedded
adapter and ``get_optimization_status()`` read without a server. Windows are
bounded deques (``metrics_window_size`` each) kept overall, per path and per
(path, query class), so memory does not grow with traffic.

    collector = MetricsCollector(config)
    collector.record_metric(PerformanceMetrics(...))
    collector.get_metrics_summary("local")["p95_latency_ms"]
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, Iterable, List, Optional, Tuple

from .._quantile import quantile
from ..config import OptimizationConfig

#: False on a free-threaded build running without the GIL (Python 3.13t).
_GIL = getattr(sys, "_is_gil_enabled", lambda: True)()


@dataclass
class PerformanceMetrics:
    """One completed request, as the spec defines it (plus a few additions
    that keep the spec's constructor working)."""

    timestamp: float
    processing_path: str
    request_id: str
    latency_ms: float
    tokens_processed: int
    memory_usage_mb: float
    cpu_usage_percent: float
    gpu_usage_percent: float = 0.0
    cost_estimate: float = 0.0
    quality_score: float = 0.0
    success: bool = True
    error_type: Optional[str] = None
    # Additions:
    query_class: str = "unclassified"
    outcome: str = ""  # success, error, timeout, cancelled; from ``success`` when empty
    tokens_in: int = 0
    tokens_out: int = 0
    has_cost: bool = True  # False when the cost was unknown (no price for the model)
    has_quality: bool = True  # False when no quality score was given
    model: str = ""

    def __post_init__(self) -> None:
        if not self.outcome:
            self.outcome = "success" if self.success else "error"


def summarize(records: Iterable[PerformanceMetrics]) -> Dict[str, Any]:
    """Statistics over a set of requests.

    Cancelled requests (the losing leg of a parallel race) count in
    ``count`` and ``cancelled`` but not in success ratio or latency: they
    were stopped on purpose. Fields without data are ``None`` (absent), never 0.
    """
    count = 0
    cancelled = 0
    successes = 0
    latencies: List[float] = []
    tokens = 0
    cost = 0.0
    cost_known = 0
    quality_sum = 0.0
    quality_count = 0
    errors: Counter = Counter()
    for r in records:
        count += 1
        tokens += r.tokens_processed
        if r.has_cost:
            cost += r.cost_estimate
            cost_known += 1
        if r.outcome == "cancelled":
            cancelled += 1
            continue
        latencies.append(r.latency_ms)
        if r.outcome == "success":
            successes += 1
            if r.has_quality:
                quality_sum += r.quality_score
                quality_count += 1
        else:
            errors[r.error_type or r.outcome] += 1
    decided = count - cancelled
    latencies.sort()
    return {
        "count": count,
        "cancelled": cancelled,
        "success_count": successes,
        "success_rate": successes / decided if decided else None,
        "avg_latency_ms": sum(latencies) / len(latencies) if latencies else None,
        "p50_latency_ms": quantile(latencies, 0.50) if latencies else None,
        "p95_latency_ms": quantile(latencies, 0.95) if latencies else None,
        "p99_latency_ms": quantile(latencies, 0.99) if latencies else None,
        "tokens_processed": tokens,
        "total_cost": cost if cost_known else None,
        "cost_per_request": cost / cost_known if cost_known else None,
        "avg_quality": quality_sum / quality_count if quality_count else None,
        "error_types": dict(errors),
    }


class MetricsCollector:
    """Thread-safe sliding windows of ``PerformanceMetrics``.

    ``metrics`` holds the latest ``metrics_window_size`` requests overall,
    ``metrics_by_path[path]`` the latest per path and
    ``metrics_by_class[(path, query_class)]`` the latest per path and class.

    Recording takes no lock under CPython's GIL: each step is one operation
    on a builtin (``deque.append`` with ``maxlen``, ``dict.setdefault``,
    ``next()`` on a counter) that no other thread can interleave with, and
    readers copy a window with one ``list()`` call, which runs in C. A lock
    per request made threads queue behind a holder the GIL had preempted
    (docs/benchmarks.md). Where the GIL is disabled (free-threaded builds)
    every method takes the lock.
    """

    def __init__(self, config: OptimizationConfig) -> None:
        size = config.metrics_window_size
        self._size = size
        self._lock = threading.Lock()
        self.metrics: Deque[PerformanceMetrics] = deque(maxlen=size)
        # defaultdicts, as the spec has them; record_metric never calls their
        # factory (get, then setdefault: each one atomic).
        self.metrics_by_path: Dict[str, Deque[PerformanceMetrics]] = defaultdict(lambda: deque(maxlen=size))
        self.metrics_by_class: Dict[Tuple[str, str], Deque[PerformanceMetrics]] = defaultdict(
            lambda: deque(maxlen=size))
        self._recorded = itertools.count()  # next() is atomic; a plain += 1 could lose counts
        if not _GIL:
            self.record_metric = self._record_locked  # type: ignore[method-assign]

    @property
    def total_recorded(self) -> int:
        """Requests recorded since creation (the windows keep only the latest)."""
        # itertools.count cannot be read without advancing it; its repr,
        # "count(N)", says the next number, which is the count so far.
        return int(repr(self._recorded)[len("count("):-1])

    def record_metric(self, metric: PerformanceMetrics) -> None:
        """Add one request to the windows. O(1); the oldest entry falls out."""
        path = metric.processing_path
        key = (path, metric.query_class)
        by_path = self.metrics_by_path.get(path)
        if by_path is None:
            by_path = self.metrics_by_path.setdefault(path, deque(maxlen=self._size))
        by_class = self.metrics_by_class.get(key)
        if by_class is None:
            by_class = self.metrics_by_class.setdefault(key, deque(maxlen=self._size))
        self.metrics.append(metric)
        by_path.append(metric)
        by_class.append(metric)
        next(self._recorded)

    def _record_locked(self, metric: PerformanceMetrics) -> None:
        with self._lock:
            MetricsCollector.record_metric(self, metric)

    def records(self, path: Optional[str] = None, query_class: Optional[str] = None,
                since: Optional[float] = None) -> List[PerformanceMetrics]:
        """A copy of a window, optionally only requests with ``timestamp >= since``.

        ``path`` and ``query_class`` select the window: both → per-class window;
        ``path`` only → per-path window; ``query_class`` only → the per-class
        windows of every path merged; neither → the overall window.
        """
        with self._lock:
            if path is not None and query_class is not None:
                window = list(self.metrics_by_class.get((path, query_class), ()))
            elif path is not None:
                window = list(self.metrics_by_path.get(path, ()))
            elif query_class is not None:
                windows = [d for (_, c), d in list(self.metrics_by_class.items()) if c == query_class]
                window = [m for d in windows for m in list(d)]
            else:
                window = list(self.metrics)
        if since is None:
            return window
        return [m for m in window if m.timestamp >= since]

    def get_metrics_summary(self, path: Optional[str] = None, query_class: Optional[str] = None,
                            since: Optional[float] = None) -> Dict[str, Any]:
        """Count, success rate, mean/p50/p95/p99 latency (ms), tokens, total and
        per-request cost, mean quality and error types for a window.

        With ``path=None`` the result also has ``by_path``: the same summary
        for each path seen.
        """
        summary = summarize(self.records(path, query_class, since))
        if path is None and query_class is None:
            with self._lock:
                paths = sorted(list(self.metrics_by_path))
            summary["by_path"] = {p: summarize(self.records(p, None, since)) for p in paths}
        return summary

    def paths_and_classes(self) -> List[Tuple[str, str]]:
        with self._lock:
            return sorted(list(self.metrics_by_class))

    def clear(self) -> None:
        with self._lock:
            self.metrics.clear()
            self.metrics_by_path.clear()
            self.metrics_by_class.clear()
