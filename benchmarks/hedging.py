"""Hedged requests against no hedging and against always-parallel, in real time.

    python benchmarks/hedging.py [--requests 400] [--threads 4] [--seed 7] [--json out.json]

The reference router with fake backends whose time to first token has a
heavy tail: the local model answers its first token in 20-60 ms, except
that a few calls (``--stall-rate``, 4%) stall 0.3-1.0 s, as a local server
does when a long prompt holds its only slot; the API takes 80-160 ms to its
first token and is priced per token. Three modes, measured in the same run
(the same seed, so the same draws in the same order):

- ``none``: every query on the local track, no hedging;
- ``hedge``: the same, with ``HedgePolicy()`` (p95 delay, 10% budget); the
  first 20 requests of the run teach it the local track's first-token times;
- ``parallel``: every query on both tracks, first acceptable answer wins.

It prints p50/p95/p99 latency, API calls and cost per mode, and each mode's
ratios against ``none``. Figures depend on the machine and its load: read
the ratios, not the milliseconds.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import _common

from dualtrack import DualTrackOptimizer, ModelPrice, OptimizationConfig, ResourceConstraints
from dualtrack._quantile import quantile
from dualtrack.preferences import PARALLEL_NEVER, Preferences, Routing, write_preferences
from dualtrack.router.backends import FakeBackend
from dualtrack.router.hedging import HedgePolicy
from dualtrack.router.policy import RoutingPolicy
from dualtrack.router.router import DualTrackRouter

PROMPT = "Summarise the following paragraph. " * 12  # about 100 tokens
PRICES = {"fake-local": ModelPrice(0, 0), "fake-api": ModelPrice(2.5, 10.0)}  # dollars per million tokens


def local_first_token(stall_rate: float):
    def draw(rng: random.Random) -> float:
        if rng.random() < stall_rate:
            return rng.uniform(0.3, 1.0)
        return rng.uniform(0.02, 0.06)
    return draw


def run_mode(mode: str, requests: int, threads: int, seed: int, stall_rate: float) -> Dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="dualtrack-hedging-"))
    now = time.time()
    routing = Routing(local_bias=1.0, parallel_threshold=0.0 if mode == "parallel" else PARALLEL_NEVER,
                      quality_threshold=0.5)
    write_preferences(folder / "p.json", Preferences(
        generated_at=now, valid_until=now + 3600, strategy="static", source="static", routing=routing,
        timeouts_seconds={"local": 10.0, "api": 10.0, "parallel": 10.0}))
    optimizer = DualTrackOptimizer(OptimizationConfig(
        preferences_file=str(folder / "p.json"), enable_resource_monitoring=False, prices=PRICES,
        constraints=ResourceConstraints(max_concurrent_requests=1000)))
    local = FakeBackend("local", first_token_latency=local_first_token(stall_rate), latency=0.02,
                        tokens_out=200, quality=0.8, rng=random.Random(seed))
    api = FakeBackend("api", first_token_latency=lambda rng: rng.uniform(0.08, 0.16), latency=0.02,
                      tokens_out=200, quality=0.9, rng=random.Random(seed + 1))
    router = DualTrackRouter(optimizer, local, api, policy=RoutingPolicy(optimizer, floor=0.0),
                             max_workers=4 * threads, hedge=HedgePolicy() if mode == "hedge" else None)
    latencies: List[float] = []
    hedged = 0
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        nonlocal hedged
        for _ in counter:
            result = router.route(PROMPT)
            with lock:
                latencies.append(result.latency_seconds)
                hedged += result.hedged

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    router.drain(30)
    router.close()
    cost = sum(s.value for family in optimizer.registry.collect() if family.name == "dualtrack_cost_dollars"
               for s in family.samples if s.name == "dualtrack_cost_dollars_total")
    ordered = sorted(latencies)
    return {"mode": mode, "requests": len(latencies), "p50_s": quantile(ordered, 0.5),
            "p95_s": quantile(ordered, 0.95), "p99_s": quantile(ordered, 0.99),
            "calls": local.calls + api.calls, "api_calls": api.calls, "hedged": hedged, "cost_dollars": cost}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--stall-rate", type=float, default=0.04)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    info = _common.announce("hedging: none / hedge / parallel")
    rows = [run_mode(mode, args.requests, args.threads, args.seed, args.stall_rate)
            for mode in ("none", "hedge", "parallel")]
    base = rows[0]
    print(f"{'mode':9} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'calls':>6} {'api':>5} {'hedged':>6} "
          f"{'$/1k req':>8}   vs none: p95   p99  calls")
    for row in rows:
        per_thousand = 1000.0 * row["cost_dollars"] / max(row["requests"], 1)
        print(f"{row['mode']:9} {row['p50_s'] * 1e3:7.0f} {row['p95_s'] * 1e3:7.0f} {row['p99_s'] * 1e3:7.0f} "
              f"{row['calls']:6d} {row['api_calls']:5d} {row['hedged']:6d} {per_thousand:8.3f}   "
              f"{row['p95_s'] / base['p95_s']:12.2f} {row['p99_s'] / base['p99_s']:5.2f} "
              f"{row['calls'] / base['calls']:6.2f}")
    if args.json:
        _common.write_json(args.json, {"machine": info, "args": vars(args), "modes": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
