"""A real exporter with a steady synthetic workload, for tests that need a
live /metrics endpoint for a real Prometheus to scrape.

The track latencies are given (``latency_ms`` in each result), so a test
controls which track is "slow" without sleeping that long.
"""

from __future__ import annotations

import random
import threading
from typing import Dict, Optional

from dualtrack import DualTrackOptimizer, ModelPrice, OptimizationConfig


class LiveWorkload:
    def __init__(self, port: int, *, latency_ms: Optional[Dict[str, float]] = None,
                 success: Optional[Dict[str, float]] = None, rate_per_second: float = 200.0,
                 seed: int = 7, **config: object) -> None:
        self.latency_ms = dict(latency_ms or {"local": 3000.0, "api": 500.0})
        self.success = dict(success or {"local": 1.0, "api": 1.0})
        self.rate = rate_per_second
        self.rng = random.Random(seed)
        self.optimizer = DualTrackOptimizer(OptimizationConfig(
            metrics_port=port, enable_resource_monitoring=False,
            prices={"local": ModelPrice(0, 0), "api": ModelPrice(1.0, 2.0)}, **config))  # type: ignore[arg-type]
        self.recorded = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-workload", daemon=True)

    def start(self) -> "LiveWorkload":
        self.optimizer.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.optimizer.stop()

    def __enter__(self) -> "LiveWorkload":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        batch = max(1, int(self.rate / 50))  # ~50 wakeups a second
        i = 0
        while not self._stop.wait(batch / self.rate):
            for _ in range(batch):
                i += 1
                path = "local" if self.rng.random() < 0.5 else "api"
                rid = f"r{i}"
                query = "x" * self.rng.choice((200, 4000, 12000))
                self.optimizer.record_request_start(rid, query)
                ok = self.rng.random() < self.success[path]
                jitter = self.rng.uniform(0.8, 1.2)
                self.optimizer.record_request_completion(
                    rid, path, {"tokens_in": 100, "tokens_out": 50, "quality_score": 0.85, "model": path,
                                "latency_ms": self.latency_ms[path] * jitter},
                    success=ok, error_type=None if ok else "backend_error")
                self.recorded += 1
