"""``dualtrack demo``: what ``make demo`` runs."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import threading
from typing import Any

from ..errors import ConfigError, DualTrackError

#: What installs the demo's optional packages (rich: the live view; matplotlib: the chart).
DEMO_EXTRA = "pip install 'dualtrack[demo]'"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help="play a scenario in real time with a live view, /metrics and a chart",
        description=("Play a scenario through the real optimizer in real time: simulated local and API "
                     "models answer, the optimizer records, serves /metrics and adapts. Shows a live view, "
                     "then a summary and a PNG chart. The default scenario runs 90 s."),
        epilog=("examples: dualtrack demo | dualtrack demo --scenario api_outage --duration 60 | "
                "dualtrack demo --with-prometheus | dualtrack demo --headless --duration 20"))
    parser.add_argument("--scenario", default="demo",
                        help="scenario name (scenarios/) or YAML file (default: demo, written for real time)")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="wall-clock seconds to run (default: the scenario's, at most 90); "
                             "longer scenarios are sped up to fit; 0 runs until stopped")
    parser.add_argument("--speed", type=float, default=None,
                        help="scenario seconds per wall second (default: whatever fits --duration)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the scenario's)")
    parser.add_argument("--strategy", default="adaptive", help="strategy to follow (default adaptive)")
    parser.add_argument("--headless", action="store_true", help="no live view: one line per adaptation cycle")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address for /metrics (default 127.0.0.1)")
    parser.add_argument("--metrics-port", type=int, default=9464,
                        help="port for /metrics (default 9464; 0: any free port; -1: do not serve)")
    parser.add_argument("--chart", default="out/demo-{scenario}.png",
                        help="where to write the chart (default out/demo-{scenario}.png)")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the chart")
    parser.add_argument("--preferences-file", metavar="FILE",
                        help="follow the preferences an adapter process publishes here instead of adapting "
                             "in-process")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--with-prometheus", action="store_true",
                      help="start a local Prometheus (needs the prometheus binary) that scrapes the demo, "
                           "and adapt through it with the adapter loop instead of the embedded source")
    mode.add_argument("--prometheus", metavar="URL",
                      help="adapt through this Prometheus (it must scrape the demo's /metrics)")
    parser.set_defaults(func=run)
    return parser


def installed(module: str) -> bool:
    """Is ``module`` importable (without importing it)?"""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def run(args: argparse.Namespace) -> int:
    from ..demo.run import DemoOptions, run_demo
    from ..demo.view import LinePrinter, LiveView

    # Checked up front: a missing optional package is a one-line note and a demo
    # without that part, never a traceback at the end of the run.
    chart = None if args.no_chart else args.chart
    if chart is not None and not installed("matplotlib"):
        print(f"dualtrack demo: no chart (matplotlib is not installed; {DEMO_EXTRA})", file=sys.stderr)
        chart = None
    live = not args.headless and sys.stdout.isatty()
    if live and not installed("rich"):
        print(f"dualtrack demo: one line per cycle instead of the live view (rich is not installed; {DEMO_EXTRA})",
              file=sys.stderr)
        live = False
    options = DemoOptions(
        scenario=args.scenario, duration=args.duration, speed=args.speed, seed=args.seed,
        strategy=args.strategy, metrics_host=args.metrics_host, metrics_port=args.metrics_port,
        preferences_file=args.preferences_file, prometheus_url=args.prometheus,
        with_prometheus=args.with_prometheus, chart=chart,
    )
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        if live:
            with LiveView() as view:
                summary = run_demo(options, on_update=view, stop=stop)
        else:
            summary = run_demo(options, on_update=LinePrinter(), stop=stop)
    except (ConfigError, DualTrackError) as err:
        print(f"dualtrack demo: {err}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


def print_summary(s: Any) -> None:
    def pct(v: Any) -> str:
        return "–" if v is None else f"{v:.1%}"

    def sec(v: Any) -> str:
        return "–" if v is None else f"{v:.2f} s"

    speed = "" if abs(s["speed"] - 1) < 1e-9 else f" ({s['speed']:.3g}x speed)"
    print()
    print(f"scenario {s['scenario']}: {s['virtual_seconds']:.0f} s of traffic{speed}, adaptation: {s['source']}")
    print(f"  requests {s['requests']}, failed {pct(s['failed_ratio'])}, "
          f"{s['fallbacks']} fallbacks ({s['fallback_rescued']} rescued)")
    print(f"  latency p50 {sec(s['p50_latency_seconds'])}, p95 {sec(s['p95_latency_seconds'])}; "
          f"within the {s['latency_target_seconds']:g} s target: {pct(s['within_target_ratio'])}")
    paths = s["paths"]
    print(f"  paths: local {paths['local']}, api {paths['api']}, parallel {paths['parallel']}")
    ratio = s.get("cost_ratio")
    print(f"  cost ${s['total_cost']:.4f} (all-API would be ${s['all_api_cost']:.4f}"
          + (f", {ratio:.0%} of it)" if ratio is not None else ")"))
    print(f"  mean quality {s['quality_mean'] if s['quality_mean'] is None else round(s['quality_mean'], 3)}, "
          f"useful answers {pct(s['useful_ratio'])}")
    violations = ", ".join(f"{k} {v:.0f}s" for k, v in s["violation_by_constraint"].items()) or "none"
    print(f"  constraint violations: {violations}; adaptation cycles: {s['adaptation_cycles']}")
    if s.get("chart"):
        print(f"  chart: {s['chart']}")
