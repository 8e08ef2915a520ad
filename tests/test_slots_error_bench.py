"""benchmarks/slots_error.py: the estimator's local slots against the ones the plan needs. The figures
themselves are the simulator's: here only that they are read and summed up right."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from support.bench_scripts import bench_script, run_script


def test_the_summary_on_hand_made_cycles() -> None:
    errors = bench_script("slots_error")
    # Run a: the estimator at twice, then half, the needed slots (log +-ln 2), the second cycle queued.
    # Run b: always right. Run c: nothing yet (local never answered): left out.
    runs = {"a": [(30.0, 8.0, 4.0, False), (60.0, 2.0, 4.0, True)],
            "b": [(30.0, 5.0, 5.0, False), (60.0, 6.0, 6.0, False)], "c": []}
    s = errors.summarize(runs)
    ln2 = math.log(2.0)
    assert s["runs"] == 2 and s["cycles"] == 4
    assert s["log_mean"] == pytest.approx(0.0)
    assert s["log_sd"] == pytest.approx(ln2 / math.sqrt(2.0))  # +-ln2, 0, 0
    # Each run's median log is 0: nothing between the runs; within, ln 2 and 0 (median of the two).
    assert s["log_sd_between_runs"] == pytest.approx(0.0)
    assert s["log_sd_within_run_median"] == pytest.approx(ln2 / 2.0)
    assert s["queued_cycles"] == 1 and s["queued_ratio_median"] == pytest.approx(0.5)
    assert s["run_median_ratio"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}
    assert s["ratio_percentiles"]["p10"] == pytest.approx(0.5) and s["ratio_percentiles"]["p90"] == pytest.approx(2.0)
    assert errors.summarize({"c": []}) == {"runs": 0, "cycles": 0}


def test_slots_error_quick_reads_every_cycle_once_local_answered(tmp_path: Path) -> None:
    out = tmp_path / "errors.json"
    proc = run_script("slots_error", "--random", "2", "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    cycles = figures["cycles"]
    assert sorted(cycles) == ["random_1_000", "random_1_001"]
    flat = [c for runs in cycles.values() for c in runs]
    assert flat and all(slots > 0 and needed > 0 for _, slots, needed, _ in flat)
    # One row a cycle, in order.
    assert all(a[0] < b[0] for run in cycles.values() for a, b in zip(run, run[1:], strict=False))
    summary = figures["summary"]
    assert summary["cycles"] == len(flat)
    logs = [math.log(slots / needed) for _, slots, needed, _ in flat]
    assert summary["log_mean"] == pytest.approx(sum(logs) / len(logs))
    assert "the estimator's slots over the ones the plan needs" in proc.stdout


def test_slots_error_names_a_scenario_it_cannot_load() -> None:
    proc = run_script("slots_error", "--scenario", "no_such_scenario", timeout=60)
    assert proc.returncode == 2 and "--scenario no_such_scenario" in proc.stderr
