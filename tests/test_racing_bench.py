"""benchmarks/racing.py: each class of a scenario raced on both tracks, against the hindsight split; what
the summary counts, and a file that is not a bench JSON is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.bench_scripts import bench_script, run_script


def test_a_raced_class_runs_on_both_tracks_and_the_others_as_the_split_sends_them() -> None:
    mod = bench_script("racing")
    split = {"short": 1.0, "medium": 0.0, "long": 0.0}
    plain = mod.run_split("steady", split, set())
    raced = mod.run_split("steady", split, {"long"})
    assert plain["paths"]["parallel"] == 0 and raced["paths"]["parallel"] > 0
    # Only the long queries race: the short ones still go local, the medium ones to the API.
    assert raced["paths"]["local"] == plain["paths"]["local"] > 0
    assert raced["paths"]["api"] == plain["paths"]["api"] - raced["paths"]["parallel"]
    assert raced["objective"] != plain["objective"]


def test_the_summary_counts_the_scenarios_a_raced_class_beats_the_split_in() -> None:
    mod = bench_script("racing")
    rows = [{"scenario": "a", "hindsight": 0.8, "raced": {"short": {"objective": 0.808}, "long": {"objective": 0.4}}},
            {"scenario": "b", "hindsight": 0.9, "raced": {"short": {"objective": 0.9005}, "long": {"objective": 0.9}}},
            {"scenario": "c", "hindsight": 0.5, "raced": {"short": {"objective": 0.45}, "long": {"objective": 0.49}}}]
    figures = mod.summarize(rows)
    assert figures["beats_split"] == 2 and figures["beats_split_by_more_than_0_1_percent"] == 1
    assert figures["best"][:2] == ("a", "short") and figures["best"][2] == pytest.approx(1.0)
    assert figures["median_change_percent"] == pytest.approx(0.0)  # of -50, -10, -2, 0, +0.056, +1


def test_a_file_without_hindsight_splits_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"scenarios": {"steady": {"policies": {}}}}))
    proc = run_script("racing", str(bad))
    assert proc.returncode == 2 and proc.stderr.strip().endswith("has no hindsight split (run the bench with "
                                                                 "perclass_hindsight)")
    assert "Traceback" not in proc.stderr
