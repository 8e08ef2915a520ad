#!/usr/bin/env python3
"""Load and soak: many threads recording a million requests into one optimizer.

``--threads`` threads (default 16) record ``--requests`` requests (default
1,000,000) into one ``DualTrackOptimizer``, started as a router starts it (a
``ResourceMonitor`` reading the machine in the background, the embedded
adaptation thread running a cycle every second over the same windows). Each
thread starts its requests eight at a time and completes them in the same
order, varying path (local, api, parallel), query class, outcome (success,
error, timeout, cancelled), model, tokens, quality and latency (``latency_ms``
over every histogram bucket). A share of the requests carries unbounded
values — a fresh ``path``, ``query_class`` or ``model`` string each time, as a
misbehaving caller would send — and one in 997 a bad ``tokens_in``.

Checked, and a failure is exit status 1:

* **every request counted exactly once**: ``dualtrack_requests_total`` sums
  to the requests recorded, and every series of it, every latency-histogram
  bucket, ``_count`` and the quality-histogram counts equal what the threads
  tallied themselves; nothing in flight at the end, no internal error, no
  start expired, every bad field in ``dualtrack_inputs_rejected_total``;
* **the label-cardinality guard**: the unbounded values fold into ``other``,
  each fold counted in ``dualtrack_label_values_folded_total`` (exactly: one
  per unbounded path or class, one per model beyond the ``max_model_labels``
  dynamic slots), every label keeps its bounded set, and the number of series
  stays what it was early in the run.

Measured and reported: throughput (requests/s) with all threads, against a
**baseline** from the same run: the same workload on one thread into a fresh
optimizer; memory growth from a checkpoint after the first 5% of requests
(windows full, label children bound) to the end, as RSS (sampled every 0.25
s; the maximum too) and, in a second pass of the same workload under
``tracemalloc``, as Python-allocated bytes still alive at the end (the pass
is slower, so it is not timed). Target: growth under 10 MB. With
``--scaling`` (on by default in full runs) the workload also runs at 1, 2, 4,
8 and 16 threads, 200,000 requests each, with this process's CPU time per
request: what adding threads costs. Each timed run also reports the CPU
share other processes took meanwhile, the noise in its figures.

    python benchmarks/load_soak.py                     # 1,000,000 requests, 16 threads (a few minutes on 2 cores)
    python benchmarks/load_soak.py --quick             # 40,000 requests: a smoke run
    python benchmarks/load_soak.py --json out/load_soak.json
"""

from __future__ import annotations

import argparse
import bisect
import gc
import os
import sys
import threading
import time
import tracemalloc
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

import prometheus_client
import psutil
from _common import announce, write_json
from prometheus_client import CollectorRegistry

from dualtrack import DualTrackOptimizer, ModelPrice, OptimizationConfig
from dualtrack.exporter.metrics import LATENCY_BUCKETS

TARGET_MEMORY_MB = 10.0
PATHS = ("local", "api", "parallel")
CLASSES = ("short", "medium", "long")
OUTCOMES = ("success", "error", "timeout", "cancelled")
MODELS = {"local": ("llama-3.1-8b", "qwen2.5-7b"), "api": ("gpt-4o-mini", "gpt-4o", "claude-haiku"),
          "parallel": ("race",)}
PRICES = {"llama-3.1-8b": ModelPrice(0, 0), "qwen2.5-7b": ModelPrice(0, 0), "gpt-4o-mini": ModelPrice(0.15, 0.6),
          "gpt-4o": ModelPrice(2.5, 10.0), "claude-haiku": ModelPrice(0.8, 4.0), "race": ModelPrice(0, 0)}
#: One query per class for the default classifier (boundaries 256 and 2048 estimated tokens).
QUERIES = {"short": "What is the capital of France?", "medium": "Summarise: " + "lorem ipsum " * 200,
           "long": "Review:\n```python\n" + "def f(x):\n    return x\n" * 600 + "```"}
LATENCIES_MS = (5, 20, 40, 80, 200, 400, 700, 900, 1200, 1800, 2500, 4000, 6000, 9000, 12000, 18000, 25000,
                40000, 55000, 80000, 110000, 200000)
BATCH = 8  # requests a thread has in flight at once
BAD_EVERY = 997
MAX_MODEL_LABELS = 16


# --------------------------------------------------------------------------- the workload


class Tally:
    """What one thread recorded, by the labels the optimizer must show for it."""

    def __init__(self) -> None:
        self.requests: Counter = Counter()  # (path, class, outcome)
        self.buckets: Counter = Counter()  # (path, class, bucket index)
        self.durations: Counter = Counter()  # (path, class) -> observations
        self.quality: Counter = Counter()  # (path, class)
        self.tokens = 0
        self.bad = 0
        self.junk = Counter()  # label -> unbounded values sent

    def merge(self, other: "Tally") -> None:
        for name in ("requests", "buckets", "durations", "quality", "junk"):
            getattr(self, name).update(getattr(other, name))
        self.tokens += other.tokens
        self.bad += other.bad


def plan(thread: int, i: int, unbounded_every: int) -> Tuple[Any, ...]:
    """Request ``i`` of ``thread``: (rid, query, context, path, result, success, error_type, labels)."""
    path = PATHS[i % 3]
    qc = CLASSES[(i // 3) % 3]
    roll = i % 50
    outcome = "error" if roll < 2 else "timeout" if roll == 2 else "cancelled" if roll == 3 else "success"
    models = MODELS[path]
    model = models[(i // 9) % len(models)]
    latency = LATENCIES_MS[(i // 7) % len(LATENCIES_MS)]
    result: Dict[str, Any] = {"tokens_in": 50 + i % 400, "tokens_out": 20 + i % 300, "model": model,
                              "latency_ms": latency}
    if outcome == "success":
        result["quality_score"] = 0.5 + (i % 50) / 100.0
    context: Optional[Dict[str, Any]] = None
    path_label, qc_label, junk = path, qc, None
    j = i % unbounded_every if unbounded_every else -1
    if j == 0:
        path = path_label = f"gpu-node-{thread}-{i}"  # a caller putting a host name in the path
        path_label, junk = "other", "path"
    elif j == 1:
        context = {"query_class": f"user-{thread}-{i}"}  # a caller using user ids as classes
        qc_label, junk = "other", "query_class"
    elif j == 2:
        result["model"] = f"ft:gpt-4o:{thread}:{i}"  # a fine-tune per request
        junk = "model"
    bad = i % BAD_EVERY == BAD_EVERY - 1
    if bad:
        result["tokens_in"] = -1  # rejected and counted; the request still counts
    success = outcome == "success"
    error_type = None if success else ("timeout" if outcome == "timeout" else
                                       "cancelled" if outcome == "cancelled" else "backend_error")
    return (f"t{thread}-r{i}", QUERIES[qc], context, path, result, success, error_type,
            (path_label, qc_label, outcome, latency, junk, bad))


def run_thread(optimizer: DualTrackOptimizer, thread: int, start: int, stop: int, unbounded_every: int,
               tally: Tally) -> None:
    begin = optimizer.record_request_start
    complete = optimizer.record_request_completion
    bucket_of = LATENCY_BUCKETS
    i = start
    while i < stop:
        batch = [plan(thread, k, unbounded_every) for k in range(i, min(i + BATCH, stop))]
        for rid, query, context, *_ in batch:
            begin(rid, query, context)
        for rid, _, _, path, result, success, error_type, labels in batch:
            complete(rid, path, result, success=success, error_type=error_type)
            path_label, qc_label, outcome, latency, junk, bad = labels
            tally.requests[(path_label, qc_label, outcome)] += 1
            if outcome != "cancelled":
                tally.durations[(path_label, qc_label)] += 1
                tally.buckets[(path_label, qc_label, bisect.bisect_left(bucket_of, latency / 1000.0))] += 1
            if outcome == "success":
                tally.quality[(path_label, qc_label)] += 1
            tally.tokens += (0 if bad else result["tokens_in"]) + result["tokens_out"]
            tally.bad += bad
            if junk:
                tally.junk[junk] += 1
        i += len(batch)


def make_optimizer(adapting: bool) -> DualTrackOptimizer:
    config = OptimizationConfig(prices=PRICES, max_model_labels=MAX_MODEL_LABELS,
                                adaptation_interval_seconds=1.0, monitor_interval_seconds=1.0)
    optimizer = DualTrackOptimizer(config, registry=CollectorRegistry())
    if adapting:
        optimizer.start()  # the monitor and the embedded adaptation thread, as in a router
    return optimizer


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


class RssSampler:
    def __init__(self, period: float = 0.25) -> None:
        self.max = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True, name="rss-sampler")

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            self.max = max(self.max, rss())

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.max = max(self.max, rss())


def _busy(times: Any) -> float:
    return sum(getattr(times, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


class CpuAccount:
    """CPU seconds used by other processes while a run was timed: the noise in its figures."""

    def __enter__(self) -> "CpuAccount":
        self._process = psutil.Process()
        self._system, self._own = _busy(psutil.cpu_times()), sum(self._process.cpu_times()[:2])
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        own = sum(self._process.cpu_times()[:2]) - self._own
        self.other_seconds = max(0.0, _busy(psutil.cpu_times()) - self._system - own)
        self.own_seconds = own
        self.available_seconds = (time.perf_counter() - self._wall) * (os.cpu_count() or 1)


def run(requests: int, threads: int, unbounded_every: int, *, trace: bool = False,
        adapting: bool = True) -> Dict[str, Any]:
    """Record ``requests`` on ``threads`` threads into a fresh optimizer; figures and the optimizer's state."""
    optimizer = make_optimizer(adapting)
    share = [requests // threads + (1 if t < requests % threads else 0) for t in range(threads)]
    bounds = []
    offset = 0
    for n in share:
        bounds.append(n)
        offset += n
    warm = [max(0, n // 20) for n in share]  # the first 5% of each thread's requests
    tallies = [Tally() for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)
    checkpoint: Dict[str, Any] = {}

    def worker(t: int) -> None:
        run_thread(optimizer, t, 0, warm[t], unbounded_every, tallies[t])
        barrier.wait()  # checkpoint: the main thread measures
        barrier.wait()
        run_thread(optimizer, t, warm[t], share[t], unbounded_every, tallies[t])

    workers = [threading.Thread(target=worker, args=(t,), name=f"soak-{t}") for t in range(threads)]
    with RssSampler() as sampler:
        for w in workers:
            w.start()
        barrier.wait()
        gc.collect()
        checkpoint["rss"] = rss()
        checkpoint["series"] = series_count(optimizer.registry)
        if trace:
            tracemalloc.start()
        with CpuAccount() as cpu:
            started = time.perf_counter()
            barrier.wait()
            for w in workers:
                w.join()
            seconds = time.perf_counter() - started
        if trace:
            gc.collect()
            traced, peak = tracemalloc.get_traced_memory()
            snapshot = tracemalloc.take_snapshot()
            tracemalloc.stop()
        gc.collect()
        end_rss = rss()
    optimizer.stop()
    tally = Tally()
    for t in tallies:
        tally.merge(t)
    timed = requests - sum(warm)
    out: Dict[str, Any] = {
        "requests": requests, "threads": threads, "timed_requests": timed, "seconds": seconds,
        "requests_per_second": timed / seconds if seconds > 0 else None,
        "rss_checkpoint_mb": checkpoint["rss"] / 2**20, "rss_end_mb": end_rss / 2**20,
        "rss_max_mb": sampler.max / 2**20, "rss_growth_mb": (end_rss - checkpoint["rss"]) / 2**20,
        "series_at_checkpoint": checkpoint["series"],
        "cpu_seconds_this_process": cpu.own_seconds, "cpu_seconds_other_processes": cpu.other_seconds,
        "cpu_share_other_processes": cpu.other_seconds / cpu.available_seconds if cpu.available_seconds else 0.0,
    }
    if trace:
        top = snapshot.statistics("lineno")[:5]
        out["tracemalloc_growth_mb"] = traced / 2**20
        out["tracemalloc_peak_mb"] = peak / 2**20
        out["tracemalloc_top"] = [f"{s.traceback[0].filename.rsplit('/', 2)[-1]}:{s.traceback[0].lineno} "
                                  f"{s.size / 1024:.0f} KiB in {s.count} blocks" for s in top]
    out["checks"] = check(optimizer, tally, requests)
    out["state"] = {"in_flight_table": len(optimizer.recorder._calls) + len(optimizer.recorder._parents),
                    "window_records": len(optimizer.collector.metrics)}
    return out


# --------------------------------------------------------------------------- checks


def samples(registry: CollectorRegistry) -> List[Any]:
    return [s for family in registry.collect() for s in family.samples if s.name.startswith("dualtrack_")]


def series_count(registry: CollectorRegistry) -> int:
    return len({(s.name, tuple(sorted(s.labels.items()))) for s in samples(registry)})


def check(optimizer: DualTrackOptimizer, tally: Tally, requests: int) -> Dict[str, Any]:
    """Compare the registry with the threads' own tallies; every problem is listed."""
    all_samples = samples(optimizer.registry)
    problems: List[str] = []

    def value(name: str, **labels: str) -> float:
        return optimizer.registry.get_sample_value(name, labels) or 0.0

    def total(name: str, **match: str) -> float:
        return sum(s.value for s in all_samples if s.name == name
                   and all(s.labels.get(k) == v for k, v in match.items()))

    counted = total("dualtrack_requests_total")
    if counted != requests or sum(tally.requests.values()) != requests:
        problems.append(f"dualtrack_requests_total sums to {counted:.0f}, recorded {requests}")
    series = [s for s in all_samples if s.name == "dualtrack_requests_total"]
    for s in series:
        key = (s.labels["path"], s.labels["query_class"], s.labels["outcome"])
        if s.value != tally.requests.get(key, 0):
            problems.append(f"requests_total{key} = {s.value:.0f}, expected {tally.requests.get(key, 0)}")
    for key, expected in tally.requests.items():
        if value("dualtrack_requests_total", path=key[0], query_class=key[1], outcome=key[2]) != expected:
            problems.append(f"requests_total{key} missing or wrong (expected {expected})")
    histogram_series = 0
    for (path, qc), expected in tally.durations.items():
        labels = {"path": path, "query_class": qc}
        if value("dualtrack_request_duration_seconds_count", **labels) != expected:
            problems.append(f"duration _count{{{path},{qc}}} != {expected}")
        running = 0
        for index, le in enumerate(LATENCY_BUCKETS + (float("inf"),)):
            running += tally.buckets.get((path, qc, index), 0)
            le_text = prometheus_client.utils.floatToGoString(le)
            histogram_series += 1
            if value("dualtrack_request_duration_seconds_bucket", le=le_text, **labels) != running:
                problems.append(f"duration bucket le={le_text}{{{path},{qc}}} != {running}")
    for (path, qc), expected in tally.quality.items():
        if value("dualtrack_response_quality_ratio_count", path=path, query_class=qc) != expected:
            problems.append(f"quality _count{{{path},{qc}}} != {expected}")
    tokens = total("dualtrack_tokens_total")
    if tokens != tally.tokens:
        problems.append(f"dualtrack_tokens_total sums to {tokens:.0f}, expected {tally.tokens}")
    rejected = total("dualtrack_inputs_rejected_total")
    if rejected != tally.bad or value("dualtrack_inputs_rejected_total", input="result",
                                      reason="bad_tokens_in") != tally.bad:
        problems.append(f"inputs rejected {rejected:.0f}, expected {tally.bad} bad_tokens_in")
    for name in ("dualtrack_optimizer_errors_total", "dualtrack_request_starts_expired_total",
                 "dualtrack_completions_without_start_total"):
        if total(name):
            problems.append(f"{name} = {total(name):.0f}, expected 0")
    in_flight = value("dualtrack_requests_in_flight")
    if in_flight != 0 or optimizer.in_flight_count() != 0:
        problems.append(f"in flight at the end: gauge {in_flight}, table {optimizer.in_flight_count()}")

    # The cardinality guard.
    folded = {label: value("dualtrack_label_values_folded_total", label=label)
              for label in ("path", "query_class", "model")}
    junk_models = tally.junk["model"]
    expected_folds = {"path": tally.junk["path"], "query_class": tally.junk["query_class"],
                      "model": max(0, junk_models - MAX_MODEL_LABELS)}
    for label, expected in expected_folds.items():
        if folded[label] != expected:
            problems.append(f"folded {label}: {folded[label]:.0f}, expected {expected}")
    distinct: Dict[str, set] = {"path": set(), "query_class": set(), "model": set()}
    for s in all_samples:
        if s.name.startswith(("dualtrack_label_values_folded", "dualtrack_inputs_rejected")):
            continue
        for label in distinct:
            # An empty value is the label's absence to Prometheus (the adaptation's whole-track
            # changes carry query_class=""): not a value that can grow.
            if s.labels.get(label):
                distinct[label].add(s.labels[label])
    bounds = {"path": len(PATHS) + 1, "query_class": len(CLASSES) + 1,
              "model": len(PRICES) + 1 + MAX_MODEL_LABELS + 1}  # the table, "local" (the config's), slots, other
    for label, values in distinct.items():
        if len(values) > bounds[label]:
            problems.append(f"{label} has {len(values)} values, bound {bounds[label]}")
    return {
        "exact": not problems, "problems": problems[:50],
        "requests_total": counted, "requests_total_series_checked": len(series),
        "histogram_buckets_checked": histogram_series, "tokens_total": tokens,
        "inputs_rejected": rejected, "inputs_rejected_expected": tally.bad,
        "unbounded_values_sent": dict(tally.junk),
        "folded": folded, "folded_expected": expected_folds,
        "distinct_label_values": {k: len(v) for k, v in distinct.items()}, "label_bounds": bounds,
        "series_end": series_count(optimizer.registry),
    }


# --------------------------------------------------------------------------- main


def report(name: str, figures: Dict[str, Any]) -> None:
    c = figures["checks"]
    print(f"{name}: {figures['requests']:,} requests on {figures['threads']} thread(s): "
          f"{figures['requests_per_second']:,.0f} requests/s ({figures['timed_requests']:,} timed in "
          f"{figures['seconds']:.1f} s; other processes used {100 * figures['cpu_share_other_processes']:.0f}% "
          f"of the CPUs meanwhile)")
    verdict = "exact" if c["exact"] else "MISMATCH"
    print(f"  counted exactly once: {verdict}: dualtrack_requests_total = {c['requests_total']:,.0f} of "
          f"{figures['requests']:,}; {c['requests_total_series_checked']} request series, "
          f"{c['histogram_buckets_checked']} latency buckets, quality counts and tokens equal the threads' tallies; "
          f"in flight at the end 0; {c['inputs_rejected']:.0f} bad fields rejected of {c['inputs_rejected_expected']}")
    for problem in c["problems"]:
        print(f"    ! {problem}")


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, help="requests recorded (default 1000000; --quick 40000)")
    parser.add_argument("--threads", type=int, default=16, help="recording threads (default 16)")
    parser.add_argument("--baseline-requests", type=int,
                        help="requests of the single-thread baseline (default a tenth of --requests)")
    parser.add_argument("--unbounded-every", type=int, default=50,
                        help="one request in N carries an unbounded path, one a class, one a model (default 50)")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the tracemalloc pass")
    parser.add_argument("--scaling", metavar="N,N,...",
                        help="also time 200,000 requests on each of these thread counts, for the CPU cost per "
                             "request as threads are added (default 1,2,4,8,16; --quick none)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (40,000 requests)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    args = parser.parse_args(list(argv))
    if args.requests is None:
        args.requests = 40_000 if args.quick else 1_000_000
    if args.scaling is None:
        args.scaling = "" if args.quick else "1,2,4,8,16"
    try:
        scaling = [int(x) for x in args.scaling.split(",") if x.strip()]
    except ValueError:
        parser.error("--scaling: a comma-separated list of thread counts")
    if args.baseline_requests is None:
        args.baseline_requests = max(1000, args.requests // 10)
    if args.requests <= 0 or args.threads <= 0 or args.baseline_requests <= 0 or args.unbounded_every < 3:
        parser.error("--requests, --threads and --baseline-requests must be positive, --unbounded-every >= 3")

    info = announce("dualtrack load and soak")
    print(f"{args.requests:,} requests on {args.threads} threads into one optimizer (monitor and adaptation "
          f"thread running); one in {args.unbounded_every} with an unbounded path, class and model each")

    results: Dict[str, Any] = {"machine": info, "settings": vars(args).copy(), "target_memory_mb": TARGET_MEMORY_MB}
    # The baseline runs before and after the threaded run: drift (other load
    # on the machine) shows as a difference between the two.
    before = run(args.baseline_requests, 1, args.unbounded_every)
    main_run = run(args.requests, args.threads, args.unbounded_every)
    results["run"] = main_run
    report("threads", main_run)
    after = run(args.baseline_requests, 1, args.unbounded_every)
    baseline = dict(after, requests_per_second=(before["requests_per_second"] + after["requests_per_second"]) / 2,
                    before_requests_per_second=before["requests_per_second"],
                    after_requests_per_second=after["requests_per_second"],
                    cpu_share_other_processes=max(before["cpu_share_other_processes"],
                                                  after["cpu_share_other_processes"]))
    baseline["checks"] = dict(after["checks"], exact=before["checks"]["exact"] and after["checks"]["exact"],
                              problems=before["checks"]["problems"] + after["checks"]["problems"])
    results["baseline_single_thread"] = baseline
    report("baseline (1 thread, fresh optimizer; mean of a run before and after)", baseline)
    ratio = main_run["requests_per_second"] / baseline["requests_per_second"]
    results["throughput_ratio"] = ratio
    print(f"throughput: {main_run['requests_per_second']:,.0f} requests/s on {args.threads} threads = "
          f"{ratio:.2f}x the single-thread baseline ({baseline['requests_per_second']:,.0f} requests/s: "
          f"{before['requests_per_second']:,.0f} before, {after['requests_per_second']:,.0f} after)")

    if scaling:
        rows = []
        for threads in scaling:
            figures = run(200_000, threads, args.unbounded_every)
            rows.append({"threads": threads, "requests_per_second": figures["requests_per_second"],
                         "cpu_us_per_request": 1e6 * figures["cpu_seconds_this_process"] / figures["timed_requests"],
                         "cpu_share_other_processes": figures["cpu_share_other_processes"],
                         "exact": figures["checks"]["exact"]})
        results["scaling"] = rows
        print("scaling (200,000 requests each): " + "; ".join(
            f"{r['threads']} thread(s) {r['requests_per_second']:,.0f}/s, {r['cpu_us_per_request']:.1f} us CPU per "
            f"request" for r in rows))

    c = main_run["checks"]
    print(f"cardinality guard: sent {sum(c['unbounded_values_sent'].values()):,} unbounded values "
          f"({', '.join(f'{k} {v:,}' for k, v in sorted(c['unbounded_values_sent'].items()))}); folded "
          + ", ".join(f"{k} {c['folded'][k]:,.0f} (expected {c['folded_expected'][k]:,})" for k in c["folded"])
          + "; distinct values " + ", ".join(f"{k} {v} (bound {c['label_bounds'][k]})"
                                              for k, v in c["distinct_label_values"].items()))
    print(f"series: {main_run['series_at_checkpoint']:,} after the first 5% of requests, {c['series_end']:,} at the "
          f"end (every dualtrack_ series, histogram buckets included)")

    memory: Dict[str, Any] = {
        "rss_checkpoint_mb": main_run["rss_checkpoint_mb"], "rss_end_mb": main_run["rss_end_mb"],
        "rss_max_mb": main_run["rss_max_mb"], "rss_growth_mb": main_run["rss_growth_mb"],
    }
    if not args.no_tracemalloc:
        traced = run(args.requests, args.threads, args.unbounded_every, trace=True)
        results["tracemalloc_run"] = traced
        memory.update({"tracemalloc_growth_mb": traced["tracemalloc_growth_mb"],
                       "tracemalloc_peak_mb": traced["tracemalloc_peak_mb"],
                       "tracemalloc_top": traced["tracemalloc_top"],
                       "tracemalloc_run_exact": traced["checks"]["exact"]})
        if not traced["checks"]["exact"]:
            report("tracemalloc pass", traced)
    growth = max(memory["rss_growth_mb"], memory.get("tracemalloc_growth_mb", 0.0))
    memory["target_met"] = growth < TARGET_MEMORY_MB
    results["memory"] = memory
    line = (f"memory: RSS {memory['rss_checkpoint_mb']:.1f} MiB after the first 5% -> {memory['rss_end_mb']:.1f} MiB "
            f"at the end (growth {memory['rss_growth_mb']:+.2f} MiB, max {memory['rss_max_mb']:.1f} MiB)")
    if "tracemalloc_growth_mb" in memory:
        line += (f"; tracemalloc: {memory['tracemalloc_growth_mb']:+.2f} MiB still allocated at the end "
                 f"(peak {memory['tracemalloc_peak_mb']:.2f} MiB)")
    print(line + f"; target under {TARGET_MEMORY_MB:g} MB: {'met' if memory['target_met'] else 'MISSED'}")
    if "tracemalloc_top" in memory:
        print("  largest live allocations since the checkpoint: " + "; ".join(memory["tracemalloc_top"][:3]))

    exact = (main_run["checks"]["exact"] and baseline["checks"]["exact"] and memory.get("tracemalloc_run_exact", True)
             and all(r["exact"] for r in results.get("scaling", [])))
    results["exact"] = exact
    print(f"correctness: {'every request counted exactly once in every run' if exact else 'FAILED'}")
    if args.json:
        write_json(args.json, results)
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
