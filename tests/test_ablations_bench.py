"""benchmarks/ablations.py: each ablation changes the adaptive strategy as it says and still loads, a run
changes what it switches off, and the summary adds up the changes and the standing against hindsight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualtrack.adapter.strategy import load_strategies
from dualtrack.bundled import bundled_dir
from support.bench_scripts import bench_script, run_script


def test_each_ablation_writes_a_strategy_that_loads_with_its_part_switched_off(tmp_path: Path) -> None:
    mod = bench_script("ablations")
    rules = bundled_dir("rules")
    shipped = load_strategies(rules).strategies["adaptive"]
    assert shipped.objective is not None and shipped.objective.probe > 0 and shipped.exploration_floor > 0
    assert shipped.timeouts.min_seconds < shipped.timeouts.max_seconds
    assert shipped.objective.battery_horizon > 0 and shipped.objective.probe_after_change
    changed = {name: load_strategies(mod.write_ablation(rules, name, tmp_path)).strategies["adaptive"]
               for name in mod.ABLATIONS}
    off = changed["no_exploration"]
    assert off.objective is not None
    assert (off.objective.probe, off.objective.probe_calls, off.exploration_floor) == (0, 0, 0)
    assert changed["fixed_timeouts"].timeouts.min_seconds == shipped.timeouts.max_seconds
    horizon = changed["no_battery_horizon"].objective
    assert horizon is not None and horizon.battery_horizon == 0
    watch = changed["no_track_watch"].objective
    assert watch is not None and watch.observed_calls == 0 and not watch.probe_after_change
    # Everything else as shipped: the other strategies' files are copied unchanged.
    assert (tmp_path / "no_exploration" / "cost.yaml").read_text() == (rules / "cost.yaml").read_text()


def test_an_ablation_changes_the_run_only_where_its_part_acts(tmp_path: Path) -> None:
    mod = bench_script("ablations")
    rules = bundled_dir("rules")
    no_horizon = str(mod.write_ablation(rules, "no_battery_horizon", tmp_path))
    no_exploration = str(mod.write_ablation(rules, "no_exploration", tmp_path))
    _, _, shipped = mod.one(("steady", "shipped", None, None))
    # steady has no battery: the horizon never acts, the run is the same to the last digit
    assert mod.one(("steady", "no_battery_horizon", no_horizon, None))[2] == shipped
    # the probes act from the first cycle
    assert mod.one(("steady", "no_exploration", no_exploration, None))[2] != shipped


def test_the_summary_adds_up_changes_and_the_standing_against_the_hindsight_split() -> None:
    mod = bench_script("ablations")
    runs = {"a": {"shipped": 0.8, "no_exploration": 0.804}, "b": {"shipped": 0.5, "no_exploration": 0.49},
            "c": {"shipped": 0.9, "no_exploration": 0.9}}
    bench = {"a": (0.802, True), "b": (0.48, False), "c": (0.9, True)}
    figures = mod.summarize(runs, ["no_exploration"], bench)
    f = figures["ablations"]["no_exploration"]
    assert f["mean"] == pytest.approx((0.5 - 2.0 + 0.0) / 3) and f["median"] == pytest.approx(0.0)
    assert (f["up"], f["down"], f["worst"], f["best"]) == (1, 1, pytest.approx(-2.0), pytest.approx(0.5))
    flat = figures["against_hindsight"]["flat"]
    assert flat["scenarios"] == 2
    assert flat["shipped"]["at_least_hindsight"] == 1 and flat["no_exploration"]["at_least_hindsight"] == 2
    leading = figures["against_hindsight"]["leading"]
    assert leading["no_exploration"]["median_margin"] == pytest.approx(100 * 0.01 / 0.48)


def test_a_bench_file_without_hindsight_splits_is_a_one_line_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"scenarios": {"steady": {}}}))
    proc = run_script("ablations", "--bench", str(bad))
    assert proc.returncode == 2 and "not a bench JSON with hindsight splits" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_script("ablations", "--scenario", "steady", "--ablation", "no_such_part")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
