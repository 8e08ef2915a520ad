"""The compliance-calibration benchmark: the plan's chances of a violated constraint, paired with what the
runs then showed. Its figures (how well the plan expects) are never asserted; its bookkeeping is."""

from __future__ import annotations

import json
from pathlib import Path

from dualtrack.simulation.generator import generate_scenario
from support.bench_scripts import bench_script, run_script


def test_every_cycle_that_priced_a_constraint_is_paired_with_what_followed() -> None:
    mod = bench_script("compliance_calibration")
    scenario = generate_scenario(1, 18)  # a budget, and memory that binds
    assert scenario.constraints.get("max_cost_per_hour") is not None
    pairs = mod.calibrate(scenario)
    cycles = int(scenario.duration / scenario.adaptation_interval)
    assert 0 < len(pairs["budget"]) < cycles  # the last horizon's cycles have no full future
    assert 0 < len(pairs["memory"]) < cycles
    for constraint in ("memory", "budget"):
        for expected, seen in pairs[constraint]:
            assert 0.0 <= expected <= 1.0 and 0.0 <= seen <= 1.0


def test_the_bands_count_and_average_the_pairs() -> None:
    mod = bench_script("compliance_calibration")
    table = mod.bands([(0.0, 0.1), (0.05, 0.0), (0.05, 0.2), (1.0, 1.0)])
    assert table == [
        {"band": [0.0, 0.02], "cycles": 1, "expected": 0.0, "seen": 0.1},
        {"band": [0.02, 0.1], "cycles": 2, "expected": 0.05, "seen": 0.1},
        {"band": [0.6, 1.0], "cycles": 1, "expected": 1.0, "seen": 1.0},
    ]


def test_the_script_writes_its_figures_and_refuses_nonsense(tmp_path: Path) -> None:
    out = tmp_path / "cc.json"
    proc = run_script("compliance_calibration", "--seed", "1", "--count", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert figures["scenarios"] == ["random_1_000"]
    for constraint in ("memory", "budget"):
        assert figures[constraint]["cycles"] == sum(b["cycles"] for b in figures[constraint]["bands"])
    bad = run_script("compliance_calibration", "--count", "0", "--seed", "1")
    assert bad.returncode == 2 and "--count" in bad.stderr
    none = run_script("compliance_calibration")
    assert none.returncode == 2 and "--scenario or --seed" in none.stderr


def test_help_says_what_it_compares() -> None:
    proc = run_script("compliance_calibration", "--help")
    assert proc.returncode == 0 and "chances" in proc.stdout
