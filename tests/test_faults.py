"""Faults the adapter, the preferences file and the optimizer must survive.

Each test injects one fault into real parts (a real Prometheus killed under a
real ``dualtrack adapter`` process, a real process SIGKILLed mid-cycle, file
system calls failing, NVML and psutil failing under a running monitor,
clocks jumping) and asserts what must hold. Waits are on conditions with
deadlines, never fixed sleeps.

Docstrings follow one shape, which ``tools/reliability_report.py`` copies into
docs/reliability.md: the first paragraph says the fault, the paragraph
starting ``Holds:`` what must hold. Counts observed along the way are
recorded as junit properties (the ``observe`` fixture) and shown in the report.

Tests elsewhere already cover neighbouring cases (the report lists them):
the in-process adapter against a killed Prometheus and a bad rules edit
(tests/test_adapter.py), the PromQL client's error mapping
(tests/test_promql.py), the writer's own failure paths and the reader's
policy (tests/test_preferences.py), NVML backoff and /proc fallbacks
(tests/test_resources.py), a busy port for ``serve_metrics`` and the
optimizer without monitoring (tests/test_exposition.py).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
from prometheus_client import CollectorRegistry

import dualtrack.preferences.writer as preferences_module
from dualtrack import DualTrackOptimizer, ModelPrice, OptimizationConfig, PreferencesReader, ResourceMonitor
from dualtrack.adapter.loop import Adapter, AdapterSettings
from dualtrack.adapter.prometheus_source import PrometheusSource
from dualtrack.adapter.promql import PromQLClient
from dualtrack.adapter.signals import SignalValues
from dualtrack.bundled import bundled_dir
from dualtrack.clock import VirtualClock
from dualtrack.constraints import MB
from dualtrack.exporter.exposition import MetricsPortInUse
from dualtrack.preferences import Preferences, PreferencesReadError, read_preferences, write_preferences
from fakes.fake_nvml import FakeGpu, FakeNvml
from fakes.fake_psutil import FakeProc, FakePsutil, sbattery
from support.adapter_process import EMPTY_VECTOR, AdapterProcess, FakePrometheus, temp_files
from support.waiting import wait_until

PREFS = "prefs.json"
GIB = 1 << 30


def sequence_of(path: Path) -> int:
    """The sequence of the valid document at ``path``; 0 when there is none (yet)."""
    try:
        return read_preferences(path).sequence
    except PreferencesReadError:
        return 0


def dualtrack_threads() -> set:
    return {t for t in threading.enumerate() if t.name.startswith("dualtrack-")}


@pytest.fixture
def observe(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``observe(text)``: what a test counted, kept as the junit property ``observed`` for the report.

    (``record_property`` would do the same but warns under the default junit_family, xunit2.)
    """
    return lambda text: request.node.user_properties.append(("observed", text))


# =========================================================================== Prometheus down, slow, wrong


@pytest.mark.prometheus
def test_prometheus_killed_mid_run_then_restarted(prometheus_factory, tmp_path, observe):
    """Fault: the Prometheus a running `dualtrack adapter` process queries is SIGKILLed, stays down
    past the expiry of the last preferences, then restarts on the same port and data folder.

    Holds: the adapter process keeps running; it stops publishing (the file keeps its sequence),
    so a router-side PreferencesReader on the real clock goes fresh -> stale -> expired and then
    returns safe defaults; every failed query is counted in
    dualtrack_adapter_query_errors_total{type="unavailable"} on the adapter's /metrics; after the
    restart the adapter publishes again by itself, with no restart of its own, and the reader is
    fresh again."""
    prom = prometheus_factory()
    out = tmp_path / "out" / PREFS
    out.parent.mkdir()
    # validity 1 s (grace 0.5 s) so that expiry comes quickly; the query timeout stays under
    # the cycle budget (0.8 x interval).
    with AdapterProcess(prom.url, out, tmp_path, interval=0.25, validity=1.0, query_timeout=0.2) as adapter:
        reader = PreferencesReader(out, check_interval_seconds=0)
        wait_until(lambda: reader.status()["state"] == "fresh", 20, "a first publish")

        prom.kill()
        states: List[str] = []
        sequences: Dict[str, int] = {}

        def state() -> str:
            status = reader.status()
            if not states or states[-1] != status["state"]:
                states.append(status["state"])
                sequences[status["state"]] = sequence_of(out)
            return status["state"]

        wait_until(lambda: state() == "expired", 15, "the reader to expire the preferences")
        assert states == ["fresh", "stale", "expired"], states
        assert sequences["expired"] == sequences["stale"]  # not republished while Prometheus is down
        fallback = reader.current()
        assert fallback.source == "defaults" and fallback.reasons[0].rule == "preferences_expired"
        assert adapter.alive
        unavailable = adapter.wait_metric("dualtrack_adapter_query_errors_total", lambda v: v >= 1,
                                          type="unavailable")
        assert adapter.sample("dualtrack_adapter_consecutive_failures") >= 1
        assert adapter.sample("dualtrack_adapter_cycles_total", result="error") >= 1
        assert "cannot fetch signals (unavailable)" in adapter.log_text()

        prom.restart()
        down_sequence = sequences["expired"]
        wait_until(lambda: reader.status()["state"] == "fresh" and reader.current().sequence > down_sequence,
                   30, "the adapter to publish again after the restart")
        assert reader.current().source == "prometheus"
        adapter.wait_metric("dualtrack_adapter_consecutive_failures", lambda v: v == 0)
        assert adapter.alive
        observe(f"reader states {' -> '.join(states)} -> fresh; "
                f"{unavailable:.0f} unavailable query errors counted while down; "
                f"sequence {down_sequence} -> {reader.current().sequence} after restart")


def _huge_answer(size: int) -> Dict[str, Any]:
    """A valid vector answer of about ``size`` bytes."""
    item = {"metric": {"dualtrack_signal": "memory_used_ratio", "pad": "x" * 1000}, "value": [1.0, "0.5"]}
    return {"status": "success", "data": {"resultType": "vector", "result": [item] * (size // 1050 + 1)}}


MAX_RESPONSE_BYTES = 64 * 1024

BAD_ANSWERS = [
    pytest.param(dict(body=EMPTY_VECTOR, delay=3.0), "timeout", id="slower_than_the_query_timeout"),
    pytest.param(dict(status=503, body={"status": "error", "errorType": "unavailable", "error": "overloaded"}),
                 "unavailable", id="http_503_api_error"),
    pytest.param(dict(status=502, body="<html><body>502 Bad Gateway</body></html>"), "unavailable",
                 id="http_502_html_from_a_proxy"),
    pytest.param(dict(drop=True), "unavailable", id="connection_dropped_without_an_answer"),
    pytest.param(dict(body='{"status": "success", "data": {"resultType": "vec'), "bad_response",
                 id="malformed_json"),
    pytest.param(dict(body="<html>login page</html>", headers={"Content-Type": "text/html"}), "bad_response",
                 id="http_200_html_not_json"),
    pytest.param(dict(body=_huge_answer(4 * MAX_RESPONSE_BYTES)), "bad_response", id="answer_over_max_size"),
    pytest.param(dict(body={"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"dualtrack_signal": "memory_used_ratio"}, "value": [1.0, 0.5]}]}}), "bad_response",
                 id="wrong_type_value_is_a_number"),
    pytest.param(dict(body={"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"dualtrack_signal": 7}, "value": [1.0, "0.5"]}]}}), "bad_response",
                 id="wrong_type_label_is_a_number"),
    pytest.param(dict(body={"status": "success", "data": {"resultType": "matrix", "result": []}}),
                 "bad_response", id="wrong_type_range_vector"),
    pytest.param(dict(body={"status": "success", "data": "ok"}), "bad_response", id="wrong_type_data_is_a_string"),
    pytest.param(dict(status=400, body={"status": "error", "errorType": "bad_data", "error": "parse error"}),
                 "bad_query", id="every_query_rejected"),
    pytest.param(dict(status=401, body={"status": "error", "errorType": "unauthorized", "error": "no"}), "auth",
                 id="credentials_refused"),
]


class _LoopThread:
    """``Adapter.run()`` (the real loop, backoff included) on a thread."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="test-adapter-loop", daemon=True)

    def _run(self) -> None:
        try:
            self.adapter.run()
        except BaseException as err:  # the loop must never raise: the test asserts on this
            self.error = err

    def __enter__(self) -> "_LoopThread":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.adapter.stop_event.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the adapter loop did not stop"


def _promql_adapter(url: str, output: Path, *, interval: float, timeout: float) -> Adapter:
    settings = AdapterSettings(rules=(str(bundled_dir("rules")),), strategy="balanced", output=str(output),
                               interval_seconds=interval, window="5s", max_backoff_seconds=interval)
    holder: List[Adapter] = []
    client = PromQLClient(url, timeout=timeout, retries=0, max_response_bytes=MAX_RESPONSE_BYTES)
    source = PrometheusSource(client, window="5s", on_query=lambda s, e: holder[0].metrics.observe_query(s, e))
    adapter = Adapter(settings, source, registry=CollectorRegistry())
    holder.append(adapter)
    return adapter


@pytest.mark.parametrize("fault, kind", BAD_ANSWERS)
def test_prometheus_answering_badly_is_counted_by_type_and_recovered_from(fault, kind, tmp_path, observe):
    """Fault: Prometheus (a scripted fake) starts answering every query badly while the adapter
    loop runs: slower than the query timeout, 5xx, a dropped connection, malformed JSON, HTML, an
    answer over max_response_bytes, wrong types, every query rejected, credentials refused.
    Then it answers well again.

    Holds: each failed query is counted in dualtrack_adapter_query_errors_total under its type;
    the cycles fail (dualtrack_adapter_cycles_total{result="error"}) and publish nothing, so the
    file's valid_until runs out honestly instead of being renewed with "no data"; the loop keeps
    running; the first good answer publishes again and consecutive failures drop to 0."""
    out = tmp_path / PREFS
    registry_value = lambda a, name, **labels: a.registry.get_sample_value(name, labels) or 0.0  # noqa: E731
    with FakePrometheus() as fake:
        fake.answer(200, EMPTY_VECTOR)
        adapter = _promql_adapter(fake.url, out, interval=0.15, timeout=0.08)
        with _LoopThread(adapter) as loop:
            wait_until(lambda: sequence_of(out) >= 1, 10, "a first publish")
            errors0 = registry_value(adapter, "dualtrack_adapter_query_errors_total", type=kind)
            failed0 = registry_value(adapter, "dualtrack_adapter_cycles_total", result="error")

            fake.answer(**fault)
            wait_until(lambda: registry_value(adapter, "dualtrack_adapter_cycles_total", result="error") > failed0,
                       10, "a failed cycle")
            published = out.read_bytes()  # a cycle in flight at the switch may still have published
            wait_until(lambda: registry_value(adapter, "dualtrack_adapter_consecutive_failures") >= 3, 10,
                       "three failed cycles in a row")
            assert registry_value(adapter, "dualtrack_adapter_cycles_total", result="error") >= failed0 + 3
            # On a loaded machine a cycle can also fail on its own deadline (counted as a
            # timeout): wait for three errors of this kind rather than assume each cycle saw one.
            wait_until(lambda: registry_value(adapter, "dualtrack_adapter_query_errors_total", type=kind)
                       - errors0 >= 3, 10, f"three {kind} query errors counted")
            counted = registry_value(adapter, "dualtrack_adapter_query_errors_total", type=kind) - errors0
            assert out.read_bytes() == published  # nothing published while the answers are bad
            assert loop.thread.is_alive() and loop.error is None

            fake.answer(200, EMPTY_VECTOR)
            before = read_preferences(out).sequence
            wait_until(lambda: sequence_of(out) > before, 10, "a publish after recovery")
            wait_until(lambda: adapter.failures == 0, 5, "consecutive failures back to 0")
            assert loop.thread.is_alive() and loop.error is None
    observe(f"{counted:.0f} {kind} query errors counted over the failed cycles; "
            f"published again as sequence {sequence_of(out)}")


# =========================================================================== SIGKILL


KILLS = 30
KILL_SEED = 20240601


def test_adapter_sigkilled_at_random_points_of_many_cycles(tmp_path, observe):
    """Fault: the adapter process (interval 20 ms, so most of its time is spent in cycles and
    writes) is SIGKILLed 30 times at random points after it has started publishing, and
    restarted each time. A stale temp file of an earlier crash is planted before the first start.

    Holds: after every kill the preferences file is a valid document (never torn, never
    empty) and its sequence only grows across restarts; no more than one temp file per kill
    is ever left, and a restarted writer removes stale ones (the planted one at once, the
    leftovers once aged); a router-side PreferencesReader polling throughout always returns
    valid preferences: safe defaults before the first publish, then the last good document,
    never a read error other than "missing" before the first publish."""
    rng = random.Random(KILL_SEED)
    interval = 0.02
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / PREFS
    planted = folder / f".{PREFS}.{'ab' * 8}.tmp"
    planted.write_text('{"torn": ')
    os.utime(planted, (time.time() - 3600, time.time() - 3600))

    reader = PreferencesReader(out, check_interval_seconds=0)
    stop = threading.Event()
    seen = {"reads": 0, "defaults_before_first": 0, "regressions": 0, "defaults_after_first": 0, "errors": 0}
    last_seq = [0]

    def router() -> None:
        while not stop.is_set():
            try:
                prefs = reader.current()
            except Exception:  # the reader must never raise: counted and asserted below
                seen["errors"] += 1
                continue
            seen["reads"] += 1
            time.sleep(0.0005)  # a router's pace, not a busy loop holding the GIL
            if prefs.source == "defaults":
                seen["defaults_after_first" if last_seq[0] else "defaults_before_first"] += 1
            else:
                if prefs.sequence < last_seq[0]:
                    seen["regressions"] += 1
                last_seq[0] = prefs.sequence

    router_thread = threading.Thread(target=router, name="test-router", daemon=True)
    router_thread.start()
    max_temps = 0
    leftovers = 0
    with FakePrometheus() as fake:
        fake.answer(200, EMPTY_VECTOR)
        try:
            for kill in range(1, KILLS + 1):
                before = sequence_of(out)
                proc = AdapterProcess(fake.url, out, tmp_path, interval=interval, validity=300.0,
                                      metrics_port=None).start()
                try:
                    wait_until(lambda: sequence_of(out) > before or not proc.alive, 30,  # noqa: B023 (called here)
                               "the restarted adapter to publish", poll=0.002)
                    assert proc.alive, proc.log_tail()
                    if kill == 1:
                        assert not planted.exists()  # stale temp files go at start
                    time.sleep(rng.uniform(0, 5 * interval))  # a random point of the next cycles
                finally:
                    proc.kill()
                prefs = read_preferences(out)  # raises if torn, empty or invalid
                assert prefs.sequence >= before
                temps = temp_files(folder, PREFS)
                max_temps = max(max_temps, len(temps))
                assert len(temps) <= kill, [t.name for t in temps]
            leftovers = len(temp_files(folder, PREFS))
            # Leftovers are young (the writer keeps temp files younger than 60 s: they may be
            # another writer's, in flight); once aged, the next start removes them.
            for temp in temp_files(folder, PREFS):
                os.utime(temp, (time.time() - 120, time.time() - 120))
            final = sequence_of(out)
            with AdapterProcess(fake.url, out, tmp_path, interval=interval, validity=300.0,
                                metrics_port=None) as proc:
                wait_until(lambda: sequence_of(out) > final, 30, "the last start to publish")
                assert temp_files(folder, PREFS) == []
                assert proc.stop() == 0  # SIGTERM: a clean stop between cycles
        finally:
            stop.set()
            router_thread.join(timeout=10)

    assert seen["errors"] == 0 and seen["regressions"] == 0 and seen["defaults_after_first"] == 0, seen
    assert seen["reads"] > 100, seen
    problems = {r: n for r, n in reader.error_counts.items() if n and r != "missing"}
    assert problems == {}, problems  # never a torn, empty or invalid read
    total = sequence_of(out)
    assert total >= KILLS + 1  # every life published at least once, numbering continued
    assert temp_files(folder, PREFS) == []
    observe(f"{KILLS} SIGKILLs (seed {KILL_SEED}) over {total} publishes; reader polled "
            f"{seen['reads']} times: {seen['defaults_before_first']} safe defaults before the "
            f"first publish, then always the last good document, 0 torn reads; temp "
            f"files left by kills mid-write: {leftovers} (at most {max_temps} at once), all "
            f"removed by the next start once aged")


# =========================================================================== output folder


class _FailingOs:
    """``os`` as seen by dualtrack.preferences, with some calls failing with ``errno``."""

    def __init__(self, failing: Dict[str, int]) -> None:
        self.failing = failing
        self.calls: Dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name not in self.failing:
            return real

        def fail(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            code = self.failing[name]
            raise OSError(code, os.strerror(code))

        return fail


class _NoDataSource:
    """A source that always answers, with no data: every cycle publishes."""

    name = "test"

    def fetch(self, catalog: Any = None, at: Any = None, deadline: Any = None) -> SignalValues:
        return SignalValues()

    def constraint_states(self, values: SignalValues) -> Dict[str, Any]:
        return {}


@pytest.mark.parametrize("failing, message", [
    pytest.param({"write": errno.ENOSPC}, "No space left on device", id="disk_full_ENOSPC_on_write"),
    pytest.param({"open": errno.EROFS}, "Read-only file system", id="read_only_EROFS_on_create"),
    pytest.param({"fsync": errno.EIO}, "Input/output error", id="EIO_on_fsync"),
    pytest.param({"replace": errno.EDQUOT}, "Disk quota exceeded", id="quota_EDQUOT_on_rename"),
])
def test_output_folder_write_failures(failing, message, tmp_path, monkeypatch, caplog, observe):
    """Fault: the preferences writer's system calls fail under the adapter (disk full, read-only
    folder, I/O error, quota), injected in-process into the os calls of dualtrack.preferences
    (tests run as root, so permissions cannot make a folder read-only).

    Holds: each cycle reports the failure (dualtrack_adapter_publish_errors_total, an error log
    naming the cause) and fails without raising; the last good file stays as it was and no temp
    file is left behind; a reader keeps returning the last good document; once the fault is
    gone the next cycle publishes again, numbering on."""
    out = tmp_path / PREFS
    settings = AdapterSettings(rules=(str(bundled_dir("rules")),), strategy="balanced", output=str(out),
                               interval_seconds=30.0)
    adapter = Adapter(settings, _NoDataSource(), registry=CollectorRegistry())
    reader = PreferencesReader(out, check_interval_seconds=0)
    assert adapter.run_cycle().published
    good = out.read_bytes()
    assert reader.current().sequence == 1

    fake_os = _FailingOs(failing)
    monkeypatch.setattr(preferences_module, "os", fake_os)
    with caplog.at_level(logging.ERROR, logger="dualtrack.adapter"):
        results = [adapter.run_cycle() for _ in range(3)]
    assert [r.result for r in results] == ["error"] * 3 and not any(r.published for r in results)
    assert all(r.error.startswith("publish:") and message in r.error for r in results), results[0].error
    assert sum(fake_os.calls.values()) == 3
    assert adapter.registry.get_sample_value("dualtrack_adapter_publish_errors_total") == 3
    logged = [r.getMessage() for r in caplog.records if "cannot publish preferences" in r.getMessage()]
    assert len(logged) == 3 and message in logged[0]
    assert out.read_bytes() == good and temp_files(tmp_path, PREFS) == []
    assert reader.current().sequence == 1 and reader.current().source == "prometheus"

    monkeypatch.setattr(preferences_module, "os", os)
    result = adapter.run_cycle()
    assert result.published and result.sequence == 2
    assert reader.current().sequence == 2
    assert adapter.failures == 0
    observe(f"3 failed publishes counted and logged ({message}); file and readers kept "
            "sequence 1; sequence 2 published once the fault was gone")


def _tamper_delete(out: Path, scratch: Path) -> Callable[[], None]:
    out.unlink()
    return lambda: None


def _tamper_garbage(out: Path, scratch: Path) -> Callable[[], None]:
    with open(out, "wb") as fh:  # in place, not atomic: what a careless script or a full disk leaves
        fh.write(b'{"schema_version": 1, "sequence": 99, "routing": {"local_bi')
    return lambda: None


def _tamper_symlink(out: Path, scratch: Path) -> Callable[[], None]:
    victim = scratch / "victim.conf"
    victim.write_text("precious: true\n")
    digest = hashlib.sha256(victim.read_bytes()).hexdigest()
    tmp_link = out.with_name("link.tmp")
    os.symlink(victim, tmp_link)
    os.replace(tmp_link, out)

    def check() -> None:
        assert hashlib.sha256(victim.read_bytes()).hexdigest() == digest  # never written through
        assert not out.is_symlink()

    return check


def _tamper_folder_is_a_file(out: Path, scratch: Path) -> Callable[[], None]:
    folder = out.parent
    moved = scratch / "moved-folder"
    folder.rename(moved)
    folder.write_text("not a folder\n")
    return lambda: None


TAMPERS = [
    pytest.param(_tamper_delete, id="file_deleted"),
    pytest.param(_tamper_garbage, id="file_replaced_by_garbage"),
    pytest.param(_tamper_symlink, id="file_swapped_for_a_symlink"),
    pytest.param(_tamper_folder_is_a_file, id="folder_replaced_by_a_file"),
]


@pytest.mark.parametrize("tamper", TAMPERS)
def test_output_tampered_with_while_the_adapter_process_runs(tamper, tmp_path, observe):
    """Fault: while a `dualtrack adapter` process publishes every 50 ms, its preferences file is
    deleted, overwritten in place with a torn document, swapped for a symlink to another file,
    or its whole folder is replaced by a plain file (then put back).

    Holds: the process keeps running; a symlink is replaced, never written through (its target
    is unchanged); where the folder is unusable each cycle's failure is counted in
    dualtrack_adapter_publish_errors_total and logged, and publishing resumes by itself once the
    folder is back; a router-side PreferencesReader polling throughout never returns the garbage
    or the defaults, only the last good document or a newer one."""
    folder = tmp_path / "out"
    folder.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = folder / PREFS
    with FakePrometheus() as fake:
        fake.answer(200, EMPTY_VECTOR)
        with AdapterProcess(fake.url, out, tmp_path, interval=0.05, validity=300.0) as adapter:
            wait_until(lambda: sequence_of(out) >= 2, 20, "the adapter to publish")
            reader = PreferencesReader(out, check_interval_seconds=0)
            good = reader.current()
            assert good.source == "prometheus"
            returned: List[Preferences] = []

            def poll_reader() -> None:
                prefs = reader.current()
                returned.append(prefs)
                assert prefs.source == "prometheus" and prefs.sequence >= good.sequence, prefs

            check = tamper(out, scratch)
            before = max(good.sequence, 1)
            if tamper is _tamper_folder_is_a_file:
                errors = adapter.wait_metric("dualtrack_adapter_publish_errors_total", lambda v: v >= 2)
                poll_reader()
                assert reader.current().sequence == returned[0].sequence  # the last good copy
                assert "cannot publish preferences" in adapter.log_text()
                moved = scratch / "moved-folder"
                before = sequence_of(moved / PREFS)
                folder.unlink()
                moved.rename(folder)
            else:
                errors = 0.0

            def republished() -> bool:
                poll_reader()
                return out.is_file() and not out.is_symlink() and sequence_of(out) > before

            wait_until(republished, 20, "the adapter to publish again")
            check()
            wait_until(lambda: (poll_reader(), reader.current().sequence > before)[1], 10,
                       "the reader to follow")
            assert adapter.alive
            final_errors = adapter.sample("dualtrack_adapter_publish_errors_total")
            if tamper is _tamper_folder_is_a_file:
                assert final_errors >= errors >= 2  # one per failed cycle until the folder came back
            else:
                assert final_errors == 0  # the file alone is never in the writer's way
            assert adapter.stop() == 0
    assert temp_files(folder, PREFS) == []
    observe(f"{len(returned)} reader polls, all the last good document or newer; "
            f"{final_errors:.0f} publish errors counted; reader problems seen: "
            f"{ {k: v for k, v in reader.error_counts.items() if v} }")


# =========================================================================== rules edited while running


def _replace_file(path: Path, text: str, staging: Path) -> None:
    """Atomically replace ``path`` (staged outside the rules folder, which is scanned)."""
    staging.write_text(text)
    os.replace(staging, path)


def test_rule_file_edited_invalid_while_the_adapter_process_runs(tmp_path, observe):
    """Fault: while a `dualtrack adapter` process runs strategy `balanced`, its rule file is
    edited into invalid YAML, then into valid YAML with an invalid rule (an unknown signal),
    both edits also raising the baseline local_bias to 0.9; then it is fixed (baseline 0.7).

    Holds: the process keeps running and publishing on the last good rules (the 0.9 baseline
    never shows in the published preferences); dualtrack_adapter_rules_reload_success reads 0;
    each distinct error is logged once with the file and line (balanced.yaml:14 for the YAML,
    balanced.yaml:40 and the field for the rule); the fix is picked up by itself (reload
    success 1 again, "rules reloaded" logged, the new baseline pulls local_bias up)."""
    rules = tmp_path / "rules"
    shutil.copytree(bundled_dir("rules"), rules)
    staging = tmp_path / "staging.yaml"
    target = rules / "balanced.yaml"
    good = target.read_text()
    assert good.splitlines()[12].startswith("preferences: {local_bias: 0.5,")  # line 13
    assert good.splitlines()[39].strip() == "when: >-"  # line 40
    assert good.splitlines()[40].strip() == "timeout_ratio > 0.05"  # line 41
    raised = good.replace("preferences: {local_bias: 0.5,", "preferences: {local_bias: 0.9,")
    bad_yaml = raised.replace("quality_threshold: 0.8}\nclamps", "quality_threshold: 0.8\nclamps")
    bad_rule = raised.replace("timeout_ratio > 0.05", "timeout_ration > 0.05")
    fixed = good.replace("preferences: {local_bias: 0.5,", "preferences: {local_bias: 0.7,")
    out = tmp_path / PREFS

    def published_bias() -> float:
        return read_preferences(out).routing.local_bias

    with FakePrometheus() as fake:
        fake.answer(200, EMPTY_VECTOR)
        # 1 s: a reload (six files parsed, validated and compiled, ~45 ms here, several times
        # that on a loaded 2-core machine) comes out of the cycle's query budget (0.8 x
        # interval); at 0.4 s a busy machine left too little and a cycle failed now and then.
        with AdapterProcess(fake.url, out, tmp_path, interval=1.0, validity=300.0, rules=rules,
                            strategy="balanced") as adapter:
            wait_until(lambda: sequence_of(out) >= 1, 20, "a first publish")
            assert adapter.sample("dualtrack_adapter_rules_reload_success") == 1

            for text, where, what in ((bad_yaml, "balanced.yaml:14: invalid YAML", "YAML"),
                                      (bad_rule, "balanced.yaml:40: rules[1].when", "timeout_ration")):
                _replace_file(target, text, staging)
                adapter.wait_metric("dualtrack_adapter_rules_reload_success", lambda v: v == 0)
                wait_until(lambda: where in adapter.log_text(), 10, f"the error {where!r} in the log")  # noqa: B023
                seq = sequence_of(out)
                wait_until(lambda: sequence_of(out) >= seq + 3, 10, "cycles to go on")  # noqa: B023
                assert published_bias() == 0.5  # the rejected baseline never applies
                assert adapter.sample("dualtrack_adapter_rules_reload_success") == 0
                assert what in adapter.log_text()
            log = adapter.log_text()
            failures = [line for line in log.splitlines() if "rules reload failed" in line]
            assert len(failures) == 2, failures  # each distinct error logged once, not every cycle

            _replace_file(target, fixed, staging)
            adapter.wait_metric("dualtrack_adapter_rules_reload_success", lambda v: v == 1)
            wait_until(lambda: published_bias() > 0.5, 10, "the new baseline to pull local_bias up")
            assert "rules reloaded from" in adapter.log_text()
            assert adapter.alive
            assert adapter.sample("dualtrack_adapter_cycles_total", result="error") == 0
    observe("2 rejected edits, each logged once with file:line; 0 failed cycles; "
            f"local_bias stayed 0.5 until the fix, then rose to {published_bias():g}")


# =========================================================================== the machine failing


def test_monitoring_degrades_while_threads_record(tmp_path, observe):
    """Fault: while 8 threads record requests through a started DualTrackOptimizer (monitor
    thread and embedded adapter running), NVML stops answering (GPU lost), the battery
    disappears and then its API fails, and psutil's reads fail with the /proc fallbacks gone.

    Holds: monitoring degrades: GPU, battery and memory gauges become absent (not 0) and each
    failed read is counted in dualtrack_resource_read_errors_total{resource}; every request is
    still recorded (dualtrack_requests_total equals the requests made, exactly); no exception
    reaches a caller and no internal error is counted; recommendations keep answering and the
    embedded adapter's cycles keep succeeding."""
    proc_root = tmp_path / "proc"
    (proc_root / "self").mkdir(parents=True)
    (proc_root / "meminfo").write_text("MemTotal: 8000000 kB\nMemAvailable: 6000000 kB\n")
    (proc_root / "self" / "statm").write_text("50000 2560 300 10 0 4000 0\n")
    ps = FakePsutil(battery=sbattery(55.0, 3600, False))
    ps.procs[os.getpid()] = FakeProc(rss=200 * MB, cpu_percent=10.0)
    nvml = FakeNvml([FakeGpu("NVIDIA H100 80GB HBM3", utilization_percent=40, memory_used=10 * GIB,
                             memory_total=80 * GIB, temperature=55, power_mw=300_000)])
    registry = CollectorRegistry()
    config = OptimizationConfig(monitor_interval_seconds=0.02, adaptation_interval_seconds=0.05,
                                prices={"local": ModelPrice(0, 0), "api": ModelPrice(1.0, 2.0)})
    monitor = ResourceMonitor(config, psutil_module=ps, nvml=nvml, registry=registry, proc_root=str(proc_root))
    monitor.min_cpu_window_seconds = 0.0
    optimizer = DualTrackOptimizer(config, registry=registry, resource_monitor=monitor)
    threads_before = dualtrack_threads()

    def value(metric: str, /, **labels: str) -> Optional[float]:
        return registry.get_sample_value(metric, labels)

    def fresh_reading(condition: Callable[[Any], bool], what: str) -> Any:
        return wait_until(lambda: (s := monitor.snapshot()) is not None and condition(s) and s, 5, what)

    stop = threading.Event()
    made = [0] * 8
    raised: List[BaseException] = []

    def worker(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            rid = f"w{n}-{i}"
            try:
                rec = optimizer.get_optimization_recommendations("explain this " * (i % 7))
                assert rec["preferred_path"] in ("local", "api", "parallel")
                optimizer.record_request_start(rid, "q")
                optimizer.record_request_completion(rid, "local" if i % 2 else "api",
                                                    {"tokens_in": 10, "tokens_out": 20, "quality_score": 0.9})
            except BaseException as err:
                raised.append(err)
                return
            made[n] += 1

    optimizer.start()
    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(8)]
    for t in threads:
        t.start()
    try:
        fresh_reading(lambda s: s.gpus and s.battery and s.memory_used_bytes, "a full reading")
        assert value("dualtrack_gpu_utilization_ratio", gpu="0", name="NVIDIA H100 80GB HBM3") == 0.4
        assert value("dualtrack_battery_ratio") == 0.55

        nvml.broken = True  # every NVML call now fails: GPU lost
        fresh_reading(lambda s: s.gpus == (), "GPUs to become absent")
        assert value("dualtrack_gpu_utilization_ratio", gpu="0", name="NVIDIA H100 80GB HBM3") is None
        assert value("dualtrack_resource_read_errors_total", resource="gpu") >= 1

        ps.battery = None  # the battery is gone (psutil answers None)
        fresh_reading(lambda s: s.battery is None, "the battery to become absent")
        assert value("dualtrack_battery_ratio") is None
        ps.battery = OSError("ACPI read failed")  # and then the battery API fails
        wait_until(lambda: (value("dualtrack_resource_read_errors_total", resource="battery") or 0) >= 1, 5,
                   "battery read errors to be counted")

        ps.memory = OSError("virtual_memory: /proc/meminfo unreadable")
        ps.procs[os.getpid()].rss = OSError("memory_info: /proc/self/statm unreadable")
        shutil.rmtree(proc_root)  # the /proc fallbacks fail too
        fresh_reading(lambda s: s.memory_used_bytes is None, "system memory to become absent")
        assert value("dualtrack_memory_used_bytes") is None
        assert value("dualtrack_resource_read_errors_total", resource="memory") >= 2  # psutil, then /proc
        assert value("dualtrack_resource_read_errors_total", resource="process") >= 2
        cycles = optimizer.adaptive.cycles["ok"]
        wait_until(lambda: optimizer.adaptive.cycles["ok"] >= cycles + 2, 5, "adaptation cycles to go on")
        wait_until(lambda: sum(made) >= 2000, 20, "enough requests")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        optimizer.stop()

    assert raised == []
    total = sum(s.value for f in registry.collect() for s in f.samples if s.name == "dualtrack_requests_total")
    assert total == sum(made)
    assert all(s.value == 0 for f in registry.collect() for s in f.samples
               if s.name == "dualtrack_optimizer_errors_total")
    assert optimizer.adaptive.cycles["error"] == 0
    assert monitor.running is False and dualtrack_threads() == threads_before
    counts = {r: int(n) for r, n in monitor.read_errors.items() if n}
    observe(f"{sum(made)} requests from 8 threads, {total:.0f} counted; read errors "
            f"{counts}; 0 exceptions, 0 internal errors, "
            f"{optimizer.adaptive.cycles['ok']} adaptation cycles ok")


# =========================================================================== metrics port


@pytest.fixture
def busy_port():
    """A loopback port another process-like holder is listening on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("command", [
    pytest.param(["adapter", "--prometheus-url", "http://127.0.0.1:9", "--output", "{tmp}/p.json",
                  "--metrics-port", "{port}"], id="dualtrack_adapter_port_in_use"),
    pytest.param(["demo", "--headless", "--no-chart", "--duration", "5", "--metrics-port", "{port}"],
                 id="dualtrack_demo_port_in_use"),
    pytest.param(["adapter", "--prometheus-url", "http://127.0.0.1:9", "--output", "{tmp}/p.json",
                  "--metrics-host", "192.0.2.1", "--metrics-port", "{port}"],
                 id="dualtrack_adapter_address_not_on_this_machine"),
])
def test_metrics_port_unusable_is_a_one_line_error(command, busy_port, tmp_path):
    """Fault: `dualtrack adapter` or `dualtrack demo` is started on a metrics port another
    process already listens on (or on an address this machine does not have).

    Holds: the command exits with status 2 before doing anything else, with one line on
    stderr that names the address and the cause, and no traceback."""
    args = [a.format(tmp=tmp_path, port=busy_port) for a in command]
    proc = subprocess.run([sys.executable, "-m", "dualtrack", *args], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f":{busy_port}" in lines[0] and lines[0].startswith(f"dualtrack {command[0]}: metrics_")
    if "192.0.2.1" in args:
        assert "cannot serve /metrics on 192.0.2.1" in lines[0]
    else:
        assert "already in use" in lines[0]
    assert not (tmp_path / "p.json").exists()


def test_optimizer_start_on_a_busy_port_leaves_nothing_running(busy_port):
    """Fault: DualTrackOptimizer.start() with resource monitoring and the embedded adapter on,
    on a metrics port already in use (tests/test_exposition.py covers it with monitoring off).

    Holds: start() raises MetricsPortInUse (a ConfigError naming metrics_port); no monitor,
    adapter or server thread is left running; once the port is free a start works and stop()
    leaves nothing behind."""
    before = dualtrack_threads()
    ps = FakePsutil()
    ps.procs[os.getpid()] = FakeProc()
    config = OptimizationConfig(metrics_port=busy_port, monitor_interval_seconds=0.05)
    optimizer = DualTrackOptimizer(config, resource_monitor=ResourceMonitor(config, psutil_module=ps, nvml=False))
    with pytest.raises(MetricsPortInUse, match="already in use") as info:
        optimizer.start()
    assert info.value.field == "metrics_port"
    assert dualtrack_threads() == before and not optimizer.resource_monitor.running
    optimizer.stop()  # harmless after a failed start

    optimizer.config.metrics_port = 0
    optimizer.start()
    try:
        assert optimizer.resource_monitor.running and optimizer._server is not None
    finally:
        optimizer.stop()
    assert dualtrack_threads() == before


# =========================================================================== wall-clock jumps


def _request(optimizer: DualTrackOptimizer, clock: VirtualClock, rid: str, path: str, seconds: float,
             jump: Optional[float] = None, **result: Any) -> None:
    optimizer.record_request_start(rid, "hello")
    if jump is not None:
        clock.set_wall(clock.time() + jump)
    clock.advance(seconds)
    optimizer.record_request_completion(rid, path, {"quality_score": 0.9, **result})


def test_wall_clock_jumps_during_recording(observe):
    """Fault: the wall clock is stepped back an hour and forward a day (as NTP or a suspended
    VM does) between the start and the completion of requests, and while requests are in flight.

    Holds: latencies come from the monotonic clock: never negative, exactly the time that
    passed; a forward jump of a day expires none of the in-flight requests (their TTL is on the
    monotonic clock) while a real TTL still expires them."""
    clock = VirtualClock()
    registry = CollectorRegistry()
    config = OptimizationConfig(enable_resource_monitoring=False, inflight_ttl_seconds=600.0)
    optimizer = DualTrackOptimizer(config, registry=registry, clock=clock)
    for i, jump in enumerate((-3600.0, 86400.0, -86400.0 - 7200.0)):
        _request(optimizer, clock, f"r{i}", "local", 0.5, jump=jump)
    records = optimizer.collector.records("local", None)
    assert [r.latency_ms for r in records] == [500.0, 500.0, 500.0]
    assert registry.get_sample_value("dualtrack_request_duration_seconds_sum",
                                     {"path": "local", "query_class": "short"}) == 1.5

    for i in range(50):
        optimizer.record_request_start(f"inflight{i}", "hello")
    clock.set_wall(clock.time() + 86400)
    optimizer.adapt_now()  # sweeps the in-flight table
    optimizer.record_request_start("after-jump", "hello")
    optimizer.get_optimization_recommendations("hello")
    assert optimizer.in_flight_count() == 51
    assert (registry.get_sample_value("dualtrack_request_starts_expired_total") or 0) == 0
    clock.set_wall(clock.time() - 2 * 86400)
    optimizer.adapt_now()
    assert optimizer.in_flight_count() == 51
    clock.advance(601)  # a real TTL
    optimizer.adapt_now()
    assert optimizer.in_flight_count() == 0
    assert registry.get_sample_value("dualtrack_request_starts_expired_total") == 51
    observe("3 latencies of 0.5 s measured across jumps of -1 h, +1 d, -1 d 2 h; "
            "51 in-flight requests survived +1 d and -2 d, expired after the real TTL")


def test_wall_clock_jumps_and_the_preferences_file_reader(tmp_path):
    """Fault: a router follows a preferences file (DualTrackOptimizer with preferences_file) and
    the wall clock is stepped back a day, then forward past the file's expiry.

    Holds: the backward jump does not flip the router to defaults (age never runs slower than
    the monotonic clock); a real expiry, by monotonic time, still does; a forward jump past
    valid_until + grace does too. (tests/test_preferences.py checks the reader alone.)"""
    clock = VirtualClock()
    path = tmp_path / PREFS
    now = clock.time()
    write_preferences(path, Preferences(sequence=4, generated_at=now, valid_until=now + 60, strategy="balanced",
                                        source="prometheus"))
    config = OptimizationConfig(enable_resource_monitoring=False, preferences_file=str(path),
                                preferences_check_interval_seconds=0.001)
    optimizer = DualTrackOptimizer(config, registry=CollectorRegistry(), clock=clock)
    assert optimizer.get_optimization_recommendations("hi")["source"] == "prometheus"
    clock.set_wall(now - 86400)
    clock.advance(30)
    rec = optimizer.get_optimization_recommendations("hi")
    assert rec["source"] == "prometheus" and rec["sequence"] == 4
    assert optimizer.reader.status()["state"] == "fresh"
    clock.advance(61)  # 91 s on the monotonic clock: past valid_until + the 30 s grace
    assert optimizer.get_optimization_recommendations("hi")["source"] == "defaults"
    assert optimizer.reader.status()["state"] == "expired"

    fresh = DualTrackOptimizer(config, registry=CollectorRegistry(), clock=VirtualClock(now))
    assert fresh.get_optimization_recommendations("hi")["source"] == "prometheus"
    fresh.clock.set_wall(now + 91)  # type: ignore[attr-defined]
    assert fresh.get_optimization_recommendations("hi")["source"] == "defaults"


def test_wall_clock_jumps_and_the_embedded_adapter(observe):
    """Fault: the embedded adapter is steering traffic away from a slow local track when the
    wall clock is stepped back an hour; then the tracks swap (local fast, API slow); later the
    clock is stepped forward a day.

    Holds: every cycle succeeds and the adapter keeps adapting to the traffic after each jump:
    within three cycles of the swap the objective moves local_bias past one half (records
    made before the backward jump, now stamped in the future, no longer stand in for fresh
    traffic); after the forward jump new traffic is adapted to as well."""
    clock = VirtualClock()
    config = OptimizationConfig(enable_resource_monitoring=False, strategy="balanced", metrics_window_size=1000,
                                prices={"local": ModelPrice(0, 0), "api": ModelPrice(0, 0)})
    optimizer = DualTrackOptimizer(config, registry=CollectorRegistry(), clock=clock)
    count = [0]

    def traffic(n: int, latency_ms: Dict[str, float]) -> None:
        for _ in range(n):
            for path in ("local", "api"):
                count[0] += 1
                rid = f"r{count[0]}"
                optimizer.record_request_start(rid, "hello")
                optimizer.record_request_completion(rid, path, {"latency_ms": latency_ms[path],
                                                                "quality_score": 0.9})
            clock.advance(0.2)

    def bias() -> float:
        return optimizer.adaptive.routing_preferences["local_bias"]

    traffic(300, {"local": 3000.0, "api": 500.0})
    notes = [optimizer.adapt_now() for _ in range(3)]
    assert all(n["ok"] and "objective" in n["fired"] for n in notes)
    low = bias()
    assert low < 0.5

    clock.set_wall(clock.time() - 3600)
    traffic(100, {"local": 300.0, "api": 3000.0})
    notes = [optimizer.adapt_now() for _ in range(3)]
    assert all(n["ok"] for n in notes)
    assert all("objective" in n["fired"] for n in notes), [n["fired"] for n in notes]
    assert bias() > 0.5 > low

    clock.set_wall(clock.time() + 86400)
    traffic(100, {"local": 3000.0, "api": 500.0})
    high = bias()
    notes = [optimizer.adapt_now() for _ in range(3)]
    assert all(n["ok"] and "objective" in n["fired"] for n in notes), [n["fired"] for n in notes]
    assert bias() < 0.5 < high
    assert optimizer.adaptive.cycles["error"] == 0
    observe(f"local_bias {low:.2f} before the -1 h jump, {high:.2f} after adapting to the "
            f"swap, {bias():.2f} after the +1 d jump and the swap back; 9 cycles, 0 errors")
