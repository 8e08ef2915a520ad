"""The reference router: asks the optimizer, then runs local, API or both.

::

    optimizer = DualTrackOptimizer(OptimizationConfig(strategy="adaptive"))
    local = OpenAICompatibleBackend("http://127.0.0.1:11434", "llama3.1:8b", track="local", stream=True)
    api = OpenAICompatibleBackend("https://api.openai.com", "gpt-4o-mini", track="api",
                                  api_key_env="OPENAI_API_KEY", stream=True)
    with optimizer, DualTrackRouter(optimizer, local, api) as router:
        result = router.route("Summarise this ...")
        if result.ok:
            print(result.text, result.path, result.track_used)

Each query becomes a :class:`~dualtrack.router.policy.RoutePlan` (the same
policy the simulator uses, so benchmarks measure this router's behaviour):

- **local** or **api**: one call with that path's timeout; on an error or a
  timeout, the other track is tried once (``fell_back``). Both failing gives
  a result with ``ok`` False and the last ``error``; ``route`` does not raise.
- **parallel**: both tracks start at once. With ``plan.preempt`` the first
  answer whose quality is at least ``plan.quality_threshold`` (or unknown)
  wins and the other call's ``cancel`` event is set; without preemption the
  router waits for both and takes the better quality (unknown quality counts
  as exactly the threshold). The ``parallel`` timeout bounds the whole race.

Which track is the fallback, which answer wins a race and how a race
without an answer ended are :mod:`~dualtrack.router.policy`'s pure
functions, which the simulator calls too; this module holds the threads,
deadlines and cancellation around them.

Recording (binding; the simulator records the same way) — every model call
is recorded once, under its track, so nothing is counted twice:

- a single-track call as ``<rid>``, its fallback as ``<rid>/fallback``;
- a parallel request's legs as ``<rid>/local`` and ``<rid>/api`` with their
  tokens and cost; a leg the router stopped waiting for is ``cancelled``
  (preempted) or ``timeout`` (out of time), with whatever it incurred;
- the parallel request itself as ``<rid>`` on path ``parallel``: end-to-end
  latency and the winner's quality, without tokens or cost (its legs carry
  them).

A call the router has given up on is recorded when it actually returns
(so the tokens a cancelled stream consumed are counted); :meth:`drain`
waits for those. Telemetry never breaks a request: a failing optimizer
call is logged once and the request goes on (a failing plan falls back to
safe defaults).

Why threads and not asyncio: the specification's interface is synchronous
and thread-safe (``record_request_*``, ``get_optimization_recommendations``),
the backends people already have are blocking HTTP clients (``requests``,
vendor SDKs), and a router embedded in a synchronous application (Flask,
Django, a CLI, a LangGraph node) should not need an event loop. A model call
spends its time waiting on the network or the local model server, so the
GIL is no bottleneck; a small pool (``max_workers``) bounds concurrency, and
cancellation is a ``threading.Event`` the backend checks between chunks.
An asyncio application can call ``route`` through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple, Union

from ..preferences import Routing
from ..vocabulary import DEFAULT_TIMEOUTS_SECONDS, other_track
from .backends import Backend, BackendError, Completion, Prompt
from .policy import RoutePlan, RoutingPolicy, fallback_track, race_failure_outcome, race_winner

__all__ = ["DualTrackRouter", "RouterResult"]

log = logging.getLogger(__name__)

#: How long past a call's deadline the router waits for the backend to
#: report its own timeout (with the tokens it incurred) before giving up on it.
GRACE_SECONDS = 0.05

_Status = Union[Completion, BackendError]


@dataclass(frozen=True)
class RouterResult:
    """The answer to one query.

    ``path`` is the planned path (local, api, parallel); ``track_used`` the
    track whose answer this is (``None`` when every call failed);
    ``fell_back`` is True when the planned track failed and the other one
    answered (or was tried). ``error`` is the last failure when ``ok`` is
    False. ``completion`` carries the tokens, model and cost of the answer.
    """

    text: Optional[str]
    path: str
    track_used: Optional[str]
    latency_seconds: float
    quality_score: Optional[float]
    fell_back: bool
    request_id: str
    plan: RoutePlan
    error: Optional[BackendError] = None
    completion: Optional[Completion] = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


class _Leg:
    """One model call: what is needed to record it exactly once."""

    __slots__ = ("record_id", "track", "backend", "cancel", "started", "deadline", "future",
                 "abandoned", "abandoned_at", "recorded", "lock")

    def __init__(self, record_id: str, track: str, backend: Backend, timeout: float) -> None:
        self.record_id = record_id
        self.track = track
        self.backend = backend
        self.cancel = threading.Event()
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.future: "Future[_Status]" = Future()
        self.abandoned: Optional[str] = None  # "cancelled" or "timeout" once the router gave up on it
        self.abandoned_at = 0.0
        self.recorded = False
        self.lock = threading.Lock()


class DualTrackRouter:
    """Routes queries to a local and an API backend as the optimizer recommends.

    ``policy`` defaults to ``RoutingPolicy(optimizer, rng=rng)``; pass your
    own to change the exploration floor, preemption or fallback. ``rng``
    (a ``random.Random``) makes the local/API split reproducible.
    ``max_workers`` bounds the model calls running at once (a parallel
    request takes two). Thread-safe: call ``route`` from any number of
    threads. ``close()`` (or leaving a ``with`` block) waits for running
    calls and shuts the pool down.
    """

    def __init__(self, optimizer: Any, local: Backend, api: Backend, *, policy: Optional[RoutingPolicy] = None,
                 max_workers: int = 8, rng: Optional[random.Random] = None) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers: expected an integer >= 1, got {max_workers!r}")
        for expected, backend in (("local", local), ("api", api)):
            if not callable(getattr(backend, "generate", None)):
                raise ValueError(f"{expected}: expected a backend with generate(prompt, *, timeout, cancel)")
            track = getattr(backend, "track", expected)
            if track != expected:
                raise ValueError(f"{expected}: the backend {getattr(backend, 'name', backend)!r} serves track "
                                 f"{track!r}; pass it as {track}= (arguments swapped?)")
        if policy is not None and rng is not None:
            raise ValueError("policy and rng: give the rng to the policy you pass")
        self.optimizer = optimizer
        self.backends: Dict[str, Backend] = {"local": local, "api": api}
        self.policy = policy if policy is not None else RoutingPolicy(optimizer, rng=rng)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dualtrack-router")
        self._live: Set[_Leg] = set()  # started, not yet recorded
        self._live_cond = threading.Condition()
        self._closed = False
        self._warned: Set[Tuple[str, str]] = set()

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop accepting queries; wait for running calls (calls already given
        up on were told to cancel) and shut the pool down. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "DualTrackRouter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Wait until every started call has been recorded (including calls
        the router gave up on); True if that happened within ``timeout``."""
        with self._live_cond:
            return self._live_cond.wait_for(lambda: not self._live, timeout)

    # ------------------------------------------------------------ routing

    def route(self, query: Prompt, context: Optional[Dict[str, Any]] = None, *,
              request_id: Optional[str] = None) -> RouterResult:
        """Answer ``query`` on the path the optimizer recommends. Never raises
        for a model or telemetry failure: look at ``result.ok``."""
        if self._closed:
            raise RuntimeError("route: the router is closed")
        rid = request_id or uuid.uuid4().hex
        started = time.monotonic()
        text = query if isinstance(query, str) else _prompt_summary(query)
        plan = self._plan(text, context)
        if plan.path == "parallel":
            return self._route_parallel(rid, query, text, context, plan, started)
        return self._route_single(rid, query, text, context, plan, started)

    def _plan(self, text: str, context: Optional[Dict[str, Any]]) -> RoutePlan:
        try:
            plan = self.policy.plan(text, context)
            if plan.path not in ("local", "api", "parallel") or not plan.tracks:
                raise ValueError(f"unknown path {plan.path!r}")
            return plan
        except Exception as err:
            self._warn("plan", err)
            return self._safe_plan()

    def _safe_plan(self) -> RoutePlan:
        routing = Routing.DEFAULT
        path = "local" if self.policy.rng.random() < routing.local_bias else "api"
        return RoutePlan(path=path, tracks=(path,), fallback=other_track(path),
                         timeouts_seconds=dict(DEFAULT_TIMEOUTS_SECONDS),
                         quality_threshold=routing.quality_threshold, preempt=True, query_class="other",
                         complexity=0.0, recommendation={})

    def _route_single(self, rid: str, query: Prompt, text: str, context: Optional[Dict[str, Any]],
                      plan: RoutePlan, started: float) -> RouterResult:
        track = plan.tracks[0]
        leg = self._start(rid, track, query, text, context, _timeout(plan, track))
        status = self._await(leg)
        fell_back = False
        fallback = fallback_track(plan, fell_back=False) if isinstance(status, BackendError) else None
        if fallback is not None:
            fell_back = True
            track = fallback
            leg = self._start(rid + "/fallback", track, query, text, context, _timeout(plan, track))
            status = self._await(leg)
        latency = time.monotonic() - started
        if isinstance(status, Completion):
            return RouterResult(status.text, plan.path, track, latency, status.quality_score, fell_back, rid,
                                plan, None, status)
        return RouterResult(None, plan.path, None, latency, None, fell_back, rid, plan, status, None)

    def _route_parallel(self, rid: str, query: Prompt, text: str, context: Optional[Dict[str, Any]],
                        plan: RoutePlan, started: float) -> RouterResult:
        # context path=parallel: the request is tracked for its latency, while
        # in-flight work (and the concurrency limit) counts its two legs.
        parent_context = dict(context or {}, path="parallel")
        self._safe("record_request_start", self.optimizer.record_request_start, rid, text, parent_context)
        race_deadline = time.monotonic() + _timeout(plan, "parallel")
        pending: Dict["Future[_Status]", _Leg] = {}
        for track in plan.tracks:
            leg_timeout = min(_timeout(plan, track), _timeout(plan, "parallel"))
            leg = self._start(f"{rid}/{track}", track, query, text, context, leg_timeout)
            pending[leg.future] = leg
        answers: List[Tuple[_Leg, Completion]] = []
        errors: List[BackendError] = []
        winner: Optional[Tuple[_Leg, Completion]] = None
        while pending and winner is None:
            wake = min(min(leg.deadline for leg in pending.values()), race_deadline) + GRACE_SECONDS
            done, _ = wait(list(pending), timeout=max(0.0, wake - time.monotonic()), return_when=FIRST_COMPLETED)
            for future in done:
                leg = pending.pop(future)
                status = self._result(leg)
                self._record(leg, status)
                if isinstance(status, Completion):
                    answers.append((leg, status))
                else:
                    errors.append(status)
            winner = race_winner(answers, _quality, plan.quality_threshold, preempt=plan.preempt, settled=False)
            if winner is not None:
                break
            now = time.monotonic()
            for future, leg in list(pending.items()):
                if now >= min(leg.deadline, race_deadline) + GRACE_SECONDS:
                    del pending[future]
                    errors.append(self._abandon(leg, "timeout"))
        for leg in pending.values():  # the losers of a preempted race
            self._abandon(leg, "cancelled")
        if winner is None:  # every call has ended or been given up on
            winner = race_winner(answers, _quality, plan.quality_threshold, preempt=plan.preempt, settled=True)

        latency = time.monotonic() - started
        if winner is not None:
            leg, completion = winner
            result: Dict[str, Any] = {"outcome": "success"}
            if completion.quality_score is not None:
                result["quality_score"] = completion.quality_score
            self._safe("record_request_completion", self.optimizer.record_request_completion,
                       rid, "parallel", result, True, None)
            return RouterResult(completion.text, "parallel", leg.track, latency, completion.quality_score,
                                False, rid, plan, None, completion)
        kinds = {e.kind for e in errors}
        kind = kinds.pop() if len(kinds) == 1 else "error"
        error = errors[-1] if errors else BackendError("no answer", "error")
        outcome = race_failure_outcome(e.kind for e in errors)
        self._safe("record_request_completion", self.optimizer.record_request_completion,
                   rid, "parallel", {"outcome": outcome}, False, kind)
        return RouterResult(None, "parallel", None, latency, None, False, rid, plan, error, None)

    # ------------------------------------------------------------ calls

    def _start(self, record_id: str, track: str, query: Prompt, text: str, context: Optional[Dict[str, Any]],
               timeout: float) -> _Leg:
        # The track goes with the start: the optimizer counts calls in flight per track
        # (the local server's queue, seen without waiting for a scrape).
        self._safe("record_request_start", self.optimizer.record_request_start, record_id, text,
                   dict(context or {}, track=track))
        leg = _Leg(record_id, track, self.backends[track], timeout)
        with self._live_cond:
            self._live.add(leg)
        try:
            leg.future = self._pool.submit(self._call, leg, query)
        except RuntimeError as err:  # the pool was shut down under us
            leg.future = Future()
            leg.future.set_result(BackendError(f"router closed ({err})", "cancelled", backend=_name(leg.backend)))
        return leg

    @staticmethod
    def _call(leg: _Leg, query: Prompt) -> _Status:
        """Runs on a pool thread. Returns the completion or the error; never raises."""
        name = _name(leg.backend)
        if leg.cancel.is_set():
            return BackendError("cancelled before it started", "cancelled", backend=name)
        remaining = leg.deadline - time.monotonic()
        if remaining <= 0:
            return BackendError("queued past its deadline (all router workers busy)", "timeout", backend=name)
        try:
            completion = leg.backend.generate(query, timeout=remaining, cancel=leg.cancel)
        except BackendError as err:
            return err
        except Exception as err:  # a backend bug is that call's error, not the router's
            return BackendError(f"the backend raised {type(err).__name__}", "error", backend=name)
        if not isinstance(completion, Completion):
            return BackendError(f"generate returned {type(completion).__name__}, not a Completion", "error",
                                backend=name)
        return completion

    def _result(self, leg: _Leg) -> _Status:
        try:
            return leg.future.result(timeout=0)
        except CancelledError:
            return BackendError("cancelled", "cancelled", backend=_name(leg.backend))

    def _await(self, leg: _Leg) -> _Status:
        """Wait for a single-track call until its deadline (plus grace)."""
        try:
            status = leg.future.result(timeout=max(0.0, leg.deadline + GRACE_SECONDS - time.monotonic()))
        except FuturesTimeout:
            return self._abandon(leg, "timeout")
        except CancelledError:
            status = BackendError("cancelled", "cancelled", backend=_name(leg.backend))
        self._record(leg, status)
        return status

    def _abandon(self, leg: _Leg, why: str) -> BackendError:
        """Stop waiting for ``leg``: tell it to cancel, record it when it returns."""
        with leg.lock:
            if leg.abandoned is None and not leg.recorded:
                leg.abandoned = why
                leg.abandoned_at = time.monotonic()
        leg.cancel.set()
        leg.future.add_done_callback(lambda future: self._record(leg, self._result(leg)))
        if why == "timeout":
            return BackendError(f"no answer within {leg.deadline - leg.started:.3f} s", "timeout",
                                backend=_name(leg.backend))
        return BackendError("cancelled: the other track won", "cancelled", backend=_name(leg.backend))

    def _record(self, leg: _Leg, status: _Status) -> None:
        """Record one call, exactly once."""
        with leg.lock:
            if leg.recorded:
                return
            leg.recorded = True
            abandoned, abandoned_at = leg.abandoned, leg.abandoned_at
        try:
            result: Dict[str, Any]
            model = status.model if isinstance(status, Completion) else status.model
            result = {"tokens_in": status.tokens_in, "tokens_out": status.tokens_out,
                      "model": model or getattr(leg.backend, "model", None) or leg.track}
            if status.cost is not None:
                result["cost"] = status.cost
            if abandoned is not None:
                # The router stopped waiting; that decides the outcome, whatever
                # the backend did afterwards.
                result["outcome"] = abandoned
                if abandoned == "timeout":
                    result["latency_ms"] = (abandoned_at - leg.started) * 1000.0
                success, error_type = False, abandoned
            elif isinstance(status, Completion):
                result["outcome"] = "success"
                if status.quality_score is not None:
                    result["quality_score"] = status.quality_score
                success, error_type = True, None
            else:
                result["outcome"] = status.outcome
                success, error_type = False, status.kind
            self._safe("record_request_completion", self.optimizer.record_request_completion,
                       leg.record_id, leg.track, result, success, error_type)
        finally:
            with self._live_cond:
                self._live.discard(leg)
                self._live_cond.notify_all()

    # ------------------------------------------------------------ telemetry safety

    def _safe(self, what: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as err:  # telemetry must never break a request
            self._warn(what, err)

    def _warn(self, what: str, err: BaseException) -> None:
        key = (what, type(err).__name__)
        if key in self._warned or len(self._warned) > 64:
            return
        self._warned.add(key)
        log.warning("dualtrack router: %s failed (%s); the request goes on", what, type(err).__name__,
                    exc_info=err)


def _timeout(plan: RoutePlan, path: str) -> float:
    value = plan.timeouts_seconds.get(path) if isinstance(plan.timeouts_seconds, Mapping) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return DEFAULT_TIMEOUTS_SECONDS[path]


def _quality(answer: Tuple[_Leg, Completion]) -> Optional[float]:
    """A race answer's quality; the answers are in the order they finished, so ties go to the first."""
    return answer[1].quality_score


def _name(backend: Any) -> str:
    return str(getattr(backend, "name", type(backend).__name__))


def _prompt_summary(messages: Any) -> str:
    """The text the optimizer classifies for a list of chat messages: their contents."""
    try:
        return "\n".join(m["content"] for m in messages if isinstance(m.get("content"), str))
    except Exception:
        return ""
