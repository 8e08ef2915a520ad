"""``dualtrack adapter`` as a real subprocess, and a scriptable fake PromQL API,
for the fault tests (tests/test_faults.py).

    with FakePrometheus() as prom:
        prom.answer(200, EMPTY_VECTOR)                 # every query: an empty vector
        with AdapterProcess(prom.url, out, tmp_path, interval=0.1) as adapter:
            wait_until(lambda: out.exists(), 20, "a first publish")
            prom.answer(503, {"status": "error", "errorType": "unavailable", "error": "x"})
            adapter.wait_metric("dualtrack_adapter_query_errors_total", lambda v: v >= 2,
                                type="unavailable")
            adapter.kill()                              # SIGKILL: no cleanup at all

Waiting is on conditions with deadlines (``wait_until``), never fixed sleeps.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import urllib.request
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

from prometheus_client.parser import text_string_to_metric_families

from .fakehttp import FakeHTTPServer, Response
from .net import LOOPBACK, free_port
from .processes import stop
from .waiting import wait_until

PathLike = Union[str, "os.PathLike[str]"]

#: A successful, empty instant-query answer: the adapter publishes "no data" preferences.
EMPTY_VECTOR: Dict[str, Any] = {"status": "success", "data": {"resultType": "vector", "result": []}}

START_TIMEOUT_S = 30.0


class FakePrometheus(FakeHTTPServer):
    """A ``FakeHTTPServer`` whose script can be swapped while a client polls it.

    ``answer(...)`` replaces the whole script with one response that repeats
    (``FakeHTTPServer.respond`` only appends). Nagle is off on the server's
    sockets: the handler sends headers and body separately, and with Nagle
    plus the client's delayed ACK every answer would take 40 ms.
    """

    def start(self) -> "FakePrometheus":
        super().start()
        assert self._httpd is not None
        self._httpd.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
        return self

    def answer(self, status: int = 200, body: Any = b"", *, headers: Optional[Dict[str, str]] = None,
               delay: float = 0.0, drop: bool = False, no_length: bool = False) -> "FakePrometheus":
        hdrs = dict(headers or {})
        if not isinstance(body, (bytes, str)):
            hdrs.setdefault("Content-Type", "application/json")
        with self._lock:
            self._responses[:] = [Response(status, body, hdrs, delay, drop, no_length)]
        return self


Samples = Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]

_RUNNING: "weakref.WeakSet[AdapterProcess]" = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_RUNNING):
        proc.kill()


class AdapterProcess:
    """``python -m dualtrack --log-level INFO adapter ...`` with its log in ``workdir``.

    ``metrics_port``: ``0`` picks a free port (retried if another process
    takes it first), ``None`` disables the adapter's /metrics (faster start).
    ``extra`` are more command-line arguments. Settings not given keep the
    adapter's defaults.
    """

    def __init__(self, prometheus_url: str, output: PathLike, workdir: PathLike, *, interval: float = 0.1,
                 validity: Optional[float] = None, window: str = "5s", query_timeout: Optional[float] = None,
                 rules: Optional[PathLike] = None, strategy: Optional[str] = None,
                 metrics_port: Optional[int] = 0, extra: Sequence[str] = (), name: str = "adapter") -> None:
        self.prometheus_url = prometheus_url
        self.output = Path(output)
        self.workdir = Path(workdir)
        self.interval = interval
        self.validity = validity
        self.window = window
        self.query_timeout = query_timeout
        self.rules = rules
        self.strategy = strategy
        self.metrics_port = metrics_port
        self.extra = list(extra)
        self.log_path = self.workdir / f"{name}.log"
        self.port: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None
        self._log: Optional[Any] = None

    # -- lifecycle ---------------------------------------------------------

    def args(self) -> List[str]:
        args = [sys.executable, "-m", "dualtrack", "--log-level", "INFO", "adapter",
                "--prometheus-url", self.prometheus_url, "--output", str(self.output),
                "--interval", repr(self.interval), "--window", self.window,
                "--metrics-port", str(self.port if self.port is not None else -1)]
        if self.validity is not None:
            args += ["--validity", repr(self.validity)]
        if self.query_timeout is not None:
            args += ["--query-timeout", repr(self.query_timeout)]
        if self.rules is not None:
            args += ["--rules", str(self.rules)]
        if self.strategy is not None:
            args += ["--strategy", self.strategy]
        return args + self.extra

    def start(self) -> "AdapterProcess":
        """Spawn it; with a metrics port, wait (deadline 30 s) until /metrics answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        attempts = 3 if self.metrics_port == 0 else 1
        for attempt in range(attempts):
            if self.metrics_port is not None:
                self.port = free_port() if self.metrics_port == 0 else self.metrics_port
            self._spawn()
            if self.metrics_port is None:
                return self
            try:
                wait_until(self._ready, START_TIMEOUT_S, f"the adapter's /metrics on port {self.port}")
                return self
            except _Exited:
                if "already in use" in self.log_text() and attempt + 1 < attempts:
                    continue  # free_port() raced with another process: pick another
                raise AssertionError(f"the adapter exited with {self.returncode}:\n{self.log_tail()}") from None
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self._close_log()
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        _RUNNING.add(self)

    def _ready(self) -> bool:
        if not self.alive:
            raise _Exited()
        try:
            self.scrape()
            return True
        except OSError:
            return False

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return self._proc.poll() if self._proc is not None else None

    def kill(self) -> None:
        """SIGKILL and reap: the process gets no chance to clean anything up."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        _RUNNING.discard(self)
        self._close_log()

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM (the adapter stops between cycles) and wait; SIGKILL after ``timeout``. The exit status."""
        code = stop(self._proc, timeout)
        _RUNNING.discard(self)
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "AdapterProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation -------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def scrape(self) -> Samples:
        """The adapter's /metrics as {(sample name, labels): value}; OSError when it does not answer."""
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def sample(self, name: str, **labels: str) -> Optional[float]:
        return self.scrape().get((name, frozenset(labels.items())))

    def wait_metric(self, name: str, predicate: Callable[[float], bool], timeout: float = 20.0,
                    **labels: str) -> float:
        """Wait until the sample ``name{labels}`` exists and ``predicate(value)`` holds; return the value."""
        seen: List[Optional[float]] = [None]

        def check() -> bool:
            if not self.alive:
                raise AssertionError(f"the adapter exited with {self.returncode}:\n{self.log_tail()}")
            seen[0] = value = self.sample(name, **labels)
            return value is not None and predicate(value)

        try:
            wait_until(check, timeout, f"{name}{labels}")
        except AssertionError as err:
            raise AssertionError(f"{err}; last value {seen[0]!r}\n--- adapter log\n{self.log_tail()}") from None
        assert seen[0] is not None
        return seen[0]


class _Exited(Exception):
    """The process ended before it was ready."""


def temp_files(folder: PathLike, name: str) -> List[Path]:
    """The preferences writer's temp files for target ``name`` in ``folder`` (``.<name>.<hex>.tmp``)."""
    return sorted(p for p in Path(folder).iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp"))
