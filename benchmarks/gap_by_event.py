#!/usr/bin/env python3
"""Where in a run adaptive loses to the hindsight split: its gap cut at the scenario's events.

    dualtrack bench adaptation --random 20 --seeds 89,90 --jobs 2 --json results.json
    python benchmarks/gap_by_event.py results.json                  # every scenario in it
    python benchmarks/gap_by_event.py results.json --per-scenario   # and each scenario's segments
    python benchmarks/gap_by_event.py results.json --scenario random_89_018
    python benchmarks/gap_by_event.py results.json --warm-up 120       # the first 2 minutes apart

The bench says how far ``strategy:adaptive`` is from ``perclass_hindsight``
over a whole run; this says in which stretch of the run. For each scenario
of a bench JSON (``--json`` of ``dualtrack bench adaptation``) it runs
adaptive and the scenario's hindsight split (read from the JSON) again on
the same queries (the scenario's own seed: the bench's draw), and cuts the
run at its events: the stretch before the first event (``start``), then
from each event to the next, each named by its event's label. A stretch's
share of the gap is the difference in ``J`` that the queries arriving in it
make, plus the compliance term of its seconds:

    useful and within-target: weight x (the stretch's useful / within answers) / the run's queries
    quality:                  weight x (the stretch's answers' quality) / the run's answers (J's mean)
    savings:                  -weight x (the stretch's cost) / the run's all-API cost
    compliance:               -weight x (the stretch's seconds with a constraint violated) / the run's length

The stretches add up to the whole gap, but for what ``J`` clamps (savings
at 0 when a run costs more than all-API) and for the compliance seconds of
an interval where two constraints were violated at different moments (the
series keeps the seconds per constraint, counted here as their largest):
the ``residual`` column says how much that left out.

Then, over all the scenarios, the stretches that follow each kind of event
(labels with their numbers as ``N``): their total share of the gap, as a
mean per scenario of the suite (so that the kinds add up
to the suite's mean gap), how much of it is the compliance term (seconds
with a constraint violated, against the queries' terms), how many there
were, and the worst. Last, the seconds each constraint was over its limit
(memory, GPU memory, the budget, the battery, ...), adaptive against the
hindsight split over all the scenarios, and the scenario where adaptive
spent the most seconds beyond the split: the compliance term says how much
of the gap is time over a limit, this says which limit. ``--warm-up SECONDS`` cuts the run's first seconds
from the start stretch (where no event comes first): the first decision
comes after one adaptation interval, and the estimates fill over a few
more. Figures are
differences of ``J`` times 100 ("points": -0.5 is 0.005 of ``J``), not
ratios, so that they add up.

``--set PATH=VALUE`` (repeatable) asks how much of the gap one mechanism
of the simulated world explains: the scenarios' starting parameter changed
(the timeline's dotted paths, validated as a scenario file's are; the
timeline's events still apply), the hindsight split is searched again on
them the bench's way (the JSON's split among the candidates), and adaptive
is held against that. Searched again, not kept: the split the JSON holds
was best in the unchanged world, and against it adaptive looks better than
it is (``--set local.thermal.threshold=1.0``, no thermal throttling until an
event sets it, read as half of the gap on seeds 127-128 against the kept
split, and as none of it against the split searched again).

A generated scenario is named as the bench names it, ``random_<seed>_<index>``;
a shipped one by its name. One routing draw: read a large figure, not a small
one (``adaptation_noise.py`` measures what chance moves).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import _common
import yaml
from _common import scenario_for
from trace_adaptation import ADAPTIVE, useful_and_within

from dualtrack.objective import OBJECTIVE
from dualtrack.simulation import Simulation, SimulationResult
from dualtrack.simulation.hindsight import SplitEvaluator, search_split
from dualtrack.simulation.planners import perclass_policy
from dualtrack.simulation.scenario import Scenario

HINDSIGHT = "perclass_hindsight"
START = "start (before any event)"


def kind(label: str) -> str:
    """An event's kind: its label with the numbers as ``N`` (``API prices x3.6`` -> ``API prices xN``)."""
    return re.sub(r"\d+(\.\d+)?", "N", label)


def warm_up_label(seconds: float) -> str:
    """The label of the run's first ``seconds``, cut from the start by ``--warm-up``."""
    return f"warm-up (the first {seconds:g} s)"


def stretches(scenario: Scenario, warm_up: float = 0.0) -> List[Tuple[str, float, float]]:
    """(label, start, end) of the run cut at its events; ``START`` before the first, and with
    ``warm_up`` its first seconds on their own (when no event comes before)."""
    cuts = [(START, 0.0)] + [(e.label, e.at) for e in scenario.timeline]
    if warm_up > 0 and all(e.at >= warm_up for e in scenario.timeline):
        cuts = [(warm_up_label(warm_up), 0.0), (START, warm_up)] + cuts[1:]
    ends = [at for _, at in cuts[1:]] + [scenario.duration + 1.0]
    return [(label, at, end) for (label, at), end in zip(cuts, ends, strict=True) if end > at]


def shares_of_j(result: SimulationResult, scenario: Scenario, warm_up: float = 0.0) -> List[float]:
    """Each stretch's part of ``J`` (see the module doc), in the order of :func:`stretches`."""
    queries = query_shares_of_j(result, scenario, warm_up)
    return [q + c for q, c in zip(queries, compliance_of_j(result, scenario, warm_up), strict=True)]


def _index(cuts: Sequence[Tuple[str, float, float]]) -> Callable[[float], int]:
    def index(t: float) -> int:
        for i, (_, start, end) in enumerate(cuts):
            if start <= t < end:
                return i
        return len(cuts) - 1
    return index


def compliance_of_j(result: SimulationResult, scenario: Scenario, warm_up: float = 0.0) -> List[float]:
    """Each stretch's compliance part of ``J``: minus the weight x its seconds with a constraint
    violated / the run's length."""
    cuts = stretches(scenario, warm_up)
    index = _index(cuts)
    out = [0.0] * len(cuts)
    duration = float(scenario.duration)
    for row in result.series:
        violated = max((row.get("violations") or {}).values(), default=0.0)
        if violated:
            # An interval's row is stamped at its end: its seconds belong to the stretch it ends in
            # (an interval an event cuts is counted whole on the later side).
            out[index(float(row["t"]) - 1e-9)] -= OBJECTIVE.compliance * float(violated) / duration
    return out


def query_shares_of_j(result: SimulationResult, scenario: Scenario, warm_up: float = 0.0) -> List[float]:
    """Each stretch's part of ``J`` from its queries (useful, within target, quality, savings)."""
    w = OBJECTIVE
    requests = result.requests or []
    terms = useful_and_within(scenario)
    summary = result.summary
    queries = max(1, len(requests))
    answers = max(1, sum(1 for q in requests if q.quality is not None))
    all_api = float(summary.get("all_api_cost") or 0.0)
    cuts = stretches(scenario, warm_up)
    index = _index(cuts)
    out = [0.0] * len(cuts)
    for q in requests:
        useful, within = terms(q)
        value = (w.useful * useful + w.within_target * within) / queries
        value += w.quality * (q.quality or 0.0) / answers
        if all_api > 0:
            value -= w.savings * q.cost / all_api
        out[index(q.arrival)] += value
    return out


def constant_part(result: SimulationResult) -> float:
    """What ``J`` holds beyond the stretches' parts: the savings and compliance terms' constant 1."""
    return OBJECTIVE.savings + OBJECTIVE.compliance if result.summary.get("all_api_cost") else OBJECTIVE.compliance


def gap_by_stretch(scenario: Scenario, split: Mapping[str, float],
                   rules: Optional[str] = None, warm_up: float = 0.0) -> Dict[str, Any]:
    """Adaptive against the fixed ``split`` on ``scenario``: each stretch's share of the gap, and
    of it the compliance term's."""
    adaptive = Simulation(scenario, ADAPTIVE, rules_path=rules, keep_requests=True).run()
    fixed = Simulation(scenario, perclass_policy(split), rules_path=rules, keep_requests=True).run()
    qa, qh = query_shares_of_j(adaptive, scenario, warm_up), query_shares_of_j(fixed, scenario, warm_up)
    ca, ch = compliance_of_j(adaptive, scenario, warm_up), compliance_of_j(fixed, scenario, warm_up)
    gap = adaptive.summary["objective"] - fixed.summary["objective"]
    compliance = [x - y for x, y in zip(ca, ch, strict=True)]
    parts = [x - y + held for x, y, held in zip(qa, qh, compliance, strict=True)]
    return {
        "scenario": scenario.name, "gap": gap,
        "violation_seconds": {"adaptive": dict(adaptive.summary.get("violation_by_constraint") or {}),
                              "fixed": dict(fixed.summary.get("violation_by_constraint") or {})},
        "stretches": [{"label": label, "kind": kind(label) if label != START else START, "from": start,
                       "to": min(end, scenario.duration), "gap": part, "compliance": held}
                      for (label, start, end), part, held
                      in zip(stretches(scenario, warm_up), parts, compliance, strict=True)],
        "residual": gap - sum(parts) - (constant_part(adaptive) - constant_part(fixed)),
    }


def _one(job: Tuple[str, Dict[str, float], Optional[str], float, Mapping[str, Any]]) -> Dict[str, Any]:
    name, split, rules, warm_up, changes = job
    scenario = scenario_for(name)
    if changes:
        # Another world, another best split: the JSON's, kept, would flatter adaptive.
        scenario = scenario.with_params(changes)
        split = search_split(SplitEvaluator(scenario), include=[split]).split
    row = gap_by_stretch(scenario, split, rules, warm_up)
    row["split"] = dict(split)
    return row


def parse_set(text: str) -> Tuple[str, Any]:
    """``PATH=VALUE`` of ``--set``: the value read as YAML (``1.0``, ``off``, ``null``)."""
    path, sep, value = text.partition("=")
    if not sep or not path.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected PATH=VALUE, like local.thermal.threshold=1.0")
    try:
        return path.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not a YAML scalar ({exc})") from exc


def by_kind(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The stretches of all the scenarios by the kind of event they follow: the total share of the
    gap as a mean per scenario, the count, the worst; the largest losses first."""
    kinds: Dict[str, List[Tuple[float, str]]] = defaultdict(list)
    held: Dict[str, float] = defaultdict(float)
    for row in rows:
        for s in row["stretches"]:
            kinds[s["kind"]].append((s["gap"], row["scenario"]))
            held[s["kind"]] += s.get("compliance", 0.0)
    n = max(1, len(rows))
    out = [{"kind": k, "mean_gap": sum(g for g, _ in v) / n, "mean_compliance": held[k] / n, "count": len(v),
            "worst": min(v)[0], "worst_scenario": min(v)[1]} for k, v in kinds.items()]
    return sorted(out, key=lambda r: r["mean_gap"])


def by_constraint(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Each constraint's seconds over its limit, adaptive's and the hindsight split's summed over the
    scenarios, and the scenario where adaptive spent the most beyond the split; the largest excess first."""
    totals: Dict[str, List[float]] = defaultdict(lambda: [0.0, 0.0])
    worst: Dict[str, Tuple[float, str]] = {}
    for row in rows:
        seconds = row.get("violation_seconds") or {}
        adaptive, fixed = seconds.get("adaptive") or {}, seconds.get("fixed") or {}
        for name in set(adaptive) | set(fixed):
            a, f = float(adaptive.get(name, 0.0)), float(fixed.get(name, 0.0))
            totals[name][0] += a
            totals[name][1] += f
            if name not in worst or a - f > worst[name][0]:
                worst[name] = (a - f, row["scenario"])
    out = [{"constraint": name, "adaptive": a, "fixed": f, "excess": a - f, "most": worst[name][1],
            "most_excess": worst[name][0]} for name, (a, f) in totals.items()]
    return sorted(out, key=lambda r: (-r["excess"], r["constraint"]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See the module's docstring (this file) for how a stretch's share "
                                            "is counted.")
    parser.add_argument("results",
                        help="a JSON written by `dualtrack bench adaptation --json` (with perclass_hindsight)")
    parser.add_argument("--scenario", action="append", default=[], metavar="NAME",
                        help="only this scenario of the JSON (repeatable)")
    parser.add_argument("--per-scenario", action="store_true", help="also print each scenario's stretches")
    parser.add_argument("--rules", help="strategy rules folder (default: the bundled rules)")
    parser.add_argument("--warm-up", type=float, default=0.0, metavar="SECONDS",
                        help="cut the run's first SECONDS from the start stretch (before the first decisions "
                             "and while the estimates fill; default 0: not cut)")
    parser.add_argument("--set", dest="changes", action="append", default=[], type=parse_set, metavar="PATH=VALUE",
                        help="run both policies with this starting parameter changed (repeatable; the "
                             "hindsight split is searched again), e.g. local.thermal.threshold=1.0 for no "
                             "thermal throttling")
    parser.add_argument("--jobs", type=int, default=1, help="scenarios in parallel (default 1)")
    parser.add_argument("--json", dest="out", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    try:
        with open(args.results, encoding="utf-8") as fh:
            results = json.load(fh)
        scenarios = results["scenarios"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.error(f"{args.results}: not a bench JSON with scenarios ({exc})")
    jobs = []
    for name in args.scenario or sorted(scenarios):
        entry = scenarios.get(name)
        split = (entry or {}).get("policies", {}).get(HINDSIGHT, {}).get("split")
        if not split:
            parser.error(f"{args.results}: no {HINDSIGHT} split for scenario {name!r}")
        jobs.append((name, split, args.rules, max(0.0, args.warm_up), dict(args.changes)))
    for name, *_ in jobs if args.changes else ():
        try:
            scenario_for(name).with_params(dict(args.changes))
        except ValueError as exc:  # ConfigError included: an unknown path or a value of the wrong kind
            parser.error(f"--set: {name}: {exc}")
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        rows = list(pool.map(_one, jobs))
    if args.per_scenario:
        for row in rows:
            print(f"{row['scenario']}: gap {100 * row['gap']:+.3f} points of J (residual {100 * row['residual']:+.3f})")
            for s in row["stretches"]:
                print(f"    {s['from']:7.0f}-{s['to']:<7.0f} {100 * s['gap']:+.3f} (compliance "
                      f"{100 * s['compliance']:+.3f})  {s['label']}")
    mean_gap = sum(r["gap"] for r in rows) / max(1, len(rows))
    if args.changes:
        print("\nwith " + ", ".join(f"{path}={value!r}" for path, value in args.changes)
              + " (both policies; the hindsight split searched again on the changed scenarios)")
    print(f"\n{len(rows)} scenarios, mean gap to {HINDSIGHT} {100 * mean_gap:+.3f} points of J (x100); "
          "by the stretch it fell in:")
    print(f"{'share of the mean gap':>22s}  {'of it compliance':>16s}  {'count':>5s}  {'kind of stretch':45s} worst")
    table = by_kind(rows)
    for r in table:
        print(f"{100 * r['mean_gap']:+22.3f}  {100 * r['mean_compliance']:+16.3f}  {r['count']:5d}  "
              f"{r['kind']:45s} {100 * r['worst']:+.2f} {r['worst_scenario']}")
    held = sum(r["mean_compliance"] for r in table)
    print(f"{100 * held:+22.3f}  of the mean gap is the compliance term (time with a constraint violated)")
    residual = max((abs(r["residual"]) for r in rows), default=0.0)
    print(f"(largest residual, what the stretches leave out: {100 * residual:.3f} points)")
    limits = by_constraint(rows)
    if limits:
        print(f"\nseconds over a limit, all {len(rows)} scenarios (a second over two limits counts under both):")
        print(f"{'constraint':>14s}  {'adaptive':>9s}  {HINDSIGHT:>18s}  {'excess':>8s}  most beyond the split")
        for r in limits:
            print(f"{r['constraint']:>14s}  {r['adaptive']:9.0f}  {r['fixed']:18.0f}  {r['excess']:+8.0f}  "
                  f"{r['most']} ({r['most_excess']:+.0f} s)")
    if args.out:
        _common.write_json(args.out, {"machine": _common.machine(), "scenarios": rows, "by_kind": table,
                                      "by_constraint": limits, "mean_gap": mean_gap,
                                      "changes": dict(args.changes)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
