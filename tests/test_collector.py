"""PerformanceMetrics and MetricsCollector: the spec's unit tests for metric
recording and analysis — bounded sliding windows, statistics checked against
hand computation, absent means None, and thread safety."""

from __future__ import annotations

import math
import threading
from collections import defaultdict, deque
from dataclasses import asdict, replace

import pytest

from dualtrack.config import OptimizationConfig
from dualtrack.exporter.collector import MetricsCollector, PerformanceMetrics, quantile, summarize


def metric(i: int = 0, path: str = "local", latency: float = 100.0, **kw) -> PerformanceMetrics:
    fields = dict(timestamp=1000.0 + i, processing_path=path, request_id=f"r{i}", latency_ms=latency,
                  tokens_processed=10, memory_usage_mb=256.0, cpu_usage_percent=12.5)
    fields.update(kw)
    return PerformanceMetrics(**fields)


def collector(window: int = 100) -> MetricsCollector:
    return MetricsCollector(OptimizationConfig(metrics_window_size=window, enable_resource_monitoring=False))


# --------------------------------------------------------------------------- PerformanceMetrics


def test_performance_metrics_with_the_specs_fields_and_defaults():
    m = PerformanceMetrics(timestamp=1.5, processing_path="api", request_id="abc", latency_ms=812.0,
                           tokens_processed=300, memory_usage_mb=512.0, cpu_usage_percent=33.0)
    assert (m.timestamp, m.processing_path, m.request_id, m.latency_ms) == (1.5, "api", "abc", 812.0)
    assert (m.tokens_processed, m.memory_usage_mb, m.cpu_usage_percent) == (300, 512.0, 33.0)
    # The spec's defaults.
    assert m.gpu_usage_percent == 0.0 and m.cost_estimate == 0.0 and m.quality_score == 0.0
    assert m.success is True and m.error_type is None
    # Additions: outcome follows success when not given.
    assert m.outcome == "success" and m.query_class == "unclassified"


def test_performance_metrics_positional_construction_as_in_the_spec():
    m = PerformanceMetrics(2.0, "local", "r", 50.0, 7, 100.0, 5.0, 80.0, 0.001, 0.9, False, "oom")
    assert m.gpu_usage_percent == 80.0 and m.cost_estimate == 0.001 and m.quality_score == 0.9
    assert m.success is False and m.error_type == "oom" and m.outcome == "error"


def test_performance_metrics_manipulation():
    m = metric()
    failed = replace(m, success=False, error_type="timeout", outcome="timeout")
    assert failed.outcome == "timeout" and m.outcome == "success"
    assert asdict(failed)["error_type"] == "timeout"
    m.quality_score = 0.75  # a plain, mutable record like the spec's dataclass
    assert m.quality_score == 0.75
    assert PerformanceMetrics(**{**asdict(m), "outcome": "cancelled"}).outcome == "cancelled"


# --------------------------------------------------------------------------- recording and windows


def test_record_metric_keeps_overall_per_path_and_per_class_windows():
    c = collector()
    c.record_metric(metric(1, "local", query_class="short"))
    c.record_metric(metric(2, "api", query_class="long"))
    c.record_metric(metric(3, "api", query_class="short"))
    assert [m.request_id for m in c.metrics] == ["r1", "r2", "r3"]
    assert [m.request_id for m in c.metrics_by_path["api"]] == ["r2", "r3"]
    assert [m.request_id for m in c.metrics_by_class[("api", "short")]] == ["r3"]
    assert [m.request_id for m in c.records("api", "long")] == ["r2"]
    assert [m.request_id for m in c.records(query_class="short")] == ["r1", "r3"]  # every path merged
    assert c.paths_and_classes() == [("api", "long"), ("api", "short"), ("local", "short")]
    assert c.total_recorded == 3


def test_windows_are_bounded_by_metrics_window_size_per_path_and_per_class():
    c = collector(window=5)
    for i in range(40):
        path = "local" if i % 4 else "api"  # 10 api, 30 local
        c.record_metric(metric(i, path, query_class="short" if i % 2 else "long"))
    assert len(c.metrics) == 5 and [m.request_id for m in c.metrics] == [f"r{i}" for i in range(35, 40)]
    assert len(c.metrics_by_path["api"]) == 5  # not starved by the busier path
    assert [m.request_id for m in c.metrics_by_path["api"]] == ["r20", "r24", "r28", "r32", "r36"]
    assert len(c.metrics_by_path["local"]) == 5
    for key, window in c.metrics_by_class.items():
        assert len(window) == 5, key
    assert [m.request_id for m in c.metrics_by_class[("api", "long")]] == ["r20", "r24", "r28", "r32", "r36"]
    assert c.total_recorded == 40  # the count of all time is kept apart from the windows


def test_records_since_filters_by_timestamp_and_returns_copies():
    c = collector()
    for i in range(10):
        c.record_metric(metric(i))
    recent = c.records("local", since=1007.0)
    assert [m.request_id for m in recent] == ["r7", "r8", "r9"]
    recent.clear()
    assert len(c.records("local")) == 10
    assert c.get_metrics_summary("local", since=1005.0)["count"] == 5


def test_clear_empties_every_window():
    c = collector()
    c.record_metric(metric(1, query_class="short"))
    c.clear()
    assert not c.metrics and not c.metrics_by_path and not c.metrics_by_class
    assert c.get_metrics_summary()["count"] == 0


# --------------------------------------------------------------------------- statistics


def hand_quantile(values, q):
    """Linear interpolation between closest ranks, written out independently."""
    s = sorted(values)
    rank = q * (len(s) - 1)
    below = int(rank)
    above = below + 1 if below + 1 < len(s) else below
    return s[below] * (1 - (rank - below)) + s[above] * (rank - below)


def test_quantile_matches_hand_computation():
    assert quantile([], 0.5) != quantile([], 0.5)  # NaN for no data
    assert quantile([7.0], 0.99) == 7.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    values = sorted([13.0, 1.0, 8.0, 21.0, 2.0, 5.0, 3.0, 34.0, 1.0, 55.0])
    for q in (0.0, 0.1, 0.5, 0.95, 0.99, 1.0):
        assert quantile(values, q) == pytest.approx(hand_quantile(values, q))
    # Known values (numpy.percentile's default "linear" method gives the same).
    assert quantile(values, 0.95) == pytest.approx(45.55)
    assert quantile(values, 0.5) == pytest.approx(6.5)


def test_summary_statistics_against_hand_computation():
    c = collector()
    latencies = [120.0, 80.0, 400.0, 95.0, 3000.0, 150.0, 60.0, 220.0, 90.0, 110.0]
    for i, lat in enumerate(latencies):
        c.record_metric(metric(i, "api", lat, tokens_processed=100 + i, cost_estimate=0.002,
                               quality_score=0.5 + i / 20))
    # One failure, one timeout, one cancelled leg of a parallel race.
    c.record_metric(metric(10, "api", 900.0, success=False, error_type="rate_limited", cost_estimate=0.001,
                           tokens_processed=5))
    c.record_metric(metric(11, "api", 30000.0, success=False, outcome="timeout", tokens_processed=0))
    c.record_metric(metric(12, "api", 5.0, outcome="cancelled", success=False, tokens_processed=1,
                           has_cost=False, has_quality=False))

    s = c.get_metrics_summary("api")
    decided = latencies + [900.0, 30000.0]  # cancelled is not a latency
    assert s["count"] == 13 and s["cancelled"] == 1 and s["success_count"] == 10
    assert s["success_rate"] == pytest.approx(10 / 12)  # cancelled excluded from the ratio
    assert s["avg_latency_ms"] == pytest.approx(sum(decided) / len(decided))
    for key, q in (("p50_latency_ms", 0.5), ("p95_latency_ms", 0.95), ("p99_latency_ms", 0.99)):
        assert s[key] == pytest.approx(hand_quantile(decided, q)), key
    assert s["tokens_processed"] == sum(100 + i for i in range(10)) + 5 + 0 + 1
    # Cost: 12 requests with a known cost (the cancelled one's is unknown).
    assert s["total_cost"] == pytest.approx(10 * 0.002 + 0.001 + 0.0)
    assert s["cost_per_request"] == pytest.approx((10 * 0.002 + 0.001) / 12)
    # Quality: successful requests only.
    assert s["avg_quality"] == pytest.approx(sum(0.5 + i / 20 for i in range(10)) / 10)
    assert s["error_types"] == {"rate_limited": 1, "timeout": 1}


def test_overall_summary_has_by_path():
    c = collector()
    c.record_metric(metric(1, "local", 100.0))
    c.record_metric(metric(2, "api", 300.0, success=False, error_type="http_500"))
    s = c.get_metrics_summary()
    assert s["count"] == 2 and s["success_rate"] == 0.5 and s["avg_latency_ms"] == 200.0
    assert set(s["by_path"]) == {"api", "local"}
    assert s["by_path"]["api"]["error_types"] == {"http_500": 1}
    assert s["by_path"]["local"]["success_rate"] == 1.0
    assert "by_path" not in c.get_metrics_summary("local")


def test_summary_per_query_class():
    c = collector()
    c.record_metric(metric(1, "local", 100.0, query_class="short"))
    c.record_metric(metric(2, "local", 900.0, query_class="long"))
    c.record_metric(metric(3, "api", 500.0, query_class="long"))
    assert c.get_metrics_summary("local", "long")["avg_latency_ms"] == 900.0
    assert c.get_metrics_summary(query_class="long")["avg_latency_ms"] == 700.0


def test_absent_is_none_not_zero():
    empty = collector().get_metrics_summary("api")
    assert empty["count"] == 0 and empty["tokens_processed"] == 0 and empty["error_types"] == {}
    for key in ("success_rate", "avg_latency_ms", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms",
                "total_cost", "cost_per_request", "avg_quality"):
        assert empty[key] is None, key

    c = collector()
    # Only cancelled requests: counted, but no latency or success rate to speak of.
    c.record_metric(metric(1, "api", outcome="cancelled", success=False, has_cost=False, has_quality=False))
    s = c.get_metrics_summary("api")
    assert s["count"] == 1 and s["success_rate"] is None and s["avg_latency_ms"] is None
    # No price known, no quality given: None, not a made-up 0.
    c.record_metric(metric(2, "local", has_cost=False, has_quality=False))
    s = c.get_metrics_summary("local")
    assert s["total_cost"] is None and s["cost_per_request"] is None and s["avg_quality"] is None
    # A failed request has a latency but no quality.
    c.record_metric(metric(3, "parallel", success=False, quality_score=0.9))
    s = c.get_metrics_summary("parallel")
    assert s["avg_quality"] is None and s["success_rate"] == 0.0 and s["avg_latency_ms"] == 100.0


def test_summarize_accepts_any_iterable():
    s = summarize(metric(i, latency=float(i)) for i in range(1, 5))
    assert s["count"] == 4 and s["p50_latency_ms"] == 2.5 and not math.isnan(s["p99_latency_ms"])


# --------------------------------------------------------------------------- thread safety


def test_sixteen_threads_record_and_read_concurrently():
    c = collector(window=50)
    per_thread = 500
    start = threading.Barrier(17)
    errors = []

    def writer(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            c.record_metric(metric(i, ("local", "api", "parallel")[t % 3], float(i),
                                   query_class=("short", "long")[i % 2]))

    def reader() -> None:
        start.wait()
        try:
            while any(w.is_alive() for w in writers):
                s = c.get_metrics_summary()
                assert s["count"] <= 50
                c.records("api", "short")
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    writers = [threading.Thread(target=writer, args=(t,)) for t in range(16)]
    reading = threading.Thread(target=reader)
    for thread in writers + [reading]:
        thread.start()
    for thread in writers + [reading]:
        thread.join(timeout=30)
    assert not errors
    assert c.total_recorded == 16 * per_thread  # no lost update
    assert len(c.metrics) == 50
    for window in c.metrics_by_path.values():
        assert len(window) == 50
    assert sorted(c.metrics_by_path) == ["api", "local", "parallel"]


def test_the_windows_keep_the_spec_types():
    """The spec's MetricsCollector: ``metrics`` a bounded deque, ``metrics_by_path`` a
    defaultdict of bounded deques (an unseen path reads as an empty window)."""
    c = MetricsCollector(OptimizationConfig(metrics_window_size=7))
    assert isinstance(c.metrics, deque) and c.metrics.maxlen == 7
    assert isinstance(c.metrics_by_path, defaultdict)
    unseen = c.metrics_by_path["never-used"]
    assert isinstance(unseen, deque) and unseen.maxlen == 7 and len(unseen) == 0
