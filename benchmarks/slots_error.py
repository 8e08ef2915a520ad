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

``--server-signals`` runs the simulator with its local server's gauges
(queue depth, running calls, declared slots, as a vLLM-like server's
scrape sees them; the random suite runs without) and reads one candidate
beside the estimator's slots (:class:`ServerLine`): the server's declared
slots ``d`` with a decayed line of calls in the system over load carried
against calls in the system, fitted below the knee, as ``d / (a + b (d -
1))``.
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

from dualtrack.adapter.estimator import Estimator, Tally, _DecayedLine
from dualtrack.bench.adaptation import QUICK_TIME_SCALE
from dualtrack.simulation import Simulation

# One cycle: (seconds into the run, the estimator's slots, the slots the plan needs, local queued,
# the server-line candidate or None)
Cycle = Tuple[float, float, float, bool, Optional[float]]
#: The estimates a cycle holds, by their place in it.
ESTIMATES = {"slots": 1, "server_line": 4}


class ServerLine:
    """Local's effective slots from the server's declared slots and the batching curve below the knee.

    A server whose calls each slow by ``1 + c`` per other call in service carries, with ``N`` calls in
    it and none waiting, a load of ``X = g N / (1 + c N)`` in units of ``g`` times a call alone's
    service time: ``N / X = a + b N`` with ``a = 1 / g``, ``b = c / g``. Fitted on the intervals whose
    last queue reading was empty (and with at least 90% of local's calls answered: failures' latencies
    are not service), the full server's ``d`` slots carry ``d / (a + b (d - 1))``.
    """

    def __init__(self, decay: float = 0.95) -> None:
        self.line = _DecayedLine(decay)

    def add(self, carried: float, in_system: float, answered: float, queue: Optional[float]) -> None:
        """One interval: the load carried (calls x the estimator's service times / interval), the calls
        in the system (Little's law: latency x calls / interval), the share answered, the server's queue."""
        if carried > 0.2 and answered >= 0.9 and queue is not None and queue < 1.0:
            self.line.add(in_system, in_system / carried)

    def value(self, declared: Optional[float]) -> Optional[float]:
        fit = self.line.fit()
        if fit is None or declared is None or declared < 1:
            return None
        a, b = fit
        denominator = a + b * (declared - 1.0)
        return declared / denominator if denominator > 0 else None


def _run(job: Tuple[str, bool, bool]) -> Tuple[str, List[Cycle]]:
    name, quick, server_signals = job
    scenario = _common.scenario_for(name)
    if quick:
        scenario = scenario.time_scaled(QUICK_TIME_SCALE)
    sim = Simulation(scenario, "strategy:adaptive", server_signals=server_signals)
    cycles: List[Cycle] = []
    original = Estimator.update
    candidate = ServerLine()

    def update(estimator: Estimator, values: Any, interval_seconds: float) -> Dict[str, str]:
        events = original(estimator, values, interval_seconds)
        needed = effective_own_slots(estimator, sim)
        if server_signals and interval_seconds > 0:
            local = [Tally.from_signals(values, "local", c) for c in estimator.classes]
            base = estimator.base_service
            carried = sum(t.latency_count * base.get(c, 0.0) for c, t in zip(estimator.classes, local, strict=True))
            calls = sum(t.calls for t in local)
            candidate.add(carried / interval_seconds, sum(t.latency_sum for t in local) / interval_seconds,
                          sum(t.successes for t in local) / calls if calls >= 4 else 0.0,
                          values.get("local_server_queue_depth", {}))
        if needed is not None and estimator.slots is not None and estimator.slots > 0:
            server = candidate.value(values.get("local_server_slots", {})) if server_signals else None
            cycles.append((sim.now, float(estimator.slots), needed, sim.local.queued > 0, server))
        return events

    with _common.replaced(Estimator, "update", update):
        sim.run()
    return name, cycles


def _percentile(sorted_values: List[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def summarize(runs: Dict[str, List[Cycle]], estimate: str = "slots") -> Dict[str, Any]:
    """The figures of the module's docstring for one of :data:`ESTIMATES`, from each run's cycles
    (runs and cycles without that estimate left out)."""
    i = ESTIMATES[estimate]
    logs = {name: [math.log(c[i] / c[2]) for c in cycles if c[i]] for name, cycles in runs.items()}
    logs = {name: values for name, values in logs.items() if values}
    every = sorted(x for values in logs.values() for x in values)
    queued = sorted(math.log(c[i] / c[2]) for cycles in runs.values() for c in cycles if c[3] and c[i])
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
    parser.add_argument("--server-signals", action="store_true",
                        help="the local server's gauges on (declared slots, queue), and the server-line "
                             "candidate read beside the estimator's slots")
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
    runs = dict(_common.run_each(_run, [(name, args.quick, args.server_signals) for name in names], args.jobs))
    wall = time.perf_counter() - started
    if args.cycles:
        for name, cycles in runs.items():
            print(f"\n{name}: t, the estimator's slots, the slots the plan needs (effective, in its units), ratio"
                  + (", the server-line candidate" if args.server_signals else ""))
            for t, slots, needed, queued, server in cycles:
                line = f"  {t:7.0f}  {slots:6.1f}  {needed:6.1f}  {slots / needed:5.2f}"
                if args.server_signals:
                    line += f"  {server:6.1f}" if server else "       -"
                print(line + ("  queued" if queued else ""))
    figures = {name: summarize(runs, name) for name in (ESTIMATES if args.server_signals else ("slots",))}
    for name, summary in figures.items():
        _report(name, summary)
    print(f"({len(names)} runs in {wall:.0f} s with {args.jobs} jobs)")
    if args.json:
        _common.write_json(args.json, {"machine": info, "scenarios": names, "quick": args.quick,
                                       "server_signals": args.server_signals, "wall_seconds": wall,
                                       "summary": figures["slots"], "summaries": figures,
                                       "cycles": {n: [list(c) for c in cs] for n, cs in runs.items()}})
    return 0


def _report(estimate: str, figures: Dict[str, Any]) -> None:
    what = "the estimator's slots" if estimate == "slots" else f"the {estimate.replace('_', '-')} candidate"
    print(f"\n{what}: {figures['cycles']} cycles of {figures['runs']} runs (cycles once local has answered)")
    if figures["cycles"]:
        p = figures["ratio_percentiles"]
        print(f"{what} over the slots the plan needs: " + ", ".join(f"{k} {v:.2f}" for k, v in p.items()))
        print(f"log of that ratio: mean {figures['log_mean']:+.2f}, sd {figures['log_sd']:.2f} "
              f"(between runs' medians {figures['log_sd_between_runs']:.2f}, "
              f"within a run {figures['log_sd_within_run_median']:.2f}, median of the runs)")
        q = figures["queued_ratio_median"]
        print(f"with local's queue not empty: {figures['queued_cycles']} cycles"
              + (f", median ratio {q:.2f}" if q is not None else ""))
        print("each run's median ratio: " + ", ".join(f"{n} {r:.2f}" for n, r in
                                                      sorted(figures["run_median_ratio"].items(), key=lambda x: x[1])))


if __name__ == "__main__":
    sys.exit(main())
