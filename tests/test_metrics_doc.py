"""docs/metrics.md lists every metric the router, the adapter and the reader export."""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from dualtrack import DualTrackOptimizer, ModelPrice, OptimizationConfig, ResourceConstraints, ResourceMonitor
from dualtrack.adapter.learned_state import StateCollector, StateFile
from dualtrack.adapter.loop import AdapterMetrics
from dualtrack.adapter.plan_view import ESTIMATES, PlanCollector, PlanView
from dualtrack.exporter.local_server import LocalServerScraper
from dualtrack.integrations.litellm import LiteLLMMetrics
from dualtrack.preferences import Preferences, PreferencesReader, write_preferences
from dualtrack.router.hedging import HedgeMetrics
from fakes.fake_nvml import FakeGpu, FakeNvml
from fakes.fake_psutil import FakeProc, FakePsutil, sbattery, shwtemp

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def _names(registry: CollectorRegistry) -> set:
    return {m.name for m in registry.collect()}


def test_every_exported_metric_is_documented(tmp_path):
    registry = CollectorRegistry()
    config = OptimizationConfig(prices={"api": ModelPrice(1, 2)}, constraints=ResourceConstraints(max_cost_per_hour=5),
                                adaptation_state_file=str(tmp_path / "state.json"))  # its counters too
    ps = FakePsutil(battery=sbattery(50, 3600, False), temperatures={"coretemp": [shwtemp("Package", 50.0, 90.0, 100.0)]})
    ps.procs[os.getpid()] = FakeProc(rss=10 ** 8, cpu_percent=5)
    gpus = [FakeGpu("gpu", utilization_percent=5, memory_used=10 ** 9, memory_total=10 ** 10)]
    monitor = ResourceMonitor(config, psutil_module=ps, nvml=FakeNvml(gpus), registry=registry)
    monitor.min_cpu_window_seconds = 0.0
    optimizer = DualTrackOptimizer(config, registry=registry, resource_monitor=monitor)
    monitor.sample_now()
    monitor.sample_now()
    optimizer.record_request_start("a", "q")
    optimizer.record_request_completion("a", "api", {"tokens_in": 1, "quality_score": 0.5,
                                                     "time_to_first_token_ms": 120.0})
    optimizer.adapt_now()
    AdapterMetrics(registry)
    file = tmp_path / "p.json"
    write_preferences(file, Preferences.defaults())
    PreferencesReader(file, registry=registry).current()
    LiteLLMMetrics.for_registry(registry)  # the LiteLLM integration's own series
    LocalServerScraper("http://127.0.0.1:9/metrics", registry=registry)  # embedded scraping of a local server
    HedgeMetrics.for_registry(registry)  # the router's, when it hedges
    # Every family the plan's collector can produce (each estimate known), as the adapter
    # process and the embedded optimizer register it.
    full = PlanView(expected={"short": {"local": 0.7, "api": 0.6}}, estimates={a: 1.0 for _, _, a in ESTIMATES},
                    changes={("api", "", "latency"): 1})
    for prefix in ("dualtrack_adapter", "dualtrack_adaptation"):
        registry.register(PlanCollector(lambda: full, prefix))
    # The adapter process's learned-state counters (the embedded optimizer's registered them above).
    registry.register(StateCollector(StateFile(str(tmp_path / "adapter-state.json"), interval_seconds=30.0),
                                     "dualtrack_adapter"))

    names = _names(registry)
    assert len(names) > 60
    documented = set(re.findall(r"^\| `(dualtrack_[a-z_]+)`", DOC.read_text(), re.M))
    missing = sorted(names - documented)
    assert not missing, f"add these to docs/metrics.md: {missing}"
    stale = sorted(documented - names)
    assert not stale, f"docs/metrics.md lists metrics nothing exports: {stale}"
