"""The demo: a scenario played in real time through the real optimizer.

The simulator's models answer the queries; everything else is the product:
the ``DualTrackOptimizer`` records every call, serves ``/metrics``, and
adapts — with the embedded adapter (default), or, with Prometheus, through
a real Prometheus scraping the demo and the adapter loop publishing a
preferences file the demo's router follows.

Time: the default scenario (``scenarios/demo.yaml``) is written for real
time (90 s, adaptation every 3 s). Longer scenarios are sped up to fit
``--duration`` on a virtual clock (the view says how much); the Prometheus
mode needs real time, so it only runs scenarios at speed 1.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from prometheus_client import CollectorRegistry

from ..clock import VirtualClock
from ..config import OptimizationConfig
from ..errors import ConfigError
from ..exporter.exposition import MetricsServer, serve_metrics
from ..local_prometheus import LocalPrometheus
from ..simulation.runner import Simulation
from ..simulation.scenario import Scenario, load_scenario

#: ``--duration 0`` (run until stopped, for docker compose) loops the scenario for this long.
FOREVER_SECONDS = 24 * 3600.0
TICK_SECONDS = 0.2


@dataclass
class DemoOptions:
    scenario: str = "demo"
    duration: Optional[float] = None  # seconds of wall time; None: the scenario's, capped at 90 s; 0: loop
    speed: Optional[float] = None  # virtual seconds per wall second; None: fit the scenario into duration
    seed: Optional[int] = None
    strategy: str = "adaptive"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464  # -1: do not serve
    preferences_file: Optional[str] = None  # follow an adapter's file instead of adapting in-process
    prometheus_url: Optional[str] = None  # an existing Prometheus that scrapes this demo
    with_prometheus: bool = False  # start a throwaway Prometheus and the adapter loop
    chart: Optional[str] = "out/demo-{scenario}.png"  # None: no chart


@dataclass
class DemoState:
    """What the view shows; updated as the simulation produces intervals and events."""

    scenario: Scenario
    speed: float
    duration: float  # virtual seconds the demo will cover
    source: str
    metrics_url: Optional[str]
    prometheus_url: Optional[str] = None
    now: float = 0.0
    rows: List[Dict[str, Any]] = field(default_factory=list)
    events: List[Dict[str, Any]] = field(default_factory=list)
    adapter_notes: List[str] = field(default_factory=list)


def _looped(scenario: Scenario, total: float) -> Scenario:
    """The scenario's timeline repeated back to back until ``total`` seconds."""
    repeats = max(1, math.ceil(total / scenario.duration))
    timeline = tuple(dataclasses.replace(e, at=e.at + i * scenario.duration, label=e.label)
                     for i in range(repeats) for e in scenario.timeline)
    return dataclasses.replace(scenario, duration=repeats * scenario.duration, timeline=timeline)


class _AdapterThread:
    """The adapter loop (PromQL → rules → preferences file) on a thread, for the demo."""

    def __init__(self, prometheus_url: str, output: str, strategy: str, interval: float, window: str,
                 classes: Any, notes: List[str]) -> None:
        from ..adapter.loop import Adapter, AdapterSettings
        from ..adapter.prometheus_source import PrometheusSource, interval_duration
        from ..adapter.promql import PromQLClient
        from ..bundled import bundled_dir

        settings = AdapterSettings(rules=(str(bundled_dir("rules")),), strategy=strategy, output=output,
                                   interval_seconds=interval, window=window, query_classes=tuple(classes))
        self.client = PromQLClient(prometheus_url, timeout=max(1.0, interval / 2), retries=0)
        self.adapter = Adapter(settings, PrometheusSource(self.client, window=window,
                                                          interval=interval_duration(interval)))
        self.notes = notes
        self._thread = threading.Thread(target=self._run, name="demo-adapter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self.adapter.stop_event.is_set():
            result = self.adapter.run_cycle()
            if result.result == "error":
                self.notes.append(f"adapter cycle failed: {result.error}")
            if self.adapter.stop_event.wait(self.adapter.next_delay()):
                break

    def stop(self) -> None:
        self.adapter.stop_event.set()
        self._thread.join(timeout=10)
        self.client.close()


def run_demo(options: DemoOptions, *, on_update: Optional[Callable[[DemoState], None]] = None,
             stop: Optional[threading.Event] = None) -> Dict[str, Any]:
    """Play the scenario; return the summary (and the chart path, when drawn)."""
    scenario = load_scenario(options.scenario)
    if options.duration == 0:
        scenario = _looped(scenario, FOREVER_SECONDS)
        wall = math.inf
        speed = options.speed or 1.0
    else:
        wall = options.duration if options.duration is not None else min(scenario.duration, 90.0)
        if not wall > 0:
            raise ConfigError(f"must be positive (or 0 to run until stopped), got {wall!r}", field="--duration")
        speed = options.speed or scenario.duration / wall
    prometheus_mode = options.with_prometheus or options.prometheus_url is not None
    if prometheus_mode and abs(speed - 1.0) > 1e-9:
        raise ConfigError(
            f"the Prometheus mode runs in real time, but scenario {scenario.name!r} lasts "
            f"{scenario.duration:g}s and would need speed {speed:.3g} to fit {wall:g}s; use the 'demo' "
            "scenario, or --duration equal to the scenario's, or --speed 1", field="--with-prometheus")
    virtual_total = min(scenario.duration, wall * speed)

    stop = stop or threading.Event()
    registry = CollectorRegistry()
    clock = VirtualClock(start=time.time())  # virtual wall time starts at the real one
    tmp = None
    preferences_file = options.preferences_file
    prom = None
    adapter: Optional[_AdapterThread] = None
    server: Optional[MetricsServer] = None
    notes: List[str] = []
    try:
        if options.metrics_port >= 0 or prometheus_mode:
            port = options.metrics_port if options.metrics_port >= 0 else 0
            server = serve_metrics(registry, OptimizationConfig(metrics_host=options.metrics_host,
                                                                metrics_port=port))
        if prometheus_mode:
            assert server is not None
            if preferences_file is None:
                tmp = tempfile.mkdtemp(prefix="dualtrack-demo-")
                preferences_file = str(Path(tmp) / "preferences.json")
            url = options.prometheus_url
            if url is None:
                prom = LocalPrometheus(targets={"dualtrack-router": [f"127.0.0.1:{server.port}"]},
                                       scrape_interval="1s").start()
                url = prom.url
            window = f"{max(4, int(round(scenario.adaptation_interval * 3)))}s"
            adapter = _AdapterThread(url, preferences_file, options.strategy, scenario.adaptation_interval,
                                     window, scenario.class_names, notes)
        changes: Dict[str, Any] = {}
        if preferences_file is not None:
            changes["preferences_file"] = preferences_file
            changes["preferences_check_interval_seconds"] = min(1.0, scenario.adaptation_interval / 3)
        state = DemoState(scenario=scenario, speed=speed, duration=virtual_total,
                          source="prometheus" if prometheus_mode else
                          ("preferences file" if preferences_file else "embedded"),
                          metrics_url=server.url if server else None,
                          prometheus_url=(prom.url if prom else options.prometheus_url), adapter_notes=notes)
        sim = Simulation(scenario, f"strategy:{options.strategy}", seed=options.seed, clock=clock,
                         registry=registry, on_interval=state.rows.append, on_event=state.events.append,
                         config_changes=changes)
        if adapter is not None:
            adapter.start()
        started = time.monotonic()
        while not stop.is_set():
            target = min((time.monotonic() - started) * speed, virtual_total)
            sim.run_until(target)
            state.now = target
            if on_update is not None:
                on_update(state)
            if target >= virtual_total:
                break
            stop.wait(TICK_SECONDS)
        result = sim.result()
        prefs = sim.optimizer.current_preferences()
        summary: Dict[str, Any] = {"scenario": scenario.name, "virtual_seconds": state.now, "speed": speed,
                                   "source": state.source, "final_preferences": prefs.to_dict(),
                                   **result.summary}
        if options.chart:
            from .chart import draw_chart

            path = Path(options.chart.format(scenario=scenario.name))
            draw_chart(state, path)
            summary["chart"] = str(path)
        summary["state"] = state
        return summary
    finally:
        if adapter is not None:
            adapter.stop()
        if prom is not None:
            prom.stop()
        if server is not None:
            server.close()
        if tmp is not None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
