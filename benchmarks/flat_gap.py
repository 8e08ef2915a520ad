#!/usr/bin/env python3
"""Where the adaptive strategy's gap to the best fixed split falls, where there is nothing to adapt to.

    python benchmarks/flat_gap.py --bench results.json --jobs 2
    python benchmarks/flat_gap.py --bench results.json --scenario random_146_006
    python benchmarks/flat_gap.py --bench results.json --leading --json gap.json
    python benchmarks/flat_gap.py --bench results.json --start-at-split --tell-local-model   # diagnoses

A *flat* scenario is one where the oracle leads ``perclass_hindsight`` by less
than 0.001 (``dualtrack.bench.verdicts.flat``): the best fixed split, chosen
in hindsight, is as good as foresight. There ``strategy:adaptive`` can only
lose, and it does, by about 0.4% of ``J`` (docs/benchmarks.md). For each
flat scenario of a bench JSON (``dualtrack bench adaptation --json``; with
``--leading`` the others instead) this script runs ``strategy:adaptive`` and
the scenario's hindsight split on the same queries and routing draw (the
bench's), and splits the gap, in percent of the split's ``J``, three ways:

1. **by term**: the weight of each of ``J``'s terms times the difference of
   the two runs' term (useful, within target, quality, savings, compliance);
   the five add up to the gap;
2. **by interval**: the difference of the queries' value (``J``'s query
   terms, as ``trace_adaptation.py`` counts them) per interval of the
   adaptation, by what the router applied in it against the split: *agree*
   (every class within 0.06 of the split's share), *opposite* (a class the
   split puts all on one track has more than half on the other), *partial*
   (the rest); the first five minutes apart (``first 5 min``). Compliance is
   the run's only, so these add up to the gap less the compliance term
   (within a few hundredths: queries still unanswered at the end, and
   quality counted per query rather than per answer);
3. **by side**: in each cycle, each class that the split puts on one track
   (a share of 0.25 or less, or 0.75 or more) and the plan puts mostly on
   the other, and why: ``estimate`` (the plan's own valuation, local against
   API per query, prefers the other track), ``held`` (its valuation prefers
   the split's track, but the noise band holds it where it was), ``bound``
   (it preferred the split's track; a bound moved it: local load, memory,
   the battery, the budget, the API's rate limit); as shares of the cycles
   of those classes.

The scenarios on battery power (unplugged at any time) are counted apart in
the means: there the battery guard rail (``battery_horizon``) keeps local
load the benchmark's 30-40 minute runs do not need kept. One routing draw:
a scenario's figures are partly chance; read the means over many.

Two diagnoses take a part of the price away to show what is left:
``--start-at-split`` starts the adaptive run with each class at the split's
share instead of the strategy's starting preferences (what the first
minutes of learning cost), and ``--tell-local-model`` gives its estimator
the simulator's own local model every cycle, as ``plan_calibration.py``
does (what the estimate of local's slots and service times costs). Neither
is a setting a deployment could have.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import announce, hindsight_splits, run_each, scenario_for, write_json  # noqa: E402
from adaptation_noise import add_tell_option  # noqa: E402
from trace_adaptation import trace, useful_and_within, value_of  # noqa: E402

from dualtrack.bench.verdicts import MIN_ORACLE_LEAD  # noqa: E402
from dualtrack.objective import OBJECTIVE, TERMS  # noqa: E402
from dualtrack.simulation import Simulation, SimulationResult  # noqa: E402

#: A class the router applies within this of the split's share agrees with it.
AGREE = 0.06
#: The split puts a class on one track when its local share is at most this, or at least 1 minus it.
ONE_SIDE = 0.25
#: The first minutes of a run, counted apart (the strategy has no evidence yet).
WARM_UP_SECONDS = 300.0
SIDES = ("estimate", "held", "bound")


def by_term(adaptive: Mapping[str, Any], split: Mapping[str, Any]) -> Dict[str, float]:
    """Each term's part of the gap: its weight times the difference of the two summaries' term,
    in percent of the split's ``J`` (they add up to the gap of ``J``)."""
    a, s = OBJECTIVE.components(adaptive), OBJECTIVE.components(split)
    weights = OBJECTIVE.as_dict()
    base = float(split["objective"])
    return {t: 100.0 * weights[t] * (a[t] - s[t]) / base for t in TERMS}


def interval_values(result: SimulationResult, scenario: Any, interval: float) -> Dict[int, float]:
    """The queries' value (``J``'s query terms) summed per adaptation interval of their arrival."""
    requests = result.requests or []
    terms = useful_and_within(scenario)
    mean_api = float(result.summary.get("all_api_cost") or 0.0) / len(requests) if requests else 0.0
    out: Dict[int, float] = {}
    for q in requests:
        useful, within = terms(q)
        k = int(q.arrival // interval)
        out[k] = out.get(k, 0.0) + value_of(useful, within, q.quality or 0.0,
                                            q.cost / mean_api if mean_api > 0 else 0.0)
    return out


def interval_kind(applied: Mapping[str, float], split: Mapping[str, float]) -> str:
    """``agree``, ``partial`` or ``opposite``: the router's applied local shares against the split's."""
    kind = "agree"
    for c, x in applied.items():
        h = split.get(c)
        if h is None or abs(x - h) <= AGREE:
            continue
        if (h <= 0.0 or h >= 1.0) and abs(x - h) > 0.5:
            return "opposite"
        kind = "partial"
    return kind


def side_reason(split_share: float, cycle: Mapping[str, Any], c: str) -> Optional[str]:
    """Why the plan of ``cycle`` puts class ``c`` mostly on the other track than a split that puts it
    on one (see the module doc); None where it agrees or the split does not put it on one track."""
    on_local = split_share >= 1.0 - ONE_SIDE
    if not (on_local or split_share <= ONE_SIDE) or c not in cycle["shares"]:
        return None
    if (cycle["shares"][c] >= 0.5) == on_local:
        return None
    preferred, expected = cycle.get("preferred", {}), cycle.get("expected", {}).get(c, {})
    if c in preferred and (preferred[c] >= 0.5) == on_local:
        return "bound"
    if "local" in expected and "api" in expected and (expected["local"] > expected["api"]) == on_local:
        return "held"
    return "estimate"


def one(job: Tuple[str, str, Mapping[str, float], bool, Optional[str]]) -> Tuple[str, Dict[str, Any]]:
    """One scenario's three views of the gap between ``strategy:adaptive`` and the split ``policy``
    (the adaptive run started at the split, or told the local model, where the job asks)."""
    name, policy, split, start_at_split, tell = job
    scenario = scenario_for(name)
    adaptive, cycles = trace(scenario, start=split if start_at_split else None, tell=tell)
    fixed = Simulation(scenario, policy, seed=scenario.seed, keep_requests=True).run()
    base = float(fixed.summary["objective"])
    step = scenario.adaptation_interval
    va, vf = interval_values(adaptive, scenario, step), interval_values(fixed, scenario, step)
    kinds: Dict[int, str] = {}
    for row in adaptive.series:
        applied = (row.get("applied") or {}).get("by_class") or {}
        if applied:  # the row at t holds what was applied over the interval that ends at t
            kinds[int(round(float(row["t"]) / step)) - 1] = interval_kind(
                {c: float(v["local_bias"]) for c, v in applied.items()}, split)
    n = len(adaptive.requests or []) or 1
    intervals: Dict[str, float] = {}
    for k in set(va) | set(vf):
        kind = kinds.get(k, "agree")
        key = f"first 5 min: {kind}" if k * step < WARM_UP_SECONDS else kind
        intervals[key] = intervals.get(key, 0.0) + 100.0 * (va.get(k, 0.0) - vf.get(k, 0.0)) / n / base
    sides: Counter = Counter()
    for cycle in cycles:
        for c, h in split.items():
            reason = side_reason(h, cycle, c)
            if reason is not None:
                sides[reason] += 1
            elif c in cycle["shares"] and (h <= ONE_SIDE or h >= 1.0 - ONE_SIDE):
                sides["agree"] += 1
    return name, {"gap": 100.0 * (float(adaptive.summary["objective"]) - base) / base,
                  "terms": by_term(adaptive.summary, fixed.summary), "intervals": intervals,
                  "sides": dict(sides), "battery": on_battery(scenario)}


def on_battery(scenario: Any) -> bool:
    """Does the scenario's machine run on its battery at any time (unplugged at the start or later)?"""
    battery = scenario.params.get("battery")
    if battery is None:
        return False
    unplugged = [c for e in scenario.timeline for c in e.changes if c.path == "battery.plugged" and not c.value]
    return not battery.get("plugged", True) or bool(unplugged)


def summarize(runs: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """Means over the scenarios (all, on battery power, the rest): the gap, each term, each kind of
    interval; and the side counts added up, as shares of the cycles of one-track classes."""
    out: Dict[str, Any] = {}
    groups = {"all": list(runs), "battery": [n for n in runs if runs[n]["battery"]],
              "no battery": [n for n in runs if not runs[n]["battery"]]}
    for group, names in groups.items():
        if not names:
            continue
        kinds = sorted({k for n in names for k in runs[n]["intervals"]})
        sides: Counter = Counter()
        for n in names:
            sides.update(runs[n]["sides"])
        total = sum(sides.values())
        out[group] = {
            "scenarios": len(names),
            "gap": statistics.mean(runs[n]["gap"] for n in names),
            "median_gap": statistics.median(runs[n]["gap"] for n in names),
            "terms": {t: statistics.mean(runs[n]["terms"][t] for n in names) for t in TERMS},
            "intervals": {k: statistics.mean(runs[n]["intervals"].get(k, 0.0) for n in names) for k in kinds},
            "sides": {k: sides[k] / total for k in ("agree",) + SIDES} if total else {},
        }
    return out


def _line(figures: Mapping[str, float], keys: Sequence[str]) -> str:
    return "  ".join(f"{k} {figures.get(k, 0.0):+.3f}" for k in keys)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="See the module's docstring (this file) for each view.")
    parser.add_argument("--bench", metavar="RESULTS", required=True,
                        help="a bench JSON (dualtrack bench adaptation --json): its scenarios and hindsight splits")
    parser.add_argument("--leading", action="store_true",
                        help=f"the scenarios where the oracle leads the split by {MIN_ORACLE_LEAD:g} or more instead")
    parser.add_argument("--scenario", action="append", metavar="NAME", help="only this one of them (repeatable)")
    parser.add_argument("--start-at-split", action="store_true",
                        help="a diagnosis: the adaptive run starts each class at the split's share instead of "
                             "the strategy's starting preferences (what the start costs)")
    add_tell_option(parser, "a diagnosis, what the estimate of local's slots and service times costs")
    parser.add_argument("--jobs", type=int, default=1, help="scenarios in parallel (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    jobs = [(name, h["policy"], h["split"], args.start_at_split, args.tell_local_model)
            for name, h in hindsight_splits(parser, args.bench).items() if h["flat"] != args.leading]
    if args.scenario:
        unknown = sorted(set(args.scenario) - {job[0] for job in jobs})
        if unknown:
            parser.error(f"--scenario {', '.join(unknown)}: not among the bench's "
                         f"{'leading' if args.leading else 'flat'} scenarios")
        jobs = [j for j in jobs if j[0] in args.scenario]
    if not jobs:
        print("no such scenarios in the bench file")
        return 0
    diagnoses = (["started at the split"] if args.start_at_split else []) + (
        [f"the local model told ({args.tell_local_model})"] if args.tell_local_model else [])
    info = announce("dualtrack flat gap: strategy:adaptive against its scenario's hindsight split"
                    + (f" ({', '.join(diagnoses)})" if diagnoses else ""))
    started = time.perf_counter()
    runs = dict(run_each(one, jobs, args.jobs))
    wall = time.perf_counter() - started
    print(f"{len(runs)} {'leading' if args.leading else 'flat'} scenarios ({wall:.0f} s with {args.jobs} job(s)); "
          "percent of the split's J:")
    for name, r in runs.items():
        top = sorted(r["intervals"].items(), key=lambda kv: kv[1])[:2]
        print(f"  {name}{' (battery)' if r['battery'] else ''}: gap {r['gap']:+.2f}  terms "
              + _line(r["terms"], TERMS) + "  worst intervals " + ", ".join(f"{k} {v:+.2f}" for k, v in top))
    figures = summarize(runs)
    for group, g in figures.items():
        print(f"{group}, {g['scenarios']} scenarios: gap mean {g['gap']:+.3f}, median {g['median_gap']:+.3f}")
        print("  by term:     " + _line(g["terms"], TERMS))
        print("  by interval: " + _line(g["intervals"], list(g["intervals"])))
        if g["sides"]:
            print("  by side (cycles of one-track classes): "
                  + "  ".join(f"{k} {v:.1%}" for k, v in g["sides"].items()))
    if args.json:
        write_json(args.json, {"benchmark": "flat_gap", "machine": info, "bench": args.bench,
                               "leading": args.leading, "start_at_split": args.start_at_split,
                               "local_model_told": args.tell_local_model, "wall_seconds": wall,
                               "summary": figures, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
