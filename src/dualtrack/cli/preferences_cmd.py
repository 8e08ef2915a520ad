"""``dualtrack preferences show FILE [--json]``: what a preferences file says, readably.

Exit 0 on a valid file, 1 with ``dualtrack: FILE: <problem>`` otherwise.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from typing import Any, List, Optional, TextIO

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import PreferencesError
from ..preferences import PATHS, Preferences, Routing, read_preferences

_MAX_REASONS = 8


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``preferences`` (with ``show``) on an ``add_subparsers()`` object."""
    parser = subparsers.add_parser(
        "preferences", help="inspect a preferences file",
        description="Inspect the preferences file the adapter publishes and routers read.")
    commands = parser.add_subparsers(dest="preferences_command", metavar="COMMAND")
    commands.required = True
    show = commands.add_parser(
        "show", help="print what a preferences file says",
        description="Validate a preferences file and print it readably (exit 1 if it is missing or invalid).")
    show.add_argument("file", metavar="FILE", help="the preferences JSON file")
    show.add_argument("--json", action="store_true", help="print the validated document as JSON")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace, *, clock: Optional[Clock] = None,
        stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    """Run ``dualtrack preferences ...``; returns the exit status."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    command = getattr(args, "preferences_command", None)
    if command != "show":
        print(f"dualtrack: preferences: unknown command {command!r}; expected 'show'", file=err)
        return 2
    try:
        prefs = read_preferences(args.file)
    except PreferencesError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        print(f"dualtrack: {args.file}: {problem}", file=err)
        return 1
    if getattr(args, "json", False):
        out.write(prefs.to_json())
    else:
        out.write("\n".join(render(prefs, args.file, (clock or SYSTEM_CLOCK).time())) + "\n")
    return 0


def _when(ts: float) -> str:
    try:
        return _dt.datetime.fromtimestamp(ts).astimezone().isoformat(sep=" ", timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{ts:g} (unix seconds)"


def _duration(seconds: float) -> str:
    s = abs(seconds)
    if s < 120:
        text = f"{s:.1f} s"
    elif s < 7200:
        text = f"{s / 60:.1f} min"
    else:
        text = f"{s / 3600:.1f} h"
    return text


def _routing(r: Routing) -> str:
    return "  ".join(f"{k}={v:g}" for k, v in r.as_dict().items())


def _number(v: Optional[float]) -> str:
    return "no data" if v is None else f"{v:g}"


def render(prefs: Preferences, name: str, now: float) -> List[str]:
    """The plain-text view of ``prefs`` (about 30 lines at most)."""
    age = prefs.age(now)
    state = prefs.freshness(now)
    ago = f"{_duration(age)} ago" if age >= 0 else f"{_duration(age)} in the future"
    left = prefs.valid_until - now
    until = f"{_duration(left)} left" if left >= 0 else f"{_duration(left)} ago"
    lines = [
        f"preferences  {name}",
        f"strategy     {prefs.strategy}" + (f" (mode {prefs.mode})" if prefs.mode else "")
        + f"   source {prefs.source}   sequence {prefs.sequence}",
        f"generated    {_when(prefs.generated_at)} ({ago})",
        f"valid until  {_when(prefs.valid_until)} ({state.upper()}, {until})",
        f"routing      {_routing(prefs.routing)}",
        "timeouts     " + "  ".join(
            f"{p} {prefs.timeouts_seconds[p]:g} s" for p in PATHS)
        + f"  (x{prefs.routing.timeout_multiplier:g})",
    ]
    if prefs.query_classes:
        for i, cls in enumerate(sorted(prefs.query_classes)):
            head = "classes      " if i == 0 else "             "
            lines.append(f"{head}{cls}: {_routing(prefs.query_classes[cls])}")
    else:
        lines.append("classes      (none differ from the global routing)")
    violated = prefs.violated_constraints
    if violated:
        lines.append("violated     " + ", ".join(
            f"{n} ({_number(prefs.constraints[n].value)} > {_number(prefs.constraints[n].limit)})"
            for n in violated))
    else:
        lines.append(f"violated     none ({len(prefs.constraints)} constraints checked)")
    lines.append(f"reasons      {len(prefs.reasons)}" if prefs.reasons else "reasons      none")
    for reason in prefs.reasons[:_MAX_REASONS]:
        scope = f" [{reason.query_class}]" if reason.query_class else ""
        lines.append(f"  - {reason.rule}{scope}: {reason.message}")
        details = []
        if reason.signals:
            details.append(", ".join(f"{k}={_number(v)}" for k, v in sorted(reason.signals.items())))
        if reason.changes:
            details.append("changes " + ", ".join(f"{k} {v:+g}" for k, v in sorted(reason.changes.items())))
        if details:
            lines.append("      " + "; ".join(details))
    if len(prefs.reasons) > _MAX_REASONS:
        lines.append(f"  ... and {len(prefs.reasons) - _MAX_REASONS} more (use --json)")
    return lines
