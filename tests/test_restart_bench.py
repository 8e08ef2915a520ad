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
