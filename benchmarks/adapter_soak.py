#!/usr/bin/env python3
"""Adapter soak: thousands of cycles against a real Prometheus, looking for leaks.

A router exporter (a ``DualTrackOptimizer`` serving /metrics with a steady
synthetic workload) runs in a child process; a throwaway Prometheus
(``dualtrack.local_prometheus.LocalPrometheus``) scrapes it every second.
This process then runs the adapter — ``Adapter.run_cycle()`` with the
bundled rules, the ``adaptive`` strategy, a ``PrometheusSource`` over a
``PromQLClient``, publishing the preferences file atomically — ``--cycles``
times back to back (default 10,000; the interval only sets each cycle's
query budget).

Sampled every ``--sample-every`` cycles (default 500) after a warm-up of 50
cycles, in this process (which holds only the adapter):

* resident memory (RSS) and Python's allocated blocks: first, last, maximum
  and the least-squares slope per 1,000 cycles;
* open file descriptors (``/proc/self/fd``) and threads
  (``threading.active_count()``);
* files in the output folder (the preferences file only: no temp files
  left).

Exit status 1 when a descriptor, a thread or a temp file was left behind,
when a cycle failed, or when the published sequence numbers do not match
the cycles: a soak that leaks, or a cycle that failed, is a failed soak.
Memory is judged against a flat line: growth from the first to the last
sample under 5 MiB is reported as flat.

    python benchmarks/adapter_soak.py                    # 10,000 cycles (a few minutes)
    python benchmarks/adapter_soak.py --quick            # 300 cycles: a smoke run
    python benchmarks/adapter_soak.py --json out/adapter_soak.json
"""

from __future__ import annotations

import argparse
import array
import gc
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import psutil
import requests
from _common import machine as describe_machine
from _common import write_json
from prometheus_client import CollectorRegistry

FLAT_MB = 5.0
WARMUP_CYCLES = 50


# --------------------------------------------------------------------------- the exporter (child process)


def serve_exporter(port: int) -> int:
    """A router exporter with a steady workload, until SIGTERM or the parent goes away."""
    import random

    from dualtrack import DualTrackOptimizer, ModelPrice, OptimizationConfig

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parent = os.getppid()
    optimizer = DualTrackOptimizer(OptimizationConfig(
        metrics_port=port, prices={"local": ModelPrice(0, 0), "api": ModelPrice(1.0, 2.0)}))
    optimizer.start()
    rng = random.Random(7)
    latency = {"local": 2500.0, "api": 600.0, "parallel": 700.0}
    i = 0
    try:
        while not stop.wait(0.02) and os.getppid() == parent:
            for _ in range(4):  # ~200 requests/s
                i += 1
                path = rng.choice(("local", "api", "api", "parallel"))
                rid = f"r{i}"
                optimizer.record_request_start(rid, "x" * rng.choice((200, 4000, 12000)))
                ok = rng.random() < 0.97
                optimizer.record_request_completion(
                    rid, path, {"tokens_in": 100, "tokens_out": 50, "quality_score": 0.85, "model": path,
                                "latency_ms": latency[path] * rng.uniform(0.8, 1.2)},
                    success=ok, error_type=None if ok else "backend_error")
    finally:
        optimizer.stop()
    return 0


# --------------------------------------------------------------------------- the soak


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def slope_per_1000(xs: Sequence[float], ys: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 1000.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=False)) / den if den else 0.0


def wait_for_data(url: str, timeout: float = 90.0) -> float:
    """Seconds until Prometheus has request rates from the exporter."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            body = requests.get(f"{url}/api/v1/query", params={"query": "sum(rate(dualtrack_requests_total[10s]))"},
                                timeout=2).json()
            result = body.get("data", {}).get("result", [])
            if result and float(result[0]["value"][1]) > 0:
                return time.monotonic() - started
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"Prometheus has no data from the exporter after {timeout:g} s")


def soak(url: str, cycles: int, sample_every: int, out_dir: Path) -> Dict[str, Any]:
    from dualtrack.adapter.loop import Adapter, AdapterSettings
    from dualtrack.adapter.prometheus_source import PrometheusSource
    from dualtrack.adapter.promql import PromQLClient
    from dualtrack.bundled import bundled_dir

    output = out_dir / "preferences.json"
    settings = AdapterSettings(rules=(str(bundled_dir("rules")),), strategy="adaptive", output=str(output),
                               interval_seconds=2.0, window="10s")
    registry = CollectorRegistry()
    holder: List[Any] = []
    client = PromQLClient(url, timeout=2.0, retries=1)
    source = PrometheusSource(client, window="10s", on_query=lambda s, e: holder[0].metrics.observe_query(s, e))
    adapter = Adapter(settings, source, registry=registry)
    holder.append(adapter)
    process = psutil.Process()

    results: Dict[str, int] = {"ok": 0, "no_data": 0, "error": 0}
    # Raw doubles, not a list of float objects: the soak counts Python's
    # allocated blocks, and 10,000 floats would be 10,000 of them.
    durations = array.array("d")
    errors: List[str] = []
    signal_values: List[int] = []

    def cycle() -> None:
        result = adapter.run_cycle()
        results[result.result] += 1
        durations.append(result.duration_seconds)
        if result.error and len(errors) < 10:
            errors.append(result.error)

    for _ in range(WARMUP_CYCLES):
        cycle()
    first_sequence = adapter.writer.sequence if adapter.writer else 0
    results = {"ok": 0, "no_data": 0, "error": 0}
    del durations[:]

    samples: List[Dict[str, float]] = []

    def sample(done: int) -> None:
        gc.collect()
        samples.append({"cycle": done, "rss_mb": process.memory_info().rss / 2**20,
                        "blocks": sys.getallocatedblocks(), "fds": fd_count(),
                        "threads": threading.active_count(),
                        "files": len(os.listdir(out_dir))})

    sample(0)
    started = time.perf_counter()
    for done in range(1, cycles + 1):
        cycle()
        if done % sample_every == 0 or done == cycles:
            signal_values.append(int(registry.get_sample_value("dualtrack_adapter_signal_values") or 0))
            sample(done)
    seconds = time.perf_counter() - started
    leftover = sorted(os.listdir(out_dir))
    client.close()

    published = (adapter.writer.sequence - first_sequence) if adapter.writer else 0
    xs = [s["cycle"] for s in samples]
    rss = [s["rss_mb"] for s in samples]
    ordered = sorted(durations)
    query_errors = {kind: registry.get_sample_value("dualtrack_adapter_query_errors_total", {"type": kind}) or 0.0
                    for kind in ("unavailable", "timeout", "auth", "bad_query", "bad_response")}
    return {
        "cycles": cycles, "warmup_cycles": WARMUP_CYCLES, "sample_every": sample_every, "seconds": seconds,
        "results": results, "published": published, "errors": errors, "query_errors": query_errors,
        "signal_values_per_cycle": {"min": min(signal_values), "max": max(signal_values)},
        "cycle_ms": {"median": 1000 * statistics.median(ordered), "p90": 1000 * ordered[int(len(ordered) * 0.9)],
                     "max": 1000 * ordered[-1]},
        "samples": samples,
        "rss_mb": {"first": rss[0], "last": rss[-1], "max": max(rss), "growth": rss[-1] - rss[0],
                   "slope_per_1000_cycles": slope_per_1000(xs, rss)},
        "allocated_blocks": {"first": samples[0]["blocks"], "last": samples[-1]["blocks"],
                             "slope_per_1000_cycles": slope_per_1000(xs, [s["blocks"] for s in samples])},
        "fds": {"first": samples[0]["fds"], "last": samples[-1]["fds"], "max": max(s["fds"] for s in samples)},
        "threads": {"first": samples[0]["threads"], "last": samples[-1]["threads"],
                    "max": max(s["threads"] for s in samples)},
        "output_folder_at_end": leftover,
    }


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, help="adapter cycles after the warm-up (default 10000; --quick 300)")
    parser.add_argument("--sample-every", type=int, help="cycles between samples (default 500; --quick 50)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (300 cycles)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    parser.add_argument("--serve-exporter", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(list(argv))
    if args.serve_exporter is not None:
        return serve_exporter(args.serve_exporter)
    if args.cycles is None:
        args.cycles = 300 if args.quick else 10_000
    if args.sample_every is None:
        args.sample_every = 50 if args.quick else 500
    if args.cycles <= 0 or args.sample_every <= 0:
        parser.error("--cycles and --sample-every must be positive")
    logging.basicConfig(level=logging.ERROR)

    from dualtrack.local_prometheus import LocalPrometheus, free_port

    machine = describe_machine()
    port = free_port()
    exporter = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve-exporter", str(port)])
    prom = LocalPrometheus(targets={"dualtrack-router": [f"127.0.0.1:{port}"]}, scrape_interval="1s")
    out_dir = Path(tempfile.mkdtemp(prefix="dualtrack-adapter-soak-"))
    try:
        prom.start()
        version = requests.get(f"{prom.url}/api/v1/status/buildinfo", timeout=5).json()["data"]["version"]
        machine["prometheus"] = version
        print(f"dualtrack adapter soak — Python {machine['python']}, {machine['cpus']} CPUs, Prometheus {version}")
        waited = wait_for_data(prom.url)
        print(f"Prometheus scraping the exporter (data after {waited:.1f} s); {WARMUP_CYCLES} warm-up cycles, then "
              f"{args.cycles:,} cycles back to back, sampled every {args.sample_every}")
        figures = soak(prom.url, args.cycles, args.sample_every, out_dir)
    finally:
        prom.stop()
        exporter.terminate()
        try:
            exporter.wait(timeout=10)
        except subprocess.TimeoutExpired:
            exporter.kill()
            exporter.wait()
        for name in os.listdir(out_dir):
            os.unlink(out_dir / name)
        out_dir.rmdir()

    r, rss, fds, threads = figures["results"], figures["rss_mb"], figures["fds"], figures["threads"]
    print(f"cycles: {figures['cycles']:,} in {figures['seconds']:.1f} s ({r['ok']:,} ok, {r['no_data']:,} no data, "
          f"{r['error']:,} failed); cycle median {figures['cycle_ms']['median']:.1f} ms, p90 "
          f"{figures['cycle_ms']['p90']:.1f} ms, max {figures['cycle_ms']['max']:.1f} ms; "
          f"{figures['signal_values_per_cycle']['min']}-{figures['signal_values_per_cycle']['max']} signal values "
          f"per cycle; {figures['published']:,} files published")
    flat = abs(rss["growth"]) < FLAT_MB
    print(f"memory: RSS first {rss['first']:.1f} MiB, last {rss['last']:.1f} MiB, max {rss['max']:.1f} MiB, "
          f"growth {rss['growth']:+.2f} MiB, slope {rss['slope_per_1000_cycles']:+.3f} MiB per 1,000 cycles "
          f"({'flat' if flat else 'NOT flat'}: under {FLAT_MB:g} MiB); Python blocks "
          f"{figures['allocated_blocks']['first']:,} -> {figures['allocated_blocks']['last']:,} "
          f"({figures['allocated_blocks']['slope_per_1000_cycles']:+.0f} per 1,000 cycles)")
    print(f"file descriptors: {fds['first']} -> {fds['last']} (max {fds['max']}); threads: {threads['first']} -> "
          f"{threads['last']} (max {threads['max']}); output folder at the end: {figures['output_folder_at_end']}")

    problems = []
    if fds["last"] > fds["first"] or fds["max"] > fds["first"]:
        problems.append("file descriptors grew")
    if threads["last"] > threads["first"] or threads["max"] > threads["first"]:
        problems.append("threads grew")
    if figures["output_folder_at_end"] != ["preferences.json"]:
        problems.append(f"files left in the output folder: {figures['output_folder_at_end']}")
    if r["error"]:
        problems.append(f"{r['error']} cycles failed: {figures['errors'][:3]}")
    if figures["published"] != r["ok"] + r["no_data"]:
        problems.append(f"{figures['published']} files published for {r['ok'] + r['no_data']} good cycles")
    figures.update({"machine": machine, "settings": vars(args).copy(), "memory_flat": flat,
                    "flat_threshold_mb": FLAT_MB, "problems": problems, "ok": not problems})
    print("leaks: none (no descriptor, thread or temp file left; every cycle published)" if not problems
          else "PROBLEMS: " + "; ".join(problems))
    if args.json:
        write_json(args.json, figures)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
