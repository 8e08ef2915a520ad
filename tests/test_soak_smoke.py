"""Smoke runs of the load and soak benchmarks (``--quick``): they run, and
their correctness checks hold — exact counts, folded labels, no descriptor,
thread or temp file left behind. Timings and memory figures are never
asserted (they depend on the machine); docs/benchmarks.md quotes the full
runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(name: str, out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), "--quick", "--json", str(out), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_load_soak_quick_counts_every_request_exactly_once_and_folds_unbounded_labels(tmp_path: Path) -> None:
    """benchmarks/load_soak.py --quick (40,000 requests on 16 threads, a single-thread baseline, a tracemalloc pass): exit 0; every run reports exact counts; requests_total, histogram and rejection counts equal the tallies; unbounded path/class/model values fold exactly as expected and every label stays within its bound."""
    out = tmp_path / "load_soak.json"
    proc = run_benchmark("load_soak.py", out, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "correctness: every request counted exactly once in every run" in proc.stdout
    assert proc.stdout.count("counted exactly once: exact") == 2  # the threaded run and the baseline

    figures = json.loads(out.read_text())
    assert figures["exact"] is True
    for run in ("run", "baseline_single_thread", "tracemalloc_run"):
        checks = figures[run]["checks"]
        assert checks["exact"] and checks["problems"] == [], (run, checks["problems"])
        assert checks["requests_total"] == figures[run]["requests"]
        assert checks["inputs_rejected"] == checks["inputs_rejected_expected"] > 0
        assert checks["folded"] == checks["folded_expected"]
        for label, count in checks["distinct_label_values"].items():
            assert count <= checks["label_bounds"][label], label
        assert figures[run]["state"]["in_flight_table"] == 0
    main = figures["run"]
    assert main["requests"] == 40_000 and main["threads"] == 16
    assert all(main["checks"]["unbounded_values_sent"][k] > 0 for k in ("path", "query_class", "model"))
    assert "tracemalloc_growth_mb" in figures["memory"] and "rss_growth_mb" in figures["memory"]


def test_load_soak_rejects_bad_options() -> None:
    """benchmarks/load_soak.py with --requests 0: exit status 2 and a usage message, nothing run."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "load_soak.py"), "--requests", "0"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "must be positive" in proc.stderr


@pytest.mark.prometheus
@pytest.mark.slow
def test_adapter_soak_quick_leaves_no_descriptor_thread_or_temp_file(tmp_path: Path) -> None:
    """benchmarks/adapter_soak.py --quick (300 adapter cycles against a real Prometheus scraping a live exporter): exit 0; every cycle succeeded and published; file descriptors and threads never above their first sample; only the preferences file left in the output folder."""
    out = tmp_path / "adapter_soak.json"
    proc = run_benchmark("adapter_soak.py", out, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "leaks: none" in proc.stdout

    figures = json.loads(out.read_text())
    assert figures["ok"] is True and figures["problems"] == []
    assert figures["cycles"] == 300 and figures["results"]["error"] == 0
    assert figures["published"] == 300
    assert figures["fds"]["first"] == figures["fds"]["last"] == figures["fds"]["max"]
    assert figures["threads"]["first"] == figures["threads"]["last"] == figures["threads"]["max"]
    assert figures["output_folder_at_end"] == ["preferences.json"]
    assert figures["signal_values_per_cycle"]["min"] > 0  # real data flowed through every sampled cycle
    assert len(figures["samples"]) == 300 // 50 + 1
