"""A real Prometheus server for tests, started on a random loopback port.

Project rule: tests about Prometheus talk to a real Prometheus that the test
starts itself (temporary data folder, stopped afterwards). A missing
``prometheus`` or ``promtool`` binary is a test *failure*, never a skip: a
suite that silently skips its Prometheus tests proves nothing.

Usage (usually through the ``prometheus_factory`` fixture in conftest.py)::

    with PrometheusServer(tmp_path, targets=[("exporter", "127.0.0.1:8000")]) as prom:
        prom.wait_for_targets_up(1)
        samples = prom.wait_for("my_counter_total", lambda s: s and s[0][1] >= 3)
        labels, value = samples[0]

Lots of history quickly (dashboards, ``rate()`` over hours) comes from
backfilling before the server starts::

    prom = PrometheusServer(tmp_path)
    now = time.time()
    prom.backfill_openmetrics(openmetrics_text([
        ("dualtrack_requests_total", {"path": "local"},
         [(now - 3600 + 15 * i, float(i)) for i in range(200)]),
    ]))
    prom.start()
    prom.query("dualtrack_requests_total", time=now - 1200)

Waiting is on conditions with deadlines (``wait_for``), never fixed sleeps.
"""

from __future__ import annotations

import atexit
import copy
import math
import os
import shutil
import subprocess
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import pytest
import requests
import yaml

from .net import LOOPBACK, free_port
from .processes import stop

Labels = Dict[str, str]
Samples = List[Tuple[Labels, float]]
PathLike = Union[str, "os.PathLike[str]"]

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# The poll period of every wait: short enough that tests don't idle, long
# enough not to hammer the server. It is a polling period, not a guess at how
# long something takes: every wait ends on its condition or its deadline.
POLL_S = 0.05

_INSTALL_HINT = (
    "run `make test` (it installs Debian's `prometheus` package, which brings both "
    "`prometheus` and `promtool`), or install it yourself: `apt-get install prometheus`"
)


# --------------------------------------------------------------------------- binaries


def find_binary(name: str) -> str:
    """Absolute path of ``name`` on PATH; a missing binary fails the test.

    Never a skip: the Prometheus tests are part of the suite's claim.
    """
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` not found on PATH; the Prometheus tests need it: {_INSTALL_HINT}")
    return path


def promtool(
    *args: str,
    input: Optional[str] = None,
    check: bool = False,
    binary: str = "promtool",
    timeout: float = 60.0,
) -> subprocess.CompletedProcess:
    """Run ``promtool *args`` and return the completed process (text mode).

    ``input`` goes to stdin. With ``check=True`` a non-zero exit fails the
    test with promtool's output in the message.
    """
    exe = find_binary(binary)
    proc = subprocess.run(
        [exe, *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"promtool {' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


# --------------------------------------------------------------------------- errors


class PrometheusHarnessError(RuntimeError):
    """The test Prometheus did not start, reload or answer as the harness expected."""


class PromQLError(PrometheusHarnessError):
    """The API answered ``status: error`` to a query."""

    def __init__(self, message: str, error_type: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class WaitTimeout(AssertionError):
    """A ``wait_for*`` deadline passed; the message shows the last observation."""


# --------------------------------------------------------------------------- OpenMetrics


def _om_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _om_float(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def openmetrics_text(
    series: Iterable[Tuple[str, Mapping[str, str], Iterable[Tuple[float, float]]]],
    types: Optional[Mapping[str, str]] = None,
) -> str:
    """OpenMetrics text for ``promtool tsdb create-blocks-from openmetrics``.

    ``series`` are ``(metric name, labels, [(unix seconds, value), ...])``.
    Takes care of the format's traps: samples of one metric name must be
    contiguous and in time order, timestamps are in *seconds*, and the text
    must end with ``# EOF``. ``types`` optionally maps a metric name to
    ``counter``/``gauge`` for a ``# TYPE`` line (without one the series are
    stored fine, only metadata is missing).
    """
    by_name: Dict[str, List[Tuple[Mapping[str, str], List[Tuple[float, float]]]]] = {}
    for name, labels, points in series:
        by_name.setdefault(name, []).append((labels, sorted(points)))
    lines: List[str] = []
    for name, entries in by_name.items():
        if types and name in types:
            lines.append(f"# TYPE {name} {types[name]}")
        for labels, points in entries:
            rendered = ",".join(f'{k}="{_om_escape(v)}"' for k, v in sorted(labels.items()))
            head = f"{name}{{{rendered}}}" if rendered else name
            for ts, value in points:
                lines.append(f"{head} {_om_float(value)} {ts:.3f}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- server


_RUNNING: "weakref.WeakSet[PrometheusServer]" = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    # Belt and braces: a test run that dies before fixture teardown must not
    # leave Prometheus processes behind.
    for server in list(_RUNNING):
        server.kill()


def _deep_merge(base: Dict[str, Any], extra: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class PrometheusServer:
    """One Prometheus process with its config and data under ``tmp_dir``.

    ``scrape_configs`` is a list of Prometheus scrape-config dicts; the
    ``targets=[(job, "host:port"), ...]`` shortcut builds static ones (targets
    of the same job are grouped). ``rule_files`` are copied into
    ``tmp_dir/rules`` at every config write, so a test may edit the original
    and call ``reload()``. ``extra_config`` is deep-merged into the generated
    YAML. ``alertmanager`` is ``"host:port"`` (or a list of them).

    Settings are plain attributes; change them and call ``reload()`` (running)
    or ``start()``/``restart()``.
    """

    def __init__(
        self,
        tmp_dir: PathLike,
        *,
        scrape_configs: Optional[Sequence[Mapping[str, Any]]] = None,
        targets: Optional[Sequence[Tuple[str, str]]] = None,
        rule_files: Sequence[PathLike] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        extra_config: Optional[Mapping[str, Any]] = None,
        alertmanager: Union[str, Sequence[str], None] = None,
        retention: str = "3650d",
        extra_args: Sequence[str] = (),
        binary: str = "prometheus",
        promtool_binary: str = "promtool",
        port: Optional[int] = None,
    ) -> None:
        self.tmp_dir = Path(tmp_dir)
        self.scrape_configs: List[Dict[str, Any]] = [dict(c) for c in (scrape_configs or ())]
        self.targets: List[Tuple[str, str]] = list(targets or ())
        self.rule_files: List[Path] = [Path(p) for p in rule_files]
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.extra_config: Dict[str, Any] = dict(extra_config or {})
        self.alertmanager = alertmanager
        # Backfilled blocks older than the retention are deleted at start-up;
        # the default 15d would eat test data placed at fixed old timestamps.
        self.retention = retention
        self.extra_args = list(extra_args)
        self.binary = binary
        self.promtool_binary = promtool_binary
        self.port: Optional[int] = port
        self._fixed_port = port is not None
        self._proc: Optional[subprocess.Popen] = None
        self._log_handle: Optional[Any] = None
        self._http = requests.Session()
        self._backfills = 0

    # -- paths -------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.tmp_dir / "prometheus.yml"

    @property
    def data_dir(self) -> Path:
        return self.tmp_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.tmp_dir / "prometheus.log"

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusHarnessError("the server has not been started yet: no port")
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

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- config ------------------------------------------------------------

    def config(self) -> Dict[str, Any]:
        """The configuration dict that ``write_config()`` writes."""
        scrape: List[Dict[str, Any]] = [copy.deepcopy(c) for c in self.scrape_configs]
        jobs: Dict[str, List[str]] = {}
        for job, target in self.targets:
            jobs.setdefault(job, []).append(target)
        for job, addrs in jobs.items():
            scrape.append({"job_name": job, "static_configs": [{"targets": addrs}]})
        cfg: Dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
                # A scrape must finish within its interval; with 1 s intervals
                # the default 10 s timeout would be rejected by Prometheus.
                "scrape_timeout": self.scrape_interval,
            },
            "scrape_configs": scrape,
        }
        if self.rule_files:
            cfg["rule_files"] = [str(self.tmp_dir / "rules" / f"{i:02d}-{p.name}") for i, p in enumerate(self.rule_files)]
        if self.alertmanager:
            ams = [self.alertmanager] if isinstance(self.alertmanager, str) else list(self.alertmanager)
            cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": ams}]}]}
        return _deep_merge(cfg, self.extra_config)

    def write_config(self) -> Path:
        """Copy the rule files and write prometheus.yml; returns its path."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        rules_dir = self.tmp_dir / "rules"
        if self.rule_files:
            rules_dir.mkdir(exist_ok=True)
            for old in rules_dir.iterdir():
                old.unlink()
            for i, src in enumerate(self.rule_files):
                shutil.copyfile(src, rules_dir / f"{i:02d}-{src.name}")
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        return self.config_path

    # -- backfill ----------------------------------------------------------

    def backfill_openmetrics(self, text: str) -> None:
        """Turn OpenMetrics text into TSDB blocks in the data folder.

        Runs ``promtool tsdb create-blocks-from openmetrics <file> <data dir>``
        while the server is stopped (Prometheus reads new blocks at start-up).
        Timestamps are unix *seconds*; the text must end with ``# EOF`` (added
        if missing). Backfilled data is queryable as soon as ``start()``
        returns; mind the 5-minute lookback: query at an explicit ``time``
        inside the backfilled range, or end the data less than 5 min ago.
        """
        if self.running:
            raise PrometheusHarnessError("backfill_openmetrics() needs a stopped server: call it before start()")
        if not text.rstrip().endswith("# EOF"):
            text = text.rstrip("\n") + "\n# EOF\n"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self._backfills += 1
        src = self.tmp_dir / f"backfill-{self._backfills}.om"
        src.write_text(text)
        promtool(
            "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(src), str(self.data_dir),
            check=True, binary=self.promtool_binary,
        )

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "PrometheusServer":
        """Start Prometheus and wait (deadline 30 s) until ``/-/ready`` says so."""
        if self.running:
            raise PrometheusHarnessError(f"already running on {self.url}")
        exe = find_binary(self.binary)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        # free_port() can race with another process; retry on a new port.
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if self.port is None or (attempt > 0 and not self._fixed_port):
                self.port = free_port()
            self._spawn(exe)
            try:
                self._wait_ready(READY_TIMEOUT_S)
                return self
            except PrometheusHarnessError:
                in_use = "address already in use" in self.log_tail(5).lower()
                self.kill()
                if not (in_use and attempt + 1 < attempts):
                    raise
        raise AssertionError("unreachable")

    def _spawn(self, exe: str) -> None:
        args = [
            exe,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--web.enable-lifecycle",
            "--web.enable-admin-api",
            "--log.level=warn",
            *self.extra_args,
        ]
        self._log_handle = open(self.log_path, "ab")
        self._log_handle.write(f"\n=== {' '.join(args)}\n".encode())
        self._log_handle.flush()
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            cwd=self.tmp_dir,
        )
        _RUNNING.add(self)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc is not None else None
                raise PrometheusHarnessError(
                    f"prometheus exited with code {code} before it was ready\n--- log tail\n{self.log_tail()}"
                )
            try:
                resp = self._http.get(f"{self.url}/-/ready", timeout=1.0)
                if resp.status_code == 200:
                    return
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except requests.RequestException as err:
                last = f"{type(err).__name__}"
            if time.monotonic() >= deadline:
                raise PrometheusHarnessError(
                    f"prometheus on {self.url} not ready after {timeout:.0f} s (last: {last})\n"
                    f"--- log tail\n{self.log_tail()}"
                )
            time.sleep(POLL_S)

    def _reap(self) -> None:
        _RUNNING.discard(self)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Idempotent."""
        stop(self._proc, STOP_TIMEOUT_S)
        self._reap()

    def kill(self) -> None:
        """SIGKILL (a crash, for fault tests): no shutdown, no WAL close."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._reap()

    def restart(self) -> "PrometheusServer":
        """Stop (if running) and start again on the same port and data folder."""
        self.stop()
        fixed = self._fixed_port
        self._fixed_port = self.port is not None  # same port, no re-pick
        try:
            return self.start()
        finally:
            self._fixed_port = fixed

    def reload(self) -> None:
        """Rewrite prometheus.yml from the current settings and POST ``/-/reload``."""
        self.write_config()
        resp = self._http.post(f"{self.url}/-/reload", timeout=10.0)
        if resp.status_code != 200:
            raise PrometheusHarnessError(
                f"reload failed: HTTP {resp.status_code}: {resp.text.strip()}\n--- log tail\n{self.log_tail()}"
            )

    def close(self) -> None:
        self.stop()
        self._http.close()

    def __enter__(self) -> "PrometheusServer":
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"PrometheusServer({self.tmp_dir}, port={self.port}, {state})"

    # -- API ---------------------------------------------------------------

    def api(self, path: str, params: Optional[Mapping[str, Any]] = None) -> Any:
        """GET ``/api/v1/<path>`` and return ``data``; ``status: error`` raises PromQLError."""
        resp = self._http.get(f"{self.url}/api/v1/{path}", params=params, timeout=10.0)
        try:
            body = resp.json()
        except ValueError:
            raise PrometheusHarnessError(f"GET {path}: HTTP {resp.status_code}, not JSON: {resp.text[:300]}") from None
        if body.get("status") != "success":
            raise PromQLError(f"GET {path} {dict(params or {})}: {body.get('error')}", body.get("errorType", ""))
        return body["data"]

    def query(self, expr: str, time: Optional[float] = None) -> Samples:
        """Instant query: ``[(labels, value), ...]`` (a scalar is ``[({}, v)]``)."""
        params: Dict[str, Any] = {"query": expr}
        if time is not None:
            params["time"] = f"{time:.3f}"
        data = self.api("query", params)
        kind, result = data["resultType"], data["result"]
        if kind == "vector":
            return [(dict(item["metric"]), float(item["value"][1])) for item in result]
        if kind == "scalar":
            return [({}, float(result[1]))]
        raise PrometheusHarnessError(f"query {expr!r} returned a {kind}; use query_range() for ranges")

    def query_range(
        self, expr: str, start: float, end: float, step: float
    ) -> List[Tuple[Labels, List[Tuple[float, float]]]]:
        """Range query: ``[(labels, [(t, value), ...]), ...]``."""
        data = self.api("query_range", {"query": expr, "start": start, "end": end, "step": step})
        return [
            (dict(item["metric"]), [(float(t), float(v)) for t, v in item["values"]])
            for item in data["result"]
        ]

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[Samples], bool] = lambda samples: bool(samples),
        timeout: float = 30.0,
    ) -> Samples:
        """Poll ``expr`` until ``predicate(samples)`` holds; return those samples.

        A PromQL error fails at once (waiting will not fix a bad query); the
        deadline's failure message shows the last result.
        """
        deadline = time.monotonic() + timeout
        last: Any = "no result yet"
        while True:
            try:
                samples = self.query(expr)
                if predicate(samples):
                    return samples
                last = samples
            except PromQLError:
                raise
            except (requests.RequestException, PrometheusHarnessError) as err:
                last = f"{type(err).__name__}: {err}"
            if time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"waited {timeout:g} s for {expr!r} to satisfy the predicate; last result: {last!r}"
                )
            time.sleep(POLL_S)

    def targets_status(self) -> List[Dict[str, Any]]:
        return list(self.api("targets", {"state": "active"})["activeTargets"])

    def wait_for_targets_up(self, n: int, timeout: float = 30.0) -> List[Dict[str, Any]]:
        """Wait until at least ``n`` active targets report ``health: up``."""
        deadline = time.monotonic() + timeout
        while True:
            targets = self.targets_status()
            if sum(1 for t in targets if t.get("health") == "up") >= n:
                return targets
            if time.monotonic() >= deadline:
                detail = "; ".join(
                    f"{t.get('scrapeUrl')}: {t.get('health')} {t.get('lastError') or ''}".strip() for t in targets
                ) or "no active targets"
                raise WaitTimeout(f"waited {timeout:g} s for {n} target(s) up: {detail}")
            time.sleep(POLL_S)

    def alerts(self) -> List[Dict[str, Any]]:
        """Active alerts (pending and firing), from ``/api/v1/alerts``."""
        return list(self.api("alerts")["alerts"])

    def rules(self) -> List[Dict[str, Any]]:
        """Rule groups with their rules' state and health, from ``/api/v1/rules``."""
        return list(self.api("rules")["groups"])

    def wait_for_alert(self, name: str, state: str = "firing", timeout: float = 30.0) -> Dict[str, Any]:
        """Wait until an alert called ``name`` is in ``state``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            alerts = self.alerts()
            for alert in alerts:
                if alert.get("labels", {}).get("alertname") == name and alert.get("state") == state:
                    return alert
            if time.monotonic() >= deadline:
                seen = [(a.get("labels", {}).get("alertname"), a.get("state")) for a in alerts]
                raise WaitTimeout(f"waited {timeout:g} s for alert {name!r} to be {state}; alerts now: {seen}")
            time.sleep(POLL_S)
