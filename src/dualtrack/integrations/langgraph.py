"""dualtrack in a LangGraph ``StateGraph`` (``pip install 'dualtrack[langgraph]'``)::

    from langgraph.graph import END, START, StateGraph
    from dualtrack.integrations.langgraph import DualTrackState, branch_on_path, complete_node, route_node, run_node

    graph = StateGraph(DualTrackState)
    graph.add_node("route", route_node(optimizer))                # records the start, puts the plan in the state
    graph.add_node("local", run_node({"local": ask_local}))      # your callables (or a DualTrackRouter's backends)
    graph.add_node("api", run_node({"api": ask_api}))
    graph.add_node("both", run_node({"local": ask_local, "api": ask_api}))
    graph.add_node("complete", complete_node(optimizer))          # records the result, once
    graph.add_edge(START, "route")
    graph.add_conditional_edges("route", branch_on_path({"local": "local", "api": "api", "parallel": "both"}))
    for node in ("local", "api", "both"):
        graph.add_edge(node, "complete")
    graph.add_edge("complete", END)
    answer = graph.compile().invoke({"query": "What is 2+2?"})["answer"]

(:func:`build_graph` wires route -> run -> complete in one call.)

State keys (:class:`DualTrackState`; extend it with your own): ``query`` (a
string or chat messages), ``context`` (for the optimizer), ``request_id``;
the nodes write ``dualtrack`` (the plan: ``path``, ``tracks``, ``fallback``,
``timeouts_seconds``, ``query_class``, ...), ``dualtrack_result`` (what the
completion node records), ``answer``, ``error``.

Recording follows the reference router's conventions (docs/router.md), every
model call exactly once: the request is started by the routing node and
completed by the completion node, under the track it ran on (or ``parallel``,
with end-to-end latency and the winner's quality); a fallback call
(``<id>/fallback``) and the legs of a race (``<id>/local``, ``<id>/api``) are
recorded by the run node itself. The run node never raises: a failing or
missing backend is an ``error`` result, so the completion node always has
something to record. Backends are the reference router's
(:class:`~dualtrack.router.backends.Backend`: ``generate(prompt, *, timeout,
cancel)``); a plain function becomes a
:class:`~dualtrack.router.backends.CallableBackend` (it may return a string,
a mapping with ``text`` and tokens, or a ``Completion``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, TypedDict, Union

from ._extras import missing_extra

try:
    from langgraph.graph import END, START, StateGraph
except ImportError as _err:
    raise missing_extra("langgraph", _err) from None

from dualtrack.router.backends import Backend, BackendError, CallableBackend, Completion  # noqa: E402
from dualtrack.router.policy import (  # noqa: E402
    RoutePlan,
    RoutingPolicy,
    fallback_track,
    race_failure_outcome,
    race_winner,
)
from dualtrack.router.router import DualTrackRouter  # noqa: E402
from dualtrack.vocabulary import DEFAULT_ROUTING, DEFAULT_TIMEOUTS_SECONDS, OTHER, PATHS, TRACKS, other_track  # noqa: E402

from ._prompt import prompt_text  # noqa: E402

__all__ = ["DualTrackState", "branch_on_path", "build_graph", "complete_node", "route_node", "run_node"]

log = logging.getLogger(__name__)

Node = Callable[[Mapping[str, Any]], Dict[str, Any]]
Backends = Union[DualTrackRouter, Mapping[str, Union[Backend, Callable[..., Any]]]]
_Status = Union[Completion, BackendError]

GRACE_SECONDS = 0.05  # past a call's deadline, how long the race waits for the backend's own timeout


class DualTrackState(TypedDict, total=False):
    """The state keys the nodes read and write (``total=False``: every key is optional)."""

    query: Any
    context: Dict[str, Any]
    request_id: str
    dualtrack: Dict[str, Any]
    dualtrack_result: Dict[str, Any]
    answer: Optional[str]
    error: Optional[str]


# --------------------------------------------------------------------------- route


def route_node(optimizer: Any, *, policy: Optional[RoutingPolicy] = None, query_key: str = "query") -> Node:
    """A node that plans the request, records its start and puts the plan in ``state["dualtrack"]``.

    ``policy`` defaults to ``RoutingPolicy(optimizer)`` (exploration floor,
    preemption, fallback). The request id is ``state["request_id"]`` when
    given, else a new one.
    """
    policy = policy if policy is not None else RoutingPolicy(optimizer)

    def route(state: Mapping[str, Any]) -> Dict[str, Any]:
        query = state.get(query_key)
        text = prompt_text(query)
        context = state.get("context")
        context = dict(context) if isinstance(context, Mapping) else None
        rid = state.get("request_id")
        rid = rid if isinstance(rid, str) and rid else uuid.uuid4().hex
        try:
            plan = policy.plan(text, context)
        except Exception as err:  # a broken optimizer: route on safe defaults, as the reference router does
            log.warning("dualtrack route node: planning failed (%s); safe defaults", type(err).__name__)
            plan = _safe_plan(policy)
        # A parallel request is timed under its own id; its legs are the model calls.
        start_context = dict(context or {}, path="parallel") if plan.path == "parallel" else context
        _safe(optimizer.record_request_start, rid, text, start_context)
        decision = {
            "request_id": rid, "path": plan.path, "tracks": list(plan.tracks), "fallback": plan.fallback,
            "timeouts_seconds": dict(plan.timeouts_seconds), "query_class": plan.query_class,
            "complexity": plan.complexity, "quality_threshold": plan.quality_threshold, "preempt": plan.preempt,
            "recorded": False,
        }
        return {"request_id": rid, "dualtrack": decision}

    return route


def branch_on_path(mapping: Optional[Mapping[str, str]] = None) -> Callable[[Mapping[str, Any]], str]:
    """A conditional-edge function: the planned path (``local``, ``api``, ``parallel``), or the node
    ``mapping`` names for it::

        graph.add_conditional_edges("route", branch_on_path({"local": "ask_local", "api": "ask_api",
                                                             "parallel": "ask_both"}))

    A path missing from ``mapping`` is a ``ValueError`` here, not a dead end at run time.
    """
    if mapping is not None:
        missing = [p for p in PATHS if p not in mapping]
        if missing:
            raise ValueError(f"branch_on_path: no node for path(s) {missing}; map every one of {list(PATHS)}")
        table = dict(mapping)
    else:
        table = {p: p for p in PATHS}

    def branch(state: Mapping[str, Any]) -> str:
        decision = state.get("dualtrack")
        path = decision.get("path") if isinstance(decision, Mapping) else None
        return table[path if path in table else "api"]

    return branch


# --------------------------------------------------------------------------- run


def run_node(backends: Backends, *, optimizer: Any = None, query_key: str = "query", max_workers: int = 4) -> Node:
    """A node that runs the planned path on ``backends``.

    ``backends``: a :class:`~dualtrack.router.router.DualTrackRouter` (its
    backends are used; its own planning and recording are not), or a mapping
    ``{"local": ..., "api": ...}`` of backends or plain functions. A node given
    one track only serves that branch. ``optimizer`` records the calls the run
    node makes on its own (fallback, race legs); default: the router's.

    - ``local`` / ``api``: one call with that path's timeout; on failure the
      plan's fallback track is tried once (recorded as ``<id>/fallback``);
    - ``parallel``: both tracks at once; the first acceptable answer wins and
      the other call is told to cancel (legs recorded as ``<id>/local``,
      ``<id>/api``).
    """
    if isinstance(backends, DualTrackRouter):
        optimizer = optimizer if optimizer is not None else backends.optimizer
        table: Dict[str, Backend] = dict(backends.backends)
    elif isinstance(backends, Mapping):
        table = {}
        for track, backend in backends.items():
            if track not in TRACKS:
                raise ValueError(f"run_node: tracks are 'local' and 'api', got {track!r}")
            if callable(getattr(backend, "generate", None)):
                table[track] = backend  # type: ignore[assignment]
            elif callable(backend):
                table[track] = CallableBackend(backend, track, getattr(backend, "__name__", None) or track)
            else:
                raise ValueError(f"run_node: {track}: expected a backend or a function, got {backend!r}")
    else:
        raise ValueError(f"run_node: expected a DualTrackRouter or a mapping of tracks, got {backends!r}")
    if not table:
        raise ValueError("run_node: no backend given")
    runner = _Runner(table, optimizer, max_workers)

    def run(state: Mapping[str, Any]) -> Dict[str, Any]:
        decision = state.get("dualtrack")
        if not isinstance(decision, Mapping) or decision.get("path") not in PATHS:
            return _update({}, None, _failure("error", "no plan in the state: put route_node before run_node"),
                           None, False)
        try:
            return runner.run(dict(decision), state.get(query_key))
        except Exception as err:  # the node never raises: the request must still be recorded
            log.warning("dualtrack run node failed (%s)", type(err).__name__, exc_info=err)
            return _update(dict(decision), None, _failure("error", f"run node failed: {type(err).__name__}"),
                           None, False)

    return run


class _Runner:
    """Runs one plan's calls; records the calls it makes on its own (fallback, race legs)."""

    def __init__(self, backends: Dict[str, Backend], optimizer: Any, max_workers: int) -> None:
        self.backends = backends
        self.optimizer = optimizer
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dualtrack-langgraph")

    def run(self, decision: Dict[str, Any], query: Any) -> Dict[str, Any]:
        path = decision["path"]
        if path == "parallel":
            return self._race(decision, query)
        status = self._call_until(path, query, _timeout(decision, path))
        used = path
        fallback = fallback_track(_plan_view(decision), fell_back=False)
        if isinstance(status, BackendError) and fallback in self.backends:
            # The request's own record is this failure (written by the completion node);
            # the fallback is a call of its own.
            rid = f"{decision['request_id']}/fallback"
            self._record_start(rid, query)
            second = self._call_until(fallback, query, _timeout(decision, fallback))
            self._record(rid, fallback, second, None)
            if isinstance(second, Completion):
                return _update(decision, second.text, _result(status), fallback, True, error=str(status))
            return _update(decision, None, _result(status), None, True, error=str(second))
        if isinstance(status, Completion):
            return _update(decision, status.text, _result(status), used, False)
        return _update(decision, None, _result(status), None, False, error=str(status))

    def _call_until(self, track: str, query: Any, timeout: float) -> _Status:
        """One call that gets ``timeout`` seconds whether or not its backend honours it: past the
        deadline (and a short grace for the backend's own timeout) it is told to cancel and left."""
        cancel = threading.Event()
        future = self.pool.submit(self._call, track, query, timeout, cancel)
        try:
            return future.result(timeout=timeout + GRACE_SECONDS)
        except FuturesTimeout:
            cancel.set()
            return BackendError(f"no answer within {timeout:g} s", "timeout",
                                backend=_name(self.backends.get(track)))

    def _call(self, track: str, query: Any, timeout: float,
              cancel: Optional[threading.Event] = None) -> _Status:
        backend = self.backends.get(track)
        if backend is None:
            return BackendError(f"no {track} backend in this run node", "error")
        try:
            status = backend.generate(query, timeout=timeout, cancel=cancel or threading.Event())
        except BackendError as err:
            return err
        except Exception as err:  # a backend bug is that call's error
            return BackendError(f"the backend raised {type(err).__name__}", "error", backend=_name(backend))
        if not isinstance(status, Completion):
            return BackendError(f"generate returned {type(status).__name__}, not a Completion", "error")
        return status

    def _race(self, decision: Dict[str, Any], query: Any) -> Dict[str, Any]:
        rid = decision["request_id"]
        race_seconds = _timeout(decision, "parallel")
        started = time.monotonic()
        deadline = started + race_seconds
        legs: Dict["Future[_Status]", Tuple[str, threading.Event]] = {}
        for track in TRACKS:
            cancel = threading.Event()
            self._record_start(f"{rid}/{track}", query)
            seconds = min(_timeout(decision, track), race_seconds)
            legs[self.pool.submit(self._call, track, query, seconds, cancel)] = (track, cancel)
        answers: List[Tuple[str, Completion]] = []
        failures: List[str] = []
        winner: Optional[Tuple[str, Completion]] = None
        pending = set(legs)
        while pending and winner is None:
            done, pending = wait(pending, timeout=max(0.0, deadline + GRACE_SECONDS - time.monotonic()),
                                 return_when=FIRST_COMPLETED)
            if not done:
                break
            for future in done:
                track, _ = legs[future]
                status = future.result()
                self._record(f"{rid}/{track}", track, status, None)
                if isinstance(status, Completion):
                    answers.append((track, status))
                else:
                    failures.append(status.kind)
            winner = race_winner(answers, lambda a: a[1].quality_score, float(decision["quality_threshold"]),
                                 preempt=bool(decision["preempt"]), settled=not pending)
        timed_out = winner is None and bool(pending)
        waited = time.monotonic() - started
        for future in pending:  # the loser of a won race, or every leg still out when time ran out
            track, cancel = legs[future]
            cancel.set()
            why = "timeout" if timed_out else "cancelled"
            failures.append(why)
            # Recorded when the backend returns, with the tokens it used.
            future.add_done_callback(functools.partial(self._record_abandoned, f"{rid}/{track}", track, why, waited))
        if winner is not None:
            result: Dict[str, Any] = {"outcome": "success"}
            if winner[1].quality_score is not None:
                result["quality_score"] = winner[1].quality_score
            return _update(decision, winner[1].text, {"result": result, "success": True, "error_type": None},
                           winner[0], False)
        outcome = race_failure_outcome(failures)
        return _update(decision, None, {"result": {"outcome": outcome}, "success": False, "error_type": outcome},
                       None, False, error=f"no answer from either track ({outcome})")

    def _record_abandoned(self, rid: str, track: str, why: str, waited: float, future: "Future[_Status]") -> None:
        self._record(rid, track, future.result(), why, waited)

    def _record_start(self, rid: str, query: Any) -> None:
        if self.optimizer is not None:
            _safe(self.optimizer.record_request_start, rid, prompt_text(query), None)

    def _record(self, rid: str, track: str, status: _Status, abandoned: Optional[str],
                waited: Optional[float] = None) -> None:
        if self.optimizer is None:
            return
        record = _result(status)
        if abandoned is not None:  # the race stopped waiting: that decides the outcome
            record["result"]["outcome"] = abandoned
            record["success"], record["error_type"] = False, abandoned
            record["result"].pop("quality_score", None)
            if abandoned == "timeout" and waited is not None:
                record["result"]["latency_ms"] = waited * 1000.0
        _safe(self.optimizer.record_request_completion, rid, track, record["result"], record["success"],
              record["error_type"])


# --------------------------------------------------------------------------- complete


def complete_node(optimizer: Any) -> Node:
    """A node that records the request's completion from ``state["dualtrack_result"]``, once.

    Without a result (no run node ran) the request is recorded as an error
    (``no_result``); a second pass through the node records nothing.
    """

    def complete(state: Mapping[str, Any]) -> Dict[str, Any]:
        decision = state.get("dualtrack")
        if not isinstance(decision, Mapping) or not decision.get("request_id") or decision.get("recorded"):
            return {}
        record = state.get("dualtrack_result")
        if not isinstance(record, Mapping) or not isinstance(record.get("result"), Mapping):
            record = {"result": {"outcome": "error"}, "success": False, "error_type": "no_result"}
        path = decision.get("path") if decision.get("path") in PATHS else "api"
        _safe(optimizer.record_request_completion, decision["request_id"], path, dict(record["result"]),
              bool(record.get("success")), record.get("error_type"))
        return {"dualtrack": dict(decision, recorded=True)}

    return complete


def build_graph(optimizer: Any, backends: Backends, *, policy: Optional[RoutingPolicy] = None,
                state_schema: Any = DualTrackState) -> Any:
    """route -> run -> complete, compiled: ``build_graph(opt, {"local": f, "api": g}).invoke({"query": q})``."""
    # Any: LangGraph's overloads want the node input typed as the state schema, which is the caller's choice.
    graph: Any = StateGraph(state_schema)
    graph.add_node("route", route_node(optimizer, policy=policy))
    graph.add_node("run", run_node(backends, optimizer=optimizer))
    graph.add_node("complete", complete_node(optimizer))
    graph.add_edge(START, "route")
    graph.add_edge("route", "run")
    graph.add_edge("run", "complete")
    graph.add_edge("complete", END)
    return graph.compile()


# --------------------------------------------------------------------------- helpers


def _result(status: _Status) -> Dict[str, Any]:
    """What ``record_request_completion`` takes for one call: result dict, success, error type."""
    result: Dict[str, Any] = {"tokens_in": status.tokens_in, "tokens_out": status.tokens_out}
    if status.model:
        result["model"] = status.model
    if status.cost is not None:
        result["cost"] = status.cost
    if isinstance(status, Completion):
        result["outcome"] = "success"
        if status.quality_score is not None:
            result["quality_score"] = status.quality_score
        return {"result": result, "success": True, "error_type": None}
    result["outcome"] = status.outcome
    return {"result": result, "success": False, "error_type": status.kind}


def _failure(kind: str, message: str) -> Dict[str, Any]:
    return {"result": {"outcome": "error"}, "success": False, "error_type": kind, "message": message}


def _update(decision: Dict[str, Any], answer: Optional[str], record: Dict[str, Any], track_used: Optional[str],
            fell_back: bool, *, error: Optional[str] = None) -> Dict[str, Any]:
    update: Dict[str, Any] = {"dualtrack_result": record, "answer": answer,
                              "error": error if error is not None else record.get("message")}
    if decision:
        update["dualtrack"] = dict(decision, track_used=track_used, fell_back=fell_back)
    return update


def _timeout(decision: Mapping[str, Any], path: str) -> float:
    timeouts = decision.get("timeouts_seconds")
    value = timeouts.get(path) if isinstance(timeouts, Mapping) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return DEFAULT_TIMEOUTS_SECONDS[path]


def _plan_view(decision: Mapping[str, Any]) -> RoutePlan:
    """The state's plan as a ``RoutePlan``, for the policy's pure functions."""
    return RoutePlan(path=decision["path"], tracks=tuple(decision.get("tracks") or ()),
                     fallback=decision.get("fallback"), timeouts_seconds=decision.get("timeouts_seconds") or {},
                     quality_threshold=float(decision.get("quality_threshold", 0.0)),
                     preempt=bool(decision.get("preempt")), query_class=str(decision.get("query_class")),
                     complexity=float(decision.get("complexity", 0.0)), recommendation={})


def _safe_plan(policy: RoutingPolicy) -> RoutePlan:
    """The reference router's plan when planning fails: the default split and timeouts."""
    track = "local" if policy.rng.random() < DEFAULT_ROUTING["local_bias"] else "api"
    return RoutePlan(path=track, tracks=(track,), fallback=other_track(track) if policy.fallback else None,
                     timeouts_seconds=dict(DEFAULT_TIMEOUTS_SECONDS),
                     quality_threshold=DEFAULT_ROUTING["quality_threshold"], preempt=policy.enable_preemption,
                     query_class=OTHER, complexity=0.0, recommendation={})


def _safe(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception as err:  # telemetry never breaks a request
        log.warning("dualtrack: %s failed (%s); the request goes on", getattr(fn, "__name__", "call"),
                    type(err).__name__)


def _name(backend: Any) -> str:
    return str(getattr(backend, "name", type(backend).__name__))
