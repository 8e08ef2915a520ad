"""Smoke test of the overhead benchmark: it runs, reports its ratios and writes
its JSON. Timings are never asserted (they depend on the machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_overhead_benchmark_quick_runs_and_reports_ratios(tmp_path):
    out = tmp_path / "overhead.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--quick", "--threads", "4",
         "--requests", "2400", "--memory-requests", "5000", "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "ratio 1 thread:" in text and "ratio 4 threads:" in text
    assert "x the bare baseline" in text and "memory: RSS" in text

    figures = json.loads(out.read_text())
    for mode in ("1 thread", "4 threads"):
        timing = figures["timing"][mode]
        assert set(timing) == {"baseline", "dualtrack", "dualtrack_no_exemplars", "dualtrack_record_only"}
        for name, stats in timing.items():
            assert stats["median_ns"] > 0 and stats["batches"] >= 1, (mode, name)
            if name != "baseline":
                assert stats["ratio"] > 0
    memory = figures["memory"]
    assert memory["requests"] == 5000 and memory["in_flight_table"] == 0
    # Bounded state, whatever the timings: the windows hold at most
    # metrics_window_size records each (overall, 3 paths, 3 path/class pairs).
    assert memory["window_records"] <= 100 * 7
    assert figures["machine"]["python"] == ".".join(map(str, sys.version_info[:3]))


def test_overhead_benchmark_rejects_bad_options():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--requests", "0"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "must be positive" in proc.stderr
