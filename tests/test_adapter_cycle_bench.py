"""Smoke test of the adapter-cycle benchmark: it runs every mode (the
recording rules backfilled pass by pass for ``recorded``) and reports them.
Timings are never asserted (they depend on the machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODES = ("per_signal_baseline", "batched_forms", "aggregates", "recorded")


@pytest.mark.prometheus
@pytest.mark.slow
def test_adapter_cycle_benchmark_quick_runs_every_mode(tmp_path):
    out = tmp_path / "adapter_cycle.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "adapter_cycle.py"), "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for mode in MODES:
        assert any(line.strip().startswith(f"{mode}: median") for line in lines), (mode, proc.stdout)
    assert "recording rules: backfilled in" in proc.stdout
    assert "recorded vs aggregates:" in proc.stdout

    figures = json.loads(out.read_text())
    assert figures["instances"] == 12
    # Rules reading rules need more than one backfill pass.
    assert figures["rules_backfill_passes"] >= 2
    values = {mode: figures[mode]["signal_values"] for mode in MODES}
    assert len(set(values.values())) == 1 and values["recorded"] > 100, values  # the same signals in every mode
    assert figures["recorded"]["queries_per_cycle"] == 1
    # The recorded inputs give the raw mode's values (a correctness check, not a timing).
    assert figures["recorded_max_rel_diff"] <= 1e-9
