"""A throwaway Prometheus on loopback: the one launcher for the demo, the benchmarks and the tests.

``LocalPrometheus`` starts the ``prometheus`` binary (Debian's package, or any
on PATH) on a free 127.0.0.1 port, with its configuration, log and data in one
folder (a temporary one unless ``data_dir`` is given), and waits until
``/-/ready`` answers. The configuration is written from scrape configs,
``targets``, rule files and a deep-merged ``extra_config``. ``stop()`` stops
the process and removes a temporary folder; ``restart()`` keeps port and data.
Not for production: a real deployment runs Prometheus with ``prometheus.yml``
from this repository.

    with LocalPrometheus(targets={"dualtrack-router": ["127.0.0.1:9464"]}) as prom:
        print(prom.url)

Also here, because every child process of the demo, the benchmarks and the
tests is started and stopped the same way: ``free_port()`` and
``stop_process()``.
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import requests
import yaml

from .errors import DualTrackError

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# The poll period of the readiness wait: short enough not to idle, long enough
# not to hammer the server. Start-up ends on readiness or on the deadline.
POLL_S = 0.05
# free_port() can race with another process; a start retries on a new port.
PORT_ATTEMPTS = 3

PathLike = Union[str, "os.PathLike[str]"]
#: Scrape targets: ``{job: ["host:port", ...]}`` or ``[(job, "host:port"), ...]`` (grouped by job).
Targets = Union[Mapping[str, Sequence[str]], Sequence[Tuple[str, str]]]

_Self = TypeVar("_Self", bound="LocalPrometheus")


class PrometheusNotFound(DualTrackError):
    """No ``prometheus`` binary on PATH."""


class PrometheusError(DualTrackError, RuntimeError):
    """The local Prometheus did not start, reload or answer as expected; the message has its log's tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it (bind to port 0); the socket is closed before
    returning, so another process could take it in between. Callers that
    start a server on it should retry with a new port on "address in use"
    (``LocalPrometheus.start()`` does).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def stop_process(proc: Optional["subprocess.Popen[Any]"], timeout: float = 10.0) -> Optional[int]:
    """SIGTERM and wait up to ``timeout`` s; SIGKILL if it does not exit. Idempotent.

    Returns the exit status (negative: killed by that signal), ``None`` without a process.
    """
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


_RUNNING: "weakref.WeakSet[LocalPrometheus]" = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    # A Python process that ends without stop() (an exception past the
    # caller's cleanup, a test run dying before teardown) must not leave
    # Prometheus processes behind.
    for server in list(_RUNNING):
        server.kill()
        server._remove_own_dir()


def _deep_merge(base: Dict[str, Any], extra: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _group_targets(targets: Targets) -> Dict[str, List[str]]:
    if isinstance(targets, Mapping):
        return {job: list(addresses) for job, addresses in targets.items()}
    jobs: Dict[str, List[str]] = {}
    for job, address in targets:
        jobs.setdefault(job, []).append(address)
    return jobs


class LocalPrometheus:
    """One Prometheus process with its configuration, log and data under ``dir``.

    ``targets`` builds static scrape configs, one per job; ``scrape_configs``
    are Prometheus scrape-config dicts, used as they are. ``rule_files`` are
    copied into ``dir/rules`` at every configuration write, so an edited
    original is picked up by ``reload()``. ``extra_config`` is deep-merged
    into the generated YAML; ``alertmanager`` is ``"host:port"`` (or a list).
    ``evaluation_interval`` defaults to ``scrape_interval``. ``port`` pins the
    port (no retry on another); without it a free one is picked. ``reload()``
    needs ``lifecycle_api=True``. The binary is looked up at construction:
    ``PrometheusNotFound`` says how to install it.

    Settings are plain attributes; change them and call ``reload()`` (running)
    or ``start()``/``restart()``.
    """

    def __init__(
        self,
        *,
        targets: Optional[Targets] = None,
        scrape_interval: str = "1s",
        binary: Optional[str] = None,
        data_dir: Optional[PathLike] = None,
        retention: str = "3650d",
        evaluation_interval: Optional[str] = None,
        scrape_configs: Sequence[Mapping[str, Any]] = (),
        rule_files: Sequence[PathLike] = (),
        alertmanager: Union[str, Sequence[str], None] = None,
        extra_config: Optional[Mapping[str, Any]] = None,
        extra_args: Sequence[str] = (),
        port: Optional[int] = None,
        lifecycle_api: bool = False,
        admin_api: bool = False,
    ) -> None:
        self.binary = self._locate_binary(binary or "prometheus")
        self.targets: Targets = dict(targets) if isinstance(targets, Mapping) else list(targets or ())
        self.scrape_configs: List[Dict[str, Any]] = [dict(c) for c in scrape_configs]
        self.rule_files: List[Path] = [Path(p) for p in rule_files]
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.alertmanager = alertmanager
        self.extra_config: Dict[str, Any] = dict(extra_config or {})
        self.extra_args: List[str] = list(extra_args)
        # Blocks older than the retention are deleted at start-up; the default
        # 15d would eat backfilled data placed at fixed old timestamps.
        self.retention = retention
        self.lifecycle_api = lifecycle_api
        self.admin_api = admin_api
        self.port: Optional[int] = port
        self._fixed_port = port is not None
        self._own_dir = not data_dir
        self.dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="dualtrack-prometheus-"))
        self._proc: Optional["subprocess.Popen[bytes]"] = None

    def _locate_binary(self, name: str) -> str:
        """Absolute path of ``name`` (on PATH, or a path to an executable)."""
        found = shutil.which(name)
        if found is None:
            raise PrometheusNotFound(f"no {name!r} binary on PATH (Debian: apt-get install prometheus)")
        return found

    # -- where things are ------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.dir / "prometheus.yml"

    @property
    def data_path(self) -> Path:
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        return self.dir / "prometheus.log"

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("prometheus has not been started yet: no port")
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def address(self) -> str:
        """``host:port`` as a scrape target (Prometheus scraping itself)."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, lines: int = 10) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- configuration ---------------------------------------------------

    def _rule_copies(self) -> List[Path]:
        return [self.dir / "rules" / f"{i:02d}-{p.name}" for i, p in enumerate(self.rule_files)]

    def config(self) -> Dict[str, Any]:
        """The configuration dict that ``write_config()`` writes."""
        scrape: List[Dict[str, Any]] = [copy.deepcopy(c) for c in self.scrape_configs]
        for job, addresses in _group_targets(self.targets).items():
            scrape.append({"job_name": job, "static_configs": [{"targets": addresses}]})
        cfg: Dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval or self.scrape_interval,
                # A scrape must finish within its interval; with 1 s intervals
                # the default 10 s timeout would be rejected by Prometheus.
                "scrape_timeout": self.scrape_interval,
            },
            "scrape_configs": scrape,
        }
        if self.rule_files:
            cfg["rule_files"] = [str(p) for p in self._rule_copies()]
        if self.alertmanager:
            ams = [self.alertmanager] if isinstance(self.alertmanager, str) else list(self.alertmanager)
            cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": ams}]}]}
        return _deep_merge(cfg, self.extra_config)

    def write_config(self) -> Path:
        """Copy the rule files and write prometheus.yml; returns its path."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.rule_files:
            rules_dir = self.dir / "rules"
            rules_dir.mkdir(exist_ok=True)
            for old in rules_dir.iterdir():
                old.unlink()
            for src, copied in zip(self.rule_files, self._rule_copies(), strict=True):
                shutil.copyfile(src, copied)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        return self.config_path

    # -- lifecycle -------------------------------------------------------

    def start(self: _Self, timeout: float = READY_TIMEOUT_S) -> _Self:
        """Write the configuration, start Prometheus and wait until ``/-/ready`` says so.

        ``PrometheusError`` (with the log's tail) if it exits first or is not
        ready within ``timeout`` s; the process is killed then, and a
        temporary folder removed.
        """
        if self.running:
            raise PrometheusError(f"already running on {self.url}")
        try:
            self._launch(timeout, keep_port=self._fixed_port)
        except PrometheusError:
            self._remove_own_dir()
            raise
        return self

    def restart(self: _Self, timeout: float = READY_TIMEOUT_S) -> _Self:
        """Stop (if running) and start again on the same port and data folder."""
        self._terminate()
        self._launch(timeout, keep_port=self._fixed_port or self.port is not None)
        return self

    def _launch(self, timeout: float, keep_port: bool) -> None:
        self.data_path.mkdir(parents=True, exist_ok=True)
        self.write_config()
        attempts = 1 if keep_port else PORT_ATTEMPTS
        for attempt in range(attempts):
            if self.port is None or attempt > 0:
                self.port = free_port()
            self._spawn()
            try:
                self._wait_ready(timeout)
                return
            except PrometheusError:
                in_use = "address already in use" in self.log_tail(5).lower()
                self.kill()
                if not (in_use and attempt + 1 < attempts):
                    raise

    def _args(self) -> List[str]:
        args = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_path}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address={self.address}",
        ]
        if self.lifecycle_api:
            args.append("--web.enable-lifecycle")
        if self.admin_api:
            args.append("--web.enable-admin-api")
        return [*args, "--log.level=warn", *self.extra_args]

    def _spawn(self) -> None:
        args = self._args()
        # Appended, with the command line as a header: a restart keeps the
        # earlier runs' log for the failure messages.
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {' '.join(args)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir
            )
        _RUNNING.add(self)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc is not None else None
                raise PrometheusError(
                    f"prometheus exited with code {code} before it was ready\n--- log tail\n{self.log_tail()}"
                )
            try:
                resp = requests.get(f"{self.url}/-/ready", timeout=1.0)
                if resp.status_code == 200:
                    return
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except requests.RequestException as err:
                last = type(err).__name__
            if time.monotonic() >= deadline:
                raise PrometheusError(
                    f"prometheus on {self.url} not ready after {timeout:g} s (last: {last})\n"
                    f"--- log tail\n{self.log_tail()}"
                )
            time.sleep(POLL_S)

    def reload(self) -> None:
        """Rewrite prometheus.yml from the current settings and POST ``/-/reload``."""
        self.write_config()
        resp = requests.post(f"{self.url}/-/reload", timeout=10.0)
        if resp.status_code != 200:
            raise PrometheusError(
                f"reload failed: HTTP {resp.status_code}: {resp.text.strip()}\n--- log tail\n{self.log_tail()}"
            )

    def _terminate(self) -> None:
        stop_process(self._proc, STOP_TIMEOUT_S)
        _RUNNING.discard(self)

    def _remove_own_dir(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit in time; remove a temporary folder. Idempotent."""
        self._terminate()
        self._remove_own_dir()

    def kill(self) -> None:
        """SIGKILL (a crash): no shutdown, no WAL close; the folder stays for ``restart()``."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        _RUNNING.discard(self)

    def __enter__(self: _Self) -> _Self:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"{type(self).__name__}({self.dir}, port={self.port}, {state})"
