"""The real-Prometheus test harness (tests/support/prometheus.py) works as promised."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from support.prometheus import (
    PrometheusServer,
    PromQLError,
    WaitTimeout,
    find_binary,
    openmetrics_text,
    promtool,
)

pytestmark = pytest.mark.prometheus


@pytest.fixture
def exporter():
    """A tiny prometheus_client exporter on a free loopback port, fresh registry."""
    registry = CollectorRegistry()
    counter = Counter("dualtrack_harness_test_total", "harness test counter", ["path"], registry=registry)
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    yield counter, f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_scrapes_an_exporter_and_sees_the_counter(prometheus_factory, exporter):
    counter, address = exporter
    counter.labels(path="local").inc(3)
    prom = prometheus_factory(targets=[("exporter", address)])

    targets = prom.wait_for_targets_up(1, timeout=15)
    assert targets[0]["labels"]["job"] == "exporter"
    samples = prom.wait_for(
        'dualtrack_harness_test_total{job="exporter"}', lambda s: bool(s) and s[0][1] == 3, timeout=15
    )
    labels, value = samples[0]
    assert labels["path"] == "local" and labels["instance"] == address
    assert value == 3.0


def test_kill_and_restart_keeps_data(prometheus_factory, tmp_path: Path):
    # A recording rule writes samples through the same head/WAL path as a
    # scrape, without the ~5 s service-discovery delay a scrape pays first.
    rules = tmp_path / "record.yml"
    rules.write_text("groups:\n- name: r\n  rules:\n  - record: dualtrack_harness_recorded\n    expr: vector(7)\n")
    prom = prometheus_factory(rule_files=[rules])
    prom.wait_for("dualtrack_harness_recorded", timeout=15)
    seen_at = time.time()
    port, pid = prom.port, prom.pid

    prom.kill()  # a crash: no clean shutdown, the WAL must carry the samples
    assert not prom.running
    prom.restart()

    assert prom.port == port and prom.pid != pid
    # Lookback only reaches backwards from `seen_at`, so the sample found was
    # written before the kill: it came back from the WAL.
    assert prom.query("dualtrack_harness_recorded", time=seen_at) == [({"__name__": "dualtrack_harness_recorded"}, 7.0)]


def test_backfilled_series_are_queryable_right_after_start(prometheus_factory):
    prom = prometheus_factory(start=False)
    # End a few minutes before now: promtool's blocks must not reach into the
    # head's time range, and old-enough data proves lookback/`time` handling.
    end = int(time.time()) - 600
    points = [(end - 3600 + 15 * i, float(i)) for i in range(241)]
    prom.backfill_openmetrics(
        openmetrics_text(
            [
                ("dualtrack_backfill_total", {"path": "local"}, points),
                ("dualtrack_backfill_total", {"path": "api", "note": 'a "quoted"\\ value'}, points),
            ],
            types={"dualtrack_backfill_total": "counter"},
        )
    )
    prom.start()

    at_end = prom.query("dualtrack_backfill_total", time=end)
    assert sorted((s[0]["path"], s[1]) for s in at_end) == [("api", 240.0), ("local", 240.0)]
    assert {s[0].get("note") for s in at_end} == {None, 'a "quoted"\\ value'}
    # An hour of history at once: a 15 s-step counter growing by 1 per step.
    rate = prom.query('rate(dualtrack_backfill_total{path="local"}[10m])', time=end)
    assert rate[0][1] == pytest.approx(1 / 15)
    # Ten minutes after the last sample, the 5 m lookback hides it.
    assert prom.query("dualtrack_backfill_total") == []


def test_backfill_refuses_a_running_server(prometheus_factory):
    prom = prometheus_factory()
    with pytest.raises(Exception, match="before start"):
        prom.backfill_openmetrics("# EOF\n")


def test_wait_for_fails_with_the_last_result(prometheus_factory):
    prom = prometheus_factory()
    with pytest.raises(WaitTimeout, match=r"last result: \[\]"):
        prom.wait_for("dualtrack_never_exported", timeout=0.3)
    with pytest.raises(PromQLError) as info:
        prom.wait_for("sum(", timeout=5)
    assert info.value.error_type == "bad_data"


def test_rule_files_reload_and_alerts(prometheus_factory, tmp_path: Path):
    rules = tmp_path / "always.yml"
    rules.write_text(
        "groups:\n- name: t\n  rules:\n  - alert: AlwaysOn\n    expr: vector(1)\n"
    )
    prom = prometheus_factory(rule_files=[rules])
    alert = prom.wait_for_alert("AlwaysOn", timeout=15)
    assert alert["state"] == "firing"
    assert [g["name"] for g in prom.rules()] == ["t"]

    rules.write_text("groups:\n- name: renamed\n  rules:\n  - record: one\n    expr: vector(1)\n")
    prom.reload()
    assert [g["name"] for g in prom.rules()] == ["renamed"]
    prom.wait_for("one")


def test_context_manager_stops_the_server(tmp_path: Path):
    with PrometheusServer(tmp_path / "p") as prom:
        assert prom.query("1 + 1") == [({}, 2.0)]
        proc_pid = prom.pid
    assert not prom.running and proc_pid is not None
    prom.stop()  # idempotent


def test_missing_binary_is_a_failure_not_a_skip(tmp_path: Path):
    with pytest.raises(pytest.fail.Exception, match="make test"):
        find_binary("dualtrack-no-such-prometheus")
    with pytest.raises(pytest.fail.Exception, match="apt-get install prometheus"):
        PrometheusServer(tmp_path, binary="dualtrack-no-such-prometheus").start()
    with pytest.raises(pytest.fail.Exception, match="make test"):
        promtool("--version", binary="dualtrack-no-such-promtool")


def test_promtool_helper():
    ok = promtool("check", "metrics", input="# HELP x_total a\n# TYPE x_total counter\nx_total 1\n")
    assert ok.returncode == 0, ok.stderr
    bad = promtool("check", "config", "/nonexistent/prometheus.yml")
    assert bad.returncode != 0
    with pytest.raises(pytest.fail.Exception, match="exited"):
        promtool("check", "config", "/nonexistent/prometheus.yml", check=True)
