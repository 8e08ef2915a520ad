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
then the adapter's default (nine aggregated rates, one query); then
``recorded`` (``dualtrack adapter --recording-rules``: the nine rates read
from the series recording_rules.yml records).

For ``recorded`` the rules are backfilled over the end of the history with
``promtool tsdb create-blocks-from rules``, which evaluates each rule with
range queries against the running Prometheus. It only sees what Prometheus
already holds, so a rule that reads another rule's series would find
nothing: the rules are backfilled in passes by dependency depth (the first
group, then the rules reading it, ...), each pass's blocks moved into the
data folder and Prometheus restarted to load them before the next. Every
pass writes the same rule file path with one group of the same name, so
every rule evaluates at the same timestamps (promtool aligns a group's
evaluations as Prometheus does, by a hash of its name and file) and a
derived rule reads its inputs at exactly its own timestamp. All modes are
timed at the last evaluation of the request group, so they compare the same
instant.

Beside each mode's cycle time the benchmark shows Prometheus' own time for
the batched query (``stats=all``: ``execTotalTime``), so what is left of
the cycle is ours (HTTP, JSON, computing signals, rules, publishing).

    python benchmarks/adapter_cycle.py            # the documented figures
    python benchmarks/adapter_cycle.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import requests
import yaml
from prometheus_client import CollectorRegistry

from dualtrack.adapter.loop import Adapter, AdapterSettings
from dualtrack.adapter.prometheus_source import PrometheusSource
from dualtrack.adapter.promql import PromQLClient
from dualtrack.adapter.signals import SignalValues
from dualtrack.bundled import bundled_dir
from dualtrack.exporter.metrics import LATENCY_BUCKETS, QUALITY_BUCKETS
from dualtrack.local_prometheus import LocalPrometheus

PATHS = ("local", "api", "parallel")
CLASSES = ("short", "medium", "long")
OUTCOMES = ("success", "error", "timeout", "cancelled")
STEP = 30  # seconds between samples
#: (name, batch, aggregates, recorded): the baseline sends every signal's own
#: PromQL, one query per signal; "batched_forms" sends them all in one query;
#: "aggregates" (the adapter's default) fetches nine rates and computes the
#: request signals client-side; "recorded" reads those nine rates from the
#: recording rules' series.
MODES = (("per_signal_baseline", False, False, False), ("batched_forms", True, False, False),
         ("aggregates", True, True, False), ("recorded", True, True, True))
MINUTES = 10
RECORDING_RULES = Path(__file__).resolve().parent.parent / "recording_rules.yml"
RULE_EVAL_INTERVAL = 15  # seconds, prometheus.yml's evaluation_interval
RULES_BACKFILL_MINUTES = 5  # the adapter reads the last evaluation; 5 min is Prometheus' lookback


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
    # The objective's evidence (the interval_* signals): answers within target, useful answers.
    yield from counters("dualtrack_requests_within_target", [("", 0.9)])
    yield from counters("dualtrack_responses_useful", [("", 0.85)])
    # Calls a rate limit refused (HTTP 429; errors too): the ninth rate.
    yield from counters("dualtrack_rate_limited", [("", 0.01)])
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
                    labels = _labels(instance=s[0], path=s[1], query_class=s[2], le=repr(float(le)))
                    yield f"{name}_bucket{labels} {acc:.3f} {t:.0f}"
                labels = _labels(instance=s[0], path=s[1], query_class=s[2], le="+Inf")
                yield f"{name}_bucket{labels} {total:.3f} {t:.0f}"
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


def rule_passes(path: Path = RECORDING_RULES) -> List[Dict[str, object]]:
    """The rule file split by dependency depth: pass n holds the rules that read rules of pass n-1 at most.

    Each pass is one group named after the file's first group, so every
    rule of every pass evaluates at the same timestamps (promtool offsets a
    group's evaluations by a hash of its name): a series of the file's
    other groups (the interval counts' rate1m) is then read at the very
    instant the raw mode computes it. Kept in their own groups they were
    evaluated up to 15 s earlier, a 1m window could hold other samples, and
    the comparison saw rounding differences of the synthetic counters (a
    0.25% difference failed CI once). Rules come after the rules they read
    (the file's own convention); anything else is an error here rather
    than a silently empty series.
    """
    doc = yaml.safe_load(path.read_text())
    names = [r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r]
    depth: Dict[str, int] = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "record" not in rule:
                continue
            reads = [n for n in names if re.search(rf"(?<![\w:]){re.escape(n)}(?![\w:])", rule["expr"])]
            unknown = [n for n in reads if n not in depth]
            if unknown:
                raise SystemExit(f"{path}: {rule['record']} reads {unknown} before they are recorded")
            depth[rule["record"]] = 1 + max((depth[n] for n in reads), default=-1)
    settings = [sorted(set(group) - {"name", "rules"}) for group in doc["groups"]]
    if any(settings):
        raise SystemExit(f"{path}: group settings {settings} would be lost: the benchmark runs every rule "
                         "in one group")
    passes = []
    for level in range(max(depth.values()) + 1):
        rules = [r for g in doc["groups"] for r in g["rules"] if "record" in r and depth[r["record"]] == level]
        passes.append({"groups": [{"name": doc["groups"][0]["name"], "rules": rules}]})
    return passes


def backfill_rules(prom: LocalPrometheus, work: Path, start: float, end: float) -> int:
    """Backfill recording_rules.yml over [start, end] into ``prom``, pass by pass; returns the pass count.

    ``prom`` is running on entry and on return (restarted after each pass
    to load its blocks).
    """
    rule_file = work / "rules" / "recording_rules.yml"  # one path for every pass: same evaluation times
    rule_file.parent.mkdir(parents=True, exist_ok=True)
    passes = rule_passes()
    for n, doc in enumerate(passes):
        rule_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        out = work / f"rule-blocks-{n}"
        done = subprocess.run(["promtool", "tsdb", "create-blocks-from", "rules", "--quiet", f"--url={prom.url}",
                               f"--start={int(start)}", f"--end={int(end)}",
                               f"--eval-interval={RULE_EVAL_INTERVAL}s", f"--output-dir={out}", str(rule_file)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"promtool rules backfill, pass {n}, failed:\n{done.stdout}{done.stderr}")
        prom.stop()
        for block in out.iterdir():
            shutil.move(str(block), str(prom.data_path / block.name))
        prom.start()
    return len(passes)


def prometheus_exec_ms(url: str, expr: str, at: float) -> Optional[float]:
    """Prometheus' own time for ``expr`` (median of 5), from the API's query statistics."""
    times = []
    for _ in range(5):
        body = requests.post(f"{url}/api/v1/query", data={"query": expr, "time": f"{at:.3f}", "stats": "all"},
                             timeout=30).json()
        timings = body.get("data", {}).get("stats", {}).get("timings", {})
        if "execTotalTime" not in timings:
            return None  # an engine without query statistics
        times.append(float(timings["execTotalTime"]) * 1000)
    return statistics.median(times)


def run(instances: int, cycles: int) -> Dict[str, object]:
    end = time.time() - 15 * 60  # blocks must be older than the head block
    work = Path(tempfile.mkdtemp(prefix="dualtrack-bench-"))
    prom = LocalPrometheus(data_dir=str(work / "prometheus"))
    try:
        return _run(prom, work, instances, cycles, end)
    finally:
        prom.stop()
        shutil.rmtree(work, ignore_errors=True)


def _run(prom: LocalPrometheus, work: Path, instances: int, cycles: int, end: float) -> Dict[str, object]:
    om = work / "data.om"
    t0 = time.monotonic()
    with open(om, "w") as fh:
        for line in openmetrics(instances, end):
            fh.write(line + "\n")
    prom.data_path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(om),
                    str(prom.data_path)], check=True, stdout=subprocess.DEVNULL)
    om.unlink()
    prepared = time.monotonic() - t0
    prom.start()
    t0 = time.monotonic()
    passes = backfill_rules(prom, work, end - RULES_BACKFILL_MINUTES * 60, end)
    rules_prepared = time.monotonic() - t0
    # The request group's last evaluation at or before the end: every mode
    # is timed there, where the recorded series are exactly the raw rates.
    stamp = PromQLClient(prom.url, timeout=30).instant(
        "max(timestamp(path_query_class_outcome:dualtrack_requests:rate2m))", at=end)
    if not stamp.finite:
        raise SystemExit("the recording rules were not backfilled: no path_query_class_outcome series")
    at = stamp.finite[0].value
    out: Dict[str, object] = {
        "instances": instances, "series_per_request_metric": instances * 9,
        "latency_bucket_series": instances * 9 * (len(LATENCY_BUCKETS) + 1), "prepare_seconds": prepared,
        "rules_backfill_seconds": rules_prepared, "rules_backfill_passes": passes, "evaluated_at": at,
    }
    values: Dict[str, SignalValues] = {}
    for mode, batch, aggregates, recorded in MODES:
        client = PromQLClient(prom.url, timeout=30)
        queries: List[float] = []
        source = PrometheusSource(client, window="2m", batch=batch, aggregates=aggregates, recorded=recorded,
                                  on_query=lambda seconds, error, queries=queries: queries.append(seconds))
        fixed = _FixedTime(source, at)
        settings = AdapterSettings(rules=(str(bundled_dir("rules")),), strategy="adaptive",
                                   output=str(work / f"{mode}.json"), interval_seconds=30)
        adapter = Adapter(settings, fixed, registry=CollectorRegistry())
        adapter.run_cycle()  # warm up Prometheus' caches and our connection
        times: List[float] = []
        queries.clear()
        for _ in range(cycles):
            result = adapter.run_cycle()
            if result.result != "ok":
                raise SystemExit(f"cycle failed: {result.error}")
            times.append(result.duration_seconds)
        n = source.last_query_count
        per_cycle = [sum(queries[k * n:(k + 1) * n]) for k in range(cycles)]  # HTTP + JSON included
        catalog = adapter.strategies.catalog
        out[mode] = {"median_ms": statistics.median(times) * 1000,
                     "p90_ms": sorted(times)[int(0.9 * (len(times) - 1))] * 1000,
                     "queries_per_cycle": n,
                     "query_median_ms": statistics.median(per_cycle) * 1000,
                     # one query per signal has no single query to time
                     "prometheus_exec_ms": prometheus_exec_ms(prom.url, source.batch_query(catalog), at)
                     if batch else None,
                     "signal_values": len(values.setdefault(mode, source.fetch(catalog, at=at)))}
        client.close()
    out["recorded_max_rel_diff"] = _max_rel_diff(values["aggregates"], values["recorded"])
    out["speedup"] = out["per_signal_baseline"]["median_ms"] / out["aggregates"]["median_ms"]  # type: ignore[index]
    out["recorded_speedup"] = out["aggregates"]["median_ms"] / out["recorded"]["median_ms"]  # type: ignore[index]
    return out


def _max_rel_diff(a: SignalValues, b: SignalValues) -> float:
    """The largest relative difference between two fetches' values; inf if they hold different series."""
    if {(n, k) for n, s in a.values.items() for k in s} != {(n, k) for n, s in b.values.items() for k in s}:
        return float("inf")
    worst = 0.0
    for name, series in a.values.items():
        for key, x in series.items():
            y = b.values[name][key]
            worst = max(worst, abs(x - y) / max(abs(x), abs(y)) if x != y else 0.0)
    return worst


class _FixedTime:
    """Evaluates every fetch at one instant of the backfilled history."""

    def __init__(self, source: PrometheusSource, at: float) -> None:
        self.source = source
        self.at = at

    def fetch(self, catalog, deadline=None):  # type: ignore[no-untyped-def]
        return self.source.fetch(catalog, at=self.at, deadline=deadline)

    def constraint_states(self, values):  # type: ignore[no-untyped-def]
        return self.source.constraint_states(values)


def _prometheus_version() -> str:
    try:
        first = subprocess.run(["prometheus", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    except OSError:
        return "?"
    match = re.search(r"version (\S+)", first)
    return match.group(1) if match else "?"


def _ms(value: Optional[float]) -> str:
    return "     - ms" if value is None else f"{value:6.1f} ms"


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
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"Python {platform.python_version()}, Prometheus {_prometheus_version()}")
    print(f"machine: {machine}")
    print(f"history: {res['instances']} routers, {res['series_per_request_metric']} series per request metric, "
          f"{res['latency_bucket_series']} latency bucket series (prepared in {res['prepare_seconds']:.1f}s)")
    print(f"recording rules: backfilled in {res['rules_backfill_passes']} passes "
          f"({res['rules_backfill_seconds']:.1f}s); cycles evaluated at the request group's last evaluation")
    for mode, _, _, _ in MODES:
        r = res[mode]  # type: ignore[index]
        print(f"{mode:>20}: median {r['median_ms']:7.1f} ms  p90 {r['p90_ms']:7.1f} ms  "
              f"{r['queries_per_cycle']:3d} queries/cycle  queries {r['query_median_ms']:6.1f} ms  "
              f"Prometheus exec {_ms(r['prometheus_exec_ms'])}  {r['signal_values']} signal values")
    print(f"aggregates vs per-signal baseline: {res['speedup']:.2f}x faster (target: cycle under 100 ms)")
    print(f"recorded vs aggregates: {res['recorded_speedup']:.2f}x faster; same signal values "
          f"(largest relative difference {res['recorded_max_rel_diff']:.1e})")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, **res}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
