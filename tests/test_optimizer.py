"""DualTrackOptimizer: request tracking in virtual time, input validation that
never raises, cost, label folding, recommendations (caching, immediate
overrides, safe defaults), adaptation, status, lifecycle, and 16 threads
recording at once. The machine comes from the fakes in tests/fakes."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import urllib.request
from typing import Any, Dict, Optional, Tuple

import pytest
from prometheus_client import CollectorRegistry

from dualtrack import DualTrackOptimizer, ModelPrice, OptimizationConfig, ResourceConstraints, ResourceMonitor
from dualtrack.adapter.embedded import EmbeddedSource
from dualtrack.clock import VirtualClock
from dualtrack.constraints import MB
from dualtrack.exporter.collector import PerformanceMetrics
from dualtrack.exporter.metrics import LATENCY_BUCKETS, TTFT_BUCKETS
from dualtrack.optimizer import facade
from fakes.fake_nvml import FakeGpu, FakeNvml
from fakes.fake_psutil import MISSING, POWER_TIME_UNLIMITED, FakeProc, FakePsutil, sbattery
from support.waiting import wait_until

GIB = 1 << 30
NAN = float("nan")
INF = float("inf")
RECOMMENDATION_KEYS = {"preferred_path", "routing", "timeouts_seconds", "query_class", "strategy", "source",
                       "reasons", "overrides", "complexity"}
ROUTING_KEYS = {"local_bias", "parallel_threshold", "timeout_multiplier", "quality_threshold"}


class CountingPsutil(FakePsutil):
    """A fake psutil that counts every reading, to prove none happens per request."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.readings = 0

    def cpu_percent(self, interval: Any = None, percpu: bool = False) -> float:
        self.readings += 1
        return super().cpu_percent(interval, percpu)

    def virtual_memory(self) -> Any:
        self.readings += 1
        return super().virtual_memory()


def fake_monitor(registry: CollectorRegistry, config: OptimizationConfig, clock: VirtualClock, *,
                 rss_mb: float = 100, battery: Any = MISSING, gpus: Optional[list] = None
                 ) -> Tuple[ResourceMonitor, CountingPsutil, Optional[FakeNvml]]:
    ps = CountingPsutil(battery=battery)
    ps.procs[os.getpid()] = FakeProc(rss=int(rss_mb * MB), cpu_percent=10.0)
    nvml = FakeNvml(gpus) if gpus else None
    monitor = ResourceMonitor(config, clock=clock, psutil_module=ps, nvml=nvml or False, registry=registry)
    monitor.min_cpu_window_seconds = 0.0  # fakes have no real counters
    return monitor, ps, nvml


class Env:
    """An optimizer with a fresh registry and a virtual clock (and optionally a faked machine)."""

    def __init__(self, *, monitor: bool = False, rss_mb: float = 100, battery: Any = MISSING,
                 gpus: Optional[list] = None, **config: Any) -> None:
        config.setdefault("prices", {"local": ModelPrice(0, 0), "api": ModelPrice(1.0, 2.0)})
        if not monitor:
            config.setdefault("enable_resource_monitoring", False)
        self.config = OptimizationConfig(**config)
        self.registry = CollectorRegistry()
        self.clock = VirtualClock()
        self.monitor = self.ps = self.nvml = None
        if monitor:
            self.monitor, self.ps, self.nvml = fake_monitor(self.registry, self.config, self.clock, rss_mb=rss_mb,
                                                            battery=battery, gpus=gpus)
        self.optimizer = DualTrackOptimizer(self.config, registry=self.registry, clock=self.clock,
                                            resource_monitor=self.monitor)

    def get(self, name: str, /, **labels: str) -> Optional[float]:
        return self.registry.get_sample_value(name, labels)

    def value(self, name: str, /, **labels: str) -> float:
        """A counter's value, 0 when the series does not exist (yet)."""
        return self.get(name, **labels) or 0.0

    def total(self, name: str, /, **match: str) -> float:
        """Sum of every sample ``name`` whose labels include ``match``."""
        return sum(s.value for family in self.registry.collect() for s in family.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in match.items()))

    def request(self, rid: str, path: str = "api", seconds: float = 0.5, result: Optional[Dict] = None,
                query: str = "hello", **kw: Any) -> None:
        self.optimizer.record_request_start(rid, query)
        self.clock.advance(seconds)
        self.optimizer.record_request_completion(rid, path, {} if result is None else result, **kw)


def test_latency_is_measured_from_the_start_on_the_clock():
    env = Env()
    o = env.optimizer
    o.record_request_start("r1", "What is 2+2?")
    assert env.get("dualtrack_requests_in_flight") == 1 and o.in_flight_count() == 1
    env.clock.advance(1.25)
    o.record_request_completion("r1", "api", {"tokens_in": 8, "tokens_out": 3, "quality_score": 0.9})

    labels = {"path": "api", "query_class": "short"}
    assert env.get("dualtrack_request_duration_seconds_count", **labels) == 1
    assert env.get("dualtrack_request_duration_seconds_sum", **labels) == pytest.approx(1.25)
    assert env.get("dualtrack_request_duration_seconds_bucket", le="1.0", **labels) == 0
    assert env.get("dualtrack_request_duration_seconds_bucket", le="1.5", **labels) == 1
    assert env.get("dualtrack_requests_total", outcome="success", **labels) == 1
    assert env.get("dualtrack_tokens_total", model="api", direction="input", **labels) == 8
    assert env.get("dualtrack_tokens_total", model="api", direction="output", **labels) == 3
    assert env.get("dualtrack_response_quality_ratio_sum", **labels) == pytest.approx(0.9)
    assert env.get("dualtrack_requests_in_flight") == 0 and o.in_flight_count() == 0
    (record,) = o.collector.records("api")
    assert record.latency_ms == pytest.approx(1250.0) and record.request_id == "r1"
    assert record.tokens_processed == 11 and record.query_class == "short"
    assert record.timestamp == env.clock.time()


def test_each_resource_reading_counts_the_local_calls_in_flight_with_it():
    env = Env(monitor=True)
    o = env.optimizer
    assert env.monitor.load_probe is not None  # the optimizer gave its monitor the recorder's count
    o.record_request_start("l1", "q", {"track": "local"})
    o.record_request_start("l2", "q", {"track": "local"})
    o.record_request_start("a1", "q", {"track": "api"})
    assert env.monitor.sample_now().local_calls_in_flight == 2
    assert env.get("dualtrack_resource_reading_local_calls") == 2
    o.record_request_completion("l1", "local", {})
    assert env.get("dualtrack_resource_reading_local_calls") == 2  # the count of the reading, not of now
    assert env.monitor.sample_now().local_calls_in_flight == 1
    # A probe that fails leaves the count absent; the reading itself goes on.
    env.monitor.load_probe = lambda: 1 // 0
    snap = env.monitor.sample_now()
    assert snap.local_calls_in_flight is None and snap.process_memory_bytes is not None
    assert env.get("dualtrack_resource_reading_local_calls") is None


def test_the_window_record_has_every_field_right():
    gpus = [FakeGpu("G", utilization_percent=40, memory_used=1 * GIB, memory_total=8 * GIB)]
    env = Env(monitor=True, rss_mb=300, gpus=gpus)
    env.monitor.sample_now()
    env.request("r9", "api", 0.25, {"tokens_in": 7, "tokens_out": 5, "quality_score": 0.5, "model": "api"},
                success=False, error_type="http_429")
    (record,) = env.optimizer.collector.records("api")
    assert record == PerformanceMetrics(
        timestamp=env.clock.time(), processing_path="api", request_id="r9", latency_ms=250.0,
        tokens_processed=12, memory_usage_mb=300.0, cpu_usage_percent=pytest.approx(10.0),
        gpu_usage_percent=40.0, cost_estimate=pytest.approx((7 * 1.0 + 5 * 2.0) / 1e6), quality_score=0.5,
        success=False, error_type="http_429", query_class="short", outcome="error", tokens_in=7,
        tokens_out=5, has_cost=True, has_quality=True, model="api")
    env.request("r10", "local", 0.5, {"cost": 0.0})  # no quality given; free
    (record,) = env.optimizer.collector.records("local")
    assert (record.has_quality, record.quality_score, record.has_cost, record.cost_estimate) == (False, 0.0, True, 0.0)
    assert record.success is True and record.outcome == "success" and record.error_type is None


def test_a_call_refused_by_a_rate_limit_is_an_error_counted_apart_too():
    env = Env()
    labels = {"path": "api", "query_class": "short"}
    assert env.get("dualtrack_rate_limited_total", **labels) == 0  # exported before the first refusal
    env.request("r1", "api", 0.05, {}, success=False, error_type="rate_limited")
    env.request("r2", "api", 0.05, {}, success=False, error_type="http_500")
    env.request("r3", "api", 0.05, {"outcome": "timeout"}, success=False, error_type="rate_limited")
    assert env.get("dualtrack_requests_total", outcome="error", **labels) == 2
    assert env.get("dualtrack_rate_limited_total", **labels) == 1  # r1 only: r3 ended as a timeout
    values = env.optimizer.adaptive.source.fetch()
    assert values.get("rate_limited_ratio", {"path": "api"}) == pytest.approx(1 / 3)
    assert values.get("interval_rate_limited", labels) == 1
    assert values.get("interval_calls", labels) == 3


def test_latency_ms_overrides_the_measured_time():
    env = Env()
    env.request("r1", "local", seconds=5.0, result={"latency_ms": 200})
    labels = {"path": "local", "query_class": "short"}
    assert env.get("dualtrack_request_duration_seconds_sum", **labels) == pytest.approx(0.2)
    assert env.optimizer.collector.records("local")[0].latency_ms == 200.0


def test_the_query_class_of_the_start_is_used_at_completion():
    env = Env()
    env.optimizer.record_request_start("r1", "x" * 4 * 3000)  # ~3000 tokens: long
    env.optimizer.record_request_start("r2", "q", {"query_class": "medium"})
    env.optimizer.record_request_completion("r1", "local", {"query_class": "short"})  # the start's class wins
    env.optimizer.record_request_completion("r2", "local", {})
    assert env.get("dualtrack_requests_total", path="local", query_class="long", outcome="success") == 1
    assert env.get("dualtrack_requests_total", path="local", query_class="medium", outcome="success") == 1
    assert env.value("dualtrack_requests_total", path="local", query_class="short", outcome="success") == 0


@pytest.mark.parametrize("success, error_type, outcome", [
    (True, None, "success"), (False, None, "error"), (False, "http_500", "error"),
    (False, "timeout", "timeout"), (False, "cancelled", "cancelled"),
])
def test_outcome_from_success_and_error_type(success, error_type, outcome):
    env = Env()
    env.request("r", "parallel", 2.0, {"quality_score": 0.9}, success=success, error_type=error_type)
    labels = {"path": "parallel", "query_class": "short"}
    assert env.get("dualtrack_requests_total", outcome=outcome, **labels) == 1
    assert env.total("dualtrack_requests_total") == 1
    # Cancelled legs of a race are not latencies; quality counts for successes only.
    expected_latency = 0 if outcome == "cancelled" else 1
    assert env.value("dualtrack_request_duration_seconds_count", **labels) == expected_latency
    assert env.value("dualtrack_response_quality_ratio_count", **labels) == (1 if outcome == "success" else 0)


def test_an_explicit_outcome_in_the_result_wins():
    env = Env()
    env.request("r", "api", result={"outcome": "timeout"}, success=False)
    assert env.get("dualtrack_requests_total", path="api", query_class="short", outcome="timeout") == 1


# --------------------------------------------------------------------------- starts and completions


def test_a_completion_without_a_start_is_recorded_and_counted():
    env = Env()
    o = env.optimizer
    o.record_request_completion("ghost", "api", {"latency_ms": 300, "tokens_in": 5})
    assert env.get("dualtrack_completions_without_start_total") == 1
    assert env.get("dualtrack_requests_total", path="api", query_class="other", outcome="success") == 1
    assert env.get("dualtrack_request_duration_seconds_sum", path="api", query_class="other") == pytest.approx(0.3)
    assert env.get("dualtrack_requests_in_flight") == 0  # never negative

    # Without latency_ms there is no duration: counted, not observed, not in the windows.
    o.record_request_completion("ghost2", "local", {"query_class": "long"})
    assert env.get("dualtrack_completions_without_start_total") == 2
    assert env.get("dualtrack_requests_total", path="local", query_class="long", outcome="success") == 1
    assert env.value("dualtrack_request_duration_seconds_count", path="local", query_class="long") == 0
    assert o.collector.records("local") == []
    assert len(o.collector.records("api")) == 1


def test_orphaned_starts_expire_after_the_ttl_and_are_counted():
    env = Env(inflight_ttl_seconds=60)
    o = env.optimizer
    for i in range(5):
        o.record_request_start(f"orphan{i}", "q")
    env.clock.advance(30)
    o.record_request_start("young", "q")
    assert env.get("dualtrack_requests_in_flight") == 6
    assert env.get("dualtrack_request_starts_expired_total") == 0

    env.clock.advance(35)  # the orphans are 65 s old, "young" 35 s
    o.record_request_start("late", "q")
    assert env.get("dualtrack_request_starts_expired_total") == 5
    assert env.get("dualtrack_requests_in_flight") == 2 and o.in_flight_count() == 2

    # A completion for an expired start is a completion without a start.
    o.record_request_completion("orphan0", "api", {"latency_ms": 10})
    assert env.get("dualtrack_completions_without_start_total") == 1
    o.record_request_completion("young", "api", {})
    assert env.get("dualtrack_request_duration_seconds_sum", path="api", query_class="short") == pytest.approx(35.0)
    assert env.get("dualtrack_requests_in_flight") == 1


def test_orphans_expire_without_further_traffic():
    # An idle router: no new start ever arrives, the adaptation cycle expires them.
    env = Env(inflight_ttl_seconds=60, constraints=ResourceConstraints(max_concurrent_requests=3))
    for i in range(3):
        env.optimizer.record_request_start(f"orphan{i}", "q")
    assert env.optimizer.get_optimization_recommendations("q")["overrides"] == ["concurrency"]
    env.clock.advance(61)
    # Orphans past their TTL do not keep the concurrency override on.
    assert env.optimizer.get_optimization_recommendations("q")["overrides"] == []
    assert env.get("dualtrack_request_starts_expired_total") == 3
    env.optimizer.record_request_start("again", "q")
    env.clock.advance(61)
    env.optimizer.adapt_now()
    assert env.get("dualtrack_request_starts_expired_total") == 4
    assert env.get("dualtrack_requests_in_flight") == 0


def test_the_inflight_table_is_bounded():
    env = Env(max_inflight_tracked=100)
    o = env.optimizer
    for i in range(1000):
        o.record_request_start(f"r{i}", "q")
        assert o.in_flight_count() <= 100
    assert env.get("dualtrack_request_starts_expired_total") == 900
    assert env.get("dualtrack_requests_in_flight") == 100
    # The newest are kept: they are the ones still likely to complete.
    o.record_request_completion("r999", "api", {})
    assert env.value("dualtrack_completions_without_start_total") == 0
    o.record_request_completion("r0", "api", {})
    assert env.get("dualtrack_completions_without_start_total") == 1


def test_a_duplicate_start_is_counted_and_not_double_counted_in_flight():
    env = Env()
    env.optimizer.record_request_start("dup", "q")
    env.optimizer.record_request_start("dup", "q")
    assert env.get("dualtrack_inputs_rejected_total", input="start", reason="duplicate_request_id") == 1
    assert env.get("dualtrack_requests_in_flight") == 1
    env.optimizer.record_request_completion("dup", "api", {})
    assert env.get("dualtrack_requests_in_flight") == 0


# --------------------------------------------------------------------------- bad input never raises

BAD_RESULTS = [
    ({"tokens_in": -1}, "bad_tokens_in"),
    ({"tokens_in": "12"}, "bad_tokens_in"),
    ({"tokens_in": 1.5}, "bad_tokens_in"),
    ({"tokens_in": True}, "bad_tokens_in"),
    ({"tokens_in": 10**12}, "bad_tokens_in"),
    ({"tokens_out": NAN}, "bad_tokens_out"),
    ({"tokens_out": INF}, "bad_tokens_out"),
    ({"tokens_out": [3]}, "bad_tokens_out"),
    ({"tokens_processed": -5}, "bad_tokens_processed"),
    ({"cost": -0.01}, "bad_cost"),
    ({"cost": NAN}, "bad_cost"),
    ({"cost": INF}, "bad_cost"),
    ({"cost": "0.1"}, "bad_cost"),
    ({"quality_score": 1.5}, "bad_quality_score"),
    ({"quality_score": -0.1}, "bad_quality_score"),
    ({"quality_score": NAN}, "bad_quality_score"),
    ({"quality_score": "high"}, "bad_quality_score"),
    ({"quality_score": True}, "bad_quality_score"),
    ({"latency_ms": -5}, "bad_latency_ms"),
    ({"latency_ms": NAN}, "bad_latency_ms"),
    ({"latency_ms": INF}, "bad_latency_ms"),
    ({"latency_ms": "fast"}, "bad_latency_ms"),
    ({"time_to_first_token_ms": -1}, "bad_time_to_first_token_ms"),
    ({"time_to_first_token_ms": NAN}, "bad_time_to_first_token_ms"),
    ({"time_to_first_token_ms": "soon"}, "bad_time_to_first_token_ms"),
    ({"outcome": "exploded"}, "bad_outcome"),
    ({"outcome": ["success"]}, "bad_outcome"),
    ("oops", "not_a_mapping"),
    (42, "not_a_mapping"),
    (["tokens_in", 5], "not_a_mapping"),
]


@pytest.mark.parametrize("result, reason", BAD_RESULTS, ids=[f"{r}-{i}" for i, (_, r) in enumerate(BAD_RESULTS)])
def test_every_bad_result_field_is_rejected_counted_and_never_raises(result, reason):
    env = Env()
    env.request("r1", "api", 0.5, result)  # must not raise
    assert env.get("dualtrack_inputs_rejected_total", input="result", reason=reason) == 1
    assert env.total("dualtrack_inputs_rejected_total") == 1  # nothing else was wrong
    # The request itself still counts, with what was valid.
    assert env.total("dualtrack_requests_total") == 1
    assert env.total("dualtrack_optimizer_errors_total") == 0
    assert env.get("dualtrack_requests_in_flight") == 0
    labels = {"path": "api", "query_class": "short"}
    # The measured time (a bad latency_ms override falls back to it).
    assert env.get("dualtrack_request_duration_seconds_sum", **labels) == pytest.approx(0.5)
    if reason == "bad_quality_score":
        assert env.value("dualtrack_response_quality_ratio_count", **labels) == 0


def test_a_bad_field_keeps_the_good_ones():
    env = Env()
    env.request("r1", "api", 0.5, {"tokens_in": -3, "tokens_out": 40, "quality_score": 2, "cost": 0.25})
    labels = {"path": "api", "query_class": "short", "model": "api"}
    assert env.value("dualtrack_tokens_total", direction="input", **labels) == 0
    assert env.get("dualtrack_tokens_total", direction="output", **labels) == 40
    assert env.get("dualtrack_cost_dollars_total", **labels) == 0.25
    assert env.get("dualtrack_inputs_rejected_total", input="result", reason="bad_tokens_in") == 1
    assert env.get("dualtrack_inputs_rejected_total", input="result", reason="bad_quality_score") == 1


def test_huge_and_odd_values_never_raise_and_stay_bounded():
    env = Env()
    o = env.optimizer
    huge = "x" * 100_000
    o.record_request_start(huge, huge, {"query_class": huge})
    env.clock.advance(1)
    o.record_request_completion(huge, huge, {"model": huge, "query_class": ["not", "hashable"]},
                                success=False, error_type=huge)
    o.record_request_completion("r2", "api", {"query_class": {"a": 1}, "latency_ms": 5})
    o.record_request_completion("r3", "api", {"latency_ms": 1}, error_type=RuntimeError("boom"), success=False)
    o.record_request_completion("r4", "api", None)  # None: an empty result, not an error
    assert env.total("dualtrack_optimizer_errors_total") == 0
    assert env.get("dualtrack_requests_total", path="other", query_class="other", outcome="error") == 1
    assert env.get("dualtrack_requests_total", path="api", query_class="other", outcome="success") == 2
    assert env.value("dualtrack_label_values_folded_total", label="path") == 1
    assert env.value("dualtrack_label_values_folded_total", label="model") == 1
    assert env.value("dualtrack_label_values_folded_total", label="query_class") >= 2
    record = o.collector.records("other")[0]
    assert len(record.error_type) == 64 and len(record.request_id) == 128
    assert o.collector.records("api")[-1].error_type == "RuntimeError"  # a type name, not the message
    assert env.total("dualtrack_requests_total") == 4
    assert env.total("dualtrack_inputs_rejected_total") == 0


def test_bad_arguments_and_internal_failures_never_raise(monkeypatch):
    env = Env()
    o = env.optimizer
    o.record_request_start("fine", "q")
    o.record_request_start(["unhashable"], "q")  # type: ignore[arg-type]
    o.record_request_completion({"bad": "id"}, "api", {})  # type: ignore[arg-type]
    # Bad input, not internal failures: the start is refused and counted, the
    # completion is recorded as one without a start.
    assert env.get("dualtrack_inputs_rejected_total", input="start", reason="unhashable_request_id") == 1
    assert env.value("dualtrack_optimizer_errors_total", component="record_request_start") == 0
    assert env.value("dualtrack_optimizer_errors_total", component="record_request_completion") == 0
    assert env.get("dualtrack_completions_without_start_total") == 1
    assert env.total("dualtrack_requests_total") == 1
    assert env.get("dualtrack_requests_in_flight") == 1

    def boom(*args: Any, **kw: Any) -> None:
        raise RuntimeError("window broke")

    monkeypatch.setattr(o.collector, "record_metric", boom)
    env.request("r1", "api")
    assert env.get("dualtrack_optimizer_errors_total", component="record_request_completion") == 1
    # The metrics were recorded before the failure; in-flight is consistent.
    assert env.get("dualtrack_requests_in_flight") == 1
    assert env.total("dualtrack_requests_total") == 2


def test_a_start_context_that_is_not_a_mapping_is_counted_and_the_request_still_timed():
    env = Env()
    o = env.optimizer
    for i, context in enumerate(("parallel", ["path", "parallel"], 42)):
        o.record_request_start(f"r{i}", "q", context)  # type: ignore[arg-type]
    assert o.in_flight_count() == 3  # counted as calls: the bad context said nothing
    assert env.get("dualtrack_inputs_rejected_total", input="start", reason="context_not_a_mapping") == 3
    assert env.value("dualtrack_optimizer_errors_total", component="record_request_start") == 0
    env.clock.advance(0.25)
    o.record_request_completion("r0", "api", {})
    assert env.get("dualtrack_request_duration_seconds_sum", path="api", query_class="short") == pytest.approx(0.25)


# --------------------------------------------------------------------------- cost and label folding


def test_cost_from_the_price_table_per_model():
    env = Env(prices={"gpt": {"input_per_million": 2.0, "output_per_million": 8.0}, "local": (0, 0)})
    env.request("r1", "api", result={"model": "gpt", "tokens_in": 1000, "tokens_out": 500})
    env.request("r2", "api", result={"model": "gpt", "tokens_in": 1000, "tokens_out": 500, "cost": 0.5})
    env.request("r3", "local", result={"tokens_in": 1000, "tokens_out": 500})  # model = path: priced 0
    labels = {"path": "api", "query_class": "short", "model": "gpt"}
    assert env.get("dualtrack_cost_dollars_total", **labels) == pytest.approx(0.006 + 0.5)
    assert env.value("dualtrack_cost_unknown_total", path="local") == 0
    summary = env.optimizer.collector.get_metrics_summary("local")
    assert summary["total_cost"] == 0.0  # known to be free, not unknown

    env.request("r4", "api", result={"model": "mystery", "tokens_in": 10})
    env.request("r5", "api", result={"tokens_in": 10})  # model = "api": not in this table either
    assert env.get("dualtrack_cost_unknown_total", path="api") == 2
    unknown = [r for r in env.optimizer.collector.records("api") if not r.has_cost]
    assert [r.request_id for r in unknown] == ["r4", "r5"]
    assert env.optimizer.collector.get_metrics_summary("api")["total_cost"] == pytest.approx(0.506)


def test_unknown_paths_classes_and_too_many_models_fold_into_other():
    env = Env(max_model_labels=2)
    o = env.optimizer
    env.request("r1", "gpu-cluster")
    o.record_request_start("r2", "q", {"query_class": "weird"})
    o.record_request_completion("r2", "api", {})
    for i, model in enumerate(["m1", "m2", "m3", "m4", "m1", "api"]):
        env.request(f"m{i}", "api", result={"model": model, "tokens_in": 1})
    assert env.get("dualtrack_requests_total", path="other", query_class="short", outcome="success") == 1
    assert env.get("dualtrack_requests_total", path="api", query_class="other", outcome="success") == 1
    assert env.get("dualtrack_label_values_folded_total", label="path") == 1
    assert env.get("dualtrack_label_values_folded_total", label="query_class") == 1
    assert env.get("dualtrack_label_values_folded_total", label="model") == 2  # m3, m4
    models = {s.labels["model"] for f in env.registry.collect() for s in f.samples
              if s.name == "dualtrack_tokens_total"}
    assert models == {"m1", "m2", "other", "api"}  # priced models do not use up the dynamic slots
    assert env.get("dualtrack_tokens_total", path="api", query_class="short", model="m1", direction="input") == 2


def test_a_custom_classifier_is_bounded_too():
    def classify(query: str, context: Optional[Dict]) -> str:
        return "code" if "def " in query else query[:20]

    env = Env(query_classes=("code", "chat"), query_class_boundaries_tokens=(), query_classifier=classify)
    assert env.optimizer.get_optimization_recommendations("def f(): pass")["query_class"] == "code"
    assert env.optimizer.get_optimization_recommendations("something else")["query_class"] == "other"
    assert env.optimizer.get_optimization_recommendations("x", {"query_class": "chat"})["query_class"] == "chat"


# --------------------------------------------------------------------------- recommendations


def test_recommendation_keys():
    env = Env(strategy="balanced")  # races complex queries (parallel_threshold 0.7)
    rec = env.optimizer.get_optimization_recommendations("What is the capital of France?")
    assert RECOMMENDATION_KEYS <= set(rec)
    assert rec["preferred_path"] in ("local", "api", "parallel")
    assert set(rec["routing"]) == ROUTING_KEYS
    assert set(rec["timeouts_seconds"]) == {"local", "api", "parallel"}
    assert all(v > 0 for v in rec["timeouts_seconds"].values())
    assert rec["query_class"] == "short" and rec["strategy"] == "balanced" and rec["source"] == "embedded"
    assert isinstance(rec["reasons"], list) and rec["overrides"] == []
    assert 0.0 <= rec["complexity"] <= 1.0
    long_rec = env.optimizer.get_optimization_recommendations("x" * 40_000)
    assert long_rec["query_class"] == "long" and long_rec["complexity"] > rec["complexity"]
    forced = env.optimizer.get_optimization_recommendations("q", {"complexity": 0.95})
    assert forced["complexity"] == 0.95 and forced["preferred_path"] == "parallel"  # >= parallel_threshold 0.7


@pytest.mark.parametrize("query, thousandths", [
    # length: 0.7 * tokens / 4096 (twice the default long boundary), rounded half up
    ("x" * 4 * 512, 88),  # 87.5 exactly: up (round(0.0875, 3) gave 0.087, from the float just below)
    ("x" * 4 * 1000, 171),  # 170.9
    ("x" * 4 * 5000, 700),  # past twice the boundary: the whole 0.7
    ("One question?", 1),  # 3 tokens: 0.51
    ("prove it step by step, then derive: what? why?", 402),  # 11 tokens (1.9), three markers, two '?'
    ("```def f(): SELECT \\frac class explain why prove step by step derive```??", 1000),  # capped
])
def test_complexity_is_the_documented_score(query, thousandths):
    assert Env().optimizer.classifier.complexity(query) == thousandths / 1000


def test_recommendations_are_cached_until_state_changes():
    env = Env(monitor=True, cache_ttl_seconds=300)
    o = env.optimizer
    env.monitor.sample_now()
    first = o.get_optimization_recommendations("hello")
    second = o.get_optimization_recommendations("hello again")
    assert second == first and second is not first  # a fresh dict per call...
    assert second["routing"] is first["routing"]  # ...built once: the cached result

    o.adapt_now()  # a new adaptation cycle invalidates
    third = o.get_optimization_recommendations("hello")
    assert third["routing"] is not first["routing"] and third["sequence"] == first["sequence"] + 1
    assert o.get_optimization_recommendations("hello")["routing"] is third["routing"]

    env.monitor.sample_now()  # a changed resource snapshot invalidates
    fourth = o.get_optimization_recommendations("hello")
    assert fourth["routing"] is not third["routing"]

    env.clock.advance(301)  # and so does the TTL
    assert o.get_optimization_recommendations("hello")["routing"] is not fourth["routing"]


def test_caching_disabled_builds_every_time():
    env = Env(enable_caching=False)
    a = env.optimizer.get_optimization_recommendations("hello")
    b = env.optimizer.get_optimization_recommendations("hello")
    assert a == b and a["routing"] is not b["routing"]


def test_memory_over_limit_steers_to_api_and_disables_parallel():
    env = Env(monitor=True, rss_mb=600, constraints=ResourceConstraints(max_memory_mb=512), strategy="balanced")
    o = env.optimizer
    assert o.get_optimization_recommendations("q")["overrides"] == []  # no reading yet: nothing measured
    env.monitor.sample_now()
    rec = o.get_optimization_recommendations("q", {"complexity": 0.99})
    assert rec["preferred_path"] == "api" and rec["overrides"] == ["memory"]
    assert rec["routing"]["local_bias"] == 0.0 and rec["routing"]["parallel_threshold"] > 1.0
    assert any("over limit (memory)" in r for r in rec["reasons"])
    assert env.get("dualtrack_recommendation_overrides_total", override="memory") == 1
    assert env.get("dualtrack_constraint_violated", constraint="memory") == 1

    env.ps.procs[os.getpid()].rss = 100 * MB  # back under the limit
    env.monitor.sample_now()
    rec = o.get_optimization_recommendations("q", {"complexity": 0.99})
    assert rec["overrides"] == [] and rec["preferred_path"] == "parallel"
    assert env.get("dualtrack_constraint_violated", constraint="memory") == 0


@pytest.mark.parametrize("failure, share, failing", [
    ("model_error", 0.6, False),   # error bursts: the strategy weighs their fallbacks
    ("model_error", 0.9, True),    # nearly every call fails: a crash
    ("unavailable", 0.6, True),    # HTTP 503, connection refused: down or full
    ("timeout", 0.6, True),        # most calls time out: stuck or saturated
])
def test_a_track_is_failing_when_most_calls_fail_but_the_models_errors_only_when_nearly_all_do(
        failure: str, share: float, failing: bool) -> None:
    env = Env(strategy="balanced")
    o = env.optimizer
    for i in range(20):
        o.record_request_start(f"r{i}", "q")
        env.clock.advance(0.1)
        failed = i < round(20 * share)
        o.record_request_completion(f"r{i}", "local", {}, success=not failed,
                                    error_type=failure if failed else None)
    rec = o.get_optimization_recommendations("q")
    assert ("local_failing" in rec["overrides"]) is failing
    if failing:
        assert rec["routing"]["local_bias"] == 0.0


@pytest.mark.parametrize("track", ["local", "api"])
def test_a_failing_track_is_left_to_a_newer_cycle_until_it_fails_again(track: str) -> None:
    """A cycle newer than a track's failures has weighed them, and its probes are what show a
    recovery: the override yields to it until a call on the track fails after it was written."""
    from dualtrack.exporter.collector import MetricsCollector
    from dualtrack.optimizer.overrides import build_recommendation, compute_overrides
    from dualtrack.preferences import Preferences

    config = OptimizationConfig(enable_resource_monitoring=False)
    collector = MetricsCollector(config)
    failing = f"{track}_failing"

    def call(t: float, ok: bool) -> None:
        collector.record_metric(PerformanceMetrics(t, track, f"r{t}", 500.0, 10, 0.0, 0.0, success=ok,
                                                   error_type=None if ok else "unavailable"))

    def overrides(generated_at: float, now: float, source: str = "embedded") -> Any:
        prefs = dataclasses.replace(Preferences.defaults(now=generated_at), source=source)
        return getattr(compute_overrides(config, ["short"], collector, None, prefs, now), failing)

    for i in range(10):  # a crash: every call fails, from t=1000 to t=1009
        call(1000.0 + i, False)
    assert overrides(generated_at=995.0, now=1010.0)  # preferences older than the failures
    assert not overrides(generated_at=1010.0, now=1012.0)  # a cycle after them: its probes go through
    prefs = dataclasses.replace(Preferences.defaults(now=1010.0), source="embedded")
    left = compute_overrides(config, ["short"], collector, None, prefs, 1012.0)
    assert left.yielded == (track,)
    rec = build_recommendation(prefs, "short", prefs.routing_for("short"), False, False, left)
    assert rec["overrides"] == [] and rec["routing"]["local_bias"] == prefs.routing_for("short").local_bias
    assert f"most recent {track} calls failed, but the preferences were written after them" in " ".join(rec["reasons"])
    call(1013.0, True)
    assert not overrides(generated_at=1010.0, now=1014.0)  # it answers again
    call(1015.0, False)
    assert overrides(generated_at=1010.0, now=1016.0)  # failed again since the cycle: steered from
    # A writer's clock ahead of the router's says nothing of the order: the failures count.
    assert overrides(generated_at=1030.0, now=1016.0)
    # Nor do safe defaults, which the preferences reader dates when it falls back to them.
    assert not overrides(generated_at=1015.5, now=1016.0, source="prometheus")
    assert overrides(generated_at=1015.5, now=1016.0, source="defaults")


def test_without_a_resource_monitor_the_overrides_follow_the_calls_within_a_cycle() -> None:
    """The overrides are recomputed a monitor interval after they were, reading or not: a router
    with no resource monitor steers from a track that fails after the cycle's first request."""
    env = Env(strategy="balanced")
    o = env.optimizer
    assert o.get_optimization_recommendations("q")["overrides"] == []
    for i in range(20):
        env.request(f"r{i}", "api", seconds=0.1, success=False, error_type="unavailable")
    assert o.get_optimization_recommendations("q")["overrides"] == ["api_failing"]


def test_an_api_refusing_most_calls_for_its_rate_limit_is_full_not_failing() -> None:
    """Refusals (HTTP 429) come back to local at once; steering every class away from the
    API would leave the calls its limit allows unused. Only the calls it took judge it."""

    def overrides(answered: str) -> Any:
        env = Env(strategy="balanced")
        o = env.optimizer
        for i in range(20):  # 15 of the last 20 refused; the 5 it took answered as ``answered``
            error_type = "rate_limited" if i % 4 else (None if answered == "success" else answered)
            o.record_request_start(f"r{i}", "q")
            env.clock.advance(0.1)
            o.record_request_completion(f"r{i}", "api", {}, success=error_type is None, error_type=error_type)
        return o.get_optimization_recommendations("q")["overrides"]

    assert "api_failing" not in overrides("success")
    assert "api_failing" in overrides("unavailable")  # the calls it took failed: that is failing


def test_memory_over_limit_does_not_steer_to_a_failing_api_and_prefers_local():
    """Over its memory limit, local still gets the calls sent to a failing API: they come back to
    it as fallbacks, after a round trip (the whole timeout where the API hangs). So the failing
    API is not given its share either (the api_outage onset: memory went over with the first
    fallbacks, and the API kept its 30% of calls until the next cycle)."""
    env = Env(monitor=True, rss_mb=600, constraints=ResourceConstraints(max_memory_mb=512))
    o = env.optimizer
    for i in range(10):  # the API fails every call
        o.record_request_start(f"a{i}", "q")
        env.clock.advance(0.1)
        o.record_request_completion(f"a{i}", "api", {}, success=False, error_type="unavailable")
    env.monitor.sample_now()
    rec = o.get_optimization_recommendations("q")
    assert rec["overrides"] == ["api_failing"] and rec["routing"]["local_bias"] == 1.0
    assert rec["preferred_path"] == "local"
    assert any("the API is failing: not steering to it" in r for r in rec["reasons"])
    for i in range(10):  # the API works again
        o.record_request_start(f"b{i}", "q")
        env.clock.advance(0.1)
        o.record_request_completion(f"b{i}", "api", {})
    env.monitor.sample_now()
    assert o.get_optimization_recommendations("q")["overrides"] == ["memory"]


def _api_calls_answered_in(env: "Env", *seconds: float, count: int = 20) -> None:
    """``count`` API calls answered one after another, taking ``seconds`` in turn."""
    for i in range(count):
        env.optimizer.record_request_start(f"ok{i}", "q", {"track": "api"})
        env.clock.advance(seconds[i % len(seconds)])
        env.optimizer.record_request_completion(f"ok{i}", "api", {})


def test_an_api_whose_calls_outlast_its_answers_with_no_answer_since_hangs_at_once() -> None:
    """A hanging API fails a call only at its timeout; the calls sent there since its last
    answer, each running longer than it usually answers, say so before any of them fails."""
    env = Env(monitor=True)
    o = env.optimizer
    _api_calls_answered_in(env, 1.0)  # it answers in a second
    for i in range(8):  # then eight calls, a second apart, and no answer
        o.record_request_start(f"h{i}", "q", {"track": "api"})
        env.clock.advance(1.0)

    def overrides() -> Any:
        env.monitor.sample_now()
        return o.get_optimization_recommendations("q")

    rec = overrides()
    assert rec["overrides"] == ["api_failing"] and rec["routing"]["local_bias"] == 1.0
    assert any("api calls hang" in r for r in rec["reasons"])
    o.record_request_completion("h0", "api", {})  # an answer: slow calls, not a hang
    assert overrides()["overrides"] == []


@pytest.mark.parametrize("waiting,ran", [(4, 10.0), (8, 1.5)])
def test_too_few_calls_waiting_or_none_overdue_is_no_hang(waiting: int, ran: float) -> None:
    """Four calls long past the usual answer are not enough evidence; eight calls that have
    run as long as a third of the answers took are the answers' own spread."""
    env = Env(monitor=True)
    o = env.optimizer
    _api_calls_answered_in(env, 0.5, 1.0, 2.0)
    env.clock.advance(0.01)  # the calls waiting started after the last answer
    for i in range(waiting):
        o.record_request_start(f"h{i}", "q", {"track": "api"})
    env.clock.advance(ran)
    env.monitor.sample_now()
    assert o.get_optimization_recommendations("q")["overrides"] == []


def test_an_api_that_never_answered_is_not_judged_to_hang() -> None:
    env = Env(monitor=True)
    o = env.optimizer
    for i in range(10):
        o.record_request_start(f"h{i}", "q", {"track": "api"})
    env.clock.advance(60.0)
    env.monitor.sample_now()
    assert o.get_optimization_recommendations("q")["overrides"] == []


def test_memory_over_limit_does_not_steer_to_an_api_that_refuses_calls():
    """An API at its rate limit is full: what more it is sent comes back to local as refusals."""
    env = Env(monitor=True, rss_mb=600, constraints=ResourceConstraints(max_memory_mb=512))
    o = env.optimizer

    def call(name: str, refused: bool) -> None:
        o.record_request_start(name, "q")
        env.clock.advance(0.1)
        o.record_request_completion(name, "api", {}, success=not refused,
                                    error_type="rate_limited" if refused else None)

    for i in range(20):  # two refusals among twenty calls: not yet "full"
        call(f"a{i}", refused=i in (3, 12))
    env.monitor.sample_now()
    assert o.get_optimization_recommendations("q")["overrides"] == ["memory"]
    call("b", refused=True)  # the third within the minute: the API is full
    env.monitor.sample_now()
    rec = o.get_optimization_recommendations("q")
    assert rec["overrides"] == [] and rec["routing"]["local_bias"] == 0.5
    assert any("the API is refusing calls (its rate limit): not steering to it" in r for r in rec["reasons"])
    env.clock.advance(61)  # a minute without refusals: the limit has room again
    call("c", refused=False)
    env.monitor.sample_now()
    assert o.get_optimization_recommendations("q")["overrides"] == ["memory"]


def test_gpu_memory_over_limit_steers_away_from_local():
    gpus = [FakeGpu("NVIDIA RTX 4090", utilization_percent=90, memory_used=3 * GIB, memory_total=24 * GIB)]
    env = Env(monitor=True, gpus=gpus, constraints=ResourceConstraints(max_gpu_memory_mb=2048))
    env.monitor.sample_now()
    rec = env.optimizer.get_optimization_recommendations("q")
    assert rec["overrides"] == ["gpu_memory"] and rec["preferred_path"] == "api"
    assert rec["routing"]["parallel_threshold"] > 1.0


def test_concurrency_over_limit_steers_away_from_local():
    env = Env(constraints=ResourceConstraints(max_concurrent_requests=2))
    o = env.optimizer
    o.record_request_start("a", "q")
    assert o.get_optimization_recommendations("q")["overrides"] == []
    o.record_request_start("b", "q")
    rec = o.get_optimization_recommendations("q")
    assert rec["overrides"] == ["concurrency"] and rec["preferred_path"] == "api"
    assert rec["routing"]["local_bias"] == 0.0 and rec["routing"]["parallel_threshold"] > 1.0
    o.record_request_completion("a", "local", {})
    assert o.get_optimization_recommendations("q")["overrides"] == []


def test_api_calls_in_flight_do_not_count_against_the_concurrency_limit():
    # The override steers away from local: API calls in flight load nothing it would relieve.
    env = Env(constraints=ResourceConstraints(max_concurrent_requests=2))
    o = env.optimizer
    for rid in ("a1", "a2", "a3"):
        o.record_request_start(rid, "q", {"track": "api"})
    assert o.in_flight_count() == 3 and env.get("dualtrack_requests_in_flight") == 3
    assert o.get_optimization_recommendations("q")["overrides"] == []
    # A call on local and one whose track the start did not name both may load the machine.
    o.record_request_start("l1", "q", {"track": "local"})
    assert o.get_optimization_recommendations("q")["overrides"] == []
    o.record_request_start("u1", "q")
    assert o.get_optimization_recommendations("q")["overrides"] == ["concurrency"]
    o.record_request_completion("u1", "local", {})
    assert o.get_optimization_recommendations("q")["overrides"] == []
    # An id restarted on local after an API start counts again; API completions are forgotten.
    o.record_request_start("a1", "q", {"track": "local"})
    assert o.get_optimization_recommendations("q")["overrides"] == ["concurrency"]
    for rid in ("a2", "a3"):
        o.record_request_completion(rid, "api", {})
    o.record_request_completion("a1", "local", {})
    assert o.recorder.machine_calls_in_flight() == 1 and o.in_flight_count() == 1


def test_expired_api_calls_leave_the_machine_count_too():
    env = Env(constraints=ResourceConstraints(max_concurrent_requests=2))
    o = env.optimizer
    o.record_request_start("a1", "q", {"track": "api"})
    o.record_request_start("a2", "q", {"track": "api"})
    env.clock.advance(o.config.inflight_ttl_seconds + 1)
    o.recorder.sweep(env.clock.monotonic())
    assert o.in_flight_count() == 0 and o.recorder.machine_calls_in_flight() == 0
    o.record_request_start("l1", "q", {"track": "local"})
    o.record_request_start("l2", "q", {"track": "local"})
    assert o.get_optimization_recommendations("q")["overrides"] == ["concurrency"]


def test_battery_low_and_unplugged_prefers_the_api():
    # Under the threshold (20%) the constraint is violated until the machine is plugged
    # in, whatever the routing: the override waits for half the threshold, where local
    # inference would risk the machine itself.
    env = Env(monitor=True, battery=sbattery(15.0, 900, False),
              constraints=ResourceConstraints(battery_threshold_percent=20))
    env.monitor.sample_now()
    assert env.optimizer.get_optimization_recommendations("q")["overrides"] == []
    assert env.get("dualtrack_constraint_violated", constraint="battery") == 1

    env.ps.battery = sbattery(9.0, 900, False)
    env.monitor.sample_now()
    rec = env.optimizer.get_optimization_recommendations("q", {"complexity": 0.99})
    assert rec["overrides"] == ["battery"] and rec["preferred_path"] == "api"
    assert any("battery low and unplugged" in r for r in rec["reasons"])
    assert env.get("dualtrack_battery_ratio") == 0.09
    assert env.get("dualtrack_constraint_violated", constraint="battery") == 1

    env.ps.battery = sbattery(10.0, POWER_TIME_UNLIMITED, True)  # plugged in: low is fine
    env.monitor.sample_now()
    assert env.optimizer.get_optimization_recommendations("q")["overrides"] == []
    assert env.get("dualtrack_constraint_violated", constraint="battery") == 0


def test_machine_limits_take_priority_over_battery():
    env = Env(monitor=True, rss_mb=600, battery=sbattery(5.0, 60, False),
              constraints=ResourceConstraints(max_memory_mb=512))
    env.monitor.sample_now()
    assert env.optimizer.get_optimization_recommendations("q")["overrides"] == ["memory"]


@pytest.mark.parametrize("local_quality, expect_override", [(0.9, True), (0.5, False)])
def test_cost_cap_prefers_local_when_local_quality_is_acceptable(local_quality, expect_override):
    env = Env(constraints=ResourceConstraints(max_cost_per_request=0.001))
    for i in range(5):
        env.request(f"a{i}", "api", 1.0, {"cost": 0.01, "quality_score": 0.95})
        env.request(f"l{i}", "local", 1.0, {"quality_score": local_quality})
    rec = env.optimizer.get_optimization_recommendations("short question")
    if expect_override:
        assert rec["overrides"] == ["cost"] and rec["preferred_path"] == "local"
        assert rec["routing"]["local_bias"] == 1.0
        assert any("cost $0.0100 > cap $0.0010" in r for r in rec["reasons"])
    else:
        assert rec["overrides"] == []
    # Only the class with the evidence is affected.
    assert env.optimizer.get_optimization_recommendations("x" * 40_000)["overrides"] == []


def test_recommendations_never_raise(monkeypatch):
    env = Env()
    o = env.optimizer

    def boom(*args: Any, **kw: Any) -> None:
        raise RuntimeError("internal")

    monkeypatch.setattr(facade, "build_recommendation", boom)
    rec = o.get_optimization_recommendations("q")
    assert RECOMMENDATION_KEYS <= set(rec)
    assert rec["source"] == "defaults" and rec["preferred_path"] in ("local", "api")
    assert set(rec["routing"]) == ROUTING_KEYS
    assert any("internal error (RuntimeError)" in r for r in rec["reasons"])
    assert env.get("dualtrack_optimizer_errors_total", component="get_optimization_recommendations") == 1

    monkeypatch.setattr(o, "current_preferences", boom)
    assert o.get_optimization_recommendations("q", {"query_class": object()})["source"] == "defaults"
    assert env.get("dualtrack_optimizer_errors_total", component="get_optimization_recommendations") == 2


# --------------------------------------------------------------------------- adaptation and status


def slow_local_traffic(env: Env, n: int = 10) -> None:
    """n requests per track started together; the API answers after 1 s, local after 6 s."""
    o = env.optimizer
    for i in range(n):
        o.record_request_start(f"l{env.clock.time()}-{i}", "q")
        o.record_request_start(f"a{env.clock.time()}-{i}", "q")
    ids = list(o.recorder._calls)
    env.clock.advance(1.0)
    for rid in ids:
        if rid.startswith("a"):
            o.record_request_completion(rid, "api", {"quality_score": 0.9})
    env.clock.advance(5.0)
    for rid in ids:
        if rid.startswith("l"):
            o.record_request_completion(rid, "local", {"quality_score": 0.9})


def test_adapt_now_moves_traffic_away_from_the_slower_track():
    env = Env(strategy="balanced")
    o = env.optimizer
    before = o.get_optimization_recommendations("q")["routing"]["local_bias"]
    slow_local_traffic(env)
    note = o.adapt_now()
    # The objective: local answers take 6 s against a 2 s target, the API's 1 s.
    assert note["ok"] is True and "objective" in note["fired"]
    assert note["changes"]["local_bias"] < 0
    assert note["routing"]["local_bias"] < before
    reason = next(r for r in note["reasons"] if r["rule"] == "objective" and r["query_class"] == "short")
    assert reason["message"].startswith("short: local ") and " vs api " in reason["message"]
    rec = o.get_optimization_recommendations("q")
    assert rec["routing"]["local_bias"] == note["routing"]["local_bias"] and rec["sequence"] == note["sequence"]
    assert any("expected per query" in r for r in rec["reasons"])

    biases = [note["routing"]["local_bias"]]
    for _ in range(3):
        slow_local_traffic(env)
        biases.append(o.adapt_now()["routing"]["local_bias"])
    # The objective moves the whole share at once (down to the probe share) and holds it
    # while the evidence stays the same: no drift back toward the slow track.
    assert biases[0] < 0.1
    assert all(b <= biases[0] + 1e-9 for b in biases), biases
    assert o.get_optimization_recommendations("q")["preferred_path"] == "api"
    assert env.get("dualtrack_adaptation_cycles_total", result="ok") == 4
    assert env.get("dualtrack_routing_preference", preference="local_bias", query_class="short") == biases[-1]


def test_a_failing_adaptation_cycle_keeps_the_current_preferences(monkeypatch):
    env = Env(strategy="balanced")
    o = env.optimizer
    slow_local_traffic(env)
    good = o.adapt_now()["routing"]

    def boom(*args: Any, **kw: Any) -> None:
        raise RuntimeError("signals unavailable")

    monkeypatch.setattr(o.adaptive.engine, "evaluate", boom)
    note = o.adapt_now()
    assert note["ok"] is False and "signals unavailable" in note["error"]
    assert o.get_optimization_recommendations("q")["routing"] == good
    assert env.get("dualtrack_adaptation_cycles_total", result="error") == 1
    assert o.get_optimization_status()["health"]["adapter"]["last_error"].startswith("RuntimeError")


def test_optimization_status():
    env = Env(monitor=True, rss_mb=600, history_size=3, strategy="balanced",
              constraints=ResourceConstraints(max_memory_mb=512))
    o = env.optimizer
    env.monitor.sample_now()
    env.request("r1", "local", 2.0, {"quality_score": 0.9, "tokens_in": 10})
    env.request("r2", "api", 1.0, {"quality_score": 0.8}, success=False, error_type="http_503")
    o.record_request_start("open", "q")
    notes = [o.adapt_now() for _ in range(5)]

    status = o.get_optimization_status()
    assert status["strategy"] == "balanced" and status["source"] == "embedded"
    assert set(status["preferences"]["routing"]) == ROUTING_KEYS
    assert status["metrics"]["count"] == 2
    assert status["metrics"]["by_path"]["local"]["avg_latency_ms"] == pytest.approx(2000.0)
    assert status["metrics"]["by_path"]["api"]["error_types"] == {"http_503": 1}
    assert status["resource_usage"]["process_memory_mb"] == 600
    assert set(status["constraint_violations"]) == {"memory"}
    assert status["constraint_violations"]["memory"]["value"] == 600 * MB
    assert status["constraints"]["cpu"]["violated"] is False
    assert status["in_flight"] == 1
    history = status["adaptation_history"]
    assert len(history) == 3 and [h["sequence"] for h in history] == [n["sequence"] for n in notes[-3:]]
    health = status["health"]
    assert health["metrics_collector"] == "ok" and health["resource_monitor"] == "stopped"
    assert health["adapter"]["cycles"] == {"ok": 5, "error": 0}


def test_status_without_a_monitor_says_so():
    status = Env().optimizer.get_optimization_status()
    assert status["resource_usage"] is None and status["health"]["resource_monitor"] == "disabled"
    assert status["metrics"]["count"] == 0 and status["metrics"]["avg_latency_ms"] is None
    assert status["adaptation_history"] == [] and status["constraint_violations"] == {}


# --------------------------------------------------------------------------- lifecycle


def dualtrack_threads() -> list:
    return [t for t in threading.enumerate() if t.name.startswith("dualtrack-")]


def test_start_and_stop_are_idempotent_and_threads_are_gone_after_stop():
    before = set(dualtrack_threads())
    env = Env(monitor=True, metrics_port=0, adaptation_interval_seconds=30.0, monitor_interval_seconds=10.0)
    o = env.optimizer
    o.start()
    o.start()
    started = set(dualtrack_threads()) - before
    assert sorted(t.name for t in started) == ["dualtrack-adapter", "dualtrack-resource-monitor"]
    wait_until(lambda: env.monitor.snapshot() is not None, 5, "a first resource snapshot")
    assert o.get_optimization_status()["health"]["resource_monitor"] == "running"
    url = o._server.url
    with urllib.request.urlopen(url, timeout=5) as response:
        assert b"dualtrack_requests_total" in response.read()
    server_thread = o._server._thread

    t0 = time.monotonic()
    o.stop()  # the threads wait 30 s and 10 s between cycles: stop must not
    assert time.monotonic() - t0 < 3.0
    o.stop()
    assert not (set(dualtrack_threads()) - before) and not server_thread.is_alive()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)

    with o:  # restartable, and a context manager
        assert len(set(dualtrack_threads()) - before) == 2
    assert not (set(dualtrack_threads()) - before)


def test_the_adaptation_thread_runs_cycles():
    env = Env(adaptation_interval_seconds=0.05)
    env.optimizer.start()
    try:
        wait_until(lambda: env.optimizer.adaptive.cycles["ok"] >= 2, 5, "two adaptation cycles")
    finally:
        env.optimizer.stop()
    assert env.get("dualtrack_adaptation_cycles_total", result="ok") >= 2


def test_no_system_call_per_request():
    env = Env(monitor=True)
    env.monitor.sample_now()
    readings = env.ps.readings
    for i in range(200):
        env.optimizer.get_optimization_recommendations("q")
        env.request(f"r{i}", "local", 0.1, {"tokens_in": 3})
    assert env.ps.readings == readings  # the request path reads the latest snapshot only
    assert env.total("dualtrack_requests_total") == 200


# --------------------------------------------------------------------------- concurrency


def test_sixteen_threads_counters_exactly_equal_the_requests_recorded():
    env = Env(monitor=True, metrics_window_size=50)
    env.monitor.sample_now()
    o = env.optimizer
    threads, per_thread = 16, 400
    paths = ("local", "api", "parallel")
    barrier = threading.Barrier(threads + 1)
    stop = threading.Event()

    def work(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            rid = f"t{t}-{i}"
            o.get_optimization_recommendations("q" * (i % 7) * 300)
            o.record_request_start(rid, "q" * (i % 7) * 300)
            ok = i % 5 != 0
            o.record_request_completion(rid, paths[(t + i) % 3], {"tokens_in": 2, "tokens_out": 3,
                                                                   "quality_score": 0.5},
                                        success=ok, error_type=None if ok else "err")

    def meddle() -> None:  # adaptation, scrapes and status while requests are recorded
        barrier.wait()
        while not stop.is_set():
            o.adapt_now()
            env.monitor.sample_now()
            list(env.registry.collect())
            o.get_optimization_status()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    meddler = threading.Thread(target=meddle)
    for thread in workers:
        thread.start()
    meddler.start()
    for thread in workers:
        thread.join(timeout=60)
    stop.set()
    meddler.join(timeout=10)

    n = threads * per_thread
    assert env.total("dualtrack_requests_total") == n
    assert env.total("dualtrack_requests_total", outcome="error") == n // 5
    assert env.total("dualtrack_request_duration_seconds_count") == n
    assert env.total("dualtrack_request_duration_seconds_bucket", le="+Inf") == n
    assert env.total("dualtrack_response_quality_ratio_count") == n - n // 5
    assert env.total("dualtrack_tokens_total", direction="input") == 2 * n
    assert env.total("dualtrack_tokens_total", direction="output") == 3 * n
    assert env.get("dualtrack_requests_in_flight") == 0 and o.in_flight_count() == 0
    assert env.total("dualtrack_optimizer_errors_total") == 0
    assert env.value("dualtrack_completions_without_start_total") == 0
    assert o.collector.total_recorded == n


def test_sweeps_racing_completions_on_many_threads_keep_the_books_exact():
    """The in-flight table takes no lock per request: sweeps run while other
    threads start and complete. Every start ends exactly once, completed or
    expired, and the gauge, the table and the counters agree."""
    env = Env(inflight_ttl_seconds=5.0)
    o = env.optimizer
    threads, per_thread = 8, 3000
    stop = threading.Event()

    def work(t: int) -> None:
        for i in range(per_thread):
            rid = f"t{t}-{i}"
            o.record_request_start(rid, "q", {"path": "parallel"} if i % 7 == 0 else None)
            if i % 10:  # one in ten is an orphan, left to expire
                o.record_request_completion(rid, "api", {"tokens_in": 1})

    def tick() -> None:  # time passes: sweeps by time, orphans (and some slow starts) expire
        while not stop.is_set():
            env.clock.advance(1.0)
            stop.wait(0.001)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    ticker = threading.Thread(target=tick)
    ticker.start()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=60)
    stop.set()
    ticker.join(timeout=10)
    env.clock.advance(10.0)
    o.get_optimization_recommendations("q")  # a sweep is due: the orphans left expire now

    starts = threads * per_thread
    completions = sum(1 for t in range(threads) for i in range(per_thread) if i % 10)
    without_start = env.value("dualtrack_completions_without_start_total")
    expired = env.value("dualtrack_request_starts_expired_total")
    assert env.total("dualtrack_requests_total") == completions
    assert expired >= starts - completions  # every orphan, and any start that outlived the TTL
    assert expired + (completions - without_start) == starts  # each start ended exactly once
    assert o.in_flight_count() == 0 and env.get("dualtrack_requests_in_flight") == 0
    assert len(o.recorder._parents) == 0
    assert env.total("dualtrack_optimizer_errors_total") == 0
    # a completion whose start had expired has no latency: counted, but not in the windows
    assert o.collector.total_recorded == completions - without_start


# --------------------------------------------------------------------------- the machine, faked


def test_gpu_readings_flow_into_the_optimizers_gauges():
    gpus = [FakeGpu("NVIDIA H100 80GB HBM3", utilization_percent=75, memory_used=1 * GIB, memory_total=80 * GIB,
                    temperature=61, power_mw=350_500)]
    env = Env(monitor=True, gpus=gpus, constraints=ResourceConstraints(max_gpu_memory_mb=4096))
    env.monitor.sample_now()
    h100 = {"gpu": "0", "name": "NVIDIA H100 80GB HBM3"}
    assert env.get("dualtrack_gpu_memory_used_bytes", **h100) == 1 * GIB
    assert env.get("dualtrack_gpu_utilization_ratio", **h100) == 0.75
    assert env.get("dualtrack_gpu_memory_limit_bytes") == 4096 * MB
    assert env.get("dualtrack_constraint_violated", constraint="gpu_memory") == 0
    env.request("r1", "local", 1.0)
    assert env.optimizer.collector.records("local")[0].gpu_usage_percent == 75.0

    env.nvml.gpus[0].memory_used = 6 * GIB
    env.monitor.sample_now()
    assert env.get("dualtrack_gpu_memory_used_bytes", **h100) == 6 * GIB
    assert env.get("dualtrack_constraint_violated", constraint="gpu_memory") == 1
    status = env.optimizer.get_optimization_status()
    assert status["resource_usage"]["gpus"][0]["memory_used_mb"] == 6 * 1024
    assert status["constraint_violations"]["gpu_memory"]["limit"] == 4096 * MB
    assert env.optimizer.get_optimization_recommendations("q")["overrides"] == ["gpu_memory"]


def test_without_a_gpu_the_gpu_constraint_is_absent_not_zero():
    env = Env(monitor=True)
    env.monitor.sample_now()
    assert env.get("dualtrack_constraint_violated", constraint="gpu_memory") is None
    assert env.get("dualtrack_constraint_violated", constraint="memory") == 0
    assert env.get("dualtrack_gpu_memory_limit_bytes") == 2048 * MB  # the limit is configuration, always there


def test_battery_readings_flow_into_the_battery_override():
    env = Env(monitor=True, battery=sbattery(80.0, POWER_TIME_UNLIMITED, True))
    env.monitor.sample_now()
    assert env.get("dualtrack_battery_ratio") == 0.8
    assert env.get("dualtrack_constraint_violated", constraint="battery") == 0
    assert env.optimizer.get_optimization_recommendations("q")["overrides"] == []
    env.ps.battery = sbattery(8.0, 1200, False)  # unplugged and draining below half of 20 %
    env.monitor.sample_now()
    assert env.get("dualtrack_battery_power_plugged") == 0
    assert env.get("dualtrack_constraint_violated", constraint="battery") == 1
    rec = env.optimizer.get_optimization_recommendations("q")
    assert rec["overrides"] == ["battery"] and rec["preferred_path"] == "api"
    assert env.optimizer.get_optimization_status()["constraint_violations"]["battery"]["value"] == 0.08


def test_the_battery_time_left_reaches_the_adapters_signals():
    # The OS's time left is what the adaptive objective reads the battery's drain from.
    env = Env(monitor=True, battery=sbattery(40.0, 1800, False))
    env.monitor.sample_now()
    assert env.get("dualtrack_battery_seconds_left") == 1800
    source = EmbeddedSource(env.optimizer.config, env.optimizer.collector, env.optimizer.resource_monitor.snapshot)
    values = source.fetch()
    assert values.get("battery_seconds_left", {}) == 1800
    assert (values.get("battery_ratio", {}), values.get("battery_discharging", {})) == (0.4, 1.0)
    env.ps.battery = sbattery(40.0, POWER_TIME_UNLIMITED, True)  # plugged in: no time left to speak of
    env.monitor.sample_now()
    assert source.fetch().get("battery_seconds_left", {}) is None


def test_the_adaptive_source_reads_the_intervals_memory_extremes_from_the_monitor():
    # Memory went up and back between two cycles: the cycle's own reading (the latest) misses
    # it; the *_max / *_min signals hold the interval's fullest and emptiest readings, each with
    # the local calls counted with it (not the most calls of any reading).
    env = Env(monitor=True, adaptation_interval_seconds=30.0)
    assert env.monitor is not None and env.ps is not None and env.optimizer.adaptive is not None
    source = env.optimizer.adaptive.source
    limit = env.config.constraints.max_memory_mb

    def read(rss_mb: float, calls: int) -> None:
        env.ps.procs[os.getpid()] = FakeProc(rss=int(rss_mb * MB), cpu_percent=10.0)
        env.monitor.load_probe = lambda: calls
        env.monitor.sample_now()
        env.clock.advance(5.0)

    for rss_mb, calls in ((800, 1), (3000, 6), (1200, 8)):
        read(rss_mb, calls)
    values = source.fetch()
    assert values.get("memory_used_ratio", {}) == pytest.approx(1200 / limit)  # the latest reading
    assert values.get("memory_used_ratio_max", {}) == pytest.approx(3000 / limit)
    assert values.get("memory_used_ratio_min", {}) == pytest.approx(800 / limit)
    assert values.get("memory_reading_local_calls_max", {}) == 6
    assert values.get("memory_reading_local_calls_min", {}) == 1
    assert values.get("gpu_memory_used_ratio_max", {}) is None  # no GPU: absent, not 0
    # Readings older than one adaptation interval are not this interval's.
    env.clock.advance(30.0)
    read(1500, 3)
    values = source.fetch()
    assert values.get("memory_used_ratio_max", {}) == values.get("memory_used_ratio_min", {}) == pytest.approx(
        1500 / limit)
    assert values.get("memory_reading_local_calls_max", {}) == 3
    # A monitor that keeps no readings (the spec's, or a custom one) gives the moment's only.
    plain = EmbeddedSource(env.config, env.optimizer.collector, env.monitor.snapshot)
    assert plain.fetch().get("memory_used_ratio_max", {}) is None


def test_histogram_buckets_cover_llm_latencies():
    assert LATENCY_BUCKETS[0] == 0.01 and LATENCY_BUCKETS[-1] == 120.0
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))


def test_time_to_first_token_is_observed_only_when_given():
    env = Env()
    env.request("plain", "api", 0.5, {"tokens_out": 3})
    # No call reported a first token: no series at all (absent, not zero).
    assert not [s for f in env.registry.collect() if f.name == "dualtrack_time_to_first_token_seconds"
                for s in f.samples]
    env.request("s1", "local", 0.9, {"time_to_first_token_ms": 150})
    env.request("s2", "local", 0.9, {"time_to_first_token_ms": 30.0, "outcome": "cancelled"}, success=False)
    labels = {"path": "local", "query_class": "short"}
    assert env.get("dualtrack_time_to_first_token_seconds_count", **labels) == 2
    assert env.get("dualtrack_time_to_first_token_seconds_sum", **labels) == pytest.approx(0.18)
    assert env.get("dualtrack_time_to_first_token_seconds_bucket", le="0.04", **labels) == 1
    assert env.get("dualtrack_time_to_first_token_seconds_bucket", le="0.16", **labels) == 2
    assert env.get("dualtrack_time_to_first_token_seconds_count", path="api", query_class="short") is None


def test_time_to_first_token_buckets_are_the_opentelemetry_genai_ones():
    # gen_ai.server.time_to_first_token's advisory buckets: 10 ms doubling, 14 of them.
    assert TTFT_BUCKETS == tuple(round(0.01 * 2 ** i, 2) for i in range(14))
    assert TTFT_BUCKETS[-1] == 81.92


# ------------------------------------------------------------------ parallel requests and timeouts


def test_a_parallel_request_counts_its_legs_not_itself_as_in_flight_work() -> None:
    env = Env(constraints=ResourceConstraints(max_concurrent_requests=2))
    o = env.optimizer
    o.record_request_start("p1", "q", {"path": "parallel"})
    o.record_request_start("p1/local", "q")
    o.record_request_start("p1/api", "q")
    assert o.in_flight_count() == 2 and env.get("dualtrack_requests_in_flight") == 2
    assert "concurrency" in o.get_optimization_recommendations("q")["overrides"]  # two calls: at the limit
    env.clock.advance(0.5)
    o.record_request_completion("p1/local", "local", {"quality_score": 0.9})
    o.record_request_completion("p1/api", "api", {"outcome": "cancelled", "tokens_in": 10})
    assert o.in_flight_count() == 0
    env.clock.advance(0.1)
    o.record_request_completion("p1", "parallel", {"quality_score": 0.9})
    assert env.get("dualtrack_requests_in_flight") == 0
    # The parallel request has its own latency (from its own start) and no cost of its own.
    assert env.get("dualtrack_request_duration_seconds_sum", path="parallel", query_class="short") == \
        pytest.approx(0.6)
    assert env.get("dualtrack_cost_unknown_total", path="parallel") is None
    assert env.get("dualtrack_completions_without_start_total") == 0


def test_recommended_timeouts_are_base_times_the_class_multiplier(tmp_path) -> None:
    from dualtrack.preferences import Preferences, Routing, write_preferences

    clock = VirtualClock()
    file = tmp_path / "prefs.json"
    prefs = Preferences(sequence=1, generated_at=clock.time(), valid_until=clock.time() + 60, strategy="s",
                        source="prometheus", routing=Routing(timeout_multiplier=2.0),
                        timeouts_seconds={"local": 10.0, "api": 5.0, "parallel": 8.0},
                        query_classes={"long": Routing(timeout_multiplier=3.0)})
    write_preferences(file, prefs)
    o = DualTrackOptimizer(OptimizationConfig(preferences_file=str(file), enable_resource_monitoring=False),
                           clock=clock, registry=CollectorRegistry())
    assert o.get_optimization_recommendations("hi")["timeouts_seconds"] == {"local": 20.0, "api": 10.0,
                                                                           "parallel": 16.0}
    long = o.get_optimization_recommendations("hi", {"query_class": "long"})
    assert long["timeouts_seconds"] == {"local": 30.0, "api": 15.0, "parallel": 24.0}
