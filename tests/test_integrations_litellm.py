"""dualtrack.integrations.litellm against a real litellm.Router whose deployments answer with
``mock_response``: no network (every socket is held to loopback), LiteLLM's bundled price map."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

# Before litellm is imported: otherwise it fetches its price map from GitHub.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# `make test` installs the litellm extra: a missing litellm is a failure here, not a skip.
import litellm  # noqa: E402
from litellm import Router  # noqa: E402
from litellm.router import Deployment, LiteLLM_Params  # noqa: E402
from litellm.router_api import ChangeSet  # noqa: E402

from dualtrack import (  # noqa: E402
    DualTrackOptimizer,
    OptimizationConfig,
    Preferences,
    ResourceConstraints,
    Routing,
)
from dualtrack.integrations.litellm import (  # noqa: E402
    TRACK_KEY,
    DualTrackLiteLLM,
    deployment_track,
    infer_track,
    instrument,
    is_loopback,
    outcome_of,
)
from dualtrack.preferences import write_preferences  # noqa: E402
from dualtrack.router.hedging import HedgePolicy  # noqa: E402
from dualtrack.router.policy import RoutingPolicy  # noqa: E402
from dualtrack.vocabulary import PARALLEL_NEVER  # noqa: E402
from support.bench_scripts import bench_script  # noqa: E402
from support.fakehttp import FakeHTTPServer  # noqa: E402

#: How long a test waits for LiteLLM's callbacks to record every call: met at once on a quiet
#: machine, generous for a loaded one (the wait ends as soon as the records are in).
DRAIN_SECONDS = 30.0

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
OPENAI_ANSWER = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": "served here"}}],
                 "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


# --------------------------------------------------------------------------- no network


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection or name lookup beyond this machine fails the test that makes it."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not ipaddress.ip_address(address[0]).is_loopback:
            raise AssertionError(f"a test tried to reach {address!r}")
        return real_connect(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (None, "localhost") and not is_loopback(f"//{host}"):
            raise AssertionError(f"a test tried to resolve {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


# --------------------------------------------------------------------------- helpers


def write_prefs(path: Path, *, local_bias: float, parallel_threshold: float = PARALLEL_NEVER,
                timeouts: Optional[Dict[str, float]] = None) -> None:
    now = time.time()
    prefs = Preferences(generated_at=now, valid_until=now + 3600, strategy="test", source="static",
                        routing=Routing(local_bias=local_bias, parallel_threshold=parallel_threshold),
                        timeouts_seconds=dict(timeouts or {"local": 20.0, "api": 20.0, "parallel": 20.0}))
    write_preferences(path, prefs)


def force(optimizer: DualTrackOptimizer, path: Path, **prefs: Any) -> None:
    """Write preferences and make the optimizer read them now."""
    write_prefs(path, **prefs)
    optimizer.adapt_now()


Record = Tuple[str, str, Dict[str, Any], bool, Optional[str]]


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.prefs = tmp_path / "preferences.json"
        write_prefs(self.prefs, local_bias=1.0)
        # A sync call's completion is recorded on LiteLLM's logging threads a little after the call
        # returns; a slow first call can leave a few counted in flight, and the default concurrency
        # limit (4) would then steer calls away from local. These tests are about the preferences.
        self.optimizer = DualTrackOptimizer(OptimizationConfig(
            preferences_file=str(self.prefs), enable_resource_monitoring=False,
            constraints=ResourceConstraints(max_concurrent_requests=1000)))
        self.records: List[Record] = []
        real = self.optimizer.record_request_completion

        def record(rid: str, path: str, result: Dict[str, Any], success: bool = True,
                   error_type: Optional[str] = None) -> None:
            self.records.append((rid, path, dict(result), success, error_type))
            real(rid, path, result, success, error_type)

        self.optimizer.record_request_completion = record  # type: ignore[method-assign]
        self.handles: List[DualTrackLiteLLM] = []

    def instrument(self, router: Any, **options: Any) -> DualTrackLiteLLM:
        options.setdefault("policy", RoutingPolicy(self.optimizer, floor=0.0))
        handle = instrument(router, self.optimizer, **options)
        self.handles.append(handle)
        return handle

    def value(self, name: str, **labels: str) -> float:
        return self.optimizer.registry.get_sample_value(name, labels) or 0.0

    def calls(self, path: str, outcome: str = "success") -> float:
        return self.value("dualtrack_requests_total", path=path, query_class="short", outcome=outcome)

    def drain(self) -> None:
        for handle in self.handles:
            assert handle.drain(DRAIN_SECONDS), "a LiteLLM call was never recorded"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    yield s
    for handle in s.handles:
        handle.close()


def chat_group(local: Any = "local answer", api: Any = "api answer", **local_params: Any) -> List[Dict[str, Any]]:
    """A model group ``chat`` with one local (inferred from ollama/) and one API deployment."""
    return [
        {"model_name": "chat", "litellm_params": {"model": "ollama/llama3.1:8b", "mock_response": local,
                                                  **local_params}},
        {"model_name": "chat", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-test",
                                                  "mock_response": api}},
    ]


def answer(response: Any) -> str:
    return response.choices[0].message.content


# --------------------------------------------------------------------------- routing


def test_forced_preferences_route_every_sync_and_async_call(setup: Setup) -> None:
    router = Router(model_list=chat_group())
    setup.instrument(router)

    async def async_calls(n: int) -> List[str]:
        answers = [answer(await router.acompletion(model="chat", messages=MESSAGES)) for _ in range(n)]
        await setup.handles[0].adrain(DRAIN_SECONDS)
        return answers

    assert {answer(router.completion(model="chat", messages=MESSAGES)) for _ in range(6)} == {"local answer"}
    assert set(asyncio.run(async_calls(6))) == {"local answer"}
    setup.drain()
    assert (setup.calls("local"), setup.calls("api")) == (12, 0)

    force(setup.optimizer, setup.prefs, local_bias=0.0)
    assert {answer(router.completion(model="chat", messages=MESSAGES)) for _ in range(6)} == {"api answer"}
    assert set(asyncio.run(async_calls(6))) == {"api answer"}
    setup.drain()
    assert (setup.calls("local"), setup.calls("api")) == (12, 12)
    assert setup.value("dualtrack_requests_in_flight") == 0
    # tokens from usage, cost from LiteLLM's response_cost (gpt-4o-mini is in its bundled price map)
    assert setup.value("dualtrack_tokens_total", path="api", query_class="short", model="openai/gpt-4o-mini",
                       direction="output") > 0
    assert setup.value("dualtrack_cost_dollars_total", path="api", query_class="short",
                       model="openai/gpt-4o-mini") > 0


def test_filter_mode_steers_async_calls_and_records_sync_ones(setup: Setup) -> None:
    router = Router(model_list=chat_group())
    handle = setup.instrument(router, routing="filter")
    force(setup.optimizer, setup.prefs, local_bias=0.0)

    async def calls() -> List[str]:
        answers = [answer(await router.acompletion(model="chat", messages=MESSAGES)) for _ in range(6)]
        await handle.adrain(DRAIN_SECONDS)
        return answers

    assert set(asyncio.run(calls())) == {"api answer"}
    for _ in range(4):  # LiteLLM runs deployment filters on async calls only: recorded, not steered
        router.completion(model="chat", messages=MESSAGES)
    setup.drain()
    assert setup.calls("api") + setup.calls("local") == 10
    assert setup.calls("api") >= 6


def test_a_deployment_added_at_run_time_is_routed_and_recorded(setup: Setup) -> None:
    router = Router(model_list=chat_group()[:1])  # local only: not steered
    setup.instrument(router)
    force(setup.optimizer, setup.prefs, local_bias=0.0)
    assert answer(router.completion(model="chat", messages=MESSAGES)) == "local answer"
    router.apply(ChangeSet(upsert=[Deployment(model_name="chat", litellm_params=LiteLLM_Params(
        model="openai/gpt-4o-mini", api_key="sk-test", mock_response="api answer"))]))
    assert answer(router.completion(model="chat", messages=MESSAGES)) == "api answer"  # now dual-track
    setup.drain()
    assert (setup.calls("local"), setup.calls("api")) == (1, 1)


def test_drain_waits_for_a_record_being_written(setup: Setup) -> None:
    # A sync call's completion is recorded on a LiteLLM logging thread: the call leaves the
    # in-flight table first, then its record is written. drain() must wait for the record,
    # not only for the table (it once returned in between, and a count read right after missed it).
    router = Router(model_list=chat_group())
    setup.instrument(router)
    writing = threading.Event()
    recorded = setup.optimizer.record_request_completion

    def slow(*args: Any) -> None:
        writing.set()
        time.sleep(0.3)  # a record written on a busy machine
        recorded(*args)

    setup.optimizer.record_request_completion = slow  # type: ignore[method-assign]
    assert answer(router.completion(model="chat", messages=MESSAGES)) == "local answer"
    setup.drain()
    assert writing.is_set()
    assert setup.calls("local") == 1


def test_parallel_in_the_routing_hook_takes_one_track_and_is_counted(setup: Setup) -> None:
    router = Router(model_list=chat_group())
    setup.instrument(router)
    force(setup.optimizer, setup.prefs, local_bias=1.0, parallel_threshold=0.0)
    for _ in range(3):
        assert answer(router.completion(model="chat", messages=MESSAGES)) == "local answer"
    setup.drain()
    assert setup.value("dualtrack_litellm_parallel_single_track_total") == 3
    assert setup.calls("local") == 3


def test_parallel_races_both_tracks_and_cancels_the_loser(setup: Setup, fake_http: Any) -> None:
    # The local deployment is a slow OpenAI-compatible server on loopback (inferred local);
    # the API deployment answers after 0.3 s. The race returns the API answer and cancels the local call.
    fake_http.respond(200, OPENAI_ANSWER, delay=5)
    router = Router(model_list=[
        {"model_name": "chat", "litellm_params": {"model": "openai/local-model", "api_key": "none",
                                                  "api_base": fake_http.url + "/v1"}},
        {"model_name": "chat", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-test",
                                                  "mock_response": "api answer", "mock_delay": 0.3},
         "model_info": {"dualtrack_track": "api"}},
    ])
    handle = setup.instrument(router)
    force(setup.optimizer, setup.prefs, local_bias=1.0, parallel_threshold=0.0)

    async def race() -> str:
        started = time.monotonic()
        text = answer(await handle.acompletion(model="chat", messages=MESSAGES))
        assert time.monotonic() - started < 3, "the race waited for the slow track"
        assert await handle.adrain(DRAIN_SECONDS)
        return text

    assert asyncio.run(race()) == "api answer"
    outcomes = {(path, result["outcome"]) for _, path, result, _, _ in setup.records}
    assert outcomes == {("api", "success"), ("local", "cancelled"), ("parallel", "success")}
    assert len(setup.records) == 3
    assert setup.calls("parallel") == 1
    assert len(fake_http.requests) == 1  # the local leg was really sent before it was cancelled


def test_api_calls_in_flight_leave_local_open_under_the_concurrency_limit(tmp_path: Path, fake_http: Any) -> None:
    # The recorder names each call's track at its start: three slow API calls in flight are three
    # calls in flight, but none on this machine, so the concurrency override (limit 2) stays off.
    # (The API is a slow server on loopback: a mock_response call is started only once answered.)
    prefs = tmp_path / "preferences.json"
    write_prefs(prefs, local_bias=0.0)
    optimizer = DualTrackOptimizer(OptimizationConfig(
        preferences_file=str(prefs), enable_resource_monitoring=False,
        constraints=ResourceConstraints(max_concurrent_requests=2)))
    fake_http.respond(200, OPENAI_ANSWER, delay=0.5)
    router = Router(model_list=[
        chat_group()[0],
        {"model_name": "chat", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-test",
                                                  "api_base": fake_http.url + "/v1"},
         "model_info": {"dualtrack_track": "api"}},
    ])
    handle = instrument(router, optimizer, policy=RoutingPolicy(optimizer, floor=0.0))
    try:
        async def calls() -> List[str]:
            tasks = [asyncio.ensure_future(router.acompletion(model="chat", messages=MESSAGES)) for _ in range(3)]
            deadline = time.monotonic() + 10
            while optimizer.in_flight_count() < 3:
                assert time.monotonic() < deadline, "the three API calls never showed in flight"
                await asyncio.sleep(0.01)
            assert optimizer.recorder.machine_calls_in_flight() == 0
            assert optimizer.get_optimization_recommendations("q")["overrides"] == []
            answers = [answer(r) for r in await asyncio.gather(*tasks)]
            assert await handle.adrain(DRAIN_SECONDS)
            return answers

        assert len(asyncio.run(calls())) == 3
        assert optimizer.in_flight_count() == 0 and len(fake_http.requests) == 3
    finally:
        handle.close()


def test_a_retry_goes_to_the_other_track_and_is_counted(setup: Setup) -> None:
    router = Router(model_list=chat_group(local="litellm.InternalServerError"), num_retries=1, retry_after=0)
    setup.instrument(router)
    assert answer(router.completion(model="chat", messages=MESSAGES)) == "api answer"
    setup.drain()
    assert [(r[1], r[2]["outcome"], r[4]) for r in setup.records] == [("local", "error", "unavailable"),
                                                                     ("api", "success", None)]
    assert setup.value("dualtrack_litellm_retries_total", path="api") == 1


def test_fallbacks_are_counted(setup: Setup) -> None:
    router = Router(model_list=[
        {"model_name": "chat", "litellm_params": {"model": "ollama/llama3.1:8b",
                                                  "mock_response": "litellm.InternalServerError"}},
        {"model_name": "backup", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-test",
                                                    "mock_response": "backup answer"}},
    ], num_retries=0, fallbacks=[{"chat": ["backup"]}])
    setup.instrument(router)
    assert answer(router.completion(model="chat", messages=MESSAGES)) == "backup answer"
    setup.drain()
    assert (setup.calls("local", "error"), setup.calls("api")) == (1, 1)
    assert setup.value("dualtrack_litellm_fallbacks_total", path="api") == 1
    assert setup.value("dualtrack_litellm_retries_total", path="api") == 0


def test_failures_and_rate_limits_are_recorded_with_their_outcome(setup: Setup) -> None:
    router = Router(model_list=[
        {"model_name": "limited", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-test",
                                                     "mock_response": "litellm.RateLimitError"}},
        {"model_name": "down", "litellm_params": {"model": "ollama/llama3.1:8b",
                                                  "mock_response": "litellm.InternalServerError"}},
        {"model_name": "refused", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-test",
                                                     "mock_response": "Exception: content_filter_policy"}},
    ], num_retries=0)
    setup.instrument(router)
    expected = {"limited": litellm.RateLimitError, "down": litellm.InternalServerError,
                "refused": litellm.BadRequestError}
    for group, error in expected.items():
        with pytest.raises(error):
            router.completion(model=group, messages=MESSAGES)
    setup.drain()
    assert sorted((r[1], r[2]["outcome"], r[3], r[4]) for r in setup.records) == [
        ("api", "error", False, "error"), ("api", "error", False, "rate_limited"),
        ("local", "error", False, "unavailable")]
    assert (setup.calls("api", "error"), setup.calls("local", "error")) == (2, 1)
    errors = setup.optimizer.get_optimization_status()["metrics"]["by_path"]["api"]["error_types"]
    assert errors == {"rate_limited": 1, "error": 1}


def test_timeouts_come_from_the_recommendation(setup: Setup) -> None:
    # mock_timeout sleeps for the call's timeout, then raises LiteLLM's Timeout.
    router = Router(model_list=chat_group(mock_timeout=True), num_retries=0, timeout=5)
    setup.instrument(router, policy=RoutingPolicy(setup.optimizer, floor=0.0, fallback=False))
    force(setup.optimizer, setup.prefs, local_bias=1.0, timeouts={"local": 0.3, "api": 20.0, "parallel": 20.0})
    for call in (lambda: router.completion(model="chat", messages=MESSAGES),
                 lambda: asyncio.run(router.acompletion(model="chat", messages=MESSAGES))):
        started = time.monotonic()
        with pytest.raises(litellm.Timeout):
            call()
        assert 0.25 <= time.monotonic() - started < 3
    started = time.monotonic()
    with pytest.raises(litellm.Timeout):  # the caller's own timeout wins
        router.completion(model="chat", messages=MESSAGES, timeout=0.05)
    assert time.monotonic() - started < 0.25
    # the deployment filter sets it in LiteLLM's pre-call deployment hook
    filtered = Router(model_list=chat_group(mock_timeout=True), num_retries=0, timeout=5)
    setup.instrument(filtered, routing="filter", policy=RoutingPolicy(setup.optimizer, floor=0.0, fallback=False))
    started = time.monotonic()
    with pytest.raises(litellm.Timeout):
        asyncio.run(filtered.acompletion(model="chat", messages=MESSAGES))
    assert 0.25 <= time.monotonic() - started < 3
    setup.drain()
    assert [(r[1], r[2]["outcome"]) for r in setup.records] == [("local", "timeout")] * 4


def test_a_stream_records_its_time_to_first_token(setup: Setup) -> None:
    router = Router(model_list=chat_group())
    handle = setup.instrument(router)
    chunks = list(router.completion(model="chat", messages=MESSAGES, stream=True))
    assert chunks

    async def stream() -> None:
        response = await router.acompletion(model="chat", messages=MESSAGES, stream=True)
        async for _ in response:
            pass
        await handle.adrain(DRAIN_SECONDS)

    asyncio.run(stream())
    setup.drain()
    assert setup.calls("local") == 2
    assert setup.value("dualtrack_litellm_time_to_first_token_seconds_count", path="local",
                       query_class="short") == 2


def test_a_stream_records_its_time_to_first_token_in_the_common_histogram(setup: Setup) -> None:
    # The local deployment's first chunk comes after mock_delay; the preferences send every call there.
    router = Router(model_list=chat_group(mock_delay=0.05))
    handle = setup.instrument(router)
    assert list(router.completion(model="chat", messages=MESSAGES, stream=True))

    async def stream() -> None:
        async for _ in await router.acompletion(model="chat", messages=MESSAGES, stream=True):
            pass
        assert await handle.adrain(DRAIN_SECONDS)

    asyncio.run(stream())
    setup.drain()
    assert setup.calls("local") == 2

    def common(suffix: str, path: str) -> float:
        return setup.value(f"dualtrack_time_to_first_token_seconds_{suffix}", path=path, query_class="short")

    assert common("count", "local") == 2
    assert common("count", "api") == 0
    assert 2 * 0.05 <= common("sum", "local") < 10
    # the same figure as the integration's own histogram, and only for streams
    assert common("sum", "local") == pytest.approx(setup.value(
        "dualtrack_litellm_time_to_first_token_seconds_sum", path="local", query_class="short"))
    [first, *_] = [r for r in setup.records if r[1] == "local"]
    assert first[2]["time_to_first_token_ms"] > 0
    router.completion(model="chat", messages=MESSAGES)
    setup.drain()
    assert setup.calls("local") == 3
    assert common("count", "local") == 2


# --------------------------------------------------------------------------- hedging


def slow_local_group(url: str) -> List[Dict[str, Any]]:
    """``chat``: a local deployment on a scripted loopback server (inferred local), a mock API one."""
    return [
        {"model_name": "chat", "litellm_params": {"model": "openai/local-model", "api_key": "none",
                                                  "api_base": url + "/v1"}},
        {"model_name": "chat", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-test",
                                                  "mock_response": "api answer"},
         "model_info": {"dualtrack_track": "api"}},
    ]


def hedges(setup: Setup) -> Dict[str, float]:
    return {o: setup.value("dualtrack_hedges_total", outcome=o) for o in ("fired", "won", "wasted", "throttled")}


def timed_calls(handle: DualTrackLiteLLM, n: int) -> List[Tuple[str, float]]:
    """``n`` hedgeable calls one after another: (answer, seconds) each; then every record written."""
    async def calls() -> List[Tuple[str, float]]:
        results = []
        for _ in range(n):
            started = time.monotonic()
            text = answer(await handle.acompletion(model="chat", messages=MESSAGES))
            results.append((text, time.monotonic() - started))
        assert await handle.adrain(DRAIN_SECONDS)
        return results
    return asyncio.run(calls())


def outcomes(setup: Setup) -> List[Tuple[str, str]]:
    return sorted((path, result["outcome"]) for _, path, result, _, _ in setup.records)


def warm_up(setup: Setup, router: Any, handle: DualTrackLiteLLM, *tracks: str) -> None:
    """One call per track through the Router itself (never hedged, no budget spent): LiteLLM builds a
    deployment's client on its first call, which can take longer than a hedge delay. Then no records."""
    async def calls() -> None:
        for track in tracks:
            with contextlib.suppress(Exception):
                await router.acompletion(model="chat", messages=MESSAGES, metadata={TRACK_KEY: track})
        assert await handle.adrain(DRAIN_SECONDS)
    asyncio.run(calls())
    setup.records.clear()


def test_a_slow_call_is_hedged_after_the_delay_and_the_loser_cancelled(setup: Setup, fake_http: Any) -> None:
    # Every call is planned local (the preferences). The local server answers the first call at once
    # (a warm-up: LiteLLM's first call to a deployment builds its client) and holds the next 5 s.
    fake_http.respond(200, OPENAI_ANSWER)
    fake_http.respond(200, OPENAI_ANSWER, delay=5)
    router = Router(model_list=slow_local_group(fake_http.url))
    handle = setup.instrument(router, hedge=HedgePolicy(delay=0.3))
    warm_up(setup, router, handle, "local", "api")
    fake_http.requests.clear()
    [(text, seconds)] = timed_calls(handle, 1)
    assert text == "api answer"
    assert 0.3 <= seconds < 3, "the hedge started before its delay, or the slow call was waited for"
    assert len(fake_http.requests) == 1  # the first call really went to the local server
    assert outcomes(setup) == [("api", "success"), ("local", "cancelled")]
    assert len({rid for rid, *_ in setup.records}) == 2  # each call recorded once, under its own id
    assert hedges(setup) == {"fired": 1, "won": 1, "wasted": 0, "throttled": 0}
    assert setup.value("dualtrack_requests_in_flight") == 0


def test_a_fast_answer_is_not_hedged(setup: Setup) -> None:
    handle = setup.instrument(Router(model_list=chat_group()), hedge=HedgePolicy(delay=0.5))
    assert [text for text, _ in timed_calls(handle, 5)] == ["local answer"] * 5
    assert outcomes(setup) == [("local", "success")] * 5
    assert hedges(setup) == {"fired": 0, "won": 0, "wasted": 0, "throttled": 0}
    assert setup.calls("api") == 0


def test_the_budget_caps_hedges(setup: Setup, fake_http: Any) -> None:
    # No credit earned (budget 0), one hedge of burst: the first slow call is hedged, the next two wait.
    fake_http.respond(200, OPENAI_ANSWER)  # the warm-up
    fake_http.respond(200, OPENAI_ANSWER, delay=0.4)
    router = Router(model_list=slow_local_group(fake_http.url))
    handle = setup.instrument(router, hedge=HedgePolicy(delay=0.1, budget=0.0, burst=1.0))
    warm_up(setup, router, handle, "local", "api")
    results = timed_calls(handle, 3)
    assert [text for text, _ in results] == ["api answer", "served here", "served here"]
    assert all(seconds >= 0.4 for _, seconds in results[1:])
    assert hedges(setup) == {"fired": 1, "won": 1, "wasted": 0, "throttled": 2}
    assert outcomes(setup) == [("api", "success"), ("local", "cancelled"), ("local", "success"), ("local", "success")]
    assert len({rid for rid, *_ in setup.records}) == 4


def test_the_hedge_delay_follows_the_track_and_waits_for_data(setup: Setup, fake_http: Any) -> None:
    # Five quick local answers set the local p95; the sixth call is slow and is hedged at about that
    # p95 (at least min_delay), far before its 5 s. With fewer samples than min_samples: no hedging.
    for _ in range(5):
        fake_http.respond(200, OPENAI_ANSWER)
    fake_http.respond(200, OPENAI_ANSWER, delay=5)
    handle = setup.instrument(Router(model_list=slow_local_group(fake_http.url)),
                              hedge=HedgePolicy(min_samples=6, min_delay=0.1))
    assert [text for text, _ in timed_calls(handle, 5)] == ["served here"] * 5
    assert hedges(setup)["fired"] == 0
    times = handle.recorder.first_token_times
    assert times is not None and len(times["local"]) == 5 and len(times["api"]) == 0
    fake_http.requests.clear()
    handle.recorder.first_token_times["local"].add(0.001)  # the sixth sample: now there is data
    [(text, seconds)] = timed_calls(handle, 1)
    assert text == "api answer"
    assert 0.1 <= seconds < 3
    assert hedges(setup) == {"fired": 1, "won": 1, "wasted": 0, "throttled": 0}


def test_a_hedged_request_cancelled_by_its_caller_cancels_both_calls(setup: Setup, fake_http: Any) -> None:
    # Both tracks on scripted loopback servers (the API one tagged): each answers a warm-up call at once
    # and holds the next 5 s, so both calls are under way when the caller gives up.
    fake_http.respond(200, OPENAI_ANSWER)
    fake_http.respond(200, OPENAI_ANSWER, delay=5)
    with FakeHTTPServer() as api_server:
        api_server.respond(200, OPENAI_ANSWER)
        api_server.respond(200, OPENAI_ANSWER, delay=5)
        router = Router(model_list=[
            slow_local_group(fake_http.url)[0],
            {"model_name": "chat", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-test",
                                                      "api_base": api_server.url + "/v1"},
             "model_info": {"dualtrack_track": "api"}},
        ])
        handle = setup.instrument(router, hedge=HedgePolicy(delay=0.1))
        warm_up(setup, router, handle, "local", "api")
        api_server.requests.clear()

        async def cancelled() -> None:
            task = asyncio.ensure_future(handle.acompletion(model="chat", messages=MESSAGES))
            deadline = time.monotonic() + 5
            while not api_server.requests:  # the hedge has reached the API server: both calls are out
                assert time.monotonic() < deadline, "the hedge never started"
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await handle.adrain(DRAIN_SECONDS)

        started = time.monotonic()
        asyncio.run(cancelled())
        assert time.monotonic() - started < 3
    assert outcomes(setup) == [("api", "cancelled"), ("local", "cancelled")]
    assert len({rid for rid, *_ in setup.records}) == 2
    assert hedges(setup)["fired"] == 1
    assert setup.value("dualtrack_requests_in_flight") == 0


def test_a_fallback_is_not_hedged(setup: Setup) -> None:
    # The local call fails at once; LiteLLM's retry goes to the API track, which is slow: that is the
    # fallback, not a slow first call, and it gets no hedge (the hedge would be on its own track).
    local, api = chat_group(local="litellm.InternalServerError", api="api answer")
    api = {**api, "litellm_params": {**api["litellm_params"], "mock_delay": 0.4}}
    router = Router(model_list=[local, api], num_retries=1, retry_after=0)
    handle = setup.instrument(router, hedge=HedgePolicy(delay=0.2))
    warm_up(setup, router, handle, "local", "api")
    [(text, seconds)] = timed_calls(handle, 1)
    assert (text, seconds >= 0.4) == ("api answer", True)
    assert outcomes(setup) == [("api", "success"), ("local", "error")]
    assert hedges(setup) == {"fired": 0, "won": 0, "wasted": 0, "throttled": 0}


def test_hedging_needs_routing(setup: Setup) -> None:
    with pytest.raises(ValueError, match="hedge: needs a Router and routing"):
        instrument(Router(model_list=chat_group()), setup.optimizer, routing=None, hedge=HedgePolicy())
    with pytest.raises(ValueError, match="hedge: expected a dualtrack.router.hedging.HedgePolicy"):
        instrument(Router(model_list=chat_group()), setup.optimizer, hedge=0.1)  # type: ignore[arg-type]


def test_litellm_completion_without_a_router_is_recorded(setup: Setup, fake_http: Any) -> None:
    setup.instrument(None)
    litellm.completion(model="ollama/llama3.1:8b", messages=MESSAGES, mock_response="a")
    litellm.completion(model="openai/gpt-4o-mini", api_key="sk-test", messages=MESSAGES, mock_response="b")
    # an OpenAI-compatible server on loopback is local (a mock would not carry its api_base)
    fake_http.respond(200, OPENAI_ANSWER)
    litellm.completion(model="openai/served-here", api_key="none", api_base=fake_http.url + "/v1",
                       messages=MESSAGES)
    setup.drain()
    assert (setup.calls("local"), setup.calls("api")) == (2, 1)


def test_an_unknown_model_fails_as_it_does_without_dualtrack(setup: Setup) -> None:
    router = Router(model_list=chat_group(), num_retries=0)
    setup.instrument(router)
    with pytest.raises(litellm.BadRequestError):
        router.completion(model="no-such-group", messages=MESSAGES)


def test_one_recorder_per_optimizer_and_close_stops_recording(setup: Setup) -> None:
    first, second = Router(model_list=chat_group()), Router(model_list=chat_group())
    one, two = setup.instrument(first), setup.instrument(second)
    assert one.recorder is two.recorder
    first.completion(model="chat", messages=MESSAGES)
    second.completion(model="chat", messages=MESSAGES)
    setup.drain()
    assert setup.calls("local") == 2  # each call once, not once per handle
    one.close()
    two.close()
    assert one.recorder not in litellm.callbacks
    first.completion(model="chat", messages=MESSAGES)
    time.sleep(0.2)
    assert setup.calls("local") == 2


# --------------------------------------------------------------------------- tracks and outcomes


def test_track_inference() -> None:
    assert infer_track("ollama/llama3") == "local"
    assert infer_track("ollama_chat/llama3") == "local"
    assert infer_track("hosted_vllm/qwen") == "local"
    assert infer_track("llamafile/x") == "local"
    assert infer_track("lm_studio/x") == "local"
    assert infer_track("openai/gpt-4o-mini") == "api"
    assert infer_track("openai/x", api_base="http://127.0.0.1:8080/v1") == "local"
    assert infer_track("openai/x", api_base="http://localhost:8080") == "local"
    assert infer_track("openai/x", api_base="http://[::1]:8080") == "local"
    assert infer_track("openai/x", api_base="http://10.0.0.7:8000") == "api"
    assert infer_track("gpt-4o-mini", provider="ollama") == "local"
    assert deployment_track({"litellm_params": {"model": "ollama/x"}, "model_info": {"dualtrack_track": "api"}}) \
        == "api"
    with pytest.raises(ValueError, match="dualtrack_track must be 'local' or 'api'"):
        deployment_track({"model_name": "chat", "litellm_params": {"model": "x"},
                          "model_info": {"dualtrack_track": "remote"}})


def test_a_bad_tag_is_refused_at_instrument(setup: Setup) -> None:
    router = Router(model_list=[{"model_name": "chat", "litellm_params": {"model": "openai/x", "api_key": "k"},
                                 "model_info": {"dualtrack_track": "cloud"}}])
    with pytest.raises(ValueError, match="'chat'"):
        instrument(router, setup.optimizer)
    assert not any(type(cb).__name__ == "DualTrackRecorder" for cb in litellm.callbacks)


def test_outcome_mapping() -> None:
    timeout = litellm.Timeout(message="t", model="m", llm_provider="openai")
    limited = litellm.RateLimitError(message="r", model="m", llm_provider="openai")
    assert outcome_of(timeout) == ("timeout", "timeout")
    assert outcome_of(limited) == ("error", "rate_limited")
    assert outcome_of(ValueError("x")) == ("error", "error")


# --------------------------------------------------------------------------- the benchmark


def test_the_overhead_benchmark_runs(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "litellm_overhead.py"), "--quick", "--mode",
                           "sync", "--rounds", "2", "--batch", "5", "--replay-calls", "50", "--json", str(out)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "of LiteLLM's routing overhead" in proc.stdout
    figures = json.loads(out.read_text())
    assert figures["machine"]["litellm"] == version("litellm")
    sync = figures["timing"]["sync"]
    assert set(sync["wall"]["median_us"]) == {"bare", "router", "noop_logger", "dualtrack", "dualtrack_record_only"}
    assert sync["dualtrack_recorded_calls"] > 0 and sync["hook_cpu_us"]["dualtrack"] > 0
    # The replay of the three hooks on a captured call: every replayed call started and recorded.
    replayed = figures["replay"]
    assert replayed["calls"] == 50 and len(replayed["us_per_call"]) == replayed["repeats"] == 5
    assert replayed["all_recorded"] and replayed["us_per_call_median"] > 0
    assert "replayed on one routed call's real arguments" in proc.stdout


def test_the_overhead_benchmark_waits_for_litellms_logging_before_a_batch_ends() -> None:
    # Every variant's batch must include its own logging work (a sync call's on LiteLLM's logging
    # threads, an async call's on the event loop), or it spills into the next variant's batch.
    mod = bench_script("litellm_overhead")
    done = threading.Event()
    mod.executor.submit(lambda: (time.sleep(0.2), done.set()))
    assert mod._logging_backlog() >= 1
    mod.settle()
    assert done.is_set() and mod._logging_backlog() == 0

    finished: List[str] = []

    async def logging_task() -> None:
        await asyncio.sleep(0.1)
        finished.append("logged")

    async def batch() -> None:
        asyncio.get_running_loop().create_task(logging_task())
        await mod.settle_loop()
        assert finished == ["logged"]

    asyncio.run(batch())


# --------------------------------------------------------------------------- without the extra


def test_import_without_litellm_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith("dualtrack.integrations.litellm")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "litellm", None)  # what an uninstalled package looks like to import
    with pytest.raises(ImportError) as info:
        importlib.import_module("dualtrack.integrations.litellm")
    message = str(info.value)
    assert message == "dualtrack.integrations.litellm needs litellm: pip install 'dualtrack[litellm]'"
    assert "\n" not in message


def test_dualtrack_works_without_the_extras() -> None:
    code = ("import sys; sys.modules['litellm'] = None; sys.modules['langgraph'] = None\n"
            "import dualtrack, dualtrack.integrations, dualtrack.router.router\n"
            "from dualtrack import DualTrackOptimizer\n"
            "DualTrackOptimizer().get_optimization_recommendations('hi')\n"
            "for extra in ('litellm', 'langgraph'):\n"
            "    try:\n"
            "        __import__('dualtrack.integrations.' + extra)\n"
            "    except ImportError as err:\n"
            "        print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.splitlines() == ["dualtrack.integrations.litellm needs litellm: pip install 'dualtrack[litellm]'",
                                       "dualtrack.integrations.langgraph needs langgraph: "
                                       "pip install 'dualtrack[langgraph]'"]
