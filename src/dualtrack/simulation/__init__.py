"""Simulated models, machine and scenarios, run in virtual time.

    from dualtrack.simulation import Simulation, load_scenario

    scenario = load_scenario("api_outage")                 # scenarios/api_outage.yaml
    result = Simulation(scenario, "strategy:adaptive", seed=1).run()
    result.summary["p95_latency_seconds"], result.summary["objective"]
    for row in result.series:                              # one row per adaptation interval
        print(row["t"], row["split"], row["preferences"]["effective"]["local_bias"])

The modules, bottom up: ``scenario`` (loading and validating scenario
files), ``generator`` (random scenarios drawn from a seed), ``models`` and
``machine`` (the simulated world), ``workload`` (the queries), ``planners``
and ``oracle`` (the policies under test and the greedy upper reference),
``objective`` and ``results`` (what is measured), ``loop`` (the
discrete-event ``Simulation``), ``hindsight`` (the best per-class split,
static or per regime segment, found by running them) and ``reference``
(the oracle the benchmark reports: the best of those references).
``runner`` is the old import path of the loop's names and only re-exports
them.

``docs/simulation.md`` describes the models, the scenario format and the
event loop; ``dualtrack bench adaptation`` runs the scenario suite.
"""

from .generator import generate_data, generate_scenario, generate_suite, save_scenarios
from .hindsight import GRID_LEVELS, Hindsight, Schedule, SplitEvaluator, search_schedule, search_split
from .loop import Simulation, run_simulation
from .machine import SimulatedMachine
from .models import ApiModelSim, Call, Draws, LocalModelSim
from .objective import OBJECTIVE, Objective
from .oracle import OraclePlanner
from .planners import (
    ORACLE,
    PERCLASS_PREFIX,
    STATIC_POLICIES,
    STRATEGY_PREFIX,
    PerClassStaticPlanner,
    check_policy,
    is_static,
    parse_perclass,
    perclass_policy,
    strategy_policy,
)
from .reference import ORACLE_SOURCES, Reference, choose_oracle, compute_reference
from .results import SimulationResult
from .scenario import Change, Event, Expectation, Scenario, load_scenario, scenario_names
from .workload import QueryTape, Request, Workload

__all__ = [
    "ApiModelSim", "Call", "Change", "Draws", "Event", "Expectation", "GRID_LEVELS", "Hindsight", "LocalModelSim",
    "OBJECTIVE", "ORACLE", "ORACLE_SOURCES", "Objective", "OraclePlanner", "PERCLASS_PREFIX", "PerClassStaticPlanner",
    "QueryTape", "Reference", "Request", "STATIC_POLICIES", "STRATEGY_PREFIX", "Scenario", "Schedule",
    "SimulatedMachine", "Simulation", "SimulationResult", "SplitEvaluator", "Workload", "check_policy",
    "choose_oracle", "compute_reference", "generate_data", "generate_scenario", "generate_suite", "is_static",
    "load_scenario", "parse_perclass", "perclass_policy", "run_simulation", "save_scenarios", "scenario_names",
    "search_schedule", "search_split", "strategy_policy",
]
