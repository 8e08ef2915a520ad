"""DualTrackRouter: the split, the floor, parallel races, preemption, timeouts,
fallback, and the recording conventions, against a real DualTrackOptimizer
whose preferences come from a file the test writes."""

from __future__ import annotations

import math
import random
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from dualtrack import DualTrackOptimizer, OptimizationConfig
from dualtrack.preferences import PARALLEL_NEVER, Preferences, Routing, write_preferences
from dualtrack.router.backends import BackendError, CallableBackend, Completion, FakeBackend
from dualtrack.router.policy import RoutingPolicy
from dualtrack.router.router import DualTrackRouter, RouterResult

Z_999 = 3.2905  # two-sided 99.9% normal quantile
SLOW = 30.0  # a latency no test waits for: such calls end by cancel or timeout


def binomial_bounds(n: int, p: float) -> Tuple[float, float]:
    """99.9% interval for a binomial count (normal approximation, continuity-corrected)."""
    sd = math.sqrt(n * p * (1.0 - p))
    return n * p - Z_999 * sd - 0.5, n * p + Z_999 * sd + 0.5


def make_optimizer(tmp_path: Path, routing: Routing, *, classes: Optional[Dict[str, Routing]] = None,
                   timeouts: Optional[Dict[str, float]] = None, preemption: bool = True,
                   cls: type = DualTrackOptimizer) -> DualTrackOptimizer:
    now = time.time()
    prefs = Preferences(generated_at=now, valid_until=now + 3600, strategy="static", source="static",
                        routing=routing, query_classes=classes or {},
                        timeouts_seconds=timeouts or {"local": 10.0, "api": 10.0, "parallel": 10.0})
    path = tmp_path / "preferences.json"
    write_preferences(path, prefs)
    config = OptimizationConfig(preferences_file=str(path), enable_resource_monitoring=False,
                                enable_preemption=preemption)
    return cls(config)


def requests_total(opt: DualTrackOptimizer, path: str, outcome: str, qc: str = "short") -> float:
    value = opt.registry.get_sample_value("dualtrack_requests_total",
                                          {"path": path, "query_class": qc, "outcome": outcome})
    return value or 0.0


def all_requests(opt: DualTrackOptimizer, path: str) -> float:
    total = 0.0
    for family in opt.registry.collect():
        if family.name == "dualtrack_requests":
            total += sum(s.value for s in family.samples
                         if s.name == "dualtrack_requests_total" and s.labels["path"] == path)
    return total


@pytest.fixture
def routers():
    made: List[DualTrackRouter] = []

    def make(*args: Any, **kwargs: Any) -> DualTrackRouter:
        router = DualTrackRouter(*args, **kwargs)
        made.append(router)
        return router

    yield make
    for router in made:
        router.close()


NEVER_PARALLEL = dict(parallel_threshold=PARALLEL_NEVER)


# =========================================================================== the split


def test_split_obeys_local_bias(tmp_path: Path, routers) -> None:
    n, bias = 2000, 0.8
    opt = make_optimizer(tmp_path, Routing(local_bias=bias, **NEVER_PARALLEL))
    local, api = FakeBackend("local"), FakeBackend("api")
    router = routers(opt, local, api, rng=random.Random(7))
    results = [router.route("what is 2+2?") for _ in range(n)]
    assert router.drain(5)
    local_count = sum(1 for r in results if r.track_used == "local")
    low, high = binomial_bounds(n, bias)
    assert low <= local_count <= high, (local_count, low, high)
    assert all(r.ok and not r.fell_back and r.path == r.track_used for r in results)
    # Every call counted once, under its track.
    assert requests_total(opt, "local", "success") == local_count == local.calls
    assert requests_total(opt, "api", "success") == n - local_count == api.calls


def test_split_per_query_class(tmp_path: Path, routers) -> None:
    n = 1000
    opt = make_optimizer(tmp_path, Routing(local_bias=0.8, **NEVER_PARALLEL),
                         classes={"long": Routing(local_bias=0.2, **NEVER_PARALLEL)})
    router = routers(opt, FakeBackend("local"), FakeBackend("api"), rng=random.Random(11))
    for qc, bias in (("long", 0.2), ("short", 0.8)):
        results = [router.route("q", {"query_class": qc}) for _ in range(n)]
        local_count = sum(1 for r in results if r.track_used == "local")
        low, high = binomial_bounds(n, bias)
        assert low <= local_count <= high, (qc, local_count, low, high)
        assert all(r.plan.query_class == qc for r in results)


@pytest.mark.parametrize("bias, starved", [(0.0, "local"), (1.0, "api")])
def test_exploration_floor_keeps_both_tracks_alive(tmp_path: Path, routers, bias: float, starved: str) -> None:
    n = 2000
    opt = make_optimizer(tmp_path, Routing(local_bias=bias, **NEVER_PARALLEL))
    router = routers(opt, FakeBackend("local"), FakeBackend("api"), rng=random.Random(3))
    policy_floor = router.policy.floor
    results = [router.route("hello") for _ in range(n)]
    count = sum(1 for r in results if r.track_used == starved)
    low, high = binomial_bounds(n, policy_floor)
    assert count > 0
    assert max(low, 1) <= count <= high, (count, low, high)


# =========================================================================== parallel


def test_parallel_runs_at_and_above_threshold_only(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path, Routing(local_bias=0.5, parallel_threshold=0.6))
    local, api = FakeBackend("local", quality=0.9), FakeBackend("api", quality=0.9)
    router = routers(opt, local, api, rng=random.Random(1))
    for complexity in (0.6, 0.95):
        result = router.route("q", {"complexity": complexity})
        assert result.path == "parallel" and result.plan.tracks == ("local", "api")
    below = [router.route("q", {"complexity": 0.59}) for _ in range(20)]
    assert all(r.path in ("local", "api") for r in below)
    assert router.drain(5)
    assert requests_total(opt, "parallel", "success") == 2


class StartSignalling(FakeBackend):
    """Sets ``started`` when a call begins (so a test can order events without sleeping)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = threading.Event()

    def generate(self, prompt: Any, *, timeout: float, cancel: threading.Event) -> Completion:
        self.started.set()
        return super().generate(prompt, timeout=timeout, cancel=cancel)


def test_preemption_cancels_the_loser_and_records_it_cancelled(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path, Routing(parallel_threshold=0.5, quality_threshold=0.8))
    api = StartSignalling("api", latency=SLOW, quality=0.95, tokens_out=500, cost=0.02)
    # The local answer is held until the API call is running, so there is a call to cancel.
    local = FakeBackend("local", quality=0.9, gate=api.started)
    router = routers(opt, local, api)
    started = time.monotonic()
    result = router.route("a fairly hard question", {"complexity": 0.9})
    assert time.monotonic() - started < SLOW / 3
    assert result.ok and result.path == "parallel" and result.track_used == "local"
    assert result.quality_score == 0.9
    assert router.drain(5), "the cancelled leg never returned"
    assert api.cancelled == 1 and api.completed == 0
    assert requests_total(opt, "api", "cancelled") == 1
    assert requests_total(opt, "local", "success") == 1
    assert requests_total(opt, "parallel", "success") == 1
    # The loser's incurred input tokens are counted under its track; the
    # parallel request itself carries no tokens or cost.
    assert opt.registry.get_sample_value(
        "dualtrack_tokens_total",
        {"path": "api", "query_class": "short", "model": "fake-api", "direction": "input"}) > 0
    for family in opt.registry.collect():
        if family.name in ("dualtrack_tokens", "dualtrack_cost_dollars"):
            assert not [s for s in family.samples if s.labels.get("path") == "parallel"]


def test_preemption_skips_an_answer_below_the_quality_threshold(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path, Routing(parallel_threshold=0.5, quality_threshold=0.8))
    local = FakeBackend("local", quality=0.5)
    api = FakeBackend("api", latency=0.3, quality=0.9)
    router = routers(opt, local, api)
    result = router.route("q", {"complexity": 0.9})
    assert result.track_used == "api" and result.quality_score == 0.9
    assert router.drain(5)
    # The weak answer completed: a real measurement of its track.
    assert requests_total(opt, "local", "success") == 1
    assert requests_total(opt, "api", "success") == 1


def test_unknown_quality_is_acceptable_for_preemption(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path, Routing(parallel_threshold=0.5, quality_threshold=0.8))
    router = routers(opt, FakeBackend("local", quality=None), FakeBackend("api", latency=SLOW))
    result = router.route("q", {"complexity": 0.9})
    assert result.track_used == "local" and result.quality_score is None
    assert router.drain(5)
    assert requests_total(opt, "api", "cancelled") == 1


def test_without_preemption_both_finish_and_the_better_quality_wins(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path, Routing(parallel_threshold=0.5, quality_threshold=0.8), preemption=False)
    local = FakeBackend("local", quality=0.85)
    api = FakeBackend("api", latency=0.1, quality=0.95)
    router = routers(opt, local, api)
    assert router.policy.enable_preemption is False
    result = router.route("q", {"complexity": 0.9})
    assert result.track_used == "api" and result.quality_score == 0.95
    assert local.completed == api.completed == 1
    assert requests_total(opt, "local", "success") == requests_total(opt, "api", "success") == 1
    assert requests_total(opt, "local", "cancelled") == requests_total(opt, "api", "cancelled") == 0


def test_parallel_with_one_failing_leg_uses_the_other(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path, Routing(parallel_threshold=0.5))
    router = routers(opt, FakeBackend("local", error_rate=1.0), FakeBackend("api", latency=0.05, quality=0.9))
    result = router.route("q", {"complexity": 0.9})
    assert result.ok and result.track_used == "api" and not result.fell_back
    assert requests_total(opt, "local", "error") == 1
    assert requests_total(opt, "parallel", "success") == 1


def test_parallel_race_out_of_time_is_a_timeout(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path, Routing(parallel_threshold=0.5),
                         timeouts={"local": 10.0, "api": 10.0, "parallel": 0.2})
    router = routers(opt, FakeBackend("local", latency=SLOW), FakeBackend("api", latency=SLOW))
    started = time.monotonic()
    result = router.route("q", {"complexity": 0.9})
    assert time.monotonic() - started < 2.0
    assert not result.ok and result.error is not None and result.error.kind == "timeout"
    assert router.drain(5)
    assert requests_total(opt, "local", "timeout") == requests_total(opt, "api", "timeout") == 1
    assert requests_total(opt, "parallel", "timeout") == 1


# =========================================================================== timeouts and fallback


def test_timeout_falls_back_once_to_the_other_track(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path, Routing(local_bias=1.0, **NEVER_PARALLEL),
                         timeouts={"local": 0.2, "api": 5.0, "parallel": 5.0})
    local = FakeBackend("local", latency=SLOW)
    api = FakeBackend("api", quality=0.9)
    # floor 0: a bias of 1 then always plans local, so the test is exact.
    router = routers(opt, local, api, policy=RoutingPolicy(opt, floor=0.0))
    started = time.monotonic()
    result = router.route("q")
    elapsed = time.monotonic() - started
    assert result.ok and result.path == "local" and result.track_used == "api" and result.fell_back
    assert 0.2 <= elapsed < 2.0
    assert router.drain(5)
    assert local.calls == api.calls == 1
    assert requests_total(opt, "local", "timeout") == 1
    assert requests_total(opt, "api", "success") == 1
    # The timed-out call's latency is the time the router waited for it.
    duration_sum = opt.registry.get_sample_value("dualtrack_request_duration_seconds_sum",
                                                 {"path": "local", "query_class": "short"})
    assert 0.2 <= duration_sum < 1.0


def test_error_falls_back_and_both_failing_is_an_error_result(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path, Routing(local_bias=1.0, **NEVER_PARALLEL))
    local = FakeBackend("local", error_rate=1.0, error_kind="unavailable")
    api = FakeBackend("api", error_rate=1.0, error_kind="rate_limited")
    router = routers(opt, local, api, policy=RoutingPolicy(opt, floor=0.0))
    result = router.route("q")
    assert not result.ok and result.text is None and result.track_used is None and result.fell_back
    assert isinstance(result.error, BackendError) and result.error.kind == "rate_limited"
    assert local.calls == 1 and api.calls == 1  # one fallback, no more
    assert requests_total(opt, "local", "error") == requests_total(opt, "api", "error") == 1


def test_no_fallback_when_the_policy_disables_it(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path, Routing(local_bias=1.0, **NEVER_PARALLEL))
    api = FakeBackend("api")
    router = routers(opt, FakeBackend("local", error_rate=1.0), api,
                     policy=RoutingPolicy(opt, floor=0.0, fallback=False))
    result = router.route("q")
    assert not result.ok and not result.fell_back and api.calls == 0


def test_a_backend_that_raises_is_an_error_of_that_call(tmp_path: Path, routers) -> None:
    def broken(prompt: str) -> str:
        raise RuntimeError("boom")

    opt = make_optimizer(tmp_path, Routing(local_bias=1.0, **NEVER_PARALLEL))
    router = routers(opt, CallableBackend(broken, "local", "mine"), FakeBackend("api"),
                     policy=RoutingPolicy(opt, floor=0.0))
    result = router.route("q")
    assert result.ok and result.fell_back and result.track_used == "api"
    assert requests_total(opt, "local", "error") == 1


# =========================================================================== recording conventions


class SpyOptimizer(DualTrackOptimizer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.starts: List[str] = []
        self.completions: List[Tuple[str, str, Dict[str, Any]]] = []
        self._spy_lock = threading.Lock()

    def record_request_start(self, request_id: str, query: str, context: Optional[Dict] = None) -> None:
        with self._spy_lock:
            self.starts.append(request_id)
        super().record_request_start(request_id, query, context)

    def record_request_completion(self, request_id: str, processing_path: str, result: Dict[str, Any],
                                  success: bool = True, error_type: Optional[str] = None) -> None:
        with self._spy_lock:
            self.completions.append((request_id, processing_path, dict(result)))
        super().record_request_completion(request_id, processing_path, result, success, error_type)


def test_request_ids_and_result_keys_follow_the_conventions(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path, Routing(local_bias=1.0, parallel_threshold=0.5), cls=SpyOptimizer)
    local = FakeBackend("local", quality=0.9, tokens_out=40)
    api = FakeBackend("api", latency=SLOW, quality=0.9)
    router = routers(opt, local, api, policy=RoutingPolicy(opt, floor=0.0))

    router.route("q", {"complexity": 0.9}, request_id="par")
    assert router.drain(5)
    recorded = {rid: (path, result) for rid, path, result in opt.completions}
    assert sorted(opt.starts) == ["par", "par/api", "par/local"]
    assert recorded["par/local"][0] == "local" and recorded["par/local"][1]["outcome"] == "success"
    assert recorded["par/local"][1]["tokens_out"] == 40 and recorded["par/local"][1]["quality_score"] == 0.9
    assert recorded["par/api"][0] == "api" and recorded["par/api"][1]["outcome"] == "cancelled"
    assert recorded["par"][0] == "parallel"
    assert recorded["par"][1] == {"outcome": "success", "quality_score": 0.9}  # no tokens, no cost

    opt.starts.clear()
    opt.completions.clear()
    local.set(error_rate=1.0)
    api.set(latency=0.0)
    router.route("q", {"complexity": 0.1}, request_id="one")
    assert opt.starts == ["one", "one/fallback"]
    assert [(rid, path, r["outcome"]) for rid, path, r in opt.completions] == [
        ("one", "local", "error"), ("one/fallback", "api", "success")]


def test_counters_equal_the_number_of_calls_under_concurrency(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path, Routing(local_bias=0.6, parallel_threshold=0.7),
                         timeouts={"local": 0.3, "api": 0.3, "parallel": 0.3})
    local = FakeBackend("local", latency=0.002, jitter=0.5, error_rate=0.1, quality=0.8, quality_jitter=0.2,
                        rng=random.Random(1))
    api = FakeBackend("api", latency=0.004, jitter=0.5, error_rate=0.1, error_kind="unavailable", quality=0.9,
                      rng=random.Random(2))
    router = routers(opt, local, api, rng=random.Random(5), max_workers=8)
    rng = random.Random(9)
    contexts = [{"complexity": rng.random()} for _ in range(400)]
    results: List[RouterResult] = []
    lock = threading.Lock()

    def worker(chunk: List[Dict[str, Any]]) -> None:
        for context in chunk:
            result = router.route("q", context)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=worker, args=(contexts[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 400
    assert router.drain(5)
    # The calls the router made, from the results: one per planned track, one
    # more for a fallback, both tracks for a parallel request.
    made = {"local": 0, "api": 0}
    for r in results:
        for track in r.plan.tracks:
            made[track] += 1
        if r.fell_back:
            made[r.plan.fallback] += 1
    assert all_requests(opt, "local") == made["local"]
    assert all_requests(opt, "api") == made["api"]
    # A preempted leg may be cancelled before its backend was even called.
    assert local.calls <= made["local"] and api.calls <= made["api"]
    assert all_requests(opt, "parallel") == sum(1 for r in results if r.path == "parallel")
    assert opt.registry.get_sample_value("dualtrack_requests_in_flight") == 0
    assert opt.registry.get_sample_value("dualtrack_completions_without_start_total") == 0
    assert (opt.registry.get_sample_value("dualtrack_optimizer_errors_total",
                                          {"component": "record_request_completion"}) or 0) == 0


# =========================================================================== robustness


class BrokenOptimizer:
    """An optimizer whose every call fails."""

    config = OptimizationConfig(enable_resource_monitoring=False)

    def get_optimization_recommendations(self, query: str, context: Any = None) -> Dict[str, Any]:
        raise RuntimeError("recommendations down")

    def record_request_start(self, *args: Any) -> None:
        raise RuntimeError("telemetry down")

    def record_request_completion(self, *args: Any) -> None:
        raise RuntimeError("telemetry down")


def test_telemetry_failures_never_break_a_request(routers) -> None:
    router = routers(BrokenOptimizer(), FakeBackend("local"), FakeBackend("api"), rng=random.Random(1))
    results = [router.route("q") for _ in range(50)]
    assert all(r.ok for r in results)
    assert {r.track_used for r in results} == {"local", "api"}  # safe defaults: a 50/50 split
    assert router.drain(5)


def test_backend_track_mismatch_is_rejected(tmp_path: Path) -> None:
    opt = make_optimizer(tmp_path, Routing())
    with pytest.raises(ValueError, match="swapped"):
        DualTrackRouter(opt, FakeBackend("api"), FakeBackend("local"))
    with pytest.raises(ValueError, match="max_workers"):
        DualTrackRouter(opt, FakeBackend("local"), FakeBackend("api"), max_workers=0)


def test_closed_router_refuses_queries(tmp_path: Path) -> None:
    opt = make_optimizer(tmp_path, Routing())
    with DualTrackRouter(opt, FakeBackend("local"), FakeBackend("api")) as router:
        assert router.route("q").ok
    with pytest.raises(RuntimeError, match="closed"):
        router.route("q")
    router.close()  # idempotent


def test_chat_messages_are_passed_through(tmp_path: Path, routers) -> None:
    seen: List[Any] = []

    def fn(prompt: Any) -> Completion:
        seen.append(prompt)
        return Completion("ok", 1, 1, 0.9)

    opt = make_optimizer(tmp_path, Routing(local_bias=1.0, **NEVER_PARALLEL))
    router = routers(opt, CallableBackend(fn, "local", "m"), FakeBackend("api"),
                     policy=RoutingPolicy(opt, floor=0.0))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert router.route(messages).text == "ok"
    assert seen == [messages]
