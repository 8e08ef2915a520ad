"""Recording LiteLLM calls through the optimizer: a ``CustomLogger``.

Every model call LiteLLM makes (``Router`` and ``litellm.completion`` alike,
sync and async, streamed or not) becomes one record, under the track of the
deployment that served it, with the reference router's conventions
(docs/router.md):

1. ``log_pre_api_call`` (just before the request goes out) records the start,
   keyed by LiteLLM's ``litellm_call_id`` (one per attempt, retries included);
2. the success or failure event records the completion: latency from
   LiteLLM's own start and end times (a sync call's success callback runs
   later, on LiteLLM's logging threads), tokens from ``usage``, cost from
   LiteLLM's ``response_cost``, the outcome mapped to dualtrack's (429 ->
   ``error``/``rate_limited``, timeouts -> ``timeout``, 5xx and connection
   failures -> ``error``/``unavailable``, the rest -> ``error``);
3. a stream's time to first token (``completionStartTime - startTime``) goes
   to the completion (``time_to_first_token_ms``: the common
   ``dualtrack_time_to_first_token_seconds``) and to
   ``dualtrack_litellm_time_to_first_token_seconds``; a call LiteLLM made
   as a retry or on a fallback model group is counted in
   ``dualtrack_litellm_retries_total`` / ``dualtrack_litellm_fallbacks_total``.

A call is recorded exactly once: the in-flight table is popped by whichever
of completion, failure or a cancelled race (:meth:`DualTrackRecorder.abandon`)
comes first, and a completion without a start is started on the spot.
Telemetry never breaks a call: every hook catches its own errors and logs
each kind once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

import litellm
from litellm.integrations.custom_logger import CustomLogger
from prometheus_client import CollectorRegistry, Counter, Histogram

from dualtrack._once import OnceLogger
from dualtrack.router.hedging import FirstTokenTimes
from dualtrack.vocabulary import TRACKS

from .._prompt import prompt_text
from .tracks import TRACK_KEY, deployment_track, infer_track

__all__ = ["CONTEXT_KEY", "LEG_KEY", "DualTrackRecorder", "LiteLLMMetrics", "outcome_of"]

log = logging.getLogger(__name__)

CONTEXT_KEY = "dualtrack_context"
"""``metadata`` key: the optimizer context of a call (``{"query_class": "long"}``, ``{"complexity": 0.9}``)."""

LEG_KEY = "dualtrack_leg"
"""``metadata`` key the parallel race puts on each leg, so a cancelled leg can be recorded."""

# What a chat or text generation is; embeddings, images, audio and batches are not model calls here.
GENERATION_CALLS = frozenset({"completion", "acompletion", "text_completion", "atext_completion",
                              "responses", "aresponses"})

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
_MAX_TRACKED = 65536  # calls in flight at once before the oldest are forgotten (streams never read to the end)
_RECENT = 4096  # finished call ids remembered, so a duplicate event is not recorded twice


class LiteLLMMetrics:
    """The integration's own series, in the optimizer's registry (created once per registry)."""

    _by_registry: "weakref.WeakKeyDictionary[CollectorRegistry, LiteLLMMetrics]" = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.retries = Counter("dualtrack_litellm_retries", "Model calls LiteLLM made as a retry within a model "
                               "group, by the track that served them.", ["path"], registry=registry)
        self.fallbacks = Counter("dualtrack_litellm_fallbacks", "Model calls LiteLLM made on a fallback model "
                                 "group (the first attempt of each hop), by track.", ["path"], registry=registry)
        self.ttft = Histogram("dualtrack_litellm_time_to_first_token_seconds", "Time to the first chunk of a "
                              "streamed LiteLLM call.", ["path", "query_class"], buckets=TTFT_BUCKETS,
                              registry=registry)
        self.single_track = Counter("dualtrack_litellm_parallel_single_track", "Parallel recommendations served "
                                    "on one track by the Router's routing hook (it can pick one deployment).",
                                    registry=registry)
        self.retries_by_track = {t: self.retries.labels(t) for t in TRACKS}
        self.fallbacks_by_track = {t: self.fallbacks.labels(t) for t in TRACKS}

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> "LiteLLMMetrics":
        with cls._lock:
            metrics = cls._by_registry.get(registry)
            if metrics is None:
                metrics = cls._by_registry[registry] = cls(registry)
            return metrics


@dataclass(slots=True)
class _Call:
    track: str
    text: str
    context: Optional[Dict[str, Any]]
    started: float  # monotonic
    leg: Optional[str]


def outcome_of(exc: Any) -> Tuple[str, str]:
    """(outcome, error type) of a failed LiteLLM call: 429 -> (error, rate_limited), a timeout ->
    (timeout, timeout), 5xx or a connection failure -> (error, unavailable), else (error, error)."""
    status = getattr(exc, "status_code", None)
    if isinstance(exc, (litellm.Timeout, TimeoutError)) or status == 408:
        return "timeout", "timeout"
    if isinstance(exc, litellm.RateLimitError) or status == 429:
        return "error", "rate_limited"
    if isinstance(exc, litellm.APIConnectionError) or (isinstance(status, int) and status >= 500):
        return "error", "unavailable"
    return "error", "error"


_EMPTY: Mapping[str, Any] = {}


def as_mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a mapping, else an empty one. LiteLLM passes dicts or ``None``: both are
    checked first, as a ``Mapping`` isinstance check costs more than the rest of a hook (the ABC's,
    from ``collections.abc``: ``typing.Mapping``'s costs three times as much again)."""
    if type(value) is dict:
        return value
    if value is None:
        return _EMPTY
    return value if isinstance(value, Mapping) else _EMPTY


def _model_info(params: Mapping[str, Any], metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    info = as_mapping(params.get("model_info"))
    return info if info else as_mapping(metadata.get("model_info"))


def _seconds(start: Any, end: Any) -> Optional[float]:
    if isinstance(start, datetime) and isinstance(end, datetime):
        return max(0.0, (end - start).total_seconds())
    if isinstance(start, (int, float)) and isinstance(end, (int, float)):
        return max(0.0, float(end) - float(start))
    return None


def _count(value: Any) -> Optional[int]:
    return value if type(value) is int and value >= 0 else None


def _answer_text(response: Any) -> Optional[str]:
    try:
        content = response.choices[0].message.content
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    return content if isinstance(content, str) else None


class DualTrackRecorder(CustomLogger):
    """Records every LiteLLM model call through ``optimizer`` (see the module docstring).

    Calls of the Routers passed to :meth:`attach` are recorded; other Routers'
    calls are not; calls made without a Router (``litellm.completion``) are
    recorded when ``record_direct_calls``. ``quality_scorer(messages, text)``
    (0..1 or ``None``) scores each answer. :func:`dualtrack.integrations.litellm.instrument`
    builds and registers one per optimizer.
    """

    def __init__(self, optimizer: Any, *, quality_scorer: Optional[Callable[[Any, str], Optional[float]]] = None,
                 record_direct_calls: bool = True) -> None:
        super().__init__()
        self.optimizer = optimizer
        self.metrics = LiteLLMMetrics.for_registry(optimizer.registry)
        self.quality_scorer = quality_scorer
        self.record_direct_calls = record_direct_calls
        self._routers: List[Any] = []
        self._tracks: Dict[str, Optional[str]] = {}  # deployment id -> track; None: another Router's
        self._inferred: Dict[Tuple[Any, Any, Any], str] = {}
        self._calls: Dict[str, _Call] = {}  # in flight, in start order
        self._legs: Dict[str, str] = {}  # race leg -> call id in flight
        self._recent: Deque[str] = deque(maxlen=_RECENT)
        self._recent_set: Set[str] = set()
        # The table's lock, taken bare on the hot path (a Condition's ``with`` runs Python code);
        # the condition is only notified while someone drains.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._drainers = 0
        self._recording = 0  # calls taken out of the table whose record is not written yet
        self._once = OnceLogger(log, limit=65)
        self._ttft: Dict[Tuple[str, str], Any] = {}
        self.failures = 0  # failed calls recorded so far (the routing strategy's cooldown cache reads it)
        # Per track, the recent first-token times of successful calls (hedging's delay); None until a
        # hedging handle asks for them (sample_first_tokens), so calls without hedging pay nothing.
        self.first_token_times: Optional[Dict[str, FirstTokenTimes]] = None

    # ------------------------------------------------------------ set-up

    def attach(self, router: Any, tracks: Mapping[str, str]) -> None:
        """Record ``router``'s calls; ``tracks`` maps its deployment ids to their tracks."""
        with self._lock:
            if not any(r is router for r in self._routers):
                self._routers.append(router)
            self._tracks.update(tracks)

    def sample_first_tokens(self) -> Dict[str, FirstTokenTimes]:
        """Start keeping each track's recent first-token times (a stream's first chunk, else the whole
        answer's time, as the reference router counts a backend without first tokens); returns them."""
        with self._lock:
            if self.first_token_times is None:
                self.first_token_times = {t: FirstTokenTimes() for t in TRACKS}
            return self.first_token_times

    def detach(self, router: Any) -> None:
        with self._lock:
            self._routers = [r for r in self._routers if r is not router]
            self._tracks.clear()  # rebuilt lazily from the Routers still attached

    # ------------------------------------------------------------ LiteLLM hooks

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        try:
            self._start(kwargs, messages)
        except Exception as err:  # telemetry never breaks a call
            self.warn_once("pre_api_call", err)

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._finish_safely(kwargs, response_obj, start_time, end_time, None)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._finish_safely(kwargs, response_obj, start_time, end_time, kwargs.get("exception") or Exception())

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._finish_safely(kwargs, response_obj, start_time, end_time, None)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._finish_safely(kwargs, response_obj, start_time, end_time, kwargs.get("exception") or Exception())

    # ------------------------------------------------------------ recording

    def _start(self, kwargs: Any, messages: Any) -> None:
        kwargs = as_mapping(kwargs)
        call_id = kwargs.get("litellm_call_id")
        if type(call_id) is not str or not _generation(kwargs):
            return
        params = as_mapping(kwargs.get("litellm_params"))
        metadata = as_mapping(params.get("metadata"))
        track = self._track_of(kwargs, params, metadata)
        if track is None:
            return
        call = self._new_call(kwargs, metadata, track, messages)
        with self._lock:
            if call_id in self._calls or call_id in self._recent_set:
                return
            if len(self._calls) >= _MAX_TRACKED:
                forgotten = next(iter(self._calls))
                dropped = self._calls.pop(forgotten)
                if dropped.leg is not None:
                    self._legs.pop(dropped.leg, None)
            self._calls[call_id] = call
            if call.leg is not None:
                self._legs[call.leg] = call_id
        self.optimizer.record_request_start(call_id, call.text, call.context)
        self._count_attempt(metadata, track)

    def _new_call(self, kwargs: Mapping[str, Any], metadata: Mapping[str, Any], track: str, messages: Any) -> _Call:
        if messages is None:
            messages = kwargs.get("messages") if kwargs.get("messages") is not None else kwargs.get("input")
        context = metadata.get(CONTEXT_KEY)
        # The call's track goes with its start: an API call in flight does not count against
        # max_concurrent_requests (the concurrency override steers away from local only).
        started = dict(as_mapping(context)) if context is not None else {}
        started["track"] = track
        leg = metadata.get(LEG_KEY)
        return _Call(track, prompt_text(messages), started, time.monotonic(), leg if type(leg) is str else None)

    def _count_attempt(self, metadata: Mapping[str, Any], track: str) -> None:
        # Read when the call starts: a sync call's metadata is shared with the attempts after it.
        # Falsy on a first attempt (absent or 0): one lookup each, then nothing to count.
        retries = metadata.get("attempted_retries")
        if retries and _count(retries):
            self.metrics.retries_by_track[track].inc()
            return
        fallbacks = metadata.get("attempted_fallbacks")
        if fallbacks and _count(fallbacks):
            self.metrics.fallbacks_by_track[track].inc()

    def _finish_safely(self, kwargs: Any, response: Any, start_time: Any, end_time: Any, exc: Any) -> None:
        try:
            self._finish(kwargs, response, start_time, end_time, exc)
        except Exception as err:  # telemetry never breaks a call
            self.warn_once("completion", err)

    def _finish(self, kwargs: Any, response: Any, start_time: Any, end_time: Any, exc: Any) -> None:
        kwargs = as_mapping(kwargs)
        call_id = kwargs.get("litellm_call_id")
        if type(call_id) is not str or not _generation(kwargs):
            return
        call = self._pop(call_id)
        params = as_mapping(kwargs.get("litellm_params"))
        metadata = as_mapping(params.get("metadata"))
        if call is not None:
            try:
                self._record(call_id, call, kwargs, metadata, response, start_time, end_time, exc)
            finally:
                self._recorded()
            return
        with self._lock:
            if call_id in self._recent_set:
                return  # already recorded: a second event for the same call
            self._remember(call_id)
        track = self._track_of(kwargs, params, metadata)
        if track is None:
            return
        call = self._new_call(kwargs, metadata, track, None)
        self.optimizer.record_request_start(call_id, call.text, call.context)
        self._count_attempt(metadata, track)
        self._record(call_id, call, kwargs, metadata, response, start_time, end_time, exc)

    def _record(self, call_id: str, call: _Call, kwargs: Mapping[str, Any], metadata: Mapping[str, Any],
                response: Any, start_time: Any, end_time: Any, exc: Any) -> None:
        slo = as_mapping(kwargs.get("standard_logging_object"))
        seconds = _seconds(start_time, end_time)
        if seconds is None:
            seconds = _seconds(slo.get("startTime"), slo.get("endTime"))
        result: Dict[str, Any] = {"model": _model_label(kwargs, metadata)}
        if seconds is not None:
            result["latency_ms"] = seconds * 1000.0
        if exc is None:
            self._success(call, kwargs, slo, response, result)
            times = self.first_token_times
            if times is not None:
                first_ms = result.get("time_to_first_token_ms", result.get("latency_ms"))
                if first_ms is not None:
                    times[call.track].add(first_ms / 1000.0)
            self.optimizer.record_request_completion(call_id, call.track, result, True, None)
        else:
            self.failures += 1
            outcome, error_type = outcome_of(exc)
            result["outcome"] = outcome
            self.optimizer.record_request_completion(call_id, call.track, result, False, error_type)

    def _success(self, call: _Call, kwargs: Mapping[str, Any], slo: Mapping[str, Any], response: Any,
                 result: Dict[str, Any]) -> None:
        result["outcome"] = "success"
        tokens_in = _count(slo.get("prompt_tokens"))
        tokens_out = _count(slo.get("completion_tokens"))
        if tokens_in is None or tokens_out is None:  # no logging payload: the response's own usage
            usage = getattr(response, "usage", None)
            if tokens_in is None:
                tokens_in = _count(getattr(usage, "prompt_tokens", None))
            if tokens_out is None:
                tokens_out = _count(getattr(usage, "completion_tokens", None))
        if tokens_in is not None:
            result["tokens_in"] = tokens_in
        if tokens_out is not None:
            result["tokens_out"] = tokens_out
        cost = kwargs.get("response_cost")
        if cost is None:
            cost = slo.get("response_cost")
        if isinstance(cost, (int, float)) and not isinstance(cost, bool) and cost >= 0:
            result["cost"] = float(cost)
        if self.quality_scorer is not None:
            quality = self.score(kwargs.get("messages"), response)
            if quality is not None:
                result["quality_score"] = quality
        if slo.get("stream"):
            first = _seconds(slo.get("startTime"), slo.get("completionStartTime"))
            if first is not None and first > 0:
                # The common histogram (dualtrack_time_to_first_token_seconds), as every integration records it.
                result["time_to_first_token_ms"] = first * 1000.0
                query_class = self.optimizer.get_optimization_recommendations(call.text, call.context)["query_class"]
                key = (call.track, query_class)
                child = self._ttft.get(key)
                if child is None:
                    child = self._ttft[key] = self.metrics.ttft.labels(*key)
                child.observe(first)

    def score(self, messages: Any, response: Any) -> Optional[float]:
        """The quality scorer's verdict on ``response`` (``None``: unknown, or the scorer failed)."""
        text = _answer_text(response)
        if self.quality_scorer is None or text is None:
            return None
        try:
            value = self.quality_scorer(messages, text)
        except Exception as err:  # a scorer bug must not fail the answer
            self.warn_once("quality_scorer", err)
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            return None
        return float(value)

    def abandon(self, leg: str, outcome: str) -> None:
        """Record the call in flight for race ``leg`` as ``outcome`` (cancelled or timeout), if there is one.

        A leg cancelled before LiteLLM sent it made no model call and is not recorded.
        """
        call_id = self._legs.get(leg)
        call = self._pop(call_id) if call_id is not None else None  # None: its completion came first
        if call_id is None or call is None:
            return
        result: Dict[str, Any] = {"outcome": outcome}
        if outcome == "timeout":
            result["latency_ms"] = (time.monotonic() - call.started) * 1000.0
        try:
            self.optimizer.record_request_completion(call_id, call.track, result, False, outcome)
        except Exception as err:
            self.warn_once("abandon", err)
        finally:
            self._recorded()

    def _pop(self, call_id: str) -> Optional[_Call]:
        with self._lock:
            call = self._calls.pop(call_id, None)
            if call is not None:
                if call.leg is not None and self._legs.get(call.leg) == call_id:
                    del self._legs[call.leg]
                self._remember(call_id)
                self._recording += 1  # out of the table, not yet recorded: drain() waits for it
            return call

    def _recorded(self) -> None:
        """A call taken out of the table has been recorded (or failed to be): wake drain()
        once nothing is left, neither in flight nor being recorded."""
        with self._lock:
            self._recording -= 1
            if self._drainers and not self._calls and not self._recording:
                self._cond.notify_all()

    def _remember(self, call_id: str) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(call_id)
        self._recent_set.add(call_id)

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Wait until every started call has been recorded; True if that happened within ``timeout``.

        A sync call's completion is recorded on LiteLLM's logging threads after
        the call returns: tests and shutdown wait here.
        """
        with self._cond:
            self._drainers += 1
            try:
                return self._cond.wait_for(lambda: not self._calls and not self._recording, timeout)
            finally:
                self._drainers -= 1

    async def adrain(self, timeout: Optional[float] = None) -> bool:
        """:meth:`drain` for a running event loop: LiteLLM records async calls from tasks on that loop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._calls or self._recording:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def in_flight(self) -> int:
        """Calls started and not yet recorded."""
        return len(self._calls)

    # ------------------------------------------------------------ which calls, which track

    def _track_of(self, kwargs: Mapping[str, Any], params: Mapping[str, Any],
                  metadata: Mapping[str, Any]) -> Optional[str]:
        """The call's track, or ``None`` when the call is not this recorder's to record."""
        info = _model_info(params, metadata)
        deployment_id = info.get("id")
        if type(deployment_id) is str and metadata.get("model_group") is not None:
            if deployment_id in self._tracks:
                return self._tracks[deployment_id]
            return self._router_track(deployment_id)
        if not self.record_direct_calls:
            return None
        tag = info.get(TRACK_KEY)
        if tag in TRACKS:
            return str(tag)
        key = (kwargs.get("custom_llm_provider") or params.get("custom_llm_provider"),
               params.get("api_base") or kwargs.get("api_base"), kwargs.get("model"))
        track = self._inferred.get(key)
        if track is None:
            track = infer_track(key[2], provider=key[0], api_base=key[1])
            if len(self._inferred) < 1024:
                self._inferred[key] = track
        return track

    def _router_track(self, deployment_id: str) -> Optional[str]:
        # A deployment added at run time, or another Router's: look it up once.
        track: Optional[str] = None
        for router in list(self._routers):
            deployment = router.registry().deployment_dict(deployment_id) if hasattr(router, "registry") else None
            if deployment:
                track = deployment_track(deployment)
                break
        with self._lock:
            if len(self._tracks) < 65536:
                self._tracks[deployment_id] = track
        return track

    def warn_once(self, what: str, err: BaseException) -> None:
        self._once.warning((what, type(err).__name__), "dualtrack LiteLLM recorder: %s failed (%s); the call goes on",
                           what, type(err).__name__, exc_info=err)


def _generation(kwargs: Mapping[str, Any]) -> bool:
    # LiteLLM's CallTypes is a str enum: its members hash and compare as their values.
    call_type = kwargs.get("call_type")
    return call_type is None or call_type in GENERATION_CALLS


def _model_label(kwargs: Mapping[str, Any], metadata: Mapping[str, Any]) -> str:
    """The deployment's model as written in the model list (``ollama/llama3``), else provider/model."""
    deployment = metadata.get("deployment")
    if isinstance(deployment, str) and deployment:
        return deployment
    model = kwargs.get("model")
    provider = kwargs.get("custom_llm_provider")
    if isinstance(model, str) and isinstance(provider, str) and provider and not model.startswith(provider + "/"):
        return f"{provider}/{model}"
    return str(model or "unknown")
