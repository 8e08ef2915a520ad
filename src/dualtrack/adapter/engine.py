"""The rule engine: one adaptation cycle turns signal values into preferences.

A cycle, in order (``docs/rules.md`` has the full story):

1. **Mode** (adaptive strategies only): pick the strategy to follow from
   ``modes.select`` — the first choice whose condition has held for its
   ``for``; the current mode is kept until its condition has been false for
   ``clear_for`` and for at least ``min_dwell`` (hysteresis).
2. **Global rules** (no ``for_each``): a rule fires when its condition has
   been *true* for ``for`` and it is out of its ``cooldown``; its actions
   (``set``, then ``scale``, then ``add``) change the global preferences.
   Preferences no rule touched relax toward the strategy's baseline.
3. **Per-class rules** (``for_each: query_class``) adjust each class's
   offset from the global preferences; untouched offsets relax toward the
   learned offset (``learning``) or zero.
4. **Health**: a track whose ``unhealthy_when`` holds is drained to the
   exploration floor (local_bias driven to the edge of its clamps) -- for
   strategies without an ``objective:``, which weighs a failing track itself.
5. **Clamps** (the exploration floor is part of the local_bias clamp), then
   the **maximum step**: no preference moves more than ``max_step`` from
   the previous cycle, globally or for any class.
6. **Timeouts** per path follow the latency signal (factor × p99), within
   min/max; with ``target_floor``, a track not congested gets at least that
   multiple of the latency target. These are base timeouts: a router
   multiplies them by the ``timeout_multiplier`` of the query's class.

The engine is deterministic: the same strategy, signal values and times give
the same decisions. It holds state between cycles (current preferences,
hold and cooldown timers, learned advantages, mode); ``now`` is a monotonic
time in seconds supplied by the caller (the simulator passes virtual time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from ..vocabulary import DEFAULT_QUERY_CLASSES, PATHS, ROUTING_NAMES, TRACKS
from .conditions import Context
from .estimator import Estimator, EstimatorSettings
from .objective import ANSWERING_SHARE, ObjectiveSpec, Split, choose_split
from .plan_view import PlanView, merged_changes, plan_view
from .signals import SignalValues
from .strategy import Action, Rule, Strategy, StrategySet

PREFS = ROUTING_NAMES
#: The most a timeout floor (``timeouts.target_floor`` x the latency target) may reach.
TIMEOUT_FLOOR_MAX_SECONDS = 600.0
TIMEOUT_PATHS = PATHS


@dataclass
class FiredRule:
    """Why the preferences changed: a rule that fired (or the engine's own
    health, learning and mode logic), with the signal values it read."""

    rule: str
    strategy: str
    message: str
    query_class: Optional[str] = None
    signals: Dict[str, Optional[float]] = field(default_factory=dict)
    changes: Dict[str, float] = field(default_factory=dict)


@dataclass
class Decision:
    """The outcome of one cycle."""

    strategy: str
    mode: Optional[str]
    routing: Dict[str, float]
    query_classes: Dict[str, Dict[str, float]]  # effective preferences of every class
    timeouts_seconds: Dict[str, float]
    healthy: Dict[str, Optional[bool]]
    reasons: List[FiredRule]

    @property
    def fired(self) -> List[str]:
        return [r.rule for r in self.reasons]

    def class_overrides(self, tolerance: float = 1e-9) -> Dict[str, Dict[str, float]]:
        """Classes whose effective preferences differ from the global ones."""
        out = {}
        for qc, prefs in self.query_classes.items():
            if any(abs(prefs[p] - self.routing[p]) > tolerance for p in PREFS):
                out[qc] = dict(prefs)
        return out


def _clip(value: float, lo: float, hi: float) -> float:
    return lo if value < lo else hi if value > hi else value


def _apply(actions: Sequence[Action], prefs: Dict[str, float]) -> Dict[str, float]:
    """Apply actions in place; return the change of each preference touched."""
    before = {a.pref: prefs[a.pref] for a in actions}
    for action in actions:
        if action.op == "set":
            prefs[action.pref] = action.value
        elif action.op == "scale":
            prefs[action.pref] *= action.value
        else:
            prefs[action.pref] += action.value
    return {p: prefs[p] - before[p] for p in before}


class RuleEngine:
    """Evaluates a strategy cycle after cycle.

    >>> engine = RuleEngine(load_strategies(bundled_dir("rules")), "balanced")
    >>> decision = engine.evaluate(values, now=clock.monotonic())
    >>> decision.routing["local_bias"]
    """

    def __init__(self, strategies: StrategySet, strategy: str, *,
                 query_classes: Sequence[str] = DEFAULT_QUERY_CLASSES, interval_seconds: float = 30.0) -> None:
        self.strategies = strategies
        self.top = strategies[strategy]
        self.query_classes = tuple(query_classes)
        #: The adaptation interval: the window of the ``interval_*`` counts the objective reads.
        self.interval_seconds = interval_seconds
        self.estimator: Optional[Estimator] = None
        self.last_split: Optional[Split] = None
        #: The last objective cycle's estimates and plan, for the metrics (None before one ran).
        self.plan: Optional[PlanView] = None
        self._changes: Dict[Tuple[str, str, str], int] = {}  # (path, query class, what) -> changes detected
        self.mode: Optional[str] = None
        self._mode_since = -math.inf
        self._hold: Dict[Tuple[str, ...], float] = {}
        self._cooldown_until: Dict[Tuple[str, ...], float] = {}
        self._true_since: Dict[Tuple[str, ...], float] = {}
        self._false_since: Dict[Tuple[str, ...], float] = {}
        self._advantage: Dict[str, float] = {}
        self._healthy: Dict[str, Optional[bool]] = {t: None for t in TRACKS}
        start = self.active_strategy().baseline
        self.routing: Dict[str, float] = dict(start)
        self.class_prefs: Dict[str, Dict[str, float]] = {qc: dict(start) for qc in self.query_classes}
        self.last: Optional[Decision] = None

    # ------------------------------------------------------------ public

    @property
    def strategy(self) -> str:
        return self.top.name

    def active_strategy(self) -> Strategy:
        """The strategy being followed: the mode of an adaptive one, else itself."""
        if self.top.modes is None:
            return self.top
        return self.strategies[self.mode or self.top.modes.default]

    def replace_strategies(self, strategies: StrategySet) -> None:
        """Hot reload: new rules, same state (preferences, timers of rules that kept their names)."""
        top = strategies[self.top.name]  # raises ConfigError when the strategy vanished
        if self.mode is not None and self.mode not in strategies:
            self.mode = None
        self.strategies = strategies
        self.top = top

    def evaluate(self, values: SignalValues, now: float) -> Decision:
        reasons: List[FiredRule] = []
        self._select_mode(values, now, reasons)
        strat = self.active_strategy()
        evaluated: Set[Tuple[str, ...]] = set()

        prev_global = dict(self.routing)
        prev_classes = {qc: dict(p) for qc, p in self.class_prefs.items()}

        # 2. global rules, then relax toward the baseline
        target = dict(prev_global)
        touched: Set[str] = set()
        guard_rails: List[Action] = []  # the local_bias actions of global rules that fired
        for rule in strat.rules:
            if rule.for_each is None:
                changes = self._run_rule(strat, rule, None, values, now, target, reasons, evaluated)
                touched.update(changes)
                if "local_bias" in changes:
                    guard_rails.extend(a for a in rule.actions if a.pref == "local_bias")
        for pref in PREFS:
            if pref not in touched:
                target[pref] += strat.relax * (strat.baseline[pref] - target[pref])

        # 3. per-class rules and learning, as offsets from the global target.
        # An adaptive strategy's learning spans its modes.
        learner = self.top if self.top.modes is not None else strat
        self._learn(learner, values, reasons)
        class_targets: Dict[str, Dict[str, float]] = {}
        class_touched: Set[str] = set()
        for qc in self.query_classes:
            prev = prev_classes.get(qc, prev_global)
            offset = {p: prev[p] - prev_global[p] for p in PREFS}
            touched_c: Set[str] = set()
            for rule in strat.rules:
                if rule.for_each == "query_class":
                    effective = {p: target[p] + offset[p] for p in PREFS}
                    changes = self._run_rule(strat, rule, qc, values, now, effective, reasons, evaluated)
                    if changes:
                        touched_c.update(changes)
                        offset = {p: effective[p] - target[p] for p in PREFS}
            learned = self._learned_offset(learner, qc)
            for pref in PREFS:
                if pref in touched_c:
                    continue
                goal = learned if pref == "local_bias" else 0.0
                if pref == "local_bias" and learner.learning.enabled:
                    offset[pref] = goal  # the step limit below smooths it
                else:
                    offset[pref] += strat.relax * (goal - offset[pref])
            class_targets[qc] = {p: target[p] + offset[p] for p in PREFS}
            if "local_bias" in touched_c:
                class_touched.add(qc)

        # 3b. the objective: each class's local share. Global rules that moved
        # local_bias this cycle are guard rails: their actions apply on top, to
        # every class; a per-class rule that moved a class's local_bias wins for it.
        objective = strat.objective or self.top.objective
        if objective is None:
            self.plan = None  # no estimates behind this cycle: none to show
        else:
            split = self._optimize(objective, values, reasons)
            for qc in self.query_classes:
                if qc not in class_touched and qc in split.shares:
                    share = {"local_bias": split.shares[qc]}
                    _apply(guard_rails, share)
                    class_targets[qc]["local_bias"] = share["local_bias"]
            weights = {qc: self.estimator.arrivals.get(qc, 0.0) for qc in self.query_classes} \
                if self.estimator is not None else {}
            total = sum(weights.values())
            if total > 0:
                target["local_bias"] = sum(weights[qc] * class_targets[qc]["local_bias"]
                                           for qc in self.query_classes) / total

        # 4. health; 5. clamps, health gates and step limits
        self._update_health(strat, values, now, reasons)
        self.routing = self._bound(strat, target, prev_global)
        self.class_prefs = {qc: self._bound(strat, t, prev_classes.get(qc, prev_global))
                            for qc, t in class_targets.items()}

        # Forget hold timers of rules not evaluated this cycle (other mode, vanished).
        for key in [k for k in self._hold if k not in evaluated]:
            del self._hold[key]

        decision = Decision(
            strategy=self.top.name,
            mode=self.mode if self.top.modes is not None else None,
            routing=dict(self.routing),
            query_classes={qc: dict(p) for qc, p in self.class_prefs.items()},
            timeouts_seconds=self._timeouts(strat, values),
            healthy=dict(self._healthy),
            reasons=reasons,
        )
        self.last = decision
        return decision

    # ------------------------------------------------------------ pieces

    def _run_rule(self, strat: Strategy, rule: Rule, qc: Optional[str], values: SignalValues,
                  now: float, prefs: Dict[str, float], reasons: List[FiredRule],
                  evaluated: Set[Tuple[str, ...]]) -> Dict[str, float]:
        key = (strat.name, rule.name, qc or "")
        evaluated.add(key)
        ctx = Context(values.get, {"query_class": qc} if qc else {})
        result = rule.condition.evaluate(ctx)
        if result is not True:
            self._hold.pop(key, None)
            return {}
        since = self._hold.setdefault(key, now)
        if now - since < rule.hold_seconds or now < self._cooldown_until.get(key, -math.inf):
            return {}
        changes = _apply(rule.actions, prefs)
        if rule.cooldown_seconds:
            self._cooldown_until[key] = now + rule.cooldown_seconds
        where = f" for {qc}" if qc else ""
        reasons.append(FiredRule(rule.name, strat.name, rule.description or f"{rule.condition.text}{where}",
                                 qc, dict(ctx.used), changes))
        return changes

    def _select_mode(self, values: SignalValues, now: float, reasons: List[FiredRule]) -> None:
        modes = self.top.modes
        if modes is None:
            return
        ctx = Context(values.get)
        desired = modes.default
        for index, choice in enumerate(modes.select):
            key = (self.top.name, "mode", str(index))
            if choice.condition.evaluate(ctx) is True:
                self._true_since.setdefault(key, now)
                self._false_since.pop(key, None)
            else:  # false or unknown: no evidence for the mode
                self._false_since.setdefault(key, now)
                self._true_since.pop(key, None)
        for index, choice in enumerate(modes.select):
            key = (self.top.name, "mode", str(index))
            entered = key in self._true_since and now - self._true_since[key] >= choice.hold_seconds
            holding = (self.mode == choice.use and
                       not (key in self._false_since and now - self._false_since[key] >= choice.clear_seconds))
            if entered or holding:
                desired = choice.use
                break
        if self.mode is None:
            self.mode = desired  # the first choice does not count toward min_dwell
        elif desired != self.mode and now - self._mode_since >= modes.min_dwell_seconds:
            reasons.append(FiredRule("mode_switch", self.top.name,
                                     f"mode {self.mode} -> {desired}", None, dict(ctx.used)))
            self.mode, self._mode_since = desired, now

    def _optimize(self, objective: ObjectiveSpec, values: SignalValues, reasons: List[FiredRule]) -> Split:
        """Update the estimates from the last interval and choose each class's local share."""
        if self.estimator is None or self.estimator.settings.decay != objective.decay:
            self.estimator = Estimator(self.query_classes, EstimatorSettings(decay=objective.decay))
        est = self.estimator
        events = est.update(values, self.interval_seconds)
        for where, what in events.items():
            reasons.append(FiredRule("change_detected", self.top.name,
                                     f"{where}: {what} changed; estimates restart from the last interval",
                                     where.partition(":")[2] or None))
        # Hold on to the track each class was worth more on before: the objective's
        # choice, not the baseline's split nor what the constraints left of it.
        current = self.last_split.preferred if self.last_split is not None else None
        split = choose_split(est, objective, budget_per_hour=values.get("cost_budget_dollars_per_hour", {}),
                             current=current, interval_seconds=self.interval_seconds, changed=events,
                             latency_target=values.get("latency_target_seconds", {}))
        est.wanted_load = split.wanted_load
        self.last_split = split
        merged_changes(self._changes, events)
        self.plan = plan_view(est, split, self._changes)
        for line in split.reasons:
            qc, sep, _ = line.partition(": ")
            reasons.append(FiredRule("objective", self.top.name, line,
                                     qc if sep and qc in self.query_classes else None,
                                     {"local_share": split.shares.get(qc)} if qc in split.shares else {}))
        return split

    def _learn(self, strat: Strategy, values: SignalValues, reasons: List[FiredRule]) -> None:
        learning = strat.learning
        if not learning.enabled:
            return
        target = values.get("latency_target_seconds", {})
        cost_limit = values.get("cost_per_request_limit_dollars", {})
        w = learning.weights
        for qc in self.query_classes:
            scores: Dict[str, float] = {}
            parts: Dict[str, Dict[str, float]] = {}
            for track in TRACKS:
                labels = {"path": track, "query_class": qc}
                parts[track] = {}
                q = values.get("quality_mean", labels)
                lat = values.get("latency_p95_seconds", labels)
                cost = values.get("cost_per_request_dollars", labels)
                if q is not None:
                    parts[track]["quality"] = w["quality"] * q
                if lat is not None and target:
                    parts[track]["latency"] = -w["latency"] * lat / target
                if cost is not None and cost_limit:
                    parts[track]["cost"] = -w["cost"] * cost / cost_limit
            # Compare only the components both tracks have.
            common = set(parts["local"]) & set(parts["api"])
            if not common:
                continue
            for track in TRACKS:
                scores[track] = sum(parts[track][c] for c in common)
            advantage = scores["local"] - scores["api"]
            previous = self._advantage.get(qc)
            updated = advantage if previous is None else (
                (1 - learning.rate) * previous + learning.rate * advantage)
            if not math.isfinite(updated):
                # Finite signals can still overflow (latency / a tiny target is
                # inf; inf - inf is NaN). That is no evidence, and a NaN would
                # stick in the average and publish a NaN local_bias forever.
                continue
            self._advantage[qc] = updated
            offset = self._learned_offset(strat, qc)
            if abs(offset) >= 0.01:
                better = "local" if offset > 0 else "api"
                reasons.append(FiredRule(
                    "learning", strat.name,
                    f"{better} serves {qc} better (score advantage {self._advantage[qc]:+.3f})", qc,
                    {f'score{{path="{t}",query_class="{qc}"}}': scores[t] for t in TRACKS},
                    {"local_bias": offset}))

    def _learned_offset(self, strat: Strategy, qc: str) -> float:
        if not strat.learning.enabled or qc not in self._advantage:
            return 0.0
        m = strat.learning.max_offset
        return _clip(strat.learning.gain * self._advantage[qc], -m, m)

    def _update_health(self, strat: Strategy, values: SignalValues, now: float,
                       reasons: List[FiredRule]) -> None:
        condition = strat.health.condition
        if condition is None:
            return
        for track in TRACKS:
            key = (strat.name, "health", track)
            ctx = Context(values.get, {"path": track})
            result = condition.evaluate(ctx)
            if result is None:
                continue  # no data: keep what we knew
            if result:
                since = self._true_since.setdefault(key, now)
                unhealthy = now - since >= strat.health.hold_seconds
            else:
                self._true_since.pop(key, None)
                unhealthy = False
            was = self._healthy.get(track)
            self._healthy[track] = not unhealthy
            if unhealthy:
                reasons.append(FiredRule("unhealthy_track", strat.name,
                                         f"{track} is unhealthy ({condition.text}); draining it to the floor",
                                         None, dict(ctx.used)))
            elif was is False:
                reasons.append(FiredRule("track_recovered", strat.name, f"{track} is healthy again",
                                         None, dict(ctx.used)))

    def _bound(self, strat: Strategy, target: Dict[str, float], previous: Mapping[str, float]) -> Dict[str, float]:
        out = {}
        for pref in PREFS:
            lo, hi = strat.clamps[pref]
            prev = _clip(previous[pref], lo, hi)  # after a mode switch the old value may be outside
            # A NaN target (e.g. inf - inf from an overflowing scale action) keeps the previous value.
            value = prev if math.isnan(target[pref]) else _clip(target[pref], lo, hi)
            # The health gate drains a failing track. An objective weighs a failing track
            # itself, once its interval counts show the failures; a track that got (almost)
            # no calls in the interval (the router steered away from it at once, or the
            # counts are missing) keeps its old estimates, so the gate drains it then too.
            if pref == "local_bias":
                local_ok = self._healthy["local"] is not False or self._estimates_current(strat, "local")
                api_ok = self._healthy["api"] is not False or self._estimates_current(strat, "api")
                if local_ok and not api_ok:
                    value = hi
                elif api_ok and not local_ok:
                    value = lo
            step = strat.max_step[pref]
            out[pref] = _clip(value, prev - step, prev + step)
        return out

    def _estimates_current(self, strat: Strategy, track: str) -> bool:
        """True when an objective weighs ``track``'s failures itself: its estimates rest on this
        interval's calls, or they already say it fails."""
        est = self.estimator
        if est is None or (strat.objective is None and self.top.objective is None):
            return False  # rule-only: the health gate decides
        if est.interval_calls.get(track, 0.0) >= est.settings.min_calls:
            return True
        rate = est.pooled(track).success_rate
        return rate is not None and rate < ANSWERING_SHARE

    def _timeouts(self, strat: Strategy, values: SignalValues) -> Dict[str, float]:
        t = strat.timeouts
        floors = self._timeout_floors(strat, values)
        out = {}
        for path in TIMEOUT_PATHS:
            latency = values.get(t.latency_signal, {"path": path})
            base = latency * t.latency_factor if latency is not None else t.base_seconds[path]
            # The base timeout: routers multiply it by the timeout_multiplier of
            # the query's class (preferences.md), so per-class multipliers work.
            base = _clip(base, t.min_seconds, t.max_seconds)
            out[path] = round(max(base, floors.get(path, 0.0)), 3)
        return out

    def _timeout_floors(self, strat: Strategy, values: SignalValues) -> Dict[str, float]:
        """Per track, the least timeout while the track is not congested: ``target_floor`` x the target.

        A path's timeout follows its p99 latency, which is that of the classes it
        mostly serves: a slower class is cut at a timeout it would have met, and
        its fallback costs an API call for an answer already late (beyond the
        target, the objective's within-target term is lost either way). A timeout
        pays for itself by shedding load from a queue or leaving a stuck track,
        so the floor holds only while the local track does not queue (the
        estimator's wait under a tenth of the target, the server not full) and
        while the API does not time out (under 2% of its calls).
        """
        t, est = strat.timeouts, self.estimator
        target = values.get("latency_target_seconds", {})
        if (t.target_floor <= 0 or strat.objective is None or est is None or target is None
                or not math.isfinite(target) or target <= 0):
            return {}
        floor = min(t.target_floor * target, TIMEOUT_FLOOR_MAX_SECONDS)
        floors = {}
        if est.local_wait < 0.1 * target and not est.server_full:
            floors["local"] = floor
        api_timeouts = values.get("timeout_ratio", {"path": "api"})
        if api_timeouts is None or api_timeouts < 0.02:
            floors["api"] = floor
        return floors
