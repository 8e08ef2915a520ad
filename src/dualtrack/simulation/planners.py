"""Planners: how each policy under test turns a simulated query into a route plan.

A planner has one method, ``plan(request) -> RoutePlan``; the event loop
runs the plan as the router would (timeouts, one fallback, races). The
policies, by name:

- ``strategy:<name>`` -- :class:`StrategyPlanner`, the real
  :class:`~dualtrack.router.policy.RoutingPolicy` over the optimizer whose
  embedded adapter follows that strategy;
- ``all_local``, ``all_api``, ``fixed_50_50`` -- :class:`StaticPlanner`, a
  fixed local share (:data:`STATIC_SHARES`), no adaptation;
- ``oracle`` -- :class:`~dualtrack.simulation.oracle.OraclePlanner`, which
  reads the simulation's true state (its own module).

A new baseline is a small class here: pick a track per request and return
:func:`single_track_plan`, e.g. a per-query-class static split::

    class PerClassStaticPlanner(StaticPlanner):
        def __init__(self, shares: Mapping[str, float], rng: random.Random) -> None:
            super().__init__(0.0, rng)
            self.shares = shares

        def local_share(self, query_class: str) -> float:
            return self.shares[query_class]
"""

from __future__ import annotations

import random
from types import MappingProxyType
from typing import Any, Dict, Mapping, Protocol, Tuple

from ..router.policy import RoutePlan, RoutingPolicy
from ..vocabulary import DEFAULT_TIMEOUTS_SECONDS, other_track
from .workload import QuerySpec, Request

STATIC_SHARES: Mapping[str, float] = MappingProxyType({"all_local": 1.0, "all_api": 0.0, "fixed_50_50": 0.5})
"""The static baselines and the share of queries each sends to the local track."""

STATIC_POLICIES: Tuple[str, ...] = tuple(STATIC_SHARES)
ORACLE = "oracle"
STRATEGY_PREFIX = "strategy:"


def strategy_policy(name: str) -> str:
    return STRATEGY_PREFIX + name


def check_policy(policy: str) -> str:
    """Validate a policy name: ``strategy:<name>``, a static one or ``oracle``."""
    if policy in STATIC_POLICIES or policy == ORACLE:
        return policy
    if policy.startswith(STRATEGY_PREFIX) and len(policy) > len(STRATEGY_PREFIX):
        return policy
    raise ValueError(f"policy: unknown policy {policy!r}; expected strategy:<name>, "
                     f"{', '.join(STATIC_POLICIES)} or {ORACLE}")


class Planner(Protocol):
    """What the event loop asks of a policy: a plan for each arriving request."""

    def plan(self, request: Request) -> RoutePlan: ...


def single_track_plan(track: str, spec: QuerySpec, timeouts: Dict[str, float]) -> RoutePlan:
    """A plan for one track, with the other track as its one fallback: never parallel, any quality accepted."""
    return RoutePlan(path=track, tracks=(track,), fallback=other_track(track),
                     timeouts_seconds=timeouts, quality_threshold=0.0, preempt=False,
                     query_class=spec.query_class, complexity=spec.complexity, recommendation={})


class StrategyPlanner:
    """The real routing policy over the optimizer's recommendations."""

    def __init__(self, optimizer: Any, rng: random.Random) -> None:
        self.policy = RoutingPolicy(optimizer, rng=rng)

    def plan(self, request: Request) -> RoutePlan:
        return self.policy.plan("", request.context)


class StaticPlanner:
    """A fixed split with the router's default timeouts and fallback; never parallel.

    A share of 1 or 0 draws no random number, so those policies leave the
    routing stream untouched.
    """

    def __init__(self, local_share: float, rng: random.Random) -> None:
        self.share = local_share
        self.rng = rng
        self.timeouts = dict(DEFAULT_TIMEOUTS_SECONDS)

    def local_share(self, query_class: str) -> float:
        """The share of ``query_class`` queries sent to the local track."""
        return self.share

    def plan(self, request: Request) -> RoutePlan:
        spec = request.spec
        share = self.local_share(spec.query_class)
        if share >= 1.0:
            track = "local"
        elif share <= 0.0:
            track = "api"
        else:
            track = "local" if self.rng.random() < share else "api"
        return single_track_plan(track, spec, self.timeouts)


__all__ = [
    "ORACLE", "Planner", "STATIC_POLICIES", "STATIC_SHARES", "STRATEGY_PREFIX", "StaticPlanner",
    "StrategyPlanner", "check_policy", "single_track_plan", "strategy_policy",
]
