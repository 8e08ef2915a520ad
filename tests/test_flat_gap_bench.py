"""benchmarks/flat_gap.py: the gap split by term adds up to the gap, intervals and sides are classed as the
docstring says, the bench file's flat scenarios are the ones run, and bad input is a one-line usage error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualtrack.objective import OBJECTIVE, TERMS
from dualtrack.simulation.scenario import load_scenario
from support.bench_scripts import bench_script, run_script


def _summary(useful: float, within: float, quality: float, cost_ratio: float, violation: float) -> dict:
    s = {"useful_ratio": useful, "within_target_ratio": within, "quality_mean": quality, "cost_ratio": cost_ratio,
         "violation_ratio": violation}
    s["objective"] = OBJECTIVE.score(s)
    return s


def test_the_terms_add_up_to_the_gap_each_at_its_weight() -> None:
    mod = bench_script("flat_gap")
    adaptive, split = _summary(0.98, 0.90, 0.87, 0.80, 0.0), _summary(0.97, 0.90, 0.85, 0.64, 0.0)
    terms = mod.by_term(adaptive, split)
    gap = 100.0 * (adaptive["objective"] - split["objective"]) / split["objective"]
    assert sum(terms.values()) == pytest.approx(gap)
    assert terms["within_target"] == 0.0
    # dearer by 16 points of the all-API cost: savings' weight (0.10) times that, in percent of the split's J
    assert terms["savings"] == pytest.approx(-100.0 * 0.10 * 0.16 / split["objective"])
    assert terms["useful"] > 0 and terms["quality"] > 0 and set(terms) == set(TERMS)


def test_an_interval_is_opposite_where_a_class_is_mostly_on_the_other_track_of_an_all_or_nothing_split() -> None:
    mod = bench_script("flat_gap")
    split = {"short": 1.0, "medium": 0.5, "long": 0.0}
    assert mod.interval_kind({"short": 0.97, "medium": 0.52, "long": 0.03}, split) == "agree"
    assert mod.interval_kind({"short": 0.97, "medium": 0.30, "long": 0.03}, split) == "partial"
    assert mod.interval_kind({"short": 0.60, "medium": 0.50, "long": 0.00}, split) == "partial"
    assert mod.interval_kind({"short": 0.97, "medium": 0.50, "long": 0.95}, split) == "opposite"
    # a half split has no other track: however far, only partial
    assert mod.interval_kind({"short": 1.0, "medium": 0.0, "long": 0.0}, split) == "partial"


def test_a_class_on_the_other_track_is_put_down_to_its_estimate_the_noise_band_or_a_bound() -> None:
    mod = bench_script("flat_gap")

    def cycle(share: float, preferred: float, local: float, api: float) -> dict:
        return {"shares": {"short": share}, "preferred": {"short": preferred},
                "expected": {"short": {"local": local, "api": api}}}
    # the split puts short local; the plan has it on the API
    assert mod.side_reason(1.0, cycle(0.03, 0.03, 0.70, 0.72), "short") == "estimate"
    assert mod.side_reason(1.0, cycle(0.03, 0.03, 0.73, 0.72), "short") == "held"
    assert mod.side_reason(1.0, cycle(0.30, 0.97, 0.73, 0.72), "short") == "bound"
    assert mod.side_reason(1.0, cycle(0.97, 0.97, 0.73, 0.72), "short") is None  # agrees
    assert mod.side_reason(0.5, cycle(0.03, 0.03, 0.70, 0.72), "short") is None  # the split is on neither track
    # the split puts it on the API, the plan local on its estimate
    assert mod.side_reason(0.0, cycle(0.97, 0.97, 0.75, 0.72), "short") == "estimate"


def test_a_battery_counts_where_the_machine_is_unplugged_at_the_start_or_later() -> None:
    mod = bench_script("flat_gap")
    assert not mod.on_battery(load_scenario("steady"))
    assert mod.on_battery(load_scenario("battery_drain"))


def test_the_summary_averages_each_group_and_shares_the_sides() -> None:
    mod = bench_script("flat_gap")
    runs = {"a": {"gap": -0.4, "terms": dict.fromkeys(TERMS, -0.08), "intervals": {"agree": -0.1, "opposite": -0.3},
                  "sides": {"agree": 6, "estimate": 2}, "battery": False},
            "b": {"gap": -0.2, "terms": dict.fromkeys(TERMS, -0.04), "intervals": {"agree": -0.2},
                  "sides": {"agree": 1, "bound": 1}, "battery": True}}
    figures = mod.summarize(runs)
    assert figures["all"]["scenarios"] == 2 and figures["all"]["gap"] == pytest.approx(-0.3)
    assert figures["all"]["intervals"] == {"agree": pytest.approx(-0.15), "opposite": pytest.approx(-0.15)}
    assert figures["all"]["sides"]["estimate"] == pytest.approx(0.2) and figures["all"]["sides"]["bound"] == 0.1
    assert figures["battery"]["scenarios"] == 1 and figures["no battery"]["gap"] == pytest.approx(-0.4)


def test_it_runs_the_flat_scenarios_of_a_bench_file_and_its_views_add_up(tmp_path: Path) -> None:
    split = {"short": 1.0, "medium": 0.0, "long": 0.0}
    policy = "perclass:short=1,medium=0,long=0"
    bench = {"scenarios": {
        # flat: the oracle no better than the split
        "steady": {"hindsight": {"objective": 0.9, "policy": policy, "split": split},
                   "adaptive": {"oracle_objective": 0.9}},
        # leading: left out unless --leading
        "api_outage": {"hindsight": {"objective": 0.8, "policy": policy, "split": split},
                       "adaptive": {"oracle_objective": 0.85}}}}
    path, out = tmp_path / "bench.json", tmp_path / "gap.json"
    path.write_text(json.dumps(bench))
    proc = run_script("flat_gap", "--bench", str(path), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert list(figures["runs"]) == ["steady"] and "1 flat scenarios" in proc.stdout
    run = figures["runs"]["steady"]
    assert sum(run["terms"].values()) == pytest.approx(run["gap"], abs=1e-3)
    # the intervals hold the query terms: the gap less compliance (queries unanswered at the end in neither)
    assert sum(run["intervals"].values()) == pytest.approx(run["gap"] - run["terms"]["compliance"], abs=0.05)
    assert sum(run["sides"].values()) > 0 and run["battery"] is False


def test_the_diagnoses_are_run_and_recorded(tmp_path: Path) -> None:
    split = {"short": 1.0, "medium": 0.0, "long": 0.0}
    bench = {"scenarios": {"steady": {"hindsight": {"objective": 0.9, "policy": "perclass:short=1,medium=0,long=0",
                                                    "split": split}, "adaptive": {"oracle_objective": 0.9}}}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    runs = {}
    for name, extra in (("plain", []), ("started", ["--start-at-split", "--tell-local-model"])):
        out = tmp_path / f"{name}.json"
        proc = run_script("flat_gap", "--bench", str(path), "--json", str(out), *extra)
        assert proc.returncode == 0, proc.stderr
        runs[name] = json.loads(out.read_text())
    assert runs["started"]["start_at_split"] is True and runs["started"]["local_model_told"] == "both"
    assert runs["plain"]["start_at_split"] is False and runs["plain"]["local_model_told"] is None
    # The diagnosed run is another run (trace_adaptation's tests check what each diagnosis does to it).
    plain, started = (runs[k]["runs"]["steady"] for k in ("plain", "started"))
    assert plain["gap"] != started["gap"]
    assert "started at the split" in proc.stdout and "the local model told (both)" in proc.stdout


def test_bad_input_is_a_one_line_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"scenarios": {"steady": {}}}))
    proc = run_script("flat_gap", "--bench", str(bad))
    assert proc.returncode == 2 and "not a bench JSON with hindsight splits" in proc.stderr
    assert "Traceback" not in proc.stderr
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"scenarios": {"steady": {
        "hindsight": {"objective": 0.9, "policy": "all_api", "split": {}}, "adaptive": {"oracle_objective": 0.9}}}}))
    proc = run_script("flat_gap", "--bench", str(good), "--scenario", "random_1_000")
    assert proc.returncode == 2 and "not among the bench's flat scenarios" in proc.stderr
