"""Prometheus metric definitions for the per-request path, and the hot-path recorder.

Names and labels are a contract: dashboards, recording rules and alerts
depend on them (``docs/metrics.md`` lists every one). Labels are bounded
sets only: ``path`` (local, api, parallel), ``query_class`` (the configured
classes), ``outcome``, ``model`` (the price table plus at most
``max_model_labels`` more). A value outside its set folds into ``other`` and
is counted in ``dualtrack_label_values_folded_total``. Request ids ride as
exemplars, never as labels.

Label children are bound once (at start for every path and class, lazily
for models), so recording a request costs a few dict lookups and the
``observe``/``inc`` calls themselves.

Exemplars are sampled: a duration bucket takes a request id at most once per
``exemplar_interval_seconds`` (default 1 s). Prometheus keeps one exemplar
per bucket per scrape (every 15 s or more), so setting one on every
observation only overwrote it; prometheus_client validates and timestamps
each one (about 2-3 us a request). A bucket that is rarely hit (the slow
tail) still gets the id of its latest request whenever a second has passed.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from typing import Callable, Dict, Iterable, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..vocabulary import OUTCOMES, PATHS, TRACKS

#: Buckets for LLM request latency: 10 ms .. 2 min. Fixed; dashboards and
#: recording rules use them.
LATENCY_BUCKETS: Tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
    7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0,
)
#: Buckets for quality scores in 0..1.
QUALITY_BUCKETS: Tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
#: Buckets for time to first token: the OpenTelemetry GenAI client's
#: (``gen_ai.server.time_to_first_token``), 10 ms doubling to 82 s, so the
#: series lines up with OTel-instrumented clients.
TTFT_BUCKETS: Tuple[float, ...] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)

OTHER = "other"


class LabelFolder:
    """Maps arbitrary values onto a bounded label set.

    ``allowed`` values pass; up to ``max_dynamic`` further distinct values are
    admitted first come, first served; everything else becomes ``"other"``
    and ``on_fold(label)`` is called (to count it).
    """

    def __init__(self, label: str, allowed: Iterable[str] = (), max_dynamic: int = 0,
                 on_fold: Optional[Callable[[str], None]] = None) -> None:
        self.label = label
        self._known = {v: v for v in allowed}
        self._known[OTHER] = OTHER
        self._dynamic_left = max_dynamic
        self._on_fold = on_fold
        self._lock = threading.Lock()

    def __call__(self, value: object) -> str:
        # Fast path: a known value (no lock; dict reads are atomic).
        try:
            known = self._known.get(value)  # type: ignore[call-overload]
        except TypeError:  # unhashable (a list from a bad result/context): fold it, don't lose the request
            known = None
        if known is not None:
            return known
        if isinstance(value, str) and 0 < len(value) <= 64 and self._dynamic_left > 0:
            with self._lock:
                if value in self._known:
                    return value
                if self._dynamic_left > 0:
                    self._dynamic_left -= 1
                    self._known[value] = value
                    return value
        if self._on_fold is not None:
            self._on_fold(self.label)
        return OTHER


class _LazyChildren(Dict[str, object]):
    """outcome -> bound counter child, created on first use."""

    def __init__(self, counter: Counter, labels: Tuple[str, str]) -> None:
        super().__init__()
        self._counter = counter
        self._labels = labels

    def __missing__(self, outcome: str) -> object:
        child = self._counter.labels(*self._labels, outcome)
        self[outcome] = child
        return child


#: Per (path, query class): duration, quality, outcome counters, within-target,
#: useful, and when each duration bucket last took an exemplar.
_Bound = Tuple[object, object, Dict[str, object], object, object, list]


class RequestMetrics:
    """The per-request series and the optimizer's own health counters."""

    def __init__(self, registry: CollectorRegistry, query_classes: Iterable[str],
                 known_models: Iterable[str] = (), max_model_labels: int = 16,
                 enable_exemplars: bool = True, latency_target_seconds: float = math.inf,
                 quality_floor: float = 0.0, exemplar_interval_seconds: float = 1.0) -> None:
        self.exemplars = enable_exemplars
        #: A duration bucket takes a new request-id exemplar at most this often (0: every observation).
        self.exemplar_interval_seconds = exemplar_interval_seconds
        self.latency_target_seconds = latency_target_seconds
        self.quality_floor = quality_floor
        classes = tuple(query_classes)
        self.requests = Counter(
            "dualtrack_requests", "Requests completed, by path, query class and outcome.",
            ["path", "query_class", "outcome"], registry=registry)
        self.duration = Histogram(
            "dualtrack_request_duration_seconds",
            "End-to-end request latency, by path and query class (cancelled requests excluded).",
            ["path", "query_class"], buckets=LATENCY_BUCKETS, registry=registry)
        self.tokens = Counter(
            "dualtrack_tokens", "Tokens processed, by path, query class, model and direction (input, output).",
            ["path", "query_class", "model", "direction"], registry=registry)
        self.cost = Counter(
            "dualtrack_cost_dollars", "Estimated cost of requests in US dollars.",
            ["path", "query_class", "model"], registry=registry)
        self.time_to_first_token = Histogram(
            "dualtrack_time_to_first_token_seconds",
            "Time from the start of a model call to its first token, by path and query class "
            "(streaming backends only).",
            ["path", "query_class"], buckets=TTFT_BUCKETS, registry=registry)
        self.quality = Histogram(
            "dualtrack_response_quality_ratio", "Quality score (0..1) of successful responses.",
            ["path", "query_class"], buckets=QUALITY_BUCKETS, registry=registry)
        # What the objective counts (docs/benchmarks.md): answers within the
        # latency target, and answers at or above the quality floor. Counted
        # here because a histogram bucket rarely sits exactly on the target.
        self.within_target = Counter(
            "dualtrack_requests_within_target", "Successful requests answered within the latency target.",
            ["path", "query_class"], registry=registry)
        self.useful = Counter(
            "dualtrack_responses_useful", "Successful responses scored at or above the quality floor.",
            ["path", "query_class"], registry=registry)
        # A rate limit's refusals (HTTP 429) are errors in dualtrack_requests_total and are
        # counted here too: a full API is not a failing one (the adapter plans within its limit).
        self.rate_limited = Counter(
            "dualtrack_rate_limited", "Calls refused by a rate limit (HTTP 429), by path and query class; "
            "also counted as errors in dualtrack_requests_total.",
            ["path", "query_class"], registry=registry)
        self.in_flight = Gauge(
            "dualtrack_requests_in_flight", "Requests started and not yet completed.",
            registry=registry, multiprocess_mode="livesum")
        # Health of the instrumentation itself: nothing is lost quietly.
        self.completions_without_start = Counter(
            "dualtrack_completions_without_start", "Completions recorded with no matching start.",
            registry=registry)
        self.starts_expired = Counter(
            "dualtrack_request_starts_expired",
            "Started requests dropped from the in-flight table after the TTL without a completion.",
            registry=registry)
        self.inputs_rejected = Counter(
            "dualtrack_inputs_rejected", "Inputs rejected or repaired, by input and reason.",
            ["input", "reason"], registry=registry)
        self.labels_folded = Counter(
            "dualtrack_label_values_folded", "Label values outside their bounded set, folded into 'other'.",
            ["label"], registry=registry)
        self.cost_unknown = Counter(
            "dualtrack_cost_unknown", "Completions whose cost was not given and had no price in the table.",
            ["path"], registry=registry)

        fold = self._count_fold
        self.fold_path = LabelFolder("path", PATHS, on_fold=fold)
        self.fold_class = LabelFolder("query_class", classes, on_fold=fold)
        self.fold_outcome = LabelFolder("outcome", OUTCOMES, on_fold=fold)
        self.fold_model = LabelFolder("model", known_models, max_dynamic=max_model_labels, on_fold=fold)

        # Bind label children once, not per request. Request counters are
        # created up front for every real path, class and outcome (so rate()
        # sees the first increment); histograms appear with their first use.
        self._bound: Dict[Tuple[str, str], _Bound] = {}
        self._bind_lock = threading.Lock()
        for path in PATHS:
            for qc in classes:
                for outcome in OUTCOMES:
                    self.requests.labels(path, qc, outcome)
                if path in TRACKS:
                    self.rate_limited.labels(path, qc)
        self._model_children: Dict[Tuple[str, str, str], Tuple[object, object, object]] = {}
        # Bound on first use, not in _bind: only streaming backends report a
        # first token, and a path that never does should export no series.
        self._ttft_children: Dict[Tuple[str, str], object] = {}

    def _count_fold(self, label: str) -> None:
        self.labels_folded.labels(label).inc()

    def _bind(self, path: str, qc: str) -> _Bound:
        with self._bind_lock:
            bound = self._bound.get((path, qc))
            if bound is None:
                outcomes = _LazyChildren(self.requests, (path, qc))
                # When each duration bucket (the last is +Inf) last took an exemplar.
                exemplar_times = [-math.inf] * (len(LATENCY_BUCKETS) + 1)
                bound = (self.duration.labels(path, qc), self.quality.labels(path, qc), outcomes,
                         self.within_target.labels(path, qc), self.useful.labels(path, qc), exemplar_times)
                self._bound[(path, qc)] = bound
            return bound

    def _model_series(self, path: str, qc: str, model: str) -> Tuple[object, object, object]:
        key = (path, qc, model)
        children = self._model_children.get(key)
        if children is None:
            with self._bind_lock:
                children = (
                    self.tokens.labels(path, qc, model, "input"),
                    self.tokens.labels(path, qc, model, "output"),
                    self.cost.labels(path, qc, model),
                )
                self._model_children[key] = children
        return children

    def observe(self, path: str, query_class: str, outcome: str, duration_seconds: Optional[float],
                tokens_in: int, tokens_out: int, model: str, cost: Optional[float],
                quality: Optional[float], request_id: Optional[str] = None,
                first_token_seconds: Optional[float] = None, rate_limited: bool = False) -> None:
        """Record one completed request. Labels must already be folded.

        ``duration_seconds`` is None when unknown (a completion without a
        start and without ``latency_ms``): counted, not observed.
        ``first_token_seconds`` is observed whatever the outcome when given
        (a cancelled stream's first token is a true measurement of its track).
        ``rate_limited``: a call refused by a rate limit (an error, counted apart too).
        """
        bound = self._bound.get((path, query_class))
        if bound is None:
            bound = self._bind(path, query_class)
        duration_child, quality_child, outcomes, within_child, useful_child, exemplar_times = bound
        outcomes[outcome].inc()  # type: ignore[attr-defined]
        if outcome == "success":
            if duration_seconds is not None and duration_seconds <= self.latency_target_seconds:
                within_child.inc()  # type: ignore[attr-defined]
            if quality is not None:
                quality_child.observe(quality)  # type: ignore[attr-defined]
                if quality >= self.quality_floor:
                    useful_child.inc()  # type: ignore[attr-defined]
        if outcome != "cancelled" and duration_seconds is not None:
            if self.exemplars and request_id:
                # The bucket prometheus_client will pick (the first bound >= the value);
                # a racy update of its time only means two exemplars in one interval.
                bucket = bisect_left(LATENCY_BUCKETS, duration_seconds)
                now = time.monotonic()
                if now - exemplar_times[bucket] >= self.exemplar_interval_seconds:
                    exemplar_times[bucket] = now
                    duration_child.observe(duration_seconds, {"request_id": request_id[:64]})  # type: ignore[attr-defined]
                else:
                    duration_child.observe(duration_seconds)  # type: ignore[attr-defined]
            else:
                duration_child.observe(duration_seconds)  # type: ignore[attr-defined]
        if tokens_in or tokens_out or cost:
            t_in, t_out, c = self._model_series(path, query_class, model)
            if tokens_in:
                t_in.inc(tokens_in)  # type: ignore[attr-defined]
            if tokens_out:
                t_out.inc(tokens_out)  # type: ignore[attr-defined]
            if cost:
                c.inc(cost)  # type: ignore[attr-defined]
        if rate_limited:
            self.rate_limited.labels(path, query_class).inc()
        if first_token_seconds is not None:
            ttft_child = self._ttft_children.get((path, query_class))
            if ttft_child is None:
                with self._bind_lock:
                    ttft_child = self._ttft_children.setdefault(
                        (path, query_class), self.time_to_first_token.labels(path, query_class))
            ttft_child.observe(first_token_seconds)  # type: ignore[attr-defined]
