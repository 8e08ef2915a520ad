#!/usr/bin/env python3
"""Instrumentation overhead: what one request costs the router.

Measures, in one run and on one machine:

* the per-request cost of ``record_request_start`` + ``record_request_completion``
  + a cached ``get_optimization_recommendations`` on a ``DualTrackOptimizer``;
* against a **baseline** that records the same series with bare
  ``prometheus_client`` calls, ``.labels(...).inc/observe`` on every call
  (requests counter, duration histogram, tokens in and out, cost, quality
  histogram, in-flight inc/dec) plus the two clock reads a router needs to
  time the request itself;
* single-threaded and with ``--threads`` threads (default 8) sharing one
  optimizer / one set of metrics;
* with request-id exemplars (the default) and without;
* and the memory growth (RSS) over ``--memory-requests`` requests (default
  1,000,000) once the sliding windows are full.

The optimizer runs the way a router runs it: a ``ResourceMonitor`` *started*
in the background (real psutil, NVML if present) so every completion reads
the latest snapshot, no system call per request; the adaptation thread is not
started (it would only clear the recommendation cache every 30 s).

Timing: requests run in batches (``--batch``, default 1000); a batch is timed
as a whole with ``perf_counter_ns`` and divided by its size; the figure is
the median over batches. Variants are interleaved batch by batch so drift
(CPU frequency, other load) hits them alike. With threads, each round runs a
batch on every thread between two barriers and the figure is round wall time
/ requests in the round (the whole process's cost per request, GIL included).

    python benchmarks/overhead.py                 # full run, about a minute on 2 cores
    python benchmarks/overhead.py --quick         # a few seconds (smoke test)
    python benchmarks/overhead.py --json out.json

Targets (issue 2): median overhead at most 1.5x the bare baseline; memory
growth under 10 MB over 1,000,000 requests.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

import psutil
from _common import announce, write_json
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dualtrack import DualTrackOptimizer, ModelPrice, OptimizationConfig
from dualtrack.exporter.metrics import LATENCY_BUCKETS, QUALITY_BUCKETS

TARGET_RATIO = 1.5
TARGET_MEMORY_MB = 10.0

# A small rotating workload: three paths, three query lengths (so three
# classes), a priced API model, the local model free.
QUERIES = ("What is the capital of France?", "Summarise this: " + "lorem ipsum " * 200,
           "Review this code:\n```python\n" + "def f(x):\n    return x\n" * 600 + "```")
PATHS = ("local", "api", "parallel")
CLASSES = ("short", "medium", "long")  # what the default classifier makes of QUERIES
MODELS = ("local", "api", "api")
RESULTS = tuple({"tokens_in": 120 + 40 * i, "tokens_out": 300, "quality_score": 0.9, "model": MODELS[i]}
                for i in range(3))
LATENCY_SECONDS = 0.75  # the baseline observes a fixed duration: its clock reads are timed, not this value


Work = Callable[[Sequence[str]], None]


# --------------------------------------------------------------------------- the two contenders


def make_optimizer(exemplars: bool) -> DualTrackOptimizer:
    config = OptimizationConfig(prices={"local": ModelPrice(0, 0), "api": ModelPrice(2.5, 10.0)})
    optimizer = DualTrackOptimizer(config, registry=CollectorRegistry())
    optimizer.metrics.exemplars = exemplars
    assert optimizer.resource_monitor is not None
    optimizer.resource_monitor.start_monitoring()
    for i, query in enumerate(QUERIES):  # the default classifier must give the classes the baseline uses
        assert optimizer.get_optimization_recommendations(query)["query_class"] == CLASSES[i]
    return optimizer


def optimizer_work(optimizer: DualTrackOptimizer, recommend: bool = True) -> Work:
    recommendation = optimizer.get_optimization_recommendations
    start = optimizer.record_request_start
    complete = optimizer.record_request_completion

    def run(ids: Sequence[str]) -> None:
        for n, rid in enumerate(ids):
            k = n % 3
            query = QUERIES[k]
            recommendation(query)
            start(rid, query)
            complete(rid, PATHS[k], RESULTS[k])

    def record_only(ids: Sequence[str]) -> None:
        for n, rid in enumerate(ids):
            k = n % 3
            start(rid, QUERIES[k])
            complete(rid, PATHS[k], RESULTS[k])

    return run if recommend else record_only


class Bare:
    """The same series as the optimizer, recorded with bare prometheus_client calls."""

    def __init__(self) -> None:
        r = CollectorRegistry()
        self.requests = Counter("bare_requests", "x", ["path", "query_class", "outcome"], registry=r)
        self.duration = Histogram("bare_request_duration_seconds", "x", ["path", "query_class"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("bare_tokens", "x", ["path", "query_class", "model", "direction"], registry=r)
        self.cost = Counter("bare_cost_dollars", "x", ["path", "query_class", "model"], registry=r)
        self.quality = Histogram("bare_response_quality_ratio", "x", ["path", "query_class"],
                                 buckets=QUALITY_BUCKETS, registry=r)
        self.in_flight = Gauge("bare_requests_in_flight", "x", registry=r)
        self.registry = r


def bare_work(bare: Bare) -> Work:
    requests, duration, tokens, cost, quality, in_flight = (
        bare.requests, bare.duration, bare.tokens, bare.cost, bare.quality, bare.in_flight)
    clock = time.monotonic
    prices = {"local": (0.0, 0.0), "api": (2.5, 10.0)}

    def run(ids: Sequence[str]) -> None:
        for n, _rid in enumerate(ids):
            k = n % 3
            path, qc, result = PATHS[k], CLASSES[k], RESULTS[k]
            started = clock()
            in_flight.inc()
            elapsed = clock() - started  # the router times the request itself
            in_flight.dec()
            model = result["model"]
            t_in, t_out = result["tokens_in"], result["tokens_out"]
            p_in, p_out = prices[model]
            requests.labels(path, qc, "success").inc()
            duration.labels(path, qc).observe(elapsed + LATENCY_SECONDS)
            tokens.labels(path, qc, model, "input").inc(t_in)
            tokens.labels(path, qc, model, "output").inc(t_out)
            cost.labels(path, qc, model).inc((t_in * p_in + t_out * p_out) / 1e6)
            quality.labels(path, qc).observe(result["quality_score"])

    return run


# --------------------------------------------------------------------------- timing


def time_single(variants: Dict[str, Work], requests: int, batch: int) -> Dict[str, List[float]]:
    """Per-request ns of each batch, variants interleaved (rotating order)."""
    ids = [f"req-{i:07d}" for i in range(batch)]
    per_request: Dict[str, List[float]] = {name: [] for name in variants}
    names = list(variants)
    for work in variants.values():  # warm-up: bind children, fill caches
        work(ids)
    for round_ in range(max(1, requests // batch)):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            t0 = time.perf_counter_ns()
            variants[name](ids)
            per_request[name].append((time.perf_counter_ns() - t0) / batch)
    return per_request


def time_threads(variants: Dict[str, Work], requests: int, batch: int, threads: int) -> Dict[str, List[float]]:
    """Per-request ns of each round (``threads`` batches at once), variants interleaved."""
    names = list(variants)
    current: List[str] = [names[0]]
    done = [False]
    start = threading.Barrier(threads + 1)
    end = threading.Barrier(threads + 1)
    errors: List[BaseException] = []

    def worker(t: int) -> None:
        ids = [f"t{t}-req-{i:07d}" for i in range(batch)]
        while True:
            start.wait()
            if done[0]:
                return
            try:
                variants[current[0]](ids)
            except BaseException as err:  # pragma: no cover - reported by the main thread
                errors.append(err)
            end.wait()

    pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for thread in pool:
        thread.start()
    per_request: Dict[str, List[float]] = {name: [] for name in names}
    rounds = max(1, requests // (batch * threads))
    try:
        for round_ in range(-1, rounds):  # round -1: warm-up of every variant
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                current[0] = name
                # The clock starts before the barrier opens: once it opens the
                # workers may hold the GIL before this thread runs again.
                t0 = time.perf_counter_ns()
                start.wait()
                end.wait()
                elapsed = time.perf_counter_ns() - t0
                if round_ >= 0:
                    per_request[name].append(elapsed / (batch * threads))
    finally:
        done[0] = True
        start.wait()
        for thread in pool:
            thread.join(timeout=10)
    if errors:
        raise errors[0]
    return per_request


def recommendation_breakdown(batch: int, rounds: int) -> Dict[str, Dict[str, float]]:
    """Median ns of one cached recommendation, and of the query-complexity
    heuristic inside it, for each query of the workload (by length)."""
    optimizer = make_optimizer(exemplars=True)
    recommend = optimizer.get_optimization_recommendations
    complexity = optimizer.classifier.complexity
    out: Dict[str, Dict[str, float]] = {}
    for query, qc in zip(QUERIES, CLASSES, strict=False):
        figures = {}
        for name, func in (("recommendation_ns", recommend), ("complexity_ns", complexity)):
            samples = []
            for _ in range(rounds):
                t0 = time.perf_counter_ns()
                for _ in range(batch):
                    func(query)
                samples.append((time.perf_counter_ns() - t0) / batch)
            figures[name] = statistics.median(samples)
        out[f"{qc} ({len(query):,} chars)"] = figures
    optimizer.resource_monitor.stop_monitoring()  # type: ignore[union-attr]
    return out


# --------------------------------------------------------------------------- memory


def rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def memory_growth(total: int, warmup: int) -> Dict[str, Any]:
    """RSS growth over ``total`` requests after ``warmup`` (windows full, children bound)."""
    optimizer = make_optimizer(exemplars=True)
    work = optimizer_work(optimizer)
    chunk = 10_000

    def run(n: int, offset: int) -> None:
        done = 0
        while done < n:
            size = min(chunk, n - done)
            # Unique request ids, as in production; built per chunk, outside any table.
            work([f"m-{offset + done + i}" for i in range(size)])
            done += size

    run(warmup, 0)
    gc.collect()
    before = rss_bytes()
    blocks_before = sys.getallocatedblocks()
    t0 = time.perf_counter()
    run(total, warmup)
    seconds = time.perf_counter() - t0
    gc.collect()
    after = rss_bytes()
    blocks_after = sys.getallocatedblocks()
    collector = optimizer.collector
    state = {
        "in_flight_table": optimizer.in_flight_count(),
        "window_records": len(collector.metrics) + sum(len(d) for d in collector.metrics_by_path.values())
        + sum(len(d) for d in collector.metrics_by_class.values()),
    }
    optimizer.resource_monitor.stop_monitoring()  # type: ignore[union-attr]
    return {
        "requests": total,
        "warmup_requests": warmup,
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
        "rss_growth_mb": (after - before) / 2**20,
        "python_blocks_growth": blocks_after - blocks_before,
        "seconds": seconds,
        **state,
    }


# --------------------------------------------------------------------------- main


def summarize(samples: Dict[str, List[float]]) -> Dict[str, Dict[str, float]]:
    out = {}
    for name, values in samples.items():
        ordered = sorted(values)
        out[name] = {
            "median_ns": statistics.median(ordered),
            "p10_ns": ordered[len(ordered) // 10],
            "p90_ns": ordered[(len(ordered) * 9) // 10],
            "batches": len(ordered),
        }
    return out


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int,
                        help="requests timed per variant and threading mode (default 200000; --quick 6000)")
    parser.add_argument("--threads", type=int, default=8, help="threads for the multi-threaded run (default 8)")
    parser.add_argument("--batch", type=int, help="requests per timed batch (default 1000; --quick 200)")
    parser.add_argument("--memory-requests", type=int,
                        help="requests for the memory-growth measurement (default 1000000; --quick 20000; 0 skips)")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds, rough numbers (a smoke test); explicit options still win")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    args = parser.parse_args(list(argv))
    defaults = (6000, 200, 20_000) if args.quick else (200_000, 1000, 1_000_000)
    for name, default in zip(("requests", "batch", "memory_requests"), defaults, strict=False):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.requests <= 0 or args.batch <= 0 or args.threads <= 0 or args.memory_requests < 0:
        parser.error("--requests, --batch and --threads must be positive, --memory-requests not negative")

    machine = announce("dualtrack instrumentation overhead")
    print(f"{args.requests} requests per variant, batches of {args.batch}; "
          "optimizer with a started ResourceMonitor; baseline = bare prometheus_client calls")

    variants: Dict[str, Work] = {
        "baseline": bare_work(Bare()),
        "dualtrack": optimizer_work(make_optimizer(exemplars=True)),
        "dualtrack_no_exemplars": optimizer_work(make_optimizer(exemplars=False)),
        "dualtrack_record_only": optimizer_work(make_optimizer(exemplars=True), recommend=False),
    }
    results: Dict[str, Any] = {"machine": machine, "settings": vars(args).copy(), "timing": {}}
    modes: List[Tuple[str, Callable[[], Dict[str, List[float]]]]] = [
        ("1 thread", lambda: time_single(variants, args.requests, args.batch)),
        (f"{args.threads} threads", lambda: time_threads(variants, args.requests, args.batch, args.threads)),
    ]
    rows = []
    for mode, measure in modes:
        stats = summarize(measure())
        base = stats["baseline"]["median_ns"]
        for name in variants:
            stats[name]["ratio"] = stats[name]["median_ns"] / base
        results["timing"][mode] = stats
        rows.append((mode, stats))

    labels = {
        "baseline": "bare prometheus_client (baseline)",
        "dualtrack": "dualtrack: recommend + start + complete",
        "dualtrack_no_exemplars": "  the same without exemplars",
        "dualtrack_record_only": "  start + complete only (no recommendation)",
    }
    print()
    print(f"{'median ns per request':<44}" + "".join(f"{mode:>20}" for mode, _ in rows))
    for name, label in labels.items():
        cells = []
        for _, stats in rows:
            cell = f"{stats[name]['median_ns']:,.0f}"
            if name != "baseline":
                cell += f" ({stats[name]['ratio']:.2f}x)"
            cells.append(f"{cell:>20}")
        print(f"{label:<44}" + "".join(cells))
    for mode, stats in rows:
        d = stats["dualtrack"]
        verdict = "meets" if d["ratio"] <= TARGET_RATIO else "MISSES"
        print(f"ratio {mode}: {d['ratio']:.2f}x the bare baseline ({verdict} the {TARGET_RATIO}x target); "
              f"recording only {stats['dualtrack_record_only']['ratio']:.2f}x; exemplars cost "
              f"{d['median_ns'] - stats['dualtrack_no_exemplars']['median_ns']:+,.0f} ns/req")

    breakdown = recommendation_breakdown(args.batch, max(3, min(50, args.requests // args.batch // 4)))
    results["recommendation_by_query"] = breakdown
    print("cached recommendation alone, by query: " + "; ".join(
        f"{name}: {f['recommendation_ns']:,.0f} ns, of which query complexity {f['complexity_ns']:,.0f} ns"
        for name, f in breakdown.items()))

    if args.memory_requests:
        warmup = min(50_000, max(1000, args.memory_requests // 10))
        memory = memory_growth(args.memory_requests, warmup)
        results["memory"] = memory
        verdict = "meets" if memory["rss_growth_mb"] < TARGET_MEMORY_MB else "MISSES"
        print(f"memory: RSS {memory['rss_before_mb']:.1f} -> {memory['rss_after_mb']:.1f} MiB over "
              f"{memory['requests']:,} requests after {memory['warmup_requests']:,} warm-up: "
              f"growth {memory['rss_growth_mb']:+.2f} MiB ({verdict} the {TARGET_MEMORY_MB:g} MB target); "
              f"Python blocks {memory['python_blocks_growth']:+,}; in-flight table "
              f"{memory['in_flight_table']}, window records {memory['window_records']}; "
              f"{memory['seconds'] / memory['requests'] * 1e9:,.0f} ns/req")

    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
