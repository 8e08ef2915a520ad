"""Strategy unit tests run in-process (``dualtrack.adapter.rule_tests``), without the CLI."""

from __future__ import annotations

from pathlib import Path

from dualtrack.adapter.rule_tests import run_tests
from dualtrack.adapter.strategy import load_strategies
from dualtrack.bundled import bundled_dir

STRATEGY = """\
strategy: s
preferences: {local_bias: 0.5}
max_step: {local_bias: 0.5}
rules:
  - name: slow_local
    when: latency_p95_seconds{path="local"} > 2 * latency_p95_seconds{path="api"}
    actions: {add: {local_bias: -0.2}}
tests:
  - name: a slow local track loses traffic
    cycles:
      - repeat: 2
        signals: {'latency_p95_seconds{path="local"}': 6.0, 'latency_p95_seconds{path="api"}': 1.0}
    expect:
      - cycle: 2
        fired: [slow_local]
        routing: {local_bias: {lt: 0.15}}
  - name: deliberately wrong
    cycles: [{signals: {}}]
    expect:
      - cycle: 1
        routing: {local_bias: 0.9}
"""


def test_the_bundled_strategies_pass_their_own_tests() -> None:
    report = run_tests(load_strategies(bundled_dir("rules")))
    assert report.ok, "\n".join(str(f) for f in report.failures)
    assert report.passed >= 6  # every shipped strategy carries tests


def test_a_failing_expectation_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(STRATEGY)
    report = run_tests(load_strategies(path))
    assert report.passed == 1
    [failure] = report.failures
    assert failure.test == "deliberately wrong"
    assert failure.source == str(path) and failure.line is not None
    assert "local_bias" in failure.message and "0.9" in failure.message
    assert str(failure).startswith(f"{path}:{failure.line}: deliberately wrong: ")
