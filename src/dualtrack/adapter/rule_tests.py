"""Unit tests for strategies, in the spirit of ``promtool test rules``.

A strategy file may carry ``tests:``. Each test feeds signal values to the
strategy over a sequence of cycles and checks the preferences, the rules
fired and the mode at given cycles::

    tests:
      - name: a slow local track loses traffic
        interval: 30s
        cycles:
          - repeat: 3
            signals:
              'latency_p95_seconds{path="local"}': 6.0
              'latency_p95_seconds{path="api"}': 1.0
        expect:
          - cycle: 3
            fired: [shift_from_slow_local]
            routing: {local_bias: {lt: 0.5}}

A cycle may also give ``evidence``: the last interval's calls per track and
class (``local/short: {calls: 20, success: 0.95, quality: 0.85, latency: 1.2}``),
expanded into the ``interval_*`` signals an ``objective:`` strategy reads.

Signal values not listed in a cycle are *no data*. ``dualtrack rules test``
runs every test of every file given and reports failures as
``file:line: test: cycle N: ...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import ConfigError
from .conditions import ConditionError, parse_selector
from .engine import Decision, RuleEngine
from .signals import SignalValues
from .strategy import PREFS, Strategy, StrategySet, parse_duration

TOLERANCE = 1e-6


@dataclass
class TestFailure:
    source: str
    line: Optional[int]
    test: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.test}: {self.message}"


@dataclass
class TestReport:
    passed: int
    failures: List[TestFailure]

    @property
    def ok(self) -> bool:
        return not self.failures


def _check(expected: Any, actual: Optional[float]) -> Optional[str]:
    """None when ``actual`` meets ``expected`` (a number or {lt, le, gt, ge, eq})."""
    if actual is None:
        return "no value"
    if isinstance(expected, (int, float)):
        return None if abs(actual - expected) <= TOLERANCE else f"expected {expected:g}, got {actual:.6g}"
    problems = []
    for op, bound in expected.items():
        ok = {"lt": actual < bound, "le": actual <= bound + TOLERANCE, "gt": actual > bound,
              "ge": actual >= bound - TOLERANCE, "eq": abs(actual - bound) <= TOLERANCE}[op]
        if not ok:
            problems.append(f"{op} {bound:g}")
    return None if not problems else f"expected {' and '.join(problems)}, got {actual:.6g}"


def _signals(strategy: Strategy, raw: Mapping[str, Any], path: Tuple[Any, ...],
             strategies: StrategySet) -> SignalValues:
    doc = strategy.document
    assert doc is not None
    values = SignalValues()
    for key, value in (raw or {}).items():
        try:
            name, labels = parse_selector(key)
        except ConditionError as err:
            raise doc.error(path + (key,), f"bad signal key: {err}") from err
        if name not in strategies.catalog:
            raise doc.error(path + (key,), f"unknown signal {name!r}")
        values.set(name, labels, value)
    return values


def _evidence(raw: Mapping[str, Mapping[str, float]], values: SignalValues) -> None:
    """Expand ``evidence: {local/short: {calls: 20, success: 0.9, ...}}`` into the interval_* signals."""
    for key, e in (raw or {}).items():
        track, _, query_class = key.partition("/")
        calls = float(e["calls"])
        ok = calls * float(e.get("success", 1.0))
        refused = calls * float(e.get("rate_limited", 0.0))  # a refusal: free, and at once
        scored = ok
        labels = {"path": track, "query_class": query_class}
        for name, value in (
                ("interval_calls", calls), ("interval_successes", ok),
                ("interval_timeouts", calls * float(e.get("timeouts", 0.0))),
                ("interval_within_target", ok * float(e.get("within", 1.0))),
                ("interval_useful", scored * float(e.get("useful", 1.0))),
                ("interval_quality_sum", scored * float(e.get("quality", 0.9))),
                ("interval_quality_count", scored),
                ("interval_cost_dollars", (calls - refused) * float(e.get("cost", 0.0))),
                ("interval_latency_sum", (calls - refused) * float(e.get("latency", 1.0))),
                ("interval_latency_count", calls),
                ("interval_rate_limited", refused)):
            values.set(name, labels, value)


def _compare(decision: Decision, expect: Mapping[str, Any]) -> List[str]:
    problems: List[str] = []
    fired = set(decision.fired)
    for rule in expect.get("fired", []):
        if rule not in fired:
            problems.append(f"expected rule {rule!r} to fire; fired: {sorted(fired) or 'none'}")
    for rule in expect.get("not_fired", []):
        if rule in fired:
            problems.append(f"expected rule {rule!r} not to fire")
    if "mode" in expect and decision.mode != expect["mode"]:
        problems.append(f"expected mode {expect['mode']!r}, got {decision.mode!r}")
    for pref, exp in (expect.get("routing") or {}).items():
        p = _check(exp, decision.routing.get(pref))
        if p:
            problems.append(f"routing.{pref}: {p}")
    for qc, prefs in (expect.get("query_classes") or {}).items():
        if qc not in decision.query_classes:
            problems.append(f"query class {qc!r} is not configured in this test")
            continue
        for pref, exp in prefs.items():
            p = _check(exp, decision.query_classes[qc].get(pref))
            if p:
                problems.append(f"query_classes.{qc}.{pref}: {p}")
    for path, exp in (expect.get("timeouts_seconds") or {}).items():
        p = _check(exp, decision.timeouts_seconds.get(path))
        if p:
            problems.append(f"timeouts_seconds.{path}: {p}")
    for track, healthy in (expect.get("healthy") or {}).items():
        if decision.healthy.get(track) is not healthy:
            problems.append(f"expected {track} healthy={healthy}, got {decision.healthy.get(track)}")
    return problems


def run_strategy_tests(strategies: StrategySet, strategy: Strategy) -> TestReport:
    doc = strategy.document
    assert doc is not None
    passed = 0
    failures: List[TestFailure] = []
    for index, test in enumerate(strategy.tests):
        path: Tuple[Any, ...] = ("tests", index)
        name = test["name"]
        interval = parse_duration(test.get("interval", "30s"))
        classes = test.get("query_classes") or ["short", "medium", "long"]
        engine = RuleEngine(strategies, strategy.name, query_classes=classes, interval_seconds=interval)
        expectations: Dict[int, List[Tuple[int, Mapping[str, Any]]]] = {}
        for e_index, e in enumerate(test["expect"]):
            expectations.setdefault(e["cycle"], []).append((e_index, e))
        cycle = 0
        test_problems: List[TestFailure] = []
        for c_index, step in enumerate(test["cycles"]):
            values = _signals(strategy, step.get("signals") or {}, path + ("cycles", c_index, "signals"),
                              strategies)
            _evidence(step.get("evidence") or {}, values)
            for _ in range(step.get("repeat", 1)):
                cycle += 1
                decision = engine.evaluate(values, now=(cycle - 1) * interval)
                for e_index, expect in expectations.pop(cycle, []):
                    for problem in _compare(decision, expect):
                        test_problems.append(TestFailure(doc.source, doc.line(path + ("expect", e_index)), name,
                                                         f"cycle {cycle}: {problem}"))
        for _, leftovers in sorted(expectations.items()):
            for e_index, expect in leftovers:
                test_problems.append(TestFailure(
                    doc.source, doc.line(path + ("expect", e_index)), name,
                    f"expects cycle {expect['cycle']} but the test only runs {cycle} cycles"))
        if test_problems:
            failures.extend(test_problems)
        else:
            passed += 1
    return TestReport(passed, failures)


def run_tests(strategies: StrategySet) -> TestReport:
    """Run the tests of every strategy in the set."""
    passed = 0
    failures: List[TestFailure] = []
    for name in strategies.names():
        try:
            report = run_strategy_tests(strategies, strategies[name])
        except ConfigError as err:
            failures.append(TestFailure(err.source or name, err.line, "(loading tests)", str(err.message)))
            continue
        passed += report.passed
        failures.extend(report.failures)
    return TestReport(passed, failures)


__all__ = ["TestFailure", "TestReport", "run_strategy_tests", "run_tests", "PREFS"]
