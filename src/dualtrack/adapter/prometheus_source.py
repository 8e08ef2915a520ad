"""``PrometheusSource``: every signal of a cycle, fetched with one PromQL query.

Request signals (latency, success, cost, quality... at every level of
aggregation) are computed from eight aggregated rates fetched once
(``adapter.aggregates``): Prometheus scans the raw series eight times per
cycle instead of once per signal and level. Machine and limit signals use
their own PromQL forms.

The signals are fetched together: each signal at each level of
aggregation becomes one branch, tagged with a ``dualtrack_signal`` label by
``label_replace``, and the branches are joined with ``or``. Branch label
sets never collide (each carries its signal name and its own grouping
labels), so ``or`` keeps them all and one round trip answers the whole
catalog::

    label_replace(histogram_quantile(0.95, sum by (path, le) (rate(...[2m]))),
                  "dualtrack_signal", "latency_p95_seconds", "", "")
    or label_replace(...)

User signals (PromQL written in YAML) are queried one by one, so one bad
user query cannot take the built-ins down with it. If the batch itself is
rejected as a bad query (a PromQL engine lacking a function), the source
falls back to one query per signal and reports which ones failed.

"No data" is not an error: an empty answer, NaN or ±Inf leave the signal
without a value. A backend that is down, slow or refusing credentials
raises (``BackendUnavailable``, ``QueryTimeout``, ``AuthenticationFailed``),
and the adapter keeps its last preferences.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Tuple

from ..errors import BadQuery, BadResponse, SourceError
from .aggregates import DIMS, INPUTS, REQUEST_SIGNALS, compute
from .promql import InstantResult, PromQLClient
from .signals import BUILTIN_CATALOG, Catalog, Signal, SignalValues

SIGNAL_LABEL = "dualtrack_signal"
_INPUT_PREFIX = "_input_"

QueryObserver = Callable[[float, Optional[str]], None]  # (seconds, error kind or None)


def _branch(signal: Signal, level: Tuple[str, ...], window: str) -> str:
    return f'label_replace({signal.query(level, window)}, "{SIGNAL_LABEL}", "{signal.name}", "", "")'


class PrometheusSource:
    """Signals from a PromQL engine over its HTTP API.

    ``window`` is the rate window (``"2m"``); keep it at least four scrape
    intervals long so ``rate()`` always has points.
    """

    name = "prometheus"

    def __init__(self, client: PromQLClient, *, window: str = "2m", batch: bool = True,
                 aggregates: bool = True, on_query: Optional[QueryObserver] = None) -> None:
        self.client = client
        self.window = window
        self.batch = batch
        self.aggregates = aggregates
        self._on_query = on_query
        self.last_query_count = 0

    def batch_query(self, catalog: Catalog = BUILTIN_CATALOG) -> str:
        """The single PromQL expression answering every built-in signal.

        With ``aggregates`` (the default) the request signals come from the
        eight rates of ``adapter.aggregates`` instead of their own PromQL forms.
        """
        branches = []
        if self.aggregates:
            for name, (promql, _) in INPUTS.items():
                branches.append(f'label_replace({promql.replace("{window}", self.window)}, '
                                f'"{SIGNAL_LABEL}", "{_INPUT_PREFIX}{name}", "", "")')
        for s in catalog:
            if s.builtin and not (self.aggregates and s.name in REQUEST_SIGNALS):
                branches.extend(_branch(s, level, self.window) for level in s.levels())
        return "\nor ".join(branches)

    def is_online(self) -> bool:
        return self.client.is_online()

    def _query(self, expr: str, at: Optional[float], deadline: Optional[float]) -> InstantResult:
        start = time.monotonic()
        self.last_query_count += 1
        try:
            result = self.client.instant(expr, at=at, deadline=deadline)
        except SourceError as err:
            if self._on_query is not None:
                self._on_query(time.monotonic() - start, err.kind)
            raise
        if self._on_query is not None:
            self._on_query(time.monotonic() - start, None)
        return result

    def fetch(self, catalog: Catalog = BUILTIN_CATALOG, at: Optional[float] = None,
              deadline: Optional[float] = None) -> SignalValues:
        """All signals at time ``at`` (default: now).

        Raises ``SourceError`` when the backend cannot answer at all; a
        signal whose own query is bad is recorded in ``values.errors``.
        """
        self.last_query_count = 0
        values = SignalValues()
        builtins = [s for s in catalog if s.builtin]
        if self.batch and builtins:
            try:
                self._store(values, self._query(self.batch_query(catalog), at, deadline), catalog)
            except (BadQuery, BadResponse):
                # Isolate the culprit: one query per signal.
                for signal in builtins:
                    self._fetch_one(values, signal, catalog, at, deadline)
        else:
            for signal in builtins:
                self._fetch_one(values, signal, catalog, at, deadline)
        for signal in catalog:
            if not signal.builtin:
                self._fetch_one(values, signal, catalog, at, deadline)
        return values

    def _fetch_one(self, values: SignalValues, signal: Signal, catalog: Catalog,
                   at: Optional[float], deadline: Optional[float]) -> None:
        expr = " or ".join(_branch(signal, level, self.window) for level in signal.levels())
        try:
            result = self._query(expr, at, deadline)
        except (BadQuery, BadResponse) as err:
            values.errors[signal.name] = f"{err.kind}: {err}"
            return
        self._store(values, result, catalog)

    @staticmethod
    def _store(values: SignalValues, result: InstantResult, catalog: Catalog) -> None:
        inputs: Dict[str, Dict[Tuple[Tuple[str, str], ...], float]] = {}
        for sample in result.samples:
            name = sample.labels.get(SIGNAL_LABEL)
            if name is None:
                continue
            if name.startswith(_INPUT_PREFIX):
                input_name = name[len(_INPUT_PREFIX):]
                if input_name in INPUTS and sample.is_finite:
                    keep = DIMS + ((INPUTS[input_name][1],) if INPUTS[input_name][1] else ())
                    key = tuple(sorted((k, v) for k, v in sample.labels.items() if k in keep))
                    inputs.setdefault(input_name, {})[key] = sample.value
                continue
            if name not in catalog:
                continue
            dims = catalog[name].dims
            labels: Dict[str, str] = {k: v for k, v in sample.labels.items() if k in dims}
            values.set(name, labels, sample.value)  # NaN and ±Inf are dropped: no data
        if inputs:
            compute(inputs, values)


def describe_queries(catalog: Catalog = BUILTIN_CATALOG, window: str = "2m") -> List[Tuple[str, str]]:
    """(signal, PromQL) for every signal and level — for docs and `--dry-run`."""
    out = []
    for signal in catalog:
        for level in signal.levels():
            out.append((signal.name + ("{" + ",".join(level) + "}" if level else ""), signal.query(level, window)))
    return out
