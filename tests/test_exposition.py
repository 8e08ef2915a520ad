"""Exposition: the optimizer's /metrics checked by promtool and by
prometheus_client's own parsers, request ids as exemplars (never labels),
serving over HTTP and TLS (certificates made here, with the openssl CLI),
a busy port, and multiprocess mode with real worker processes."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Tuple
from wsgiref.util import setup_testing_defaults

import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from dualtrack import DualTrackOptimizer, ModelPrice, OptimizationConfig, ResourceMonitor
from dualtrack.clock import VirtualClock
from dualtrack.constraints import MB
from dualtrack.errors import ConfigError
from dualtrack.exporter.exposition import MetricsPortInUse, multiprocess_registry, serve_metrics, wsgi_app
from fakes.fake_nvml import FakeGpu, FakeNvml
from fakes.fake_psutil import FakeProc, FakePsutil, sbattery, shwtemp
from support.adapter_process import AdapterProcess
from support.net import free_port
from support.prometheus import promtool
from support.waiting import wait_until

GIB = 1 << 30
#: Labels the per-request series may carry; anything else would be unbounded.
BOUNDED_LABELS = {"path", "query_class", "outcome", "model", "direction", "le", "input", "reason", "label",
                  "component", "override", "result", "constraint", "preference", "resource", "gpu", "name",
                  "sensor", "strategy", "mode", "source", "track"}


def busy_optimizer(registry: CollectorRegistry) -> DualTrackOptimizer:
    """An optimizer over a faked machine (GPU, battery, sensors) after some traffic."""
    clock = VirtualClock()
    config = OptimizationConfig(prices={"local": ModelPrice(0, 0), "api": ModelPrice(2.5, 10.0)},
                                strategy="balanced")
    ps = FakePsutil(battery=sbattery(42.0, 1234, False),
                    temperatures={"coretemp": [shwtemp("Package id 0", 51.0, 80, 100)]})
    ps.procs[os.getpid()] = FakeProc(rss=300 * MB, cpu_percent=20.0)
    nvml = FakeNvml([FakeGpu("NVIDIA L4", utilization_percent=40, memory_used=3 * GIB, memory_total=24 * GIB,
                             temperature=55, power_mw=40_000)])
    monitor = ResourceMonitor(config, clock=clock, psutil_module=ps, nvml=nvml, registry=registry)
    monitor.min_cpu_window_seconds = 0.0
    monitor.sample_now()
    optimizer = DualTrackOptimizer(config, registry=registry, clock=clock, resource_monitor=monitor)
    paths = ("local", "api", "parallel")
    for i in range(60):
        rid = f"req-{i}"
        optimizer.record_request_start(rid, "q" * (i * 97))
        clock.advance(0.05 * (i % 13))
        outcome = ("success", "success", "error", "timeout", "cancelled")[i % 5]
        optimizer.record_request_completion(
            rid, paths[i % 3], {"tokens_in": 10 + i, "tokens_out": 5, "quality_score": (i % 10) / 10,
                                "model": "api" if i % 3 == 1 else None, "outcome": outcome,
                                "time_to_first_token_ms": 20.0 * (i % 7) if i % 3 != 2 else None},
            success=outcome == "success", error_type=None if outcome == "success" else "x")
    optimizer.record_request_completion("no-start", "gpu-farm", {"tokens_in": -1})  # folded + rejected
    optimizer.record_request_start("still-running", "q")
    optimizer.adapt_now()
    return optimizer


@pytest.mark.prometheus
def test_exposition_passes_promtool_and_parses():
    registry = CollectorRegistry()
    busy_optimizer(registry)
    text = generate_latest(registry).decode()
    promtool("check", "metrics", input=text, check=True)

    families = {f.name: f for f in text_string_to_metric_families(text)}
    expected_types = {
        "dualtrack_requests": "counter", "dualtrack_request_duration_seconds": "histogram",
        "dualtrack_tokens": "counter", "dualtrack_cost_dollars": "counter",
        "dualtrack_response_quality_ratio": "histogram", "dualtrack_requests_in_flight": "gauge",
        "dualtrack_completions_without_start": "counter", "dualtrack_request_starts_expired": "counter",
        "dualtrack_inputs_rejected": "counter", "dualtrack_label_values_folded": "counter",
        "dualtrack_cost_unknown": "counter", "dualtrack_adaptation_cycles": "counter",
        "dualtrack_cpu_usage_ratio": "gauge", "dualtrack_process_memory_bytes": "gauge",
        "dualtrack_gpu_memory_used_bytes": "gauge", "dualtrack_battery_ratio": "gauge",
        "dualtrack_temperature_celsius": "gauge", "dualtrack_memory_limit_bytes": "gauge",
        "dualtrack_latency_target_seconds": "gauge", "dualtrack_constraint_violated": "gauge",
        "dualtrack_routing_preference": "gauge", "dualtrack_path_timeout_seconds": "gauge",
        "dualtrack_optimizer_info": "gauge",
    }
    for name, kind in expected_types.items():
        assert name in families, name
        assert families[name].type == kind, name
    assert all(f.documentation for f in families.values())

    samples = [s for f in families.values() for s in f.samples]
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}
    assert value[("dualtrack_requests_in_flight", ())] == 1
    total = sum(s.value for s in samples if s.name == "dualtrack_requests_total")
    assert total == 61
    assert value[("dualtrack_inputs_rejected_total", (("input", "result"), ("reason", "bad_tokens_in")))] == 1
    assert value[("dualtrack_constraint_violated", (("constraint", "gpu_memory"),))] == 1  # 3 GiB > 2048 MiB
    for s in samples:
        assert set(s.labels) <= BOUNDED_LABELS, (s.name, s.labels)
        assert not any(v.startswith("req-") for v in s.labels.values()), s
    assert {s.labels["path"] for s in samples if s.name == "dualtrack_requests_total"} == {
        "local", "api", "parallel", "other"}

    # The OpenMetrics rendering parses with the strict OpenMetrics parser too.
    om = generate_openmetrics(registry).decode()
    assert om.endswith("# EOF\n")
    om_families = {f.name for f in parse_openmetrics(om)}
    assert {"dualtrack_requests", "dualtrack_request_duration_seconds"} <= om_families


def test_request_ids_are_exemplars_never_labels():
    registry = CollectorRegistry()
    optimizer = busy_optimizer(registry)
    long_id = "L" * 500
    optimizer.record_request_start(long_id, "q")
    optimizer.record_request_completion(long_id, "local", {"latency_ms": 99_000})
    optimizer.record_request_start("new\nline", "q")
    optimizer.record_request_completion("new\nline", "api", {"latency_ms": 80_000})

    om = generate_openmetrics(registry).decode()
    assert '# {request_id="req-' in om
    assert 'request_id="new\\nline"' in om  # escaped: one sample stays one line
    exemplars: Dict[str, Any] = {}
    for family in parse_openmetrics(om):
        for s in family.samples:
            assert "request_id" not in s.labels
            if s.exemplar is not None:
                assert family.name == "dualtrack_request_duration_seconds" and s.name.endswith("_bucket")
                exemplars[s.exemplar.labels["request_id"]] = s
    assert any(rid.startswith("req-") for rid in exemplars)
    assert "L" * 64 in exemplars  # truncated to stay within the exemplar size limit
    assert exemplars["L" * 64].labels["le"] == "120.0"  # 99 s lands in the last bucket
    assert "new\nline" in exemplars  # intact on the way back
    # The classic text format has no exemplars: request ids do not appear at all.
    assert "req-" not in generate_latest(registry).decode()

    # A quote is escaped too. (prometheus_client's own OpenMetrics parser does
    # not understand an escaped quote inside an exemplar, so this one is checked
    # as text; Prometheus's parser handles it.)
    optimizer.record_request_start('say "hi"', "q")
    optimizer.record_request_completion('say "hi"', "api", {"latency_ms": 100_000})
    assert '# {request_id="say \\"hi\\""}' in generate_openmetrics(registry).decode()


def _bucket_exemplars(registry: CollectorRegistry) -> Dict[str, str]:
    """le -> request id of the duration buckets' exemplars."""
    found = {}
    for family in parse_openmetrics(generate_openmetrics(registry).decode()):
        for s in family.samples:
            if s.exemplar is not None and family.name == "dualtrack_request_duration_seconds":
                found[s.labels["le"]] = s.exemplar.labels["request_id"]
    return found


def test_exemplars_are_sampled_per_bucket():
    registry = CollectorRegistry()
    optimizer = DualTrackOptimizer(OptimizationConfig(enable_resource_monitoring=False), registry=registry)
    metrics = optimizer.metrics
    assert metrics.exemplar_interval_seconds == 1.0  # the documented default
    metrics.exemplar_interval_seconds = 3600.0  # nothing in this test is an hour apart
    for rid, ms in (("first", 400), ("second", 450), ("slow", 50_000)):
        optimizer.record_request_completion(rid, "api", {"latency_ms": ms, "query_class": "short"})
    # 0.4 s and 0.45 s share the 0.5 bucket: it keeps the first id within the interval;
    # the slow tail's bucket had none, so it takes its request's id at once.
    assert _bucket_exemplars(registry) == {"0.5": "first", "60.0": "slow"}
    metrics.exemplar_interval_seconds = 0.0  # every observation sets its bucket's exemplar
    optimizer.record_request_completion("third", "api", {"latency_ms": 420, "query_class": "short"})
    assert _bucket_exemplars(registry)["0.5"] == "third"
    # The bucket is the one prometheus_client picks: a value on a bound belongs to it.
    optimizer.record_request_completion("edge", "api", {"latency_ms": 1000, "query_class": "short"})
    assert _bucket_exemplars(registry)["1.0"] == "edge"


def test_exemplars_can_be_turned_off():
    registry = CollectorRegistry()
    optimizer = DualTrackOptimizer(OptimizationConfig(enable_resource_monitoring=False), registry=registry)
    optimizer.metrics.exemplars = False
    optimizer.record_request_completion("r1", "api", {"latency_ms": 10})
    assert "request_id" not in generate_openmetrics(registry).decode()


# --------------------------------------------------------------------------- serving


def test_serve_metrics_binds_loopback_by_default_and_answers():
    registry = CollectorRegistry()
    optimizer = DualTrackOptimizer(OptimizationConfig(enable_resource_monitoring=False), registry=registry)
    optimizer.record_request_completion("r1", "api", {"latency_ms": 10})
    config = OptimizationConfig(metrics_port=0)
    server = serve_metrics(registry, config)
    try:
        assert server.host == "127.0.0.1" and server._server.server_address[0] == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{server.port}/metrics" and server.port > 0
        response = requests.get(server.url, timeout=5)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
        assert 'dualtrack_requests_total{outcome="success",path="api",query_class="other"} 1.0' in response.text
    finally:
        server.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url, timeout=2)


def test_the_optimizer_serves_metrics_itself(free_port):
    port = free_port()
    optimizer = DualTrackOptimizer(OptimizationConfig(enable_resource_monitoring=False, metrics_port=port))
    with optimizer:
        optimizer.record_request_completion("r", "local", {"latency_ms": 1})
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "dualtrack_request_duration_seconds_bucket" in text
    assert "dualtrack_concurrency_limit 4.0" in text


def test_wsgi_app_for_the_host_application():
    optimizer = DualTrackOptimizer(OptimizationConfig(enable_resource_monitoring=False))
    optimizer.record_request_completion("r", "local", {"latency_ms": 1})
    environ: Dict[str, Any] = {"PATH_INFO": "/metrics"}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(wsgi_app(optimizer)(environ, lambda s, h: status.append(s)))
    assert status == ["200 OK"] and b"dualtrack_requests_total" in body


def test_a_busy_port_is_a_clear_error_not_a_thread_traceback(capfd):
    before = {t for t in threading.enumerate() if t.name.startswith("dualtrack-")}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = OptimizationConfig(metrics_port=port, enable_resource_monitoring=False)
        with pytest.raises(MetricsPortInUse) as info:
            serve_metrics(CollectorRegistry(), config)
        message = str(info.value)
        assert f"127.0.0.1:{port}" in message and "already in use" in message and "metrics_port" in message
        assert isinstance(info.value, ConfigError) and info.value.field == "metrics_port"

        optimizer = DualTrackOptimizer(config)
        with pytest.raises(MetricsPortInUse):
            optimizer.start()
        # A failed start leaves nothing running behind it.
        assert {t for t in threading.enumerate() if t.name.startswith("dualtrack-")} == before
        optimizer.stop()
    assert "Traceback" not in capfd.readouterr().err


def test_missing_tls_files_are_a_config_error(tmp_path):
    config = OptimizationConfig(metrics_port=0, metrics_tls_certfile=str(tmp_path / "nope.pem"),
                                metrics_tls_keyfile=str(tmp_path / "nope.key"))
    with pytest.raises(ConfigError, match=r"metrics_tls_certfile: file not found"):
        serve_metrics(CollectorRegistry(), config)


# --------------------------------------------------------------------------- TLS


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made here."""
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    (d / "ca.cnf").write_text(
        "[req]\ndistinguished_name=dn\nx509_extensions=v3\nprompt=no\n[dn]\nCN=dualtrack test CA\n"
        "[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\n")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-config", "ca.cnf", cwd=d)
    for name, usage, san in (("server", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"),
                             ("client", "clientAuth", "")):
        (d / f"{name}.ext").write_text(
            f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
            f"subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n{san}")
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=dualtrack {name}",
                cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return {name: str(d / name) for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def tls_server(pki: Dict[str, str], *, client_ca: bool) -> Tuple[Any, str]:
    registry = CollectorRegistry()
    DualTrackOptimizer(OptimizationConfig(enable_resource_monitoring=False), registry=registry)
    config = OptimizationConfig(
        metrics_port=0, metrics_tls_certfile=pki["server.pem"], metrics_tls_keyfile=pki["server.key"],
        metrics_tls_client_cafile=pki["ca.pem"] if client_ca else None)
    server = serve_metrics(registry, config)
    return server, server.url


def test_tls(pki):
    server, url = tls_server(pki, client_ca=False)
    try:
        assert url.startswith("https://127.0.0.1:") and server.tls
        response = requests.get(url, verify=pki["ca.pem"], timeout=5)
        assert response.status_code == 200 and "dualtrack_requests_total" in response.text
        with pytest.raises(requests.exceptions.SSLError):  # not trusted without our CA
            requests.get(url, timeout=5)
        with pytest.raises(requests.ConnectionError):  # plain HTTP to a TLS port
            requests.get(url.replace("https://", "http://"), timeout=5)
        # The server survives bad clients.
        assert requests.get(url, verify=pki["ca.pem"], timeout=5).status_code == 200
    finally:
        server.close()


def test_tls_with_client_certificates(pki):
    server, url = tls_server(pki, client_ca=True)
    try:
        with pytest.raises(requests.ConnectionError):  # SSLError or reset: no client certificate
            requests.get(url, verify=pki["ca.pem"], timeout=5)
        response = requests.get(url, verify=pki["ca.pem"], cert=(pki["client.pem"], pki["client.key"]), timeout=5)
        assert response.status_code == 200 and "dualtrack_requests_total" in response.text
    finally:
        server.close()


def test_tls_certificate_that_cannot_be_loaded_is_a_config_error(pki, tmp_path):
    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("not a certificate\n")
    config = OptimizationConfig(metrics_port=0, metrics_tls_certfile=str(bad), metrics_tls_keyfile=pki["server.key"])
    with pytest.raises(ConfigError, match=r"metrics_tls_certfile: cannot load the TLS certificate"):
        serve_metrics(CollectorRegistry(), config)


def test_the_adapter_process_serves_its_metrics_over_tls_with_client_certificates(pki, tmp_path):
    """dualtrack adapter --metrics-tls-*: HTTPS with our CA, client certificate required; a bad
    combination of flags is a one-line error naming the flag, exit status 2."""
    port = free_port()
    tls = ["--metrics-port", str(port), "--metrics-tls-cert-file", pki["server.pem"],
           "--metrics-tls-key-file", pki["server.key"], "--metrics-tls-client-ca-file", pki["ca.pem"]]
    # Prometheus itself is not needed for /metrics: the discard port refuses, cycles fail and are counted.
    adapter = AdapterProcess("http://127.0.0.1:9", tmp_path / "out" / "prefs.json", tmp_path, interval=1.0,
                             metrics_port=None, extra=tls)
    url = f"https://127.0.0.1:{port}/metrics"
    client = (pki["client.pem"], pki["client.key"])

    def scrape() -> Any:
        assert adapter.alive, adapter.log_tail()
        try:
            return requests.get(url, verify=pki["ca.pem"], cert=client, timeout=5)
        except requests.ConnectionError:
            return None  # not listening yet

    with adapter:  # __enter__ starts it; __exit__ stops it
        response = wait_until(scrape, 30, "the adapter's /metrics over TLS")
        assert response.status_code == 200 and "dualtrack_adapter_cycles_total" in response.text
        with pytest.raises(requests.ConnectionError):  # no client certificate
            requests.get(url, verify=pki["ca.pem"], timeout=5)
        with pytest.raises(requests.ConnectionError):  # plain HTTP
            requests.get(url.replace("https://", "http://"), timeout=5)
    bad = subprocess.run([sys.executable, "-m", "dualtrack", "adapter", "--prometheus-url", "http://127.0.0.1:9",
                          "--output", str(tmp_path / "p.json"), "--metrics-port", str(port),
                          "--metrics-tls-cert-file", pki["server.pem"]],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("dualtrack adapter: --metrics-tls-cert-file and --metrics-tls-key-file "
                                  "must be given together")


# --------------------------------------------------------------------------- multiprocess mode


def _worker(index: int, k: int, ready: Any, release: Any) -> None:
    """One worker process: K completed requests, then one held in flight until released."""
    from dualtrack import DualTrackOptimizer, OptimizationConfig
    from dualtrack.clock import VirtualClock

    clock = VirtualClock()
    optimizer = DualTrackOptimizer(OptimizationConfig(enable_resource_monitoring=False), clock=clock)
    for i in range(k):
        rid = f"w{index}-{i}"
        optimizer.record_request_start(rid, "q")
        clock.advance(0.2)
        optimizer.record_request_completion(rid, ("local", "api")[i % 2], {"tokens_in": 3})
    optimizer.record_request_start(f"w{index}-held", "q")
    ready.put(index)
    if not release.wait(60):
        raise SystemExit(3)
    optimizer.record_request_completion(f"w{index}-held", "api", {})


def family_total(registry: CollectorRegistry, sample_name: str) -> float:
    return sum(s.value for f in registry.collect() for s in f.samples if s.name == sample_name)


@pytest.mark.prometheus
def test_multiprocess_mode_adds_up_across_workers(tmp_path, monkeypatch):
    mp_dir = tmp_path / "prom_multiproc"
    mp_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(mp_dir))  # the workers import prometheus_client with it
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Queue(), ctx.Event()
    k, workers = 50, 3
    procs = [ctx.Process(target=_worker, args=(i, k, ready, release), daemon=True) for i in range(workers)]
    for p in procs:
        p.start()
    try:
        assert sorted(ready.get(timeout=60) for _ in procs) == [0, 1, 2]
        registry = multiprocess_registry()
        assert family_total(registry, "dualtrack_requests_total") == workers * k
        assert family_total(registry, "dualtrack_request_duration_seconds_count") == workers * k
        assert family_total(registry, "dualtrack_request_duration_seconds_sum") == pytest.approx(workers * k * 0.2)
        assert registry.get_sample_value("dualtrack_request_duration_seconds_count",
                                         {"path": "api", "query_class": "short"}) == workers * k / 2
        assert family_total(registry, "dualtrack_tokens_total") == workers * k * 3
        assert registry.get_sample_value("dualtrack_requests_in_flight") == workers  # the live sum
    finally:
        release.set()
        for p in procs:
            p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0] * workers

    registry = multiprocess_registry()
    assert family_total(registry, "dualtrack_requests_total") == workers * (k + 1)
    assert registry.get_sample_value("dualtrack_requests_in_flight") == 0

    # With one process's optimizer as ``extra``, the scrape-time gauges appear once.
    local = DualTrackOptimizer(OptimizationConfig(enable_resource_monitoring=False))
    text = generate_latest(multiprocess_registry(extra=local)).decode()
    assert text.count("\ndualtrack_concurrency_limit ") == 1
    promtool("check", "metrics", input=text, check=True)


def test_multiprocess_registry_needs_the_directory(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR is not set"):
        multiprocess_registry()
