"""``PrometheusSource``: every signal of a cycle, fetched with one PromQL query.

Request signals (latency, success, cost, quality... at every level of
aggregation) are computed from nine aggregated rates fetched once
(``adapter.aggregates``): Prometheus scans the raw series nine times per
cycle instead of once per signal and level. Machine and limit signals use
their own PromQL forms.

With ``recorded=True`` (``dualtrack adapter --recording-rules``) the eight
rates are read from the series recording_rules.yml records for the fleet
(``aggregates.RECORDED_INPUTS``) instead of computed from the raw metrics,
so a cycle costs Prometheus a few dozen series instead of every router's
histogram buckets. It needs those rules loaded in the Prometheus queried and
the rules' window, 2m::

    source = PrometheusSource(PromQLClient(url), window="2m", recorded=True)

The values are the raw mode's as of the rules' last evaluation (at most one
evaluation interval old), which ``tests/test_recorded_inputs.py`` checks on
real data. If Prometheus answers with data for other signals but none for
the recorded inputs, the rules are most likely not loaded: the request
signals read as no data and the source logs that once.

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
falls back to one query per signal and reports which ones failed; if not
one built-in signal is answered that way, the backend is what is broken
and ``fetch`` raises (the cycle fails, the last preferences stay).

"No data" is not an error: an empty answer, NaN or ±Inf leave the signal
without a value. A backend that is down, slow or refusing credentials
raises (``SourceUnavailable``, ``QueryTimeout``, ``AuthenticationFailed``),
and the adapter keeps its last preferences.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Dict, List, Optional, Tuple

from ..errors import BadQuery, BadResponse, SourceError
from ..preferences import ConstraintState
from ..vocabulary import check_promql_duration, parse_duration
from .aggregates import DIMS, INPUTS, RECORDED_INPUTS, RECORDED_WINDOW, REQUEST_SIGNALS, compute
from .promql import InstantResult, PromQLClient, escape_label_value
from .signals import BUILTIN_CATALOG, Catalog, Signal, SignalValues

log = logging.getLogger(__name__)

SIGNAL_LABEL = "dualtrack_signal"
_INPUT_PREFIX = "_input_"

QueryObserver = Callable[[float, Optional[str]], None]  # (seconds, error kind or None)


def check_window(window: object) -> str:
    """``window`` if it is a PromQL duration (``2m``, ``90s``, ``1h30m``), else ``ValueError``.

    The window is pasted into every rate() of the batch query, so anything
    else (a typo, or ``2m]) or vector(1) or rate(x[2m``) must be refused at
    start, not sent to Prometheus every cycle.
    """
    try:
        return check_promql_duration(window)
    except ValueError as err:
        raise ValueError(f"window: {err}") from None


def interval_duration(seconds: float) -> str:
    """The adaptation interval as a PromQL range (``30s``; ``500ms`` below a second)."""
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def interval_range(interval: str, window: str) -> Tuple[str, float]:
    """The range the ``interval_*`` counts are taken over, and the factor that
    makes them counts per adaptation interval.

    ``increase()`` needs two scrapes inside its range. The rate window is at
    least four scrape intervals (:class:`PrometheusSource`), so a range of half
    the window always holds two; an adaptation interval shorter than that
    (a demo adapting every second on a 1 s scrape) is read as the mean count
    per interval over half the window, not as no data at all.
    """
    interval_s, half_window_s = parse_duration(interval), parse_duration(window) / 2
    if interval_s >= half_window_s:
        return interval, 1.0
    return interval_duration(half_window_s), interval_s / half_window_s


def _branch(signal: Signal, level: Tuple[str, ...], window: str, interval: str = "30s",
            interval_scale: float = 1.0, query: Optional[str] = None) -> str:
    """One signal at one level, tagged with its name; ``query`` replaces the signal's own form."""
    # The name is validated ([a-zA-Z_][a-zA-Z0-9_]*) but escaped all the same:
    # nothing from configuration reaches PromQL as a raw string literal.
    name = escape_label_value(signal.name)
    if query is None:
        query = signal.query(level, window, interval, interval_scale)
    return f'label_replace({query}, "{SIGNAL_LABEL}", "{name}", "", "")'


class PrometheusSource:
    """Signals from a PromQL engine over its HTTP API.

    ``window`` is the rate window (``"2m"``); keep it at least four scrape
    intervals long so ``rate()`` always has points. ``recorded`` reads the
    request signals' inputs from recording_rules.yml's series (their window
    is 2m: any other ``window`` is a ``ValueError``).
    """

    name = "prometheus"

    def __init__(self, client: PromQLClient, *, window: str = "2m", interval: str = "30s", batch: bool = True,
                 aggregates: bool = True, recorded: bool = False,
                 on_query: Optional[QueryObserver] = None) -> None:
        check_window(window)
        try:
            check_promql_duration(interval)
        except ValueError as err:
            raise ValueError(f"interval: {err}") from None
        if recorded and window != RECORDED_WINDOW:
            raise ValueError(f"recorded=True reads the recording rules' series, which are rates over "
                             f"{RECORDED_WINDOW}; got window={window!r} (use window={RECORDED_WINDOW!r}, "
                             f"or recorded=False to compute rates over {window!r} from the raw metrics)")
        if recorded and not aggregates:
            raise ValueError("recorded=True reads the nine aggregated inputs; it needs aggregates=True")
        self.client = client
        self.window = window
        self.interval = interval  # the adaptation interval, what the interval_* signals count over
        self._interval_range, self._interval_scale = interval_range(interval, window)
        self._interval_seconds = parse_duration(interval)
        self.batch = batch
        self.aggregates = aggregates
        self.recorded = recorded
        self._on_query = on_query
        self._warned_no_recorded = False
        self.last_query_count = 0

    def _branch(self, signal: Signal, level: Tuple[str, ...]) -> str:
        recorded = signal.recorded_query(level, self._interval_seconds) if self.recorded else None
        return _branch(signal, level, self.window, self._interval_range, self._interval_scale, recorded)

    def _input_queries(self) -> Dict[str, str]:
        if self.recorded:
            return dict(RECORDED_INPUTS)
        return {name: promql.replace("{window}", self.window) for name, (promql, _) in INPUTS.items()}

    def batch_query(self, catalog: Catalog = BUILTIN_CATALOG) -> str:
        """The single PromQL expression answering every built-in signal.

        With ``aggregates`` (the default) the request signals come from the
        nine rates of ``adapter.aggregates`` instead of their own PromQL forms;
        with ``recorded`` those rates are the recorded series.
        """
        branches = []
        if self.aggregates:
            for name, promql in self._input_queries().items():
                branches.append(f'label_replace({promql}, "{SIGNAL_LABEL}", "{_INPUT_PREFIX}{name}", "", "")')
        for s in catalog:
            if s.builtin and not (self.aggregates and s.name in REQUEST_SIGNALS):
                branches.extend(self._branch(s, level) for level in s.levels())
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
                got_inputs = self._store(values, self._query(self.batch_query(catalog), at, deadline), catalog)
                if self.recorded:
                    self._check_recorded(got_inputs, have_other=len(values) > 0)
            except (BadQuery, BadResponse):
                # Isolate the culprit: one query per signal.
                self._fetch_each(values, builtins, catalog, at, deadline)
        else:
            self._fetch_each(values, builtins, catalog, at, deadline)
        for signal in catalog:
            if not signal.builtin:
                self._fetch_one(values, signal, catalog, at, deadline)
        return values

    def fetch_at(self, catalog: Catalog, at: float, *, deadline: Optional[float] = None) -> SignalValues:
        """All signals as of ``at`` (unix seconds): the history the adapter replays at start."""
        return self.fetch(catalog, at=at, deadline=deadline)

    def constraint_states(self, values: SignalValues) -> Dict[str, ConstraintState]:
        """Constraint states as seen through PromQL: the routers' exported
        ``dualtrack_constraint_violated`` flags, without value or limit."""
        return {dict(key)["constraint"]: ConstraintState(bool(flag))
                for key, flag in values.series("constraint_violated").items() if key}

    def _fetch_each(self, values: SignalValues, signals: List[Signal], catalog: Catalog,
                    at: Optional[float], deadline: Optional[float]) -> None:
        """One query per signal. If not one of them is answered, the backend
        itself is broken (garbage, wrong types, oversize, every query
        rejected), not one signal: raise the first error, so that the cycle
        fails and keeps the last preferences instead of publishing fresh
        "no data" ones that would hide the outage from the expiry policy."""
        first: Optional[SourceError] = None
        answered = False
        for signal in signals:
            err = self._fetch_one(values, signal, catalog, at, deadline)
            if err is None:
                answered = True
            elif first is None:
                first = err
        if first is not None and not answered:
            raise first

    def _fetch_one(self, values: SignalValues, signal: Signal, catalog: Catalog,
                   at: Optional[float], deadline: Optional[float]) -> Optional[SourceError]:
        """Query one signal into ``values``; a bad query or answer is recorded
        in ``values.errors`` and returned (``None`` when answered)."""
        expr = " or ".join(self._branch(signal, level) for level in signal.levels())
        try:
            result = self._query(expr, at, deadline)
        except (BadQuery, BadResponse) as err:
            values.errors[signal.name] = f"{err.kind}: {err}"
            return err
        self._store(values, result, catalog)
        return None

    @staticmethod
    def _store(values: SignalValues, result: InstantResult, catalog: Catalog) -> bool:
        """Add ``result``'s samples to ``values``; True if it carried aggregated inputs."""
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
        return bool(inputs)

    def _check_recorded(self, have_inputs: bool, have_other: bool) -> None:
        # Other signals answered but no recorded input did: the recording
        # rules are most likely not loaded. Said once, not every cycle.
        if have_inputs:
            self._warned_no_recorded = False
        elif have_other and not self._warned_no_recorded:
            self._warned_no_recorded = True
            log.warning("no recorded inputs (path_query_class_outcome:dualtrack_requests:rate2m and the rest) "
                        "although Prometheus has other data: are recording_rules.yml loaded there? Request "
                        "signals read as no data until they are.")


def describe_queries(catalog: Catalog = BUILTIN_CATALOG, window: str = "2m") -> List[Tuple[str, str]]:
    """(signal, PromQL) for every signal and level — for docs and `--dry-run`."""
    out = []
    for signal in catalog:
        for level in signal.levels():
            out.append((signal.name + ("{" + ",".join(level) + "}" if level else ""), signal.query(level, window)))
    return out
