"""benchmarks/restart.py: a warm restart of the embedded adapter goes on exactly as no restart does,
a cold one starts again from the strategy's starting preferences, and the summary says what was saved."""

from __future__ import annotations

import pytest

from support.bench_scripts import bench_script, run_script


def test_a_warm_restart_goes_on_as_if_there_had_been_none() -> None:
    mod = bench_script("restart")
    row = mod.one(("api_outage", 960.0))  # restarted two cycles into the outage (900-1620 s)
    assert row["warm_load"] == "restored"
    # The state carries all the adaptive strategy learned: the same decisions, the same J to the last digit.
    assert row["warm"] == row["none"]
    # A cold restart forgets it (the starting split again, in the middle of an outage): another run.
    assert row["cold"] != row["none"]


def test_the_summary_says_the_share_of_the_cold_restarts_loss_the_warm_one_saves() -> None:
    mod = bench_script("restart")
    rows = [{"none": 1.0, "cold": 0.98, "warm": 0.995, "warm_load": "restored"},
            {"none": 0.5, "cold": 0.5, "warm": 0.5, "warm_load": "restored"}]
    figures = mod.summarize(rows)
    assert figures["cold"]["mean"] == pytest.approx(-1.0) and figures["cold"]["worst"] == pytest.approx(-2.0)
    assert figures["warm"]["mean"] == pytest.approx(-0.25)
    assert figures["saved"] == pytest.approx(0.75) and figures["restored"] == 2
    assert mod.summarize([{"none": 1.0, "cold": 1.01, "warm": 1.0}])["saved"] is None  # nothing lost to save


def test_a_restart_time_that_is_not_positive_is_a_usage_error() -> None:
    proc = run_script("restart", "--scenario", "steady", "--at", "0")
    assert proc.returncode == 2 and "--at must be a positive number of seconds" in proc.stderr


def test_the_second_day_starts_warm_from_the_first_minutes_and_is_held_against_the_hindsight_split() -> None:
    mod = bench_script("restart")
    row = mod.second_day(("api_outage", 0.75))  # its first event at 900 s: ten minutes learned
    assert row["learned_for"] == 600.0 and row["warm_load"] == "restored"
    assert row["warm"] != row["cold"]  # the first minutes decided from what was learned
    figures = mod.against_hindsight([{**row, "cold": 0.74, "warm": 0.76}, {**row, "cold": 0.75, "warm": 0.75}])
    assert figures["cold"]["at_least_hindsight"] == 1 and figures["warm"]["at_least_hindsight"] == 2
    assert figures["warm"]["mean"] == pytest.approx(100 * 0.01 / 0.75 / 2)


def test_a_second_day_file_that_is_not_a_bench_json_is_a_one_line_error(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"scenarios": {"steady": {}}}')
    proc = run_script("restart", "--second-day", str(bad))
    assert proc.returncode == 2 and "not a bench JSON with hindsight splits" in proc.stderr
    assert "Traceback" not in proc.stderr
