"""Planners: how each policy under test turns a simulated query into a route plan.

A planner has one method, ``plan(request) -> RoutePlan``; the event loop
runs the plan as the router would (timeouts, one fallback, races). The
policies, by name:

- ``strategy:<name>`` -- :class:`StrategyPlanner`, the real
  :class:`~dualtrack.router.policy.RoutingPolicy` over the optimizer whose
  embedded adapter follows that strategy;
- ``all_local``, ``all_api``, ``fixed_50_50`` -- :class:`StaticPlanner`, a
  fixed local share (:data:`STATIC_SHARES`), no adaptation;
- ``perclass:<class>=<share>,...`` -- :class:`PerClassStaticPlanner`, a
  fixed local share per query class (:func:`perclass_policy` builds the
  name, :func:`parse_perclass` reads it), no adaptation; the benchmark's
  ``perclass_hindsight`` and ``perclass_steady`` baselines are such splits;
- ``oracle`` -- :class:`~dualtrack.simulation.oracle.OraclePlanner`, which
  reads the simulation's true state (its own module).

Static planners (the fixed and per-class splits) never read the optimizer,
so their runs may skip recording through it (``Simulation(...,
record_metrics=False)``): same figures, a fraction of the time.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Protocol, Tuple, Union

from ..adapter.strategy import StrategySet, load_strategies
from ..bundled import bundled_dir
from ..router.policy import RoutePlan, RoutingPolicy
from ..vocabulary import DEFAULT_TIMEOUTS_SECONDS, other_track
from .workload import QuerySpec, Request

STATIC_SHARES: Mapping[str, float] = MappingProxyType({"all_local": 1.0, "all_api": 0.0, "fixed_50_50": 0.5})
"""The static baselines and the share of queries each sends to the local track."""

STATIC_POLICIES: Tuple[str, ...] = tuple(STATIC_SHARES)
ORACLE = "oracle"
STRATEGY_PREFIX = "strategy:"
PERCLASS_PREFIX = "perclass:"


def strategy_policy(name: str) -> str:
    return STRATEGY_PREFIX + name


def perclass_policy(shares: Mapping[str, float]) -> str:
    """The policy name of a per-class split: ``perclass:short=1,medium=0.5,long=0`` (in the given order)."""
    parts = []
    for name, share in shares.items():
        share = float(share)
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"policy: the local share of {name!r} must be within 0..1, got {share!r}")
        parts.append(f"{name}={share:g}")
    if not parts:
        raise ValueError("policy: a per-class split needs at least one class")
    return PERCLASS_PREFIX + ",".join(parts)


def parse_perclass(policy: str) -> Dict[str, float]:
    """The local share per class of a ``perclass:`` policy name."""
    if not policy.startswith(PERCLASS_PREFIX):
        raise ValueError(f"policy: {policy!r} is not a per-class split (perclass:<class>=<share>,...)")
    shares: Dict[str, float] = {}
    for part in policy[len(PERCLASS_PREFIX):].split(","):
        name, sep, value = part.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if not sep or not name or not 0.0 <= share <= 1.0 or name in shares:
            raise ValueError(f"policy: bad per-class split {policy!r}; expected perclass:<class>=<share 0..1>,... "
                             f"e.g. perclass:short=1,medium=0.5,long=0")
        shares[name] = share
    return shares


def check_policy(policy: str) -> str:
    """Validate a policy name: ``strategy:<name>``, a static one, a ``perclass:`` split or ``oracle``."""
    if policy in STATIC_POLICIES or policy == ORACLE:
        return policy
    if policy.startswith(STRATEGY_PREFIX) and len(policy) > len(STRATEGY_PREFIX):
        return policy
    if policy.startswith(PERCLASS_PREFIX):
        parse_perclass(policy)
        return policy
    raise ValueError(f"policy: unknown policy {policy!r}; expected strategy:<name>, "
                     f"{', '.join(STATIC_POLICIES)}, perclass:<class>=<share>,... or {ORACLE}")


def is_static(policy: str) -> bool:
    """True for the policies that never read the optimizer: the fixed and the per-class splits."""
    return policy in STATIC_POLICIES or policy.startswith(PERCLASS_PREFIX)


_STRATEGY_SETS: Dict[Optional[str], StrategySet] = {}


def strategy_set(rules_path: Optional[Union[str, Path]] = None) -> StrategySet:
    """The strategies of ``rules_path`` (default: the bundled ``rules/``), loaded once per process.

    Every simulation builds an optimizer, and parsing the rules for each run
    would cost more than a short static run itself.
    """
    key = None if rules_path is None else str(rules_path)
    if key not in _STRATEGY_SETS:
        _STRATEGY_SETS[key] = load_strategies(key or bundled_dir("rules"))
    return _STRATEGY_SETS[key]


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


class PerClassStaticPlanner(StaticPlanner):
    """A fixed local share per query class; otherwise exactly a :class:`StaticPlanner`.

    A split with the same share for every class routes exactly as the fixed
    split (same random draws), so ``perclass:short=0.5,medium=0.5,long=0.5``
    is ``fixed_50_50`` to the last digit.
    """

    def __init__(self, shares: Mapping[str, float], rng: random.Random) -> None:
        super().__init__(0.0, rng)
        self.shares = dict(shares)

    def local_share(self, query_class: str) -> float:
        return self.shares[query_class]


__all__ = [
    "ORACLE", "PERCLASS_PREFIX", "PerClassStaticPlanner", "Planner", "STATIC_POLICIES", "STATIC_SHARES",
    "STRATEGY_PREFIX", "StaticPlanner", "StrategyPlanner", "check_policy", "is_static", "parse_perclass",
    "perclass_policy", "single_track_plan", "strategy_policy", "strategy_set",
]
