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
- **hedged** (with ``hedge=HedgePolicy(...)``): a single-track call with no
  first token by its track's recent p95 gets a second call on the other
  track, within a budget; the first acceptable answer wins and the other is
  cancelled. A call that fails fast falls back instead. With
  ``first_token_deadline``, a call with no first token by ``factor × p95``
  is abandoned and falls back. See :mod:`~dualtrack.router.hedging`.

Which track is the fallback, which answer wins a race and how a race
without an answer ended are :mod:`~dualtrack.router.policy`'s pure
functions, which the simulator calls too; this module holds the threads,
deadlines and cancellation around them.

Recording (binding; the simulator records the same way) — every model call
is recorded once, under its track, so nothing is counted twice:

- a single-track call as ``<rid>``, its fallback as ``<rid>/fallback``,
  its hedge as ``<rid>/hedge`` (under the other track; the loser of the
  hedged race is ``cancelled``); a hedged request has no record of its own;
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
import math
import random
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple, Union

from .._once import OnceLogger
from ..preferences import Routing
from ..vocabulary import DEFAULT_TIMEOUTS_SECONDS, TRACKS, other_track
from .backend import reports_first_token
from .backends import Backend, BackendError, Completion, Prompt
from .hedging import FirstTokenDeadline, FirstTokenTimes, HedgeBudget, HedgeMetrics, HedgePolicy
from .policy import RoutePlan, RoutingPolicy, fallback_track, hedgeable, race_failure_outcome, race_winner

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
    ``hedged`` is True when a second call was started on the other track
    because the first had no first token by the hedge delay.
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
    hedged: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


class _FirstToken(threading.Event):
    """The ``first_token`` event a backend sets; remembers when it was first set."""

    def __init__(self) -> None:
        super().__init__()
        self.at: Optional[float] = None

    def set(self) -> None:
        if self.at is None:
            self.at = time.monotonic()
        super().set()


class _Leg:
    """One model call: what is needed to record it exactly once."""

    __slots__ = ("record_id", "track", "backend", "cancel", "first_token", "started", "deadline", "future",
                 "abandoned", "abandoned_at", "recorded", "sampled", "lock")

    def __init__(self, record_id: str, track: str, backend: Backend, timeout: float,
                 reports_first_token: bool = False) -> None:
        self.record_id = record_id
        self.track = track
        self.backend = backend
        self.cancel = threading.Event()
        # Only for a backend that reports its first token; others get no such argument.
        self.first_token: Optional[_FirstToken] = _FirstToken() if reports_first_token else None
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.future: "Future[_Status]" = Future()
        self.abandoned: Optional[str] = None  # "cancelled" or "timeout" once the router gave up on it
        self.abandoned_at = 0.0
        self.recorded = False
        self.sampled = False  # its first-token time has gone into the track's samples
        self.lock = threading.Lock()

    def first_token_seconds(self) -> Optional[float]:
        """Seconds from the start of the call to its first token, if it has come."""
        at = self.first_token.at if self.first_token is not None else None
        return None if at is None else max(0.0, at - self.started)


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
                 max_workers: int = 8, rng: Optional[random.Random] = None, hedge: Optional[HedgePolicy] = None,
                 first_token_deadline: Optional[FirstTokenDeadline] = None) -> None:
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
        if hedge is not None and not isinstance(hedge, HedgePolicy):
            raise ValueError(f"hedge: expected a HedgePolicy or None, got {hedge!r}")
        if first_token_deadline is not None and not isinstance(first_token_deadline, FirstTokenDeadline):
            raise ValueError(f"first_token_deadline: expected a FirstTokenDeadline or None, "
                             f"got {first_token_deadline!r}")
        self.optimizer = optimizer
        self.backends: Dict[str, Backend] = {"local": local, "api": api}
        # Checked once: whether each backend takes a first_token event.
        self._reports_first_token = {track: reports_first_token(b) for track, b in self.backends.items()}
        self.policy = policy if policy is not None else RoutingPolicy(optimizer, rng=rng)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dualtrack-router")
        self._live: Set[_Leg] = set()  # started, not yet recorded
        self._live_cond = threading.Condition()
        self._closed = False
        self._once = OnceLogger(log, limit=65)
        self.hedge = hedge
        self.first_token_deadline = first_token_deadline
        self.first_token_times: Dict[str, FirstTokenTimes] = {track: FirstTokenTimes() for track in TRACKS}
        self._hedge_budget = HedgeBudget(hedge.budget, hedge.burst) if hedge is not None else None
        self._hedge_metrics: Optional[HedgeMetrics] = None
        registry = getattr(optimizer, "registry", None)
        if hedge is not None and registry is not None:
            try:
                self._hedge_metrics = HedgeMetrics.for_registry(registry)
            except Exception as err:  # a registry that refuses the series: hedge anyway, uncounted
                self._warn("hedge metrics", err)

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
        watched = self._watch(leg, plan)
        if watched == "hedge":
            return self._route_hedged(rid, query, text, context, plan, started, leg)
        status = watched if isinstance(watched, BackendError) else self._await(leg)
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
        legs = []
        for track in plan.tracks:
            leg_timeout = min(_timeout(plan, track), _timeout(plan, "parallel"))
            legs.append(self._start(f"{rid}/{track}", track, query, text, context, leg_timeout))
        winner, errors, _ = self._race(legs, plan, race_deadline, preempt=plan.preempt)

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

    def _watch(self, leg: _Leg, plan: RoutePlan) -> Union[None, str, BackendError]:
        """Watch a single-track call while it has no first token (see ``router.hedging``).

        Returns ``"hedge"`` when a second call should start now, a
        ``BackendError`` when the call missed its first-token deadline (it is
        abandoned as a timeout; fall back), or ``None``: wait for it as usual.
        Both need somewhere else to go: a plan with a fallback and no
        immediate override (a machine limit that forced this track must not
        be undone by a hedge).
        """
        if plan.fallback is None or (self.hedge is None and self.first_token_deadline is None):
            return None
        times = self.first_token_times[leg.track]
        moments: List[Tuple[float, str]] = []
        budget = self._hedge_budget
        if self.hedge is not None and budget is not None and hedgeable(plan):
            budget.earn()
            delay = self.hedge.delay_seconds(times)
            if delay is not None:
                moments.append((leg.started + delay, "hedge"))
        if self.first_token_deadline is not None and leg.first_token is not None:
            limit = self.first_token_deadline.seconds(times)
            if limit is not None:
                moments.append((leg.started + limit, "deadline"))
        for at, what in sorted(moments):
            if at >= leg.deadline:
                return None  # the whole-answer timeout comes first
            wait([leg.future], timeout=max(0.0, at - time.monotonic()))
            if leg.future.done() or (leg.first_token is not None and leg.first_token.is_set()):
                return None  # answered, failed fast (the usual fallback) or alive
            if what == "hedge":
                if budget is not None and budget.spend():
                    return "hedge"
                self._count_hedge("throttled")
            else:
                self._sample_unfinished(leg)
                return self._abandon(leg, "timeout", f"no first token within {at - leg.started:.3f} s")
        return None

    def _route_hedged(self, rid: str, query: Prompt, text: str, context: Optional[Dict[str, Any]],
                      plan: RoutePlan, started: float, first: _Leg) -> RouterResult:
        """Race ``first`` against a second call on the other track; the first acceptable answer wins."""
        self._count_hedge("fired")
        track = other_track(first.track)
        second = self._start(rid + "/hedge", track, query, text, context, _timeout(plan, track))
        # Always preempt: the hedge is there to cut the wait, not to compare answers.
        winner, errors, losers = self._race([first, second], plan, math.inf, preempt=True)
        if first in losers:
            self._sample_unfinished(first)
        latency = time.monotonic() - started
        if winner is not None:
            leg, completion = winner
            self._count_hedge("won" if leg is second else "wasted")
            return RouterResult(completion.text, plan.path, leg.track, latency, completion.quality_score, False,
                                rid, plan, None, completion, hedged=True)
        error = errors[-1] if errors else BackendError("no answer", "error")
        return RouterResult(None, plan.path, None, latency, None, False, rid, plan, error, None, hedged=True)

    def _race(self, legs: List[_Leg], plan: RoutePlan, race_deadline: float, *, preempt: bool
              ) -> Tuple[Optional[Tuple[_Leg, Completion]], List[BackendError], List[_Leg]]:
        """Wait for running calls until one wins (:func:`race_winner`) or all have
        ended or run out of time; cancel the rest. Returns the winner (or
        ``None``), the failures, and the calls cancelled as losers."""
        pending: Dict["Future[_Status]", _Leg] = {leg.future: leg for leg in legs}
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
            winner = race_winner(answers, _quality, plan.quality_threshold, preempt=preempt, settled=False)
            if winner is not None:
                break
            now = time.monotonic()
            for future, leg in list(pending.items()):
                if now >= min(leg.deadline, race_deadline) + GRACE_SECONDS:
                    del pending[future]
                    errors.append(self._abandon(leg, "timeout"))
        losers = list(pending.values())
        for leg in losers:  # the losers of a preempted race
            self._abandon(leg, "cancelled")
        if winner is None:  # every call has ended or been given up on
            winner = race_winner(answers, _quality, plan.quality_threshold, preempt=preempt, settled=True)
        return winner, errors, losers

    def _count_hedge(self, outcome: str) -> None:
        if self._hedge_metrics is not None:
            self._safe("count hedge", self._hedge_metrics.count, outcome)

    # ------------------------------------------------------------ first-token samples

    def _sample(self, leg: _Leg, seconds: float) -> None:
        """Add one call's first-token time to its track's samples, once per call."""
        with leg.lock:
            if leg.sampled:
                return
            leg.sampled = True
        self.first_token_times[leg.track].add(seconds)

    def _sample_unfinished(self, leg: _Leg) -> None:
        """A call given up on for want of a first token: the time it waited is a
        lower bound of its first-token time. Without it, giving up on slow
        calls would hide them and the estimate would drift down."""
        if leg.first_token_seconds() is None:
            self._sample(leg, time.monotonic() - leg.started)

    # ------------------------------------------------------------ calls

    def _start(self, record_id: str, track: str, query: Prompt, text: str, context: Optional[Dict[str, Any]],
               timeout: float) -> _Leg:
        # The track goes with the start: the optimizer counts calls in flight per track
        # (the local server's queue, seen without waiting for a scrape).
        self._safe("record_request_start", self.optimizer.record_request_start, record_id, text,
                   dict(context or {}, track=track))
        leg = _Leg(record_id, track, self.backends[track], timeout, self._reports_first_token[track])
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
            if leg.first_token is not None:  # the backend declared reports_first_token
                backend: Any = leg.backend
                completion = backend.generate(query, timeout=remaining, cancel=leg.cancel,
                                              first_token=leg.first_token)
            else:
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

    def _abandon(self, leg: _Leg, why: str, message: Optional[str] = None) -> BackendError:
        """Stop waiting for ``leg``: tell it to cancel, record it when it returns."""
        with leg.lock:
            if leg.abandoned is None and not leg.recorded:
                leg.abandoned = why
                leg.abandoned_at = time.monotonic()
        leg.cancel.set()
        leg.future.add_done_callback(lambda future: self._record(leg, self._result(leg)))
        if why == "timeout":
            return BackendError(message or f"no answer within {leg.deadline - leg.started:.3f} s", "timeout",
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
            first_token = leg.first_token_seconds()
            if first_token is None and isinstance(status, Completion) and abandoned is None:
                first_token = status.first_token_seconds  # the backend's own measure
            if first_token is not None:
                result["time_to_first_token_ms"] = first_token * 1000.0
                self._sample(leg, first_token)
            elif abandoned is None and isinstance(status, Completion) and leg.first_token is None:
                # A backend that does not report its first token shows life with its answer.
                self._sample(leg, time.monotonic() - leg.started)
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
        self._once.warning((what, type(err).__name__), "dualtrack router: %s failed (%s); the request goes on",
                           what, type(err).__name__, exc_info=err)


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
