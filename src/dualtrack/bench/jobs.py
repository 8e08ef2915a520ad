"""The adaptation benchmark's units of work, run in worker processes.

Each job is plain, picklable data and its answer is JSON-ready:

- :class:`PolicyJob` -- one policy on one scenario (a strategy, with its
  reaction times, or a fixed per-class split);
- :class:`BaselineJob` -- everything static of one scenario at once: the
  static policies, the per-class split in hindsight, the split schedule and
  the greedy oracle (:func:`~dualtrack.simulation.reference.compute_reference`),
  all sharing one query tape and running without metrics.

Jobs are deterministic: the same job gives the same answer in any process,
except the ``wall_seconds`` fields.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from ..router.hedging import HedgePolicy
from ..simulation import (
    GRID_LEVELS,
    OBJECTIVE,
    STATIC_POLICIES,
    Scenario,
    Simulation,
    SimulationResult,
    SplitEvaluator,
    compute_reference,
    is_static,
    perclass_policy,
    search_split,
)
from ..simulation.hindsight import Hindsight, uniform_split
from ..simulation.planners import STATIC_SHARES, strategy_set

PERCLASS_HINDSIGHT = "perclass_hindsight"
PERCLASS_STEADY = "perclass_steady"


def result_dict(result: SimulationResult, *, series: bool, policy: Optional[str] = None) -> Dict[str, Any]:
    """A run's JSON entry: its ``to_dict`` plus the objective's components."""
    out = result.to_dict(series=series)
    if policy is not None:
        out["policy"] = policy
    out["objective_components"] = {k: round(v, 6) for k, v in OBJECTIVE.components(result.summary).items()}
    return out


@dataclass(frozen=True)
class PolicyJob:
    key: str  # the scenario's key in the results
    scenario: Scenario
    seed: int
    policy: str  # a simulation policy (strategy:<name>, a static one, perclass:..., oracle)
    label: str  # its name in the results
    rules_path: Optional[str] = None
    series: bool = False
    server_signals: bool = False  # the strategy also reads the local server's load gauges
    hedge: bool = False  # slow single-track calls are hedged (HedgePolicy's defaults)


def run_policy(job: PolicyJob) -> Dict[str, Any]:
    started = time.perf_counter()
    static = is_static(job.policy)
    strategies = strategy_set(job.rules_path) if not static else None
    sim = Simulation(job.scenario, job.policy, seed=job.seed, strategies=strategies,
                     measure_reactions=not static, record_metrics=not static, server_signals=job.server_signals,
                     hedge=HedgePolicy() if job.hedge else None)
    out = result_dict(sim.run(), series=job.series, policy=job.label)
    out["job_seconds"] = round(time.perf_counter() - started, 3)
    return out


@dataclass(frozen=True)
class BaselineJob:
    key: str
    scenario: Scenario
    seed: int
    levels: Tuple[float, ...] = GRID_LEVELS
    method: str = "auto"
    schedule: bool = True
    series: bool = False
    search_only: bool = False  # only the hindsight split (the steady reference of perclass_steady)


def _search_dict(found: Hindsight) -> Dict[str, Any]:
    return {"split": found.split, "objective": found.objective, "policy": perclass_policy(found.split),
            "method": found.method, "evaluated": found.evaluated, "grid_size": found.grid_size,
            "levels": list(found.levels), "how": found.describe()}


def run_baselines(job: BaselineJob) -> Dict[str, Any]:
    """The static runs, the hindsight split, the split schedule and the greedy oracle of one scenario."""
    started = time.perf_counter()
    if job.search_only:
        evaluator = SplitEvaluator(job.scenario, job.seed)
        uniform = [uniform_split(evaluator.classes, STATIC_SHARES[name]) for name in STATIC_POLICIES]
        found = search_split(evaluator, job.levels, method=job.method, include=uniform)
        return {"search": _search_dict(found), "job_seconds": round(time.perf_counter() - started, 3)}
    ref = compute_reference(job.scenario, job.seed, levels=job.levels, method=job.method, schedule=job.schedule)
    hindsight = result_dict(ref.hindsight_result, series=job.series, policy=PERCLASS_HINDSIGHT)
    hindsight["split"] = ref.hindsight.split
    out: Dict[str, Any] = {
        "statics": {name: result_dict(r, series=job.series) for name, r in ref.statics.items()},
        "hindsight": hindsight,
        "search": _search_dict(ref.hindsight),
        "greedy": result_dict(ref.greedy, series=job.series),
        "schedule": None,
    }
    if ref.schedule is not None:
        schedule = result_dict(ref.schedule.result, series=job.series)
        schedule["segments"] = [{"from_seconds": start, "split": split} for start, split in ref.schedule.segments]
        schedule["evaluated"] = ref.schedule.evaluated
        out["schedule"] = schedule
    out["job_seconds"] = round(time.perf_counter() - started, 3)
    return out


__all__ = ["BaselineJob", "PERCLASS_HINDSIGHT", "PERCLASS_STEADY", "PolicyJob", "result_dict", "run_baselines",
           "run_policy"]
