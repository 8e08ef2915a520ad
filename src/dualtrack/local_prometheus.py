"""A throwaway Prometheus on loopback, for the demo and the benchmarks.

Starts the ``prometheus`` binary (Debian's package, or any on PATH) with a
temporary data folder on a free 127.0.0.1 port, waits until it is ready, and
stops it (and removes the folder) on ``stop()``. Not for production: a real
deployment runs Prometheus with ``prometheus.yml`` from this repository.

    with LocalPrometheus(targets={"dualtrack-router": ["127.0.0.1:9464"]}) as prom:
        print(prom.url)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import requests
import yaml

from .errors import DualTrackError


class PrometheusNotFound(DualTrackError):
    """No ``prometheus`` binary on PATH."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPrometheus:
    def __init__(self, *, targets: Optional[Dict[str, List[str]]] = None, scrape_interval: str = "1s",
                 binary: Optional[str] = None, data_dir: Optional[str] = None,
                 retention: str = "3650d") -> None:
        found = binary or shutil.which("prometheus")
        if not found:
            raise PrometheusNotFound("no 'prometheus' binary on PATH (Debian: apt-get install prometheus)")
        self.binary = found
        self.targets = dict(targets or {})
        self.scrape_interval = scrape_interval
        self.retention = retention
        self._own_dir = data_dir is None
        self.dir = Path(data_dir or tempfile.mkdtemp(prefix="dualtrack-prometheus-"))
        self.port = 0
        self._proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_path(self) -> Path:
        return self.dir / "data"

    def write_config(self) -> Path:
        config = {
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(addresses)}]}
                               for job, addresses in self.targets.items()],
        }
        path = self.dir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self, timeout: float = 30.0) -> "LocalPrometheus":
        config = self.write_config()
        self.port = free_port()
        log = open(self.dir / "prometheus.log", "wb")
        self._proc = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.data_path}",
             f"--storage.tsdb.retention.time={self.retention}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DualTrackError(f"prometheus exited at start: {self.log_tail()}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise DualTrackError(f"prometheus not ready after {timeout:g}s: {self.log_tail()}")

    def log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join((self.dir / "prometheus.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "LocalPrometheus":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
