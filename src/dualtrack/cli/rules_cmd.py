"""``dualtrack rules check|test|signals``: strategy files, checked like promtool checks rules.

    dualtrack rules check rules/            exit 0 when every file is valid; else every
                                            problem as file:line: field: message, exit 1
    dualtrack rules test rules/             run the tests: sections of every file
    dualtrack rules signals                 list the signals conditions can read
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, List, Optional, TextIO

from ..bundled import bundled_dir
from ..errors import ConfigError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "rules", help="check strategy rule files and run their tests",
        description="Validate strategy rule files (YAML) and run their unit tests.")
    commands = parser.add_subparsers(dest="rules_command", metavar="COMMAND")
    commands.required = True
    check = commands.add_parser(
        "check", help="validate files (exit 1 with file:line messages when invalid)",
        description="Load, validate and compile strategy files; print every problem as "
                    "file:line: field: message (one per bad file) and exit 1 when there is any.")
    check.add_argument("paths", nargs="*", metavar="PATH",
                       help="files or folders (default: the bundled rules/)")
    test = commands.add_parser(
        "test", help="run the tests: sections of strategy files",
        description="Run each strategy's unit tests: given signal values per cycle, expect preferences.")
    test.add_argument("paths", nargs="*", metavar="PATH", help="files or folders (default: the bundled rules/)")
    commands.add_parser("signals", help="list the signals rule conditions can read")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace, *, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    from ..adapter.rule_tests import run_tests
    from ..adapter.signals import BUILTIN_CATALOG
    from ..adapter.strategy import load_strategies, rule_files

    out = stdout or sys.stdout
    err = stderr or sys.stderr
    if args.rules_command == "signals":
        for signal in BUILTIN_CATALOG:
            labels = "{" + ",".join(signal.dims) + "}" if signal.dims else ""
            print(f"{signal.name}{labels:<24} {signal.unit:<13} {signal.help}", file=out)
        return 0
    paths: List[Any] = list(args.paths) or [bundled_dir("rules")]
    # Every problem of every file, not just the first: a bad file is reported
    # and skipped, the good ones are still compiled and checked together.
    problems: List[ConfigError] = []
    strategies = load_strategies(paths, errors=problems)
    for problem in sorted(problems, key=lambda p: (p.source or "", p.line or 0)):
        print(str(problem), file=err)
    if args.rules_command == "check":
        files: List[Any] = []
        for p in paths:
            try:
                files.extend(rule_files([p]))
            except ConfigError:
                pass  # already in problems
        bad = {problem.source for problem in problems}
        for f in files:
            if str(f) not in bad:
                print(f"{f}: ok", file=out)
        invalid = len({str(f) for f in files} & bad)
        summary = f"{len(files)} files"
        if invalid:
            summary += f", {invalid} invalid"
        print(f"{summary}, strategies: {', '.join(strategies.names()) or 'none'}", file=out)
        return 1 if problems else 0
    report = run_tests(strategies)
    for failure in report.failures:
        print(f"FAILED {failure}", file=out)
    total = report.passed + len({(f.source, f.test) for f in report.failures})
    print(f"{report.passed}/{total} strategy tests passed", file=out)
    return 0 if report.ok and not problems else 1
