"""The simulation: a discrete-event run of a scenario in virtual time.

    result = Simulation(load_scenario("api_outage"), "strategy:adaptive").run()
    result.summary["p95_latency_seconds"], result.series[-1]["preferences"]

Events (arrivals, call ends, timeouts, adaptation cycles, machine readings,
regime changes) sit in a heap; before handling each one the virtual clock is
advanced to its time, so the optimizer's latency measurements, sliding
windows and hold timers all see the right times. Each query is routed by the
policy under test:

- ``strategy:<name>`` -- the real :class:`~dualtrack.router.policy.RoutingPolicy`
  over a :class:`~dualtrack.exporter.optimizer.DualTrackOptimizer` whose
  embedded adapter follows that strategy; ``adapt_now()`` runs every
  adaptation interval;
- ``all_local``, ``all_api``, ``fixed_50_50`` -- static splits, no adaptation
  (still recorded through an optimizer, so metrics exist);
- ``oracle`` -- :class:`~.oracle.OraclePlanner`, the upper reference.

A plan runs as the router would run it: per-track timeouts from the plan (a
call longer than its timeout ends as ``timeout`` at the timeout); on error or
timeout, one fallback to the other track; parallel plans start both tracks,
the first answer with quality at or above the plan's threshold wins (with
preemption), otherwise the better of the two, and the other call is
cancelled at that moment.

Recording follows the router's conventions (``docs/router.md``): every model
call is recorded once under its track -- a single-track call as ``<rid>``,
its fallback as ``<rid>/fallback``, parallel legs as ``<rid>/local`` and
``<rid>/api`` (a cancelled leg with outcome ``cancelled`` and the tokens and
cost it incurred so far) -- and a parallel request also as ``<rid>`` on path
``parallel`` with its end-to-end latency and the winner's quality but no
tokens, cost or model.

Results are deterministic for a seed: all randomness comes from seeded
streams (workload and per-query draws, routing), and nothing reads the real
clock except ``wall_seconds``.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from prometheus_client import CollectorRegistry

from ..clock import VirtualClock
from .._quantile import quantile
from ..constraints import resource_checks
from ..exporter.optimizer import DualTrackOptimizer
from ..exporter.resources import register_resource_gauges
from ..preferences import DEFAULT_TIMEOUTS_SECONDS
from ..router.policy import RoutePlan, RoutingPolicy
from .machine import SimulatedMachine
from .models import INF, ApiModelSim, Call, Draws, LocalModelSim
from .objective import OBJECTIVE, Objective
from .oracle import BUDGET_WINDOW_SECONDS, OraclePlanner
from .scenario import PREFERENCE_NAMES, Event, Scenario, apply_change

TRACKS: Tuple[str, str] = ("local", "api")
STATIC_POLICIES: Tuple[str, ...] = ("all_local", "all_api", "fixed_50_50")
ORACLE = "oracle"
STRATEGY_PREFIX = "strategy:"

#: Preferences must differ from the counterfactual by this much to count as a reaction.
REACTION_EPSILON = 0.02

# Event kinds, in the order they are handled at the same virtual time: an
# adaptation cycle first (it sees the interval that just ended, not a regime
# change made at the same instant), then regime changes, machine readings,
# call ends (an answer exactly at its deadline is in time), timeouts, arrivals.
_ADAPT, _REGIME, _SAMPLE, _END, _TIMEOUT, _ARRIVAL = range(6)


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


# ------------------------------------------------------------------ workload


class QuerySpec:
    """One query of the workload: when, which class, how long, its random draws."""

    __slots__ = ("at", "query_class", "tokens_in", "tokens_out", "complexity", "draws")

    def __init__(self, at: float, query_class: str, tokens_in: int, tokens_out: int, complexity: float,
                 draws: Draws) -> None:
        self.at = at
        self.query_class = query_class
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out
        self.complexity = complexity
        self.draws = draws


class Workload:
    """Poisson arrivals and queries: a pure function of the scenario and the seed.

    The rate and class shares follow the timeline's ``workload.*`` changes;
    with ``mix_variation`` the shares also drift at random every
    ``mix_period``. Every policy sees the same queries.
    """

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.rng = random.Random(f"dualtrack-sim:{seed}:workload")
        self.classes = scenario.classes
        self.duration = scenario.duration
        self.state = {"workload": scenario.initial_params()["workload"]}
        self.variation = scenario.mix_variation
        self.factors = [1.0] * len(self.classes)
        changes: List[Tuple[float, int, Any]] = [(e.at, 0, e) for e in scenario.timeline if e.touches("workload.")]
        if self.variation > 0:
            k = 1
            while k * scenario.mix_period < scenario.duration:
                changes.append((k * scenario.mix_period, 1, None))
                k += 1
        changes.sort(key=lambda c: (c[0], c[1]))
        self._changes = changes
        self._next_change = 0
        self.t = 0.0
        if self.variation > 0:
            self._redraw_mix()
        self._recompute()

    def _recompute(self) -> None:
        shares = self.state["workload"]["share"]
        weights = [shares[c.name] * f for c, f in zip(self.classes, self.factors)]
        total = sum(weights)
        acc, cum = 0.0, []
        for w in weights:
            acc += w / total
            cum.append(acc)
        cum[-1] = 1.0
        self._cum = cum

    def _redraw_mix(self) -> None:
        s = self.variation
        self.factors = [math.exp(s * self.rng.gauss(0.0, 1.0) - 0.5 * s * s) for _ in self.classes]

    def current_shares(self) -> Dict[str, float]:
        prev = 0.0
        out = {}
        for c, edge in zip(self.classes, self._cum):
            out[c.name] = edge - prev
            prev = edge
        return out

    def next(self) -> Optional[QuerySpec]:
        """The next query, or ``None`` after the end of the scenario."""
        rng = self.rng
        while True:
            t = self.t + rng.expovariate(self.state["workload"]["rate"])
            if self._next_change < len(self._changes) and self._changes[self._next_change][0] <= t:
                # Poisson arrivals are memoryless: restart from the change with the new rate.
                at, kind, event = self._changes[self._next_change]
                self._next_change += 1
                self.t = at
                if kind == 0:
                    for ch in event.changes:
                        if ch.path.startswith("workload."):
                            apply_change(self.state, ch)
                else:
                    self._redraw_mix()
                self._recompute()
                continue
            break
        if t >= self.duration:
            return None
        self.t = t
        c = self.classes[bisect_right(self._cum, rng.random())] if len(self.classes) > 1 else self.classes[0]
        gauss = rng.gauss
        uniform = rng.random
        complexity = gauss(c.complexity_mean, c.complexity_sd) if c.complexity_sd > 0 else c.complexity_mean
        complexity = 0.0 if complexity < 0.0 else 1.0 if complexity > 1.0 else round(complexity, 3)
        return QuerySpec(t, c.name, c.tokens_in.draw(gauss(0.0, 1.0)), c.tokens_out.draw(gauss(0.0, 1.0)),
                         complexity, Draws(gauss(0.0, 1.0), gauss(0.0, 1.0), uniform(), uniform(),
                                           gauss(0.0, 1.0), uniform(), uniform()))


# ------------------------------------------------------------------ requests and planners


class Request:
    """One query being served: its plan, its calls and how it ended."""

    __slots__ = ("rid", "spec", "arrival", "plan", "path", "calls", "fallback_used", "done", "outcome",
                 "latency", "quality", "cost", "answered_by", "context")

    def __init__(self, rid: str, spec: QuerySpec, arrival: float) -> None:
        self.rid = rid
        self.spec = spec
        self.arrival = arrival
        self.plan: Optional[RoutePlan] = None
        self.path = ""
        self.calls: List[Call] = []
        self.fallback_used = False
        self.done = False
        self.outcome = ""
        self.latency = 0.0
        self.quality: Optional[float] = None
        self.cost = 0.0
        self.answered_by: Optional[str] = None
        self.context = {"query_class": spec.query_class, "estimated_tokens": spec.tokens_in,
                        "complexity": spec.complexity}


class _StrategyPlanner:
    """The real routing policy over the optimizer's recommendations."""

    def __init__(self, optimizer: DualTrackOptimizer, rng: random.Random) -> None:
        self.policy = RoutingPolicy(optimizer, rng=rng)

    def plan(self, request: Request) -> RoutePlan:
        return self.policy.plan("", request.context)


class _StaticPlanner:
    """A fixed split with the router's default timeouts and fallback; never parallel."""

    def __init__(self, local_share: float, rng: random.Random) -> None:
        self.share = local_share
        self.rng = rng
        self.timeouts = dict(DEFAULT_TIMEOUTS_SECONDS)

    def plan(self, request: Request) -> RoutePlan:
        if self.share >= 1.0:
            track = "local"
        elif self.share <= 0.0:
            track = "api"
        else:
            track = "local" if self.rng.random() < self.share else "api"
        spec = request.spec
        return RoutePlan(path=track, tracks=(track,), fallback="api" if track == "local" else "local",
                         timeouts_seconds=self.timeouts, quality_threshold=0.0, preempt=False,
                         query_class=spec.query_class, complexity=spec.complexity, recommendation={})


# ------------------------------------------------------------------ results


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


def _p(values: List[float], q: float) -> Optional[float]:
    if not values:
        return None
    values.sort()
    return round(quantile(values, q), 6)


class _Interval:
    """Accumulators of one adaptation interval."""

    __slots__ = ("arrivals", "paths", "leg_latency", "cost", "quality_sum", "quality_n", "completed", "failed",
                 "within", "violations", "events", "latency", "applied", "applied_n")

    def __init__(self) -> None:
        self.arrivals = 0
        self.paths = {"local": 0, "api": 0, "parallel": 0}
        self.leg_latency: Dict[str, List[float]] = {"local": [], "api": []}
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


# ------------------------------------------------------------------ the simulation


class Simulation:
    """One policy on one scenario, in virtual time.

    ``policy``: ``strategy:<name>`` (default ``strategy:adaptive``),
    ``all_local``, ``all_api``, ``fixed_50_50`` or ``oracle``. ``seed``
    defaults to the scenario's. ``clock`` and ``registry`` may be injected
    (the demo serves the registry); ``strategies`` is a preloaded
    ``StrategySet`` (saves loading rules per run), ``rules_path`` a rules
    folder. ``on_interval(row)`` and ``on_event(event)`` are called as the
    run produces them (a live view). ``measure_reactions`` adds reaction
    times to the result (it reruns the scenario without each event: slower).
    ``config_changes`` are extra ``OptimizationConfig`` settings (the demo
    passes ``preferences_file`` to follow an adapter process).

    ``run()`` runs to the end and returns a :class:`SimulationResult`;
    ``run_until(t)`` advances to simulation time ``t`` (seconds from the
    start) and may be called repeatedly, e.g. paced against the wall clock.
    """

    def __init__(self, scenario: Scenario, policy: str = "strategy:adaptive", *, seed: Optional[int] = None,
                 clock: Optional[VirtualClock] = None, registry: Optional[CollectorRegistry] = None,
                 strategies: Any = None, rules_path: Optional[str] = None, keep_requests: bool = False,
                 on_interval: Optional[Callable[[Dict[str, Any]], None]] = None,
                 on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
                 objective: Objective = OBJECTIVE, measure_reactions: bool = False,
                 config_changes: Optional[Dict[str, Any]] = None) -> None:
        self.scenario = scenario
        self.policy = check_policy(policy)
        self.seed = scenario.seed if seed is None else int(seed)
        self.objective = objective
        self.clock = clock if clock is not None else VirtualClock()
        self.params = scenario.initial_params()
        self.local = LocalModelSim(self.params["local"])
        self.api = ApiModelSim(self.params["api"])
        self.machine = SimulatedMachine(self.params, self.local, self.clock)
        self.adaptive = self.policy.startswith(STRATEGY_PREFIX)
        strategy = self.policy[len(STRATEGY_PREFIX):] if self.adaptive else "balanced"
        self.config = scenario.optimization_config(strategy, rules_path=rules_path, **(config_changes or {}))
        self.optimizer = DualTrackOptimizer(self.config, registry=registry, clock=self.clock,
                                            resource_monitor=self.machine, strategies=strategies)
        if registry is not None:  # a served registry (the demo): export the simulated machine too
            register_resource_gauges(registry, self.machine)
        self.machine.start_monitoring()
        self.machine.sample(0.0)
        route_rng = random.Random(f"dualtrack-sim:{self.seed}:routing")
        if self.adaptive:
            self.planner: Any = _StrategyPlanner(self.optimizer, route_rng)
        elif self.policy == ORACLE:
            self.planner = OraclePlanner(self, objective)
        else:
            share = {"all_local": 1.0, "all_api": 0.0, "fixed_50_50": 0.5}[self.policy]
            self.planner = _StaticPlanner(share, route_rng)
        self.workload = Workload(scenario, self.seed)
        self.on_interval = on_interval
        self.on_event = on_event
        self.keep_requests = keep_requests
        self.measure_reactions = measure_reactions
        self.requests: List[Request] = []

        self.now = 0.0
        self._heap: List[Tuple[float, int, int, Any]] = []
        self._seq = 0
        self._local_model = self.params["local"]["model"]
        self._api_model = self.params["api"]["model"]
        self._target = self.config.constraints.target_latency_ms / 1000.0
        self._floor = self.config.constraints.min_quality_score
        self._shares = scenario.class_shares
        self._spend: Deque[Tuple[float, float]] = deque()
        self._spend_sum = 0.0
        self._n = 0

        # totals
        self.latencies: List[float] = []
        self.totals: Dict[str, Any] = {
            "requests": 0, "completed": 0, "succeeded": 0, "failed": 0, "within_target": 0, "useful": 0,
            "quality_sum": 0.0, "quality_n": 0, "cost": 0.0, "all_api_cost": 0.0,
            "paths": {"local": 0, "api": 0, "parallel": 0},
            "answered_by": {"local": 0, "api": 0},
            "fallbacks": 0, "fallback_rescued": 0,
            "calls": {t: {"started": 0, "success": 0, "error": 0, "timeout": 0, "cancelled": 0} for t in TRACKS},
            "errors": {},
            "violation_seconds": 0.0, "violation_by_constraint": {},
            "adaptation_cycles": 0,
        }
        self.series: List[Dict[str, Any]] = []
        self.events: List[Dict[str, Any]] = []
        self._interval = _Interval()
        self._last_applied: Dict[str, Dict[str, float]] = {}
        self._last_effective: Optional[Dict[str, float]] = None

        first = self.workload.next()
        if first is not None:
            self._push(first.at, _ARRIVAL, first)
        self._push(scenario.adaptation_interval, _ADAPT, None)
        self._push(scenario.monitor_interval, _SAMPLE, None)
        for event in scenario.timeline:
            self._push(event.at, _REGIME, event)
        self._wall = 0.0
        self._finished = False

    # -------------------------------------------------------------- running

    @property
    def done(self) -> bool:
        return not self._heap

    def _push(self, t: float, kind: int, obj: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, kind, self._seq, obj))

    def run(self) -> SimulationResult:
        """Run to the end (every query answered or failed) and return the result."""
        self.run_until(INF)
        return self.result()

    def run_until(self, t_stop: float) -> None:
        """Handle every event up to simulation time ``t_stop`` and move the clock there."""
        started = time.perf_counter()
        heap = self._heap
        pop = heapq.heappop
        clock = self.clock
        while heap and heap[0][0] <= t_stop:
            t, kind, _, obj = pop(heap)
            if t > self.now:
                clock.advance(t - self.now)
                self.now = t
            if kind == _END:
                if not obj.done:
                    self._close(obj, "error" if obj.fail else "success")
            elif kind == _TIMEOUT:
                if not obj.done:
                    self._close(obj, "timeout")
            elif kind == _ARRIVAL:
                self._arrive(obj)
            elif kind == _SAMPLE:
                self._sample()
            elif kind == _ADAPT:
                self._adapt()
            else:
                self._regime(obj)
        if t_stop != INF and t_stop > self.now:
            clock.advance(t_stop - self.now)
            self.now = t_stop
        self._wall += time.perf_counter() - started

    # -------------------------------------------------------------- requests

    def _arrive(self, spec: QuerySpec) -> None:
        nxt = self.workload.next()
        if nxt is not None:
            self._push(nxt.at, _ARRIVAL, nxt)
        self._n += 1
        req = Request(f"r{self._n}", spec, self.now)
        if self.keep_requests:
            self.requests.append(req)
        pin, pout = self.api.price_per_token()
        totals = self.totals
        totals["all_api_cost"] += spec.tokens_in * pin + spec.tokens_out * pout
        totals["requests"] += 1
        plan = self.planner.plan(req)
        req.plan = plan
        req.path = plan.path
        totals["paths"][plan.path] += 1
        iv = self._interval
        iv.arrivals += 1
        iv.paths[plan.path] += 1
        if self.adaptive:
            self._note_applied(iv, spec.query_class, plan.recommendation)
        timeouts = plan.timeouts_seconds
        if plan.path == "parallel":
            self.optimizer.record_request_start(req.rid, "", req.context)
            limit = timeouts.get("parallel", DEFAULT_TIMEOUTS_SECONDS["parallel"])
            for track in TRACKS:
                self._start_call(req, track, min(timeouts.get(track, limit), limit), f"{req.rid}/{track}")
        else:
            self._start_call(req, plan.path, timeouts.get(plan.path, DEFAULT_TIMEOUTS_SECONDS[plan.path]), req.rid)

    def _note_applied(self, iv: _Interval, query_class: str, rec: Any) -> None:
        """Add the preferences the router applied to one query: the optimizer's
        recommendation, immediate overrides included, local_bias within the floor."""
        routing = rec["routing"]
        bias = routing["local_bias"]
        if not rec.get("overrides"):
            floor = self.planner.policy.floor
            bias = floor if bias < floor else 1.0 - floor if bias > 1.0 - floor else bias
        sums = iv.applied.get(query_class)
        if sums is None:
            sums = iv.applied[query_class] = [0.0, 0.0, 0.0, 0.0]
            iv.applied_n[query_class] = 0
        sums[0] += bias
        sums[1] += routing["parallel_threshold"]
        sums[2] += routing["timeout_multiplier"]
        sums[3] += routing["quality_threshold"]
        iv.applied_n[query_class] += 1

    def _applied(self, iv: _Interval) -> Dict[str, Any]:
        """Mean applied preferences of the interval, per class and over all its queries.

        A class with no queries in the interval keeps its previous values."""
        by_class = dict(self._last_applied)
        for qc, sums in iv.applied.items():
            n = iv.applied_n[qc]
            by_class[qc] = {p: round(v / n, 6) for p, v in zip(PREFERENCE_NAMES, sums)}
        self._last_applied = by_class
        total = sum(iv.applied_n.values())
        if total:
            effective = {p: round(sum(iv.applied[qc][i] for qc in iv.applied) / total, 6)
                         for i, p in enumerate(PREFERENCE_NAMES)}
            self._last_effective = effective
        return {"by_class": by_class, "effective": self._last_effective}

    def _start_call(self, req: Request, track: str, timeout: float, record_id: str) -> None:
        now = self.now
        spec = req.spec
        call = Call(req, track, record_id, now, now + timeout, spec.tokens_in, spec.tokens_out)
        req.calls.append(call)
        self.totals["calls"][track]["started"] += 1
        self.optimizer.record_request_start(call.record_id, "", req.context)
        model = self.local if track == "local" else self.api
        state = model.submit(call, now, spec.draws, spec.query_class, spec.complexity)
        if state == "queued" or call.end > call.deadline:
            self._push(call.deadline, _TIMEOUT, call)
        if state != "queued" and call.end <= call.deadline:
            self._push(call.end, _END, call)

    def _close(self, call: Call, outcome: str, notify: bool = True) -> None:
        now = self.now
        call.settle(now, outcome)
        if call.track == "local":
            for started in self.local.release(call, now):
                if started.end <= started.deadline:
                    self._push(started.end, _END, started)
        counts = self.totals["calls"][call.track]
        counts[outcome] += 1
        if outcome == "error":
            key = f"{call.track}:{call.error_type}"
            self.totals["errors"][key] = self.totals["errors"].get(key, 0) + 1
        if call.cost:
            self.totals["cost"] += call.cost
            self._interval.cost += call.cost
            self._spend.append((now, call.cost))
            self._spend_sum += call.cost
        if outcome != "cancelled":
            self._interval.leg_latency[call.track].append(now - call.start)
        result: Dict[str, Any] = {
            "tokens_in": call.tokens_in_done, "tokens_out": call.tokens_out_done, "cost": call.cost,
            "model": self._local_model if call.track == "local" else self._api_model, "outcome": outcome,
        }
        if outcome == "success":
            result["quality_score"] = call.quality
        self.optimizer.record_request_completion(
            call.record_id, call.track, result, success=outcome == "success",
            error_type=call.error_type if outcome == "error" else None if outcome == "success" else outcome)
        if notify:
            self._leg_done(call)

    def _leg_done(self, call: Call) -> None:
        req: Request = call.request
        if req.done:
            return
        plan = req.plan
        assert plan is not None
        if req.path != "parallel":
            if call.outcome == "success":
                self._finish(req, "success", call)
            elif plan.fallback is not None and not req.fallback_used:
                req.fallback_used = True
                self.totals["fallbacks"] += 1
                track = plan.fallback
                self._start_call(req, track, plan.timeouts_seconds.get(track, DEFAULT_TIMEOUTS_SECONDS[track]),
                                 f"{req.rid}/fallback")
            else:
                self._finish(req, call.outcome, None)
            return
        other = req.calls[1] if req.calls[0] is call else req.calls[0]
        if call.outcome == "success" and (plan.preempt and call.quality >= plan.quality_threshold):
            winner: Optional[Call] = call
        elif not other.done:
            return  # wait for the other track
        else:
            answers = [c for c in req.calls if c.outcome == "success"]
            winner = max(answers, key=lambda c: c.quality) if answers else None
        if winner is not None:
            if not other.done:
                self._close(other, "cancelled", notify=False)
            self._finish(req, "success", winner)
        else:
            outcome = "timeout" if all(c.outcome == "timeout" for c in req.calls) else "error"
            self._finish(req, outcome, None)

    def _finish(self, req: Request, outcome: str, winner: Optional[Call]) -> None:
        now = self.now
        req.done = True
        req.outcome = outcome
        req.latency = latency = now - req.arrival
        req.cost = sum(c.cost for c in req.calls)
        totals = self.totals
        iv = self._interval
        totals["completed"] += 1
        iv.completed += 1
        self.latencies.append(latency)
        iv.latency.append(latency)
        if winner is not None:
            req.quality = winner.quality
            req.answered_by = winner.track
            totals["succeeded"] += 1
            totals["answered_by"][winner.track] += 1
            totals["quality_sum"] += winner.quality
            totals["quality_n"] += 1
            iv.quality_sum += winner.quality
            iv.quality_n += 1
            if req.fallback_used:
                totals["fallback_rescued"] += 1
            if latency <= self._target:
                totals["within_target"] += 1
                iv.within += 1
            if winner.quality >= self._floor:
                totals["useful"] += 1
        else:
            totals["failed"] += 1
            iv.failed += 1
        if req.path == "parallel":
            result: Dict[str, Any] = {"outcome": outcome}
            if winner is not None:
                result["quality_score"] = winner.quality
            self.optimizer.record_request_completion(req.rid, "parallel", result, success=winner is not None,
                                                     error_type=None if winner is not None else outcome)

    # -------------------------------------------------------------- clock ticks

    def spend_rate_per_hour(self) -> float:
        """API spend over the last few minutes, in dollars per hour."""
        horizon = self.now - BUDGET_WINDOW_SECONDS
        spend = self._spend
        while spend and spend[0][0] < horizon:
            self._spend_sum -= spend.popleft()[1]
        span = min(max(self.now, 60.0), BUDGET_WINDOW_SECONDS)
        return max(self._spend_sum, 0.0) / span * 3600.0

    def _sample(self) -> None:
        now = self.now
        dt = self.scenario.monitor_interval
        snap = self.machine.sample(now)
        checks = resource_checks(self.config.constraints, snap)
        violated = [n for n in ("memory", "cpu", "gpu_memory", "battery") if checks[n].violated]
        budget = self.config.constraints.max_cost_per_hour
        if budget is not None and self.spend_rate_per_hour() > budget:
            violated.append("cost_budget")
        if violated:
            by = self.totals["violation_by_constraint"]
            iv = self._interval.violations
            for name in violated:
                by[name] = by.get(name, 0.0) + dt
                iv[name] = iv.get(name, 0.0) + dt
            self.totals["violation_seconds"] += dt
        if now + dt <= self.scenario.duration + 1e-9:
            self._push(now + dt, _SAMPLE, None)
        if self.local.queued and self.local.active < self.params["local"]["concurrency"]:
            self._drain_local()  # a suspended model came back

    def _drain_local(self) -> None:
        for started in self.local.drain(self.now):
            if started.end <= started.deadline:
                self._push(started.end, _END, started)

    def _preferences(self) -> Dict[str, Any]:
        prefs = self.optimizer.current_preferences()
        by_class = {qc: prefs.routing_for(qc).as_dict() for qc in self.scenario.class_names}
        effective = {p: round(sum(self._shares[qc] * by_class[qc][p] for qc in by_class), 6)
                     for p in PREFERENCE_NAMES}
        return {"global": prefs.routing.as_dict(), "by_class": by_class, "effective": effective,
                "mode": prefs.mode, "timeouts_seconds": dict(prefs.timeouts_seconds)}

    def _adapt(self) -> None:
        now = self.now
        note = None
        if self.adaptive:
            note = self.optimizer.adapt_now()
            self.totals["adaptation_cycles"] += 1
        iv = self._interval
        self._interval = _Interval()
        n = iv.arrivals
        row: Dict[str, Any] = {
            "t": round(now, 6),
            "requests": n,
            "split": {p: (round(c / n, 4) if n else None) for p, c in iv.paths.items()},
            "p95_seconds": {"local": _p(iv.leg_latency["local"], 0.95), "api": _p(iv.leg_latency["api"], 0.95),
                            "request": _p(iv.latency, 0.95)},
            "completed": iv.completed,
            "failed": iv.failed,
            "within_target": round(iv.within / iv.completed, 4) if iv.completed else None,
            "cost": round(iv.cost, 6),
            "quality": round(iv.quality_sum / iv.quality_n, 4) if iv.quality_n else None,
            "violations": {k: round(v, 3) for k, v in sorted(iv.violations.items())},
            "events": iv.events,
            "battery": (round(self.params["battery"]["level"], 4) if self.params["battery"] is not None else None),
            "local_heat": round(self.local.heat, 4),
            "local_queue": self.local.queued,
            "preferences": self._preferences() if self.adaptive else None,
            "applied": self._applied(iv) if self.adaptive else None,
            "fired": list(note.get("fired", [])) if note else [],
            "mode": note.get("mode") if note else None,
        }
        self.series.append(row)
        if self.on_interval is not None:
            self.on_interval(row)
        if now + self.scenario.adaptation_interval <= self.scenario.duration + 1e-9:
            self._push(now + self.scenario.adaptation_interval, _ADAPT, None)

    def _regime(self, event: Event) -> None:
        for change in event.changes:
            apply_change(self.params, change)
        if event.touches("local."):
            self._drain_local()  # more slots, or the model is back
        self._interval.events.append(event.label)
        record = {"t": round(self.now, 6), "label": event.label,
                  "changes": [{"op": c.op, "path": c.path, "value": c.value} for c in event.changes],
                  "expect": ({"preference": event.expect.preference, "direction": event.expect.direction,
                              "query_class": event.expect.query_class} if event.expect else None)}
        self.events.append(record)
        if self.on_event is not None:
            self.on_event(record)

    # -------------------------------------------------------------- results

    def summary(self) -> Dict[str, Any]:
        t = self.totals
        n = t["requests"]
        completed = t["completed"]
        lat = sorted(self.latencies)
        duration = self.scenario.duration
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
            "latency_target_seconds": self._target,
            "within_target_ratio": round(t["within_target"] / completed, 6) if completed else 0.0,
            "quality_floor": self._floor,
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
        summary["objective"] = round(self.objective.score(summary), 6)
        return summary

    def reactions(self) -> List[Dict[str, Any]]:
        """For each event with an ``expect``: adaptation intervals until the preferences moved that way.

        Two measures, both against a counterfactual -- the same run (same
        seed, same queries) without this event and the ones after it, so
        the preferences' own cycle-to-cycle noise does not count as a
        reaction:

        - ``intervals``: the preferences the router *applied* (the
          optimizer's recommendations, immediate overrides for memory,
          concurrency, battery and cost included), averaged over the
          interval's queries -- what actually steers traffic;
        - ``published_intervals``: the published preferences document
          alone (the rule engine's output, without overrides).

        Each is the first interval ``k`` after the event where the expected
        preference differs from the counterfactual's by at least
        :data:`REACTION_EPSILON` in the expected direction; only intervals
        before the next event count (``None``: not by then). Static policies
        and the oracle have no preferences: not applicable.
        """
        out: List[Dict[str, Any]] = []
        timeline = self.scenario.timeline
        for i, event in enumerate(timeline):
            expect = event.expect
            if expect is None:
                continue
            entry: Dict[str, Any] = {"t": round(event.at, 6), "label": event.label, "expect": expect.describe(),
                                     "applicable": self.adaptive, "intervals": None, "published_intervals": None}
            out.append(entry)
            if not self.adaptive:
                continue
            horizon = timeline[i + 1].at if i + 1 < len(timeline) else self.scenario.duration
            twin = Simulation(self.scenario.with_timeline(timeline[:i]), self.policy, seed=self.seed,
                              strategies=self.optimizer.adaptive.strategies if self.optimizer.adaptive else None,
                              objective=self.objective)
            twin.run_until(horizon)
            actual = [r for r in self.series if event.at < r["t"] <= horizon]
            other = [r for r in twin.series if event.at < r["t"] <= horizon]
            sign = 1.0 if expect.direction == "up" else -1.0
            for key, field_name in (("applied", "intervals"), ("preferences", "published_intervals")):
                def value(row: Dict[str, Any]) -> Optional[float]:
                    prefs = row[key]
                    if expect.query_class:
                        values = prefs["by_class"].get(expect.query_class)
                        return values[expect.preference] if values else None
                    return prefs["effective"][expect.preference] if prefs["effective"] else None

                for k, (a, b) in enumerate(zip(actual, other), start=1):
                    va, vb = value(a), value(b)
                    if va is not None and vb is not None and sign * (va - vb) >= REACTION_EPSILON:
                        entry[field_name] = k
                        break
        return out

    def result(self) -> SimulationResult:
        return SimulationResult(
            scenario=self.scenario.name, policy=self.policy, seed=self.seed,
            duration_seconds=self.scenario.duration,
            adaptation_interval_seconds=self.scenario.adaptation_interval,
            summary=self.summary(), series=self.series, events=self.events,
            reactions=self.reactions() if self.measure_reactions else [],
            wall_seconds=round(self._wall, 3), requests=self.requests if self.keep_requests else None,
        )


def run_simulation(scenario: Scenario, policy: str = "strategy:adaptive", **options: Any) -> SimulationResult:
    """``Simulation(scenario, policy, **options).run()``."""
    return Simulation(scenario, policy, **options).run()


__all__ = [
    "ORACLE", "STATIC_POLICIES", "STRATEGY_PREFIX", "QuerySpec", "Request", "Simulation", "SimulationResult",
    "Workload", "check_policy", "run_simulation", "strategy_policy",
]
