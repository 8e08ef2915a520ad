"""docker-compose.yml, the Dockerfile and .dockerignore, without a Docker engine.

Docker does not run on the project's machines (and the ``docker compose``
plugin is not installed), so the compose file is validated with a real
validator that needs no engine: the official Compose Specification JSON
schema (vendored in tests/data/, see its README for the source), checked
with ``jsonschema``, after the same YAML loading compose does (anchors and
``<<`` merge keys resolved). The schema catches unknown keys, wrong types
and malformed ports, healthchecks and depends_on conditions.

On top of the schema, the checks ``docker compose config`` and ``up`` would
make or that would only show at run time: every referenced service and
named volume exists, every bind-mounted file exists in the repository, and
the topology agrees with prometheus.yml (scrape targets and Alertmanager are
compose services on the right ports), the Grafana provisioning (datasource
URL, dashboards path) and the adapter/router commands (one shared
preferences file on a shared volume).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Dict, List

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"


def _compose() -> Dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def _errors(doc: Any) -> List[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in _validator().iter_errors(doc)]


def _flag(command: List[str], name: str) -> str:
    return command[command.index(name) + 1]


# --------------------------------------------------------------------------- the validator


def test_the_vendored_schema_is_the_official_one():
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("broken, why", [
    ({"services": {"x": {"image": "a", "imagee": "typo"}}}, "unknown key"),
    ({"services": {"x": {"image": "a", "ports": "9090:9090"}}}, "ports must be a list"),
    ({"services": {"x": {"image": "a", "depends_on": {"y": {"condition": "service_ready"}}}}}, "bad condition"),
    ({"services": {"x": {"image": "a", "healthcheck": {"test": ["CMD"], "timeout_s": 3}}}}, "bad healthcheck key"),
    ({"services": {"x": {"image": "a", "command": {"run": "demo"}}}}, "a mapping as command"),
    ({"services": {"x": {"image": "a"}}, "volume": {}}, "unknown top-level key"),
])
def test_the_validator_rejects_broken_compose_files(broken: Dict[str, Any], why: str):
    assert _errors(broken), f"the schema accepted a compose file with {why}"


# --------------------------------------------------------------------------- docker-compose.yml


def test_compose_file_is_valid_against_the_compose_specification():
    errors = _errors(_compose())
    assert not errors, "docker-compose.yml breaks the Compose Specification:\n" + "\n".join(errors)


def test_compose_runs_the_whole_stack():
    services = _compose()["services"]
    assert set(services) == {"router", "adapter", "prometheus", "alertmanager", "grafana"}
    for name in ("prometheus", "alertmanager", "grafana"):
        image = services[name]["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: pin a release, got {image}"
    for name in ("router", "adapter"):
        assert services[name]["build"]["context"] == "."
        assert (ROOT / services[name]["build"]["dockerfile"]).is_file()
        assert services[name]["image"] == "dualtrack:local"


def test_references_resolve_and_bind_mounts_exist():
    doc = _compose()
    services, volumes = doc["services"], set(doc.get("volumes", {}))
    used_volumes = set()
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for mount in service.get("volumes", []):
            source, target = mount.split(":")[:2]
            assert target.startswith("/"), mount
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"
                used_volumes.add(source)
    assert used_volumes == volumes, f"declared but unused volumes: {volumes - used_volumes}"


def _published(service: Dict[str, Any]) -> Dict[int, int]:
    out = {}
    for port in service.get("ports", []):
        host, container = str(port).split(":")
        out[int(container)] = int(host)
    return out


def test_prometheus_targets_are_the_compose_services():
    doc = _compose()
    services = doc["services"]
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    targets = {c["job_name"]: [t for sc in c["static_configs"] for t in sc["targets"]] for c in config["scrape_configs"]}
    router_cmd, adapter_cmd = services["router"]["command"], services["adapter"]["command"]
    assert targets["dualtrack-router"] == [f"router:{_flag(router_cmd, '--metrics-port')}"]
    assert targets["dualtrack-adapter"] == [f"adapter:{_flag(adapter_cmd, '--metrics-port')}"]
    for cmd in (router_cmd, adapter_cmd):
        assert _flag(cmd, "--metrics-host") == "0.0.0.0", "a metrics port bound to loopback is unreachable from prometheus"
    (am,) = [t for a in config["alerting"]["alertmanagers"] for sc in a["static_configs"] for t in sc["targets"]]
    host, port = am.split(":")
    assert host in services and int(port) in _published(services[host])
    # The files prometheus.yml names are mounted beside it.
    mounted = {m.split(":")[1] for m in services["prometheus"]["volumes"]}
    assert _flag_value(services["prometheus"]["command"], "--config.file") in mounted
    for rule_file in config["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in mounted


def _flag_value(command: List[str], name: str) -> str:
    (value,) = [c.split("=", 1)[1] for c in command if c.startswith(name + "=")]
    return value


def test_adapter_and_router_share_the_preferences_file():
    services = _compose()["services"]
    router, adapter = services["router"], services["adapter"]
    assert router["command"][:2] == ["demo", "--headless"]
    assert adapter["command"][0] == "adapter"
    path = _flag(adapter["command"], "--output")
    assert _flag(router["command"], "--preferences-file") == path
    shared = {m for m in router["volumes"] if not m.startswith(".")} & {m for m in adapter["volumes"] if not m.startswith(".")}
    assert any(path.startswith(m.split(":")[1] + "/") for m in shared), "the preferences file is not on a shared volume"
    assert _flag(adapter["command"], "--prometheus-url") == "http://prometheus:9090"
    assert adapter["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert "healthcheck" in services["prometheus"]


def test_grafana_is_provisioned_from_the_repository():
    services = _compose()["services"]
    grafana = services["grafana"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in grafana["volumes"]}
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/dashboards.yml").read_text())["providers"]
    assert mounts["./grafana/dashboards"] == providers[0]["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "grafana/dashboards" / Path(home).name).is_file()
    source = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and 9090 in _published(services["prometheus"])


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile() -> List[str]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_dockerfile_builds_the_package_on_python_slim_as_a_non_root_user():
    lines = _dockerfile()
    assert lines[0] == "FROM python:3.11-slim"
    assert any(line.startswith("RUN ") and "pip install ." in line for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    assert [line for line in lines if line.startswith("ENTRYPOINT")] == ['ENTRYPOINT ["dualtrack"]']
    exposed = {p for line in lines if line.startswith("EXPOSE ") for p in line.split()[1:]}
    assert exposed == {"9464", "9465"}
    # The shared volume's mount point exists and belongs to that user.
    assert any("mkdir -p /shared" in line and "chown" in line for line in lines)


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for needed in ("pyproject.toml", "README.md", "src", "rules", "scenarios"):
        assert needed not in patterns, f".dockerignore drops {needed}, which `pip install .` needs"
    for junk in (".git", ".venv", "tests"):
        assert junk in patterns
