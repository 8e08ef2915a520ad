"""The signal catalog: the named values strategy rules read.

Each signal has a PromQL form (for the adapter process, against Prometheus
or any PromQL engine) and an embedded form (computed in-process from the
``MetricsCollector`` windows and the ``ResourceMonitor``), so one rule file
works in both places.

Signals with labels (``path``, ``query_class``) are available at every
level of aggregation: ``latency_p95_seconds`` (overall),
``latency_p95_seconds{path="api"}``, ``latency_p95_seconds{query_class="long"}``
and ``latency_p95_seconds{path="api",query_class="long"}``. Ratios are
computed from aggregated numerators and denominators, never by averaging
ratios. ``docs/signals.md`` lists every signal.

Users add PromQL-only signals in YAML (``signals:`` in a strategy file or a
file of their own); those have no embedded form and read as *no data* when
the engine runs in-process.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..constraints import CONSTRAINTS
from ..vocabulary import PATHS
from .conditions import SignalInfo

Labels = Tuple[Tuple[str, str], ...]  # sorted (label, value) pairs


def labels_key(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


class SignalValues:
    """Signal values of one cycle: ``{signal: {labels: value}}``.

    A missing entry is *no data*. NaN and ±Inf are dropped on the way in
    (they are no data too). ``errors`` says, per signal, why it has no
    values when its query failed (as opposed to returning nothing).
    """

    def __init__(self, values: Optional[Dict[str, Dict[Labels, float]]] = None,
                 errors: Optional[Dict[str, str]] = None) -> None:
        self.values: Dict[str, Dict[Labels, float]] = {}
        self.errors: Dict[str, str] = dict(errors or {})
        for name, series in (values or {}).items():
            for key, value in series.items():
                self.set(name, dict(key), value)

    def set(self, name: str, labels: Mapping[str, str], value: Optional[float]) -> None:
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if math.isnan(value) or math.isinf(value):
            return
        self.values.setdefault(name, {})[labels_key(labels)] = float(value)

    def get(self, name: str, labels: Mapping[str, str]) -> Optional[float]:
        return self.values.get(name, {}).get(labels_key(labels))

    def series(self, name: str) -> Dict[Labels, float]:
        return dict(self.values.get(name, {}))

    def __len__(self) -> int:
        return sum(len(s) for s in self.values.values())

    def __repr__(self) -> str:
        return f"SignalValues({len(self)} values, {len(self.errors)} errors)"


@dataclass(frozen=True)
class Signal:
    """One signal.

    ``promql`` is a template: ``{by}`` becomes the grouping labels of the
    level being queried (``path, query_class`` / ``path`` / empty),
    ``{by_le}`` the same plus ``le`` (for histograms), ``{window}`` the
    rate window, ``{interval}`` the range of the ``interval_*`` counts and
    ``{interval_scale}`` what turns a count over that range into one per
    adaptation interval (empty when the range is the interval itself). A
    user signal's ``promql`` is used as is (no levels).
    ``every_level`` False: only the level with all the signal's labels.
    """

    name: str
    help: str
    unit: str
    dims: Tuple[str, ...] = ()
    promql: Optional[str] = None
    builtin: bool = True
    allowed: Mapping[str, Optional[Sequence[str]]] = field(default_factory=dict)
    every_level: bool = True
    #: The form reading recording_rules.yml's series instead of the raw metrics
    #: (``PrometheusSource(recorded=True)``): ``{interval_seconds}`` becomes the
    #: adaptation interval in seconds.
    recorded: Optional[str] = None

    def levels(self) -> List[Tuple[str, ...]]:
        """Every subset of the signal's labels (``()`` first)."""
        if not self.builtin or not self.every_level:
            return [self.dims]
        out: List[Tuple[str, ...]] = []
        for n in range(len(self.dims) + 1):
            out.extend(itertools.combinations(self.dims, n))
        return out

    def query(self, level: Tuple[str, ...], window: str, interval: str = "30s", interval_scale: float = 1.0) -> str:
        """The PromQL for one level of aggregation."""
        assert self.promql is not None
        if not self.builtin:
            return self.promql
        by = ", ".join(level)
        by_le = ", ".join(level + ("le",))
        scale = "" if interval_scale == 1.0 else f" * {interval_scale:.6g}"
        # Plain replacement, not str.format: PromQL selectors are full of braces.
        return (self.promql.replace("{by_le}", by_le).replace("{by}", by).replace("{window}", window)
                .replace("{interval_scale}", scale).replace("{interval}", interval))

    def recorded_query(self, level: Tuple[str, ...], interval_seconds: float) -> Optional[str]:
        """The PromQL reading the recorded series, or None when the signal has no recorded form."""
        if self.recorded is None:
            return None
        return self.recorded.replace("{by}", ", ".join(level)).replace("{interval_seconds}", f"{interval_seconds:g}")

    def info(self) -> SignalInfo:
        return SignalInfo(self.dims, self.allowed)


_PATH_CLASS = ("path", "query_class")
_PATHS_ALLOWED = {"path": PATHS, "query_class": None}

_REQUESTS = 'dualtrack_requests_total'
_DECIDED = f'{_REQUESTS}{{outcome!="cancelled"}}'


def _ratio(num: str, den: str) -> str:
    return f"sum by ({{by}}) (rate({num}[{{window}}])) / sum by ({{by}}) (rate({den}[{{window}}]))"


def _quantile(q: float) -> str:
    return (f"histogram_quantile({q}, sum by ({{by_le}}) "
            f"(rate(dualtrack_request_duration_seconds_bucket[{{window}}])))")


def _request_signal(name: str, help: str, unit: str, promql: str) -> Signal:
    return Signal(name, help, unit, _PATH_CLASS, promql, allowed=_PATHS_ALLOWED)


def _interval_signal(name: str, help: str, series: str, recorded: str) -> Signal:
    """A count over the last adaptation interval; ``recorded`` is the recording rule's
    series (a rate over 1m, recording_rules.yml) that times the interval gives the same."""
    promql = f"sum by ({{by}}) (increase({series}[{{interval}}])){{interval_scale}}"
    return Signal(name, help, "count", _PATH_CLASS, promql, allowed=_PATHS_ALLOWED, every_level=False,
                  recorded=f"sum by ({{by}}) ({recorded}) * {{interval_seconds}}")


_RECORDED_REQUESTS = "path_query_class_outcome:dualtrack_requests:rate1m"


def _machine_signal(name: str, help: str, unit: str, promql: str) -> Signal:
    return Signal(name, help, unit, (), promql)


#: Built-in signals. PromQL over a fleet takes the worst router (max) for
#: machine signals and sums request rates across routers.
BUILTIN_SIGNALS: Tuple[Signal, ...] = (
    _request_signal("requests_per_second", "Completed requests per second (cancelled included).", "1/s",
                    f"sum by ({{by}}) (rate({_REQUESTS}[{{window}}]))"),
    _request_signal("latency_p50_seconds", "Median request latency.", "seconds", _quantile(0.5)),
    _request_signal("latency_p95_seconds", "95th percentile request latency.", "seconds", _quantile(0.95)),
    _request_signal("latency_p99_seconds", "99th percentile request latency.", "seconds", _quantile(0.99)),
    _request_signal("latency_mean_seconds", "Mean request latency.", "seconds",
                    _ratio("dualtrack_request_duration_seconds_sum", "dualtrack_request_duration_seconds_count")),
    _request_signal("success_ratio", "Successful share of requests that were not cancelled.", "ratio",
                    _ratio(f'{_REQUESTS}{{outcome="success"}}', _DECIDED)),
    _request_signal("error_ratio", "Errored share of requests that were not cancelled.", "ratio",
                    _ratio(f'{_REQUESTS}{{outcome="error"}}', _DECIDED)),
    _request_signal("timeout_ratio", "Timed-out share of requests that were not cancelled.", "ratio",
                    _ratio(f'{_REQUESTS}{{outcome="timeout"}}', _DECIDED)),
    _request_signal("rate_limited_ratio", "Share of the calls that were not cancelled refused by a rate limit "
                    "(HTTP 429; counted among the errors too).", "ratio",
                    _ratio("dualtrack_rate_limited_total", _DECIDED)),
    _request_signal("cost_per_request_dollars", "Mean cost per request (cancelled legs included).", "dollars",
                    _ratio("dualtrack_cost_dollars_total", _REQUESTS)),
    _request_signal("cost_burn_dollars_per_hour", "Spend rate.", "dollars/hour",
                    "sum by ({by}) (rate(dualtrack_cost_dollars_total[{window}])) * 3600"),
    _request_signal("quality_mean", "Mean quality score (0..1) of successful responses.", "ratio",
                    _ratio("dualtrack_response_quality_ratio_sum", "dualtrack_response_quality_ratio_count")),
    _request_signal("tokens_per_second", "Tokens processed per second (input and output).", "1/s",
                    "sum by ({by}) (rate(dualtrack_tokens_total[{window}]))"),
    # The last adaptation interval's counts, per path and query class: the
    # evidence the objective-driven strategies estimate from (adapter.estimator).
    _interval_signal("interval_calls", "Calls decided in the last interval (cancelled excluded).", _DECIDED,
                     f'{_RECORDED_REQUESTS}{{outcome!="cancelled"}}'),
    _interval_signal("interval_successes", "Successful calls in the last interval.",
                     f'{_REQUESTS}{{outcome="success"}}', f'{_RECORDED_REQUESTS}{{outcome="success"}}'),
    _interval_signal("interval_timeouts", "Timed-out calls in the last interval.",
                     f'{_REQUESTS}{{outcome="timeout"}}', f'{_RECORDED_REQUESTS}{{outcome="timeout"}}'),
    _interval_signal("interval_rate_limited", "Calls refused by a rate limit (HTTP 429) in the last interval.",
                     "dualtrack_rate_limited_total", "path_query_class:dualtrack_rate_limited:rate1m"),
    _interval_signal("interval_within_target", "Successful calls within the latency target in the last interval.",
                     "dualtrack_requests_within_target_total",
                     "path_query_class:dualtrack_requests_within_target:rate1m"),
    _interval_signal("interval_useful", "Answers at or above the quality floor in the last interval.",
                     "dualtrack_responses_useful_total", "path_query_class:dualtrack_responses_useful:rate1m"),
    _interval_signal("interval_quality_sum", "Sum of the quality scores of the last interval's answers.",
                     "dualtrack_response_quality_ratio_sum",
                     "path_query_class:dualtrack_response_quality_ratio_sum:rate1m"),
    _interval_signal("interval_quality_count", "Scored answers in the last interval.",
                     "dualtrack_response_quality_ratio_count",
                     "path_query_class:dualtrack_response_quality_ratio_count:rate1m"),
    _interval_signal("interval_cost_dollars", "Cost of the last interval's calls, in dollars.",
                     "dualtrack_cost_dollars_total", "path_query_class:dualtrack_cost_dollars:rate1m"),
    _interval_signal("interval_latency_sum", "Sum of the latencies of the last interval's decided calls, seconds.",
                     "dualtrack_request_duration_seconds_sum",
                     "path_query_class:dualtrack_request_duration_seconds_sum:rate1m"),
    _interval_signal("interval_latency_count", "Decided calls with a latency in the last interval.",
                     "dualtrack_request_duration_seconds_count",
                     "path_query_class:dualtrack_request_duration_seconds_count:rate1m"),
    _machine_signal("in_flight_requests", "Requests in flight.", "requests",
                    "sum(dualtrack_requests_in_flight)"),
    _machine_signal("cpu_usage_ratio", "System CPU utilisation (0..1).", "ratio",
                    "max(dualtrack_cpu_usage_ratio)"),
    _machine_signal("memory_used_bytes", "Memory of the application (router + monitored processes).", "bytes",
                    "max(dualtrack_process_memory_bytes)"),
    _machine_signal("memory_used_ratio", "Application memory as a fraction of max_memory_mb.", "ratio",
                    "max(dualtrack_process_memory_bytes / dualtrack_memory_limit_bytes)"),
    _machine_signal("gpu_memory_used_bytes", "GPU memory used, summed over GPUs.", "bytes",
                    "max(sum by (instance) (dualtrack_gpu_memory_used_bytes))"),
    _machine_signal("gpu_memory_used_ratio", "GPU memory used as a fraction of max_gpu_memory_mb.", "ratio",
                    "max(sum by (instance) (dualtrack_gpu_memory_used_bytes) "
                    "/ on (instance) max by (instance) (dualtrack_gpu_memory_limit_bytes))"),
    _machine_signal("memory_reading_local_calls",
                    "Local calls in flight when the memory gauges were read (pairs with them).", "requests",
                    "sum(dualtrack_resource_reading_local_calls)"),
    # The last adaptation interval's extremes: memory that went over its limit between two
    # cycles shows here though the reading at the cycle is under it (adapter.estimator fits
    # memory against local load on them too). The embedded source reads each from one
    # reading, the interval's fullest (emptiest); PromQL takes each gauge's highest (lowest)
    # scrape, the same reading where memory follows the calls served.
    _machine_signal("memory_used_ratio_max", "memory_used_ratio of the last adaptation interval's fullest reading.",
                    "ratio", "max(max_over_time(dualtrack_process_memory_bytes[{interval}]) "
                    "/ dualtrack_memory_limit_bytes)"),
    _machine_signal("memory_used_ratio_min", "memory_used_ratio of the last adaptation interval's emptiest reading.",
                    "ratio", "max(min_over_time(dualtrack_process_memory_bytes[{interval}]) "
                    "/ dualtrack_memory_limit_bytes)"),
    _machine_signal("gpu_memory_used_ratio_max",
                    "gpu_memory_used_ratio of the last adaptation interval's fullest reading.", "ratio",
                    "max(sum by (instance) (max_over_time(dualtrack_gpu_memory_used_bytes[{interval}])) "
                    "/ on (instance) max by (instance) (dualtrack_gpu_memory_limit_bytes))"),
    _machine_signal("gpu_memory_used_ratio_min",
                    "gpu_memory_used_ratio of the last adaptation interval's emptiest reading.", "ratio",
                    "max(sum by (instance) (min_over_time(dualtrack_gpu_memory_used_bytes[{interval}])) "
                    "/ on (instance) max by (instance) (dualtrack_gpu_memory_limit_bytes))"),
    _machine_signal("memory_reading_local_calls_max",
                    "Local calls counted with the last adaptation interval's fullest reading.", "requests",
                    "sum(max_over_time(dualtrack_resource_reading_local_calls[{interval}]))"),
    _machine_signal("memory_reading_local_calls_min",
                    "Local calls counted with the last adaptation interval's emptiest reading.", "requests",
                    "sum(min_over_time(dualtrack_resource_reading_local_calls[{interval}]))"),
    _machine_signal("gpu_utilization_ratio", "Mean GPU utilisation (0..1).", "ratio",
                    "max(avg by (instance) (dualtrack_gpu_utilization_ratio))"),
    _machine_signal("battery_ratio", "Battery charge (0..1); no data without a battery.", "ratio",
                    "min(dualtrack_battery_ratio)"),
    _machine_signal("battery_seconds_left", "The OS's estimate of the battery time left while discharging "
                    "(its charge over the power drawn); no data when plugged in or unknown.", "seconds",
                    "min(dualtrack_battery_seconds_left)"),
    _machine_signal("battery_discharging", "1 while on battery power, 0 when plugged in.", "bool",
                    "max(1 - dualtrack_battery_power_plugged)"),
    # The local model server's own load (local_server_rules.yml normalizes vLLM,
    # llama.cpp, SGLang and TGI; embedded mode scrapes the server's /metrics):
    # requests add up over the local track's servers, the fullest KV cache counts.
    _machine_signal("local_server_queue_depth", "Requests waiting for a slot on the local model server(s).",
                    "requests", "sum(dualtrack:local_server_queue_depth)"),
    _machine_signal("local_server_running", "Requests being served by the local model server(s).", "requests",
                    "sum(dualtrack:local_server_running)"),
    _machine_signal("local_server_slots", "Requests the local model server(s) serve at once (declared).",
                    "requests", "sum(dualtrack:local_server_slots)"),
    _machine_signal("local_server_kv_cache_usage_ratio", "KV-cache usage (0..1) of the fullest local server.",
                    "ratio", "max(dualtrack:local_server_kv_cache_usage_ratio)"),
    _machine_signal("local_server_preemptions_per_second", "Requests preempted by the local server(s), per second.",
                    "1/s", "sum(dualtrack:local_server_preemptions:rate1m)"),
    _machine_signal("local_calls_in_flight", "Calls on the local track in flight, as the routers count them.",
                    "requests", 'sum(dualtrack_calls_in_flight{track="local"})'),
    _machine_signal("api_calls_in_flight", "Calls on the API track in flight, as the routers count them.",
                    "requests", 'sum(dualtrack_calls_in_flight{track="api"})'),
    _machine_signal("concurrency_used_ratio", "Requests in flight as a fraction of max_concurrent_requests.",
                    "ratio", "max(dualtrack_requests_in_flight / dualtrack_concurrency_limit)"),
    # Constraint limits, so rules need no hard-coded thresholds.
    _machine_signal("latency_target_seconds", "The latency target (target_latency_ms).", "seconds",
                    "min(dualtrack_latency_target_seconds)"),
    _machine_signal("cost_per_request_limit_dollars", "max_cost_per_request.", "dollars",
                    "min(dualtrack_cost_per_request_limit_dollars)"),
    _machine_signal("cost_budget_dollars_per_hour", "max_cost_per_hour; no data without a budget.",
                    "dollars/hour", "min(dualtrack_cost_budget_dollars_per_hour)"),
    _machine_signal("battery_threshold_ratio", "battery_threshold_percent / 100.", "ratio",
                    "max(dualtrack_battery_threshold_ratio)"),
    _machine_signal("min_quality_ratio", "min_quality_score.", "ratio", "max(dualtrack_quality_min_ratio)"),
    _machine_signal("cpu_limit_ratio", "max_cpu_percent / 100.", "ratio", "min(dualtrack_cpu_limit_ratio)"),
    Signal("constraint_violated", "1 while a constraint is violated on any router, else 0.", "bool",
           ("constraint",), "max by ({by}) (dualtrack_constraint_violated)",
           allowed={"constraint": CONSTRAINTS}),
)

# fullmatch, not match: "$" also matches before a final newline, and a name
# goes into PromQL (prometheus_source._branch) and into label names.
_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class Catalog:
    """The signals rules may read: the built-ins plus user PromQL signals."""

    def __init__(self, signals: Iterable[Signal] = BUILTIN_SIGNALS) -> None:
        self._signals: Dict[str, Signal] = {}
        for s in signals:
            self._signals[s.name] = s

    def __contains__(self, name: object) -> bool:
        return name in self._signals

    def __getitem__(self, name: str) -> Signal:
        return self._signals[name]

    def __iter__(self) -> Iterator[Signal]:
        return iter(self._signals.values())

    def names(self) -> List[str]:
        return list(self._signals)

    def infos(self) -> Dict[str, SignalInfo]:
        return {name: s.info() for name, s in self._signals.items()}

    def with_user_signals(self, signals: Iterable[Signal]) -> "Catalog":
        merged = Catalog(self._signals.values())
        for s in signals:
            if s.name in self._signals and self._signals[s.name].builtin:
                raise ValueError(f"signal {s.name!r} is built in; choose another name")
            merged._signals[s.name] = s
        return merged


def user_signal(entry: Mapping[str, Any]) -> Signal:
    """Build a PromQL-only signal from YAML: ``{name, promql, labels?, help?, unit?}``.

    ``labels`` lists the labels the query's result carries (at most
    ``path`` and ``query_class`` are bindable; others may be selected).
    Raises ``ValueError`` naming the field.
    """
    allowed_keys = {"name", "promql", "labels", "help", "unit"}
    for key in entry:
        if key not in allowed_keys:
            raise ValueError(f"{key}: unknown field (expected one of {sorted(allowed_keys)})")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"name: expected a name like my_signal, got {name!r}")
    promql = entry.get("promql")
    if not isinstance(promql, str) or not promql.strip():
        raise ValueError("promql: expected a PromQL expression")
    labels = entry.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) and _NAME_RE.fullmatch(x) for x in labels):
        raise ValueError(f"labels: expected a list of label names, got {labels!r}")
    return Signal(name, str(entry.get("help", "")), str(entry.get("unit", "")), tuple(labels),
                  promql.strip(), builtin=False, allowed={"path": PATHS} if "path" in labels else {})


BUILTIN_CATALOG = Catalog()
