"""The oracle: an upper reference for the adaptation benchmark, not a router.

It reads the simulation's true state -- the current regime's parameters
(outage, rate limit, prices, speed, quality drift), the local queue and
heat, the battery, the spend rate -- and for each query picks the track
whose *expected* contribution to the composite objective
(:mod:`.objective`) is highest for the query's class. It does not see the
query's own random draws (its exact output length, latency jitter, errors),
so it is a fair "perfect knowledge of the regime" bound, which a router that
only sees metrics cannot reach.

Per query of class ``c`` and track ``t`` (``f`` = expected failure chance)::

    value(t) = (1 - f) * (wU * P(quality >= floor) + wW * P(latency <= target) + wQ * quality(t, c)
                          - wS * cost(t, c) / mean all-API cost per query)
          - penalty (constraint violations the choice would cause: local memory
                     over its limit; a battery that would cross its threshold
                     before the next plug-in)
    score(t) = value(t) + f * value(other track)     (the router's one fallback)

A spend budget (``max_cost_per_hour``) is not a per-query penalty: whether
one query tips the spend over depends on all the others. Every adaptation
interval the oracle plans it as a knapsack (:meth:`OraclePlanner.budget_plan`):
the classes the API serves better are ranked by what the API adds per
dollar, and each gets the share of its API traffic the budget can pay for,
best first; the marginal class gets a fraction. Keeping the budget is then
weighed against breaking it: over budget the whole interval costs ``wA``
per query in compliance, so when the API's answers are worth more than that
the oracle spends. Queries of a class over its allowance go local, spread
evenly (error diffusion, no randomness).

An earlier version charged each API query the violation time it could
cause near the budget (up to a whole 5-minute window, however cheap the
query), both below and above the budget: it fled to the local model
whenever spend came near the budget, overloaded it and lost to every
static split in scenarios with a budget.

What it reads is declared by :class:`SimulationState` (the running
:class:`~dualtrack.simulation.loop.Simulation` is one), so the oracle can be
tested against any object that holds that state, and does not depend on the
event loop.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Protocol, Tuple

from ..config import OptimizationConfig
from ..router.policy import RoutePlan
from ..vocabulary import DEFAULT_TIMEOUTS_SECONDS, TRACKS, other_track
from .models import ApiModelSim, LocalModelSim, quality_mean
from .objective import OBJECTIVE, Objective
from .planners import ORACLE, single_track_plan
from .scenario import Scenario
from .workload import Request

#: Window of spend for the cost-per-hour budget check (the event loop's and the oracle's).
BUDGET_WINDOW_SECONDS = 300.0


class SimulationState(Protocol):
    """The true state of a running simulation: all the oracle reads."""

    @property
    def scenario(self) -> Scenario: ...

    @property
    def config(self) -> OptimizationConfig: ...

    @property
    def params(self) -> Dict[str, Any]:
        """The current regime's parameters (the scenario's, with the timeline applied so far)."""

    @property
    def local(self) -> LocalModelSim: ...

    @property
    def api(self) -> ApiModelSim: ...

    @property
    def now(self) -> float:
        """Seconds since the start of the simulation."""

    def spend_rate_per_hour(self) -> float:
        """API spend over the last :data:`BUDGET_WINDOW_SECONDS`, in dollars per hour."""


def _p_within(latency: float, target: float, sigma: float) -> float:
    """P(L <= target) for a lognormal L with median ``latency``."""
    if latency <= 0:
        return 1.0
    if sigma <= 0:
        return 1.0 if latency <= target else 0.0
    z = math.log(target / latency) / sigma
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


class OraclePlanner:
    """Picks, per query class and moment, the track with the best expected objective."""

    name = ORACLE

    def __init__(self, sim: SimulationState, objective: Objective = OBJECTIVE) -> None:
        self.sim = sim
        self.w = objective
        self.target = sim.config.constraints.target_latency_ms / 1000.0
        self.floor = sim.config.constraints.min_quality_score
        self.classes = {c.name: c for c in sim.scenario.classes}
        self.timeouts = dict(DEFAULT_TIMEOUTS_SECONDS)
        self.api_cost_norm = self._mean_api_cost()
        self.budget = sim.config.constraints.max_cost_per_hour
        self.replan_seconds = sim.scenario.adaptation_interval
        self._planned_at = -math.inf
        self.allowance: Dict[str, float] = {name: 1.0 for name in self.classes}
        self._credit: Dict[str, float] = {name: 0.0 for name in self.classes}

    def _mean_api_cost(self) -> float:
        """Expected all-API cost per query over the run (mix x prices over the timeline)."""
        scenario = self.sim.scenario
        price = scenario.params["api"]["price"]
        shares = scenario.class_shares
        per_query = sum(shares[c.name] * (c.tokens_in.mean * price["input_per_million"]
                                          + c.tokens_out.mean * price["output_per_million"]) / 1e6
                        for c in scenario.classes)
        # time-weighted price multiplier of the timeline
        m, last, acc = scenario.params["api"]["price_multiplier"], 0.0, 0.0
        for event in scenario.timeline:
            for ch in event.changes:
                if ch.path == "api.price_multiplier":
                    acc += m * (event.at - last)
                    last = event.at
                    m = ch.value if ch.op == "set" else m * ch.value if ch.op == "scale" else m + ch.value
        acc += m * (scenario.duration - last)
        mean_multiplier = acc / scenario.duration
        return max(per_query * mean_multiplier, 1e-12)

    def estimate(self, track: str, query_class: str) -> Dict[str, float]:
        """Expected quality, P(within target), cost, failure chance and penalty on ``track``."""
        sim = self.sim
        c = self.classes[query_class]
        tin, tout = c.tokens_in.mean, c.tokens_out.mean
        complexity = c.complexity_mean
        constraints = sim.config.constraints
        penalty = 0.0
        if track == "local":
            local = sim.local
            p = local.p
            fail = 1.0 if not local.available else p["error_rate"]
            latency = local.expected_wait() + local.service_time(int(tin), int(tout))
            within = _p_within(latency, self.target, max(c.tokens_out.sigma, 0.1))
            cost = 0.0
            quality = quality_mean(p, query_class, complexity)
            penalty += self._battery_penalty(latency - local.expected_wait())
            machine = sim.params["machine"]
            memory = machine["router_memory_mb"] + local.memory_mb() + p["memory_per_request_mb"]
            gpu = local.gpu_memory_mb() + p["gpu_memory_per_request_mb"]
            if memory > constraints.max_memory_mb or gpu > constraints.max_gpu_memory_mb:
                # over the limit for as long as this query runs
                penalty += self._violation(latency - local.expected_wait())
        else:
            api = sim.api
            p = api.p
            limit = p["rate_limit_per_minute"]
            if p["outage"] != "off":
                fail = 1.0
            elif limit is not None and api.requests_last_minute(sim.now) >= limit:
                fail = 1.0
            else:
                fail = p["error_rate"]
            _, latency = api.base_latency(int(tin), int(tout))
            sigma = math.sqrt(p["latency_sigma"] ** 2 + c.tokens_out.sigma ** 2)
            within = _p_within(latency, self.target, sigma) * (1.0 - p["tail_probability"] / 2.0)
            pin, pout = api.price_per_token()
            cost = tin * pin + tout * pout
            quality = quality_mean(p, query_class, complexity)
        noise = p["quality_noise"]
        useful = (1.0 if quality >= self.floor else 0.0) if noise <= 0 else \
            0.5 * (1.0 + math.erf((quality - self.floor) / (noise * math.sqrt(2.0))))
        return {"quality": quality, "useful": useful, "within": within, "cost": cost, "fail": fail,
                "penalty": penalty}

    def _violation(self, seconds: float) -> float:
        """A query's share of the objective for ``seconds`` of constraint violation.

        Scores are per query (the objective's shares times the number of
        queries), so a second of violation weighs ``wA / duration`` of the
        objective, i.e. ``wA * queries per second`` in per-query units.
        """
        return self.w.compliance * seconds * self.sim.params["workload"]["rate"]

    def budget_plan(self) -> Dict[str, float]:
        """The share of each class's API-bound queries the spend budget lets through, planned now.

        The classes the API serves better (score gap over local > 0) are
        ranked by that gap per dollar and funded best first from the budget
        (95% of it, less when the measured spend runs over); the first one
        that does not fit gets the fraction left. Complying costs the value
        the unfunded queries lose; breaking the budget costs ``wA`` per query
        (the compliance term, all the time): the cheaper wins.
        """
        sim = self.sim
        allowance = {name: 1.0 for name in self.classes}
        budget = self.budget
        if budget is None:
            return allowance
        rate = sim.params["workload"]["rate"]
        shares = sim.params["workload"]["share"]
        total = sum(shares.values()) or 1.0
        ranked: List[Tuple[float, str, float, float]] = []
        for name in self.classes:
            e = {t: self.estimate(t, name) for t in TRACKS}
            gap = self.score("api", name, e) - self.score("local", name, e)
            if gap <= 0.0:
                continue  # goes local anyway
            share = shares[name] / total
            spend = rate * share * e["api"]["cost"] * (1.0 - e["api"]["fail"]) * 3600.0  # $/h, all of it on the API
            ranked.append((gap / max(spend, 1e-12), name, spend, share * gap))
        target = 0.95 * budget
        measured = sim.spend_rate_per_hour()
        if sim.now >= BUDGET_WINDOW_SECONDS and measured > budget:
            target *= max(0.5, budget / measured)  # the estimates ran over: aim lower
        left = target
        lost = 0.0
        for _, name, spend, value in sorted(ranked, reverse=True):
            funded = 1.0 if spend <= left else max(left, 0.0) / spend
            allowance[name] = funded
            left -= spend * funded
            lost += value * (1.0 - funded)
        if lost > self.w.compliance:
            return {name: 1.0 for name in self.classes}  # worth more than keeping the budget
        return allowance

    def _battery_penalty(self, service_seconds: float) -> float:
        """Violation time a local query causes by bringing the low-battery crossing forward.

        At the current pace, does the battery fall below the threshold
        before the next plug-in (the oracle knows the timeline)? If so, the
        energy of one more local query brings the crossing forward by
        ``energy / drain rate`` seconds, each a second of violation.
        """
        sim = self.sim
        battery = sim.params["battery"]
        if battery is None or battery["plugged"]:
            return 0.0
        threshold = sim.config.constraints.battery_threshold_percent / 100.0
        level = battery["level"]
        if level < threshold:
            return 0.0  # already violated until plugged in; more local use changes nothing until critical
        p = sim.local.p
        rate = (battery["idle_drain_per_hour"] + p["battery_drain_per_hour"] * sim.local.utilisation()) / 3600.0
        remaining = self._next_plug_in() - sim.now
        if rate <= 0 or level - rate * remaining >= threshold:
            return 0.0
        energy = p["battery_drain_per_hour"] / 3600.0 * service_seconds / p["concurrency"]
        return self._violation(energy / rate)

    def _next_plug_in(self) -> float:
        for event in self.sim.scenario.timeline:
            if event.at > self.sim.now and any(c.path == "battery.plugged" and c.value is True
                                                for c in event.changes):
                return event.at
        return self.sim.scenario.duration

    def _value(self, e: Dict[str, float], *, late: bool = False) -> float:
        """Expected contribution of one attempt on a track; ``late``: it follows a first try
        that took its whole timeout, so it cannot be within the target. Failed calls are not billed."""
        w = self.w
        ok = 1.0 - e["fail"]
        within = 0.0 if late else e["within"]
        return (ok * (w.useful * e["useful"] + w.within_target * within + w.quality * e["quality"]
                      - w.savings * e["cost"] / self.api_cost_norm) - e["penalty"])

    def score(self, track: str, query_class: str, estimates: Optional[Dict[str, Dict[str, float]]] = None) -> float:
        """Expected contribution of sending a query of the class to ``track``, its one fallback included."""
        e = estimates or {t: self.estimate(t, query_class) for t in TRACKS}
        first, other = e[track], e[other_track(track)]
        hangs = track == "api" and self.sim.api.p["outage"] == "hang"  # fails only at the timeout
        return self._value(first) + first["fail"] * self._value(other, late=hangs)

    def choose(self, query_class: str) -> Tuple[str, Dict[str, float]]:
        """The better track for a query of the class now (local on a tie), and both tracks' scores."""
        estimates = {t: self.estimate(t, query_class) for t in TRACKS}
        scores = {t: self.score(t, query_class, estimates) for t in TRACKS}
        return ("local" if scores["local"] >= scores["api"] else "api"), scores

    def plan(self, request: Request) -> RoutePlan:
        spec = request.spec
        track, _ = self.choose(spec.query_class)
        if track == "api" and self.budget is not None:
            if self.sim.now >= self._planned_at + self.replan_seconds:
                self.allowance = self.budget_plan()
                self._planned_at = self.sim.now
            allowed = self.allowance[spec.query_class]
            if allowed < 1.0:
                credit = self._credit[spec.query_class] + allowed
                if credit >= 1.0:
                    credit -= 1.0
                else:
                    track = "local"
                self._credit[spec.query_class] = credit
        return single_track_plan(track, spec, self.timeouts)


__all__ = ["BUDGET_WINDOW_SECONDS", "OraclePlanner", "SimulationState"]
