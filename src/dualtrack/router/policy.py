"""Routing policy: from a recommendation to a plan. Pure and cheap.

The live router (``router.router``) and the simulator (``simulation``) both
turn each query into a ``RoutePlan`` here, so what the benchmarks measure
is what the router does.

- ``local_bias`` is a traffic share: a query goes local with that
  probability (per query class, as the preferences say).
- A query whose complexity reaches ``parallel_threshold`` runs on both
  tracks; with preemption the first acceptable answer wins.
- An immediate override from the optimizer (memory, GPU memory,
  concurrency, battery, cost) forces its path.
- Otherwise each track keeps at least ``floor`` of the traffic, so a track
  that fell out of favour still produces the metrics that can bring it back.
- The other track is the fallback, tried once on error or timeout.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

TRACKS = ("local", "api")


@dataclass(frozen=True)
class RoutePlan:
    path: str  # "local", "api" or "parallel"
    tracks: Tuple[str, ...]  # tracks to start: one, or both for parallel
    fallback: Optional[str]  # track tried once if the first fails; None for parallel
    timeouts_seconds: Mapping[str, float]
    quality_threshold: float
    preempt: bool
    query_class: str
    complexity: float
    recommendation: Mapping[str, Any]


def other(track: str) -> str:
    return "api" if track == "local" else "local"


class RoutingPolicy:
    """Turns recommendations into plans.

    ``rng`` is injectable so the simulator is deterministic for a seed.
    """

    def __init__(self, optimizer: Any, *, rng: Optional[random.Random] = None, floor: float = 0.02,
                 enable_preemption: Optional[bool] = None, fallback: bool = True) -> None:
        if not 0.0 <= floor <= 0.5:
            raise ValueError(f"floor: must be within [0, 0.5], got {floor!r}")
        self.optimizer = optimizer
        self.rng = rng or random.Random()
        self.floor = floor
        self.enable_preemption = (optimizer.config.enable_preemption if enable_preemption is None
                                  else enable_preemption)
        self.fallback = fallback

    def plan(self, query: str, context: Optional[Dict[str, Any]] = None) -> RoutePlan:
        rec = self.optimizer.get_optimization_recommendations(query, context)
        routing = rec["routing"]
        complexity = float(rec.get("complexity", 0.0))
        if rec.get("overrides"):
            path = rec["preferred_path"]
        elif routing["parallel_threshold"] <= 1.0 and complexity >= routing["parallel_threshold"]:
            path = "parallel"
        else:
            share = min(max(routing["local_bias"], self.floor), 1.0 - self.floor)
            path = "local" if self.rng.random() < share else "api"
        if path == "parallel":
            tracks: Tuple[str, ...] = TRACKS
            fallback = None
        else:
            tracks = (path,)
            fallback = other(path) if self.fallback else None
        return RoutePlan(
            path=path, tracks=tracks, fallback=fallback,
            timeouts_seconds=rec["timeouts_seconds"],
            quality_threshold=routing["quality_threshold"],
            preempt=self.enable_preemption,
            query_class=rec["query_class"], complexity=complexity, recommendation=rec,
        )
