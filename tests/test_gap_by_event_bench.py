"""benchmarks/gap_by_event.py: the run is cut at its events, each stretch's share of J is counted as
J counts it, the stretches add up to the whole gap, and the command line says what is wrong."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dualtrack.objective import OBJECTIVE
from dualtrack.simulation.scenario import load_scenario
from support.bench_scripts import bench_script, run_script


def _scenario(events: Any, duration: float = 300.0) -> SimpleNamespace:
    return SimpleNamespace(timeline=[SimpleNamespace(label=label, at=at) for label, at in events], duration=duration,
                           constraints={"min_quality_score": 0.7, "target_latency_ms": 2000})


def test_the_run_is_cut_at_its_events_and_a_kind_has_no_numbers() -> None:
    mod = bench_script("gap_by_event")
    cuts = mod.stretches(_scenario([("API prices x3.6", 100.0), ("API prices back to normal", 200.0)]))
    assert cuts == [(mod.START, 0.0, 100.0), ("API prices x3.6", 100.0, 200.0),
                    ("API prices back to normal", 200.0, 301.0)]
    assert mod.kind("API rate limit of 34/min") == "API rate limit of N/min"
    assert mod.kind("API prices x3.6") == "API prices xN"
    assert mod.stretches(_scenario([])) == [(mod.START, 0.0, 301.0)]
    # --warm-up cuts the first seconds from the start stretch, unless an event comes first.
    warm = mod.warm_up_label(60.0)
    assert mod.stretches(_scenario([("API prices x3.6", 100.0)]), warm_up=60.0) == [
        (warm, 0.0, 60.0), (mod.START, 60.0, 100.0), ("API prices x3.6", 100.0, 301.0)]
    assert mod.stretches(_scenario([("API prices x3.6", 30.0)]), warm_up=60.0) == [
        (mod.START, 0.0, 30.0), ("API prices x3.6", 30.0, 301.0)]
    assert mod.kind(warm) == "warm-up (the first N s)"


def _request(arrival: float, *, ok: bool = True, quality: float = 0.9, latency: float = 1.0,
             cost: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(arrival=arrival, outcome="success" if ok else "error", quality=quality if ok else None,
                           latency=latency, cost=cost)


def test_each_stretch_holds_its_queries_and_seconds_as_j_weighs_them() -> None:
    mod = bench_script("gap_by_event")
    scenario = _scenario([("local model server down", 100.0)])
    requests = [
        _request(10.0, quality=0.9, latency=1.0),               # useful, in time
        _request(50.0, quality=0.6, latency=3.0, cost=0.01),    # below the floor, late, paid
        _request(150.0, ok=False),                              # failed: no answer
        _request(250.0, quality=0.8, latency=1.0, cost=0.03),
    ]
    series = [{"t": 100.0, "violations": {"memory": 4.0}},
              {"t": 200.0, "violations": {"memory": 2.0, "cost_budget": 6.0}},  # the larger counted
              {"t": 300.0, "violations": {}}]
    result = SimpleNamespace(requests=requests, series=series, summary={"all_api_cost": 0.08})
    before, after = mod.shares_of_j(result, scenario)
    assert mod.compliance_of_j(result, scenario) == pytest.approx([-OBJECTIVE.compliance * 4.0 / 300,
                                                                  -OBJECTIVE.compliance * 6.0 / 300])
    w = OBJECTIVE
    # Four queries, three answers; the all-API cost 0.08; a 300-second run.
    assert before == pytest.approx((w.useful + w.within_target) / 4 + w.quality * (0.9 + 0.6) / 3
                                   - w.savings * 0.01 / 0.08 - w.compliance * 4.0 / 300)
    assert after == pytest.approx((w.useful + w.within_target) / 4 + w.quality * 0.8 / 3
                                  - w.savings * 0.03 / 0.08 - w.compliance * 6.0 / 300)


def test_the_stretches_of_a_real_run_add_up_to_its_gap() -> None:
    mod = bench_script("gap_by_event")
    scenario = load_scenario("api_outage").time_scaled(0.25)
    row = mod.gap_by_stretch(scenario, {"short": 1.0, "medium": 0.0, "long": 0.0}, warm_up=30.0)
    labels = [s["label"] for s in row["stretches"]]
    assert labels == [mod.warm_up_label(30.0), mod.START] + [e.label for e in scenario.timeline]
    # Each stretch's compliance part is within its share, and both are differences of J's terms.
    assert all(abs(s["compliance"]) <= OBJECTIVE.compliance for s in row["stretches"])
    assert row["gap"] != 0.0
    assert abs(row["residual"]) < 0.002
    assert sum(s["gap"] for s in row["stretches"]) == pytest.approx(row["gap"] - row["residual"])
    table = mod.by_kind([row])
    assert {r["kind"] for r in table} == {s["kind"] for s in row["stretches"]}
    assert sum(r["mean_compliance"] for r in table) == pytest.approx(sum(s["compliance"] for s in row["stretches"]))
    assert [r["mean_gap"] for r in table] == sorted(r["mean_gap"] for r in table)
    # Each constraint's seconds over its limit are the runs' own (the split's run differs from adaptive's).
    seconds = row["violation_seconds"]
    assert set(seconds) == {"adaptive", "fixed"} and seconds["adaptive"] != seconds["fixed"]
    limits = mod.by_constraint([row])
    assert {r["constraint"] for r in limits} == set(seconds["adaptive"]) | set(seconds["fixed"])
    assert all(r["excess"] == pytest.approx(r["adaptive"] - r["fixed"]) for r in limits)


def test_the_seconds_over_each_limit_are_summed_and_the_largest_excess_comes_first() -> None:
    mod = bench_script("gap_by_event")
    rows = [{"scenario": "a", "violation_seconds": {"adaptive": {"memory": 30.0, "cost_budget": 100.0},
                                                    "fixed": {"memory": 50.0, "cost_budget": 40.0}}},
            {"scenario": "b", "violation_seconds": {"adaptive": {"cost_budget": 20.0},
                                                    "fixed": {"cost_budget": 0.0, "battery": 5.0}}},
            {"scenario": "c"}]  # a row of an older JSON, without the seconds
    limits = mod.by_constraint(rows)
    assert [r["constraint"] for r in limits] == ["cost_budget", "battery", "memory"]
    budget = limits[0]
    assert (budget["adaptive"], budget["fixed"], budget["excess"]) == (120.0, 40.0, 80.0)
    assert (budget["most"], budget["most_excess"]) == ("a", 60.0)
    assert (limits[1]["excess"], limits[1]["most"]) == (-5.0, "b")
    assert (limits[2]["excess"], limits[2]["most"]) == (-20.0, "a")


def test_a_file_that_is_not_a_bench_json_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    proc = run_script("gap_by_event", str(bad))
    assert proc.returncode == 2
    assert "not a bench JSON" in proc.stderr and "Traceback" not in proc.stderr
    missing = tmp_path / "no_split.json"
    missing.write_text(json.dumps({"scenarios": {"steady": {"policies": {}}}}))
    proc = run_script("gap_by_event", str(missing))
    assert proc.returncode == 2
    assert "no perclass_hindsight split for scenario 'steady'" in proc.stderr


def test_set_changes_the_starting_parameters_both_policies_run_with(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = bench_script("gap_by_event")
    assert mod.parse_set("local.thermal.threshold=1.0") == ("local.thermal.threshold", 1.0)
    assert mod.parse_set(" workload.rate = 28") == ("workload.rate", 28)
    for bad in ("local.thermal.threshold", "=1.0"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected PATH=VALUE"):
            mod.parse_set(bad)
    seen: dict = {}

    def fake_gap(scenario: Any, split: Any, rules: Any, warm_up: float) -> dict:
        seen["scenario"], seen["split"] = scenario, split
        return {}

    def fake_search(evaluator: Any, include: Any = ()) -> SimpleNamespace:
        seen["searched"], seen["include"] = evaluator.scenario, list(include)
        return SimpleNamespace(split={"short": 0.25, "medium": 0.0, "long": 1.0})

    small = load_scenario("api_outage").time_scaled(0.1)
    kept = {"short": 1.0, "medium": 0.5, "long": 0.0}
    monkeypatch.setattr(mod, "scenario_for", lambda name: small)
    monkeypatch.setattr(mod, "gap_by_stretch", fake_gap)
    monkeypatch.setattr(mod, "search_split", fake_search)
    row = mod._one(("api_outage", kept, None, 0.0, {"local.thermal.threshold": 1.0}))
    assert seen["scenario"].params["local"]["thermal"]["threshold"] == 1.0
    assert small.params["local"]["thermal"]["threshold"] != 1.0  # the scenario itself is left as it was
    # Another world, another best split: searched again there, the JSON's among the candidates.
    assert seen["searched"] is seen["scenario"] and seen["include"] == [kept]
    assert seen["split"] == row["split"] == {"short": 0.25, "medium": 0.0, "long": 1.0}
    row = mod._one(("api_outage", kept, None, 0.0, {}))
    assert seen["scenario"] is small and seen["split"] == row["split"] == kept


def test_a_set_of_an_unknown_parameter_is_a_one_line_error(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"scenarios": {"steady": {"policies": {
        "perclass_hindsight": {"split": {"short": 1.0, "medium": 0.5, "long": 0.0}}}}}}))
    proc = run_script("gap_by_event", str(results), "--set", "local.thermall.threshold=1.0")
    assert proc.returncode == 2
    assert "--set: steady:" in proc.stderr and "local.thermall.threshold" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_script("gap_by_event", str(results), "--set", "threshold")
    assert proc.returncode == 2 and "expected PATH=VALUE" in proc.stderr and "Traceback" not in proc.stderr
