"""Client-side request signals agree with their PromQL forms on real data.

The adapter computes request signals from eight aggregated rates
(``adapter.aggregates``) instead of sending each signal's own PromQL. Both
are evaluated here against a real Prometheus holding a workload's history
(every path, class and outcome), at the same instant, level by level.
"""

from __future__ import annotations

import math

import pytest

from dualtrack.adapter.aggregates import REQUEST_SIGNALS, histogram_quantile
from dualtrack.adapter.prometheus_source import PrometheusSource
from dualtrack.adapter.promql import PromQLClient
from dualtrack.adapter.signals import BUILTIN_CATALOG
from support.compare import assert_same_series
from support.workload import backfilled_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return backfilled_stack(tmp_path_factory.mktemp("stack"), rule_files=())


@pytest.mark.prometheus
def test_aggregates_match_the_promql_forms_at_every_level(stack):
    client = PromQLClient(stack.prom.url, timeout=10)
    at = stack.query_time
    by_forms = PrometheusSource(client, window="2m", aggregates=False).fetch(BUILTIN_CATALOG, at=at)
    source = PrometheusSource(client, window="2m")
    by_aggregates = source.fetch(BUILTIN_CATALOG, at=at)
    assert source.last_query_count == 1
    compared = assert_same_series(by_forms, by_aggregates, REQUEST_SIGNALS)
    # Every level of every request signal had data somewhere: the comparison is not vacuous.
    assert compared > 12 * 4
    for name in REQUEST_SIGNALS:
        levels = {tuple(k for k, _ in labels) for labels in by_forms.series(name)}
        assert levels == {(), ("path",), ("query_class",), ("path", "query_class")}, name
    # The other signals are untouched by the switch.
    for name in ("memory_used_ratio", "latency_target_seconds", "constraint_violated"):
        assert by_aggregates.series(name) == by_forms.series(name)


@pytest.mark.prometheus
def test_histogram_quantile_matches_prometheus_on_edge_cases(prometheus_factory):
    prom = prometheus_factory()
    cases = [
        [(0.1, 0.0), (1.0, 0.0), (math.inf, 0.0)],  # no observations: NaN
        [(0.1, 5.0), (1.0, 5.0), (math.inf, 10.0)],  # rank in +Inf: the largest finite bound
        [(0.1, 1.0), (1.0, 3.0), (2.0, 2.0), (math.inf, 4.0)],  # non-monotonic input
        [(0.5, 2.0), (1.0, 4.0), (math.inf, 4.0)],
        [(-1.0, 1.0), (1.0, 2.0), (math.inf, 2.0)],  # a negative first bound
        [(0.1, 1.0), (1.0, 2.0)],  # no +Inf bucket: NaN
    ]
    for buckets in cases:
        for q in (0.0, 0.25, 0.5, 0.95, 1.0):
            series = " or ".join(
                f'label_replace(vector({c}), "le", "{"+Inf" if math.isinf(le) else le}", "", "")'
                for le, c in buckets)
            expr = f"histogram_quantile({q}, {series})"
            want = prom.query(expr)
            got = histogram_quantile(q, buckets)
            if not want:
                assert math.isnan(got), (buckets, q)
                continue
            value = want[0][1]
            if math.isnan(value):
                assert math.isnan(got), (buckets, q, got)
            else:
                assert got == pytest.approx(value), (buckets, q)
