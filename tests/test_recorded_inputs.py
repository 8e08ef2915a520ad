"""``PrometheusSource(recorded=True)``: the request signals from recorded inputs.

With ``dualtrack adapter --recording-rules`` the eight inputs of the request
signals (``adapter.aggregates``) are read from the fleet series that
recording_rules.yml records instead of computed from the raw metrics. The
claim is that this changes nothing but the cost: on a real Prometheus
evaluating the real rules over a workload's history, the signals of both
modes are equal, level by level, at an evaluation instant of the rules.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Iterator

import pytest

from dualtrack.adapter.aggregates import INPUTS, RECORDED_INPUTS, RECORDED_WINDOW, REQUEST_SIGNALS
from dualtrack.adapter.prometheus_source import PrometheusSource
from dualtrack.adapter.promql import PromQLClient
from dualtrack.adapter.signals import BUILTIN_CATALOG
from dualtrack.cli import main
from support.compare import assert_same_series
from support.prometheus import openmetrics_text
from support.workload import BackfilledStack, backfilled_stack

ROOT = Path(__file__).resolve().parent.parent
RECORDING = ROOT / "recording_rules.yml"
LEVELS = {(), ("path",), ("query_class",), ("path", "query_class")}


def _series(promql: str) -> str:
    """The recorded series a ``RECORDED_INPUTS`` query reads."""
    return promql.rsplit("(", 1)[1].rstrip(")")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackfilledStack]:
    stack = backfilled_stack(tmp_path_factory.mktemp("stack"), rule_files=[RECORDING])
    yield stack
    stack.close()


@pytest.fixture(scope="module")
def evaluated(stack: BackfilledStack) -> float:
    """An evaluation instant of the request group at which every recorded input exists.

    The history ends "now", so the rules evaluate live (every second) over
    its last minutes. A query at exactly a rule evaluation's timestamp reads
    the samples of that evaluation, which saw the raw data as a raw query at
    the same time sees it. A group writes its rules one after the other, so
    the newest evaluation of the first input may not have reached the last
    one yet: the instant taken is the oldest of the inputs' newest samples,
    an evaluation every input has completed.
    """
    def newest(series: str) -> float:
        return max(value for _, value in stack.prom.wait_for(f"timestamp({series})", timeout=30))

    return min(newest(_series(promql)) for promql in RECORDED_INPUTS.values())


@pytest.fixture(scope="module")
def client(stack: BackfilledStack) -> Iterator[PromQLClient]:
    with PromQLClient(stack.prom.url, timeout=10) as c:
        yield c


# --------------------------------------------------------------------------- equal to the raw mode


@pytest.mark.prometheus
def test_recorded_inputs_give_the_raw_modes_request_signals_at_every_level(client, evaluated):
    raw = PrometheusSource(client, window="2m").fetch(BUILTIN_CATALOG, at=evaluated)
    source = PrometheusSource(client, window="2m", recorded=True)
    recorded = source.fetch(BUILTIN_CATALOG, at=evaluated)
    assert source.last_query_count == 1  # still one round trip
    assert not raw.errors and not recorded.errors
    # Summed in another order (routers first), so equal up to rounding.
    compared = assert_same_series(raw, recorded, REQUEST_SIGNALS)
    for name in REQUEST_SIGNALS:
        levels = {tuple(k for k, _ in labels) for labels in raw.series(name)}
        assert levels == LEVELS, f"{name}: levels with data {sorted(levels)}"
    # Not vacuous: 12 signals, 4 levels, 3 paths x 3 classes at the finest.
    assert compared >= len(REQUEST_SIGNALS) * (1 + 3 + 3 + 9) * 0.75, compared
    for name in ("memory_used_ratio", "battery_ratio", "latency_target_seconds", "constraint_violated"):
        assert recorded.series(name) == raw.series(name), name  # the other signals are untouched


@pytest.mark.prometheus
def test_each_recorded_input_equals_its_raw_input(client, evaluated):
    """Input by input, before any arithmetic: the rules record exactly ``INPUTS``."""
    assert set(RECORDED_INPUTS) == set(INPUTS)
    for name, (promql, extra) in INPUTS.items():
        raw = {tuple(sorted(s.labels.items())): s.value
               for s in client.instant(promql.replace("{window}", RECORDED_WINDOW), at=evaluated).finite}
        recorded = {tuple(sorted(s.labels.items())): s.value
                    for s in client.instant(RECORDED_INPUTS[name], at=evaluated).finite}
        assert raw, f"{name}: no raw data"
        assert set(recorded) == set(raw), name
        for key, value in raw.items():
            assert recorded[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
        keep = {"path", "query_class"} | ({extra} if extra else set())
        assert all({k for k, _ in key} == keep for key in recorded), name


@pytest.mark.prometheus
def test_recorded_interval_counts_give_the_raw_modes(client, stack):
    """The objective's interval_* counts: each recorded form reads a rule's rate1m series, and
    that rate times the interval equals the raw mode's increase over half the window scaled to
    one interval, on real data. The 1m rules go empty a minute after the history ends (sooner
    than a loaded machine may start the stack), so the rules' expressions are evaluated inside
    the history, in place of their series."""
    import yaml

    from dualtrack.adapter.estimator import INTERVAL_SIGNALS

    rules = {r["record"]: r["expr"] for g in yaml.safe_load(RECORDING.read_text())["groups"] for r in g["rules"]}
    at = stack.history.end - 15
    raw = PrometheusSource(client, window="2m", interval="30s").fetch(BUILTIN_CATALOG, at=at)
    assert "increase(" not in PrometheusSource(client, window="2m", recorded=True).batch_query(BUILTIN_CATALOG)
    compared = 0
    for name in INTERVAL_SIGNALS:
        form = BUILTIN_CATALOG[name].recorded
        assert form is not None and "rate(" not in form, name
        series, selector = re.search(r"([a-z_]+:[a-z_]+:rate1m)(\{[^}]*\})?", form).groups()
        assert series in rules, f"{name} reads {series}, which no rule records"
        (metric,) = re.findall(r"rate\(([a-z_]+)\[1m\]\)", rules[series])
        inlined = f"sum by (path, query_class) (rate({metric}{selector or ''}[1m])) * 30"
        assert form.replace("{by}", "path, query_class").replace("{interval_seconds}", "30") == \
            f"sum by (path, query_class) ({series}{selector or ''}) * 30", name
        got = {tuple(sorted(x.labels.items())): x.value for x in client.instant(inlined, at=at).finite}
        want = raw.series(name)
        assert want and set(got) == set(want), name
        for labels, value in want.items():
            assert got[labels] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, labels)
            compared += 1
    assert compared >= len(INTERVAL_SIGNALS) * 3, compared  # not vacuous


def test_the_recorded_queries_read_only_recorded_series():
    for name, promql in RECORDED_INPUTS.items():
        assert "rate(" not in promql and "dualtrack_" in promql, name
        series = _series(promql)
        level, _, operations = series.split(":")
        assert operations == "rate" + RECORDED_WINDOW, name
        assert "instance" not in level, f"{name} must read the fleet series, not the per-router ones"
        assert series in RECORDING.read_text(), f"{series} is not recorded by recording_rules.yml"


# --------------------------------------------------------------------------- misuse


def test_recorded_needs_the_rules_window():
    c = PromQLClient("http://127.0.0.1:1")
    with pytest.raises(ValueError, match=r"rates over 2m; got window='1m'"):
        PrometheusSource(c, window="1m", recorded=True)
    with pytest.raises(ValueError, match="aggregates=True"):
        PrometheusSource(c, recorded=True, aggregates=False)
    assert PrometheusSource(c, window="2m", recorded=True).recorded


@pytest.mark.prometheus
def test_missing_rules_are_reported_once_not_read_as_zero(prometheus_factory, caplog):
    # A Prometheus with router metrics but without the recording rules.
    prom = prometheus_factory(start=False)
    now = time.time()
    prom.backfill_openmetrics(openmetrics_text([
        ("dualtrack_cpu_usage_ratio", {"instance": "r1"}, [(now - 600 + 15 * i, 0.5) for i in range(40)]),
    ]))
    prom.start()
    source = PrometheusSource(PromQLClient(prom.url, timeout=10), recorded=True)
    with caplog.at_level(logging.WARNING, logger="dualtrack.adapter.prometheus_source"):
        for _ in range(2):
            values = source.fetch(BUILTIN_CATALOG, at=now - 60)
            assert values.get("cpu_usage_ratio", {}) == 0.5
            assert not any(values.series(name) for name in REQUEST_SIGNALS)  # no data, not 0
    warnings = [r.getMessage() for r in caplog.records if "no recorded inputs" in r.getMessage()]
    assert len(warnings) == 1 and "recording_rules.yml" in warnings[0]


# --------------------------------------------------------------------------- the CLI


def test_cli_recording_rules_reads_the_recorded_inputs(capsys):
    assert main(["adapter", "--prometheus-url", "http://127.0.0.1:1", "--recording-rules", "--print-queries"]) == 0
    out = capsys.readouterr().out
    for promql in RECORDED_INPUTS.values():
        assert promql in out
    assert "rate(dualtrack_request_duration_seconds_bucket" not in out


def test_cli_rejects_recording_rules_with_another_window(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DUALTRACK_RECORDING_RULES", raising=False)
    monkeypatch.delenv("DUALTRACK_WINDOW", raising=False)
    args = ["adapter", "--prometheus-url", "http://127.0.0.1:1", "--dry-run", "--once"]
    assert main(args + ["--recording-rules", "--window", "1m"]) == 2
    err = capsys.readouterr().err
    assert "--recording-rules: reads the recording rules' series, which are rates over 2m" in err
    assert "window '1m'" in err

    # The same from the environment and from a config file.
    monkeypatch.setenv("DUALTRACK_RECORDING_RULES", "true")
    assert main(args + ["--window", "5m"]) == 2
    assert "window '5m'" in capsys.readouterr().err
    monkeypatch.delenv("DUALTRACK_RECORDING_RULES")
    config = tmp_path / "adapter.yaml"
    config.write_text("recording_rules: true\nwindow: 1m\n")
    assert main(args + ["--config", str(config)]) == 2
    assert "--recording-rules" in capsys.readouterr().err


def test_cli_recording_rules_setting_resolves_like_the_others(tmp_path):
    import argparse

    from dualtrack.cli.adapter_cmd import SETTINGS, resolve

    assert SETTINGS["recording_rules"][0] is False
    args = argparse.Namespace(config=None, recording_rules=None)
    assert resolve(args, environ={})["recording_rules"] is False
    assert resolve(args, environ={"DUALTRACK_RECORDING_RULES": "1"})["recording_rules"] is True
    config = tmp_path / "a.yaml"
    config.write_text("recording_rules: true\n")
    assert resolve(argparse.Namespace(config=str(config)), environ={})["recording_rules"] is True
