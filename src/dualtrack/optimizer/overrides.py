"""Immediate overrides: safety before strategy, per request, not at the next cycle.

The adaptation cycle moves preferences every interval; the machine can run
out of memory between two cycles. So each recommendation is checked against
the latest resource reading and the recent windows, in priority order:

1. **machine limits** (memory, GPU memory over their limits; the concurrency
   limit reached): steer away from local and parallel, to the API;
2. **battery** low while unplugged, under half its threshold: prefer the API, so the
   machine keeps running (under the threshold the constraint is violated until it is
   plugged in whatever the routing; above it, sparing the battery is the strategy's
   call: the adaptive objective's ``battery_horizon``, resource_efficient's ``battery_low`` rule);
3. **cost**: a class whose API requests cost more than the per-request cap,
   while local answers it acceptably: prefer local;
4. **a failing track** (most of its recent calls failed: an outage, a crash,
   a saturated server, not counting calls refused by a rate limit; when most
   of the failures are the model's own errors, not timeouts or a server down
   or full, more than 80% of them: a model that answers half its calls has
   error bursts, and the strategy weighs their fallbacks), or an API that
   hangs (the calls sent since its last answer have run so long that its
   recent answers make the silence implausible: its calls fail only at their
   timeouts, too late for the count of failed calls): prefer the other
   track at once, without waiting for the next cycle. Unlike the others this
   override is *soft*: the router still sends the failing track its
   exploration share, so that its recovery shows. And it yields to each new
   preferences document until the track fails again: the cycle that wrote
   it saw the same calls, and its own probes (a call or so an interval,
   above the exploration floor) are what show a recovery; held to the floor,
   a crashed local server that came back waited for the failures to age out
   of the window, a cycle or two after the plan had sent traffic back.

Steering to the API is pointless while its recent calls mostly fail (it would
only add a round trip before the fallback): then the failing track's override
prefers local, over a limit or not (what the failing API is sent comes back to
local anyway). Nor while its rate limit refuses calls (three within the last
minute: the API is full, and what more it is sent comes back to local as
refusals, in a random mix of classes, where the strategy's split sends the
classes that take the fewest local slots): then the routing stays as preferred.
The reasons say why. The overrides are recomputed when the reading or the
preferences change, or a monitor interval after they were; never per request.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import OptimizationConfig
from ..constraints import MachineState, resource_checks
from ..exporter.collector import MetricsCollector, PerformanceMetrics
from ..preferences import Preferences, Routing
from ..vocabulary import PARALLEL_NEVER, RATE_LIMITED

#: Overrides the router applies with the exploration floor still in place (see ``failing``).
SOFT_OVERRIDES = ("api_failing", "local_failing")
#: A track is failing when most of its last this-many calls failed.
RECENT_CALLS = 20
#: ... but when most of the failures were the model's errors, only when more than this share failed.
ERRORS_FAILING_SHARE = 0.8
#: Error kinds that say the server is down or full (HTTP 503, connection refused; the simulator
#: names a full queue ``queue_full``), not that a call it served failed.
UNAVAILABLE = ("unavailable", "queue_full", RATE_LIMITED)

#: The API is refusing when its rate limit refused at least this many calls within the last
#: minute (rate limits count calls per minute: a refusal says it is full for the minute).
REFUSED_CALLS = 3
REFUSED_WINDOW_SECONDS = 60.0

#: The API hangs when the calls it was sent since its last answer, at least HANG_CALLS of them,
#: have run so long that its recent answers make the silence less likely than HANG_CHANCE: a
#: hanging API fails its calls only at their timeouts, which the failing count would wait for.
HANG_CALLS = 5
HANG_CHANCE = 1e-6

#: The battery override acts under this share of the battery threshold.
BATTERY_OVERRIDE_SHARE = 0.5


@dataclass(frozen=True)
class Overrides:
    """Immediate constraint overrides, computed from one resource reading."""

    snapshot: Optional[MachineState]  # the reading they came from (compared by identity)
    prefs: Preferences  # the preferences they came from (compared by identity)
    over_limit: Tuple[str, ...]  # memory / gpu_memory over their limits
    battery_low: bool
    cost: Dict[str, str]  # query class -> reason, where local is preferred for cost
    api_failing: bool = False  # most recent API calls failed: steering to it would not help
    local_failing: bool = False  # most recent local calls failed
    api_refusing: bool = False  # the API's rate limit refused calls within the last minute: it is full
    api_hanging: bool = False  # its calls in flight run far past its answers, none answered since (failing too)
    # Tracks whose recent calls mostly failed, left to preferences written after those failures.
    yielded: Tuple[str, ...] = ()


def compute_overrides(config: OptimizationConfig, classes: Sequence[str], collector: MetricsCollector,
                      snapshot: Optional[MachineState], prefs: Preferences, now: float,
                      api_ages: Sequence[Tuple[str, float]] = ()) -> Overrides:
    """The overrides for one reading and one preferences document (``now``: wall time; ``api_ages``:
    each API call in flight, its query class and how long it has run, seconds)."""
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
    api_calls = collector.records("api", None, since)
    local_calls = collector.records("local", None, since)
    api_hanging = _hanging(api_calls, api_ages, now)
    # Safe defaults weighed nothing (the preferences reader dates them when it falls back): no cycle.
    cycle = prefs.generated_at if prefs.source != "defaults" else -math.inf
    judged = {"api": _judged(api_calls), "local": _judged(local_calls)}
    failed = {t: _failing(calls) for t, calls in judged.items()}
    api_failing = api_hanging or (failed["api"] and _failed_since(judged["api"], cycle, now))
    local_failing = failed["local"] and _failed_since(judged["local"], cycle, now)
    yielded = tuple(t for t, steered in (("api", api_failing), ("local", local_failing)) if failed[t] and not steered)
    api_refusing = _refusing(api_calls, now - REFUSED_WINDOW_SECONDS)
    battery = checks["battery"]
    battery_low = bool(battery) and battery.value is not None and battery.limit is not None \
        and battery.value < BATTERY_OVERRIDE_SHARE * battery.limit
    return Overrides(snapshot, prefs, tuple(n for n in ("memory", "gpu_memory") if checks[n]),
                     battery_low, cost, api_failing, local_failing, api_refusing, api_hanging, yielded)


def _judged(records: Sequence[PerformanceMetrics]) -> List[PerformanceMetrics]:
    """The calls that judge whether a track fails: neither cancelled nor refused by a rate limit."""
    return [r for r in records if r.outcome != "cancelled" and r.error_type != RATE_LIMITED]


def _failing(calls: Sequence[PerformanceMetrics]) -> bool:
    """Did most of a track's recent calls (the last 20 of ``_judged``, at least 5) fail?

    Calls refused by a rate limit are left out: an API at its limit is full, not failing.
    It answers what the limit allows and refuses the rest, which come back to local at
    once as fallbacks; steered away, it answers nothing, and local carries every query
    (random_102_003, a limit of 21 calls a minute: the last 20 calls mostly refused at
    the end of each minute, every class sent local past its slots, 211 queries of 1,200
    unanswered; 0.8213 -> 0.8444 without it)."""
    recent = calls[-RECENT_CALLS:]
    if len(recent) < 5:
        return False
    ok = sum(r.outcome == "success" for r in recent)
    errors = sum(r.outcome == "error" and r.error_type not in UNAVAILABLE for r in recent)
    if errors > len(recent) - ok - errors:
        # Mostly the model's errors (not timeouts, not a server down or full): a crash fails
        # every call, but a model that answers a fifth of its calls or more has error bursts,
        # whose fallbacks the strategy weighs (steered away at once, a budget that its answers
        # kept was spent on the API: random_93_017, 47% of local calls failing).
        return ok < len(recent) * (1.0 - ERRORS_FAILING_SHARE)
    return ok < len(recent) / 2


def _failed_since(calls: Sequence[PerformanceMetrics], moment: float, now: float) -> bool:
    """Did one of ``calls`` (``_judged``) fail after ``moment``, when the cycle that wrote the
    preferences ran? A failing track is steered from only then: a cycle newer than its
    failures has weighed them, and sends the track its probes (random_139_010: the local
    server back at 690 s, the next cycle sent two classes back to it, and the override held
    them off for one more interval). A ``moment`` ahead of ``now`` (the writer's clock ahead
    of the router's) says nothing: the failures count."""
    if moment > now:
        return True
    return any(r.timestamp >= moment and r.outcome != "success" for r in calls)


def _hanging(api_calls: Sequence[PerformanceMetrics], ages: Sequence[Tuple[str, float]], now: float) -> bool:
    """Does the API hang: have the calls it was sent since its last answer run so long that
    its recent answers make that silence implausible?

    A hanging API fails a call only at its timeout, so the failing count (completed calls)
    sees it a timeout late, and meanwhile every call sent there waits for its timeout before
    its fallback (api_outage's hang: the whole first interval). Each call waiting since the
    last answer would still be running with the chance that an answer of its class took
    longer than it has run so far (the share of its answers within the signal window,
    smoothed: an age beyond all of 20 answers reads 1/22, not 0); the silence's chance is the
    product. A class the API has not answered lately is judged by all its answers."""
    answers = [r for r in api_calls if r.outcome == "success"]
    if not answers:
        return False  # nothing to judge a silence by
    silence = now - answers[-1].timestamp
    waiting = [(qc, age) for qc, age in ages if age < silence]
    if len(waiting) < HANG_CALLS:
        return False
    seconds: Dict[str, List[float]] = {}
    for r in answers:
        seconds.setdefault(r.query_class, []).append(r.latency_ms / 1000.0)
    pooled = sorted(r.latency_ms / 1000.0 for r in answers)
    by_class = {qc: sorted(v) for qc, v in seconds.items()}
    log_chance = 0.0
    for qc, age in waiting:
        seen = by_class.get(qc, pooled)
        longer = len(seen) - bisect.bisect_right(seen, age)
        log_chance += math.log((longer + 1) / (len(seen) + 2))
    return log_chance < math.log(HANG_CHANCE)


def _refusing(api_calls: Sequence[PerformanceMetrics], since: float) -> bool:
    """Did the API's rate limit refuse calls (three or more) since ``since``?"""
    return sum(r.error_type == RATE_LIMITED and r.timestamp >= since for r in api_calls) >= REFUSED_CALLS


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
    # Over a limit, with an API that fails or refuses calls: steering to it would not help.
    held = bool(steer_away or overrides.battery_low) and (overrides.api_failing or overrides.api_refusing)
    if held:
        why = "is failing" if overrides.api_failing else "is refusing calls (its rate limit)"
        reasons.append(f"over limit ({', '.join(steer_away or ['battery'])}) but the API {why}: "
                       "not steering to it")
    if held and not overrides.api_failing:
        pass  # the API is full (its rate limit): the routing stays as preferred
    elif steer_away and not held:
        values["local_bias"] = 0.0
        values["parallel_threshold"] = PARALLEL_NEVER
        preferred = "api"
        applied.extend(steer_away)
        reasons.append(f"over limit ({', '.join(steer_away)}): steering away from local and parallel")
    elif overrides.battery_low and not held:
        values["local_bias"] = 0.0
        values["parallel_threshold"] = PARALLEL_NEVER
        preferred = "api"
        applied.append("battery")
        reasons.append("battery low and unplugged: preferring the API")
    elif qc in overrides.cost and not held:
        values["local_bias"] = 1.0
        values["parallel_threshold"] = PARALLEL_NEVER
        preferred = "local"
        applied.append("cost")
        reasons.append(overrides.cost[qc])
    elif overrides.api_failing != overrides.local_failing:
        failing = "api" if overrides.api_failing else "local"
        values["local_bias"] = 1.0 if failing == "api" else 0.0
        values["parallel_threshold"] = PARALLEL_NEVER
        preferred = "local" if failing == "api" else "api"
        applied.append(f"{failing}_failing")
        what = "api calls hang (no answer long past its usual)" if overrides.api_hanging and failing == "api" \
            else f"most recent {failing} calls failed"
        reasons.append(f"{what}: preferring {preferred} until it recovers")
    for track in overrides.yielded:
        reasons.append(f"most recent {track} calls failed, but the preferences were written after them: "
                       f"following them until a {track} call fails again")
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


__all__ = ["SOFT_OVERRIDES", "Overrides", "build_recommendation", "compute_overrides"]
