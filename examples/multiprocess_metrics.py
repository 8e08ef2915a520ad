#!/usr/bin/env python3
"""Several worker processes (a gunicorn-style pool), one /metrics for all of them.

Each worker has its own optimizer and router; prometheus_client's
multiprocess mode writes every worker's counters and histograms to files in
``PROMETHEUS_MULTIPROC_DIR``, and the parent serves their sum on one
/metrics (``multiprocess_registry``). The same works under gunicorn: set
``PROMETHEUS_MULTIPROC_DIR`` before it starts, serve
``multiprocess_registry()`` from one endpoint, and call
``prometheus_client.multiprocess.mark_process_dead(pid)`` in its
``child_exit`` hook.

    python examples/multiprocess_metrics.py --workers 4 --requests 200 --port 9464 --serve-seconds 60
    curl 127.0.0.1:9464/metrics
"""

from __future__ import annotations

import os
import shutil
import tempfile

# prometheus_client picks its value store (files or memory) when it is imported: the folder
# must be set before, in the parent and so in every worker it starts.
_OWN_FOLDER = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _OWN_FOLDER:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="dualtrack-multiproc-")

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

from prometheus_client import multiprocess, start_http_server  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from dualtrack import DualTrackOptimizer, OptimizationConfig  # noqa: E402
from dualtrack.exporter.exposition import multiprocess_registry  # noqa: E402
from dualtrack.router.backends import FakeBackend  # noqa: E402
from dualtrack.router.router import DualTrackRouter  # noqa: E402


def worker(requests: int) -> None:
    """One worker process: its own optimizer and router, recording into the shared folder."""
    optimizer = DualTrackOptimizer(OptimizationConfig(enable_resource_monitoring=False))
    local, api = FakeBackend("local", latency=0.001), FakeBackend("api", latency=0.002)
    with DualTrackRouter(optimizer, local, api) as router:
        for i in range(requests):
            router.route(f"question {i}: what is {i} + {i}?")
        router.drain(10)


def scrape_requests(url: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "dualtrack_requests_total" and s.labels.get("path") in ("local", "api"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--requests", type=int, default=50, help="queries per worker (default 50)")
    parser.add_argument("--port", type=int, default=9464, help="/metrics port on 127.0.0.1 (default 9464)")
    parser.add_argument("--serve-seconds", type=float, default=0.0, help="keep /metrics up this long at the end")
    args = parser.parse_args()

    try:
        # spawn: workers start clean (no threads or locks inherited), as gunicorn's do after fork
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=worker, args=(args.requests,)) for _ in range(args.workers)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
            multiprocess.mark_process_dead(process.pid)  # its live gauges (in-flight) stop counting
        registry = multiprocess_registry()  # every worker's files, summed at scrape time
        server, thread = start_http_server(args.port, addr="127.0.0.1", registry=registry)
        url = f"http://127.0.0.1:{args.port}/metrics"
        try:
            total = scrape_requests(url)
            print(f"{url}: dualtrack_requests_total over local and api = {total:.0f} model calls "
                  f"from {args.workers} workers x {args.requests} queries (fallbacks and parallel legs included)")
            time.sleep(args.serve_seconds)
        finally:
            server.shutdown()
            thread.join(5)
    finally:
        if _OWN_FOLDER:
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


if __name__ == "__main__":
    main()
