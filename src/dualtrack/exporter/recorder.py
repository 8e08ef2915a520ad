"""``RequestRecorder``: the per-request instrumentation behind the facade's
``record_request_start`` and ``record_request_completion``.

It owns the in-flight table, validates each ``result`` dict field by field,
observes the Prometheus metrics (``exporter.metrics``) and feeds the sliding
windows (``exporter.collector``). The request path is cheap and never raises:
starts and completions cost a few dict operations and the metric updates;
bad input is repaired or rejected and counted in
``dualtrack_inputs_rejected_total``; internal errors are counted in
``dualtrack_optimizer_errors_total`` and logged once. Resource readings come
from the background monitor, never a system call per request.

No lock on the hot path: every step on the in-flight table is one operation
on a dict (pop, setitem, len), atomic in CPython. Two Python locks per request
made threads queue behind whichever holder the GIL had preempted: 2-3x the
single-thread cost per request at 8-16 threads (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import math
import threading
from itertools import islice
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple

from prometheus_client import CollectorRegistry, Counter

from .._once import OnceLogger
from ..clock import Clock
from ..config import OptimizationConfig
from ..constraints import MB, MachineState
from ..vocabulary import OTHER, OUTCOMES, RATE_LIMITED
from .collector import MetricsCollector, PerformanceMetrics
from .metrics import RequestMetrics
from .query_classes import QueryClassifier

log = logging.getLogger(__name__)


class MachineUsage(MachineState, Protocol):
    """A machine reading as the per-request record reads it (``exporter.readings.ResourceSnapshot``)."""

    @property
    def gpu_utilization_ratio(self) -> Optional[float]: ...

#: An in-flight entry: (monotonic start, query class, track when the start named it).
_Started = Tuple[float, str, Optional[str]]
_NO_START_TIME = -1.0
_MAX_TOKENS = 10**9  # per request and direction; more is a unit mistake
_SWEEP_EVERY = 1024  # starts between sweeps of the in-flight table


def _usage_of(snap: Optional[MachineUsage]) -> Tuple[float, float, float]:
    """(memory MB, CPU %, GPU %) of a snapshot for ``PerformanceMetrics``; 0.0 where absent."""
    if snap is None:
        return 0.0, 0.0, 0.0
    gpu = snap.gpu_utilization_ratio
    return (snap.process_memory_bytes / MB if snap.process_memory_bytes else 0.0,
            snap.cpu_ratio * 100.0 if snap.cpu_ratio is not None else 0.0,
            gpu * 100.0 if gpu is not None else 0.0)


class RequestRecorder:
    """Records request starts and completions; never raises.

    ``snapshot`` returns the latest machine reading (or ``None``); the
    usage fields of ``PerformanceMetrics`` are derived from it once per reading.
    """

    def __init__(self, config: OptimizationConfig, *, clock: Clock, registry: CollectorRegistry,
                 metrics: RequestMetrics, collector: MetricsCollector, classifier: QueryClassifier,
                 snapshot: Callable[[], Optional[MachineUsage]]) -> None:
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.collector = collector
        self.classifier = classifier
        self._snapshot = snapshot
        self.once = OnceLogger(log)
        self._errors = Counter("dualtrack_optimizer_errors", "Internal errors caught by the optimizer, by component.",
                               ["component"], registry=registry)
        # In-flight tables: request id -> (monotonic start, query class, track), in
        # start order. ``_calls`` holds what counts as a model call (a
        # single-track request, a parallel request's legs), ``_parents`` the
        # parallel requests themselves (timed, not counted as calls). Bounded:
        # entries older than the TTL are swept out (and counted).
        self._calls: Dict[Any, _Started] = {}
        self._parents: Dict[Any, _Started] = {}
        # The ids of the calls in ``_calls`` whose start named the API track: they do not
        # load the machine, so the concurrency override leaves them out (``machine_calls_in_flight``).
        self._api_calls: Dict[Any, None] = {}
        self._sweep_lock = threading.Lock()  # one sweeper at a time; never taken per request
        self._starts_since_sweep = 0
        # Also sweep on time, not only every _SWEEP_EVERY starts: at low traffic
        # orphans would otherwise outlive their TTL indefinitely (and pin the
        # concurrency override on).
        self._sweep_period = config.inflight_ttl_seconds / 10.0
        self._next_sweep = self.clock.monotonic() + self._sweep_period
        self._usage: Tuple[Any, float, float, float] = (object(), 0.0, 0.0, 0.0)  # (snapshot, derived usage)

    def in_flight_count(self) -> int:
        """Model calls started and not completed (parallel requests count by their legs)."""
        return len(self._calls)

    def machine_calls_in_flight(self) -> int:
        """Model calls in flight that may be running on this machine: all but those whose start
        named the API track (``context["track"] == "api"``). The concurrency override counts these:
        API calls in flight load nothing that steering away from local would relieve."""
        return max(0, len(self._calls) - len(self._api_calls))

    def calls_in_flight(self, track: str) -> int:
        """Model calls in flight on ``track``, of those whose start named it (``context["track"]``:
        the reference router names it). Counted when asked, once per cycle or scrape: free per request."""
        return sum(1 for entry in self._started() if entry[2] == track)

    def call_ages(self, track: str) -> List[Tuple[str, float]]:
        """(query class, seconds it has run so far) of each model call in flight on ``track`` (of
        those whose start named it), oldest first. Listed when asked (once per machine reading)."""
        now = self.clock.monotonic()
        return [(entry[1], now - entry[0]) for entry in self._started() if entry[2] == track]

    def _started(self) -> List[_Started]:
        try:
            return list(self._calls.values())
        except RuntimeError:  # changed during iteration (free-threaded builds): try once more
            return list(self._calls.values())

    def sweep_if_due(self, now: float) -> None:
        """Expire orphans past their TTL when a sweep is due (cheap when it is not)."""
        if now >= self._next_sweep:
            self.sweep(now)

    def start(self, request_id: str, query: str, context: Optional[Mapping[str, Any]] = None) -> None:
        """Record the start of a request. Latency is measured from here (monotonic clock)."""
        try:
            if not _hashable(request_id):
                # A list or dict cannot key the in-flight table: bad input, counted;
                # its completion is then recorded as one without a start.
                self.reject("start", "unhashable_request_id", request_id)
                return
            if context is not None and type(context) is not dict and not isinstance(context, Mapping):
                self.reject("start", "context_not_a_mapping", type(context).__name__)
                context = None  # the request is still timed, classified by its query alone
            qc = self.classifier.classify(query, context)
            now = self.clock.monotonic()
            # A parallel request's legs are recorded as their own calls; the
            # request itself is tracked for its latency but is not extra work.
            counted = not (context and context.get("path") == "parallel")
            calls, parents = self._calls, self._parents
            # pop, then insert: the table stays in start order for the sweep
            previous_call = calls.pop(request_id, None)
            previous = previous_call or parents.pop(request_id, None)
            track = context.get("track") if context else None
            (calls if counted else parents)[request_id] = (now, qc, track)
            if track == "api" and counted:
                self._api_calls[request_id] = None
            elif previous_call is not None:
                self._api_calls.pop(request_id, None)
            if previous is not None:
                self.reject("start", "duplicate_request_id", request_id)
                if previous_call is not None:
                    self.metrics.in_flight.dec()
            if counted:
                self.metrics.in_flight.inc()
            # A racy count is fine here: it only decides when to sweep.
            self._starts_since_sweep += 1
            if (self._starts_since_sweep >= _SWEEP_EVERY or now >= self._next_sweep
                    or len(calls) + len(parents) > self.config.max_inflight_tracked):
                self.sweep(now)
        except Exception as err:  # never break the caller's request
            self.internal_error("record_request_start", err)

    def sweep(self, now: float) -> None:
        if not self._sweep_lock.acquire(blocking=False):
            return  # another thread is sweeping
        try:
            self._starts_since_sweep = 0
            self._next_sweep = now + self._sweep_period
            deadline = now - self.config.inflight_ttl_seconds
            overflow = len(self._calls) + len(self._parents) - self.config.max_inflight_tracked
            calls, overflow = _expire(self._calls, deadline, overflow, self._api_calls)
            parents, _ = _expire(self._parents, deadline, overflow)
        finally:
            self._sweep_lock.release()
        expired = calls + parents
        if calls:
            self.metrics.in_flight.dec(calls)
        if expired:
            self.metrics.starts_expired.inc(expired)
            self.once.warning(("expired",), "%d started requests were never completed and expired "
                               "(counted in dualtrack_request_starts_expired_total)", expired)

    def complete(self, request_id: str, processing_path: str, result: Any,
                 success: bool = True, error_type: Optional[str] = None) -> None:
        """Record the completion of a request (the ``result`` keys:
        ``DualTrackOptimizer.record_request_completion``). Never raises."""
        try:
            self._complete(request_id, processing_path, result, success, error_type)
        except Exception as err:
            self.internal_error("record_request_completion", err)

    def _complete(self, request_id: str, processing_path: str, result: Any, success: bool,
                  error_type: Optional[str]) -> None:
        # Hot path: the common case (a plain dict of valid values) takes the
        # inline fast checks; anything else goes through the full validators.
        now = self.clock.monotonic()
        metrics = self.metrics
        start = None
        if _hashable(request_id):  # an unhashable id was never started (see record_request_start)
            start = self._calls.pop(request_id, None)
            if start is not None:
                metrics.in_flight.dec()
                if start[2] == "api":
                    self._api_calls.pop(request_id, None)
            else:
                start = self._parents.pop(request_id, None)
        if start is not None:
            started, qc = start[0], start[1]
        else:
            metrics.completions_without_start.inc()
            started, qc = _NO_START_TIME, OTHER
        # ``type() is dict`` first: isinstance against the Mapping ABC costs ~1 us.
        if type(result) is not dict and not isinstance(result, Mapping):
            if result is not None:
                self.reject("result", "not_a_mapping", type(result).__name__)
            result = {}
        get = result.get
        path = metrics.fold_path(processing_path)
        if start is None and "query_class" in result:
            qc = metrics.fold_class(get("query_class"))

        outcome = get("outcome")
        if outcome is not None and outcome not in OUTCOMES:
            self.reject("result", "bad_outcome", outcome)
            outcome = None
        if outcome is None:
            if success is True:
                outcome = "success"
            elif error_type in ("timeout", "cancelled"):
                outcome = error_type
            else:
                outcome = "error"

        latency_ms = get("latency_ms")
        if latency_ms is not None:
            latency_ms = self._non_negative("latency_ms", latency_ms)
        if latency_ms is None:
            if started == _NO_START_TIME:
                latency_ms = None
            else:
                # A monotonic clock cannot go backwards; max() guards virtual clocks fed badly.
                latency_ms = max(0.0, (now - started) * 1000.0)

        tokens_in = get("tokens_in")
        if tokens_in is None:
            tokens_in = 0
        elif not (type(tokens_in) is int and 0 <= tokens_in < _MAX_TOKENS):
            tokens_in = self._tokens("tokens_in", tokens_in)
        tokens_out = get("tokens_out")
        if tokens_out is None:
            tokens_out = 0
        elif not (type(tokens_out) is int and 0 <= tokens_out < _MAX_TOKENS):
            tokens_out = self._tokens("tokens_out", tokens_out)
        if tokens_in == 0 and tokens_out == 0 and "tokens_processed" in result:
            tokens_out = self._tokens("tokens_processed", get("tokens_processed"))
        model_raw = get("model")
        model_name = model_raw if isinstance(model_raw, str) and model_raw else path
        model = metrics.fold_model(model_name)

        cost = get("cost")
        if cost is not None and not (type(cost) is float and 0.0 <= cost < math.inf):
            cost = self._non_negative("cost", cost)
        if cost is None:
            price = self.config.prices.get(model_name)
            if price is not None:
                cost = price.cost(tokens_in, tokens_out)
            elif path != "parallel":  # a parallel request's cost is on its legs
                metrics.cost_unknown.labels(path).inc()

        quality = get("quality_score")
        if quality is not None and not (type(quality) is float and 0.0 <= quality <= 1.0):
            quality = self._non_negative("quality_score", quality)
            if quality is not None and quality > 1.0:
                self.reject("result", "bad_quality_score", quality)
                quality = None

        first_token_ms = get("time_to_first_token_ms")
        if first_token_ms is not None:
            first_token_ms = self._non_negative("time_to_first_token_ms", first_token_ms)

        if isinstance(error_type, str):
            error_type = error_type[:64]
        elif error_type is not None:
            error_type = type(error_type).__name__

        metrics.observe(path, qc, outcome, latency_ms / 1000.0 if latency_ms is not None else None,
                        tokens_in, tokens_out, model, cost, quality,
                        request_id if isinstance(request_id, str) else None,
                        first_token_ms / 1000.0 if first_token_ms is not None else None,
                        error_type == RATE_LIMITED and outcome == "error")
        if latency_ms is None:
            return  # no start and no latency: counted, but nothing for the windows
        snap = self._snapshot()
        usage = self._usage
        if usage[0] is not snap:  # derived once per (immutable) snapshot, not per request
            usage = self._usage = (snap, *_usage_of(snap))
        _, memory_mb, cpu_percent, gpu_percent = usage
        # Positional, in field order: a dataclass takes keywords ~3x slower (0.85 vs 0.27 us).
        self.collector.record_metric(PerformanceMetrics(
            self.clock.time(),  # timestamp
            path,  # processing_path
            str(request_id)[:128],  # request_id
            latency_ms,
            tokens_in + tokens_out,  # tokens_processed
            memory_mb,  # memory_usage_mb
            cpu_percent,  # cpu_usage_percent
            gpu_percent,  # gpu_usage_percent
            cost or 0.0,  # cost_estimate
            quality if quality is not None else 0.0,  # quality_score
            outcome == "success",  # success
            error_type,
            qc,  # query_class
            outcome,
            tokens_in,
            tokens_out,
            cost is not None,  # has_cost
            quality is not None,  # has_quality
            model,
        ))

    def _tokens(self, name: str, value: Any) -> int:
        if value is None:
            return 0
        if type(value) is int and 0 <= value < _MAX_TOKENS:
            return value
        if isinstance(value, float) and value.is_integer() and 0 <= value < _MAX_TOKENS:
            return int(value)
        self.reject("result", f"bad_{name}", value)
        return 0

    def _non_negative(self, name: str, value: Any) -> Optional[float]:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                v = float(value)
            except OverflowError:  # an int beyond float range (10**400): rejected, not an internal error
                v = math.inf
            if v >= 0 and not math.isinf(v):  # NaN fails v >= 0
                return v
        self.reject("result", f"bad_{name}", value)
        return None

    def reject(self, what: str, reason: str, value: Any) -> None:
        self.metrics.inputs_rejected.labels(what, reason).inc()
        self.once.warning((what, reason), "dualtrack: rejected %s (%s): %.80r "
                           "(counted in dualtrack_inputs_rejected_total)", what, reason, value)

    def internal_error(self, component: str, err: BaseException) -> None:
        self._errors.labels(component).inc()
        self.once.warning(("error", component, type(err).__name__),
                           "dualtrack: internal error in %s (counted, request unaffected): %r", component, err)


def _expire(table: Dict[Any, _Started], deadline: float, overflow: int,
            also: Optional[Dict[Any, None]] = None) -> Tuple[int, int]:
    """Drop the entries of ``table`` started before ``deadline``, and the
    ``overflow`` oldest ones (and their ids from ``also``); return (how many
    were dropped, overflow left).

    Insertion order is start order, so this stops at the first live entry: a
    sweep costs what it removes, not the size of the table. Other threads
    insert and pop meanwhile: the table is read a few entries at a time
    (list(islice(...)) runs in C, so no other thread changes the dict while it
    is read), and an entry counts as dropped only if this pop removed it.
    """
    dropped = 0
    while True:
        try:
            head = list(islice(table.items(), 64))
        except RuntimeError:  # changed during iteration (free-threaded builds): next sweep
            return dropped, overflow
        if not head:
            return dropped, overflow
        for rid, (started, _, _) in head:
            if started >= deadline and overflow <= 0:
                return dropped, overflow
            overflow -= 1
            if table.pop(rid, None) is not None:
                dropped += 1
                if also is not None:
                    also.pop(rid, None)


def _hashable(value: Any) -> bool:
    # str first: the id of nearly every call, without a try block's set-up.
    if type(value) is str:
        return True
    try:
        hash(value)
    except TypeError:
        return False
    return True
