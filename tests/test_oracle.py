"""Tests for dualtrack.simulation.oracle on its own: its estimates and its choice, on hand-made states.

The oracle reads a running simulation only through ``SimulationState``; here
that state is a small object built from a scenario, so each test sets the
situation (an outage, a weak local model, the spend rate) directly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict

import pytest

from dualtrack.config import OptimizationConfig
from dualtrack.simulation import OBJECTIVE, OraclePlanner, Scenario
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


def budget_state(budget: float, spend: float, **changes: Any) -> State:
    s = state(build(constraints={**CONSTRAINTS, "max_cost_per_hour": budget}, **changes))
    s.spend_per_hour = spend
    return s


def test_the_budget_penalty_grows_as_spend_nears_the_budget() -> None:
    budget = 10.0
    penalties = [oracle(budget_state(budget, spend)).estimate("api", "long")["penalty"]
                 for spend in (0.0, 5.0, 8.0, 9.5, budget)]
    assert penalties[0] > 0.0
    assert all(a < b for a, b in zip(penalties, penalties[1:], strict=False)), penalties

    # By hand: one query raises the burn rate by cost/window for a window's time;
    # it is charged the violation time that bump may cause, at most a whole window.
    s = budget_state(budget, 8.0)
    o = oracle(s)
    cost = o.estimate("api", "long")["cost"]
    bump = cost / BUDGET_WINDOW_SECONDS * 3600.0
    assert bump < budget - 8.0
    rate = s.workload.state["workload"]["rate"]
    assert o.estimate("api", "long")["penalty"] == pytest.approx(
        OBJECTIVE.compliance * BUDGET_WINDOW_SECONDS * bump / (budget - 8.0) * rate)
    # at the budget, a whole window of violation
    assert penalties[-1] == pytest.approx(OBJECTIVE.compliance * BUDGET_WINDOW_SECONDS * rate)
    # far above the budget one more query changes little
    assert oracle(budget_state(budget, 100.0)).estimate("api", "long")["penalty"] < penalties[-1] / 10


def test_no_budget_no_penalty_and_local_never_pays_it() -> None:
    assert oracle(state(build())).estimate("api", "long")["penalty"] == 0.0
    assert oracle(budget_state(10.0, 10.0)).estimate("local", "long")["penalty"] == 0.0


def test_spend_at_the_budget_tips_a_class_from_the_api_to_local() -> None:
    # Only long queries, on a slow local model that is good enough but seldom
    # within the target: the API is worth its price until spend reaches the budget.
    long_only = {"classes": {"short": {**BASE["workload"]["classes"]["short"], "share": 0.0},
                             "long": BASE["workload"]["classes"]["long"]}}
    slow = {"local": {"quality": {"short": 0.85, "long": 0.72}, "decode_tokens_per_second": 40}}
    assert oracle(state(build(workload=long_only, models=slow))).choose("long")[0] == "api"
    assert oracle(budget_state(1000.0, 0.0, workload=long_only, models=slow)).choose("long")[0] == "api"
    assert oracle(budget_state(1000.0, 1000.0, workload=long_only, models=slow)).choose("long")[0] == "local"
