"""Immediate overrides: safety before strategy, per request, not at the next cycle.

The adaptation cycle moves preferences every interval; the machine can run
out of memory between two cycles. So each recommendation is checked against
the latest resource reading and the recent windows, in priority order:

1. **machine limits** (memory, GPU memory over their limits; the concurrency
   limit reached): steer away from local and parallel, to the API;
2. **battery** low while unplugged: prefer the API;
3. **cost**: a class whose API requests cost more than the per-request cap,
   while local answers it acceptably: prefer local.

Steering to the API is pointless while its recent calls mostly fail (it would
only add a round trip before the fallback): then the routing stays as preferred
and the reasons say why. The overrides are recomputed only when the reading
or the preferences change, never per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import OptimizationConfig
from ..constraints import MachineState, resource_checks
from ..exporter.collector import MetricsCollector
from ..preferences import Preferences, Routing
from ..vocabulary import PARALLEL_NEVER


@dataclass(frozen=True)
class Overrides:
    """Immediate constraint overrides, computed from one resource reading."""

    snapshot: Optional[MachineState]  # the reading they came from (compared by identity)
    prefs: Preferences  # the preferences they came from (compared by identity)
    over_limit: Tuple[str, ...]  # memory / gpu_memory over their limits
    battery_low: bool
    cost: Dict[str, str]  # query class -> reason, where local is preferred for cost
    api_failing: bool = False  # most recent API calls failed: steering to it would not help


def compute_overrides(config: OptimizationConfig, classes: Sequence[str], collector: MetricsCollector,
                      snapshot: Optional[MachineState], prefs: Preferences, now: float) -> Overrides:
    """The overrides for one reading and one preferences document (``now``: wall time)."""
    c = config.constraints
    checks = resource_checks(c, snapshot)
    cost: Dict[str, str] = {}
    since = now - config.signal_window_seconds
    for qc in classes:
        costs = [r.cost_estimate for r in collector.records("api", qc, since) if r.has_cost]
        quality = [r.quality_score for r in collector.records("local", qc, since)
                   if r.outcome == "success" and r.has_quality]
        if costs and quality:
            api_cost = sum(costs) / len(costs)
            local_quality = sum(quality) / len(quality)
            if api_cost > c.max_cost_per_request and local_quality >= prefs.routing_for(qc).quality_threshold:
                cost[qc] = (f"API requests of class {qc} cost ${api_cost:.4f} > cap "
                            f"${c.max_cost_per_request:.4f} and local quality {local_quality:.2f} is "
                            "acceptable: preferring local")
    api_calls = [r for r in collector.records("api", None, since) if r.outcome != "cancelled"]
    recent = api_calls[-20:]
    api_failing = len(recent) >= 5 and sum(r.outcome == "success" for r in recent) < len(recent) / 2
    return Overrides(snapshot, prefs, tuple(n for n in ("memory", "gpu_memory") if checks[n]),
                     bool(checks["battery"]), cost, api_failing)


def build_recommendation(prefs: Preferences, qc: str, routing: Routing, parallel: bool, concurrency_full: bool,
                         overrides: Overrides) -> Dict[str, Any]:
    """The recommendation for one (class, parallel, concurrency) case, overrides applied.

    ``overrides`` in the result lists the overrides that changed it.
    """
    reasons: List[str] = [r.message if not r.query_class else f"{r.message} ({r.query_class})"
                          for r in prefs.reasons]
    applied: List[str] = []
    values = routing.as_dict()
    preferred: Optional[str] = None
    steer_away = list(overrides.over_limit)
    if concurrency_full:
        steer_away.append("concurrency")
    if (steer_away or overrides.battery_low) and overrides.api_failing:
        reasons.append(f"over limit ({', '.join(steer_away or ['battery'])}) but the API is failing: "
                       "not steering to it")
        steer_away = []
    elif steer_away:
        values["local_bias"] = 0.0
        values["parallel_threshold"] = PARALLEL_NEVER
        preferred = "api"
        applied.extend(steer_away)
        reasons.append(f"over limit ({', '.join(steer_away)}): steering away from local and parallel")
    elif overrides.battery_low and not overrides.api_failing:
        values["local_bias"] = 0.0
        values["parallel_threshold"] = PARALLEL_NEVER
        preferred = "api"
        applied.append("battery")
        reasons.append("battery low and unplugged: preferring the API")
    elif qc in overrides.cost:
        values["local_bias"] = 1.0
        values["parallel_threshold"] = PARALLEL_NEVER
        preferred = "local"
        applied.append("cost")
        reasons.append(overrides.cost[qc])
    if preferred is None:
        if parallel and values["parallel_threshold"] <= 1.0:
            preferred = "parallel"
        else:
            preferred = "local" if values["local_bias"] >= 0.5 else "api"
    return {
        "preferred_path": preferred,
        "routing": values,
        # Base timeouts times this class's multiplier (preferences.md).
        "timeouts_seconds": {p: round(t * values["timeout_multiplier"], 3)
                             for p, t in prefs.timeouts_seconds.items()},
        "query_class": qc,
        "strategy": prefs.strategy,
        "mode": prefs.mode,
        "source": prefs.source,
        "sequence": prefs.sequence,
        "overrides": applied,
        "reasons": reasons,
    }


__all__ = ["Overrides", "build_recommendation", "compute_overrides"]
