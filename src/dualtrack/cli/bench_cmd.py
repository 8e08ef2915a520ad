"""``dualtrack bench adaptation``: the scenario suite in virtual time.

    dualtrack bench adaptation                          the shipped suite against the baselines (2-3 min)
    dualtrack bench adaptation --random 40 --seed 1     40 scenarios drawn for seed 1
    dualtrack bench adaptation --random 40 --seeds 2-4 --save out/   120 of them, written as scenario files
    dualtrack bench adaptation --scenario out/random_2_007.yaml      replay one
    dualtrack bench adaptation --quick                  timelines compressed to 15 min, coarse split grid
    dualtrack bench adaptation --scenario api_outage --policy strategy:adaptive --policy all_api
    dualtrack bench adaptation --all-strategies --json out.json
    dualtrack bench adaptation --policy strategy:adaptive --policy strategy:adaptive+hedge   hedging, compared

Prints a table per scenario (p95 latency, share within the latency target,
cost, quality, useful answers, constraint-violation time, failures, the
composite objective, the gap to the oracle, reaction times) -- a line per
scenario for a random suite -- and whether the adaptive strategy met its
targets. ``--check`` exits 1 when a target is missed.
``docs/benchmarks.md`` explains the objective, the baselines and the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, List, Optional, TextIO

from ..errors import ConfigError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="benchmarks (adaptation: the scenario suite in virtual time)",
        description="Benchmarks of the adaptation loop.")
    commands = parser.add_subparsers(dest="bench_command", metavar="COMMAND")
    commands.required = True
    adaptation = commands.add_parser(
        "adaptation", help="run the scenario suite for every policy and rank them",
        description="Run each scenario in virtual time with the adaptive strategy, the static policies "
                    "(all_local, all_api, fixed_50_50), the per-class splits perclass_steady and perclass_hindsight "
                    "and the oracle (and, with --all-strategies, each fixed strategy); print a table per scenario "
                    "and check the adaptive strategy's targets (docs/benchmarks.md).")
    adaptation.add_argument("--scenario", action="append", metavar="NAME",
                            help="a bundled scenario name or a scenario file (repeatable; default: all bundled)")
    adaptation.add_argument("--random", type=int, metavar="N",
                            help="instead, draw N random scenarios per generator seed (--seed or --seeds; default 1)")
    adaptation.add_argument("--save", metavar="DIR",
                            help="with --random: write every drawn scenario to DIR/<name>.yaml (replay with "
                                 "--scenario DIR/<name>.yaml)")
    adaptation.add_argument("--policy", action="append", metavar="POLICY",
                            help="strategy:<name>, all_local, all_api, fixed_50_50, perclass_steady, "
                                 "perclass_hindsight, perclass:<class>=<share>,... or oracle (repeatable; default: "
                                 "the adaptive strategy and every baseline); a strategy +server reads the local "
                                 "server's load gauges too, a strategy or static policy +hedge hedges slow calls "
                                 "(e.g. strategy:adaptive+hedge)")
    adaptation.add_argument("--all-strategies", action="store_true",
                            help="also run each fixed strategy (balanced, latency_focused, resource_efficient, "
                                 "quality_focused, cost)")
    adaptation.add_argument("--seed", type=int, default=None,
                            help="one seed for every scenario (default: each scenario's own); with --random, the "
                                 "generator seed")
    adaptation.add_argument("--seeds", metavar="LIST",
                            help="several seeds, e.g. 1,2,5-7: each shipped scenario runs with each of them; with "
                                 "--random, the generator seeds (N scenarios each)")
    adaptation.add_argument("--hindsight-search", choices=("auto", "grid", "descent"), default="auto",
                            help="how perclass_hindsight searches the grid of splits (default auto: the full grid "
                                 "when it is small, else coarse grid then coordinate descent)")
    adaptation.add_argument("--json", metavar="FILE", help="also write the full results as JSON")
    adaptation.add_argument("--quick", action="store_true",
                            help="compress each timeline to a quarter and search a coarser split grid (a smoke test)")
    adaptation.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                            help="worker processes (default: up to 4, one per CPU)")
    adaptation.add_argument("--rules", metavar="PATH", help="strategy rules file or folder (default: bundled rules/)")
    adaptation.add_argument("--series", action="store_true",
                            help="keep each run's per-interval time series in the JSON")
    adaptation.add_argument("--check", action="store_true", help="exit 1 when the adaptive strategy misses a target")
    parser.set_defaults(func=run)
    return parser


def parse_seeds(text: str) -> List[int]:
    """``1,2,5-7`` -> ``[1, 2, 5, 6, 7]``."""
    seeds: List[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise ValueError(f"--seeds: expected seeds like 1,2,5-7, got {text!r}") from None
        if low < 0 or high < low:
            raise ValueError(f"--seeds: {part.strip()!r} is not a seed or a rising range of seeds")
        seeds.extend(s for s in range(low, high + 1) if s not in seeds)
    return seeds


def run(args: argparse.Namespace, *, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    from ..bench.adaptation import check_bench_policy, format_report, run_suite

    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        for policy in args.policy or []:
            check_bench_policy(policy)
        if args.jobs < 1:
            raise ValueError(f"--jobs: must be at least 1, got {args.jobs}")
        if args.seeds is not None and args.seed is not None:
            raise ValueError("--seed and --seeds: give one of them")
        if args.random is not None and (args.random < 1 or args.scenario):
            raise ValueError("--random: give a number of scenarios of at least 1, and no --scenario")
        if args.save is not None and args.random is None:
            raise ValueError("--save: only --random draws scenarios to save")
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None
        results = run_suite(args.scenario, args.policy, args.seed, quick=args.quick, jobs=args.jobs,
                            rules_path=args.rules, series=args.series, random=args.random, seeds=seeds,
                            save=args.save, all_strategies=args.all_strategies,
                            hindsight_search=args.hindsight_search)
    except (ConfigError, ValueError) as error:
        print(f"dualtrack bench adaptation: {error}", file=err)
        return 2
    print(format_report(results), file=out)
    if args.json:
        _write_json(Path(args.json), results)
        print(f"results written to {args.json}", file=out)
    if args.check and results["summary"]["misses"]:
        return 1
    return 0


def _write_json(path: Path, data: Any) -> None:
    """Atomically: a temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
