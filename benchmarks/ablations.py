#!/usr/bin/env python3
"""Which part of the adaptive strategy a gap comes from: the strategy rerun with one part switched off.

    python benchmarks/ablations.py --random 20 --seed 143 --seed 144 --jobs 2
    python benchmarks/ablations.py --bench results.json --jobs 2   # its scenarios, split by the oracle's lead
    python benchmarks/ablations.py --scenario steady --ablation no_exploration

Each ablation is a change of the adaptive strategy's file (``rules/adaptive.yaml``,
or ``--rules``), written to a temporary copy of the rules folder:

``no_exploration``
    ``probe: 0``, ``probe_calls: 0``, ``exploration_floor: 0``: no class keeps a
    share on the track it does not choose (the router's own floor stays);
``fixed_timeouts``
    ``timeouts.min_seconds`` raised to ``max_seconds``: every call waits the
    longest timeout, as the static splits' calls do;
``no_battery_horizon``
    ``objective.battery_horizon: 0``: on battery power, no local load kept back
    for the charge to last;
``no_track_watch``
    ``objective.observed_calls: 0`` and ``probe_after_change: false``: every class
    probes the track it does not choose with ``probe_calls``, whether other
    classes' traffic watches it or not and whether or not a recovery is awaited.

Each scenario runs ``strategy:adaptive`` as shipped and with each ablation, on
the same queries and routing draw (``--routing-draw`` picks another); the
figure is the change of ``J``, in percent of the shipped strategy's. With
``--bench RESULTS.json`` (``dualtrack bench adaptation --json``) the scenarios
are that file's, and each variant is also held against the scenario's
``perclass_hindsight``: how many are at or above it, among the *flat*
scenarios (the oracle leads the split by less than 0.001: nothing to adapt to)
and the others. One draw: a scenario's change is partly chance (the runs
part ways at the first different decision); read the means over many.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    add_generated_options,
    announce,
    hindsight_splits,
    run_each,
    scenario_for,
    scenario_names,
    write_json,
)

from dualtrack.adapter.strategy import load_strategies  # noqa: E402
from dualtrack.bench.verdicts import MIN_ORACLE_LEAD  # noqa: E402
from dualtrack.bundled import bundled_dir  # noqa: E402
from dualtrack.errors import ConfigError  # noqa: E402
from dualtrack.simulation import Simulation  # noqa: E402

STRATEGY = "adaptive"
SHIPPED = "shipped"


def _no_exploration(doc: Dict[str, Any]) -> None:
    doc.setdefault("objective", {}).update({"probe": 0, "probe_calls": 0})
    doc["exploration_floor"] = 0


def _fixed_timeouts(doc: Dict[str, Any]) -> None:
    timeouts = doc.setdefault("timeouts", {})
    timeouts["min_seconds"] = timeouts.get("max_seconds", 30)


def _no_battery_horizon(doc: Dict[str, Any]) -> None:
    doc.setdefault("objective", {})["battery_horizon"] = "0s"


def _no_track_watch(doc: Dict[str, Any]) -> None:
    objective = doc.setdefault("objective", {})
    objective["observed_calls"] = 0
    objective["probe_after_change"] = False


#: Each ablation: what it changes in the strategy's file.
ABLATIONS: Dict[str, Callable[[Dict[str, Any]], None]] = {
    "no_exploration": _no_exploration,
    "fixed_timeouts": _fixed_timeouts,
    "no_battery_horizon": _no_battery_horizon,
    "no_track_watch": _no_track_watch,
}


def write_ablation(rules: Path, name: str, folder: Path) -> Path:
    """A copy of the ``rules`` folder in ``folder/name`` with the ablation applied to the adaptive strategy;
    raises :class:`ConfigError` when the result does not load."""
    target = folder / name
    shutil.copytree(rules, target)
    path = target / f"{STRATEGY}.yaml"
    with open(path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    ABLATIONS[name](doc)
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    load_strategies(target)  # the changed strategy must still be a valid one
    return target


def one(job: Tuple[str, str, Optional[str], Optional[int]]) -> Tuple[str, str, float]:
    """``J`` of one scenario under one variant (``rules`` None: the shipped strategy)."""
    name, variant, rules, draw = job
    scenario = scenario_for(name)
    sim = Simulation(scenario, f"strategy:{STRATEGY}", seed=scenario.seed, rules_path=rules, routing_seed=draw)
    return name, variant, sim.run().summary["objective"]


def summarize(runs: Dict[str, Dict[str, float]], variants: List[str],
              bench: Optional[Dict[str, Tuple[float, bool]]] = None) -> Dict[str, Any]:
    """Per ablation, the change of ``J`` against the shipped strategy (percent): mean, median, worst, best,
    scenarios up and down; with ``bench`` ((hindsight J, flat) per scenario), per variant and part
    (flat, leading) the scenarios at or above the hindsight split and the median margin over it."""
    out: Dict[str, Any] = {"scenarios": len(runs), "ablations": {}}
    for variant in variants:
        change = [100.0 * (r[variant] - r[SHIPPED]) / r[SHIPPED] for r in runs.values()]
        out["ablations"][variant] = {
            "mean": statistics.mean(change), "median": statistics.median(change),
            "worst": min(change), "best": max(change),
            "up": sum(c > 1e-9 for c in change), "down": sum(c < -1e-9 for c in change),
        }
    if bench is not None:
        parts: Dict[str, Any] = {}
        for part, is_flat in (("flat", True), ("leading", False)):
            names = [n for n in runs if n in bench and bench[n][1] == is_flat]
            parts[part] = {"scenarios": len(names)}
            for variant in [SHIPPED] + variants:
                margins = [100.0 * (runs[n][variant] - bench[n][0]) / bench[n][0] for n in names]
                parts[part][variant] = {
                    "at_least_hindsight": sum(m >= 0 for m in margins),
                    "median_margin": statistics.median(margins) if margins else None,
                }
        out["against_hindsight"] = parts
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="See the module's docstring (this file) for each ablation.")
    add_generated_options(parser)
    parser.add_argument("--bench", metavar="RESULTS", help="the scenarios of this bench JSON, each also held "
                        "against its perclass_hindsight (split by the oracle's lead)")
    parser.add_argument("--ablation", action="append", choices=sorted(ABLATIONS), metavar="NAME",
                        help=f"one of {', '.join(sorted(ABLATIONS))} (repeatable; default all)")
    parser.add_argument("--rules", metavar="DIR", help="the rules folder to start from (default: the bundled one)")
    parser.add_argument("--routing-draw", type=int, metavar="R",
                        help="rerun every variant on this routing draw (default: the scenario's own)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.random < 1 or args.jobs < 1:
        parser.error("--random and --jobs must be at least 1")
    bench = None
    if args.bench:
        bench = {name: (h["objective"], h["flat"]) for name, h in hindsight_splits(parser, args.bench).items()}
    names = list(bench) if bench is not None else scenario_names(args)
    rules = Path(args.rules) if args.rules else bundled_dir("rules")
    if not (rules / f"{STRATEGY}.yaml").is_file():
        parser.error(f"--rules {rules}: no {STRATEGY}.yaml there")
    variants = args.ablation or sorted(ABLATIONS)
    info = announce("dualtrack ablations: the adaptive strategy with one part switched off at a time")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dualtrack-ablations-") as tmp:
        folders: Dict[str, Optional[str]] = {SHIPPED: str(rules) if args.rules else None}
        for variant in variants:
            try:
                folders[variant] = str(write_ablation(rules, variant, Path(tmp)))
            except (ConfigError, OSError, yaml.YAMLError) as err:
                print(f"ablations.py: {variant}: the changed strategy does not load: {err}", file=sys.stderr)
                return 2
        jobs = [(n, v, folders[v], args.routing_draw) for n in names for v in folders]
        results = run_each(one, jobs, args.jobs)
    runs: Dict[str, Dict[str, float]] = {}
    for name, variant, objective in results:
        runs.setdefault(name, {})[variant] = objective
    wall = time.perf_counter() - started
    figures = summarize(runs, variants, bench)
    print(f"{len(names)} scenarios x {len(folders)} variants ({wall:.0f} s with {args.jobs} job(s)); "
          "J against the shipped strategy, percent:")
    print(f"{'ablation':<20} {'mean':>7} {'median':>7} {'worst':>7} {'best':>7}  up / down")
    for variant in variants:
        f = figures["ablations"][variant]
        print(f"{variant:<20} {f['mean']:+7.3f} {f['median']:+7.3f} {f['worst']:+7.2f} {f['best']:+7.2f}  "
              f"{f['up']} / {f['down']}")
    if bench is not None:
        print("against perclass_hindsight (at or above it; median margin, percent):")
        for part, label in (("flat", f"flat (oracle's lead < {MIN_ORACLE_LEAD:g})"), ("leading", "leading")):
            p = figures["against_hindsight"][part]
            cells = []
            for variant in [SHIPPED] + variants:
                v = p[variant]
                median = "-" if v["median_margin"] is None else f"{v['median_margin']:+.2f}"
                cells.append(f"{variant} {v['at_least_hindsight']} ({median})")
            print(f"  {label}, {p['scenarios']} scenarios: " + "; ".join(cells))
    if args.json:
        write_json(args.json, {"benchmark": "ablations", "machine": info, "jobs": args.jobs, "wall_seconds": wall,
                               "routing_draw": args.routing_draw, "summary": figures, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
