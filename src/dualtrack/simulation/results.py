"""What a simulation measures: the run's totals, each adaptation interval's, and the result.

- :func:`new_totals` and :func:`build_summary` -- the per-request counts of a
  whole run and the ``summary`` made of them (ratios, latency quantiles,
  the objective);
- :class:`IntervalTotals` -- the accumulators of one adaptation interval,
  which become one row of ``series``; :class:`AppliedMeans` averages the
  preferences the router applied over an interval's queries;
- :class:`SimulationResult` -- what ``Simulation.run()`` returns.

Every rounding here is part of the benchmark's figures: change one and the
published numbers change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from .._quantile import quantile
from ..vocabulary import OUTCOMES, PATHS, ROUTING_NAMES, TRACKS
from .objective import OBJECTIVE, Objective
from .workload import Request


@dataclass
class SimulationResult:
    """What a run measured. ``summary`` is per request, ``series`` per adaptation interval."""

    scenario: str
    policy: str
    seed: int
    duration_seconds: float
    adaptation_interval_seconds: float
    summary: Dict[str, Any]
    series: List[Dict[str, Any]]
    events: List[Dict[str, Any]]
    reactions: List[Dict[str, Any]]
    wall_seconds: float = 0.0
    requests: Optional[List[Request]] = field(default=None, repr=False)

    def objective(self, objective: Objective = OBJECTIVE) -> float:
        return objective.score(self.summary)

    def to_dict(self, *, series: bool = True) -> Dict[str, Any]:
        """Plain data (JSON-ready); ``wall_seconds`` is the only non-deterministic field."""
        out: Dict[str, Any] = {
            "scenario": self.scenario, "policy": self.policy, "seed": self.seed,
            "duration_seconds": self.duration_seconds,
            "adaptation_interval_seconds": self.adaptation_interval_seconds,
            "summary": self.summary, "events": self.events, "reactions": self.reactions,
            "wall_seconds": self.wall_seconds,
        }
        if series:
            out["series"] = self.series
        return out


# ------------------------------------------------------------------ the whole run


def new_totals() -> Dict[str, Any]:
    """The run's counters, all at zero."""
    return {
        "requests": 0, "completed": 0, "succeeded": 0, "failed": 0, "within_target": 0, "useful": 0,
        "quality_sum": 0.0, "quality_n": 0, "cost": 0.0, "all_api_cost": 0.0,
        "paths": {p: 0 for p in PATHS},
        "answered_by": {t: 0 for t in TRACKS},
        "fallbacks": 0, "fallback_rescued": 0,
        "calls": {t: {"started": 0, **{o: 0 for o in OUTCOMES}} for t in TRACKS},
        "errors": {},
        "violation_seconds": 0.0, "violation_by_constraint": {},
        "adaptation_cycles": 0,
    }


def build_summary(totals: Dict[str, Any], latencies: List[float], *, duration: float, target: float, floor: float,
                  objective: Objective) -> Dict[str, Any]:
    """The run's ``summary``: per-request ratios and quantiles of ``totals`` and ``latencies``, and its objective.

    ``target`` is the latency target in seconds, ``floor`` the minimal useful quality.
    """
    t = totals
    n = t["requests"]
    completed = t["completed"]
    lat = sorted(latencies)
    summary: Dict[str, Any] = {
        "requests": n,
        "completed": completed,
        "succeeded": t["succeeded"],
        "failed": t["failed"],
        "failed_ratio": round(t["failed"] / completed, 6) if completed else 0.0,
        "p50_latency_seconds": round(quantile(lat, 0.5), 6) if lat else None,
        "p95_latency_seconds": round(quantile(lat, 0.95), 6) if lat else None,
        "p99_latency_seconds": round(quantile(lat, 0.99), 6) if lat else None,
        "mean_latency_seconds": round(sum(lat) / len(lat), 6) if lat else None,
        "latency_target_seconds": target,
        "within_target_ratio": round(t["within_target"] / completed, 6) if completed else 0.0,
        "quality_floor": floor,
        "useful_ratio": round(t["useful"] / completed, 6) if completed else 0.0,
        "total_cost": round(t["cost"], 6),
        "all_api_cost": round(t["all_api_cost"], 6),
        "cost_ratio": round(t["cost"] / t["all_api_cost"], 6) if t["all_api_cost"] > 0 else None,
        "quality_mean": round(t["quality_sum"] / t["quality_n"], 6) if t["quality_n"] else None,
        "violation_seconds": round(t["violation_seconds"], 3),
        "violation_ratio": round(min(1.0, t["violation_seconds"] / duration), 6),
        "violation_by_constraint": {k: round(v, 3) for k, v in sorted(t["violation_by_constraint"].items())},
        "paths": dict(t["paths"]),
        "answered_by": dict(t["answered_by"]),
        "calls": {k: dict(v) for k, v in t["calls"].items()},
        "errors": dict(sorted(t["errors"].items())),
        "fallbacks": t["fallbacks"],
        "fallback_rescued": t["fallback_rescued"],
        "adaptation_cycles": t["adaptation_cycles"],
    }
    if "hedges" in t:  # a run with hedging: by outcome; absent otherwise
        summary["hedges"] = dict(t["hedges"])
    summary["objective"] = round(objective.score(summary), 6)
    return summary


# ------------------------------------------------------------------ one adaptation interval


def _p95(values: List[float]) -> Optional[float]:
    """The 95th percentile, rounded; ``None`` for no values. Sorts ``values`` in place."""
    if not values:
        return None
    values.sort()
    return round(quantile(values, 0.95), 6)


class IntervalTotals:
    """Accumulators of one adaptation interval."""

    __slots__ = ("arrivals", "paths", "leg_latency", "cost", "quality_sum", "quality_n", "completed", "failed",
                 "within", "violations", "events", "latency", "applied", "applied_n")

    def __init__(self) -> None:
        self.arrivals = 0
        self.paths = {p: 0 for p in PATHS}
        self.leg_latency: Dict[str, List[float]] = {t: [] for t in TRACKS}
        self.latency: List[float] = []
        self.cost = 0.0
        self.quality_sum = 0.0
        self.quality_n = 0
        self.completed = 0
        self.failed = 0
        self.within = 0
        self.violations: Dict[str, float] = {}
        self.events: List[str] = []
        self.applied: Dict[str, List[float]] = {}  # query class -> sums of the applied preferences
        self.applied_n: Dict[str, int] = {}

    def note_applied(self, query_class: str, local_bias: float, routing: Mapping[str, Any]) -> None:
        """Add the preferences the router applied to one query (``local_bias`` as it applied it)."""
        sums = self.applied.get(query_class)
        if sums is None:
            sums = self.applied[query_class] = [0.0, 0.0, 0.0, 0.0]
            self.applied_n[query_class] = 0
        sums[0] += local_bias
        sums[1] += routing["parallel_threshold"]
        sums[2] += routing["timeout_multiplier"]
        sums[3] += routing["quality_threshold"]
        self.applied_n[query_class] += 1

    def measures(self, t: float) -> Dict[str, Any]:
        """The interval's part of its ``series`` row, ending at simulation time ``t``."""
        n = self.arrivals
        return {
            "t": round(t, 6),
            "requests": n,
            "split": {p: (round(c / n, 4) if n else None) for p, c in self.paths.items()},
            "p95_seconds": {"local": _p95(self.leg_latency["local"]), "api": _p95(self.leg_latency["api"]),
                            "request": _p95(self.latency)},
            "completed": self.completed,
            "failed": self.failed,
            "within_target": round(self.within / self.completed, 4) if self.completed else None,
            "cost": round(self.cost, 6),
            "quality": round(self.quality_sum / self.quality_n, 4) if self.quality_n else None,
            "violations": {k: round(v, 3) for k, v in sorted(self.violations.items())},
            "events": self.events,
        }


class AppliedMeans:
    """Mean applied preferences of each interval, per class and over all its queries.

    A class with no queries in an interval keeps its previous values; so does
    the overall mean of an interval without queries.
    """

    def __init__(self) -> None:
        self._by_class: Dict[str, Dict[str, float]] = {}
        self._effective: Optional[Dict[str, float]] = None

    def close(self, iv: IntervalTotals) -> Dict[str, Any]:
        by_class = dict(self._by_class)
        for qc, sums in iv.applied.items():
            n = iv.applied_n[qc]
            by_class[qc] = {p: round(v / n, 6) for p, v in zip(ROUTING_NAMES, sums, strict=True)}
        self._by_class = by_class
        total = sum(iv.applied_n.values())
        if total:
            effective = {p: round(sum(iv.applied[qc][i] for qc in iv.applied) / total, 6)
                         for i, p in enumerate(ROUTING_NAMES)}
            self._effective = effective
        return {"by_class": by_class, "effective": self._effective}


__all__ = ["AppliedMeans", "IntervalTotals", "SimulationResult", "build_summary", "new_totals"]
