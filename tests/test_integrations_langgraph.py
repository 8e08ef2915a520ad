"""dualtrack.integrations.langgraph: real LangGraph graphs over fake backends."""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

# `make test` installs the langgraph extra: a missing langgraph is a failure here, not a skip.
from langgraph.graph import END, START, StateGraph  # noqa: E402

from dualtrack import DualTrackOptimizer, OptimizationConfig, Preferences, Routing  # noqa: E402
from dualtrack.integrations.langgraph import (  # noqa: E402
    DualTrackState,
    branch_on_path,
    build_graph,
    complete_node,
    route_node,
    run_node,
)
from dualtrack.preferences import write_preferences  # noqa: E402
from dualtrack.router.backends import FakeBackend  # noqa: E402
from dualtrack.router.policy import RoutingPolicy  # noqa: E402
from dualtrack.router.router import DualTrackRouter  # noqa: E402
from dualtrack.vocabulary import PARALLEL_NEVER  # noqa: E402

Record = Tuple[str, str, Dict[str, Any], bool, Optional[str]]


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.prefs = tmp_path / "preferences.json"
        self.force(local_bias=1.0)
        self.optimizer = DualTrackOptimizer(OptimizationConfig(preferences_file=str(self.prefs),
                                                               enable_resource_monitoring=False))
        self.records: List[Record] = []
        self.lock = threading.Lock()
        real = self.optimizer.record_request_completion

        def record(rid: str, path: str, result: Dict[str, Any], success: bool = True,
                   error_type: Optional[str] = None) -> None:
            with self.lock:
                self.records.append((rid, path, dict(result), success, error_type))
            real(rid, path, result, success, error_type)

        self.optimizer.record_request_completion = record  # type: ignore[method-assign]
        self.policy = RoutingPolicy(self.optimizer, floor=0.0)

    def force(self, *, local_bias: float, parallel_threshold: float = PARALLEL_NEVER,
              timeouts: Optional[Dict[str, float]] = None) -> None:
        now = time.time()
        write_preferences(self.prefs, Preferences(
            generated_at=now, valid_until=now + 3600, strategy="test", source="static",
            routing=Routing(local_bias=local_bias, parallel_threshold=parallel_threshold),
            timeouts_seconds=dict(timeouts or {"local": 10.0, "api": 10.0, "parallel": 10.0})))
        if hasattr(self, "optimizer"):
            self.optimizer.adapt_now()

    def outcomes(self) -> List[Tuple[str, str, str]]:
        with self.lock:
            return sorted((rid, path, result["outcome"]) for rid, path, result, _, _ in self.records)

    def wait_records(self, n: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.records) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.records) == n, self.outcomes()

    def calls(self, path: str, outcome: str = "success") -> float:
        return self.optimizer.registry.get_sample_value(
            "dualtrack_requests_total", {"path": path, "query_class": "short", "outcome": outcome}) or 0.0


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def ask_local(prompt: Any) -> Dict[str, Any]:
    return {"text": "local answer", "tokens_in": 5, "tokens_out": 3, "quality_score": 0.9}


def ask_api(prompt: Any) -> Dict[str, Any]:
    return {"text": "api answer", "tokens_in": 5, "tokens_out": 4, "quality_score": 0.95}


def broken(prompt: Any) -> str:
    raise ConnectionError("the local server is down")


def test_the_graph_follows_forced_preferences(setup: Setup) -> None:
    graph = build_graph(setup.optimizer, {"local": ask_local, "api": ask_api}, policy=setup.policy)
    for _ in range(3):
        state = graph.invoke({"query": "What is the capital of France?"})
        assert state["answer"] == "local answer"
        assert state["dualtrack"]["path"] == "local" and state["dualtrack"]["recorded"]
        assert state["dualtrack"]["query_class"] == "short"
    setup.force(local_bias=0.0)
    for _ in range(3):
        assert graph.invoke({"query": "What is the capital of France?"})["answer"] == "api answer"
    assert (setup.calls("local"), setup.calls("api")) == (3, 3)
    assert Counter(rid for rid, *_ in setup.records) == Counter({rid: 1 for rid, *_ in setup.records})
    assert setup.optimizer.registry.get_sample_value("dualtrack_requests_in_flight") == 0


def test_a_branching_graph_with_the_conditional_edge_helper(setup: Setup) -> None:
    graph = StateGraph(DualTrackState)
    graph.add_node("route", route_node(setup.optimizer, policy=setup.policy))
    graph.add_node("ask_local", run_node({"local": ask_local}))
    graph.add_node("ask_api", run_node({"api": ask_api}))
    graph.add_node("ask_both", run_node({"local": ask_local, "api": ask_api}, optimizer=setup.optimizer))
    graph.add_node("complete", complete_node(setup.optimizer))
    graph.add_edge(START, "route")
    graph.add_conditional_edges("route", branch_on_path({"local": "ask_local", "api": "ask_api",
                                                         "parallel": "ask_both"}))
    for node in ("ask_local", "ask_api", "ask_both"):
        graph.add_edge(node, "complete")
    graph.add_edge("complete", END)
    app = graph.compile()
    setup.force(local_bias=0.0)
    state = app.invoke({"query": "hello", "request_id": "req-1"})
    assert (state["answer"], state["request_id"]) == ("api answer", "req-1")
    assert setup.outcomes() == [("req-1", "api", "success")]
    with pytest.raises(ValueError, match="parallel"):
        branch_on_path({"local": "ask_local", "api": "ask_api"})


def test_a_failed_call_falls_back_and_every_call_is_recorded_once(setup: Setup) -> None:
    graph = build_graph(setup.optimizer, {"local": broken, "api": ask_api}, policy=setup.policy)
    state = graph.invoke({"query": "hello", "request_id": "r"})
    assert state["answer"] == "api answer"
    assert (state["dualtrack"]["track_used"], state["dualtrack"]["fell_back"]) == ("api", True)
    assert setup.outcomes() == [("r", "local", "error"), ("r/fallback", "api", "success")]
    assert [r[4] for r in setup.records if r[0] == "r"] == ["error"]


def test_an_error_without_fallback_is_recorded_once(setup: Setup) -> None:
    policy = RoutingPolicy(setup.optimizer, floor=0.0, fallback=False)
    graph = build_graph(setup.optimizer, {"local": broken, "api": ask_api}, policy=policy)
    state = graph.invoke({"query": "hello", "request_id": "r"})
    assert state["answer"] is None and "ConnectionError" in state["error"]
    assert setup.outcomes() == [("r", "local", "error")]
    # a graph whose run node has no backend for the planned track still records the request
    graph = build_graph(setup.optimizer, {"api": ask_api}, policy=policy)
    graph.invoke({"query": "hello", "request_id": "s"})
    assert setup.outcomes() == [("r", "local", "error"), ("s", "local", "error")]


def test_a_call_past_its_timeout_is_left_and_recorded_as_timeout(setup: Setup) -> None:
    release = threading.Event()

    def stuck(prompt: Any) -> str:  # ignores its deadline
        release.wait(5)
        return "too late"

    setup.force(local_bias=1.0, timeouts={"local": 0.2, "api": 5.0, "parallel": 5.0})
    graph = build_graph(setup.optimizer, {"local": stuck, "api": ask_api}, policy=setup.policy)
    started = time.monotonic()
    state = graph.invoke({"query": "hello", "request_id": "t"})
    release.set()
    assert time.monotonic() - started < 2
    assert state["answer"] == "api answer"
    assert setup.outcomes() == [("t", "local", "timeout"), ("t/fallback", "api", "success")]


def test_parallel_races_both_tracks(setup: Setup) -> None:
    local = FakeBackend("local", latency=5.0, text="slow local")
    api = FakeBackend("api", latency=0.0, text="fast api", quality=0.9)
    graph = build_graph(setup.optimizer, {"local": local, "api": api}, policy=setup.policy)
    setup.force(local_bias=1.0, parallel_threshold=0.0)
    started = time.monotonic()
    state = graph.invoke({"query": "hello", "request_id": "p"})
    assert time.monotonic() - started < 3
    assert (state["answer"], state["dualtrack"]["track_used"]) == ("fast api", "api")
    setup.wait_records(3)
    assert setup.outcomes() == [("p", "parallel", "success"), ("p/api", "api", "success"),
                                ("p/local", "local", "cancelled")]
    assert local.cancelled == 1


def test_run_node_uses_a_dualtrack_routers_backends(setup: Setup) -> None:
    local, api = FakeBackend("local", text="from the router"), FakeBackend("api")
    with DualTrackRouter(setup.optimizer, local, api) as router:
        graph = build_graph(setup.optimizer, router, policy=setup.policy)
        assert graph.invoke({"query": "hello"})["answer"] == "from the router"
    assert (local.calls, api.calls) == (1, 0)
    assert setup.calls("local") == 1  # recorded by the graph, not a second time by the router


def test_the_completion_node_records_once(setup: Setup) -> None:
    route, run, complete = (route_node(setup.optimizer, policy=setup.policy), run_node({"local": ask_local}),
                            complete_node(setup.optimizer))
    state: Dict[str, Any] = {"query": "hello"}
    for node in (route, run, complete):
        state.update(node(state))
    assert complete(state) == {}
    assert len(setup.records) == 1
    # without a run node the request is still completed, as an error
    state = {"query": "hello"}
    for node in (route, complete):
        state.update(node(state))
    assert setup.records[-1][3:] == (False, "no_result")


def test_import_without_langgraph_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "dualtrack.integrations.langgraph")
    monkeypatch.setitem(sys.modules, "langgraph", None)
    monkeypatch.setitem(sys.modules, "langgraph.graph", None)
    with pytest.raises(ImportError) as info:
        importlib.import_module("dualtrack.integrations.langgraph")
    message = str(info.value)
    assert message == "dualtrack.integrations.langgraph needs langgraph: pip install 'dualtrack[langgraph]'"
    assert "\n" not in message
