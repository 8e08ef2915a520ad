"""The demo: headless runs exit 0, serve /metrics while running, and draw the chart."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest
import yaml

from dualtrack.bundled import bundled_dir
from dualtrack.demo.run import DemoOptions, run_demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_headless_demo_exits_0_and_writes_its_chart(tmp_path):
    chart = tmp_path / "chart.png"
    proc = subprocess.run([sys.executable, "-m", "dualtrack", "demo", "--headless", "--duration", "3",
                           "--metrics-port", "0", "--chart", str(chart)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert chart.read_bytes()[:8] == PNG_MAGIC
    out = proc.stdout
    assert "EVENT  API outage (HTTP 503)" in out  # the scenario's events are shown as they happen
    assert f"chart: {chart}" in out and "requests " in out and "adaptation: embedded" in out
    assert "(30x speed)" in out  # 90 s of scenario in 3 s, and the summary says so


def test_without_the_demo_extra_the_demo_runs_and_says_what_is_missing(tmp_path):
    """As after a plain `pip install dualtrack`: no matplotlib, no rich. One line each, no traceback."""
    chart = tmp_path / "chart.png"
    code = ("import sys; sys.modules['matplotlib'] = None; sys.modules['rich'] = None\n"
            "from dualtrack.cli import main\n"
            f"sys.exit(main(['demo', '--duration', '2', '--metrics-port', '-1', '--chart', {str(chart)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("dualtrack demo:")]
    assert any("no chart (matplotlib is not installed; pip install 'dualtrack[demo]')" in n for n in notes)
    assert not chart.exists()
    assert "requests " in proc.stdout  # the demo itself ran


def test_metrics_are_served_while_the_demo_runs(tmp_path):
    scraped = []

    def scrape(state):
        if state.metrics_url and not scraped and state.rows:
            with urllib.request.urlopen(state.metrics_url, timeout=5) as resp:
                scraped.append(resp.read().decode())

    summary = run_demo(DemoOptions(duration=2, metrics_port=0, chart=None), on_update=scrape)
    assert scraped, "the view was never updated with metrics available"
    assert "dualtrack_requests_total{" in scraped[0]
    assert summary["requests"] > 0 and summary["adaptation_cycles"] == 30


def test_a_bad_scenario_is_a_clear_error(capsys):
    from dualtrack.cli import main

    assert main(["demo", "--headless", "--scenario", "no_such_scenario", "--no-chart"]) == 2
    assert "no_such_scenario" in capsys.readouterr().err


def test_prometheus_mode_refuses_sped_up_scenarios(capsys):
    from dualtrack.cli import main

    assert main(["demo", "--headless", "--with-prometheus", "--scenario", "api_outage", "--duration", "10",
                 "--no-chart"]) == 2
    assert "real time" in capsys.readouterr().err


@pytest.mark.prometheus
def test_prometheus_mode_adapts_through_a_real_prometheus(tmp_path):
    data = yaml.safe_load((bundled_dir("scenarios") / "demo.yaml").read_text())
    # 24 s after the outage: on a loaded 2-core machine the adapter can lose a few of its
    # 1 s cycles to scrapes and rule evaluations arriving late (8 s was once too few), and
    # after the outage the API sees only probes: its success estimate reaches 0 (a failing
    # API is a detour to local, worth 0.05 less per query) some 15 cycles later. 14 s left
    # it there on some loaded runs, where long queries tied between the two routes.
    data.update(duration="30s", adaptation_interval="1s", monitor_interval="500ms",
                optimizer={"signal_window": "4s", "metrics_window_size": 400},
                timeline=[{"at": "6s", "label": "API outage", "set": {"api.outage": "error"},
                           "expect": {"local_bias": "up"}}])
    scenario = tmp_path / "short.yaml"
    scenario.write_text(yaml.safe_dump(data))
    summary = run_demo(DemoOptions(scenario=str(scenario), with_prometheus=True, metrics_port=0, chart=None))
    prefs = summary["final_preferences"]
    assert summary["source"] == "prometheus"
    assert prefs["source"] == "prometheus" and prefs["sequence"] >= 3  # published by the adapter loop
    # the outage moved traffic to local
    assert prefs["routing"]["local_bias"] > 0.5, [r.get("message") for r in prefs.get("reasons", [])]
    assert not summary["state"].adapter_notes, summary["state"].adapter_notes
