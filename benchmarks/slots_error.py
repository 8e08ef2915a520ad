#!/usr/bin/env python3
"""How far the adaptive estimator's local slots are from the ones the plan needs, cycle by cycle.

    python benchmarks/slots_error.py --random 20 --seed 147 --seed 148 --jobs 2
    python benchmarks/slots_error.py --scenario random_162_009 --cycles     # and its cycles
    python benchmarks/slots_error.py --random 2 --quick                     # a smoke run, not figures

The plan loads local with each class's arrivals times the estimator's
service times, and needs beside them one number: how much of that load
local carries. Told that number every cycle (``adaptation_noise.py
--tell-local-model effective-own``: the server's slots counted in calls
alone, ``slots / (1 + contention x (slots - 1))``, times the arrival-weighted
ratio of the estimator's service times to a call alone's) the adaptive
strategy gains +0.05% to +0.12% of ``J``; told it within about a fifth
either way (``--tell-slots-error 0.2``) it keeps most of that, within
about two fifths none (``docs/benchmarks.md``, twenty-ninth session).

This script runs ``strategy:adaptive`` on each scenario (the bench's
routing draw) and, after every estimator update once local has answered,
reads the estimator's slots against that number: the log of their ratio.
It reports, over the cycles of all runs, the ratio's percentiles and the
log's mean and standard deviation; between the scenarios (the standard
deviation of each run's median log) and within a run (the median of each
run's standard deviation); and the ratio in the cycles where local's
queue was not empty. A candidate estimator is held against the figures
here before its paired run: with errors like today's (about a third
between scenarios) the told number keeps nothing.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import _common
from adaptation_noise import effective_own_slots

from dualtrack.adapter.estimator import Estimator
from dualtrack.bench.adaptation import QUICK_TIME_SCALE
from dualtrack.simulation import Simulation

# One cycle: (seconds into the run, the estimator's slots, the slots the plan needs, local queued)
Cycle = Tuple[float, float, float, bool]


def _run(job: Tuple[str, bool]) -> Tuple[str, List[Cycle]]:
    name, quick = job
    scenario = _common.scenario_for(name)
    if quick:
        scenario = scenario.time_scaled(QUICK_TIME_SCALE)
    sim = Simulation(scenario, "strategy:adaptive")
    cycles: List[Cycle] = []
    original = Estimator.update

    def update(estimator: Estimator, values: Any, interval_seconds: float) -> Dict[str, str]:
        events = original(estimator, values, interval_seconds)
        needed = effective_own_slots(estimator, sim)
        if needed is not None and estimator.slots is not None and estimator.slots > 0:
            cycles.append((sim.now, float(estimator.slots), needed, sim.local.queued > 0))
        return events

    with _common.replaced(Estimator, "update", update):
        sim.run()
    return name, cycles


def _percentile(sorted_values: List[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def summarize(runs: Dict[str, List[Cycle]]) -> Dict[str, Any]:
    """The figures of the module's docstring, from each run's cycles (runs without any left out)."""
    logs = {name: [math.log(slots / needed) for _, slots, needed, _ in cycles] for name, cycles in runs.items()
            if cycles}
    every = sorted(x for values in logs.values() for x in values)
    queued = sorted(math.log(slots / needed) for cycles in runs.values() for _, slots, needed, q in cycles if q)
    medians = {name: statistics.median(values) for name, values in logs.items()}
    within = [statistics.pstdev(values) for values in logs.values() if len(values) > 1]
    out: Dict[str, Any] = {"runs": len(logs), "cycles": len(every)}
    if every:
        out.update({
            "ratio_percentiles": {f"p{int(q * 100)}": math.exp(_percentile(every, q))
                                  for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
            "log_mean": statistics.fmean(every), "log_sd": statistics.pstdev(every),
            "log_sd_between_runs": statistics.pstdev(medians.values()) if len(medians) > 1 else 0.0,
            "log_sd_within_run_median": statistics.median(within) if within else 0.0,
            "queued_cycles": len(queued),
            "queued_ratio_median": math.exp(statistics.median(queued)) if queued else None,
            "run_median_ratio": {name: math.exp(m) for name, m in sorted(medians.items())},
        })
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="See the module's docstring (this file) for what the figures mean.")
    _common.add_generated_options(parser)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help=f"scenarios at {QUICK_TIME_SCALE:g}x their length (a smoke run, not figures)")
    parser.add_argument("--cycles", action="store_true", help="also print each run's cycles")
    parser.add_argument("--json", metavar="FILE", help="also write the figures (and every cycle) as JSON")
    args = parser.parse_args(argv)
    if args.random < 1 or args.jobs < 1:
        parser.error("--random and --jobs must be at least 1")
    names = _common.scenario_names(args)
    for name in names:
        try:
            _common.scenario_for(name)
        except (OSError, ValueError) as err:
            parser.error(f"--scenario {name}: {err}")
    info = _common.announce(f"slots error: strategy:adaptive, {len(names)} scenarios")
    started = time.perf_counter()
    runs = dict(_common.run_each(_run, [(name, args.quick) for name in names], args.jobs))
    wall = time.perf_counter() - started
    if args.cycles:
        for name, cycles in runs.items():
            print(f"\n{name}: t, the estimator's slots, the slots the plan needs (effective, in its units), ratio")
            for t, slots, needed, queued in cycles:
                print(f"  {t:7.0f}  {slots:6.1f}  {needed:6.1f}  {slots / needed:5.2f}{'  queued' if queued else ''}")
    figures = summarize(runs)
    print(f"\n{figures['cycles']} cycles of {figures['runs']} runs (cycles once local has answered)")
    if figures["cycles"]:
        p = figures["ratio_percentiles"]
        print("the estimator's slots over the ones the plan needs: "
              + ", ".join(f"{k} {v:.2f}" for k, v in p.items()))
        print(f"log of that ratio: mean {figures['log_mean']:+.2f}, sd {figures['log_sd']:.2f} "
              f"(between runs' medians {figures['log_sd_between_runs']:.2f}, "
              f"within a run {figures['log_sd_within_run_median']:.2f}, median of the runs)")
        q = figures["queued_ratio_median"]
        print(f"with local's queue not empty: {figures['queued_cycles']} cycles"
              + (f", median ratio {q:.2f}" if q is not None else ""))
        print("each run's median ratio: " + ", ".join(f"{n} {r:.2f}" for n, r in
                                                      sorted(figures["run_median_ratio"].items(), key=lambda x: x[1])))
    print(f"({len(names)} runs in {wall:.0f} s with {args.jobs} jobs)")
    if args.json:
        _common.write_json(args.json, {"machine": info, "scenarios": names, "quick": args.quick,
                                       "wall_seconds": wall, "summary": figures,
                                       "cycles": {n: [list(c) for c in cs] for n, cs in runs.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
