"""The plan-calibration benchmark: the plan's expectations split into the objective's terms, the runs'
terms, and the comparison of the two. Its figures (how well the plan expects) are never asserted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List

import pytest

from dualtrack.objective import OBJECTIVE, TERMS
from dualtrack.simulation import Simulation
from dualtrack.simulation.generator import generate_scenario
from dualtrack.simulation.hindsight import SplitEvaluator
from support.bench_scripts import bench_script, run_script

ROOT = Path(__file__).resolve().parent.parent


def _snapshots(mod: Any) -> List[Any]:
    scenario = generate_scenario(1, 2).time_scaled(0.2)
    kept: List[Any] = []
    with mod.plans_kept(kept):
        Simulation(scenario, "strategy:adaptive").run()
    return kept


def test_the_expected_terms_add_up_to_the_plans_own_score() -> None:
    mod = bench_script("plan_calibration")
    kept = _snapshots(mod)
    assert len(kept) >= 5
    snapshot = kept[-1]
    plans = mod.planners(snapshot)
    classes = list(plans["all"].gains)
    assert classes, "the last cycle knows both tracks of some class"
    for shares in ({c: 1.0 for c in classes}, {c: 0.0 for c in classes}, {c: i / 2 for i, c in enumerate(classes)}):
        terms = mod.expected(plans, shares)
        plan = plans["all"].score(shares)
        # The query terms plus what no term holds (the fallback's charge) are the plan's value, but for
        # the savings weight: the plan charges the cost, the objective credits what was saved.
        charge = plans["none"].score(shares).value
        query_terms = sum(terms[t] for t in TERMS if t != "compliance")
        assert query_terms + charge - OBJECTIVE.savings == pytest.approx(plan.value, abs=1e-12)
        assert terms["compliance"] == pytest.approx(
            OBJECTIVE.compliance * (1.0 - plan.p_memory) * (1.0 - plan.p_budget))
        assert terms["total"] == pytest.approx(sum(terms[t] for t in TERMS))
    # The copies are the estimator of each cycle, not one object seen at the end; with the shares chosen.
    assert kept[0][0] is not kept[-1][0]
    assert set(kept[-1][3]) == set(classes) and all(0.0 <= x <= 1.0 for x in kept[-1][3].values())


def test_a_runs_terms_add_up_to_its_objective() -> None:
    mod = bench_script("plan_calibration")
    evaluator = SplitEvaluator(generate_scenario(1, 2).time_scaled(0.2))
    summary = evaluator.run({c: 0.5 for c in evaluator.classes}).summary
    terms = mod.realized(summary)
    assert terms["total"] == pytest.approx(summary["objective"], abs=1e-6)
    assert set(terms) == {*TERMS, "total"}


def test_rank_correlation() -> None:
    mod = bench_script("plan_calibration")
    assert mod.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert mod.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert mod.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)


def test_calibrating_a_scenario_compares_each_cycle_with_the_grid(tmp_path: Path) -> None:
    out = tmp_path / "cal.json"
    proc = run_script("plan_calibration", "--random", "1:2", "--levels", "0,1", "--at", "0.5,1", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    result = figures["scenarios"]["random_1_002"]
    assert result["splits"] == 2 ** len(result["classes"])
    cycles = [c for c in result["cycles"] if "skipped" not in c]
    assert cycles and figures["summary"]["cycles"] == len(cycles)
    for cyc in cycles:
        assert all(x in (0.0, 1.0) for x in cyc["best_expected"] + cyc["best_run"])
        # The run's best is the best of the runs: what the plan's best scored is at most that.
        assert cyc["best_expected_run_objective"] <= cyc["best_run_objective"]
        assert cyc["regret"] == pytest.approx(cyc["best_run_objective"] - cyc["best_expected_run_objective"])
        why = cyc["best_expected_against_best_run"]
        assert why["total"]["run"] == pytest.approx(-cyc["regret"])
        assert cyc["choice_gap"] == pytest.approx(cyc["best_expected_objective"] - cyc["chosen_expected_objective"])
        assert len(cyc["chosen"]) == len(result["classes"])
    assert "error of expected differences" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--random", "1-2"], "expected SEED:INDEX"),
    (["--random", "1:2", "--levels", "0,2"], "within [0, 1]"),
    ([], "name at least one --scenario or --random"),
])
def test_bad_arguments_are_refused_before_anything_runs(args: List[str], message: str) -> None:
    proc = run_script("plan_calibration", *args, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
