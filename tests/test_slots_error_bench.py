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
    runs = {"a": [(30.0, 8.0, 4.0, False, None), (60.0, 2.0, 4.0, True, None)],
            "b": [(30.0, 5.0, 5.0, False, None), (60.0, 6.0, 6.0, False, None)], "c": []}
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
    # Another estimate of the same cycles: only the cycles that have it.
    runs["a"] = [(30.0, 8.0, 4.0, False, 4.0), (60.0, 2.0, 4.0, True, None)]
    s = errors.summarize(runs, "server_line")
    assert s["runs"] == 1 and s["cycles"] == 1 and s["log_mean"] == pytest.approx(0.0) and s["queued_cycles"] == 0


def test_the_server_line_reads_a_batching_servers_effective_slots() -> None:
    errors = bench_script("slots_error")
    # A server of 16 slots whose calls slow by 1 + 0.03 per other call, its service times read at 1.25
    # times a call alone's (g = 1.25): N / X = (1 + 0.03 N) / 1.25 for any N calls in it below the knee.
    g, c, d = 1.25, 0.03, 16
    line = errors.ServerLine(decay=0.95)
    assert line.value(d) is None  # no line yet
    for n in (2.0, 5.0, 9.0, 13.0):
        line.add(carried=g * n / (1 + c * n), in_system=n, answered=1.0, queue=0.0)
    # Not below the knee, not answered, too little carried, or no reading: left out of the line.
    line.add(carried=5.0, in_system=40.0, answered=1.0, queue=12.0)
    line.add(carried=5.0, in_system=40.0, answered=0.5, queue=0.0)
    line.add(carried=0.1, in_system=40.0, answered=1.0, queue=0.0)
    line.add(carried=5.0, in_system=40.0, answered=1.0, queue=None)
    assert line.line.points == 4
    assert line.value(d) == pytest.approx(g * d / (1 + c * (d - 1)))
    assert line.value(None) is None and line.value(0.5) is None


def test_slots_error_quick_reads_every_cycle_once_local_answered(tmp_path: Path) -> None:
    out = tmp_path / "errors.json"
    proc = run_script("slots_error", "--random", "2", "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    cycles = figures["cycles"]
    assert sorted(cycles) == ["random_1_000", "random_1_001"]
    flat = [c for runs in cycles.values() for c in runs]
    assert flat and all(slots > 0 and needed > 0 and server is None for _, slots, needed, _, server in flat)
    # One row a cycle, in order.
    assert all(a[0] < b[0] for run in cycles.values() for a, b in zip(run, run[1:], strict=False))
    summary = figures["summary"]
    assert summary["cycles"] == len(flat)
    logs = [math.log(slots / needed) for _, slots, needed, _, _ in flat]
    assert summary["log_mean"] == pytest.approx(sum(logs) / len(logs))
    assert "the estimator's slots over the slots the plan needs" in proc.stdout


def test_slots_error_with_the_servers_signals_reads_the_server_line_too(tmp_path: Path) -> None:
    out = tmp_path / "errors.json"
    proc = run_script("slots_error", "--random", "2", "--quick", "--server-signals", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert figures["server_signals"] is True and set(figures["summaries"]) == {"slots", "server_line"}
    read = [c for runs in figures["cycles"].values() for c in runs if c[4] is not None]
    assert read and all(c[4] > 0 for c in read)
    assert figures["summaries"]["server_line"]["cycles"] == len(read)
    assert "the server-line candidate over the slots the plan needs" in proc.stdout


def test_slots_error_names_a_scenario_it_cannot_load() -> None:
    proc = run_script("slots_error", "--scenario", "no_such_scenario", timeout=60)
    assert proc.returncode == 2 and "--scenario no_such_scenario" in proc.stderr
