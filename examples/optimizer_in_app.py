#!/usr/bin/env python3
"""The plain optimizer inside an application that calls its models itself.

Shows the request interface every router uses: ask for a recommendation,
record the start, run the query on the recommended track with its timeout,
record the completion (tokens, quality, outcome). The two "models" here are
stand-in functions; replace them with your clients. With --metrics-port,
/metrics is served on 127.0.0.1 while it runs (and read back at the end);
the summary comes from ``get_optimization_status()``.

    python examples/optimizer_in_app.py --requests 50
    python examples/optimizer_in_app.py --requests 1000 --metrics-port 9464   # curl 127.0.0.1:9464/metrics
"""

from __future__ import annotations

import argparse
import random
import time
import urllib.request
import uuid
from typing import Any, Dict

from dualtrack import DualTrackOptimizer, OptimizationConfig
from dualtrack.router.policy import RoutingPolicy

QUERIES = ("What is the capital of France?", "Summarise the plot of Hamlet in three sentences.",
           "Write a Python function that merges two sorted lists, then explain why it is O(n).")


def local_model(query: str, timeout: float) -> Dict[str, Any]:
    """Stand-in for a model on this machine: quick, free, a little less accurate."""
    time.sleep(min(timeout, 0.002))
    return {"text": "local answer", "tokens_in": len(query) // 4, "tokens_out": 40, "quality_score": 0.82}


def api_model(query: str, timeout: float) -> Dict[str, Any]:
    """Stand-in for a hosted API model: slower, priced, more accurate; fails now and then."""
    time.sleep(min(timeout, 0.004))
    if random.random() < 0.05:
        raise TimeoutError("the API did not answer in time")
    return {"text": "api answer", "tokens_in": len(query) // 4, "tokens_out": 60, "quality_score": 0.93,
            "cost": 0.0004}


def answer(optimizer: DualTrackOptimizer, policy: RoutingPolicy, query: str) -> str:
    # The recommendation's local_bias is a traffic share (preferred_path only says which way it
    # leans): RoutingPolicy draws each query's track from it, exactly as dualtrack's router does.
    plan = policy.plan(query)  # calls optimizer.get_optimization_recommendations(query)
    # A parallel plan needs two calls raced against each other (the router in
    # examples/router_openai_compatible.py does it); this application serves it locally.
    track = plan.path if plan.path in ("local", "api") else "local"
    recommendation = plan.recommendation
    request_id = uuid.uuid4().hex
    optimizer.record_request_start(request_id, query)
    model = local_model if track == "local" else api_model
    try:
        result = model(query, timeout=recommendation["timeouts_seconds"][track])
    except TimeoutError:
        optimizer.record_request_completion(request_id, track, {"outcome": "timeout"}, False, "timeout")
        return ""
    optimizer.record_request_completion(request_id, track, {k: v for k, v in result.items() if k != "text"})
    return str(result["text"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50, help="queries to answer (default 50)")
    parser.add_argument("--metrics-port", type=int, help="serve /metrics on 127.0.0.1 at this port")
    parser.add_argument("--strategy", default="balanced", help="strategy for the embedded adapter")
    args = parser.parse_args()

    config = OptimizationConfig(strategy=args.strategy, metrics_port=args.metrics_port)
    with DualTrackOptimizer(config) as optimizer:  # start(): resource monitor, embedded adapter, /metrics
        policy = RoutingPolicy(optimizer)
        for i in range(args.requests):
            answer(optimizer, policy, QUERIES[i % len(QUERIES)])
        optimizer.adapt_now()  # one adaptation cycle now rather than at the next interval
        status = optimizer.get_optimization_status()
        for path, summary in sorted(status["metrics"].get("by_path", {}).items()):
            print(f"{path}: {summary['count']} requests, success rate {summary['success_rate']:.2f}")
        print(f"preferences: {status['preferences']['routing']}")
        if args.metrics_port is not None:
            url = f"http://127.0.0.1:{args.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                lines = [line for line in response.read().decode().splitlines()
                         if line.startswith("dualtrack_requests_total{")]
            print(f"{url}: {len(lines)} dualtrack_requests_total series")


if __name__ == "__main__":
    main()
