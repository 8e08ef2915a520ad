"""Tests for dualtrack.bench (the adaptation benchmark) and ``dualtrack bench adaptation``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from dualtrack.bench.adaptation import (
    QUICK_POLICIES,
    check_bench_policy,
    format_report,
    run_suite,
    split_bench_policy,
)
from dualtrack.bench.verdicts import (
    ADAPTIVE,
    adaptive_figures,
    analyse_scenario,
    capture,
    overall,
    reactions_by_kind,
    shipped_targets,
)
from dualtrack.cli import main
from dualtrack.cli.bench_cmd import parse_seeds


def test_bench_adaptation_quick_writes_json_with_a_ranking(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.json"
    code = main(["bench", "adaptation", "--quick", "--scenario", "api_outage", "--json", str(out), "--jobs", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "== api_outage" in printed and "vs oracle" in printed and f"results written to {out}" in printed
    assert "perclass_hindsight: " in printed and "oracle = " in printed and "seeds: api_outage 37" in printed
    assert "targets (shipped suite, 1 scenarios with regime changes)" in printed

    data = json.loads(out.read_text())
    assert data["schema"] == "dualtrack.bench.adaptation/1" and data["quick"] is True and data["suite"] == "shipped"
    assert set(data["objective"]["weights"]) == {"useful", "within_target", "quality", "savings", "compliance"}
    assert set(data["scenarios"]) == {"api_outage"}
    scenario = data["scenarios"]["api_outage"]
    assert scenario["duration_seconds"] == 900 and scenario["regime_changes"] == 4
    assert [e["kind"] for e in scenario["events"]] == ["onset", "recovery", "onset", "recovery"]

    ranking = scenario["ranking"]
    assert sorted(ranking) == sorted(QUICK_POLICIES)
    scores = [scenario["policies"][p]["summary"]["objective"] for p in ranking]
    assert scores == sorted(scores, reverse=True)
    assert [scenario["policies"][p]["rank"] for p in ranking] == list(range(1, len(ranking) + 1))
    assert scenario["best_static"] in ("all_local", "all_api", "fixed_50_50", "perclass_steady")

    adaptive = scenario["policies"]["strategy:adaptive"]
    for key in ("p95_latency_seconds", "within_target_ratio", "total_cost", "quality_mean", "violation_seconds",
                "failed", "objective"):
        assert key in adaptive["summary"]
    assert set(adaptive["objective_components"]) == set(data["objective"]["weights"])
    assert len(adaptive["reactions"]) == 4 and all(r["applicable"] for r in adaptive["reactions"])
    assert all(not r["applicable"] for r in scenario["policies"]["all_api"]["reactions"])

    # the baselines: every policy has an objective, the splits are named, the oracle says what it is
    policies = scenario["policies"]
    hindsight = policies["perclass_hindsight"]
    assert set(hindsight["split"]) == {"short", "medium", "long"}
    assert hindsight["split"] == scenario["hindsight"]["split"]
    assert scenario["hindsight"]["method"] == "grid" and scenario["hindsight"]["grid_size"] == 27  # quick: 0, .5, 1
    assert policies["perclass_steady"]["split"] == data["perclass_steady"]["split"]
    oracle = scenario["oracle"]
    assert oracle["source"] in ("greedy", "split_schedule", "perclass_hindsight")
    assert policies["oracle"]["oracle_source"] == oracle["source"]
    assert policies["oracle"]["summary"]["objective"] == max(v for v in oracle["candidates"].values() if v is not None)
    for static in ("all_local", "all_api", "fixed_50_50", "perclass_steady", "perclass_hindsight"):
        assert policies["oracle"]["summary"]["objective"] >= policies[static]["summary"]["objective"], static
    assert hindsight["summary"]["objective"] >= max(policies[p]["summary"]["objective"]
                                                    for p in ("all_local", "all_api", "fixed_50_50", "perclass_steady"))

    target = scenario["adaptive"]
    for key in ("beats_best_static", "oracle_gap", "within_oracle_limit", "reacts_in_time", "reactions",
                "at_least_hindsight", "margin_over_hindsight", "gap_below_hindsight", "reactions_by_kind"):
        assert key in target
    assert [r["kind"] for r in target["reactions"]] == ["onset", "recovery", "onset", "recovery"]
    assert data["summary"]["scenarios_with_regime_changes"] == ["api_outage"]
    assert isinstance(data["summary"]["misses"], list)
    assert data["summary"]["suite"] == "shipped" and "at_least_hindsight" in data["summary"]["shipped"]


def test_the_suite_is_deterministic_for_a_seed() -> None:
    args: Dict[str, Any] = dict(policies=["strategy:adaptive", "all_api", "perclass_hindsight", "oracle"], seed=3,
                                quick=True)
    a = run_suite(["battery_drain"], **args)
    b = run_suite(["battery_drain"], **args, jobs=2)
    pick = lambda r: {p: v["summary"] for p, v in r["scenarios"]["battery_drain"]["policies"].items()}  # noqa: E731
    assert pick(a) == pick(b)
    assert a["scenarios"]["battery_drain"]["oracle"] == b["scenarios"]["battery_drain"]["oracle"]
    assert "battery_drain" in format_report(a) and "seeds: 3 for every scenario" in format_report(a)


def test_a_random_suite_reports_its_targets() -> None:
    results = run_suite(random=1, seeds=[11], quick=True, policies=["strategy:adaptive", "all_api",
                                                                     "perclass_hindsight", "oracle"])
    assert results["suite"] == "random" and results["seeds"]["generator"] == [11]
    (name,) = results["scenarios"]
    assert name == "random_11_000"
    targets = results["summary"]["random"]
    assert set(targets) == {"share_at_least_best_simple_static", "share_at_least_hindsight",
                            "worst_gap_below_hindsight", "median_oracle_lead_captured",
                            "share_events_reacted_within_2"}
    assert targets["share_at_least_hindsight"]["over"] == 1
    report = format_report(results)
    assert "targets (random suite, 1 scenarios)" in report and "random_11_000" in report


def test_seeds_and_policies_are_checked(capsys: pytest.CaptureFixture) -> None:
    assert parse_seeds("1,2,5-7") == [1, 2, 5, 6, 7] and parse_seeds("3") == [3]
    for bad in ("a", "3-1", "-2"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)
    assert check_bench_policy("perclass_steady") == "perclass_steady"
    assert main(["bench", "adaptation", "--quick", "--seed", "1", "--seeds", "2"]) == 2
    assert "--seed and --seeds" in capsys.readouterr().err


def test_hedge_and_server_suffixes_are_checked_and_split() -> None:
    assert split_bench_policy("strategy:adaptive+hedge") == ("strategy:adaptive", False, True)
    assert split_bench_policy("strategy:adaptive+hedge+server") == ("strategy:adaptive", True, True)
    assert split_bench_policy("strategy:adaptive+server+hedge") == ("strategy:adaptive", True, True)
    assert split_bench_policy("all_local") == ("all_local", False, False)
    for good in ("strategy:adaptive+hedge", "all_local+hedge", "perclass:short=1,medium=0,long=0+hedge",
                 "strategy:cost+server+hedge"):
        assert check_bench_policy(good) == good
    for bad, message in (("oracle+hedge", "not after oracle"), ("all_api+server", "goes after a strategy"),
                         ("strategy:adaptive+hedge+hedge", "unknown suffix '\\+hedge'"), ("always+hedge", "unknown policy")):
        with pytest.raises(ValueError, match=message):
            check_bench_policy(bad)


def test_a_hedged_policy_is_compared_with_the_plain_one() -> None:
    results = run_suite(["burst_load"], ["strategy:adaptive", "strategy:adaptive+hedge", "fixed_50_50+hedge"],
                        quick=True)
    runs = results["scenarios"]["burst_load"]["policies"]
    assert "hedges" not in runs["strategy:adaptive"]["summary"]
    for hedged in ("strategy:adaptive+hedge", "fixed_50_50+hedge"):
        hedges = runs[hedged]["summary"]["hedges"]
        assert hedges["fired"] > 0 and hedges["won"] + hedges["wasted"] <= hedges["fired"]
        # the default budget: a tenth of the requests, plus the burst
        assert hedges["fired"] <= 1 + 0.1 * runs[hedged]["summary"]["requests"]
    assert runs["strategy:adaptive+hedge"]["summary"] != runs["strategy:adaptive"]["summary"]
    report = format_report(results)
    means = report[report.index("means over the suite"):].splitlines()
    assert means[1].split()[:2] == ["policy", "scenarios"]
    hedged_line = next(line for line in means if line.startswith("adaptive+hedge "))
    plain_line = next(line for line in means if line.startswith("adaptive "))
    assert hedged_line.split()[6].endswith("%") and plain_line.split()[6] == "-"  # hedged share


def test_bad_arguments_exit_2_with_a_message(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "adaptation", "--quick", "--policy", "always_local"]) == 2
    assert "unknown policy 'always_local'" in capsys.readouterr().err
    assert main(["bench", "adaptation", "--quick", "--scenario", "no_such_scenario"]) == 2
    assert "no scenario named" in capsys.readouterr().err


# ------------------------------------------------------------------ the figures, on hand-made results


def run_entry(objective: float, reactions: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    return {"summary": {"objective": objective}, "reactions": reactions or []}


def reaction(kind: str, applied: Optional[int], published: Optional[int] = 1) -> Dict[str, Any]:
    return {"t": 600.0, "label": kind, "expect": "local_bias up", "kind": kind, "applicable": True,
            "intervals": applied, "published_intervals": published}


def info(regime_changes: int) -> Dict[str, Any]:
    return {"description": "", "duration_seconds": 1800, "adaptation_interval_seconds": 30,
            "regime_changes": regime_changes, "events": []}


def test_the_adaptive_strategy_is_measured_against_the_baselines() -> None:
    runs = {ADAPTIVE: run_entry(0.85, [reaction("onset", 1), reaction("recovery", 3), reaction("onset", None)]),
            "all_local": run_entry(0.70), "all_api": run_entry(0.84), "fixed_50_50": run_entry(0.80),
            "perclass_steady": run_entry(0.83), "perclass_hindsight": run_entry(0.84), "oracle": run_entry(0.89)}
    data = analyse_scenario(info(3), runs)
    assert data["best_static"] == "all_api"  # the best of all_local, all_api, fixed_50_50, perclass_steady
    assert data["ranking"][0] == "oracle" and data["policies"]["all_api"]["oracle_gap"] == pytest.approx(0.05 / 0.89,
                                                                                                      abs=1e-6)
    a = data["adaptive"]
    assert a["margin_over_best_static"] == pytest.approx(0.01) and a["beats_best_static"]
    assert a["margin_over_hindsight"] == pytest.approx(0.01) and a["at_least_hindsight"]
    assert a["gap_below_hindsight"] == pytest.approx(-0.01 / 0.84, abs=1e-6)
    assert a["hindsight_lead_captured"] == pytest.approx(0.2)  # (0.85 - 0.84) / (0.89 - 0.84)
    kinds = a["reactions_by_kind"]
    assert kinds["onset"] == {"events": 2, "limit_intervals": 1, "in_time": 1, "within_2": 1,
                              "applied_intervals": [1, None]}
    assert kinds["recovery"]["in_time"] == 0 and kinds["recovery"]["within_2"] == 0
    assert not a["applied_reacts_in_time"]
    assert a["reacts_in_time"]  # the old target reads the published preferences: all moved within 1 interval


def test_capture_is_undefined_where_the_oracle_does_not_lead() -> None:
    assert capture(0.85, 0.84, 0.84) is None and capture(0.85, None, 0.9) is None
    assert capture(0.85, 0.84, 0.8405) is None  # a lead of 0.0005 J is too small to divide by
    assert capture(0.83, 0.84, 0.86) == pytest.approx(-0.5)
    assert reactions_by_kind([])["onset"]["events"] == 0


def test_shipped_targets_name_every_miss() -> None:
    def figures(a: float, h: float, changes: int, reactions: List[Dict[str, Any]]) -> Dict[str, Any]:
        runs = {ADAPTIVE: run_entry(a, reactions)}
        return adaptive_figures({ADAPTIVE: a, "perclass_hindsight": h, "oracle": 0.9}, runs[ADAPTIVE], None,
                                regime_changes=changes)
    adaptive = {
        "outage": figures(0.85, 0.84, 2, [reaction("onset", 1), reaction("recovery", 2)]),
        "drift": figures(0.83, 0.84, 1, [reaction("onset", 2)]),
        "steady": figures(0.8980, 0.90, 0, []),  # 0.22% below: within 0.3%
    }
    shipped = shipped_targets(adaptive)
    assert shipped["at_least_hindsight"] == {"drift": False, "outage": True}
    assert shipped["within_steady_tolerance"] == {"steady": True}
    assert shipped["misses"] == ["drift: below perclass_hindsight by 1.19%",
                                 "drift: 1 of 1 onsets not reacted to within 1 interval (applied)"]
    adaptive["steady"] = figures(0.8970, 0.90, 0, [])  # 0.33% below
    assert "steady: more than 0.3% below perclass_hindsight (0.33%)" in shipped_targets(adaptive)["misses"]


def test_random_targets_are_shares_over_the_scenarios() -> None:
    scenarios: Dict[str, Dict[str, Any]] = {}
    # (adaptive, best simple static, hindsight, oracle, applied reaction intervals)
    cases: List[Tuple[float, float, float, float, List[Optional[int]]]] = [
        (0.85, 0.84, 0.84, 0.89, [1, 2]),  # beats both, captures 20%
        (0.84, 0.84, 0.85, 0.85, [3]),  # ties the static, 1.18% below hindsight, oracle = hindsight
        (0.80, 0.82, 0.81, 0.83, [None]),  # below both (1.23% below hindsight), captures -50%
        (0.90, 0.80, 0.88, 0.92, []),  # captures 50%
    ]
    for i, (a, s, h, o, reacted) in enumerate(cases):
        runs = {ADAPTIVE: run_entry(a, [reaction("onset", r) for r in reacted]), "all_api": run_entry(s),
                "perclass_hindsight": run_entry(h), "oracle": run_entry(o)}
        scenarios[f"s{i}"] = analyse_scenario(info(len(reacted)), runs)
    summary = overall(scenarios, "random")
    t = summary["random"]
    assert t["share_at_least_best_simple_static"]["value"] == 0.75 and not t["share_at_least_best_simple_static"]["met"]
    assert t["share_at_least_hindsight"]["value"] == 0.5 and t["share_at_least_hindsight"]["over"] == 4
    assert t["worst_gap_below_hindsight"]["value"] == pytest.approx(0.01 / 0.81, abs=1e-6)  # s2's, not s1's 1.18%
    assert t["worst_gap_below_hindsight"]["met"] is False  # 1.23% > 1%
    assert t["median_oracle_lead_captured"]["value"] == pytest.approx(0.2)  # median of 0.2, -0.5, 0.5
    assert t["median_oracle_lead_captured"]["over"] == 3 and not t["median_oracle_lead_captured"]["met"]
    assert t["share_events_reacted_within_2"]["value"] == 0.5 and t["share_events_reacted_within_2"]["over"] == 4
    assert len(summary["misses"]) == 5
    assert summary["reactions_by_kind"]["onset"] == {"events": 4, "in_time": 1, "within_2": 2, "limit_intervals": 1}


def test_an_event_is_material_when_the_best_split_in_hindsight_moves_its_way() -> None:
    """``material``: the split schedule's local share (weighted by the classes' shares) across
    the event, against the direction the event's ``expect`` gives."""
    from dualtrack.bench.adaptation import material
    from dualtrack.bench.verdicts import material_events
    from dualtrack.simulation import load_scenario

    scenario = load_scenario("api_outage")  # 15m outage (local_bias up), 27m recovered (down)
    shares = scenario.class_shares
    assert set(shares) == {"short", "medium", "long"}
    outage, recovered = scenario.timeline[0].at, scenario.timeline[1].at
    segments = [{"from_seconds": 0.0, "split": {"short": 1.0, "medium": 0.5, "long": 0.0}},
                {"from_seconds": outage, "split": {"short": 1.0, "medium": 1.0, "long": 0.0}},
                {"from_seconds": recovered, "split": {"short": 1.0, "medium": 1.0, "long": 0.0}}]
    assert material(scenario, segments, {"t": outage}) is True  # more local at the outage, as expected
    assert material(scenario, segments, {"t": recovered}) is False  # kept: reacting was worth nothing
    segments[2]["split"] = {"short": 0.5, "medium": 0.5, "long": 0.0}
    assert material(scenario, segments, {"t": recovered}) is True
    assert material(scenario, segments, {"t": 123.0}) is None  # no such event
    summary = material_events({"s": {"reactions": [
        {"applied_intervals": 1, "material": True}, {"applied_intervals": 5, "material": True},
        {"applied_intervals": None, "material": False}, {"applied_intervals": 1, "material": None}]}})
    assert summary == {"events": 4, "judged": 3, "material": 2, "within_2": 1, "share_within_2": 0.5}


def test_the_random_summary_splits_the_scenarios_by_the_oracles_lead() -> None:
    """``by_oracle_lead``: scenarios where the oracle leads the hindsight split by less than
    ``MIN_ORACLE_LEAD`` (nothing to adapt to) apart from the others, each with adaptive's margins."""
    from dualtrack.bench.verdicts import MIN_ORACLE_LEAD, by_oracle_lead

    def scenario(adaptive: float, hindsight: float, oracle: float) -> Dict[str, Any]:
        return {"oracle_objective": oracle, "hindsight_objective": hindsight, "at_least_hindsight": adaptive >= hindsight,
                "gap_below_hindsight": (hindsight - adaptive) / hindsight}

    lead = MIN_ORACLE_LEAD
    parts = by_oracle_lead({
        "flat_below": scenario(0.796, 0.8, 0.8 + lead / 2),
        "flat_above": scenario(0.802, 0.8, 0.8),
        "flat_far_below": scenario(0.78, 0.8, 0.8),
        "leading": scenario(0.81, 0.8, 0.8 + 20 * lead),
        "no_oracle": {"hindsight_objective": 0.8, "gap_below_hindsight": 0.0, "at_least_hindsight": True},
    })
    assert parts["flat"]["scenarios"] == 3 and parts["flat"]["at_least_hindsight"] == 1
    assert parts["flat"]["median_margin"] == pytest.approx(-0.005)
    assert parts["flat"]["mean_margin"] == pytest.approx((-0.005 + 0.0025 - 0.025) / 3, abs=1e-6)  # rounded
    assert parts["leading"] == {"scenarios": 1, "at_least_hindsight": 1, "median_margin": pytest.approx(0.0125),
                                "mean_margin": pytest.approx(0.0125)}
    assert by_oracle_lead({})["flat"] == {"scenarios": 0, "at_least_hindsight": 0, "median_margin": None,
                                          "mean_margin": None}
