"""The ``dualtrack`` command: one entry point, one module per sub-command.

    dualtrack demo                     run the demo (make demo)
    dualtrack adapter ...              the adapter process (PromQL -> preferences file)
    dualtrack rules check|test PATH    validate strategy files / run their unit tests
    dualtrack preferences show FILE    print a preferences file
    dualtrack bench ...                benchmarks
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from .. import __version__

# Sub-command modules, each with add_parser(subparsers). Imported lazily so
# `dualtrack --help` stays fast and a broken optional extra (matplotlib for
# the demo chart) cannot break unrelated commands.
_COMMANDS = (
    "dualtrack.cli.demo_cmd",
    "dualtrack.cli.adapter_cmd",
    "dualtrack.cli.rules_cmd",
    "dualtrack.cli.preferences_cmd",
    "dualtrack.cli.bench_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualtrack",
        description="Telemetry and adaptation for LLM apps that route between a local model and an API model.",
        epilog="Run 'dualtrack COMMAND --help' for a command's options. Docs: docs/ in the repository.",
    )
    parser.add_argument("--version", action="version", version=f"dualtrack {__version__}")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue  # command not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
