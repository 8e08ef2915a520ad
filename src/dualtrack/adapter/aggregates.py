"""Request signals from a handful of aggregated rates, computed client-side.

Every request signal (latency quantiles, success ratio, cost per request,
quality...) at every aggregation level is a function of nine rates, each
summed by (path, query_class) in PromQL:

    requests by outcome, latency buckets by le, latency sum and count,
    cost, tokens, quality sum and count, calls refused by a rate limit.

Fetching those nine once and combining them here costs Prometheus nine
scans of the raw series per cycle instead of one per signal and level (about
a hundred), which is what keeps a cycle fast against a large fleet
(``benchmarks/adapter_cycle.py``). The arithmetic is the PromQL forms' own:
numerators and denominators summed before dividing, and
``histogram_quantile`` as Prometheus computes it — ``tests/test_aggregates.py``
checks the two agree on real data.

With recording_rules.yml loaded the nine need no scan of raw series at
all: ``RECORDED_INPUTS`` reads them from the fleet inputs the rules record
(``path_query_class_outcome:dualtrack_requests:rate2m`` and its siblings),
which Prometheus computes once per evaluation interval whoever asks; the
arithmetic here is the same either way (``tests/test_recorded_inputs.py``).
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from .signals import SignalValues

DIMS = ("path", "query_class")

#: name -> (PromQL summed by (path, query_class[, extra]), extra label)
INPUTS: Dict[str, Tuple[str, Optional[str]]] = {
    "requests": ("sum by (path, query_class, outcome) (rate(dualtrack_requests_total[{window}]))", "outcome"),
    "buckets": ("sum by (path, query_class, le) (rate(dualtrack_request_duration_seconds_bucket[{window}]))", "le"),
    "duration_sum": ("sum by (path, query_class) (rate(dualtrack_request_duration_seconds_sum[{window}]))", None),
    "duration_count": ("sum by (path, query_class) (rate(dualtrack_request_duration_seconds_count[{window}]))", None),
    "cost": ("sum by (path, query_class) (rate(dualtrack_cost_dollars_total[{window}]))", None),
    "tokens": ("sum by (path, query_class) (rate(dualtrack_tokens_total[{window}]))", None),
    "quality_sum": ("sum by (path, query_class) (rate(dualtrack_response_quality_ratio_sum[{window}]))", None),
    "quality_count": ("sum by (path, query_class) (rate(dualtrack_response_quality_ratio_count[{window}]))", None),
    "rate_limited": ("sum by (path, query_class) (rate(dualtrack_rate_limited_total[{window}]))", None),
}

#: The rate window of recording_rules.yml: the recorded inputs exist for it only.
RECORDED_WINDOW = "2m"

#: name -> PromQL reading the same input from the fleet inputs that
#: recording_rules.yml records every evaluation interval (``PrometheusSource(
#: recorded=True)``, ``dualtrack adapter --recording-rules``). Prometheus then
#: sums a few dozen precomputed series per cycle instead of taking ``rate()``
#: over every router's raw series. The ``sum by`` keeps the answer's labels
#: exactly those of ``INPUTS`` (it drops the series name, and folds any label
#: a federating or Thanos-style setup adds, as the raw form would).
RECORDED_INPUTS: Dict[str, str] = {
    "requests": "sum by (path, query_class, outcome) (path_query_class_outcome:dualtrack_requests:rate2m)",
    "buckets": "sum by (path, query_class, le) (path_query_class_le:dualtrack_request_duration_seconds_bucket:rate2m)",
    "duration_sum": "sum by (path, query_class) (path_query_class:dualtrack_request_duration_seconds_sum:rate2m)",
    "duration_count": "sum by (path, query_class) (path_query_class:dualtrack_request_duration_seconds_count:rate2m)",
    "cost": "sum by (path, query_class) (path_query_class:dualtrack_cost_dollars:rate2m)",
    "tokens": "sum by (path, query_class) (path_query_class:dualtrack_tokens:rate2m)",
    "quality_sum": "sum by (path, query_class) (path_query_class:dualtrack_response_quality_ratio_sum:rate2m)",
    "quality_count": "sum by (path, query_class) (path_query_class:dualtrack_response_quality_ratio_count:rate2m)",
    "rate_limited": "sum by (path, query_class) (path_query_class:dualtrack_rate_limited:rate2m)",
}

#: The signals computed here (the catalog's request signals).
REQUEST_SIGNALS = (
    "requests_per_second", "latency_p50_seconds", "latency_p95_seconds", "latency_p99_seconds",
    "latency_mean_seconds", "success_ratio", "error_ratio", "timeout_ratio", "cost_per_request_dollars",
    "cost_burn_dollars_per_hour", "quality_mean", "tokens_per_second", "rate_limited_ratio",
)

Key = Tuple[Tuple[str, str], ...]


def histogram_quantile(q: float, buckets: Iterable[Tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile`` over (upper bound, cumulative rate) pairs.

    Same algorithm as promql/quantile.go (bucketQuantile): monotonicity
    enforced, linear interpolation inside the bucket, the first bucket starts
    at 0, a rank in the +Inf bucket returns the largest finite bound.
    """
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: Dict[float, float] = {}
    for upper, count in buckets:
        merged[upper] = merged.get(upper, 0.0) + count  # coalesce equal bounds
    ordered = sorted(merged.items())
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return math.nan
    running = -math.inf
    counts: List[float] = []
    for _, count in ordered:
        running = max(running, count)  # ensure monotonic
        counts.append(running)
    observations = counts[-1]
    if observations == 0 or math.isnan(observations):
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(ordered) - 1) if counts[i] >= rank), len(ordered) - 1)
    if b == len(ordered) - 1:
        return ordered[-2][0]
    if b == 0 and ordered[0][0] <= 0:
        return ordered[0][0]
    start, end, count = 0.0, ordered[b][0], counts[b]
    if b > 0:
        start = ordered[b - 1][0]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count)


def _bucket_bound(le: str) -> Optional[float]:
    """A bucket's upper bound, or None for a series without a usable ``le``.

    Prometheus' histogram_quantile ignores such series; so do we, instead of
    failing the whole fetch on one foreign or broken series.
    """
    try:
        return float(le)
    except (TypeError, ValueError):
        return None


def _ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    if num is None or den is None or den == 0:
        return None  # PromQL: x/0 is ±Inf or NaN, and a missing side matches nothing
    return num / den


def compute(inputs: Mapping[str, Mapping[Key, float]], values: SignalValues) -> None:
    """Add every request signal at every level to ``values``.

    ``inputs[name]`` maps each series' labels (path, query_class and the
    extra label) to its rate, as returned by the queries in ``INPUTS``.
    """
    levels = [lv for n in range(len(DIMS) + 1) for lv in combinations(DIMS, n)]
    for level in levels:
        groups: Dict[Key, Dict[str, Any]] = {}

        def group(labels: Key, level: Tuple[str, ...] = level,
                  groups: Dict[Key, Dict[str, Any]] = groups) -> Dict[str, Any]:
            picked = tuple((k, v) for k, v in labels if k in level)
            return groups.setdefault(picked, {})

        for name, series in inputs.items():
            extra = INPUTS[name][1]
            for labels, rate in series.items():
                g = group(labels)
                if extra is None:
                    g[name] = g.get(name, 0.0) + rate
                else:
                    by = g.setdefault(name, {})
                    value_of_extra = dict(labels).get(extra, "")
                    by[value_of_extra] = by.get(value_of_extra, 0.0) + rate

        for picked, g in groups.items():
            level_labels = dict(picked)
            requests: Dict[str, float] = g.get("requests", {})
            total = sum(requests.values()) if requests else None
            decided = (sum(v for o, v in requests.items() if o != "cancelled") if requests else None)
            out: Dict[str, Optional[float]] = {
                "requests_per_second": total,
                "success_ratio": _ratio(requests.get("success"), decided) if "success" in requests else None,
                "error_ratio": _ratio(requests.get("error"), decided) if "error" in requests else None,
                "timeout_ratio": _ratio(requests.get("timeout"), decided) if "timeout" in requests else None,
                "rate_limited_ratio": _ratio(g.get("rate_limited"), decided),
                "latency_mean_seconds": _ratio(g.get("duration_sum"), g.get("duration_count")),
                "cost_per_request_dollars": _ratio(g.get("cost"), total),
                "cost_burn_dollars_per_hour": (g["cost"] * 3600.0 if "cost" in g else None),
                "quality_mean": _ratio(g.get("quality_sum"), g.get("quality_count")),
                "tokens_per_second": g.get("tokens"),
            }
            buckets: Dict[str, float] = g.get("buckets", {})
            pairs = [(bound, rate) for le, rate in buckets.items() if (bound := _bucket_bound(le)) is not None]
            if pairs:
                for q, name in ((0.5, "latency_p50_seconds"), (0.95, "latency_p95_seconds"),
                                (0.99, "latency_p99_seconds")):
                    out[name] = histogram_quantile(q, pairs)
            for name, value in out.items():
                values.set(name, level_labels, value)  # NaN and ±Inf are dropped: no data
