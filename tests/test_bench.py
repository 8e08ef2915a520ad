"""Tests for dualtrack.bench (the adaptation benchmark) and ``dualtrack bench adaptation``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualtrack.bench.adaptation import QUICK_POLICIES, format_report, run_suite
from dualtrack.cli import main


def test_bench_adaptation_quick_writes_json_with_a_ranking(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.json"
    code = main(["bench", "adaptation", "--quick", "--scenario", "api_outage", "--json", str(out), "--jobs", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "== api_outage" in printed and "vs oracle" in printed and f"results written to {out}" in printed

    data = json.loads(out.read_text())
    assert data["schema"] == "dualtrack.bench.adaptation/1" and data["quick"] is True
    assert set(data["objective"]["weights"]) == {"useful", "within_target", "quality", "savings", "compliance"}
    assert set(data["scenarios"]) == {"api_outage"}
    scenario = data["scenarios"]["api_outage"]
    assert scenario["duration_seconds"] == 900 and scenario["regime_changes"] == 4

    ranking = scenario["ranking"]
    assert sorted(ranking) == sorted(QUICK_POLICIES)
    scores = [scenario["policies"][p]["summary"]["objective"] for p in ranking]
    assert scores == sorted(scores, reverse=True)
    assert [scenario["policies"][p]["rank"] for p in ranking] == list(range(1, len(ranking) + 1))
    assert scenario["best_static"] in ("all_local", "all_api", "fixed_50_50")

    adaptive = scenario["policies"]["strategy:adaptive"]
    for key in ("p95_latency_seconds", "within_target_ratio", "total_cost", "quality_mean", "violation_seconds",
                "failed", "objective"):
        assert key in adaptive["summary"]
    assert set(adaptive["objective_components"]) == set(data["objective"]["weights"])
    assert len(adaptive["reactions"]) == 4 and all(r["applicable"] for r in adaptive["reactions"])
    assert all(not r["applicable"] for r in scenario["policies"]["all_api"]["reactions"])

    target = scenario["adaptive"]
    for key in ("beats_best_static", "oracle_gap", "within_oracle_limit", "reacts_in_time", "reactions"):
        assert key in target
    assert data["summary"]["scenarios_with_regime_changes"] == ["api_outage"]
    assert isinstance(data["summary"]["misses"], list)


def test_the_suite_is_deterministic_for_a_seed() -> None:
    args = dict(policies=["strategy:adaptive", "all_api"], seed=3, quick=True)
    a = run_suite(["battery_drain"], **args)
    b = run_suite(["battery_drain"], **args)
    pick = lambda r: {p: v["summary"] for p, v in r["scenarios"]["battery_drain"]["policies"].items()}  # noqa: E731
    assert pick(a) == pick(b)
    assert "battery_drain" in format_report(a)


def test_bad_arguments_exit_2_with_a_message(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "adaptation", "--quick", "--policy", "always_local"]) == 2
    assert "unknown policy 'always_local'" in capsys.readouterr().err
    assert main(["bench", "adaptation", "--quick", "--scenario", "no_such_scenario"]) == 2
    assert "no scenario named" in capsys.readouterr().err
