"""Tests for ``dualtrack rules check|test|signals``."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from dualtrack.adapter.signals import BUILTIN_SIGNALS
from dualtrack.adapter.strategy import rule_files
from dualtrack.bundled import bundled_dir
from dualtrack.cli import main

SHIPPED = ["adaptive", "balanced", "cost", "latency_focused", "quality_focused", "resource_efficient"]
DOCS = Path(__file__).resolve().parents[1] / "docs" / "rules.md"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ------------------------------------------------------------------ check


def test_check_bundled_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    for path in rule_files([bundled_dir("rules")]):
        assert f"{path}: ok" in out
    assert f"{len(SHIPPED)} files, strategies: {', '.join(SHIPPED)}" in out


def test_check_reports_every_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "a_good.yaml", "strategy: good\n")
    unknown = write(tmp_path, "b_unknown.yaml", "strategy: b\nrelx: 0.1\n")
    condition = write(tmp_path, "c_condition.yaml", """\
        strategy: c
        rules:
          - name: slow
            when: latncy_p95_seconds > 1
            actions: {add: {local_bias: -0.1}}
        """)
    broken = write(tmp_path, "d_yaml.yaml", "strategy: d\nclamps: [unclosed\n")
    assert main(["rules", "check", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"{unknown}:2: relx: unknown field; did you mean 'relax'?",
        f"{condition}:4: rules[0].when: rule 'slow': unknown signal 'latncy_p95_seconds'; "
        "did you mean 'latency_p95_seconds'? (column 1)",
        f"{broken}:3: invalid YAML: expected ',' or ']', but got '<stream end>'",
    ]
    assert f"{good}: ok" in out and f"{unknown}: ok" not in out
    assert "4 files, 3 invalid, strategies: good" in out


def test_check_reports_cross_file_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "base.yaml", "strategy: base\n")
    adaptive = write(tmp_path, "ad.yaml", "strategy: ad\nmodes:\n  default: bsae\n  select: []\n")
    assert main(["rules", "check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == f"{adaptive}:3: modes.default: no strategy named 'bsae'; did you mean 'base'?\n"


def test_check_a_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "a.yaml", "strategy: a\n")
    missing = tmp_path / "missing.yaml"
    assert main(["rules", "check", str(missing), str(tmp_path / "a.yaml")]) == 1
    out, err = capsys.readouterr()
    assert err == f"{missing}: no such file or folder\n"
    assert "1 files, strategies: a" in out


def test_check_a_single_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "a.yaml", "strategy: a\n")
    assert main(["rules", "check", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok\n1 files, strategies: a\n"


# ------------------------------------------------------------------ test


def test_test_bundled_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "test"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"^(\d+)/(\d+) strategy tests passed$", out, re.M)
    assert match and match.group(1) == match.group(2) and int(match.group(1)) >= len(SHIPPED)
    assert "FAILED" not in out


FAILING = """\
strategy: s
exploration_floor: 0.05
rules:
  - name: slow_local
    when: latency_p95_seconds{path="local"} > 2
    actions: {add: {local_bias: -0.1}}
tests:
  - name: passes
    cycles: [{signals: {'latency_p95_seconds{path="local"}': 5}}]
    expect:
      - cycle: 1
        fired: [slow_local]
  - name: wrong expectation
    cycles:
      - repeat: 2
        signals: {'latency_p95_seconds{path="local"}': 5}
    expect:
      - cycle: 1
        routing: {local_bias: 0.9}
      - cycle: 2
        not_fired: [slow_local]
      - cycle: 7
        fired: [slow_local]
"""


def test_test_reports_failures_with_file_line_and_cycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "s.yaml", FAILING)
    assert main(["rules", "test", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"FAILED {path}:18: wrong expectation: cycle 1: routing.local_bias: expected 0.9, got 0.4",
        f"FAILED {path}:20: wrong expectation: cycle 2: expected rule 'slow_local' not to fire",
        f"FAILED {path}:22: wrong expectation: expects cycle 7 but the test only runs 2 cycles",
        "1/2 strategy tests passed",
    ]


def test_test_reports_a_bad_signal_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "s.yaml", """\
        strategy: s
        tests:
          - name: typo
            cycles: [{signals: {latncy_p95_seconds: 1}}]
            expect: [{cycle: 1}]
        """)
    assert main(["rules", "test", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"FAILED {path}:4: (loading tests): unknown signal 'latncy_p95_seconds'" in out


def test_test_reports_load_errors_and_runs_the_good_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "bad.yaml", "strategy: bad\nrelax: 2\n")
    write(tmp_path, "good.yaml", """\
        strategy: good
        tests:
          - name: baseline
            cycles: [{signals: {}}]
            expect: [{cycle: 1, routing: {local_bias: 0.5}}]
        """)
    assert main(["rules", "test", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert err == f"{bad}:2: relax: 2 is greater than the maximum of 1\n"
    assert "1/1 strategy tests passed" in out


# ------------------------------------------------------------------ signals


def test_signals_lists_every_builtin_signal(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "signals"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(BUILTIN_SIGNALS)
    for line, signal in zip(lines, BUILTIN_SIGNALS, strict=False):
        shown = signal.name + ("{" + ",".join(signal.dims) + "}" if signal.dims else "")
        assert line.split()[0] == shown
        assert signal.unit in line and signal.help in line
    assert any(line.startswith("latency_p95_seconds{path,query_class}") for line in lines)


def test_docs_list_every_builtin_signal() -> None:
    text = DOCS.read_text(encoding="utf-8")
    missing = [s.name for s in BUILTIN_SIGNALS if f"`{s.name}`" not in text]
    assert not missing, f"docs/rules.md lacks {missing}; regenerate its signal table"
