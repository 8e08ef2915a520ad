#!/usr/bin/env python3
"""One scenario, cycle by cycle: what the adaptive plan chose, what it believed, and what it got.

    python benchmarks/trace_adaptation.py random_76_016                        # a generated scenario
    python benchmarks/trace_adaptation.py api_outage --reasons                 # a shipped one, with the reasons
    python benchmarks/trace_adaptation.py random_75_019 --from 1110 --to 1530 \\
        --compare perclass:short=1,medium=0,long=0                             # against a fixed split

The bench says *that* ``strategy:adaptive`` is behind a fixed split in a
scenario; this says *where*. It runs the scenario once with
``strategy:adaptive`` (the scenario's own seed: the bench's draw) and prints

1. **per cycle**: each query class's local share as the plan chose it (and,
   under it, ``applied:`` the shares the router applied over the next
   interval where they were 0.1 or more away: an immediate override, such
   as a failing track or memory over its limit; ``fired:`` the rules that
   fired beside the objective), the changes the estimator detected, and what the plan worked from: the local
   slots it inferred, the capacity seen (Erlangs), the busy slots at which
   memory reaches its limit, the local load it planned (busy slots at base
   service times), each class's base service time on local and its arrival
   rate, and ``waiting``: the calls the simulated local server held waiting
   for a slot at the cycle (the truth, not an estimate: a plan that loads
   local past what it carries shows here first); ``--reasons`` adds the
   plan's reasons (the per-class valuations, the bounds that held);
2. **per window** (``--from``/``--to``, seconds): for each query class and
   the track that answered (``-``: none did), the queries, their useful,
   within-target and quality rates, their cost per query against the run's
   mean all-API cost per query, and ``value``, a query's share of ``J``'s
   query terms (the weights of ``dualtrack.objective``: useful, within
   target and quality, less savings' weight times that cost ratio), and in
   each policy's header the window's mean value per query beside the
   whole run's ``J`` (compliance is the run's only: not in the window's);
   for adaptive and for each ``--compare`` policy (any bench policy name:
   ``all_api``, ``perclass:short=1,medium=0,long=0``, ``strategy:balanced``),
   run on the same queries.

A generated scenario is named as the bench names it, ``random_<seed>_<index>``
(``dualtrack bench adaptation --random N --seeds S``); anything else is a
shipped scenario's name or a scenario file. A trace is one routing draw:
read a large difference, not a small one (``adaptation_noise.py`` measures
what chance moves).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import _common
from _common import scenario_for
from adaptation_noise import local_model_told

import dualtrack.adapter.engine as engine
from dualtrack.objective import OBJECTIVE
from dualtrack.simulation import Simulation, SimulationResult
from dualtrack.simulation.scenario import Scenario

ADAPTIVE = "strategy:adaptive"
#: Rules that fire every cycle of ``adaptive``: the trace names only the others.
ROUTINE_RULES = ("objective", "no_racing")
#: A class's applied local share this far from the plan's is printed beside it.
APPLIED_GAP = 0.1


@contextmanager
def started_at(shares: Mapping[str, float]) -> Iterator[None]:
    """While it lasts, every rule engine made starts each query class at the local share ``shares``
    gives it instead of the strategy's starting preferences (a diagnosis, not a setting: what the
    first minutes of learning cost, given a start that already knows the answer)."""
    original = engine.RuleEngine.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        for c, share in shares.items():
            if c in self.class_prefs:
                self.class_prefs[c]["local_bias"] = float(share)

    with _common.replaced(engine.RuleEngine, "__init__", init):
        yield


def trace(scenario: Scenario, rules: Optional[str] = None, *, start: Optional[Mapping[str, float]] = None,
          tell: Optional[str] = None) -> Tuple[SimulationResult, List[Dict[str, Any]]]:
    """Run ``strategy:adaptive`` on ``scenario``, keeping every request and, per cycle, the plan's
    split and the estimates it was chosen from. Two diagnoses: ``start``, each class's local share to
    start from (:func:`started_at`); ``tell``, the simulator's own local model given to the estimator
    every cycle (``adaptation_noise.local_model_told``: both, slots or service)."""
    cycles: List[Dict[str, Any]] = []
    original = engine.choose_split

    def recorded(estimator: Any, spec: Any, **kwargs: Any) -> Any:
        split = original(estimator, spec, **kwargs)
        cycles.append({
            "shares": dict(split.shares), "reasons": list(split.reasons), "changed": dict(kwargs.get("changed") or {}),
            "slots": estimator.slots, "capacity": estimator.capacity, "memory_slots": estimator.memory_slots,
            "planned_load": estimator.planned_load, "base_service": dict(estimator.base_service),
            "arrivals": dict(estimator.arrivals),
            "preferred": dict(split.preferred),
            "expected": {c: dict(v) for c, v in split.expected.items()},
        })
        return split

    with ExitStack() as stack:
        stack.enter_context(_common.replaced(engine, "choose_split", recorded))
        if start is not None:
            stack.enter_context(started_at(start))
        sim = Simulation(scenario, ADAPTIVE, rules_path=rules, keep_requests=True)
        if tell is not None:
            stack.enter_context(local_model_told(sim, tell))
        result = sim.run()
    rows = {round(float(row["t"]), 3): row for row in result.series}
    for i, cycle in enumerate(cycles):
        cycle["t"] = t = round((i + 1) * scenario.adaptation_interval, 3)
        row = rows.get(t) or {}
        cycle["fired"] = [f for f in row.get("fired", []) if f not in ROUTINE_RULES]
        cycle["waiting"] = row.get("local_queue")
        # What the router applied in the interval after the cycle (overrides included).
        applied = ((rows.get(round(t + scenario.adaptation_interval, 3)) or {}).get("applied") or {}).get("by_class")
        cycle["applied"] = {c: v["local_bias"] for c, v in applied.items()} if applied else None
    return result, cycles


def _number(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def cycle_lines(cycles: Sequence[Mapping[str, Any]], start: float, end: float, reasons: bool) -> List[str]:
    lines = []
    for c in cycles:
        if not start <= c["t"] <= end:
            continue
        shares = " ".join(f"{k}={v:.2f}" for k, v in c["shares"].items())
        changed = ",".join(f"{k}:{v}" for k, v in c["changed"].items()) or "-"
        base = ",".join(f"{k}={v:.1f}" for k, v in c["base_service"].items()) or "-"
        arrivals = ",".join(f"{k}={v:.2f}" for k, v in c["arrivals"].items()) or "-"
        lines.append(f"t={c['t']:7.0f}  {shares}  changed={changed}  slots={_number(c['slots'])} "
                     f"capacity={_number(c['capacity'])} memory_slots={_number(c['memory_slots'])} "
                     f"planned={_number(c['planned_load'])} waiting={_number(c.get('waiting'), 0)}  "
                     f"base_s={base}  arrivals/s={arrivals}")
        applied = c.get("applied") or {}
        if any(abs(applied.get(k, v) - v) > APPLIED_GAP for k, v in c["shares"].items()):
            # The router did not follow the plan (an immediate override: a failing track, memory, ...).
            lines.append("           applied: " + " ".join(f"{k}={v:.2f}" for k, v in applied.items()))
        if c.get("fired"):
            lines.append("           fired: " + ", ".join(c["fired"]))
        if reasons:
            lines.extend(f"           {r}" for r in c["reasons"])
    return lines


Table = Dict[Tuple[str, str], Dict[str, float]]


def useful_and_within(scenario: Scenario) -> Callable[[Any], Tuple[bool, bool]]:
    """A query's (useful, within target) as ``J`` counts them: answered at or above the scenario's
    quality floor, answered within its latency target."""
    floor = float(scenario.constraints.get("min_quality_score", 0.0))
    target = float(scenario.constraints["target_latency_ms"]) / 1000.0

    def terms(q: Any) -> Tuple[bool, bool]:
        ok = q.outcome == "success"
        return ok and (q.quality or 0.0) >= floor, ok and q.latency <= target
    return terms


def window_table(result: SimulationResult, scenario: Scenario, start: float, end: float) -> Table:
    """Per (query class, answering track): the window's queries and their rates (see the module doc)."""
    requests = result.requests or []
    terms = useful_and_within(scenario)
    all_api = float(result.summary.get("all_api_cost") or 0.0)
    mean_api = all_api / len(requests) if requests else 0.0
    sums: Dict[Tuple[str, str], Dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for q in requests:
        if not start <= q.arrival < end:
            continue
        useful, within = terms(q)
        row = sums[(q.spec.query_class, q.answered_by or "-")]
        row["queries"] += 1
        row["useful"] += useful
        row["within"] += within
        row["quality"] += q.quality or 0.0
        row["cost"] += q.cost
    out = {}
    for key, row in sums.items():
        n = row["queries"]
        cost_ratio = row["cost"] / n / mean_api if mean_api > 0 else 0.0
        rates = {"queries": n, "useful": row["useful"] / n, "within": row["within"] / n,
                 "quality": row["quality"] / n, "cost_ratio": cost_ratio}
        rates["value"] = value_of(rates["useful"], rates["within"], rates["quality"], cost_ratio)
        out[key] = rates
    return out


def value_of(useful: float, within: float, quality: float, cost_ratio: float) -> float:
    """A query's share of ``J``'s query terms (or the mean of several's, from their rates): useful,
    within target and quality at their weights, less savings' weight times its cost over the run's
    mean all-API cost per query."""
    w = OBJECTIVE
    return w.useful * useful + w.within_target * within + w.quality * quality - w.savings * cost_ratio


def window_value(table: Table) -> Optional[float]:
    """The window's mean ``value`` per query, over every class and track (None for an empty window)."""
    n = sum(r["queries"] for r in table.values())
    return sum(r["queries"] * r["value"] for r in table.values()) / n if n else None


def window_lines(policy: str, result: SimulationResult, scenario: Scenario, start: float, end: float) -> List[str]:
    table = window_table(result, scenario, start, end)
    value = window_value(table)
    # J is the whole run's (compliance included); the window's own figure is its value per query.
    lines = [f"{policy}: J {result.summary['objective']:.4f} (the run)"
             + (f"; this window {value:+.4f} a query" if value is not None else "")]
    for (qc, track), r in sorted(table.items()):
        lines.append(f"    {qc:>10s} on {track:5s}  queries {r['queries']:6.0f}  useful {r['useful']:.3f}  "
                     f"within {r['within']:.3f}  quality {r['quality']:.3f}  cost/mean API {r['cost_ratio']:.2f}  "
                     f"value {r['value']:+.3f}")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See the module's docstring (this file) for what each column means.")
    parser.add_argument("scenario", help="random_<seed>_<index> (a generated scenario), a shipped scenario's name, "
                                         "or a scenario file")
    parser.add_argument("--from", dest="start", type=float, default=0.0, help="window start, seconds (default 0)")
    parser.add_argument("--to", dest="end", type=float, default=None, help="window end, seconds (default: the end)")
    parser.add_argument("--compare", action="append", default=[], metavar="POLICY",
                        help="a policy to run on the same queries for the window table (repeatable)")
    parser.add_argument("--reasons", action="store_true", help="print the plan's reasons under each cycle")
    parser.add_argument("--rules", help="strategy rules folder (default: the bundled rules)")
    args = parser.parse_args(argv)
    try:
        scenario = scenario_for(args.scenario)
    except (OSError, ValueError) as exc:
        parser.error(f"scenario {args.scenario!r}: {exc}")
    end = scenario.duration if args.end is None else args.end
    if end <= args.start:
        parser.error(f"--to ({end:g}) must be after --from ({args.start:g})")
    print(f"{scenario.name}: {scenario.description}")
    for event in scenario.timeline:
        print(f"  t={event.at:g}s  {event.label}")
    result, cycles = trace(scenario, args.rules)
    print(f"\ncycles from {args.start:g} s to {end:g} s (each class's local share, as planned):")
    print("\n".join(cycle_lines(cycles, args.start, end, args.reasons)) or "  (none)")
    print(f"\nqueries arriving from {args.start:g} s to {end:g} s, by class and the track that answered:")
    print("\n".join(window_lines(ADAPTIVE, result, scenario, args.start, end)))
    for policy in args.compare:
        try:
            other = Simulation(scenario, policy, rules_path=args.rules, keep_requests=True).run()
        except ValueError as exc:
            parser.error(f"--compare {policy!r}: {exc}")
        print("\n".join(window_lines(policy, other, scenario, args.start, end)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
