"""Grafana: the provisioning files and the dashboards in grafana/.

Two kinds of proof:

- Structure: every dashboard is valid JSON with a schema version, a unique
  uid and title, unique panel ids, panels inside the 24-column grid without
  overlaps, data sources that resolve (the ``${datasource}`` variable or the
  provisioned uid), and template variables that exist wherever they are used
  (and are used wherever they exist).
- Data: every panel query (and every variable query) runs against a real
  Prometheus holding half an hour of the exporter's own output (two routers,
  the adapter; see tests/support/workload.py), with the template variables
  substituted as Grafana would, and must succeed and return finite data.
  The few queries that legitimately have no data in that history are listed
  in NO_DATA_EXPECTED with the reason.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import yaml

from support.workload import ADAPTER, ROUTER_A, ROUTER_B, BackfilledStack, backfilled_stack

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
RULE_FILES = [ROOT / "recording_rules.yml", ROOT / "alerting_rules.yml"]

#: Grafana's built-in variables and what the test substitutes for them: the
#: history is scraped every 15 s, so $__rate_interval is 4 x 15 s.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "15m",
    "__range_s": "900",
    "__range_ms": "900000",
}

#: (dashboard uid, panel title, refId) -> why the query has no data in the test history.
NO_DATA_EXPECTED: Dict[Tuple[str, str, str], str] = {
    ("dualtrack-overview", "Instrumentation health", "F"):
        "dualtrack_optimizer_errors_total{component} only exists after an internal error of the optimizer; "
        "the public API cannot provoke one (every input is validated and repaired first)",
    ("dualtrack-adapter", "Planned against measured: API spend", "C"):
        "the adapter plans its spend only against a budget, and the routers that read its preferences "
        "(router-b) have none; the embedded router-a plans against one (target A)",
}

PANEL_TYPES = {"row", "stat", "timeseries", "gauge", "bargauge", "table", "state-timeline"}
VAR_REF = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def _load(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text())


DASHBOARDS = {p.stem: _load(p) for p in DASHBOARD_FILES}


def _panels(dashboard: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def _queries(dashboard: Dict[str, Any]) -> Iterator[Tuple[Dict[str, Any], Dict[str, Any]]]:
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def _provisioned_uid() -> str:
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(sources) == 1
    return sources[0]["uid"]


# --------------------------------------------------------------------------- provisioning


def test_datasource_is_provisioned_with_a_fixed_uid():
    doc = yaml.safe_load(DATASOURCES.read_text())
    assert doc["apiVersion"] == 1
    (source,) = doc["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    assert source["url"] == "http://prometheus:9090"  # the compose service
    assert source["uid"] == "dualtrack-prometheus" and source["isDefault"] is True
    assert source["jsonData"]["timeInterval"] == "15s"  # prometheus.yml's scrape_interval


def test_dashboard_provider_reads_the_dashboards_folder():
    doc = yaml.safe_load(PROVIDERS.read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"  # where docker-compose.yml mounts them


# --------------------------------------------------------------------------- structure


def test_the_three_dashboards_exist_with_unique_uids_and_titles():
    assert sorted(DASHBOARDS) == ["adapter", "overview", "resources"]
    uids = [d["uid"] for d in DASHBOARDS.values()]
    titles = [d["title"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)
    for uid in uids:
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", uid), uid


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name: str):
    d = DASHBOARDS[name]
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert d.get("id") is None, "provisioned dashboards carry no database id"
    assert "dualtrack" in d["tags"]
    panels = list(_panels(d))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    cells: Dict[Tuple[int, int], int] = {}
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["type"]
        assert panel.get("title"), panel["id"]
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{name}: panels {cells[(x, y)]} and {panel['id']} overlap"
                cells[(x, y)] = panel["id"]
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{name}: panel {panel['title']!r} has no description"
        targets = panel["targets"]
        assert targets, panel["title"]
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in targets:
            assert target["expr"].strip(), f"{panel['title']} {target['refId']}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_datasource_references_resolve(name: str):
    d = DASHBOARDS[name]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds_var = variables.get("datasource")
    assert ds_var is not None and ds_var["type"] == "datasource" and ds_var["query"] == "prometheus"
    valid = {"${datasource}", "$datasource", _provisioned_uid()}

    def check(ref: Any, where: str) -> None:
        assert isinstance(ref, dict), f"{where}: datasource must be an object with a uid, got {ref!r}"
        assert ref.get("type") == "prometheus" and ref.get("uid") in valid, f"{where}: {ref}"

    for panel in _panels(d):
        if panel["type"] == "row":
            continue
        check(panel.get("datasource"), panel["title"])
        for target in panel["targets"]:
            check(target.get("datasource"), f"{panel['title']} {target['refId']}")
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            check(var.get("datasource"), f"variable {var['name']}")


def _used_names(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _used_names(v)
    elif isinstance(value, list):
        for v in value:
            yield from _used_names(v)
    elif isinstance(value, str):
        for m in VAR_REF.finditer(value):
            yield next(g for g in m.groups() if g)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_variable_used_exists_and_every_variable_is_used(name: str):
    d = DASHBOARDS[name]
    defined = [v["name"] for v in d["templating"]["list"]]
    assert len(defined) == len(set(defined))
    used = set(_used_names(d["panels"])) | set(_used_names(d["templating"]["list"]))
    unknown = used - set(defined) - set(BUILTINS)
    assert not unknown, f"{name} uses undefined variables {sorted(unknown)}"
    unused = set(defined) - used
    assert not unused, f"{name} defines unused variables {sorted(unused)}"
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            own = set(_used_names(var["query"]))
            assert var["name"] not in own, f"variable {var['name']} refers to itself"
            earlier = defined[: defined.index(var["name"])]
            assert own <= set(earlier), f"variable {var['name']} uses a variable defined after it"
    assert "instance" in defined, f"{name} has no instance variable"


def test_query_class_is_selectable_where_query_classes_exist():
    for name in ("overview", "adapter"):
        assert "query_class" in {v["name"] for v in DASHBOARDS[name]["templating"]["list"]}


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackfilledStack]:
    stack = backfilled_stack(tmp_path_factory.mktemp("stack"), rule_files=RULE_FILES)
    yield stack
    stack.close()


def _regex_escape(value: str) -> str:
    # Grafana's escaping of a variable value inside a PromQL =~ regex: regex
    # metacharacters get a backslash, written doubled inside a PromQL string.
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", value)


def _substitute(text: str, values: Dict[str, List[str]]) -> str:
    def repl(m: "re.Match[str]") -> str:
        name = next(g for g in m.groups() if g)
        if name in BUILTINS:
            return BUILTINS[name]
        chosen = values[name]
        if len(chosen) == 1:
            return _regex_escape(chosen[0])
        return "(" + "|".join(_regex_escape(v) for v in chosen) + ")"
    return VAR_REF.sub(repl, text)


def _label_values(stack: BackfilledStack, query: str) -> List[str]:
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
    assert m, f"unsupported variable query {query!r} (use label_values(selector, label))"
    selector, label = m.groups()
    values = stack.prom.api(f"label/{label}/values", {
        "match[]": selector, "start": stack.history.start, "end": stack.history.end})
    return sorted(values)


def _resolve_variables(stack: BackfilledStack, dashboard: Dict[str, Any]) -> Dict[str, List[str]]:
    """Each variable's values as Grafana would list them, 'All' selected."""
    values: Dict[str, List[str]] = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] == "datasource":
            values[var["name"]] = [_provisioned_uid()]
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        assert query == var["definition"], f"variable {var['name']}: definition and query differ"
        found = _label_values(stack, _substitute(query, values))
        assert found, f"variable {var['name']}: {query} has no values"
        values[var["name"]] = found
    return values


@pytest.mark.prometheus
def test_variables_list_the_routers_adapter_and_query_classes(stack: BackfilledStack):
    overview = _resolve_variables(stack, DASHBOARDS["overview"])
    assert overview["instance"] == [ROUTER_A, ROUTER_B]
    assert set(overview["query_class"]) >= {"short", "medium", "long"}
    adapter = _resolve_variables(stack, DASHBOARDS["adapter"])
    assert adapter["adapter"] == [ADAPTER]
    assert adapter["instance"] == [ROUTER_A, ROUTER_B]
    assert _resolve_variables(stack, DASHBOARDS["resources"])["instance"] == [ROUTER_A, ROUTER_B]


def _finite(samples: List[Tuple[Dict[str, str], float]]) -> bool:
    return any(math.isfinite(v) for _, v in samples)


@pytest.mark.prometheus
@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_query_returns_data_from_real_prometheus(stack: BackfilledStack, name: str):
    d = DASHBOARDS[name]
    values = _resolve_variables(stack, d)
    at = stack.query_time
    empty = []
    for panel, target in _queries(d):
        key = (d["uid"], panel["title"], target["refId"])
        expr = _substitute(target["expr"], values)
        assert "$" not in expr, f"{key}: unsubstituted variable in {expr}"
        samples = stack.prom.query(expr, time=at)  # a PromQL error raises here
        if panel["type"] == "timeseries":
            # What Grafana runs for a time series: a range query over the history.
            series = stack.prom.query_range(expr, start=stack.history.start + 300, end=at, step=60)
            assert bool(series) == bool(samples), f"{key}: range and instant queries disagree"
        if key in NO_DATA_EXPECTED:
            assert not samples, f"{key} is listed in NO_DATA_EXPECTED but has data now: drop the exemption"
            continue
        if not _finite(samples):
            empty.append(f"{panel['title']} [{target['refId']}]: {expr} -> {samples[:3]}")
    assert not empty, "panel queries without data:\n" + "\n".join(empty)


def test_every_no_data_exemption_names_a_real_query():
    known = {(d["uid"], p["title"], t["refId"]) for d in DASHBOARDS.values() for p, t in _queries(d)}
    assert set(NO_DATA_EXPECTED) <= known


@pytest.mark.prometheus
def test_machine_panels_show_values_against_their_limits(stack: BackfilledStack):
    """Spot checks that the panels show what they claim, not just something."""
    values = _resolve_variables(stack, DASHBOARDS["resources"])
    at = stack.query_time
    panels = {p["title"]: p for p in _panels(DASHBOARDS["resources"])}

    def series(title: str, ref: str) -> Dict[str, float]:
        target = next(t for t in panels[title]["targets"] if t["refId"] == ref)
        return {s[0].get("instance", ""): s[1] for s in stack.prom.query(_substitute(target["expr"], values), time=at)}

    used, limit = series("Application memory vs limit", "A"), series("Application memory vs limit", "B")
    assert set(used) == set(limit) == {ROUTER_A, ROUTER_B}
    assert all(0 < used[i] < limit[i] for i in used)
    # Only router-a has a battery; its threshold line appears only there, and it ran low.
    charge, threshold = series("Battery charge vs threshold", "A"), series("Battery charge vs threshold", "B")
    assert set(charge) == set(threshold) == {ROUTER_A}
    assert charge[ROUTER_A] < threshold[ROUTER_A] == pytest.approx(0.2)
    gpu = series("GPU memory, share of limit", "A")
    assert set(gpu) == {ROUTER_A, ROUTER_B} and all(0 < v < 1 for v in gpu.values())
