"""The adapter process against a real Prometheus scraping a real exporter."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
from prometheus_client import CollectorRegistry

from dualtrack import DualTrackOptimizer, OptimizationConfig
from dualtrack.adapter.loop import Adapter, AdapterSettings
from dualtrack.adapter.prometheus_source import PrometheusSource
from dualtrack.adapter.promql import PromQLClient
from dualtrack.adapter.signals import BUILTIN_CATALOG
from dualtrack.bundled import bundled_dir
from dualtrack.cli import main
from dualtrack.preferences import read_preferences
from support.live_workload import LiveWorkload
from support.net import free_port
from support.prometheus import PrometheusServer
from support.waiting import wait_until

pytestmark = pytest.mark.prometheus

WINDOW = "5s"


def make_adapter(url: str, output: Path, *, rules: Optional[Path] = None, strategy: str = "balanced",
                 interval: float = 1.0) -> Adapter:
    settings = AdapterSettings(rules=(str(rules or bundled_dir("rules")),), strategy=strategy,
                               output=str(output), interval_seconds=interval, window=WINDOW)
    registry = CollectorRegistry()
    holder: list = []
    source = PrometheusSource(PromQLClient(url, timeout=2.0, retries=0), window=WINDOW,
                              on_query=lambda s, e: holder[0].metrics.observe_query(s, e))
    adapter = Adapter(settings, source, registry=registry)
    holder.append(adapter)
    return adapter


def _start_stack(tmp: Path):
    port = free_port()
    workload = LiveWorkload(port, latency_ms={"local": 3000.0, "api": 500.0}).start()
    prom = PrometheusServer(tmp, targets=[("dualtrack-router", f"127.0.0.1:{port}")], scrape_interval="1s")
    try:
        prom.start()
        prom.wait_for(f"sum(rate(dualtrack_requests_total[{WINDOW}])) > 0", timeout=60)
    except BaseException:
        prom.stop()
        workload.stop()
        raise
    return workload, prom


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory):
    """A router exporter where local is 6x slower than the API, scraped by
    Prometheus. Shared by the tests that only read from it (starting one
    takes ~6 s: Prometheus 2.42 refreshes its targets every 5 s)."""
    workload, prom = _start_stack(tmp_path_factory.mktemp("stack"))
    yield workload, prom
    prom.stop()
    workload.stop()


@pytest.fixture
def live_stack(tmp_path):
    """The same, for one test alone (it kills Prometheus)."""
    workload, prom = _start_stack(tmp_path / "stack")
    yield workload, prom
    prom.stop()
    workload.stop()


def test_preferences_shift_away_from_the_slow_track_and_routers_see_it(shared_stack, tmp_path):
    workload, prom = shared_stack
    output = tmp_path / "prefs.json"
    adapter = make_adapter(prom.url, output)
    router = DualTrackOptimizer(OptimizationConfig(preferences_file=str(output), enable_resource_monitoring=False,
                                                   preferences_check_interval_seconds=0.01))
    before = router.get_optimization_recommendations("hello")
    assert before["source"] == "defaults"  # no file yet: safe defaults

    biases = []
    for _ in range(3):  # bounded: a shift must show within three cycles
        result = adapter.run_cycle()
        assert result.result == "ok", result.error
        biases.append(read_preferences(output).routing.local_bias)
    assert biases[0] < 0.5, biases
    assert all(b <= biases[0] + 1e-9 for b in biases) and biases[-1] <= 0.3, biases

    prefs = read_preferences(output)
    assert prefs.source == "prometheus" and prefs.strategy == "balanced"
    assert prefs.sequence == 3
    fired = {r.rule for r in prefs.reasons}
    assert "objective" in fired
    # The objective's reason for the default class: local is worth less per query than the API.
    reason = next(r for r in prefs.reasons if r.rule == "objective" and r.query_class == "short")
    match = re.match(r"short: local ([0-9.]+) vs api ([0-9.]+) expected per query", reason.message)
    assert match and float(match[1]) < float(match[2]), reason
    assert reason.signals["local_share"] < 0.5, reason
    # Timeouts follow the measured p99 latency per path.
    assert prefs.timeouts_seconds["local"] > prefs.timeouts_seconds["api"]

    rec = wait_until(lambda: (r := router.get_optimization_recommendations("hello"))["source"] == "prometheus" and r,
                     5, "the router to read the published preferences")
    assert rec["routing"]["local_bias"] == pytest.approx(biases[-1])
    assert rec["sequence"] == 3

    # The adapter's own metrics.
    reg = adapter.registry
    assert reg.get_sample_value("dualtrack_adapter_cycles_total", {"result": "ok"}) == 3
    assert reg.get_sample_value("dualtrack_adapter_preference",
                                {"preference": "local_bias", "query_class": "short"}) is not None
    assert reg.get_sample_value("dualtrack_adapter_rule_fires_total",
                                {"strategy": "balanced", "rule": "objective"}) >= 1
    assert reg.get_sample_value("dualtrack_adapter_query_duration_seconds_count") == 3  # one query per cycle
    assert reg.get_sample_value("dualtrack_adapter_last_publish_timestamp_seconds") == pytest.approx(
        prefs.generated_at)


def test_prometheus_down_keeps_the_last_preferences_backs_off_and_recovers(live_stack, tmp_path):
    workload, prom = live_stack
    output = tmp_path / "prefs.json"
    adapter = make_adapter(prom.url, output)
    assert adapter.run_cycle().result == "ok"
    published = output.read_bytes()

    prom.kill()
    delays = []
    for _ in range(3):
        result = adapter.run_cycle()
        assert result.result == "error" and "unavailable" in (result.error or "")
        delays.append(adapter.next_delay())
    assert delays == [1.0, 2.0, 4.0]
    assert output.read_bytes() == published  # not republished: its valid_until runs out honestly
    reg = adapter.registry
    assert reg.get_sample_value("dualtrack_adapter_query_errors_total", {"type": "unavailable"}) == 3
    assert reg.get_sample_value("dualtrack_adapter_consecutive_failures") == 3

    prom.restart()
    prom.wait_for(f"sum(rate(dualtrack_requests_total[{WINDOW}])) > 0", timeout=60)
    result = adapter.run_cycle()
    assert result.result == "ok" and result.sequence == 2
    assert adapter.next_delay() == 1.0
    assert read_preferences(output).sequence == 2


def test_a_bad_rules_edit_keeps_the_last_good_rules_until_fixed(shared_stack, tmp_path, caplog):
    workload, prom = shared_stack
    rules = tmp_path / "rules"
    shutil.copytree(bundled_dir("rules"), rules)
    adapter = make_adapter(prom.url, tmp_path / "prefs.json", rules=rules)
    good = (rules / "balanced.yaml").read_text()
    assert adapter.run_cycle().result == "ok"

    broken = good.replace("timeout_ratio > 0.05", "timeout_ration > 0.05")
    assert broken != good
    (rules / "balanced.yaml").write_text(broken)
    with caplog.at_level(logging.ERROR, logger="dualtrack.adapter.loop"):
        for _ in range(2):
            assert adapter.run_cycle().result == "ok"  # still adapting, on the last good rules
    assert adapter.registry.get_sample_value("dualtrack_adapter_rules_reload_success") == 0
    errors = [r for r in caplog.records if "rules reload failed" in r.getMessage()]
    assert len(errors) == 1  # logged once, not every cycle
    assert "balanced.yaml:" in errors[0].getMessage() and "did you mean 'timeout_ratio'" in errors[0].getMessage()

    (rules / "balanced.yaml").write_text(good + "\n# fixed\n")
    assert adapter.run_cycle().result == "ok"
    assert adapter.registry.get_sample_value("dualtrack_adapter_rules_reload_success") == 1


def test_a_bad_user_signal_is_isolated(shared_stack, tmp_path):
    workload, prom = shared_stack
    rules = tmp_path / "rules"
    shutil.copytree(bundled_dir("rules"), rules)
    text = (rules / "balanced.yaml").read_text()
    text = text.replace("rules:\n", "signals:\n  - name: broken_signal\n    promql: 'sum(rate(x[5s]'\n\nrules:\n", 1)
    (rules / "balanced.yaml").write_text(text)
    adapter = make_adapter(prom.url, tmp_path / "prefs.json", rules=rules)
    result = adapter.run_cycle()
    assert result.result == "ok"
    values = adapter.source.fetch(adapter.strategies.catalog)
    assert "broken_signal" in values.errors and "bad_query" in values.errors["broken_signal"]
    assert values.get("latency_p95_seconds", {"path": "local"}) is not None  # the batch still answered


def test_interval_counts_come_through_prometheus_even_when_the_interval_is_one_scrape(shared_stack):
    """The objective's evidence (interval_* counts) read through a real Prometheus. The
    interval (1 s) is one scrape: increase() over it would have too few points, so the counts
    are taken over half the window and scaled to one interval."""
    workload, prom = shared_stack
    source = PrometheusSource(PromQLClient(prom.url, timeout=2.0, retries=0), window=WINDOW, interval="1s")
    values = source.fetch(BUILTIN_CATALOG)
    for path in ("local", "api"):
        calls = sum(v for labels, v in values.series("interval_calls").items() if dict(labels).get("path") == path)
        rate = values.get("requests_per_second", {"path": path})
        assert rate is not None and rate > 0, path
        assert 0.3 * rate <= calls <= 3 * rate, (path, calls, rate)  # about one second's worth
        successes = sum(v for labels, v in values.series("interval_successes").items()
                        if dict(labels).get("path") == path)
        assert 0 < successes <= calls + 1e-9, (path, successes, calls)


def test_no_data_is_not_zero(prometheus_factory, tmp_path):
    prom = prometheus_factory()  # scrapes nothing
    adapter = make_adapter(prom.url, tmp_path / "prefs.json")
    result = adapter.run_cycle()
    assert result.result == "no_data" and result.published
    prefs = read_preferences(tmp_path / "prefs.json")
    assert prefs.routing.local_bias == 0.5  # nothing moved on missing data
    # The objective says why it holds; no rule fired.
    assert prefs.reasons and all(r.rule == "objective" and "not enough evidence" in r.message
                                 for r in prefs.reasons), prefs.reasons


# ------------------------------------------------------------------ the CLI


def test_cli_once_dry_run_prints_preferences(shared_stack, capsys):
    workload, prom = shared_stack
    status = main(["adapter", "--prometheus-url", prom.url, "--once", "--dry-run", "--strategy", "latency_focused",
                   "--window", WINDOW])
    out = capsys.readouterr().out
    assert status == 0
    doc = json.loads(out)
    assert doc["strategy"] == "latency_focused" and doc["source"] == "prometheus"
    assert doc["routing"]["local_bias"] < 0.5  # prefer_faster_api fired


def test_cli_print_queries_is_one_batched_query(capsys):
    assert main(["adapter", "--prometheus-url", "http://127.0.0.1:1", "--print-queries"]) == 0
    out = capsys.readouterr().out
    # Request signals come from nine aggregated rates, each fetched once...
    assert out.count('"dualtrack_signal", "_input_') == 9
    assert out.count('"dualtrack_signal", "_input_buckets"') == 1
    assert "sum by (path, query_class, le) (rate(dualtrack_request_duration_seconds_bucket[2m]))" in out
    assert '"dualtrack_signal", "latency_p95_seconds"' not in out
    # ...machine signals keep their own PromQL.
    assert '"dualtrack_signal", "memory_used_ratio"' in out


def test_cli_settings_errors_are_clear(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DUALTRACK_PROMETHEUS_URL", raising=False)
    assert main(["adapter", "--output", str(tmp_path / "p.json")]) == 2
    assert "--prometheus-url: required" in capsys.readouterr().err
    config = tmp_path / "adapter.yaml"
    config.write_text("prometheus_url: http://127.0.0.1:9090\nintervall: 5\n")
    assert main(["adapter", "--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{config}:2: intervall: unknown setting; did you mean 'interval'?" in err
    assert main(["adapter", "--prometheus-url", "ftp://nowhere", "--dry-run"]) == 2
    assert "prometheus_url" in capsys.readouterr().err


def test_settings_precedence_cli_env_file(tmp_path):
    import argparse

    from dualtrack.cli.adapter_cmd import resolve

    config = tmp_path / "a.yaml"
    config.write_text("prometheus_url: http://file:9090\ninterval: 7\nwindow: 3m\n")
    args = argparse.Namespace(config=str(config), prometheus_url=None, interval="9", window=None)
    values = resolve(args, environ={"DUALTRACK_PROMETHEUS_URL": "http://env:9090", "DUALTRACK_INTERVAL": "8"})
    assert values["prometheus_url"] == "http://env:9090"  # env beats file
    assert values["interval"] == 9.0  # command line beats env
    assert values["window"] == "3m"  # file beats default
    assert values["strategy"] == "adaptive"  # default


def test_sigterm_stops_between_cycles_and_leaves_a_whole_file(shared_stack, tmp_path):
    workload, prom = shared_stack
    output = tmp_path / "out" / "prefs.json"
    output.parent.mkdir()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "dualtrack", "adapter", "--prometheus-url", prom.url,
                             "--output", str(output), "--interval", "0.2", "--window", WINDOW,
                             "--metrics-port", "-1"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: output.exists() and read_preferences(output).sequence >= 3, 30, "three publishes")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    prefs = read_preferences(output)  # valid, not torn
    assert prefs.sequence >= 3
    assert sorted(p.name for p in output.parent.iterdir()) == ["prefs.json"]  # no temp files


def test_credentials_never_reach_logs_or_files(fake_http, tmp_path):
    token = "s3cr3t-token-value"
    fake_http.respond(401, json.dumps({"status": "error", "errorType": "unauthorized", "error": f"bad {token}"}))
    output = tmp_path / "prefs.json"
    env = dict(os.environ, DUALTRACK_PROMETHEUS_BEARER_TOKEN=token)
    proc = subprocess.run([sys.executable, "-m", "dualtrack", "--log-level", "DEBUG", "adapter",
                           "--prometheus-url", fake_http.url, "--output", str(output), "--once"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "auth" in proc.stderr
    assert token not in proc.stderr and token not in proc.stdout
    assert fake_http.requests and fake_http.requests[0].headers.get("Authorization") == f"Bearer {token}"
    assert not output.exists()


def test_the_prometheus_path_and_the_embedded_path_decide_the_same(shared_stack):
    """Both paths, one engine: the router's in-process windows (embedded mode) and the same
    router's metrics read back through a real Prometheus (the adapter process) give the
    objective-driven strategy the same evidence, and it decides the same from either."""
    from dualtrack.adapter.engine import RuleEngine
    from dualtrack.adapter.strategy import load_strategies

    workload, prom = shared_stack
    optimizer = workload.optimizer
    assert optimizer.adaptive is not None
    embedded = optimizer.adaptive.source
    config = optimizer.config
    interval = f"{int(config.adaptation_interval_seconds)}s"
    window = f"{int(config.signal_window_seconds)}s"
    promql = PrometheusSource(PromQLClient(prom.url, timeout=5.0, retries=0), window=window, interval=interval)
    # Both paths need a full interval of evidence behind them (the stack may have just started).
    prom.wait_for(f"sum(increase(dualtrack_requests_total[{interval}])) > 0 and "
                  f"sum(count_over_time(dualtrack_requests_total{{path=\"api\",outcome=\"success\"}}[{interval}])) "
                  f">= {int(config.adaptation_interval_seconds) - 2}", timeout=90)
    strategies = load_strategies(bundled_dir("rules"))
    for name in strategies.names():
        by_path = {}
        for path, source in (("embedded", embedded), ("prometheus", promql)):
            engine = RuleEngine(strategies, name, query_classes=config.query_classes,
                                interval_seconds=config.adaptation_interval_seconds)
            decisions = [engine.evaluate(source.fetch(strategies.catalog), now=30.0 * i) for i in range(3)]
            by_path[path] = decisions[-1]
        e, p = by_path["embedded"], by_path["prometheus"]
        assert set(e.fired) == set(p.fired), (name, e.fired, p.fired)
        for qc in config.query_classes:
            pe, pp = e.query_classes[qc], p.query_classes[qc]
            # The same side for every class; shares differ only by the probe, which follows the
            # arrival rate each path measured (Prometheus extrapolates increase() to its range).
            assert abs(pe["local_bias"] - pp["local_bias"]) <= 0.05, (name, qc, pe, pp)
            assert pe["parallel_threshold"] == pytest.approx(pp["parallel_threshold"]), (name, qc)
