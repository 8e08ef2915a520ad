"""The gap-decomposition benchmark: the adaptive machinery fed a fixed split, with and without the
immediate overrides, and the gap's parts. Its figures (how large each part is) are never asserted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from dualtrack.adapter.strategy import load_strategies
from dualtrack.bundled import bundled_dir
from dualtrack.simulation import Simulation
from dualtrack.simulation.generator import generate_scenario
from support.bench_scripts import bench_script, run_script


def _applied(series: List[Dict[str, Any]]) -> List[Dict[str, float]]:
    """Each interval's local share per class, as the router applied it."""
    return [{c: v["local_bias"] for c, v in row["applied"]["by_class"].items()} for row in series]


def test_the_fed_split_is_what_the_router_applies_once_the_overrides_are_off() -> None:
    mod = bench_script("gap_decomposition")
    scenario = generate_scenario(1, 2).time_scaled(0.2)
    classes = list(scenario.class_names)
    fed = {c: (0.25 if i % 2 else 0.75) for i, c in enumerate(classes)}
    strategies = load_strategies(bundled_dir("rules"))
    with mod.plan_fed(fed), mod.overrides_off():
        result = Simulation(scenario, "strategy:adaptive", strategies=strategies).run()
    applied = _applied(result.series)
    assert len(applied) >= 5
    # The first interval runs on the preferences before any cycle (half and half); from the first
    # cycle on, every class gets the fed share.
    assert applied[0] == {c: 0.5 for c in classes}
    assert all(row == pytest.approx(fed, abs=1e-9) for row in applied[1:])
    # Undone on leaving: the plan chooses again.
    again = _applied(Simulation(scenario, "strategy:adaptive", strategies=strategies).run().series)
    assert any(row != pytest.approx(fed, abs=1e-9) for row in again[1:])


def test_without_the_floor_a_split_of_all_or_nothing_is_applied_as_it_is() -> None:
    mod = bench_script("gap_decomposition")
    scenario = generate_scenario(1, 2).time_scaled(0.2)
    classes = list(scenario.class_names)
    fed = {c: float(i % 2) for i, c in enumerate(classes)}  # 0, 1, 0, ...
    strategies = load_strategies(bundled_dir("rules"))
    with mod.plan_fed(fed):
        floored = _applied(Simulation(scenario, "strategy:adaptive", strategies=strategies).run().series)
        with mod.router_floor(0.0):
            exact = _applied(Simulation(scenario, "strategy:adaptive",
                                        strategies=mod.without_floor(strategies)).run().series)
    floor = strategies["adaptive"].exploration_floor
    assert floor > 0
    assert all(row == pytest.approx({c: min(max(v, floor), 1.0 - floor) for c, v in fed.items()})
               for row in floored[1:])
    assert all(row == pytest.approx(fed, abs=1e-12) for row in exact[1:])
    # The strategies keep everything else; only the floor and the local_bias clamp it narrowed change.
    bare = mod.without_floor(strategies)
    assert bare.names() == strategies.names()
    assert bare["adaptive"].clamps["local_bias"] == (0.0, 1.0)
    assert bare["adaptive"].rules == strategies["adaptive"].rules


def test_the_parts_add_up_to_the_gap() -> None:
    mod = bench_script("gap_decomposition")
    found = mod.decompose(generate_scenario(1, 2).time_scaled(0.2))
    o, p = found["objectives"], found["parts_percent"]
    assert set(o) == set(mod.RUNS)
    assert p["plan"] + p["machinery"] == pytest.approx(p["gap"], abs=1e-9)
    assert p["gap"] == pytest.approx((o["adaptive"] - o["hindsight"]) / o["hindsight"] * 100)
    assert p["overrides"] == pytest.approx((o["fed"] - o["fed_no_overrides"]) / o["hindsight"] * 100)
    assert p["floor"] == pytest.approx((o["fed"] - o["fed_no_floor"]) / o["hindsight"] * 100)
    assert all(0.0 <= v <= 1.0 for v in found["split"].values())


def test_a_run_writes_every_scenarios_runs_and_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "gap.json"
    proc = run_script("gap_decomposition", "--random", "1", "--seed", "2", "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert list(figures["scenarios"]) == ["random_2_000"]
    assert figures["summary"]["scenarios"] == 1
    only = figures["scenarios"]["random_2_000"]["parts_percent"]
    assert figures["summary"]["plan"]["mean"] == pytest.approx(only["plan"])
    assert "fed - hindsight" in proc.stdout


@pytest.mark.parametrize("args, message", [
    ([], "name at least one --scenario, or --random N"),
    (["--scenario", "no_such_scenario"], "--scenario no_such_scenario"),
    (["--random", "1", "--jobs", "0"], "--jobs at least 1"),
])
def test_bad_arguments_are_refused_before_anything_runs(args: List[str], message: str) -> None:
    proc = run_script("gap_decomposition", *args, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
