#!/usr/bin/env python3
"""Adapter cycle time against a real Prometheus holding ~1,000 series per signal.

Builds ten minutes of history for ``--instances`` routers (each with every
path x query class, so 112 instances give 1,008 series per request metric
and outcome, 22,176 latency-bucket series), backfills it into a fresh
Prometheus with ``promtool tsdb create-blocks-from openmetrics``, then times
full adapter cycles (fetch every signal, evaluate the adaptive strategy,
publish the file) at a time inside that history.

Baseline, measured in the same run: the same cycle sending each signal's
own PromQL, one query per signal; then all of them batched in one query;
then the adapter's default (eight aggregated rates, one query).

    python benchmarks/adapter_cycle.py            # the documented figures
    python benchmarks/adapter_cycle.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

from prometheus_client import CollectorRegistry

from dualtrack.adapter.loop import Adapter, AdapterSettings
from dualtrack.adapter.prometheus_source import PrometheusSource
from dualtrack.adapter.promql import PromQLClient
from dualtrack.bundled import bundled_dir
from dualtrack.exporter.metrics import LATENCY_BUCKETS, QUALITY_BUCKETS
from dualtrack.local_prometheus import LocalPrometheus

PATHS = ("local", "api", "parallel")
CLASSES = ("short", "medium", "long")
OUTCOMES = ("success", "error", "timeout", "cancelled")
STEP = 30  # seconds between samples
#: (name, batch, aggregates): the baseline sends every signal's own PromQL,
#: one query per signal; "batched_forms" sends them all in one query;
#: "aggregates" (the adapter's default) fetches eight rates and computes the
#: request signals client-side.
MODES = (("per_signal_baseline", False, False), ("batched_forms", True, False), ("aggregates", True, True))
MINUTES = 10


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def openmetrics(instances: int, end: float, seed: int = 1) -> Iterable[str]:
    """Counters growing at fixed per-series rates; histograms with a lognormal shape."""
    rng = random.Random(seed)
    steps = [end - STEP * i for i in range(MINUTES * 60 // STEP, -1, -1)]
    series = [(f"router-{i}", p, c) for i in range(instances) for p in PATHS for c in CLASSES]
    rate = {s: rng.uniform(0.5, 5.0) for s in series}
    mean = {s: (3.0 if s[1] == "local" else 1.0) * rng.uniform(0.7, 1.3) for s in series}

    def counters(name: str, extra: Iterable[Tuple[str, float]]) -> Iterable[str]:
        extras = list(extra)
        yield f"# TYPE {name} counter"
        for t in steps:
            n = (t - steps[0] + STEP)
            for inst, p, c in series:
                for key, share in extras:
                    lab = dict(instance=inst, path=p, query_class=c)
                    if key:
                        k, v = key.split("=")
                        lab[k] = v
                    yield f"{name}_total{_labels(**lab)} {rate[(inst, p, c)] * share * n:.3f} {t:.0f}"

    yield from counters("dualtrack_requests", [("outcome=success", 0.95), ("outcome=error", 0.03),
                                               ("outcome=timeout", 0.01), ("outcome=cancelled", 0.01)])
    yield from counters("dualtrack_cost_dollars", [("", 0.002)])
    yield from counters("dualtrack_tokens", [("", 400.0)])
    for name, buckets, centre in (("dualtrack_request_duration_seconds", LATENCY_BUCKETS, None),
                                  ("dualtrack_response_quality_ratio", QUALITY_BUCKETS, 0.8)):
        yield f"# TYPE {name} histogram"
        for t in steps:
            n = (t - steps[0] + STEP)
            for s in series:
                total = rate[s] * n
                mid = mean[s] if centre is None else centre
                acc = 0.0
                for le in buckets:
                    acc = total * min(1.0, (le / mid) ** 2 / (1 + (le / mid) ** 2) * 1.0)
                    yield f"{name}_bucket{_labels(instance=s[0], path=s[1], query_class=s[2], le=repr(float(le)))} {acc:.3f} {t:.0f}"
                yield f"{name}_bucket{_labels(instance=s[0], path=s[1], query_class=s[2], le='+Inf')} {total:.3f} {t:.0f}"
                yield f"{name}_count{_labels(instance=s[0], path=s[1], query_class=s[2])} {total:.3f} {t:.0f}"
                yield f"{name}_sum{_labels(instance=s[0], path=s[1], query_class=s[2])} {total * mid:.3f} {t:.0f}"
    for name, value in (("dualtrack_process_memory_bytes", 2e9), ("dualtrack_memory_limit_bytes", 4 * 2 ** 30),
                        ("dualtrack_cpu_usage_ratio", 0.4), ("dualtrack_requests_in_flight", 2),
                        ("dualtrack_concurrency_limit", 4), ("dualtrack_latency_target_seconds", 2.0),
                        ("dualtrack_cost_per_request_limit_dollars", 0.01), ("dualtrack_quality_min_ratio", 0.6),
                        ("dualtrack_battery_threshold_ratio", 0.2), ("dualtrack_cpu_limit_ratio", 0.8)):
        yield f"# TYPE {name} gauge"
        for t in steps:
            for i in range(instances):
                yield f"{name}{_labels(instance=f'router-{i}')} {value} {t:.0f}"
    yield "# EOF"


def run(instances: int, cycles: int) -> Dict[str, object]:
    end = time.time() - 15 * 60  # blocks must be older than the head block
    work = Path(tempfile.mkdtemp(prefix="dualtrack-bench-"))
    om = work / "data.om"
    t0 = time.monotonic()
    with open(om, "w") as fh:
        for line in openmetrics(instances, end):
            fh.write(line + "\n")
    prom = LocalPrometheus()
    prom.data_path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(om),
                    str(prom.data_path)], check=True, stdout=subprocess.DEVNULL)
    om.unlink()
    prepared = time.monotonic() - t0
    prom.start()
    try:
        out = {"instances": instances, "series_per_request_metric": instances * 9,
               "latency_bucket_series": instances * 9 * (len(LATENCY_BUCKETS) + 1), "prepare_seconds": prepared}
        for mode, batch, aggregates in MODES:
            client = PromQLClient(prom.url, timeout=30)
            source = PrometheusSource(client, window="2m", batch=batch, aggregates=aggregates)
            fixed = _FixedTime(source, end)
            settings = AdapterSettings(rules=(str(bundled_dir("rules")),), strategy="adaptive",
                                       output=str(work / f"{mode}.json"), interval_seconds=30)
            adapter = Adapter(settings, fixed, registry=CollectorRegistry())
            adapter.run_cycle()  # warm up Prometheus' caches and our connection
            times: List[float] = []
            for _ in range(cycles):
                result = adapter.run_cycle()
                if result.result != "ok":
                    raise SystemExit(f"cycle failed: {result.error}")
                times.append(result.duration_seconds)
            out[mode] = {"median_ms": statistics.median(times) * 1000,
                         "p90_ms": sorted(times)[int(0.9 * (len(times) - 1))] * 1000,
                         "queries_per_cycle": source.last_query_count,
                         "signal_values": len(source.fetch(adapter.strategies.catalog, at=end))}
            client.close()
        out["speedup"] = out["per_signal_baseline"]["median_ms"] / out["aggregates"]["median_ms"]  # type: ignore[index]
        return out
    finally:
        prom.stop()


class _FixedTime:
    """Evaluates every fetch at the end of the backfilled history."""

    def __init__(self, source: PrometheusSource, at: float) -> None:
        self.source = source
        self.at = at

    def fetch(self, catalog, deadline=None):  # type: ignore[no-untyped-def]
        return self.source.fetch(catalog, at=self.at, deadline=deadline)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=112, help="routers in the history (default 112)")
    parser.add_argument("--cycles", type=int, default=30, help="timed cycles per mode (default 30)")
    parser.add_argument("--quick", action="store_true", help="12 instances, 5 cycles")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.instances, args.cycles = 12, 5
    res = run(args.instances, args.cycles)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"machine: {machine}")
    print(f"history: {res['instances']} routers, {res['series_per_request_metric']} series per request metric, "
          f"{res['latency_bucket_series']} latency bucket series (prepared in {res['prepare_seconds']:.1f}s)")
    for mode, _, _ in MODES:
        r = res[mode]  # type: ignore[index]
        print(f"{mode:>20}: median {r['median_ms']:7.1f} ms  p90 {r['p90_ms']:7.1f} ms  "
              f"{r['queries_per_cycle']:3d} queries/cycle  {r['signal_values']} signal values")
    print(f"aggregates vs per-signal baseline: {res['speedup']:.2f}x faster (target: cycle under 100 ms)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, **res}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
