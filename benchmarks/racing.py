"""Would racing pay? Each query class of a scenario raced on both tracks, against the hindsight split.

    dualtrack bench adaptation --random 20 --seeds 1,3 --jobs 2 --json results.json
    python benchmarks/racing.py results.json --jobs 2

The adaptive strategy never races (``no_racing`` in rules/adaptive.yaml): a
raced query runs on both tracks at once and the first answer wins, so it
pays the API and takes a local slot for one answer, and the objective does
not price that. Before pricing it, this asks whether it could ever be worth
it where it would help most: for each scenario of a bench JSON, the
scenario's best fixed per-class split in hindsight (``perclass_hindsight``)
is run again, then once with each class raced instead (every query of it on
both tracks, the other classes as the split sends them; the router's
defaults: 30 s timeouts, the loser cancelled when the winner answers, its
tokens so far paid). Same queries and draws as the bench's run of the split.

A class raced that beats the split is a case the objective would have to
find; the count of them, and by how much, is the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import announce, replaced, run_each, scenario_for, write_json  # noqa: E402

from dualtrack.router.policy import RoutePlan  # noqa: E402
from dualtrack.simulation import Simulation  # noqa: E402
from dualtrack.simulation.planners import PerClassStaticPlanner, perclass_policy  # noqa: E402
from dualtrack.vocabulary import TRACKS  # noqa: E402


def racing_plan(raced: Set[str]) -> Any:
    """A :class:`PerClassStaticPlanner` ``plan`` that races the queries of the classes in ``raced``."""
    split_plan = PerClassStaticPlanner.plan

    def plan(self: PerClassStaticPlanner, request: Any) -> RoutePlan:
        spec = request.spec
        if spec.query_class not in raced:
            return split_plan(self, request)
        return RoutePlan(path="parallel", tracks=TRACKS, fallback=None, timeouts_seconds=self.timeouts,
                         quality_threshold=0.0, preempt=False, query_class=spec.query_class,
                         complexity=spec.complexity, recommendation={})

    return plan


def run_split(name: str, split: Mapping[str, float], raced: Set[str]) -> Dict[str, Any]:
    """J and the paths of the split with ``raced`` classes on both tracks."""
    scenario = scenario_for(name)
    with replaced(PerClassStaticPlanner, "plan", racing_plan(raced)):
        summary = Simulation(scenario, perclass_policy(split), seed=scenario.seed).run().summary
    return {"objective": summary["objective"], "paths": dict(summary["paths"])}


def one(job: Tuple[str, Dict[str, float]]) -> Dict[str, Any]:
    """The hindsight split of one scenario, and it with each class raced."""
    name, split = job
    out: Dict[str, Any] = {"scenario": name, "split": split, "hindsight": run_split(name, split, set())["objective"]}
    out["raced"] = {c: run_split(name, split, {c}) for c in split}
    return out


def splits_of(results: Mapping[str, Any], path: str) -> List[Tuple[str, Dict[str, float]]]:
    """(scenario, hindsight split) of each scenario of a bench JSON; ValueError naming what is missing."""
    scenarios = results.get("scenarios") if isinstance(results, dict) else None
    if not isinstance(scenarios, dict) or not scenarios:
        raise ValueError(f"{path}: not a `dualtrack bench adaptation --json` file (no scenarios)")
    out = []
    for name, data in scenarios.items():
        split = (data.get("hindsight") or {}).get("split") if isinstance(data, dict) else None
        if not isinstance(split, dict):
            raise ValueError(f"{path}: scenario {name} has no hindsight split (run the bench with perclass_hindsight)")
        out.append((name, {c: float(v) for c, v in split.items()}))
    return out


def summarize(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """How many scenarios a raced class beats the split in, by how much, and the median change."""
    best = []
    for r in rows:
        h = r["hindsight"]
        change = {c: 100.0 * (v["objective"] - h) / h for c, v in r["raced"].items()}
        top = max(change, key=lambda c: change[c])
        best.append((r["scenario"], top, change[top], change))
    beats = [b for b in best if b[2] > 0]
    every = sorted(v for b in best for v in b[3].values())
    return {"scenarios": len(rows), "raced_classes": len(every), "beats_split": len(beats),
            "beats_split_by_more_than_0_1_percent": sum(b[2] > 0.1 for b in beats),
            "best": max(best, key=lambda b: b[2])[:3] if best else None,
            "median_change_percent": every[len(every) // 2] if every else None,
            "winners": [b[:3] for b in beats]}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="See the module's docstring (this file) for what is measured.")
    parser.add_argument("results", help="a JSON written by `dualtrack bench adaptation --json` (with its hindsight "
                                        "splits)")
    parser.add_argument("--scenario", action="append", metavar="NAME", help="only this scenario (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="scenarios in parallel (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    try:
        with open(args.results, encoding="utf-8") as fh:
            jobs = splits_of(json.load(fh), args.results)
    except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        print(f"racing.py: {err}", file=sys.stderr)
        return 2
    if args.scenario:
        jobs = [j for j in jobs if j[0] in set(args.scenario)]
    info = announce("dualtrack racing benchmark: each class raced on both tracks, against the hindsight split")
    started = time.perf_counter()
    rows = run_each(one, jobs, args.jobs)
    for r in rows:
        h = r["hindsight"]
        changes = "  ".join(f"{c} raced {100.0 * (v['objective'] - h) / h:+.2f}%" for c, v in r["raced"].items())
        print(f"{r['scenario']:<16} split J {h:.4f}  {changes}")
    figures = summarize(rows)
    print(f"a raced class beats the hindsight split in {figures['beats_split']} of {figures['scenarios']} scenarios "
          f"({figures['beats_split_by_more_than_0_1_percent']} by more than 0.1%); median change of a raced class "
          f"{figures['median_change_percent']:+.2f}% ({time.perf_counter() - started:.0f} s)" if rows else
          "no scenarios")
    for name, c, gain in figures["winners"]:
        print(f"  {name}: {c} raced {gain:+.2f}%")
    if args.json:
        write_json(args.json, {"benchmark": "racing", "machine": info, "results": args.results,
                               "summary": figures, "runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
