"""benchmarks/trace_adaptation.py: the per-cycle trace is the plan's own split, the window table's
arithmetic is right, and the command line says what is wrong without a traceback."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, List

import pytest

from dualtrack.objective import OBJECTIVE
from dualtrack.simulation.generator import generate_scenario
from dualtrack.simulation.scenario import load_scenario
from support.bench_scripts import bench_script, run_script


def test_a_generated_scenario_is_named_as_the_bench_names_it() -> None:
    mod = bench_script("trace_adaptation")
    assert mod.scenario_for("random_3_010").name == generate_scenario(3, 10).name == "random_3_010"
    assert mod.scenario_for("steady").name == "steady"


def test_each_cycle_traced_is_the_split_the_preferences_published() -> None:
    mod = bench_script("trace_adaptation")
    scenario = load_scenario("api_outage").time_scaled(0.25)
    result, cycles = mod.trace(scenario)
    assert len(cycles) == len(result.series) > 10
    for cycle, row in zip(cycles, result.series, strict=True):
        assert cycle["t"] == pytest.approx(row["t"])
        published = {c: v["local_bias"] for c, v in row["preferences"]["by_class"].items()}
        assert cycle["shares"] == pytest.approx(published)
        assert any(r.startswith("short: local") for r in cycle["reasons"])
    # The outage is detected, and the trace says so in the cycle that saw it.
    assert any("api" in c["changed"] for c in cycles)
    assert result.requests is not None and len(result.requests) == result.summary["requests"]


def test_each_cycle_shows_the_calls_the_simulated_local_server_held_waiting() -> None:
    mod = bench_script("trace_adaptation")
    base = {"changed": {}, "slots": None, "capacity": None, "memory_slots": None, "planned_load": None,
            "base_service": {}, "arrivals": {}, "reasons": [], "fired": [], "applied": None,
            "shares": {"short": 0.99}}
    lines = mod.cycle_lines([dict(base, t=30.0, waiting=42), dict(base, t=60.0, waiting=None)], 0.0, 100.0,
                            reasons=False)
    assert " waiting=42 " in lines[0] and " waiting=- " in lines[1]
    # A real run: the count is the simulator's own queue at the cycle.
    result, cycles = mod.trace(load_scenario("burst_load").time_scaled(0.25))
    queues = [row["local_queue"] for row in result.series]
    assert [c["waiting"] for c in cycles] == queues
    assert all(isinstance(q, int) and q >= 0 for q in queues)


def test_a_cycle_shows_what_the_router_applied_when_it_did_not_follow_the_plan() -> None:
    mod = bench_script("trace_adaptation")
    base = {"changed": {}, "slots": None, "capacity": None, "memory_slots": None, "planned_load": None,
            "base_service": {}, "arrivals": {}, "reasons": []}
    followed = dict(base, t=30.0, shares={"short": 0.99, "long": 0.01}, applied={"short": 0.95, "long": 0.01},
                    fired=[])
    overridden = dict(base, t=60.0, shares={"short": 0.99, "long": 0.01}, applied={"short": 0.0, "long": 0.0},
                      fired=["unhealthy_track"])
    lines = mod.cycle_lines([followed, overridden], 0.0, 100.0, reasons=False)
    assert len(lines) == 4 and lines[0].startswith("t=     30") and lines[1].startswith("t=     60")
    assert lines[2].strip() == "applied: short=0.00 long=0.00"
    assert lines[3].strip() == "fired: unhealthy_track"
    # A real run: the applied shares are the next interval's, and routine rules are left out.
    result, cycles = mod.trace(load_scenario("api_outage").time_scaled(0.25))
    assert all(set(c["fired"]).isdisjoint(mod.ROUTINE_RULES) for c in cycles)
    assert cycles[-1]["applied"] is None and all(c["applied"] for c in cycles[:-1])
    assert any(c["fired"] for c in cycles)


def _request(qc: str, track: Any, *, arrival: float, ok: bool = True, quality: float = 0.9, latency: float = 1.0,
             cost: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(spec=SimpleNamespace(query_class=qc), answered_by=track, arrival=arrival,
                           outcome="success" if ok else "error", quality=quality if ok else None, latency=latency,
                           cost=cost)


def test_the_window_table_counts_each_class_and_track_and_values_a_query_as_j_does() -> None:
    mod = bench_script("trace_adaptation")
    scenario = SimpleNamespace(constraints={"min_quality_score": 0.7, "target_latency_ms": 2000})
    requests: List[SimpleNamespace] = [
        _request("short", "local", arrival=10.0, quality=0.9, latency=1.0),
        _request("short", "local", arrival=20.0, quality=0.6, latency=3.0),  # below the floor, late
        _request("short", "api", arrival=30.0, quality=0.8, latency=1.5, cost=0.004),
        _request("long", None, arrival=40.0, ok=False),
        _request("long", "api", arrival=500.0, cost=0.01),  # outside the window
    ]
    # The run's all-API cost: 0.02 over 5 queries, 0.004 a query on average.
    result = SimpleNamespace(requests=requests, summary={"all_api_cost": 0.02})
    table = mod.window_table(result, scenario, 0.0, 100.0)
    assert sorted(table) == [("long", "-"), ("short", "api"), ("short", "local")]
    local = table[("short", "local")]
    assert local["queries"] == 2 and local["useful"] == 0.5 and local["within"] == 0.5
    assert local["quality"] == pytest.approx(0.75) and local["cost_ratio"] == 0.0
    api = table[("short", "api")]
    assert api["cost_ratio"] == pytest.approx(1.0)
    w = OBJECTIVE
    assert api["value"] == pytest.approx(w.useful + w.within_target + w.quality * 0.8 - w.savings * 1.0)
    assert table[("long", "-")]["value"] == 0.0
    # The window's value per query: every class and track, weighted by queries (4 in the window).
    expected = (2 * local["value"] + api["value"] + 0.0) / 4
    assert mod.window_value(table) == pytest.approx(expected)
    assert mod.window_value({}) is None


def test_the_command_prints_cycles_and_both_windows() -> None:
    proc = run_script("trace_adaptation", "steady", "--to", "300", "--compare", "all_api")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.count("\nt=") == 10  # ten cycles of 30 s up to 300 s
    assert "strategy:adaptive: J " in out and "all_api: J " in out
    assert out.count("; this window ") == 2
    assert " on api " in out


@pytest.mark.parametrize("args, message", [
    (["no_such_scenario"], "scenario 'no_such_scenario'"),
    (["steady", "--from", "300", "--to", "100"], "--to (100) must be after --from (300)"),
])
def test_bad_arguments_are_one_line_errors(args: List[str], message: str) -> None:
    proc = run_script("trace_adaptation", *args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_a_diagnosis_can_start_the_strategy_at_a_given_split_or_tell_it_the_local_model() -> None:
    mod = bench_script("trace_adaptation")
    scenario = load_scenario("steady").time_scaled(0.25)
    split = {"short": 1.0, "medium": 0.0, "long": 0.5}
    result, _ = mod.trace(scenario, start=split)
    first = {c: v["local_bias"] for c, v in result.series[0]["applied"]["by_class"].items()}
    # The first interval runs at the split (within the exploration floor), not at the starting 0.5.
    assert first == pytest.approx({"short": 0.995, "medium": 0.005, "long": 0.5})
    plain, _ = mod.trace(scenario)
    assert {c: v["local_bias"] for c, v in plain.series[0]["applied"]["by_class"].items()} == pytest.approx(
        {"short": 0.5, "medium": 0.5, "long": 0.5})
    # Told the local model, every cycle plans on the simulator's own slots.
    _, cycles = mod.trace(scenario, tell="slots")
    assert cycles and all(c["slots"] == scenario.params["local"]["concurrency"] for c in cycles)
    # The engine is itself again after a diagnosis.
    again, _ = mod.trace(scenario)
    assert again.summary == plain.summary
