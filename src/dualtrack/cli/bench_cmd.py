"""``dualtrack bench adaptation``: the scenario suite in virtual time.

    dualtrack bench adaptation                          every scenario, every policy (about a minute)
    dualtrack bench adaptation --quick                  timelines compressed to 15 min, fewer policies
    dualtrack bench adaptation --scenario api_outage --policy strategy:adaptive --policy all_api
    dualtrack bench adaptation --seed 7 --json out.json

Prints a table per scenario (p95 latency, share within the latency target,
cost, quality, useful answers, constraint-violation time, failures, the
composite objective, the gap to the oracle, reaction times) and whether the
adaptive strategy met its targets. ``--check`` exits 1 when a target is
missed. ``docs/benchmarks.md`` explains the objective and the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, TextIO

from ..errors import ConfigError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="benchmarks (adaptation: the scenario suite in virtual time)",
        description="Benchmarks of the adaptation loop.")
    commands = parser.add_subparsers(dest="bench_command", metavar="COMMAND")
    commands.required = True
    adaptation = commands.add_parser(
        "adaptation", help="run the scenario suite for every policy and rank them",
        description="Run each scenario in virtual time with the adaptive strategy, each fixed strategy, the "
                    "static policies (all_local, all_api, fixed_50_50) and the oracle; print a table per "
                    "scenario and check the adaptive strategy's targets (docs/benchmarks.md).")
    adaptation.add_argument("--scenario", action="append", metavar="NAME",
                            help="a bundled scenario name or a scenario file (repeatable; default: all bundled)")
    adaptation.add_argument("--policy", action="append", metavar="POLICY",
                            help="strategy:<name>, all_local, all_api, fixed_50_50 or oracle "
                                 "(repeatable; default: all)")
    adaptation.add_argument("--seed", type=int, default=None,
                            help="one seed for every scenario (default: each scenario's own)")
    adaptation.add_argument("--json", metavar="FILE", help="also write the full results as JSON")
    adaptation.add_argument("--quick", action="store_true",
                            help="compress each timeline to a quarter and run fewer policies (a smoke test)")
    adaptation.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                            help="worker processes (default: up to 4, one per CPU)")
    adaptation.add_argument("--rules", metavar="PATH", help="strategy rules file or folder (default: bundled rules/)")
    adaptation.add_argument("--series", action="store_true",
                            help="keep each run's per-interval time series in the JSON")
    adaptation.add_argument("--check", action="store_true", help="exit 1 when the adaptive strategy misses a target")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace, *, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    from ..bench.adaptation import format_report, run_suite
    from ..simulation import check_policy

    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        for policy in args.policy or []:
            check_policy(policy)
        if args.jobs < 1:
            raise ValueError(f"--jobs: must be at least 1, got {args.jobs}")
        results = run_suite(args.scenario, args.policy, args.seed, quick=args.quick, jobs=args.jobs,
                            rules_path=args.rules, series=args.series)
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
