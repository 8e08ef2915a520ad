"""Objective-driven routing: the split of each query class that maximizes what the strategy optimizes.

A strategy's ``objective:`` declares the weights of the objective's terms —
the same terms the adaptation benchmark scores policies by
(:mod:`dualtrack.objective`):

    useful          answers at or above the quality floor
    within_target   answers within the latency target
    quality         mean answer quality
    savings         1 - cost / what the same queries would cost on the API
    compliance      time with no resource or budget constraint violated

From the estimator's evidence the expected contribution of one query of
class ``c`` sent first to track ``t`` (the router falls back to the other
track ``o`` once on a failure) is::

    first(t)  = P(success) * (w_useful * P(useful) + w_within * P(within) + w_quality * quality)
                - w_savings * cost per call / mean all-API cost per query
    value(t)  = first(t) + P(fast failure) * first(o) + P(timeout) * first(o, never within target)

The split maximizes ``sum over c of rate(c) * (x_c * value(local) + (1 - x_c) * value(api))``
subject to the local track's capacity (``sum rate(c) * x_c * base service time(c)``
within ``utilization`` of the estimated capacity, in Erlangs) and the API
budget (spend under ``budget_margin`` of ``max_cost_per_hour``): the
compliance term, kept as constraints. Each class keeps at least ``probe`` of
its traffic on the track it would not choose, so that a recovery shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..objective import OBJECTIVE, TERMS
from .estimator import Estimator, Tally


@dataclass(frozen=True)
class ObjectiveSpec:
    """What a strategy optimizes, and how carefully."""

    weights: Mapping[str, float] = field(default_factory=OBJECTIVE.as_dict)
    probe: float = 0.03  # least share of each class on the track it would not choose
    probe_calls: float = 2.0  # calls per interval the probes aim at, for a recovery to show
    probe_max: float = 0.1  # most share of a class spent probing
    probe_budget: float = 0.05  # most share of all traffic spent probing
    utilization: float = 0.9  # of the local capacity estimate the split may plan to use
    budget_margin: float = 0.9  # of max_cost_per_hour the split may plan to spend
    decay: float = 0.7  # weight of older evidence per interval (the estimator's)


@dataclass
class Valuation:
    """Expected value of one query of a class on each track, and what it was computed from."""

    query_class: str
    value: Dict[str, float]  # track -> expected contribution per query (fallback included)
    parts: Dict[str, Dict[str, float]]  # track -> the estimates behind it
    known: bool  # both tracks have evidence


def _first_try(parts: Mapping[str, float], w: Mapping[str, float], cost_norm: float, *, late: bool) -> float:
    within = 0.0 if late else parts["within"]
    value = parts["success"] * (w["useful"] * parts["useful"] + w["within_target"] * within
                                + w["quality"] * parts["quality"])
    if cost_norm > 0:
        value -= w["savings"] * parts["cost"] / cost_norm
    return value


def _parts(tally: Tally, prior: Optional[Tally]) -> Optional[Dict[str, float]]:
    """The estimates of one track for one class; the track's pooled figures fill gaps."""
    def pick(name: str, default: float) -> float:
        own = getattr(tally, name)
        if own is not None:
            return float(own)
        pooled = getattr(prior, name) if prior is not None else None
        return float(pooled) if pooled is not None else default

    if tally.calls <= 0 and (prior is None or prior.calls <= 0):
        return None
    success = pick("success_rate", 1.0)
    failures = tally.calls - tally.successes
    timeout_share = tally.timeouts / failures if failures > 0 else 0.0
    return {
        "success": success,
        "timeout_share": timeout_share,
        "within": pick("within_rate", 1.0),
        "useful": pick("useful_rate", 1.0),
        "quality": pick("quality", 0.0),
        "cost": pick("cost_per_call", 0.0),
        "latency": pick("mean_latency", 0.0),
        "calls": tally.calls,
    }


def value_queries(estimator: Estimator, spec: ObjectiveSpec) -> Tuple[List[Valuation], float]:
    """Every class's valuation, and the mean all-API cost per query used to scale savings."""
    w = spec.weights
    pooled = {t: estimator.pooled(t) for t in ("local", "api")}
    arrivals = estimator.arrivals
    total = sum(arrivals.values())
    # What a query costs on the API, per class: per successful call (failures are not billed).
    api_cost: Dict[str, float] = {}
    for c in estimator.classes:
        api = estimator.tally("api", c)
        if api.successes > 0:
            api_cost[c] = api.cost / api.successes
    cost_norm = 0.0
    if total > 0 and api_cost:
        known = {c: api_cost[c] for c in api_cost}
        mean_known = sum(known.values()) / len(known)
        cost_norm = sum(arrivals.get(c, 0.0) * known.get(c, mean_known) for c in estimator.classes) / total
    out = []
    for c in estimator.classes:
        parts = {t: _parts(estimator.tally(t, c), pooled[t]) for t in ("local", "api")}
        value: Dict[str, float] = {}
        for t, other in (("local", "api"), ("api", "local")):
            p, o = parts[t], parts[other]
            if p is None:
                continue
            v = _first_try(p, w, cost_norm, late=False)
            if o is not None:
                fail = 1.0 - p["success"]
                v += fail * (1.0 - p["timeout_share"]) * _first_try(o, w, cost_norm, late=False)
                v += fail * p["timeout_share"] * _first_try(o, w, cost_norm, late=True)
            value[t] = v
        out.append(Valuation(c, value, {t: p for t, p in parts.items() if p is not None},
                             known=len(value) == 2))
    return out, cost_norm


@dataclass
class Split:
    """The chosen local share per class, and why."""

    shares: Dict[str, float]
    reasons: List[str]
    capacity_bound: bool = False
    budget_bound: bool = False
    wanted_load: Optional[float] = None  # local Erlangs the split would use without the capacity bound


def probe_shares(arrivals: Mapping[str, float], spec: ObjectiveSpec, interval_seconds: float) -> Dict[str, float]:
    """Each class's probe share: enough calls per interval on the track it would not
    choose for a change to show, within the per-class and overall budgets."""
    out = {}
    for c, rate in arrivals.items():
        per_interval = rate * interval_seconds
        wanted = spec.probe_calls / per_interval if per_interval > 0 else spec.probe_max
        out[c] = min(max(wanted, spec.probe), spec.probe_max)
    total = sum(arrivals.values())
    spent = sum(arrivals[c] * out[c] for c in out)
    if total > 0 and spent > spec.probe_budget * total:
        scale = spec.probe_budget * total / spent
        out = {c: max(spec.probe, v * scale) for c, v in out.items()}
    return out


def choose_split(estimator: Estimator, spec: ObjectiveSpec, *, budget_per_hour: Optional[float] = None,
                 current: Optional[Mapping[str, float]] = None, interval_seconds: float = 30.0) -> Split:
    """Each class's local share, maximizing the objective under the capacity and budget bounds."""
    valuations, cost_norm = value_queries(estimator, spec)
    arrivals = estimator.arrivals
    probes = probe_shares(arrivals, spec, interval_seconds)
    service = estimator.base_service
    capacity = estimator.local_capacity()
    reasons: List[str] = []
    shares: Dict[str, float] = {}
    gains: Dict[str, float] = {}
    for v in valuations:
        if not v.known:
            # One track has no evidence yet: keep a balanced split until it has.
            shares[v.query_class] = (current or {}).get(v.query_class, 0.5)
            reasons.append(f"{v.query_class}: not enough evidence on both tracks yet")
            continue
        c = v.query_class
        gains[c] = v.value["local"] - v.value["api"]
        shares[c] = 1.0 - probes.get(c, spec.probe) if gains[c] > 0 else probes.get(c, spec.probe)
    # The local capacity: fill it with the classes that gain most per unit of it.
    load = {c: arrivals.get(c, 0.0) * service.get(c, 0.0) for c in gains}
    wanted = sum(load[c] * shares[c] for c in gains)
    split = Split(shares, reasons, wanted_load=wanted)
    if capacity is not None and wanted > spec.utilization * capacity:
        split.capacity_bound = True
        probe = {c: probes.get(c, spec.probe) for c in gains}
        room = spec.utilization * capacity - sum(load[c] * probe[c] for c in gains)
        order = sorted((c for c in gains if gains[c] > 0),
                       key=lambda c: gains[c] / service[c] if service.get(c) else math.inf, reverse=True)
        for c in gains:
            shares[c] = probe[c]
        for c in order:
            need = load[c] * (1.0 - 2 * probe[c])
            if need <= 0:
                shares[c] = 1.0 - probe[c]
                continue
            take = min(1.0, max(0.0, room) / need)
            shares[c] = probe[c] + take * (1.0 - 2 * probe[c])
            room -= take * need
    # The API budget: spend per hour of the split must stay under the margin.
    if budget_per_hour is not None and budget_per_hour > 0:
        spend = {c: arrivals.get(c, 0.0) * 3600.0 * (estimator.tally("api", c).cost_per_call or 0.0) for c in gains}
        planned = sum(spend[c] * (1.0 - shares[c]) for c in gains)
        limit = spec.budget_margin * budget_per_hour
        if planned > limit:
            split.budget_bound = True
            # Move the classes that lose least per dollar saved to local first.
            order = sorted((c for c in gains if spend[c] > 0 and shares[c] < 1.0 - probes.get(c, spec.probe)),
                           key=lambda c: -gains[c] / spend[c])
            for c in order:
                if planned <= limit:
                    break
                movable = spend[c] * (1.0 - probes.get(c, spec.probe) - shares[c])
                take = min(movable, planned - limit)
                shares[c] += take / spend[c]
                planned -= take
    for v in valuations:
        c = v.query_class
        if c in gains:
            lv, av = v.value["local"], v.value["api"]
            reasons.append(f"{c}: local {lv:.3f} vs api {av:.3f} expected per query -> local share {shares[c]:.2f}")
    if split.capacity_bound:
        reasons.append(f"local capacity bound: {spec.utilization:.0%} of {capacity:.1f} busy slots "
                       f"(the split would use {wanted:.1f})")
    if split.budget_bound:
        reasons.append(f"API budget bound: spend kept under {spec.budget_margin:.0%} of ${budget_per_hour:g}/h")
    return split


def interval_signals_present(names: Sequence[str]) -> bool:
    return all(n.startswith("interval_") for n in names)


__all__ = ["ObjectiveSpec", "Split", "TERMS", "Valuation", "choose_split", "value_queries"]
