"""prometheus.yml, the recording and alerting rules, and the Alertmanager example.

What is proven here, and how:

- ``promtool check config`` / ``check rules`` accept the files, and
  ``promtool test rules`` passes the unit tests in tests/promtool/, which
  cover every recording rule and every alert (firing and not firing, with
  their annotations); the coverage itself is checked below, so a new rule
  without a test fails.
- Alerts follow the conventions: ``for``, a severity, summary/description
  with template values, a runbook_url whose anchor exists in docs/runbook.md,
  and no hard-coded thresholds (limits come from the exported gauges).
- On real data (a real Prometheus holding half an hour of the exporter's own
  output, rules evaluated live): every rule evaluates without error, every
  recording rule has data and keeps exactly the labels its level names, the
  rules equal the adapter's signal catalog PromQL (so the catalog can read
  them), and the battery alert goes pending for the router whose battery ran
  low.
- The Alertmanager example passes ``amtool check-config``, routes by severity,
  and a real Alertmanager inhibits warnings by criticals.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import requests
import yaml

from dualtrack.adapter.signals import BUILTIN_SIGNALS, Signal
from support.net import LOOPBACK, free_port
from support.processes import stop
from support.prometheus import find_binary, promtool
from support.workload import ROUTER_A, BackfilledStack, backfilled_stack

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_YML = ROOT / "prometheus.yml"
RECORDING = ROOT / "recording_rules.yml"
ALERTING = ROOT / "alerting_rules.yml"
ALERTMANAGER_YML = ROOT / "alertmanager.yml"
PROMTOOL_TESTS = sorted((ROOT / "tests" / "promtool").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
DOCS = ROOT / "docs" / "prometheus.md"

WINDOW = "2m"  # the recording rules' rate window, the adapter's default


def _groups(path: Path) -> List[Dict[str, Any]]:
    return yaml.safe_load(path.read_text())["groups"]


def _recording_rules() -> Dict[str, str]:
    return {r["record"]: r["expr"] for g in _groups(RECORDING) for r in g["rules"]}


def _alerts() -> List[Dict[str, Any]]:
    return [r for g in _groups(ALERTING) for r in g["rules"]]


def _mentions(expr: str, name: str) -> bool:
    return re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", expr) is not None


# --------------------------------------------------------------------------- promtool


def test_promtool_check_config_accepts_prometheus_yml_and_its_rule_files():
    result = promtool("check", "config", str(PROMETHEUS_YML), check=True)
    assert "3 rule files found" in result.stdout  # local_server_rules.yml: tests/test_local_servers.py


def test_prometheus_yml_scrapes_the_router_and_adapter_and_alerts_to_alertmanager():
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {c["job_name"]: [t for sc in c.get("static_configs", []) for t in sc["targets"]]
            for c in config["scrape_configs"]}
    assert jobs["dualtrack-router"] == ["router:9464"]
    assert jobs["dualtrack-adapter"] == ["adapter:9465"]
    assert sorted(config["rule_files"]) == ["alerting_rules.yml", "local_server_rules.yml", "recording_rules.yml"]
    targets = [t for am in config["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert targets == ["alertmanager:9093"]


def test_promtool_check_rules_accepts_both_rule_files():
    result = promtool("check", "rules", str(RECORDING), str(ALERTING), check=True)
    assert result.stdout.count("SUCCESS") == 2


def test_promtool_unit_tests_pass():
    assert {"alerting_rules_test.yml", "recording_rules_test.yml"} <= {p.name for p in PROMTOOL_TESTS}
    result = promtool("test", "rules", *map(str, PROMTOOL_TESTS), check=True)
    assert "FAILED" not in result.stdout + result.stderr


def _promtool_tests() -> Iterator[Dict[str, Any]]:
    for path in PROMTOOL_TESTS:
        doc = yaml.safe_load(path.read_text())
        yield from doc["tests"]


def test_every_recording_rule_is_unit_tested():
    tested = [t["expr"] for test in _promtool_tests() for t in test.get("promql_expr_test", [])]
    untested = [name for name in _recording_rules() if not any(_mentions(expr, name) for expr in tested)]
    assert not untested, f"recording rules without a promql_expr_test: {untested}"


def test_every_alert_is_unit_tested_firing_with_annotations_and_not_firing():
    cases = [c for test in _promtool_tests() for c in test.get("alert_rule_test", [])]
    for alert in _alerts():
        name = alert["alert"]
        mine = [c for c in cases if c["alertname"] == name]
        firing = [a for c in mine for a in c.get("exp_alerts") or []]
        assert firing, f"{name}: no test where it fires"
        assert any(not c.get("exp_alerts") for c in mine), f"{name}: no test where it does not fire"
        for expected in firing:
            assert set(expected.get("exp_annotations", {})) == {"summary", "description", "runbook_url"}, name
            assert expected["exp_labels"]["severity"] == alert["labels"]["severity"], name


# --------------------------------------------------------------------------- conventions

LEVEL_LABELS = {
    "": set(),
    "path": {"path"},
    "path_query_class": {"path", "query_class"},
    "path_query_class_le": {"path", "query_class", "le"},
    "path_query_class_outcome": {"path", "query_class", "outcome"},
    "instance": {"instance"},
    "instance_path": {"instance", "path"},
    "instance_path_query_class": {"instance", "path", "query_class"},
    "instance_path_query_class_le": {"instance", "path", "query_class", "le"},
    "instance_path_query_class_outcome": {"instance", "path", "query_class", "outcome"},
    "constraint": {"constraint"},
}


def test_recording_rule_names_are_level_metric_operations():
    for name, expr in _recording_rules().items():
        level, metric, operations = name.split(":")
        assert level in LEVEL_LABELS, f"{name}: unknown level {level!r}"
        assert metric.startswith("dualtrack_") and not metric.endswith("_total"), name
        assert re.fullmatch(r"[a-z0-9_]+", operations), name
        if "rate(" in expr:
            # 2m for the rates of the signals; 1m for the objective's interval counts.
            window = "1m" if name.endswith(":rate1m") else WINDOW
            assert operations.endswith("rate" + window) and f"[{window}]" in expr, name


def test_no_ratio_is_averaged():
    for name, expr in _recording_rules().items():
        assert not re.search(r"\bavg\b[^(]*\([^)]*ratio", expr), f"{name} averages a ratio"
    for alert in _alerts():
        assert not re.search(r"\bavg\b", alert["expr"]), alert["alert"]


ALLOWED_NUMBERS = {"0", "1", "3600"}  # booleans, and seconds per hour (see alerting_rules.yml)


def test_alerts_have_for_severity_annotations_and_no_hardcoded_thresholds():
    names = [a["alert"] for a in _alerts()]
    assert len(names) == len(set(names))
    for alert in _alerts():
        name = alert["alert"]
        assert re.fullmatch(r"Dualtrack[A-Z][A-Za-z]+", name), name
        assert re.fullmatch(r"\d+[smh]", alert["for"]), name
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        notes = alert["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}, name
        assert "{{" in notes["summary"] and "$labels" in notes["summary"] + notes["description"], name
        assert "$value" in notes["description"] or "$labels" in notes["description"], name
        assert notes["runbook_url"] == f"https://dualtrack.dev/docs/runbook.md#{name.lower()}", name
        # Every number in the expression outside a range selector is a boolean
        # or the hour conversion; thresholds come from the limit gauges.
        expr = re.sub(r"\[[^\]]*\]", "", alert["expr"])
        expr = re.sub(r'"[^"]*"', '""', expr)
        numbers = set(re.findall(r"(?<![\w.:])\d+(?:\.\d+)?(?![\w.])", expr))
        assert numbers <= ALLOWED_NUMBERS, f"{name}: hard-coded numbers {numbers - ALLOWED_NUMBERS}"


CONSTRAINT_ALERTS = {
    "DualtrackMemoryOverLimit": "dualtrack_memory_limit_bytes",
    "DualtrackCPUOverLimit": "dualtrack_cpu_limit_ratio",
    "DualtrackGPUMemoryOverLimit": "dualtrack_gpu_memory_limit_bytes",
    "DualtrackConcurrencyOverLimit": "dualtrack_concurrency_limit",
    "DualtrackLatencyOverTarget": "dualtrack_latency_target_seconds",
    "DualtrackAPICostPerRequestOverLimit": "dualtrack_cost_per_request_limit_dollars",
    "DualtrackCostBudgetBurn": "dualtrack_cost_budget_dollars_per_hour",
    "DualtrackBatteryLow": "dualtrack_battery_threshold_ratio",
    "DualtrackQualityBelowMinimum": "dualtrack_quality_min_ratio",
}


def test_each_constraint_alert_compares_with_its_limit_gauge_per_router():
    alerts = {a["alert"]: a for a in _alerts()}
    for name, gauge in CONSTRAINT_ALERTS.items():
        expr = alerts[name]["expr"]
        assert _mentions(expr, gauge), f"{name} must take its threshold from {gauge}"
        assert "on (instance)" in expr, f"{name} must match each router with its own limit"
    others = set(alerts) - set(CONSTRAINT_ALERTS)
    assert others == {"DualtrackRouterDown", "DualtrackAdapterDown", "DualtrackAdapterCyclesFailing",
                      "DualtrackAdapterRulesReloadFailed", "DualtrackAdapterStateNotSaved", "DualtrackPreferencesStale"}


def _github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_every_alert_has_a_runbook_section_saying_meaning_confirmation_and_action():
    text = RUNBOOK.read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    by_anchor = {_github_anchor(s.splitlines()[0]): s for s in sections}
    for alert in _alerts():
        anchor = alert["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor in by_anchor, f"docs/runbook.md has no section for {alert['alert']}"
        body = by_anchor[anchor]
        for part in ("**What it means.**", "**How to confirm.**", "**What to do.**"):
            assert part in body, f"runbook section {alert['alert']} lacks {part}"
        assert f"`{alert['labels']['severity']}`" in body, f"runbook section {alert['alert']} names no severity"


def test_docs_list_every_alert_and_recording_rule():
    text = DOCS.read_text()
    for alert in _alerts():
        assert f"[{alert['alert']}](runbook.md#{alert['alert'].lower()})" in text, alert["alert"]
    for name in _recording_rules():
        assert f"`{name}`" in text, f"docs/prometheus.md does not mention {name}"


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackfilledStack]:
    stack = backfilled_stack(tmp_path_factory.mktemp("stack"), rule_files=[RECORDING, ALERTING])
    yield stack
    stack.close()


@pytest.fixture(scope="session")
def evaluated(stack: BackfilledStack) -> float:
    """Waits for a full evaluation of every rule group; returns one evaluation time.

    The recording rules' evaluation time: a query at exactly that time sees
    the rules' samples and the raw data as the rules saw them.
    """
    prom = stack.prom

    def all_evaluated(groups: List[Dict[str, Any]]) -> bool:
        # Before its first evaluation a group reports the zero time (0001-01-01...).
        return bool(groups) and all(not g.get("lastEvaluation", "0001").startswith("0001") for g in groups)

    deadline = time.monotonic() + 30
    while not all_evaluated(prom.rules()):
        assert time.monotonic() < deadline, "rule groups never evaluated"
        time.sleep(0.1)
    # Groups run at different offsets within the interval: take an evaluation
    # of the request group that comes after the machine group's first one, so
    # that every recorded series has a sample at or before that time.
    machine = prom.wait_for("timestamp(:dualtrack_cpu_usage_ratio:max)", timeout=30)[0][1]
    assert time.time() - stack.history.end < 90, (
        f"the stack's history ended {time.time() - stack.history.end:.0f} s ago: the 2m request "
        "rules are about to go empty (machine too loaded to build and start it in time?)")
    samples = prom.wait_for("timestamp(path:dualtrack_requests:rate2m)",
                            lambda s: bool(s) and s[0][1] >= machine, timeout=30)
    return samples[0][1]


def _as_dict(samples: List[Tuple[Dict[str, str], float]]) -> Dict[Tuple[Tuple[str, str], ...], float]:
    return {tuple(sorted((k, v) for k, v in labels.items() if k != "__name__")): value for labels, value in samples}


def _same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_every_rule_evaluates_without_error_on_real_data(stack: BackfilledStack, evaluated: float):
    rules = [r for g in stack.prom.rules() for r in g["rules"]]
    assert len(rules) == len(_recording_rules()) + len(_alerts())
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not broken, broken


def test_every_recording_rule_has_data_and_keeps_its_levels_labels(stack: BackfilledStack, evaluated: float):
    for name in _recording_rules():
        query, at = name, evaluated
        if name.endswith(":rate1m"):
            # A 1m rate empties a minute after the history ends, before the 2m rules do (a
            # loaded machine can take longer to start the stack): its expression, inside the history.
            query, at = _recording_rules()[name], stack.history.end - 15
        samples = stack.prom.query(query, time=at)
        assert samples, f"{name} has no data on real traffic"
        level = name.split(":")[0]
        for labels, _ in samples:
            assert set(labels) - {"__name__"} == LEVEL_LABELS[level], f"{name}: labels {sorted(labels)}"
        if level.startswith("instance"):
            assert {labels["instance"] for labels, _ in samples} >= {"router-a:9464", "router-b:9464"}, name


#: The adapter's signal catalog, level by level, as recorded series. The
#: catalog can read these instead of running its own PromQL
#: (docs/prometheus.md shows the same table).
SIGNAL_RULES: Dict[Tuple[str, Tuple[str, ...]], str] = {}
for _level, _prefix in ((("path",), "path"), (("path", "query_class"), "path_query_class")):
    SIGNAL_RULES.update({
        ("requests_per_second", _level): f"{_prefix}:dualtrack_requests:rate2m",
        ("latency_p50_seconds", _level): f"{_prefix}:dualtrack_request_duration_seconds:p50_rate2m",
        ("latency_p95_seconds", _level): f"{_prefix}:dualtrack_request_duration_seconds:p95_rate2m",
        ("latency_p99_seconds", _level): f"{_prefix}:dualtrack_request_duration_seconds:p99_rate2m",
        ("latency_mean_seconds", _level): f"{_prefix}:dualtrack_request_duration_seconds:mean_rate2m",
        ("success_ratio", _level): f"{_prefix}:dualtrack_requests_success:ratio_rate2m",
        ("error_ratio", _level): f"{_prefix}:dualtrack_requests_error:ratio_rate2m",
        ("timeout_ratio", _level): f"{_prefix}:dualtrack_requests_timeout:ratio_rate2m",
        ("rate_limited_ratio", _level): f"{_prefix}:dualtrack_requests_rate_limited:ratio_rate2m",
        ("cost_per_request_dollars", _level): f"{_prefix}:dualtrack_cost_dollars_per_request:ratio_rate2m",
        ("cost_burn_dollars_per_hour", _level): f"{_prefix}:dualtrack_cost_dollars:rate2m * 3600",
        ("quality_mean", _level): f"{_prefix}:dualtrack_response_quality_ratio:mean_rate2m",
        ("tokens_per_second", _level): f"{_prefix}:dualtrack_tokens:rate2m",
    })
SIGNAL_RULES.update({
    ("in_flight_requests", ()): ":dualtrack_requests_in_flight:sum",
    ("cpu_usage_ratio", ()): ":dualtrack_cpu_usage_ratio:max",
    ("memory_used_bytes", ()): ":dualtrack_process_memory_bytes:max",
    ("memory_used_ratio", ()): ":dualtrack_process_memory_bytes_per_limit:max",
    ("gpu_memory_used_bytes", ()): ":dualtrack_gpu_memory_used_bytes:max_sum",
    ("gpu_memory_used_ratio", ()): ":dualtrack_gpu_memory_used_bytes_per_limit:max",
    ("gpu_utilization_ratio", ()): ":dualtrack_gpu_utilization_ratio:max_avg",
    ("battery_ratio", ()): ":dualtrack_battery_ratio:min",
    ("battery_discharging", ()): ":dualtrack_battery_discharging:max",
    ("battery_seconds_left", ()): ":dualtrack_battery_seconds_left:min",
    ("concurrency_used_ratio", ()): ":dualtrack_requests_in_flight_per_limit:max",
    ("constraint_violated", ("constraint",)): "constraint:dualtrack_constraint_violated:max",
})

#: Every rate in a request signal's PromQL, as the first-group series it reads
#: instead: this turns any level of any request signal into a sum over rules.
FIRST_GROUP = {
    "dualtrack_requests_total": "instance_path_query_class_outcome:dualtrack_requests:rate2m",
    "dualtrack_request_duration_seconds_bucket": "instance_path_query_class_le:dualtrack_request_duration_seconds_bucket:rate2m",
    "dualtrack_request_duration_seconds_sum": "instance_path_query_class:dualtrack_request_duration_seconds_sum:rate2m",
    "dualtrack_request_duration_seconds_count": "instance_path_query_class:dualtrack_request_duration_seconds_count:rate2m",
    "dualtrack_cost_dollars_total": "instance_path_query_class:dualtrack_cost_dollars:rate2m",
    "dualtrack_tokens_total": "instance_path_query_class:dualtrack_tokens:rate2m",
    "dualtrack_response_quality_ratio_sum": "instance_path_query_class:dualtrack_response_quality_ratio_sum:rate2m",
    "dualtrack_response_quality_ratio_count": "instance_path_query_class:dualtrack_response_quality_ratio_count:rate2m",
    "dualtrack_rate_limited_total": "instance_path_query_class:dualtrack_rate_limited:rate2m",
}


def _signal(name: str) -> Signal:
    return next(s for s in BUILTIN_SIGNALS if s.name == name)


def _on_first_group(promql: str) -> str:
    def replace(m: "re.Match[str]") -> str:
        return FIRST_GROUP[m.group(1)] + (m.group(2) or "")
    rewritten = re.sub(r"rate\((dualtrack_[a-z_]+)(\{[^}]*\})?\[" + WINDOW + r"\]\)", replace, promql)
    assert "rate(" not in rewritten, f"not every rate has a recorded series: {promql}"
    return rewritten


def _compare(stack: BackfilledStack, at: float, ours: str, theirs: str) -> None:
    got = _as_dict(stack.prom.query(ours, time=at))
    want = _as_dict(stack.prom.query(theirs, time=at))
    assert want, f"the signal has no data: {theirs}"
    assert set(got) == set(want), f"{ours}: labels {sorted(got)} != {sorted(want)}"
    for key, value in want.items():
        assert _same(got[key], value), f"{ours} {dict(key)}: {got[key]!r} != signal {value!r}"


def test_the_interval_extremes_are_the_highest_and_lowest_readings(stack: BackfilledStack):
    """``*_max`` / ``*_min`` (the adaptation interval's extremes, which the estimator fits memory
    on) against the history the routers exported, computed here from its samples."""
    at, span = stack.query_time + 7.25, 120.0  # between two scrapes: no sample on an edge
    series = stack.history.series

    def window(name: str) -> Dict[Tuple[Tuple[str, str], ...], List[float]]:
        return {labels: [v for ts, v in points if at - span < ts <= at]
                for (n, labels), points in series.items() if n == name}

    def latest(name: str, key: str = "instance") -> Dict[str, float]:
        return {dict(labels)[key]: [v for ts, v in points if ts <= at][-1]
                for (n, labels), points in series.items() if n == name}

    memory, memory_limit = window("dualtrack_process_memory_bytes"), latest("dualtrack_memory_limit_bytes")
    gpu, gpu_limit = window("dualtrack_gpu_memory_used_bytes"), latest("dualtrack_gpu_memory_limit_bytes")
    calls = window("dualtrack_resource_reading_local_calls")
    assert memory and gpu and calls and all(len(v) >= 6 for v in memory.values())

    def by_instance(read: Dict[Tuple[Tuple[str, str], ...], List[float]], pick: Any) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for labels, values in read.items():
            instance = dict(labels)["instance"]
            out[instance] = out.get(instance, 0.0) + pick(values)
        return out

    expected = {}
    for end, pick in (("max", max), ("min", min)):
        expected[f"memory_used_ratio_{end}"] = max(v / memory_limit[i] for i, v in by_instance(memory, pick).items())
        expected[f"gpu_memory_used_ratio_{end}"] = max(v / gpu_limit[i] for i, v in by_instance(gpu, pick).items())
        expected[f"memory_reading_local_calls_{end}"] = sum(pick(v) for v in calls.values())
    assert expected["memory_used_ratio_max"] > expected["memory_used_ratio_min"]  # the history moves
    for name, want in expected.items():
        got = stack.prom.query(_signal(name).query((), WINDOW, f"{span:g}s"), time=at)
        assert len(got) == 1 and math.isclose(got[0][1], want, rel_tol=1e-9), (name, got, want)


def test_recording_rules_equal_the_adapters_signals(stack: BackfilledStack, evaluated: float):
    for (name, level), rule in SIGNAL_RULES.items():
        _compare(stack, evaluated, rule, _signal(name).query(level, WINDOW))


def test_every_level_of_every_request_signal_can_read_the_first_group(stack: BackfilledStack, evaluated: float):
    request_signals = [s for s in BUILTIN_SIGNALS if s.builtin and s.dims == ("path", "query_class")]
    assert len(request_signals) >= 12
    for signal in request_signals:
        for level in signal.levels():
            promql = signal.query(level, WINDOW)
            _compare(stack, evaluated, _on_first_group(promql), promql)


def test_docs_show_the_signal_to_rule_mapping():
    text = DOCS.read_text()
    for (name, _level), rule in SIGNAL_RULES.items():
        row = re.search(rf"^\| `{name}` \|.*$", text, flags=re.M)
        assert row, f"docs/prometheus.md has no row for signal {name}"
        assert f"`{rule}`" in row.group(0), f"docs/prometheus.md: {name} should map to {rule}"


def test_alerts_evaluate_on_real_data_and_the_drained_battery_alerts(stack: BackfilledStack, evaluated: float):
    # router-a's battery drained under its 20 % threshold while discharging.
    alert = stack.prom.wait_for_alert("DualtrackBatteryLow", state="pending", timeout=15)
    assert alert["labels"] == {"alertname": "DualtrackBatteryLow", "instance": ROUTER_A, "severity": "warning"}
    assert float(alert["value"]) < 0.2
    active = {(a["labels"]["alertname"], a["labels"].get("instance")) for a in stack.prom.alerts()}
    # Every target is up in the history; router-b has no battery, so no alert for it.
    assert not {name for name, _ in active} & {"DualtrackRouterDown", "DualtrackAdapterDown"}
    assert ("DualtrackBatteryLow", "router-b:9464") not in active


# --------------------------------------------------------------------------- Alertmanager


def _alertmanager_binary() -> str:
    for name in ("prometheus-alertmanager", "alertmanager"):
        try:
            return find_binary(name)
        except pytest.fail.Exception:
            continue
    pytest.fail("Alertmanager not found on PATH: run `make test` (tools/install-prometheus.sh installs "
                "Debian's prometheus-alertmanager, which brings alertmanager and amtool)")


def _amtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([find_binary("amtool"), *args], capture_output=True, text=True, timeout=30)


def test_amtool_accepts_the_alertmanager_example():
    result = _amtool("check-config", str(ALERTMANAGER_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 receivers" in result.stdout and "2 inhibit rules" in result.stdout


@pytest.mark.parametrize("severity, receiver", [("critical", "dualtrack-pager"), ("warning", "dualtrack-tickets")])
def test_alertmanager_routes_each_severity_of_every_alert(severity: str, receiver: str):
    for alert in _alerts():
        if alert["labels"]["severity"] != severity:
            continue
        result = _amtool("config", "routes", "test", f"--config.file={ALERTMANAGER_YML}",
                         f"--verify.receivers={receiver}", f"alertname={alert['alert']}",
                         f"severity={severity}", "instance=router:9464")
        assert result.returncode == 0, f"{alert['alert']}: {result.stdout}{result.stderr}"


def test_a_real_alertmanager_inhibits_warnings_by_criticals(tmp_path: Path, fake_http):
    # The example config, with its placeholder receivers pointed at a local sink.
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = fake_http.url + "/" + receiver["name"]
    config_path = tmp_path / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    with open(tmp_path / "alertmanager.log", "wb") as log:
        proc = subprocess.Popen(
            [_alertmanager_binary(), f"--config.file={config_path}", f"--storage.path={tmp_path / 'data'}",
             f"--web.listen-address={LOOPBACK}:{port}", "--cluster.listen-address=", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()
            assert time.monotonic() < deadline, "alertmanager not ready"
            time.sleep(0.05)

        def alert(name: str, severity: str, instance: str = "") -> Dict[str, Any]:
            labels = {"alertname": name, "severity": severity}
            if instance:
                labels["instance"] = instance
            return {"labels": labels, "annotations": {"summary": name}}

        posted = [
            alert("DualtrackMemoryOverLimit", "critical", "router-1:9464"),
            alert("DualtrackLatencyOverTarget", "warning", "router-1:9464"),  # same router: inhibited
            alert("DualtrackLatencyOverTarget", "warning", "router-2:9464"),  # another router: active
            alert("DualtrackAdapterDown", "warning", "adapter:9465"),
            alert("DualtrackPreferencesStale", "warning", "router-3:9464"),  # caused by the adapter: inhibited
        ]
        assert requests.post(f"{url}/api/v2/alerts", json=posted, timeout=5).status_code == 200

        def states() -> Dict[Tuple[str, str], str]:
            got = requests.get(f"{url}/api/v2/alerts", timeout=5).json()
            return {(a["labels"]["alertname"], a["labels"].get("instance", "")): a["status"]["state"] for a in got}

        want = {
            ("DualtrackMemoryOverLimit", "router-1:9464"): "active",
            ("DualtrackLatencyOverTarget", "router-1:9464"): "suppressed",
            ("DualtrackLatencyOverTarget", "router-2:9464"): "active",
            ("DualtrackAdapterDown", "adapter:9465"): "active",
            ("DualtrackPreferencesStale", "router-3:9464"): "suppressed",
        }
        deadline = time.monotonic() + 15
        while states() != want:
            assert time.monotonic() < deadline, f"inhibition: {states()} != {want}"
            time.sleep(0.1)
    finally:
        stop(proc)
