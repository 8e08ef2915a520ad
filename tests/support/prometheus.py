"""A real Prometheus server for tests, started on a random loopback port.

``PrometheusServer`` is the project's one launcher
(``dualtrack.local_prometheus.LocalPrometheus``: configuration, port, start,
reload, restart, stop) plus what only tests need: a missing binary fails the
test, the PromQL API with deadline-bound waits, backfills with promtool, and
OpenMetrics text for them.

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

import math
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import pytest
import requests

from dualtrack.local_prometheus import LocalPrometheus, PathLike, PrometheusError

Labels = Dict[str, str]
Samples = List[Tuple[Labels, float]]

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


class PrometheusHarnessError(PrometheusError):
    """The test Prometheus did not answer as the harness expected.

    Start, reload and "no port yet" failures come from the launcher as its
    ``PrometheusError`` (the base class).
    """


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


class PrometheusServer(LocalPrometheus):
    """``LocalPrometheus`` for tests: folder ``tmp_dir``, a missing binary fails the test, plus queries and waits.

    The launcher (``dualtrack.local_prometheus``) writes the configuration,
    picks the port, starts, reloads, restarts, stops and kills; this class
    adds what only tests need: the PromQL API (``query``, ``wait_for*``),
    backfilling with promtool, and the admin and lifecycle APIs switched on.
    ``targets`` are ``[(job, "host:port"), ...]`` (targets of the same job are
    grouped); the other settings are the launcher's.

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
        super().__init__(
            data_dir=tmp_dir,
            targets=list(targets or ()),
            scrape_configs=scrape_configs or (),
            rule_files=rule_files,
            scrape_interval=scrape_interval,
            evaluation_interval=evaluation_interval,
            extra_config=extra_config,
            alertmanager=alertmanager,
            retention=retention,
            extra_args=extra_args,
            binary=binary,
            port=port,
            lifecycle_api=True,
            admin_api=True,
        )
        self.promtool_binary = promtool_binary
        self._http = requests.Session()
        self._backfills = 0

    def _locate_binary(self, name: str) -> str:
        return find_binary(name)

    @property
    def tmp_dir(self) -> Path:
        return self.dir

    @property
    def data_dir(self) -> Path:
        return self.data_path

    def log_tail(self, lines: int = 40) -> str:
        return super().log_tail(lines)

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
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._backfills += 1
        src = self.tmp_dir / f"backfill-{self._backfills}.om"
        src.write_text(text)
        promtool(
            "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(src), str(self.data_dir),
            check=True, binary=self.promtool_binary,
        )

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        self.stop()
        self._http.close()

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            except (requests.RequestException, PrometheusError) as err:
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
