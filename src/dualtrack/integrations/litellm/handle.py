"""``instrument(router, optimizer)``: one call wires a ``litellm.Router`` to a dualtrack optimizer.

It registers the recorder (every LiteLLM call recorded, see ``recorder``)
and the routing hook (dual-track model groups follow the optimizer, see
``routing``), and returns a :class:`DualTrackLiteLLM` handle whose
:meth:`~DualTrackLiteLLM.acompletion` also races a ``parallel`` recommendation
on both tracks, as the reference router does.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Tuple

import litellm

from dualtrack.router.hedging import HedgeBudget, HedgeMetrics, HedgePolicy
from dualtrack.router.policy import RoutePlan, RoutingPolicy, race_failure_outcome, race_winner
from dualtrack.vocabulary import TRACKS, other_track

from .._prompt import prompt_text
from .recorder import CONTEXT_KEY, LEG_KEY, DualTrackRecorder, LiteLLMMetrics, outcome_of
from .routing import DualTrackFilter, DualTrackStrategy, TrackChooser, timeout_for
from .tracks import TRACK_KEY

__all__ = ["ROUTING_MODES", "DualTrackLiteLLM", "instrument"]

ROUTING_MODES = ("strategy", "filter", None)
"""``instrument(routing=...)``: LiteLLM's custom routing strategy (sync and async), a deployment
filter (async only, keeps the Router's strategy), or no routing (record only)."""

QualityScorer = Callable[[Any, str], Optional[float]]

# One recorder per optimizer: LiteLLM's callbacks are process-wide, so two would record each call twice.
_recorders: Dict[int, Tuple[Any, DualTrackRecorder, int]] = {}
_recorders_lock = threading.Lock()


def instrument(router: Any, optimizer: Any, *, routing: Optional[str] = "strategy",
               policy: Optional[RoutingPolicy] = None, rng: Optional[random.Random] = None,
               quality_scorer: Optional[QualityScorer] = None,
               record_direct_calls: bool = True, hedge: Optional[HedgePolicy] = None) -> "DualTrackLiteLLM":
    """Wire ``router`` (a ``litellm.Router``, or ``None`` to record ``litellm.completion`` calls only)
    to ``optimizer``.

    ``routing``: see :data:`ROUTING_MODES`. ``policy`` (a
    :class:`~dualtrack.router.policy.RoutingPolicy`; default
    ``RoutingPolicy(optimizer, rng=rng)``) sets the exploration floor,
    preemption and whether a retry goes to the other track.
    ``quality_scorer(messages, text) -> 0..1 | None`` scores answers (quality
    is unknown without it). ``record_direct_calls``: also record calls made
    without a Router. ``hedge`` (a :class:`~dualtrack.router.hedging.HedgePolicy`;
    off by default): :meth:`DualTrackLiteLLM.acompletion` hedges a slow
    single-track call on the other track. A deployment tag other than
    ``local``/``api`` is a ``ValueError`` here. ``close()`` undoes it (the
    handle is a context manager).
    """
    if routing not in ROUTING_MODES:
        raise ValueError(f"routing: expected one of {list(ROUTING_MODES)}, got {routing!r}")
    if hedge is not None and not isinstance(hedge, HedgePolicy):
        raise ValueError(f"hedge: expected a dualtrack.router.hedging.HedgePolicy or None, got {hedge!r}")
    if hedge is not None and (router is None or routing is None):
        raise ValueError("hedge: needs a Router and routing ('strategy' or 'filter'): the first call of a "
                         "hedged request must go where dualtrack planned it")
    if router is None and routing is not None:
        routing = None  # nothing to route: record litellm.completion calls only
    if policy is not None and rng is not None:
        raise ValueError("policy and rng: give the rng to the policy you pass")
    policy = policy if policy is not None else RoutingPolicy(optimizer, rng=rng)
    chooser: Optional[TrackChooser] = None
    tracks: Dict[str, str] = {}
    if router is not None:
        if not callable(getattr(router, "registry", None)):
            raise ValueError(f"router: expected a litellm.Router (litellm>=1.110), got {type(router).__name__}")
        chooser = TrackChooser(router, policy, LiteLLMMetrics.for_registry(optimizer.registry))
        tracks = chooser.deployment_tracks()  # validates the tags before anything is registered
    recorder = _acquire_recorder(optimizer, quality_scorer, record_direct_calls)
    try:
        if router is not None:
            recorder.attach(router, tracks)
        if chooser is not None:
            chooser.failures = lambda: recorder.failures  # a failure may have started a cooldown: read it again
        hook: Any = None
        if routing == "strategy" and chooser is not None:
            hook = DualTrackStrategy(chooser)
            router.register_plugin(hook)
        elif routing == "filter" and chooser is not None:
            hook = DualTrackFilter(chooser)
            litellm.logging_callback_manager.add_litellm_callback(hook)
    except BaseException:
        if router is not None:
            recorder.detach(router)
        _release_recorder(optimizer)
        raise
    return DualTrackLiteLLM(router, optimizer, recorder, chooser, routing, hook, hedge)


def _acquire_recorder(optimizer: Any, quality_scorer: Optional[QualityScorer],
                      record_direct_calls: bool) -> DualTrackRecorder:
    with _recorders_lock:
        entry = _recorders.get(id(optimizer))
        if entry is not None and entry[0] is optimizer:
            recorder = entry[1]
            _recorders[id(optimizer)] = (optimizer, recorder, entry[2] + 1)
            if quality_scorer is not None:
                recorder.quality_scorer = quality_scorer
            recorder.record_direct_calls = recorder.record_direct_calls or record_direct_calls
            return recorder
        recorder = DualTrackRecorder(optimizer, quality_scorer=quality_scorer,
                                     record_direct_calls=record_direct_calls)
        _recorders[id(optimizer)] = (optimizer, recorder, 1)
    litellm.logging_callback_manager.add_litellm_callback(recorder)
    return recorder


def _release_recorder(optimizer: Any) -> None:
    with _recorders_lock:
        entry = _recorders.get(id(optimizer))
        if entry is None or entry[0] is not optimizer:
            return
        if entry[2] > 1:
            _recorders[id(optimizer)] = (optimizer, entry[1], entry[2] - 1)
            return
        del _recorders[id(optimizer)]
    litellm.logging_callback_manager.remove_callback_from_all_lists(entry[1])


class DualTrackLiteLLM:
    """What :func:`instrument` wired: ``router``, ``optimizer``, ``recorder``, ``routing`` (the mode)
    and ``hook`` (the :class:`DualTrackStrategy` or :class:`DualTrackFilter` registered, or ``None``).

    ``await handle.acompletion(model=..., messages=...)`` is ``router.acompletion``
    that also races a ``parallel`` plan; ``drain()`` waits for records;
    ``close()`` stops recording and steering (the strategy, which LiteLLM
    cannot unregister, then picks like simple-shuffle).
    """

    def __init__(self, router: Any, optimizer: Any, recorder: DualTrackRecorder, chooser: Optional[TrackChooser],
                 routing: Optional[str], hook: Any, hedge: Optional[HedgePolicy] = None) -> None:
        self.router = router
        self.optimizer = optimizer
        self.recorder = recorder
        self.routing = routing
        self._chooser = chooser
        self.hook = hook
        self.hedge = hedge
        self._hedge_budget = HedgeBudget(hedge.budget, hedge.burst) if hedge is not None else None
        self._hedge_metrics: Optional[HedgeMetrics] = None
        if hedge is not None:
            recorder.sample_first_tokens()
            try:
                self._hedge_metrics = HedgeMetrics.for_registry(optimizer.registry)
            except Exception as err:  # a registry that refuses the series: hedge anyway, uncounted
                recorder.warn_once("hedge metrics", err)
        self._closed = False

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Undo :func:`instrument` (idempotent); records of calls in flight are still written."""
        if self._closed:
            return
        self._closed = True
        if self._chooser is not None:
            self._chooser.enabled = False
        if isinstance(self.hook, DualTrackFilter):
            litellm.logging_callback_manager.remove_callback_from_all_lists(self.hook)
        if self.router is not None:
            self.recorder.detach(self.router)
        _release_recorder(self.optimizer)

    def __enter__(self) -> "DualTrackLiteLLM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Wait until every started call has been recorded (sync calls are recorded on LiteLLM's
        logging threads, after they return); True if that happened within ``timeout``."""
        return self.recorder.drain(timeout)

    async def adrain(self, timeout: Optional[float] = None) -> bool:
        """:meth:`drain` from async code: LiteLLM records async calls from tasks on the running loop."""
        return await self.recorder.adrain(timeout)

    # ------------------------------------------------------------ the race

    async def acompletion(self, model: str, messages: List[Dict[str, Any]], **kwargs: Any) -> Any:
        """``router.acompletion``, except that a ``parallel`` plan races both tracks.

        Each leg is a ``router.acompletion`` forced onto its track
        (``metadata["dualtrack_track"]``), with its track's timeout capped by
        the ``parallel`` one; the first acceptable answer (quality at least the
        class's ``quality_threshold``, or unknown) wins and the other leg is
        cancelled (recorded ``cancelled``, with what it incurred when LiteLLM
        reports it). Without preemption both legs finish and the better answer
        wins. The request itself is recorded once on path ``parallel``
        (end-to-end latency, the winner's quality). When both legs fail, the
        last failure is raised. Streams are not raced (a stream is returned
        before its answer exists): they take one track like ``router.acompletion``.

        With ``instrument(..., hedge=HedgePolicy())`` a single-track plan is
        hedged: its call goes to the planned track (a retry to the other, as
        usual); when it has not answered by the hedge delay (the track's recent
        p95 time to an answer, or ``HedgePolicy.delay``) and the budget has
        credit, a second call starts on the other track, the first acceptable
        answer wins and the other call is cancelled (recorded ``cancelled``);
        counted in ``dualtrack_hedges_total``.
        """
        chooser = self._chooser
        if chooser is None or not chooser.enabled or kwargs.get("stream") or not self._dual_track(model):
            return await self.router.acompletion(model=model, messages=messages, **kwargs)
        metadata = kwargs.get("metadata")
        metadata = dict(metadata) if isinstance(metadata, Mapping) else {}
        if metadata.get(TRACK_KEY) in TRACKS:
            return await self.router.acompletion(model=model, messages=messages, **kwargs)
        context = metadata.get(CONTEXT_KEY)
        context = dict(context) if isinstance(context, Mapping) else None
        text = prompt_text(messages)
        plan = chooser.policy.plan(text, context)
        if plan.path == "parallel":
            return await self._race(model, messages, kwargs, metadata, plan, text, context)
        if self.hedge is not None and plan.fallback is not None and not plan.recommendation.get("overrides"):
            # Not when an immediate override chose the track (a machine limit a hedge must not undo).
            return await self._hedged(model, messages, kwargs, metadata, plan)
        return await self.router.acompletion(model=model, messages=messages, **kwargs)

    def _dual_track(self, model: str) -> bool:
        assert self._chooser is not None
        return len(self._chooser.group(model).tracks) == len(TRACKS)

    async def _race(self, model: str, messages: List[Dict[str, Any]], kwargs: Dict[str, Any],
                    metadata: Dict[str, Any], plan: RoutePlan, text: str,
                    context: Optional[Dict[str, Any]]) -> Any:
        optimizer, recorder = self.optimizer, self.recorder
        rid = uuid.uuid4().hex
        started = time.monotonic()
        self._safe(optimizer.record_request_start, rid, text, dict(context or {}, path="parallel"))
        race_seconds = timeout_for(plan, "parallel")
        legs: Dict["asyncio.Task[Any]", str] = {}
        for track in plan.tracks:
            leg_kwargs = dict(kwargs, metadata=dict(metadata, **{TRACK_KEY: track, LEG_KEY: f"{rid}/{track}"}))
            if leg_kwargs.get("timeout") is None:
                leg_kwargs["timeout"] = min(timeout_for(plan, track), race_seconds)
            task = asyncio.ensure_future(self.router.acompletion(model=model, messages=messages, **leg_kwargs))
            task.add_done_callback(_retrieve)
            legs[task] = track
        answers: List[Tuple[str, Any, Optional[float]]] = []
        failures: List[Tuple[str, BaseException]] = []
        winner: Optional[Tuple[str, Any, Optional[float]]] = None
        pending = set(legs)
        deadline = started + race_seconds
        timed_out = False
        while pending and winner is None:
            done, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()),
                                               return_when=asyncio.FIRST_COMPLETED)
            if not done:
                timed_out = True
                break
            for task in done:
                error = task.exception()
                if error is None:
                    response = task.result()
                    answers.append((legs[task], response, recorder.score(messages, response)))
                else:
                    failures.append((legs[task], error))
            winner = race_winner(answers, lambda a: a[2], plan.quality_threshold, preempt=plan.preempt,
                                 settled=not pending)
        for task in pending:  # the loser of a won race, or every leg still out when time ran out
            task.cancel()
            recorder.abandon(f"{rid}/{legs[task]}", "timeout" if timed_out else "cancelled")
        if winner is not None:
            result: Dict[str, Any] = {"outcome": "success"}
            if winner[2] is not None:
                result["quality_score"] = winner[2]
            self._safe(optimizer.record_request_completion, rid, "parallel", result, True, None)
            return winner[1]
        kinds = [outcome_of(err)[0] for _, err in failures] + (["timeout"] * len(pending) if timed_out else [])
        outcome = race_failure_outcome(kinds)
        self._safe(optimizer.record_request_completion, rid, "parallel", {"outcome": outcome}, False, outcome)
        if failures:
            raise failures[-1][1]
        raise litellm.Timeout(message=f"dualtrack: no answer from either track within {race_seconds:g} s",
                              model=model, llm_provider="dualtrack")

    async def _hedged(self, model: str, messages: List[Dict[str, Any]], kwargs: Dict[str, Any],
                      metadata: Dict[str, Any], plan: RoutePlan) -> Any:
        """One call on the plan's track; a second on the other track if the first is slow (acompletion)."""
        assert self.hedge is not None and self._hedge_budget is not None and self._chooser is not None
        budget, recorder = self._hedge_budget, self.recorder
        times = recorder.sample_first_tokens()
        budget.earn()
        rid = uuid.uuid4().hex
        first_track = plan.path
        trace = kwargs.get("litellm_trace_id")
        trace = trace if isinstance(trace, str) and trace else rid
        # The routing hook takes this plan for the first attempt (not a second draw), so the track
        # is known; LiteLLM's retries still go to the other track.
        self._chooser.seed(trace, model, plan, kwargs.get("timeout") is not None)
        legs: Dict["asyncio.Task[Any]", str] = {}
        first_kwargs = dict(kwargs, litellm_trace_id=trace, metadata=dict(metadata, **{LEG_KEY: f"{rid}/first"}))
        started = time.monotonic()
        first = asyncio.ensure_future(self.router.acompletion(model=model, messages=messages, **first_kwargs))
        first.add_done_callback(_retrieve)
        legs[first] = f"{rid}/first"
        pending = {first}
        try:
            delay = self.hedge.delay_seconds(times[first_track])
            if delay is not None:
                done, pending = await asyncio.wait(pending, timeout=delay)
            if delay is None or not pending:
                return await first  # answered or failed before the delay (a failure fell back as usual)
            state = self._chooser.planned(trace, model)
            if state is None or state.seeded or state.track != first_track:
                # Its first attempt failed and LiteLLM's retry is on the other track already (or a
                # cooldown sent it there): a fallback is not hedged, as in the reference router. Nor
                # is a call the routing hook has not placed (yet), whose track is not known.
                return await first
            if not budget.spend():
                self._count_hedge("throttled")
                return await first
            self._count_hedge("fired")
            second_track = other_track(first_track)
            second_kwargs = dict(kwargs, metadata=dict(metadata, **{TRACK_KEY: second_track,
                                                                    LEG_KEY: f"{rid}/hedge"}))
            second_kwargs.pop("litellm_trace_id", None)  # a request of its own for LiteLLM's retries
            if second_kwargs.get("timeout") is None:
                second_kwargs["timeout"] = timeout_for(plan, second_track)
            second = asyncio.ensure_future(self.router.acompletion(model=model, messages=messages, **second_kwargs))
            second.add_done_callback(_retrieve)
            legs[second] = f"{rid}/hedge"
            pending = {first, second}
            answers: List[Tuple["asyncio.Task[Any]", Any, Optional[float]]] = []
            failures: List[BaseException] = []
            winner: Optional[Tuple["asyncio.Task[Any]", Any, Optional[float]]] = None
            while pending and winner is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is None:
                        answers.append((task, task.result(), recorder.score(messages, task.result())))
                    else:
                        failures.append(error)
                # Always preempt: the hedge is there to cut the wait, not to compare answers.
                winner = race_winner(answers, lambda a: a[2], plan.quality_threshold, preempt=True,
                                     settled=not pending)
            if winner is not None:
                self._count_hedge("won" if winner[0] is second else "wasted")
                return winner[1]
            raise failures[-1]
        finally:
            for task in pending:  # the loser, or every call still out when this request was cancelled
                if task.done() and not task.cancelled():  # it ended: LiteLLM's own events record it
                    continue
                task.cancel()
                recorder.abandon(legs[task], "cancelled")
                if task is first:  # how long it went without an answer: a lower bound, kept (hedging docs)
                    times[first_track].add(time.monotonic() - started)

    def _count_hedge(self, outcome: str) -> None:
        if self._hedge_metrics is not None:
            self._safe(self._hedge_metrics.count, outcome)

    def _safe(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as err:  # telemetry never breaks a request
            self.recorder.warn_once(getattr(fn, "__name__", "optimizer"), err)


def _retrieve(task: "asyncio.Task[Any]") -> None:
    """Read a finished leg's exception so asyncio does not report a cancelled loser's as never retrieved."""
    if not task.cancelled():
        task.exception()
