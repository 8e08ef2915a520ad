"""Simulated models, machine and scenarios, run in virtual time.

    from dualtrack.simulation import Simulation, load_scenario

    scenario = load_scenario("api_outage")                 # scenarios/api_outage.yaml
    result = Simulation(scenario, "strategy:adaptive", seed=1).run()
    result.summary["p95_latency_seconds"], result.summary["objective"]
    for row in result.series:                              # one row per adaptation interval
        print(row["t"], row["split"], row["preferences"]["effective"]["local_bias"])

The modules, bottom up: ``scenario`` (loading and validating scenario
files), ``models`` and ``machine`` (the simulated world), ``workload`` (the
queries), ``planners`` and ``oracle`` (the policies under test and the
upper reference), ``objective`` and ``results`` (what is measured), ``loop``
(the discrete-event ``Simulation``). ``runner`` is the old import path of
the last four and only re-exports them.

``docs/simulation.md`` describes the models, the scenario format and the
event loop; ``dualtrack bench adaptation`` runs the scenario suite.
"""

from .loop import Simulation, run_simulation
from .machine import SimulatedMachine
from .models import ApiModelSim, Call, Draws, LocalModelSim
from .objective import OBJECTIVE, Objective
from .oracle import OraclePlanner
from .planners import ORACLE, STATIC_POLICIES, STRATEGY_PREFIX, check_policy, strategy_policy
from .results import SimulationResult
from .scenario import Change, Event, Expectation, Scenario, load_scenario, scenario_names
from .workload import Request, Workload

__all__ = [
    "ApiModelSim", "Call", "Change", "Draws", "Event", "Expectation", "LocalModelSim", "OBJECTIVE", "ORACLE",
    "Objective", "OraclePlanner", "Request", "STATIC_POLICIES", "STRATEGY_PREFIX", "Scenario", "SimulatedMachine",
    "Simulation", "SimulationResult", "Workload", "check_policy", "load_scenario", "run_simulation",
    "scenario_names", "strategy_policy",
]
