"""The old home of the simulation runner, kept so that old imports work.

The runner was split into modules named for what they hold:
:mod:`.workload` (``QuerySpec``, ``Workload``, ``Request``), :mod:`.planners`
(the policies and their planners), :mod:`.results` (``SimulationResult`` and
the accumulators) and :mod:`.loop` (``Simulation``, the event loop). This
module only re-exports their names; import from those modules (or from
:mod:`dualtrack.simulation`) in new code.
"""

from __future__ import annotations

from .loop import REACTION_EPSILON, Simulation, run_simulation
from .planners import ORACLE, STATIC_POLICIES, STRATEGY_PREFIX, check_policy, strategy_policy
from .results import SimulationResult
from .workload import QuerySpec, Request, Workload

__all__ = [
    "ORACLE", "REACTION_EPSILON", "STATIC_POLICIES", "STRATEGY_PREFIX", "QuerySpec", "Request", "Simulation",
    "SimulationResult", "Workload", "check_policy", "run_simulation", "strategy_policy",
]
