#!/usr/bin/env python3
"""The adapter as its own process, and a router following the preferences file it publishes.

For a fleet: Prometheus scrapes every router's /metrics; one ``dualtrack
adapter`` process turns what Prometheus holds into routing preferences
every --interval seconds and publishes them atomically to a file; every
router reads that file (``OptimizationConfig(preferences_file=...)``) and
keeps routing on the last good copy if the adapter or Prometheus stops.
This script starts the adapter, waits for its first publish, routes a few
queries on simulated models and shows which preferences they followed.

    python examples/adapter_and_router.py --prometheus-url http://127.0.0.1:9090 --requests 20
    # in production: dualtrack adapter --prometheus-url ... --output /var/lib/dualtrack/preferences.json

--prometheus-url also comes from PROMETHEUS_URL. Point Prometheus at the
router's /metrics (--metrics-port) so the adapter has data to decide on.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dualtrack import DualTrackOptimizer, OptimizationConfig
from dualtrack.router.backends import FakeBackend
from dualtrack.router.router import DualTrackRouter


def start_adapter(prometheus_url: str, output: Path, interval: float) -> "subprocess.Popen[bytes]":
    return subprocess.Popen([sys.executable, "-m", "dualtrack", "adapter", "--prometheus-url", prometheus_url,
                             "--output", str(output), "--interval", str(interval), "--window", "1m",
                             "--metrics-port", "-1"], stdin=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus-url", default=os.environ.get("PROMETHEUS_URL", "http://127.0.0.1:9090"))
    parser.add_argument("--output", type=Path, help="the preferences file (default: a temporary one)")
    parser.add_argument("--interval", type=float, default=5.0, help="adapter cycle, seconds (default 5)")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--metrics-port", type=int, help="serve the router's /metrics here for Prometheus")
    parser.add_argument("--wait", type=float, default=60.0, help="how long to wait for the first publish")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dualtrack-example-") as folder:
        output = args.output or Path(folder) / "preferences.json"
        adapter = start_adapter(args.prometheus_url, output, args.interval)
        try:
            deadline = time.monotonic() + args.wait
            while not output.exists():
                if adapter.poll() is not None:
                    sys.exit(f"the adapter exited with status {adapter.returncode}")
                if time.monotonic() > deadline:
                    sys.exit(f"no preferences published within {args.wait:g} s (is Prometheus at "
                             f"{args.prometheus_url}?)")
                time.sleep(0.1)
            print(f"the adapter published {output}")

            config = OptimizationConfig(preferences_file=str(output), metrics_port=args.metrics_port)
            local, api = FakeBackend("local", latency=0.01), FakeBackend("api", latency=0.02)
            with DualTrackOptimizer(config) as optimizer, DualTrackRouter(optimizer, local, api) as router:
                for i in range(args.requests):
                    result = router.route(f"query {i}: what is {i} squared?")
                    print(f"{result.path:>8} -> {result.track_used}")
                router.drain(10)
                prefs = optimizer.get_optimization_status()["preferences"]
                print(f"followed preferences #{prefs['sequence']} of strategy {prefs['strategy']!r} "
                      f"from {prefs['source']!r}: {prefs['routing']}")
        finally:
            adapter.terminate()  # SIGTERM: the adapter finishes its cycle and exits 0
            adapter.wait(timeout=30)


if __name__ == "__main__":
    main()
