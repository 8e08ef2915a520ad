"""The event loop: one policy run on one scenario, in virtual time.

    result = Simulation(load_scenario("api_outage"), "strategy:adaptive").run()
    result.summary["p95_latency_seconds"], result.series[-1]["preferences"]

Events (arrivals, call ends, timeouts, adaptation cycles, machine readings,
regime changes) sit in a heap; before handling each one the virtual clock is
advanced to its time, so the optimizer's latency measurements, sliding
windows and hold timers all see the right times. Each query is routed by the
policy under test, through its planner (:mod:`.planners`, and
:mod:`.oracle` for the upper reference); ``strategy:<name>`` policies run
``adapt_now()`` every adaptation interval, the others are still recorded
through an optimizer, so metrics exist -- unless ``record_metrics=False``,
which the policies that never read the optimizer (static splits, the
oracle) allow: the same figures in about half the time.

A plan runs as the router would run it, by the same rules
(:mod:`dualtrack.router.policy`): per-track timeouts from the plan (a call
longer than its timeout ends as ``timeout`` at the timeout); on error or
timeout, one fallback to the other track (:func:`fallback_track`); parallel
plans start both tracks, the first answer with quality at or above the
plan's threshold wins (with preemption), otherwise the better of the two
(:func:`race_winner`), and the other call is cancelled at that moment.

With ``hedge=HedgePolicy(...)`` a single-track call that has shown no first
token by its track's hedge delay gets a second call on the other track, as
the router does it (:mod:`dualtrack.router.hedging`, the same classes): the
delay is the policy's quantile of the track's recent first-token times
(:class:`FirstTokenTimes`, fed by every call as the router feeds it), the
budget the same token bucket (:class:`HedgeBudget`), earned by each
hedgeable request (:func:`hedgeable`); a call that failed, answered or
showed its first token before the delay is not hedged. The two calls race
with preemption, whatever the plan says; the loser is cancelled, and a
failure of either leaves the other to answer (no fallback after a hedge).

Recording follows the router's conventions (``docs/router.md``): every model
call is recorded once under its track -- a single-track call as ``<rid>``,
its fallback as ``<rid>/fallback``, its hedge as ``<rid>/hedge`` (the
loser of a hedged race as ``cancelled``; a hedged request has no record of
its own), parallel legs as ``<rid>/local`` and ``<rid>/api`` (a cancelled
leg with outcome ``cancelled`` and the tokens and cost it incurred so far)
-- and a parallel request also as ``<rid>`` on path
``parallel`` with its end-to-end latency and the winner's quality but no
tokens, cost or model.

Results are deterministic for a seed: all randomness comes from seeded
streams (workload and per-query draws, routing), and nothing reads the real
clock except ``wall_seconds``. What is measured, and how it is summed up,
is :mod:`.results`.
"""

from __future__ import annotations

import copy
import heapq
import random
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from prometheus_client import CollectorRegistry

from ..clock import VirtualClock
from ..constraints import resource_checks
from ..exporter.resources import register_resource_gauges
from ..optimizer import DualTrackOptimizer
from ..router.hedging import HEDGE_OUTCOMES, FirstTokenTimes, HedgeBudget, HedgePolicy
from ..router.policy import RoutePlan, fallback_track, hedgeable, race_failure_outcome, race_winner
from ..vocabulary import DEFAULT_TIMEOUTS_SECONDS, ROUTING_NAMES, TRACKS, other_track
from .machine import SimulatedMachine, SimulatedServerMetrics
from .models import INF, ApiModelSim, Call, LocalModelSim
from .objective import OBJECTIVE, Objective
from .oracle import BUDGET_WINDOW_SECONDS, OraclePlanner
from .planners import (
    ORACLE,
    PERCLASS_PREFIX,
    STATIC_SHARES,
    STRATEGY_PREFIX,
    PerClassStaticPlanner,
    Planner,
    StaticPlanner,
    StrategyPlanner,
    check_policy,
    parse_perclass,
    strategy_set,
)
from .results import AppliedMeans, IntervalTotals, SimulationResult, build_summary, new_totals
from .scenario import Event, Expectation, Scenario, apply_change
from .workload import QuerySource, QuerySpec, QueryTape, Request, TapeReader, Workload

#: Preferences must differ from the counterfactual by this much to count as a reaction.
REACTION_EPSILON = 0.02

# Event kinds, in the order they are handled at the same virtual time: an
# adaptation cycle first (it sees the interval that just ended, not a regime
# change made at the same instant), then regime changes, machine readings,
# call ends (an answer exactly at its deadline is in time), timeouts, hedge
# moments (a call that answers or fails exactly at its hedge delay is not
# hedged), arrivals.
_ADAPT, _REGIME, _SAMPLE, _END, _TIMEOUT, _HEDGE, _ARRIVAL = range(7)


def _quality(call: Call) -> Optional[float]:
    return call.quality


def _preference(prefs: Dict[str, Any], expect: Expectation) -> Optional[float]:
    """The preference an expectation is about, in a row's preferences (its class's, or the effective one)."""
    if expect.query_class:
        values = prefs["by_class"].get(expect.query_class)
        return values[expect.preference] if values else None
    return prefs["effective"][expect.preference] if prefs["effective"] else None


class Simulation:
    """One policy on one scenario, in virtual time.

    ``policy``: ``strategy:<name>`` (default ``strategy:adaptive``),
    ``all_local``, ``all_api``, ``fixed_50_50``, a per-class split
    ``perclass:short=1,medium=0.5,long=0`` or ``oracle``. ``seed``
    defaults to the scenario's. ``clock`` and ``registry`` may be injected
    (the demo serves the registry); ``strategies`` is a preloaded
    ``StrategySet`` (saves loading rules per run), ``rules_path`` a rules
    folder. ``on_interval(row)`` and ``on_event(event)`` are called as the
    run produces them (a live view). ``measure_reactions`` adds reaction
    times to the result (it reruns the scenario without each event: slower).
    ``config_changes`` are extra ``OptimizationConfig`` settings (the demo
    passes ``preferences_file`` to follow an adapter process).

    For policies that never read the optimizer (static splits, the oracle):
    ``record_metrics=False`` skips recording calls through it (no metrics,
    the same figures, faster), and ``tape`` (a :class:`QueryTape` of this
    scenario and seed) replays queries drawn once instead of drawing them.

    ``hedge`` (a :class:`~dualtrack.router.hedging.HedgePolicy`, default
    ``None``: off) hedges slow single-track calls as the router does; the
    summary then counts ``hedges`` by outcome (fired, won, wasted, throttled).

    ``routing_seed`` (default ``None``) reseeds only the router's own draws
    (which track a query of a split class takes): the same queries and the
    same model behaviour, another roll of the routing dice. Runs that differ
    only in it measure how much of a figure is chance
    (``benchmarks/adaptation_noise.py``).

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
                 config_changes: Optional[Dict[str, Any]] = None, record_metrics: bool = True,
                 tape: Optional[QueryTape] = None, server_signals: bool = False,
                 hedge: Optional[HedgePolicy] = None, routing_seed: Optional[int] = None) -> None:
        if hedge is not None and not isinstance(hedge, HedgePolicy):
            raise ValueError(f"hedge: expected a HedgePolicy or None, got {hedge!r}")
        self.scenario = scenario
        self.policy = check_policy(policy)
        self.seed = scenario.seed if seed is None else int(seed)
        self.adaptive = self.policy.startswith(STRATEGY_PREFIX)
        if self.adaptive and not record_metrics:
            raise ValueError(f"record_metrics: {self.policy} reads the optimizer's metrics; it cannot run without them")
        if tape is not None and (tape.scenario, tape.seed, tape.duration) != (scenario.name, self.seed,
                                                                             scenario.duration):
            raise ValueError(f"tape: drawn for {tape.scenario!r} with seed {tape.seed}, "
                             f"not for {scenario.name!r} with seed {self.seed}")
        self._record = record_metrics
        self.objective = objective
        self.clock = clock if clock is not None else VirtualClock()
        self.params = scenario.initial_params()
        self.local = LocalModelSim(self.params["local"])
        self.api = ApiModelSim(self.params["api"])
        self.machine = SimulatedMachine(self.params, self.local, self.clock)
        strategy = self.policy[len(STRATEGY_PREFIX):] if self.adaptive else "balanced"
        if strategies is None and not self.adaptive:
            strategies = strategy_set()  # unused by the policy: do not parse the rules for every run
        self.config = scenario.optimization_config(strategy, rules_path=rules_path, **(config_changes or {}))
        # The local server's own load gauges (queue, running, slots), scraped with a lag.
        self.server_metrics = SimulatedServerMetrics(self.local) if server_signals else None
        self.optimizer = DualTrackOptimizer(
            self.config, registry=registry, clock=self.clock, resource_monitor=self.machine, strategies=strategies,
            local_server=self.server_metrics.reading if self.server_metrics is not None else None)
        if registry is not None:  # a served registry (the demo): export the simulated machine too
            register_resource_gauges(registry, self.machine)
        self.machine.start_monitoring()
        self.machine.sample(0.0)
        self.routing_seed = routing_seed
        route_rng = random.Random(f"dualtrack-sim:{self.seed}:routing" if routing_seed is None
                                  else f"dualtrack-sim:{self.seed}:routing:{int(routing_seed)}")
        self.planner: Planner
        self._exploration_floor = 0.0  # the strategy planner's: the least share each track keeps
        if self.adaptive:
            strategy_planner = StrategyPlanner(self.optimizer, route_rng)
            self._exploration_floor = strategy_planner.policy.floor
            self.planner = strategy_planner
        elif self.policy == ORACLE:
            self.planner = OraclePlanner(self, objective)
        elif self.policy.startswith(PERCLASS_PREFIX):
            shares = parse_perclass(self.policy)
            if set(shares) != set(scenario.class_names):
                raise ValueError(f"policy: {self.policy} must give a share for each query class of "
                                 f"{scenario.name} ({', '.join(scenario.class_names)}), and only for those")
            self.planner = PerClassStaticPlanner(shares, route_rng)
        else:
            self.planner = StaticPlanner(STATIC_SHARES[self.policy], route_rng)
        self.workload: QuerySource = Workload(scenario, self.seed) if tape is None else tape.reader()
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
        self.totals: Dict[str, Any] = new_totals()

        # Hedging, as the router does it: per-track first-token times and one budget.
        self.hedge = hedge
        self.first_token_times: Optional[Dict[str, FirstTokenTimes]] = None
        self._hedge_budget: Optional[HedgeBudget] = None
        if hedge is not None:
            self.first_token_times = {track: FirstTokenTimes() for track in TRACKS}
            self._hedge_budget = HedgeBudget(hedge.budget, hedge.burst)
            self.totals["hedges"] = {outcome: 0 for outcome in HEDGE_OUTCOMES}
        self.series: List[Dict[str, Any]] = []
        self.events: List[Dict[str, Any]] = []
        self._interval = IntervalTotals()
        self._applied = AppliedMeans()

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

    def fork(self) -> "Simulation":
        """An independent copy of this run as it stands: run it on (with another planner, say) and
        this one is untouched. Only runs without metrics (``record_metrics=False``) fork: a copy
        shares the optimizer, which such runs never touch, and the scenario, config and tape."""
        if self._record:
            raise ValueError("fork: only a run with record_metrics=False can be forked")
        if self.hedge is not None:
            # its first-token times and budget hold locks, which do not copy
            raise ValueError("fork: a run with hedge cannot be forked")
        clock = VirtualClock(start=self.clock.time() - self.clock.monotonic())
        clock.advance(self.clock.monotonic())  # the same monotonic time to the last bit
        memo: Dict[int, Any] = {id(self.clock): clock, id(self.scenario): self.scenario, id(self.config): self.config,
                                id(self.optimizer): self.optimizer, id(self.objective): self.objective}
        if isinstance(self.workload, TapeReader):
            memo[id(self.workload.specs)] = self.workload.specs
        # lists that only grow, of values nobody changes: a shallow copy is a copy (and far faster)
        for grown in (self.latencies, self.series, self.events):
            memo[id(grown)] = list(grown)
        return copy.deepcopy(self, memo)

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
            elif kind == _HEDGE:
                if not obj.done:
                    self._hedge_due(obj)
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
            if self._record:
                self.optimizer.record_request_start(req.rid, "", req.context)
            limit = timeouts.get("parallel", DEFAULT_TIMEOUTS_SECONDS["parallel"])
            for track in TRACKS:
                self._start_call(req, track, min(timeouts.get(track, limit), limit), f"{req.rid}/{track}")
        else:
            call = self._start_call(req, plan.path, timeouts.get(plan.path, DEFAULT_TIMEOUTS_SECONDS[plan.path]),
                                    req.rid)
            if self.hedge is not None:
                self._watch(call, plan)

    def _note_applied(self, iv: IntervalTotals, query_class: str, rec: Any) -> None:
        """Add the preferences the router applied to one query: the optimizer's
        recommendation, immediate overrides included, local_bias within the floor."""
        routing = rec["routing"]
        bias = routing["local_bias"]
        if not rec.get("overrides"):
            floor = self._exploration_floor
            bias = floor if bias < floor else 1.0 - floor if bias > 1.0 - floor else bias
        iv.note_applied(query_class, bias, routing)

    def _start_call(self, req: Request, track: str, timeout: float, record_id: str) -> Call:
        now = self.now
        spec = req.spec
        call = Call(req, track, record_id, now, now + timeout, spec.tokens_in, spec.tokens_out)
        req.calls.append(call)
        self.totals["calls"][track]["started"] += 1
        if self._record:
            # As the router does: the track goes with the start (calls in flight per track).
            context = dict(req.context, track=track) if req.context else {"track": track}
            self.optimizer.record_request_start(call.record_id, "", context)
        model = self.local if track == "local" else self.api
        state = model.submit(call, now, spec.draws, spec.query_class, spec.complexity)
        if state == "queued" or call.end > call.deadline:
            self._push(call.deadline, _TIMEOUT, call)
        if state != "queued" and call.end <= call.deadline:
            self._push(call.end, _END, call)
        return call

    # -------------------------------------------------------------- hedging

    def _watch(self, call: Call, plan: RoutePlan) -> None:
        """A single-track call just started: set its hedge moment, as the router's ``_watch`` does.

        Every hedgeable request earns budget; the delay is read now, from
        the track's first-token times so far; a moment at or after the
        call's deadline is none (the timeout comes first).
        """
        assert self.hedge is not None and self._hedge_budget is not None and self.first_token_times is not None
        if not hedgeable(plan):
            return
        self._hedge_budget.earn()
        delay = self.hedge.delay_seconds(self.first_token_times[call.track])
        if delay is not None and call.start + delay < call.deadline:
            self._push(call.start + delay, _HEDGE, call)

    def _hedge_due(self, call: Call) -> None:
        """The hedge delay of a call still running has passed: hedge it unless it showed its first token."""
        if call.first_token <= self.now:
            return  # alive: it will answer (or fail) by itself
        assert self._hedge_budget is not None
        req: Request = call.request
        hedges = self.totals["hedges"]
        if not self._hedge_budget.spend():
            hedges["throttled"] += 1
            return
        hedges["fired"] += 1
        req.hedged = True
        track = other_track(call.track)
        plan = req.plan
        assert plan is not None
        self._start_call(req, track, plan.timeouts_seconds.get(track, DEFAULT_TIMEOUTS_SECONDS[track]),
                         f"{req.rid}/hedge")

    def _sample_first_token(self, call: Call, outcome: str) -> None:
        """Add a call's first-token time to its track's, as the router does: every call that showed
        one (an error shows none), and the first call of a hedged race that lost without one,
        with the time it waited (a lower bound)."""
        assert self.first_token_times is not None
        now = self.now
        if call.first_token <= now and outcome != "error":
            self.first_token_times[call.track].add(call.first_token - call.start)
        elif outcome == "cancelled" and call.request.hedged and call is call.request.calls[0]:
            self.first_token_times[call.track].add(now - call.start)

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
        if self.first_token_times is not None:
            self._sample_first_token(call, outcome)
        if self._record:
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
        if req.hedged:
            self._hedged_leg_done(req, call)
            return
        if req.path != "parallel":
            if call.outcome == "success":
                self._finish(req, "success", call)
                return
            track = fallback_track(plan, fell_back=req.fallback_used)
            if track is not None:
                req.fallback_used = True
                self.totals["fallbacks"] += 1
                self._start_call(req, track, plan.timeouts_seconds.get(track, DEFAULT_TIMEOUTS_SECONDS[track]),
                                 f"{req.rid}/fallback")
            else:
                self._finish(req, call.outcome, None)
            return
        other = req.calls[1] if req.calls[0] is call else req.calls[0]
        # Answers in the order the legs started (local first), so a tie in
        # quality goes to the local answer; the router's go to the first to finish.
        answers = [c for c in req.calls if c.outcome == "success"]
        winner = race_winner(answers, _quality, plan.quality_threshold, preempt=plan.preempt, settled=other.done)
        if winner is not None:
            if not other.done:
                self._close(other, "cancelled", notify=False)
            self._finish(req, "success", winner)
        elif other.done:
            self._finish(req, race_failure_outcome(c.outcome for c in req.calls), None)
        # else: wait for the other track

    def _hedged_leg_done(self, req: Request, call: Call) -> None:
        """One call of a hedged race ended: the first acceptable answer wins (always preempting, as the
        router's hedge does); a failure leaves the other call to answer; no third call."""
        plan = req.plan
        assert plan is not None
        first, second = req.calls
        other = second if call is first else first
        answers = [c for c in req.calls if c.outcome == "success"]
        winner = race_winner(answers, _quality, plan.quality_threshold, preempt=True, settled=other.done)
        if winner is not None:
            if not other.done:
                self._close(other, "cancelled", notify=False)
            self.totals["hedges"]["won" if winner is second else "wasted"] += 1
            self._finish(req, "success", winner)
        elif other.done:
            self._finish(req, race_failure_outcome(c.outcome for c in req.calls), None)

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
        if req.path == "parallel" and self._record:
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
        if self.server_metrics is not None:
            self.server_metrics.sample(now)
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
                     for p in ROUTING_NAMES}
        return {"global": prefs.routing.as_dict(), "by_class": by_class, "effective": effective,
                "mode": prefs.mode, "timeouts_seconds": dict(prefs.timeouts_seconds)}

    def _adapt(self) -> None:
        now = self.now
        note = None
        if self.adaptive:
            note = self.optimizer.adapt_now()
            self.totals["adaptation_cycles"] += 1
        iv = self._interval
        self._interval = IntervalTotals()
        row = iv.measures(now)
        row.update({
            "battery": (round(self.params["battery"]["level"], 4) if self.params["battery"] is not None else None),
            "local_heat": round(self.local.heat, 4),
            "local_queue": self.local.queued,
            "preferences": self._preferences() if self.adaptive else None,
            "applied": self._applied.close(iv) if self.adaptive else None,
            "fired": list(note.get("fired", [])) if note else [],
            "mode": note.get("mode") if note else None,
        })
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
                              "query_class": event.expect.query_class, "kind": event.expect.kind}
                             if event.expect else None)}
        self.events.append(record)
        if self.on_event is not None:
            self.on_event(record)

    # -------------------------------------------------------------- results

    def summary(self) -> Dict[str, Any]:
        return build_summary(self.totals, self.latencies, duration=self.scenario.duration, target=self._target,
                             floor=self._floor, objective=self.objective)

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
                                     "kind": expect.kind, "applicable": self.adaptive, "intervals": None,
                                     "published_intervals": None}
            out.append(entry)
            if not self.adaptive:
                continue
            horizon = timeline[i + 1].at if i + 1 < len(timeline) else self.scenario.duration
            twin = Simulation(self.scenario.with_timeline(timeline[:i]), self.policy, seed=self.seed,
                              strategies=self.optimizer.adaptive.strategies if self.optimizer.adaptive else None,
                              objective=self.objective, server_signals=self.server_metrics is not None,
                              hedge=self.hedge, routing_seed=self.routing_seed)
            twin.run_until(horizon)
            actual = [r for r in self.series if event.at < r["t"] <= horizon]
            other = [r for r in twin.series if event.at < r["t"] <= horizon]
            sign = 1.0 if expect.direction == "up" else -1.0
            for key, field_name in (("applied", "intervals"), ("preferences", "published_intervals")):
                # interval by interval after the event, against the twin without it
                for k, (a, b) in enumerate(zip(actual, other, strict=False), start=1):
                    va, vb = _preference(a[key], expect), _preference(b[key], expect)
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


__all__ = ["REACTION_EPSILON", "Simulation", "run_simulation"]
