"""Hedged requests, first-token deadlines and time to first token, with fake
backends in real time: the hedge fires after its delay and not before, the
budget caps it, a fast failure falls back instead, the loser is cancelled
and recorded as such, a missed first token falls back, and the metrics say
what happened."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from dualtrack import DualTrackOptimizer, OptimizationConfig, ResourceConstraints
from dualtrack.preferences import PARALLEL_NEVER, Preferences, Routing, write_preferences
from dualtrack.router.backends import CallableBackend, Completion, FakeBackend
from dualtrack.router.hedging import FirstTokenDeadline, FirstTokenTimes, HedgeBudget, HedgePolicy
from dualtrack.router.policy import RoutingPolicy
from dualtrack.router.router import DualTrackRouter

SLOW = 30.0  # a first token no test waits for: such calls end by cancel or timeout
LOCAL_ONLY = Routing(local_bias=1.0, parallel_threshold=PARALLEL_NEVER)


class Spy(DualTrackOptimizer):
    """Keeps every completion (request id, path, result) the router recorded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.completions: List[Tuple[str, str, Dict[str, Any]]] = []
        self._spy_lock = threading.Lock()

    def record_request_completion(self, request_id: str, processing_path: str, result: Dict[str, Any],
                                  success: bool = True, error_type: Optional[str] = None) -> None:
        with self._spy_lock:
            self.completions.append((request_id, processing_path, dict(result)))
        super().record_request_completion(request_id, processing_path, result, success, error_type)


class Timed(FakeBackend):
    """Remembers when each call started (monotonic), so a test can check when a hedge was sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started_at: List[float] = []

    def generate(self, prompt: Any, *, timeout: float, cancel: threading.Event,
                 first_token: Optional[threading.Event] = None) -> Completion:
        self.started_at.append(time.monotonic())
        return super().generate(prompt, timeout=timeout, cancel=cancel, first_token=first_token)


def make_optimizer(tmp_path: Path, routing: Routing = LOCAL_ONLY, *, timeouts: Optional[Dict[str, float]] = None,
                   **config: Any) -> Spy:
    now = time.time()
    prefs = Preferences(generated_at=now, valid_until=now + 3600, strategy="static", source="static",
                        routing=routing, timeouts_seconds=timeouts or {"local": 10.0, "api": 10.0, "parallel": 10.0})
    path = tmp_path / "preferences.json"
    write_preferences(path, prefs)
    return Spy(OptimizationConfig(preferences_file=str(path), enable_resource_monitoring=False, **config))


@pytest.fixture
def routers():
    made: List[DualTrackRouter] = []

    def make(opt: DualTrackOptimizer, local: Any, api: Any, **kwargs: Any) -> DualTrackRouter:
        # floor 0: a local bias of 1 always plans local, so every test is exact.
        router = DualTrackRouter(opt, local, api, policy=RoutingPolicy(opt, floor=0.0), **kwargs)
        made.append(router)
        return router

    yield make
    for router in made:
        router.close()


def hedges(opt: DualTrackOptimizer, outcome: str) -> float:
    return opt.registry.get_sample_value("dualtrack_hedges_total", {"outcome": outcome}) or 0.0


def requests_total(opt: DualTrackOptimizer, path: str, outcome: str) -> float:
    return opt.registry.get_sample_value("dualtrack_requests_total",
                                         {"path": path, "query_class": "short", "outcome": outcome}) or 0.0


def train(router: DualTrackRouter, n: int) -> None:
    """``n`` answered requests, so the local track has first-token samples."""
    for _ in range(n):
        assert router.route("q").ok
    assert router.drain(5)


# =========================================================================== hedging


def test_the_hedge_fires_after_the_delay_and_not_before(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path)
    local = FakeBackend("local", first_token_latency=SLOW)
    api = Timed("api", quality=0.9)
    router = routers(opt, local, api, hedge=HedgePolicy(delay=0.3))
    started = time.monotonic()
    result = router.route("q", request_id="h")
    assert result.ok and result.hedged and result.track_used == "api" and result.path == "local"
    assert not result.fell_back
    assert len(api.started_at) == 1 and api.started_at[0] - started >= 0.3  # not before the delay
    assert time.monotonic() - started < SLOW / 3  # and not after the whole-answer timeout
    assert hedges(opt, "fired") == hedges(opt, "won") == 1 and hedges(opt, "wasted") == 0

    # A call that answers before the delay is never hedged.
    local.set(first_token_latency=None, latency=0.02)
    result = router.route("q")
    assert result.ok and not result.hedged and result.track_used == "local"
    assert len(api.started_at) == 1 and hedges(opt, "fired") == 1


def test_the_loser_is_cancelled_and_each_call_recorded_once_under_its_track(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path)
    local = FakeBackend("local", first_token_latency=SLOW)
    api = FakeBackend("api", quality=0.9, latency=0.01)
    # budget 1: every request may hedge (the budget is another test)
    router = routers(opt, local, api, hedge=HedgePolicy(delay=0.05, budget=1.0))
    result = router.route("q", request_id="won")
    assert result.ok and result.hedged and result.track_used == "api"
    assert router.drain(5), "the cancelled call never returned"
    assert local.cancelled == 1 and local.completed == 0
    assert sorted((rid, path, r["outcome"]) for rid, path, r in opt.completions) == [
        ("won", "local", "cancelled"), ("won/hedge", "api", "success")]
    assert requests_total(opt, "local", "cancelled") == 1 and requests_total(opt, "api", "success") == 1
    # No record on a path of its own: the request is its two calls.
    assert requests_total(opt, "parallel", "success") == 0

    # The hedge is wasted when the first call answers first: the hedge is the one cancelled.
    opt.completions.clear()
    local.set(first_token_latency=0.2, latency=0.0)
    api.set(latency=SLOW)
    result = router.route("q", request_id="wasted")
    assert result.ok and result.hedged and result.track_used == "local"
    assert router.drain(5)
    assert api.cancelled == 1
    assert sorted((rid, path, r["outcome"]) for rid, path, r in opt.completions) == [
        ("wasted", "local", "success"), ("wasted/hedge", "api", "cancelled")]
    assert (hedges(opt, "fired"), hedges(opt, "won"), hedges(opt, "wasted")) == (2, 1, 1)


def test_no_hedge_on_a_fast_failure_it_falls_back(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path)
    local = FakeBackend("local", error_rate=1.0, error_kind="unavailable")
    api = FakeBackend("api", quality=0.9)
    router = routers(opt, local, api, hedge=HedgePolicy(delay=0.2))
    result = router.route("q", request_id="f")
    assert result.ok and result.fell_back and not result.hedged and result.track_used == "api"
    assert router.drain(5)
    assert [(rid, r["outcome"]) for rid, _, r in opt.completions] == [("f", "error"), ("f/fallback", "success")]
    assert hedges(opt, "fired") == 0 and api.calls == 1


def test_the_budget_caps_the_hedges(tmp_path: Path, routers) -> None:
    # Room for five threads' calls: the concurrency override would otherwise
    # (rightly) stop hedging, which is another test.
    opt = make_optimizer(tmp_path, constraints=ResourceConstraints(max_concurrent_requests=100))
    # Every call is slow to its first token, so every request wants a hedge.
    local = FakeBackend("local", first_token_latency=0.1)
    api = FakeBackend("api", quality=0.9)
    router = routers(opt, local, api, hedge=HedgePolicy(delay=0.01, budget=0.1), max_workers=16)
    results = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            result = router.route("q")
            with lock:
                results.append(result)

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 100 and all(r.ok for r in results)
    fired = sum(r.hedged for r in results)
    assert fired == hedges(opt, "fired")
    # burst (1) + 10% of 100; and the budget is used, not just never spent.
    assert 5 <= fired <= 11
    assert hedges(opt, "throttled") >= 100 - 11 - 10  # a few calls may show their first token first
    assert router.drain(5)


def test_the_hedge_delay_is_learnt_from_the_tracks_first_token_times(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path)
    local = FakeBackend("local", first_token_latency=0.02)
    api = Timed("api", quality=0.9)
    policy = HedgePolicy(min_samples=10)
    router = routers(opt, local, api, hedge=policy)
    times = router.first_token_times["local"]
    # Fewer samples than min_samples: no data, no hedge, however slow the call.
    train(router, 9)
    assert policy.delay_seconds(times) is None
    local.set(first_token_latency=0.3)
    assert not router.route("q").hedged and api.calls == 0
    # Now ten samples, mostly 0.02 s: the delay is their p95, and a slow call is hedged.
    local.set(first_token_latency=0.02)
    train(router, 10)
    delay = policy.delay_seconds(times)
    assert delay is not None and 0.02 <= delay < 0.3
    local.set(first_token_latency=SLOW)
    started = time.monotonic()
    result = router.route("q")
    assert result.hedged and result.track_used == "api"
    assert api.started_at[0] - started >= delay
    assert router.drain(5)
    # The cancelled call left a lower bound behind, so slowness is not forgotten.
    assert max(times._samples) >= delay


def test_a_backend_without_first_tokens_is_hedged_on_its_whole_answers(tmp_path: Path, routers) -> None:
    gate = threading.Event()

    def answer(prompt: Any, *, cancel: threading.Event) -> str:
        if gate.is_set():
            cancel.wait(SLOW)  # a stuck call, until cancelled
        return "local answer"

    opt = make_optimizer(tmp_path)
    api = FakeBackend("api", quality=0.9)
    router = routers(opt, CallableBackend(answer, "local", "plain"), api, hedge=HedgePolicy(min_samples=5))
    train(router, 5)
    assert len(router.first_token_times["local"]) == 5
    gate.set()
    result = router.route("q")
    assert result.hedged and result.track_used == "api"


def test_no_hedge_under_an_immediate_override(tmp_path: Path, routers) -> None:
    class Overridden(Spy):
        def get_optimization_recommendations(self, query: str, context: Optional[Dict] = None) -> Dict[str, Any]:
            rec = dict(super().get_optimization_recommendations(query, context))
            rec.update(overrides=["memory"], preferred_path="local")
            return rec

    now = time.time()
    prefs = Preferences(generated_at=now, valid_until=now + 3600, strategy="static", source="static",
                        routing=LOCAL_ONLY)
    write_preferences(tmp_path / "p.json", prefs)
    opt = Overridden(OptimizationConfig(preferences_file=str(tmp_path / "p.json"), enable_resource_monitoring=False))
    api = FakeBackend("api")
    router = routers(opt, FakeBackend("local", first_token_latency=0.2), api, hedge=HedgePolicy(delay=0.01))
    assert not router.route("q").hedged and api.calls == 0


def test_hedge_budget_and_policy_checks() -> None:
    budget = HedgeBudget(0.1, 1.0)
    spent = 0
    for _ in range(100):
        budget.earn()
        spent += budget.spend()
    assert spent == 10  # float sums of 0.1 do not lose a hedge
    with pytest.raises(ValueError, match="budget"):
        HedgePolicy(budget=1.5)
    with pytest.raises(ValueError, match="burst"):
        HedgePolicy(burst=0.5)
    with pytest.raises(ValueError, match="factor"):
        FirstTokenDeadline(factor=0.5)
    times = FirstTokenTimes()
    for value in (float("nan"), -1.0, float("inf")):
        times.add(value)
    assert len(times) == 0


# =========================================================================== first-token deadline


def test_a_missed_first_token_deadline_falls_back(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path)
    local = FakeBackend("local", first_token_latency=0.02)
    api = FakeBackend("api", quality=0.9)
    deadline = FirstTokenDeadline(factor=2.0, floor=0.0, min_samples=5)
    router = routers(opt, local, api, first_token_deadline=deadline)
    train(router, 5)
    limit = deadline.seconds(router.first_token_times["local"])
    assert limit is not None and 0.04 <= limit < 1.0
    local.set(first_token_latency=SLOW)
    started = time.monotonic()
    result = router.route("q", request_id="d")
    elapsed = time.monotonic() - started
    assert result.ok and result.fell_back and result.track_used == "api" and not result.hedged
    assert limit <= elapsed < 5.0  # long before the 10 s whole-answer timeout
    assert router.drain(5)
    assert local.cancelled == 1
    records = {rid: (path, r) for rid, path, r in opt.completions}
    assert records["d"][0] == "local" and records["d"][1]["outcome"] == "timeout"
    assert records["d/fallback"][1]["outcome"] == "success"


def test_the_deadline_waits_for_samples_and_spares_a_call_that_has_started(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path, timeouts={"local": 0.5, "api": 10.0, "parallel": 10.0})
    local = FakeBackend("local", first_token_latency=SLOW)
    router = routers(opt, local, FakeBackend("api"),
                     first_token_deadline=FirstTokenDeadline(floor=0.0, min_samples=3))
    # No samples: only the whole-answer timeout (0.5 s) ends the call.
    started = time.monotonic()
    result = router.route("q")
    assert result.fell_back and time.monotonic() - started >= 0.5
    # A call whose first token came in time is not cut, though it takes longer than the deadline.
    local.set(first_token_latency=0.01, latency=0.0)
    train(router, 3)
    local.set(first_token_latency=0.01, latency=0.3)
    result = router.route("q")
    assert result.ok and not result.fell_back and result.track_used == "local"


# =========================================================================== time to first token


def test_calls_record_their_time_to_first_token(tmp_path: Path, routers) -> None:
    opt = make_optimizer(tmp_path)
    router = routers(opt, FakeBackend("local", first_token_latency=0.03, latency=0.01), FakeBackend("api"))
    train(router, 4)
    labels = {"path": "local", "query_class": "short"}
    get = opt.registry.get_sample_value
    assert get("dualtrack_time_to_first_token_seconds_count", labels) == 4
    assert 4 * 0.03 <= get("dualtrack_time_to_first_token_seconds_sum", labels) < 4 * 1.0
    assert get("dualtrack_time_to_first_token_seconds_bucket", dict(labels, le="0.02")) == 0
    assert get("dualtrack_time_to_first_token_seconds_count", {"path": "api", "query_class": "short"}) is None
    assert all(r["time_to_first_token_ms"] >= 30.0 for _, _, r in opt.completions)
