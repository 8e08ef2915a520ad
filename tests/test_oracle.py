"""Tests for the oracle: the greedy planner on hand-made states, the hindsight search, and the
reported reference's soundness on a sample of random scenarios.

The greedy planner reads a running simulation only through ``SimulationState``;
here that state is a small object built from a scenario, so each test sets the
situation (an outage, a weak local model, the spend rate) directly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict

import pytest

from dualtrack.config import OptimizationConfig
from dualtrack.simulation import (
    GRID_LEVELS,
    OBJECTIVE,
    OraclePlanner,
    Scenario,
    Simulation,
    SplitEvaluator,
    choose_oracle,
    compute_reference,
    generate_scenario,
    perclass_policy,
    search_split,
)
from dualtrack.simulation.hindsight import choose_method
from dualtrack.simulation.models import ApiModelSim, Call, Draws, LocalModelSim
from dualtrack.simulation.oracle import BUDGET_WINDOW_SECONDS, SimulationState
from dualtrack.simulation.workload import QuerySpec, Request, Workload

# memory limits well above what the local model takes: no memory penalty
CONSTRAINTS: Dict[str, Any] = {"target_latency_ms": 8000, "min_quality_score": 0.7, "max_memory_mb": 16384,
                               "max_gpu_memory_mb": 16384}

BASE: Dict[str, Any] = {
    "name": "oracle",
    "duration": "10m",
    "seed": 1,
    "constraints": CONSTRAINTS,
    "workload": {
        "rate": 2,
        "classes": {
            # complexity 0.5 exactly: the expected quality is the table's value
            "short": {"share": 0.7, "tokens_in": {"median": 100, "sigma": 0.2},
                      "tokens_out": {"median": 50, "sigma": 0.2}, "complexity": {"mean": 0.5, "sd": 0.0}},
            "long": {"share": 0.3, "tokens_in": {"median": 3000, "sigma": 0.2},
                     "tokens_out": {"median": 300, "sigma": 0.2}, "complexity": {"mean": 0.5, "sd": 0.0}},
        },
    },
    "models": {
        # no quality noise: an answer is useful (at or above the floor) for sure or not at all
        "local": {"quality": {"short": 0.85, "long": 0.85}, "quality_noise": 0.0},
        "api": {"quality": {"short": 0.9, "long": 0.9}, "quality_noise": 0.0},
    },
    "machine": {"battery": None},
}


NO_ERROR = Draws(q_local=0.0, q_api=0.0, err_local=0.99, err_api=0.99, lat_api=0.0, tail_u=0.99, tail_x=0.5)


def build(**changes: Any) -> Scenario:
    """The base scenario with ``changes`` merged in one level deep (``models={"local": {...}}``)."""
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            for sub, subvalue in value.items():
                if isinstance(subvalue, dict) and isinstance(data[key].get(sub), dict):
                    data[key][sub] = {**data[key][sub], **subvalue}
                else:
                    data[key][sub] = subvalue
        else:
            data[key] = value
    return Scenario.from_dict(data)


@dataclass
class State:
    """A simulation's true state, standing still: what the oracle reads (``SimulationState``)."""

    scenario: Scenario
    config: OptimizationConfig
    params: Dict[str, Any]
    local: LocalModelSim
    api: ApiModelSim
    workload: Workload
    now: float = 60.0
    spend_per_hour: float = 0.0

    def spend_rate_per_hour(self) -> float:
        return self.spend_per_hour


def state(scenario: Scenario, **params: Any) -> State:
    """A fresh state of ``scenario``; ``params`` set starting parameters (``{"api.outage": "error"}``)."""
    if params:
        scenario = scenario.with_params(params)
    p = scenario.initial_params()
    return State(scenario, scenario.optimization_config("balanced"), p, LocalModelSim(p["local"]),
                 ApiModelSim(p["api"]), Workload(scenario, 1))


def oracle(s: SimulationState) -> OraclePlanner:
    return OraclePlanner(s, OBJECTIVE)


def value(o: OraclePlanner, estimate: Dict[str, float], *, late: bool = False) -> float:
    """One attempt's expected contribution, from the objective's weights (the oracle's formula, by hand)."""
    w = OBJECTIVE
    within = 0.0 if late else estimate["within"]
    return ((1.0 - estimate["fail"]) * (w.useful * estimate["useful"] + w.within_target * within
                                        + w.quality * estimate["quality"]
                                        - w.savings * estimate["cost"] / o.api_cost_norm)
            - estimate["penalty"])


# ------------------------------------------------------------------ estimates


def test_estimates_read_the_regime_tables() -> None:
    o = oracle(state(build()))
    local, api = o.estimate("local", "short"), o.estimate("api", "short")
    assert local["quality"] == pytest.approx(0.85) and api["quality"] == pytest.approx(0.9)
    assert local["useful"] == 1.0 and api["useful"] == 1.0  # no noise, both above the 0.7 floor
    assert local["cost"] == 0.0 and local["penalty"] == 0.0
    assert local["fail"] == pytest.approx(LocalModelSim(build().initial_params()["local"]).p["error_rate"])
    # the API's price: mean tokens at the scenario's prices
    spec = build().classes[0]
    assert api["cost"] == pytest.approx((spec.tokens_in.mean * 2.5 + spec.tokens_out.mean * 10.0) / 1e6)
    assert 0.0 < api["fail"] < 0.1 and 0.0 < api["within"] <= 1.0


def test_the_score_counts_the_one_fallback() -> None:
    o = oracle(state(build()))
    e = {t: o.estimate(t, "short") for t in ("local", "api")}
    assert o.score("local", "short") == pytest.approx(value(o, e["local"]) + e["local"]["fail"] * value(o, e["api"]))
    assert o.score("api", "short") == pytest.approx(value(o, e["api"]) + e["api"]["fail"] * value(o, e["local"]))


# ------------------------------------------------------------------ choices


def test_during_an_api_outage_it_picks_local() -> None:
    for outage in ("error", "hang"):
        o = oracle(state(build(), **{"api.outage": outage}))
        api = o.estimate("api", "long")
        assert api["fail"] == 1.0
        for query_class in ("short", "long"):
            track, scores = o.choose(query_class)
            assert track == "local", (outage, query_class, scores)
    # A hanging API fails only at its timeout: the fallback that follows can no
    # longer be within the target, so trying the API first loses exactly that.
    o = oracle(state(build(), **{"api.outage": "hang"}))
    local = o.estimate("local", "short")
    _, scores = o.choose("short")
    assert scores["local"] - scores["api"] == pytest.approx(
        (1.0 - local["fail"]) * OBJECTIVE.within_target * local["within"])
    assert scores["local"] > scores["api"]


def test_an_api_at_its_rate_limit_counts_as_failing() -> None:
    s = state(build(models={"api": {"rate_limit_per_minute": 2}}))
    assert oracle(s).estimate("api", "short")["fail"] < 1.0
    for i, t in enumerate((s.now - 10.0, s.now - 5.0)):  # two requests in the last minute
        s.api.submit(Call(None, "api", f"r{i}", t, t + 30.0, 100, 50), t, NO_ERROR, "short", 0.5)
    assert oracle(s).estimate("api", "short")["fail"] == 1.0


def test_a_local_model_below_the_quality_floor_for_a_class_sends_that_class_to_the_api() -> None:
    s = state(build(models={"local": {"quality": {"short": 0.85, "long": 0.5}}}))
    o = oracle(s)
    assert o.estimate("local", "long")["useful"] == 0.0  # 0.5 < 0.7, and no noise to lift it
    assert o.estimate("local", "short")["useful"] == 1.0
    assert o.choose("long")[0] == "api"
    assert o.choose("short")[0] == "local"  # free, fast and good enough
    spec = QuerySpec(60.0, "long", 3000, 300, 0.5, None)  # type: ignore[arg-type]
    plan = o.plan(Request("r1", spec, 60.0))
    assert (plan.path, plan.tracks, plan.fallback) == ("api", ("api",), "local")
    assert not plan.preempt and plan.quality_threshold == 0.0


# ------------------------------------------------------------------ the budget


def budget_state(budget: float, spend: float = 0.0, **changes: Any) -> State:
    s = state(build(constraints={**CONSTRAINTS, "max_cost_per_hour": budget}, **changes))
    s.spend_per_hour = spend
    return s


# the local model answers long queries below the quality floor: the API is worth paying for them
WEAK_LONG = {"local": {"quality": {"short": 0.88, "long": 0.5}}}


def api_spend_per_hour(o: OraclePlanner, s: State, query_class: str) -> float:
    """What sending every query of the class to the API costs per hour, by the oracle's estimates."""
    shares = s.params["workload"]["share"]
    api = o.estimate("api", query_class)
    return (s.params["workload"]["rate"] * shares[query_class] / sum(shares.values())
            * api["cost"] * (1.0 - api["fail"]) * 3600.0)


def test_the_budget_is_no_per_query_penalty() -> None:
    # Whether one query tips spend over the budget depends on all the others: it is planned, not charged.
    for spend in (0.0, 9.5, 10.0, 100.0):
        assert oracle(budget_state(10.0, spend)).estimate("api", "long")["penalty"] == 0.0
    assert oracle(state(build())).budget_plan() == {"short": 1.0, "long": 1.0}
    assert oracle(budget_state(1000.0, models=WEAK_LONG)).budget_plan() == {"short": 1.0, "long": 1.0}


def test_a_tight_budget_funds_the_class_that_gains_most_per_dollar() -> None:
    s = budget_state(10.0, models=WEAK_LONG)
    o = oracle(s)
    assert o.choose("long")[0] == "api" and o.choose("short")[0] == "local"  # without a budget
    spend_long = api_spend_per_hour(o, s, "long")
    assert spend_long > 10.0  # all long queries on the API would break the budget
    plan = o.budget_plan()
    assert plan["short"] == 1.0  # goes local anyway: nothing to fund
    assert plan["long"] == pytest.approx(0.95 * 10.0 / spend_long)  # what 95% of the budget pays for

    # the plan spreads the funded share evenly over the long queries the API would serve
    spec = QuerySpec(60.0, "long", 3000, 300, 0.5, None)  # type: ignore[arg-type]
    tracks = [o.plan(Request(f"r{i}", spec, 60.0)).path for i in range(40)]
    assert tracks.count("api") == int(40 * plan["long"])
    assert "api api" not in " ".join(tracks)  # never two in a row at a share below one half


def test_measured_spend_over_the_budget_makes_the_plan_aim_lower() -> None:
    s = budget_state(10.0, spend=0.0, models=WEAK_LONG)
    s.now = 2 * BUDGET_WINDOW_SECONDS  # a full window of spend measured
    calm = oracle(s).budget_plan()["long"]
    s.spend_per_hour = 20.0  # the estimates ran over: spend is twice the budget
    assert oracle(s).budget_plan()["long"] == pytest.approx(calm * 0.5)


def test_breaking_the_budget_when_the_api_is_worth_more_than_compliance() -> None:
    # Mostly long queries and a budget that pays for a sliver of them: keeping it would lose more
    # useful answers than the whole compliance term is worth, so the oracle spends.
    mostly_long = {"classes": {"short": {**BASE["workload"]["classes"]["short"], "share": 0.1},
                               "long": {**BASE["workload"]["classes"]["long"], "share": 0.9}}}
    s = budget_state(0.5, workload=mostly_long, models=WEAK_LONG)
    o = oracle(s)
    e = {t: o.estimate(t, "long") for t in ("local", "api")}
    gap = o.score("api", "long", e) - o.score("local", "long", e)
    funded = 0.95 * 0.5 / api_spend_per_hour(o, s, "long")
    assert 0.9 * gap * (1.0 - funded) > OBJECTIVE.compliance
    assert o.budget_plan() == {"short": 1.0, "long": 1.0}


# ------------------------------------------------------------------ the reported oracle: sound by construction


@pytest.mark.parametrize("seed, index", [(7, 0), (7, 1), (8, 2)])
def test_the_reference_is_at_least_every_static_on_random_scenarios(seed: int, index: int) -> None:
    # short versions of generated scenarios (6-9 minutes), the coarse grid searched in full
    scenario = generate_scenario(seed, index).time_scaled(0.2)
    ref = compute_reference(scenario, levels=(0.0, 0.5, 1.0), method="grid")
    candidates = ref.candidates()
    assert ref.objective == max(v for v in candidates.values() if v is not None)
    assert ref.result.summary["objective"] == ref.objective
    assert ref.source == choose_oracle(candidates)
    statics = {name: r.summary["objective"] for name, r in ref.statics.items()}
    assert set(statics) == {"all_local", "all_api", "fixed_50_50"}
    assert all(ref.objective >= v for v in statics.values()), (ref.source, candidates, statics)
    # the hindsight split is the best of the whole grid, the statics' uniform splits among them
    assert ref.hindsight.method == "grid" and len(ref.hindsight.scores) == 27
    assert ref.hindsight.objective == max(ref.hindsight.scores.values()) >= max(statics.values())
    assert ref.hindsight_result.summary["objective"] == ref.hindsight.objective
    if scenario.timeline:
        assert ref.schedule is not None and len(ref.schedule.segments) == len({e.at for e in scenario.timeline}) + 1
    else:
        assert ref.schedule is None


def test_a_tie_between_candidates_goes_to_the_greedy_planner_then_the_schedule() -> None:
    assert choose_oracle({"greedy": 0.8, "split_schedule": 0.8, "perclass_hindsight": 0.8}) == "greedy"
    assert choose_oracle({"greedy": 0.7, "split_schedule": 0.8, "perclass_hindsight": 0.8}) == "split_schedule"
    assert choose_oracle({"greedy": 0.7, "split_schedule": None, "perclass_hindsight": 0.8}) == "perclass_hindsight"
    with pytest.raises(ValueError):
        choose_oracle({})


def known_best() -> Scenario:
    """Two classes with an obvious best split: ``short`` local (free, fast, as good), ``long`` on the API
    (local answers it far below the quality floor). Light load: the local model never queues."""
    return build(duration="3m", workload={"rate": 1.0}, models={
        "local": {"quality": {"short": 0.9, "long": 0.3}},
        "api": {"quality": {"short": 0.9, "long": 0.9}}})


@pytest.mark.parametrize("method", ["grid", "descent"])
def test_the_hindsight_search_finds_the_known_best_split(method: str) -> None:
    evaluator = SplitEvaluator(known_best())
    found = search_split(evaluator, (0.0, 0.25, 0.5, 0.75, 1.0), method=method)
    assert found.split == {"short": 1.0, "long": 0.0}
    assert found.method == method
    assert found.objective == max(evaluator.scores.values())
    if method == "descent":
        assert found.evaluated < found.grid_size
    # the search is over the same runs a user gets
    direct = Simulation(known_best(), perclass_policy(found.split)).run().summary["objective"]
    assert direct == found.objective


def test_auto_searches_the_full_grid_when_it_is_small() -> None:
    evaluator = SplitEvaluator(known_best())
    assert choose_method(evaluator, GRID_LEVELS) == "grid"  # 25 splits x a few hundred queries
    with pytest.raises(ValueError, match="method"):
        choose_method(evaluator, GRID_LEVELS, "random")
