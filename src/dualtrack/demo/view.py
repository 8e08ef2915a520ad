"""What the demo shows while it runs: a live terminal view, or one line per interval."""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, TextIO

from .run import DemoState


def _fmt(value: Optional[float], spec: str = ".2f", unit: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{unit}"


def _header(state: DemoState) -> str:
    speed = "" if abs(state.speed - 1) < 1e-9 else f" at {state.speed:.3g}x speed"
    parts = [f"scenario {state.scenario.name}: {state.now:5.0f}s / {state.duration:.0f}s{speed}",
             f"adaptation: {state.source}"]
    if state.metrics_url:
        parts.append(f"metrics: {state.metrics_url}")
    if state.prometheus_url:
        parts.append(f"prometheus: {state.prometheus_url}")
    return " | ".join(parts)


class LinePrinter:
    """Headless: one line per adaptation interval and one per scenario event."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self._rows = 0
        self._events = 0
        self._notes = 0
        self._started = False

    def __call__(self, state: DemoState) -> None:
        if not self._started:
            print(_header(state), file=self.out)
            self._started = True
        for event in state.events[self._events:]:
            print(f"{event['t']:6.0f}s  EVENT  {event['label']}", file=self.out)
        self._events = len(state.events)
        for note in state.adapter_notes[self._notes:]:
            print(f"        note   {note}", file=self.out)
        self._notes = len(state.adapter_notes)
        for row in state.rows[self._rows:]:
            prefs = row["preferences"]
            fired = sorted({f for f in row["fired"] if f != "learning"})
            print(f"{row['t']:6.0f}s  local {row['split'].get('local', 0):4.0%} api {row['split'].get('api', 0):4.0%} "
                  f"par {row['split'].get('parallel', 0):4.0%} | "
                  f"p95 local {_fmt(row['p95_seconds'].get('local'), '5.1f', 's')} "
                  f"api {_fmt(row['p95_seconds'].get('api'), '5.1f', 's')} | local_bias "
                  f"{prefs['global']['local_bias']:.2f} mode {prefs.get('mode') or '-'} | "
                  f"fired: {', '.join(fired) or '-'}", file=self.out)
        self._rows = len(state.rows)
        self.out.flush()


class LiveView:
    """A rich.Live dashboard, redrawn in place."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> "LiveView":
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)

    def __call__(self, state: DemoState) -> None:
        self.live.update(self.render(state))

    def render(self, state: DemoState) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table

        row: Dict[str, Any] = state.rows[-1] if state.rows else {}
        tracks = Table(title="tracks (last interval)", expand=True)
        for col in ("path", "share", "p95"):
            tracks.add_column(col, justify="right" if col != "path" else "left")
        for path in ("local", "api", "parallel"):
            p95 = row.get("p95_seconds", {}).get(path)
            tracks.add_row(path, f"{row.get('split', {}).get(path, 0):.0%}", _fmt(p95, ".2f", " s"))
        tracks.add_row("all", "", _fmt(row.get("p95_seconds", {}).get("request"), ".2f", " s"))

        prefs = Table(title=f"preferences (mode: {row.get('preferences', {}).get('mode') or '-'})", expand=True)
        prefs.add_column("class")
        for col in ("local_bias", "parallel", "timeout x", "quality"):
            prefs.add_column(col, justify="right")
        p = row.get("preferences", {})
        for name, values in [("global", p.get("global"))] + sorted(p.get("by_class", {}).items()):
            if values:
                prefs.add_row(name, f"{values['local_bias']:.2f}", f"{values['parallel_threshold']:.2f}",
                              f"{values['timeout_multiplier']:.2f}", f"{values['quality_threshold']:.2f}")

        health = Table(title="cost, quality, machine", expand=True, show_header=False)
        health.add_column("what")
        health.add_column("value", justify="right")
        health.add_row("requests (interval)", str(row.get("requests", 0)))
        health.add_row("failed (interval)", str(row.get("failed", 0)))
        health.add_row("within latency target", _fmt(row.get("within_target"), ".0%"))
        health.add_row("cost (interval)", _fmt(row.get("cost"), ".4f", " $"))
        health.add_row("mean quality", _fmt(row.get("quality"), ".2f"))
        health.add_row("local queue / heat", f"{row.get('local_queue', '–')} / {_fmt(row.get('local_heat'), '.2f')}")
        battery = row.get("battery")
        health.add_row("battery", "none" if battery is None else _fmt(battery, ".0%"))
        violated = ", ".join(sorted(row.get("violations", {}))) or "none"
        health.add_row("constraints violated", violated)

        fired = sorted({f for f in row.get("fired", []) if f != "learning"})
        learning = sum(1 for f in row.get("fired", []) if f == "learning")
        rules = ", ".join(fired) or "none"
        if learning:
            rules += f" (+ learning on {learning} classes)"
        events: List[str] = [f"{e['t']:5.0f}s  {e['label']}" for e in state.events[-6:]]
        events += [f"note: {n}" for n in state.adapter_notes[-3:]]
        grid = Table.grid(expand=True)
        grid.add_column(ratio=1)
        grid.add_column(ratio=1)
        grid.add_row(tracks, prefs)
        grid.add_row(health, Panel("\n".join(events) or "(none yet)", title="scenario events"))
        return Panel(Group(grid, Panel(rules, title="rules fired (last cycle)")), title=_header(state))
