"""The adaptation benchmark's judgement: per scenario, the ranking and the adaptive strategy's margins;
over the suite, the targets and whether they are met.

All functions here are pure: they read finished runs (JSON-ready dicts,
``policies[<policy>]["summary"]["objective"]``) and compute figures, so
tests can feed them hand-made results.

The comparisons (``docs/benchmarks.md``):

- **best simple static**: the best of ``all_local``, ``all_api``,
  ``fixed_50_50`` and ``perclass_steady`` (a per-class split tuned on the
  steady scenario) -- what an operator gets without adaptation;
- **perclass_hindsight**: the best per-class split for this very scenario,
  chosen after the fact -- no router can pick it in advance, so matching it
  is a strong result;
- **oracle**: the best of three upper references
  (:mod:`dualtrack.simulation.reference`); **capture** is the share of the
  oracle's lead over ``perclass_hindsight`` the adaptive strategy recovers:
  ``(adaptive - hindsight) / (oracle - hindsight)``, where the oracle leads by
  at least :data:`MIN_ORACLE_LEAD`.

Targets. Shipped suite: the adaptive strategy at least matches
``perclass_hindsight`` in every scenario with regime changes and is within
0.3% of it in the others (``steady``); its applied preferences react to each
onset within 1 adaptation interval and to each recovery within 2. Random
suite: it at least matches the best simple static in 95% of the scenarios
and ``perclass_hindsight`` in 75%, never falls more than 1% below
``perclass_hindsight``, captures a median 40% of the oracle's lead, and
reacts to 90% of the events within 2 intervals (applied).
"""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..simulation import ORACLE, STATIC_POLICIES
from .jobs import PERCLASS_HINDSIGHT, PERCLASS_STEADY

ADAPTIVE = "strategy:adaptive"
#: The policies an operator could run without adaptation: the best of them is the "best simple static".
SIMPLE_STATICS = STATIC_POLICIES + (PERCLASS_STEADY,)
#: Old target, kept in the results: the adaptive strategy within this share of the oracle.
ORACLE_GAP_LIMIT = 0.15
#: Old target, kept in the results: the published preferences react within this many intervals.
REACTION_LIMIT_INTERVALS = 2

# shipped suite
STEADY_TOLERANCE = 0.003
APPLIED_LIMITS = {"onset": 1, "recovery": 2}
# random suite
RANDOM_TARGETS: Dict[str, float] = {
    "share_at_least_best_simple_static": 0.95,
    "share_at_least_hindsight": 0.75,
    "worst_gap_below_hindsight": 0.01,
    "median_oracle_lead_captured": 0.40,
    "share_events_reacted_within_2": 0.90,
}
RANDOM_REACTION_LIMIT = 2
#: The capture of the oracle's lead is measured where the oracle leads ``perclass_hindsight`` by at least
#: this much ``J``: a ratio over a lead of a few millionths says nothing (-13,000% for a 0.0001 lead).
MIN_ORACLE_LEAD = 0.001
_PLURAL = {"onset": "onsets", "recovery": "recoveries"}


def _applied_reactions(run: Mapping[str, Any]) -> List[Dict[str, Any]]:
    return [r for r in run.get("reactions", []) if r.get("applicable")]


def analyse_scenario(info: Dict[str, Any], runs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """One scenario's entry: ``info`` (description, events, ...) plus rankings and the adaptive strategy's figures.

    ``runs``: policy -> its JSON entry (``summary``, ``reactions``, ...).
    """
    scores = {p: float(r["summary"]["objective"]) for p, r in runs.items()}
    ranking = sorted(scores, key=lambda p: (-scores[p], p))
    statics = [p for p in SIMPLE_STATICS if p in runs]
    best_static = max(statics, key=lambda p: (scores[p], p)) if statics else None
    out: Dict[str, Any] = dict(info)
    out.update({"ranking": ranking, "best_static": best_static, "policies": {}})
    oracle = scores.get(ORACLE)
    for policy in ranking:
        entry = dict(runs[policy])
        entry["rank"] = ranking.index(policy) + 1
        if oracle is not None and oracle > 0:
            entry["oracle_gap"] = round((oracle - scores[policy]) / oracle, 6)
        reactions = _applied_reactions(entry)
        if reactions:
            intervals = [r["published_intervals"] for r in reactions]
            entry["reaction_max_intervals"] = None if any(i is None for i in intervals) else max(intervals)
        out["policies"][policy] = entry
    if ADAPTIVE in runs:
        out["adaptive"] = adaptive_figures(scores, runs[ADAPTIVE], best_static, regime_changes=info["regime_changes"])
    return out


def adaptive_figures(scores: Mapping[str, float], adaptive_run: Mapping[str, Any], best_static: Optional[str], *,
                     regime_changes: int) -> Dict[str, Any]:
    """The adaptive strategy against the baselines and the oracle, and its reactions, in one scenario."""
    a = scores[ADAPTIVE]
    target: Dict[str, Any] = {"objective": a}
    if best_static is not None:
        target["best_static"] = best_static
        target["best_static_objective"] = scores[best_static]
        target["margin_over_best_static"] = round(a - scores[best_static], 6)
        target["beats_best_static"] = a > scores[best_static]
        target["at_least_best_static"] = a >= scores[best_static]
    oracle = scores.get(ORACLE)
    hindsight = scores.get(PERCLASS_HINDSIGHT)
    if oracle is not None:
        target["oracle_objective"] = oracle
        target["oracle_gap"] = round((oracle - a) / oracle, 6) if oracle > 0 else None
        target["within_oracle_limit"] = target["oracle_gap"] is not None and target["oracle_gap"] <= ORACLE_GAP_LIMIT
        if best_static is not None and oracle > scores[best_static]:
            target["oracle_lead_captured"] = round((a - scores[best_static]) / (oracle - scores[best_static]), 4)
    if hindsight is not None:
        target["hindsight_objective"] = hindsight
        target["margin_over_hindsight"] = round(a - hindsight, 6)
        target["gap_below_hindsight"] = round((hindsight - a) / hindsight, 6) if hindsight > 0 else None
        target["at_least_hindsight"] = a >= hindsight
        target["within_steady_tolerance"] = a >= hindsight * (1.0 - STEADY_TOLERANCE)
        target["hindsight_lead_captured"] = capture(a, hindsight, oracle)
    reactions = _applied_reactions(adaptive_run)
    target["reactions"] = [{"t": r["t"], "label": r["label"], "expect": r["expect"], "kind": r.get("kind", "onset"),
                            "intervals": r["published_intervals"], "applied_intervals": r["intervals"],
                            "material": r.get("material")}
                           for r in reactions]
    target["reacts_in_time"] = all(r["published_intervals"] is not None
                                   and r["published_intervals"] <= REACTION_LIMIT_INTERVALS for r in reactions)
    target["reactions_by_kind"] = reactions_by_kind(target["reactions"])
    target["applied_reacts_in_time"] = all(k["in_time"] == k["events"] for k in target["reactions_by_kind"].values())
    target["applies"] = regime_changes > 0
    return target


def flat(hindsight: float, oracle: float) -> bool:
    """Nothing to adapt to: the oracle leads ``perclass_hindsight`` by less than :data:`MIN_ORACLE_LEAD`,
    so the best fixed split is as good as foresight (and a capture of the lead says nothing)."""
    return oracle - hindsight < MIN_ORACLE_LEAD


def capture(adaptive: float, hindsight: Optional[float], oracle: Optional[float]) -> Optional[float]:
    """The share of the oracle's lead over ``perclass_hindsight`` the adaptive strategy captures;
    ``None`` when the oracle leads by less than :data:`MIN_ORACLE_LEAD` (or is the hindsight split itself)."""
    if hindsight is None or oracle is None or flat(hindsight, oracle):
        return None
    return round((adaptive - hindsight) / (oracle - hindsight), 4)


def reactions_by_kind(reactions: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per kind (onset, recovery): events, how many the applied preferences answered within the kind's
    limit (:data:`APPLIED_LIMITS`) and within 2 intervals, and the intervals themselves."""
    out: Dict[str, Dict[str, Any]] = {}
    for kind, limit in APPLIED_LIMITS.items():
        mine = [r for r in reactions if r.get("kind", "onset") == kind]
        applied = [r["applied_intervals"] for r in mine]
        out[kind] = {
            "events": len(mine), "limit_intervals": limit,
            "in_time": sum(1 for i in applied if i is not None and i <= limit),
            "within_2": sum(1 for i in applied if i is not None and i <= RANDOM_REACTION_LIMIT),
            "applied_intervals": applied,
        }
    return out


def _share(flags: Sequence[bool]) -> Optional[float]:
    return round(sum(1 for f in flags if f) / len(flags), 4) if flags else None


def overall(scenarios: Mapping[str, Mapping[str, Any]], suite: str) -> Dict[str, Any]:
    """The suite's summary: the old per-scenario flags, the shipped or random targets, and the misses."""
    with_adaptive = {n: s["adaptive"] for n, s in scenarios.items() if "adaptive" in s}
    checked = {n: t for n, t in with_adaptive.items() if t["applies"]}
    out: Dict[str, Any] = {
        "scenarios_with_regime_changes": sorted(checked),
        "beats_best_static_everywhere": all(t.get("beats_best_static", False) for t in checked.values()),
        "within_oracle_limit_everywhere": all(t.get("within_oracle_limit", False) for t in checked.values()),
        "reacts_in_time_everywhere": all(t.get("reacts_in_time", False) for t in checked.values()),
        "suite": suite,
    }
    kinds = {kind: {"events": sum(t["reactions_by_kind"][kind]["events"] for t in with_adaptive.values()),
                    "in_time": sum(t["reactions_by_kind"][kind]["in_time"] for t in with_adaptive.values()),
                    "within_2": sum(t["reactions_by_kind"][kind]["within_2"] for t in with_adaptive.values()),
                    "limit_intervals": APPLIED_LIMITS[kind]}
             for kind in APPLIED_LIMITS}
    out["reactions_by_kind"] = kinds
    out["material_events"] = material_events(with_adaptive)
    if suite == "random":
        out["random"] = random_targets(with_adaptive)
        out["by_oracle_lead"] = by_oracle_lead(with_adaptive)
        misses = [f"{name}: {t['text']}" for name, t in out["random"].items() if t["met"] is False]
    else:
        out["shipped"] = shipped_targets(with_adaptive)
        misses = out["shipped"]["misses"]
    out["misses"] = sorted(misses)
    return out


def material_events(adaptive: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """Reactions to the events the best split in hindsight moved for (``material``), not a target:
    the events' ``expect`` is the generator's guess, and an event the hindsight schedule did not
    move for is one the objective is right to leave alone (``adaptation.material``)."""
    reactions = [r for t in adaptive.values() for r in t["reactions"]]
    judged = [r for r in reactions if r.get("material") is not None]
    chosen = [r for r in judged if r["material"]]
    within = [r for r in chosen if r["applied_intervals"] is not None
              and r["applied_intervals"] <= RANDOM_REACTION_LIMIT]
    share = len(within) / len(chosen) if chosen else None
    return {"events": len(reactions), "judged": len(judged), "material": len(chosen), "within_2": len(within),
            "share_within_2": share}


def by_oracle_lead(adaptive: Mapping[str, Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Not a target: the scenarios split by what there was to adapt to, and the adaptive strategy
    against ``perclass_hindsight`` in each part.

    ``flat``: the oracle, which knows the whole timeline, leads the hindsight split by less than
    :data:`MIN_ORACLE_LEAD` -- the best fixed split is as good as foresight there, so a strategy that
    learns can only pay for learning (its first interval, its moves on thin evidence).
    ``leading``: the oracle leads by more: there is something to adapt to. ``margin``: adaptive's
    relative margin over the split (negative below it), as a median and a mean."""
    parts: Dict[str, List[Mapping[str, Any]]] = {"flat": [], "leading": []}
    for t in adaptive.values():
        oracle, hindsight = t.get("oracle_objective"), t.get("hindsight_objective")
        if oracle is None or hindsight is None or t.get("gap_below_hindsight") is None:
            continue
        parts["flat" if flat(hindsight, oracle) else "leading"].append(t)
    out: Dict[str, Dict[str, Any]] = {}
    for name, mine in parts.items():
        margins = [-t["gap_below_hindsight"] for t in mine]
        out[name] = {
            "scenarios": len(mine),
            "at_least_hindsight": sum(1 for t in mine if t.get("at_least_hindsight")),
            "median_margin": round(statistics.median(margins), 6) if margins else None,
            "mean_margin": round(statistics.fmean(margins), 6) if margins else None,
        }
    return out


def shipped_targets(adaptive: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """The shipped suite's targets, per scenario."""
    misses: List[str] = []
    changing = {n: t for n, t in adaptive.items() if t["applies"]}
    still = {n: t for n, t in adaptive.items() if not t["applies"]}
    for name, t in sorted(changing.items()):
        if not t.get("at_least_hindsight", False):
            gap = t.get("gap_below_hindsight")
            misses.append(f"{name}: below perclass_hindsight" + (f" by {gap:.2%}" if gap is not None else ""))
    for name, t in sorted(still.items()):
        if not t.get("within_steady_tolerance", False):
            gap = t.get("gap_below_hindsight")
            misses.append(f"{name}: more than {STEADY_TOLERANCE:.1%} below perclass_hindsight"
                          + (f" ({gap:.2%})" if gap is not None else ""))
    for name, t in sorted(adaptive.items()):
        for kind, k in t["reactions_by_kind"].items():
            if k["in_time"] < k["events"]:
                late = k["events"] - k["in_time"]
                misses.append(f"{name}: {late} of {k['events']} {_PLURAL[kind]} not reacted to within "
                              f"{k['limit_intervals']} interval{'s' if k['limit_intervals'] > 1 else ''} (applied)")
    return {
        "at_least_hindsight": {n: t.get("at_least_hindsight") for n, t in sorted(changing.items())},
        "within_steady_tolerance": {n: t.get("within_steady_tolerance") for n, t in sorted(still.items())},
        "steady_tolerance": STEADY_TOLERANCE,
        "applied_limits_intervals": dict(APPLIED_LIMITS),
        "applied_reacts_in_time": {n: t["applied_reacts_in_time"] for n, t in sorted(adaptive.items())},
        "misses": misses,
    }


def random_targets(adaptive: Mapping[str, Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The random suite's five shares and extremes, each with its target and whether it is met
    (``met`` is ``None`` when nothing could be measured)."""
    at_static = [t["at_least_best_static"] for t in adaptive.values() if "at_least_best_static" in t]
    at_hind = [t["at_least_hindsight"] for t in adaptive.values() if "at_least_hindsight" in t]
    gaps = [t["gap_below_hindsight"] for t in adaptive.values() if t.get("gap_below_hindsight") is not None]
    captures = [t["hindsight_lead_captured"] for t in adaptive.values() if t.get("hindsight_lead_captured") is not None]
    events = [r["applied_intervals"] for t in adaptive.values() for r in t["reactions"]]
    reacted = [i is not None and i <= RANDOM_REACTION_LIMIT for i in events]
    worst = max(gaps) if gaps else None  # the largest relative gap below the hindsight split
    median = round(statistics.median(captures), 4) if captures else None
    figures = {
        "share_at_least_best_simple_static": (_share(at_static), len(at_static)),
        "share_at_least_hindsight": (_share(at_hind), len(at_hind)),
        "worst_gap_below_hindsight": (worst, len(gaps)),
        "median_oracle_lead_captured": (median, len(captures)),
        "share_events_reacted_within_2": (_share(reacted), len(reacted)),
    }
    out: Dict[str, Dict[str, Any]] = {}
    for name, (value, n) in figures.items():
        goal = RANDOM_TARGETS[name]
        met = None if value is None else (value <= goal if name == "worst_gap_below_hindsight" else value >= goal)
        out[name] = {"value": value, "target": goal, "over": n, "met": met, "text": _random_text(name, value, goal, n)}
    return out


def _random_text(name: str, value: Optional[float], goal: float, n: int) -> str:
    shown = "-" if value is None else f"{value:.0%}" if name != "worst_gap_below_hindsight" else f"{value:.2%}"
    return {
        "share_at_least_best_simple_static": f"adaptive >= best simple static in {shown} of {n} scenarios "
                                             f"(target {goal:.0%})",
        "share_at_least_hindsight": f"adaptive >= perclass_hindsight in {shown} of {n} scenarios (target {goal:.0%})",
        "worst_gap_below_hindsight": f"worst gap below perclass_hindsight {shown} (target at most {goal:.0%})",
        "median_oracle_lead_captured": f"median capture of the oracle's lead over perclass_hindsight {shown}, over "
                                       f"{n} scenarios where the oracle leads by {MIN_ORACLE_LEAD:g} or more "
                                       f"(target {goal:.0%})",
        "share_events_reacted_within_2": f"events reacted to within {RANDOM_REACTION_LIMIT} intervals (applied) "
                                         f"{shown} of {n} (target {goal:.0%})",
    }[name]


__all__ = [
    "ADAPTIVE", "APPLIED_LIMITS", "MIN_ORACLE_LEAD", "ORACLE_GAP_LIMIT", "RANDOM_TARGETS", "REACTION_LIMIT_INTERVALS",
    "SIMPLE_STATICS", "STEADY_TOLERANCE", "adaptive_figures", "analyse_scenario", "by_oracle_lead", "capture", "flat",
    "material_events", "overall", "random_targets", "reactions_by_kind", "shipped_targets",
]
