"""What a restart of the embedded adapter costs, and what its learned state (a warm start) saves.

    python benchmarks/restart.py --random 20 --seed 1 --seed 3 --at 600 --at 1200 --jobs 2

Each scenario runs three times with ``strategy:adaptive`` on the same
queries, noise and failures (the simulator's common random numbers):

- **none**: no restart, the baseline of the same run;
- **cold**: at ``--at`` seconds the embedded adapter is built again without
  a state, as a process restart leaves it: the strategy's starting
  preferences, no estimates;
- **warm**: built again from the state file the first adapter wrote after
  each cycle (``adaptation_state_file``): its estimates, its last routing.

With ``--second-day RESULTS.json`` (a ``dualtrack bench adaptation --json``
file) it asks another question: how close does the adaptive strategy come to
the scenario's hindsight split once the start is paid? Each scenario runs
cold (as the bench does) and warm from the state of a first run's first
``min(600 s, first event)`` seconds: a deployment on its second day, which
knows the system's standing regime but not what will happen to it. Both are
held against the JSON's ``perclass_hindsight``.

Both restarts keep the optimizer's request windows (a real restart loses
them too; they are the same two minutes for both) and everything outside
the adapter. The figure is each restart's objective ``J`` over the whole run
against ``none``'s, in percent: the part before the restart is the same run,
so the difference is what the restart did. ``saved`` is the share of the
cold restart's mean loss the warm one does not lose. One routing draw per
scenario: after a restart the two runs' queries meet a different split, and
the difference of one scenario is partly chance (read the means over many).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import add_generated_options, announce, run_each, scenario_for, scenario_names, write_json  # noqa: E402

from dualtrack.adapter.embedded import AdaptiveOptimizer  # noqa: E402
from dualtrack.simulation import Simulation  # noqa: E402

VARIANTS = ("none", "cold", "warm")


def restart(sim: Simulation, state_file: Optional[str]) -> AdaptiveOptimizer:
    """Build the simulation's embedded adapter again, from ``state_file`` (None: cold), as a
    process restart would; the optimizer's windows and the simulated world go on."""
    facade = sim.optimizer
    old = facade.adaptive
    assert old is not None, "a strategy policy runs an embedded adapter"
    config = dataclasses.replace(facade.config, adaptation_state_file=state_file)
    source = old.source
    new = AdaptiveOptimizer(config, source.collector, facade.resource_monitor, clock=facade.clock,
                            strategies=old.strategies, in_flight=facade.in_flight_count,
                            local_server=source._local_server, calls_in_flight=facade.recorder.calls_in_flight)
    facade.adaptive = new
    facade.preference_source = new
    facade._signals = new.source
    return new


def one(job: Tuple[str, float]) -> Dict[str, Any]:
    """J of one scenario without a restart, and with a cold and a warm one at ``at`` seconds."""
    name, at = job
    scenario = scenario_for(name)
    out: Dict[str, Any] = {"scenario": name, "at": at}
    with tempfile.TemporaryDirectory(prefix="dualtrack-restart-") as folder:
        for variant in VARIANTS:
            path = os.path.join(folder, f"{variant}.json")  # each run starts cold, and writes its own
            sim = Simulation(scenario, "strategy:adaptive", seed=scenario.seed,
                             config_changes={"adaptation_state_file": path})
            if variant != "none" and at < scenario.duration:
                sim.run_until(at)
                new = restart(sim, path if variant == "warm" else None)
                if variant == "warm":
                    out["warm_load"] = new.state_load
            out[variant] = sim.run().summary["objective"]
    return out


def second_day(job: Tuple[str, float]) -> Dict[str, Any]:
    """One scenario cold and warm from its first minutes' state, against its hindsight split's ``J``."""
    name, hindsight = job
    scenario = scenario_for(name)
    learned_for = min([600.0] + [e.at for e in scenario.timeline])
    out: Dict[str, Any] = {"scenario": name, "hindsight": hindsight, "learned_for": learned_for}
    with tempfile.TemporaryDirectory(prefix="dualtrack-second-day-") as folder:
        path = os.path.join(folder, "state.json")
        first = Simulation(scenario, "strategy:adaptive", seed=scenario.seed,
                           config_changes={"adaptation_state_file": path})
        first.run_until(learned_for)
        out["cold"] = Simulation(scenario, "strategy:adaptive", seed=scenario.seed).run().summary["objective"]
        # The same virtual clock: the state reads as saved `learned_for` seconds ahead, within its max age.
        warm = Simulation(scenario, "strategy:adaptive", seed=scenario.seed,
                          config_changes={"adaptation_state_file": path})
        assert warm.optimizer.adaptive is not None
        out["warm_load"] = warm.optimizer.adaptive.state_load
        out["warm"] = warm.run().summary["objective"]
    return out


def against_hindsight(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Cold and warm against the hindsight split: the gap (percent) and how often at or above it."""
    out: Dict[str, Any] = {"scenarios": len(rows)}
    for variant in ("cold", "warm"):
        gaps = [100.0 * (r[variant] - r["hindsight"]) / r["hindsight"] for r in rows]
        out[variant] = {"mean": statistics.mean(gaps), "median": statistics.median(gaps), "worst": min(gaps),
                        "at_least_hindsight": sum(g >= 0 for g in gaps)}
    return out


def run_second_day(path: str, jobs_n: int, json_out: Optional[str]) -> int:
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            results = json.load(fh)
        jobs = [(name, float(s["hindsight"]["objective"])) for name, s in results["scenarios"].items()]
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"restart.py: {path}: not a bench JSON with hindsight splits ({type(err).__name__}: {err})",
              file=sys.stderr)
        return 2
    info = announce("dualtrack second-day benchmark: the adaptive strategy warm from its first minutes, "
                    "against the hindsight split")
    started = time.perf_counter()
    rows = run_each(second_day, jobs, jobs_n)
    figures = against_hindsight(rows)
    print(f"{len(rows)} scenarios ({time.perf_counter() - started:.0f} s); "
          "gap to perclass_hindsight, percent of its J:")
    for variant, label in (("cold", "cold start (the bench)"), ("warm", "second day (warm)")):
        f = figures[variant]
        print(f"  {label:<24} mean {f['mean']:+.3f}  median {f['median']:+.3f}  worst {f['worst']:+.2f}  "
              f"at or above it in {f['at_least_hindsight']} of {len(rows)}")
    restored = sum(r["warm_load"] == "restored" for r in rows)
    print(f"warm runs that restored the state: {restored} of {len(rows)}")
    if json_out:
        write_json(json_out, {"benchmark": "second_day", "machine": info, "results": path, "summary": figures,
                              "runs": rows})
    return 0 if restored == len(rows) else 1


def summarize(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per variant, the change of J against no restart (percent): mean, median, worst; the share saved."""
    out: Dict[str, Any] = {"runs": len(rows)}
    for variant in ("cold", "warm"):
        change = [100.0 * (r[variant] - r["none"]) / r["none"] for r in rows]
        out[variant] = {"mean": statistics.mean(change), "median": statistics.median(change),
                        "worst": min(change), "best": max(change)}
    cold, warm = out["cold"]["mean"], out["warm"]["mean"]
    out["saved"] = 1.0 - warm / cold if cold < 0 else None
    out["restored"] = sum(r.get("warm_load") == "restored" for r in rows)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="See the module's docstring (this file) for what is measured.")
    add_generated_options(parser)
    parser.add_argument("--at", type=float, action="append", metavar="SECONDS",
                        help="restart time in seconds (repeatable; default 600)")
    parser.add_argument("--second-day", metavar="RESULTS", help="instead: each scenario of this bench JSON cold and "
                        "warm from its first minutes' state, against its hindsight split")
    parser.add_argument("--jobs", type=int, default=1, help="scenarios in parallel (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.random < 1 or args.jobs < 1:
        parser.error("--random and --jobs must be at least 1")
    if args.second_day:
        return run_second_day(args.second_day, args.jobs, args.json)
    names = scenario_names(args)
    times = args.at or [600.0]
    if any(t <= 0 for t in times):
        parser.error("--at must be a positive number of seconds")
    info = announce("dualtrack restart benchmark: a cold restart of the embedded adapter against a warm one")
    started = time.perf_counter()
    jobs = [(n, t) for t in times for n in names]
    rows = run_each(one, jobs, args.jobs)
    wall = time.perf_counter() - started
    print(f"{len(names)} scenarios, restarts at {', '.join(f'{t:g}' for t in times)} s "
          f"({len(rows)} runs of three, {wall:.0f} s with {args.jobs} job(s))")
    print("J against no restart, percent of the run's J:")
    print(f"{'restart at':>10}  {'variant':<5}  {'mean':>7}  {'median':>7}  {'worst':>7}  {'best':>7}  saved")
    by_time = {}
    for t in times + [None]:
        subset = [r for r in rows if t is None or r["at"] == t]
        figures = summarize(subset)
        by_time["all" if t is None else f"{t:g}"] = figures
        label = "all" if t is None else f"{t:g} s"
        for variant in ("cold", "warm"):
            f = figures[variant]
            saved = (f"{figures['saved']:.0%}" if figures["saved"] is not None else "-") if variant == "warm" else ""
            print(f"{label:>10}  {variant:<5}  {f['mean']:+7.3f}  {f['median']:+7.3f}  {f['worst']:+7.2f}  "
                  f"{f['best']:+7.2f}  {saved}")
    restored = by_time["all"]["restored"]
    print(f"warm restarts that restored the state: {restored} of {len(rows)}")
    if args.json:
        write_json(args.json, {"benchmark": "restart", "machine": info, "jobs": args.jobs, "wall_seconds": wall,
                               "scenarios": names, "at": times, "summary": by_time, "runs": rows})
    return 0 if restored == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
