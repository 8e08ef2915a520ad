"""The whole loop, natively: the topology docker-compose.yml runs, as processes on loopback.

A real Prometheus (Debian's binary) scrapes a simulated router (``dualtrack
demo`` following a preferences file) and the adapter process (``dualtrack
adapter``), and evaluates the shipped recording and alerting rules. The
scenario's local model is slow and the latency target tight, so:

- the adapter's preferences file moves traffic away from local within a
  bounded number of cycles, and the router follows the file;
- the latency-target constraint alert fires (read back from ``ALERTS``);
- SIGTERM stops both processes cleanly, leaving a whole file and no temp files.

The alert rules are the shipped ones with their ``for:`` durations shortened
to seconds (the expressions, labels and annotations are untouched) so the test
fits in well under a minute.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from dualtrack.bundled import bundled_dir
from dualtrack.preferences import read_preferences
from support.net import free_port
from support.waiting import wait_until

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[1]
# The waits read files and scrape the router: no need to poll the system under test faster.
POLL_S = 0.2


def scenario_file(tmp: Path) -> Path:
    data = yaml.safe_load((bundled_dir("scenarios") / "demo.yaml").read_text())
    data.update(name="e2e", duration="60s", adaptation_interval="1s", monitor_interval="500ms", timeline=[],
                optimizer={"signal_window": "5s", "metrics_window_size": 400})
    # A target local answers cannot meet. (Not a memory violation: the router would
    # itself steer every request away from local at once, and the adapter would see no local traffic.)
    data["constraints"]["target_latency_ms"] = 1500
    data["models"]["local"]["decode_tokens_per_second"] = 20  # local is several times slower than the API
    path = tmp / "e2e.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def fast_alert_rules(tmp: Path) -> Path:
    text = (ROOT / "alerting_rules.yml").read_text()
    text = re.sub(r"^(\s+for:) \d+m$", r"\1 2s", text, flags=re.M)
    path = tmp / "alerting_rules.yml"
    path.write_text(text)
    return path


def test_slow_local_track_shifts_traffic_and_the_latency_alert_fires(prometheus_factory, tmp_path):
    router_port, adapter_port = free_port(), free_port()
    prefs = tmp_path / "shared" / "preferences.json"
    prefs.parent.mkdir()
    prom = prometheus_factory(
        targets=[("dualtrack-router", f"127.0.0.1:{router_port}"), ("dualtrack-adapter", f"127.0.0.1:{adapter_port}")],
        rule_files=[ROOT / "recording_rules.yml", fast_alert_rules(tmp_path)],
        scrape_interval="1s", evaluation_interval="1s")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    router = subprocess.Popen(
        [sys.executable, "-m", "dualtrack", "demo", "--headless", "--scenario", str(scenario_file(tmp_path)),
         "--duration", "60", "--metrics-port", str(router_port), "--preferences-file", str(prefs), "--no-chart"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    adapter = subprocess.Popen(
        [sys.executable, "-m", "dualtrack", "adapter", "--prometheus-url", prom.url, "--output", str(prefs),
         "--strategy", "balanced", "--interval", "1", "--window", "5s", "--metrics-port", str(adapter_port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        prom.wait_for_targets_up(2, timeout=60)

        # The adapter moves traffic away from the slow local track within a bounded number of cycles.
        first = wait_until(lambda: prefs.exists() and read_preferences(prefs), 60, "a first published file",
                           poll=POLL_S)
        try:
            shifted = wait_until(lambda: (p := read_preferences(prefs)).routing.local_bias <= 0.25 and p, 30,
                                 "local_bias to fall to 0.25", poll=POLL_S)
        except AssertionError as err:
            raise AssertionError(f"{err}; the file says: {prefs.read_text()[:3000]}") from None
        assert shifted.sequence - first.sequence <= 15, (first.sequence, shifted.sequence)
        assert shifted.source == "prometheus"
        # Why: the objective found local worth less per query (or memory pressure backed local off).
        assert any((r.rule == "objective" and r.signals.get("local_share", 1.0) < 0.5) or r.rule == "memory_pressure"
                   for r in shifted.reasons), shifted.reasons

        # The router follows the file: its exported preferences are the published ones.
        def router_local_bias():
            with urllib.request.urlopen(f"http://127.0.0.1:{router_port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            match = re.search(r'dualtrack_routing_preference\{preference="local_bias",query_class="short"\} (\S+)',
                              text)
            source = re.search(r'dualtrack_optimizer_info\{[^}]*source="(\w+)"', text)
            return match and source and source.group(1) == "prometheus" and float(match.group(1)) <= 0.3
        wait_until(router_local_bias, 15, "the router to follow the published preferences", poll=POLL_S)

        # The latency target is missed: its alert fires, thresholds read from the exported limit gauge.
        alert = prom.wait_for_alert("DualtrackLatencyOverTarget", "firing", timeout=30)
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["summary"] and "runbook.md#dualtracklatencyovertarget" in alert["annotations"][
            "runbook_url"]
        firing = prom.query('ALERTS{alertname="DualtrackLatencyOverTarget",alertstate="firing"}')
        assert firing and firing[0][0]["instance"] == f"127.0.0.1:{router_port}"
        # The simulated machine's gauges are exported too (the resources dashboard reads them).
        assert prom.query(f'dualtrack_process_memory_bytes{{instance="127.0.0.1:{router_port}"}}')
        # The adapter is healthy: no stale-preferences or adapter alerts.
        assert not prom.query('ALERTS{alertname=~"DualtrackPreferencesStale|DualtrackAdapter.*"}')
    finally:
        for proc in (adapter, router):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
    for name, proc in (("adapter", adapter), ("router", router)):
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"{name} did not stop on SIGTERM") from None
        out, err = proc.communicate()
        assert code == 0, f"{name} exited {code}: {err[-2000:]}"
        assert "Traceback" not in err, err[-2000:]
    json.loads(prefs.read_text())  # a whole document
    assert sorted(p.name for p in prefs.parent.iterdir()) == ["preferences.json"]
