"""Security: what an attacker-controlled file, a careless flag or a hostile
server can and cannot do.

* YAML is only ever loaded safely: Python tags are refused and never run;
  the source tree has no unsafe YAML call, no eval/exec, no shell.
* /metrics binds loopback unless told otherwise (optimizer, adapter, demo);
  TLS with client certificates holds against a certificate from another CA
  and against a real Prometheus without one (extends test_exposition.py).
* Prometheus credentials come from the environment or files only, and never
  appear in logs (at DEBUG), error messages, the adapter's /metrics or the
  preferences file, even when the server echoes them back.
* The preferences file gets exactly its configured mode whatever the umask,
  and is only ever written inside its configured folder.
* Nothing from configuration reaches PromQL unescaped; label values with
  quotes, backslashes and newlines stay literal through a real Prometheus.

Certificates are generated in the test with openssl; Prometheus is the real
binary (tests/support/prometheus.py).
"""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import psutil
import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry

from dualtrack import DualTrackOptimizer, OptimizationConfig
from dualtrack.adapter.loop import Adapter, AdapterSettings
from dualtrack.adapter.prometheus_source import SIGNAL_LABEL, PrometheusSource
from dualtrack.adapter.promql import PromQLClient, escape_label_value
from dualtrack.adapter.signals import Signal, SignalValues
from dualtrack.adapter.strategy import load_strategies
from dualtrack.cli import adapter_cmd, build_parser, main
from dualtrack.errors import ConfigError
from dualtrack.simulation.scenario import load_scenario
from support.fakehttp import FakeHTTPServer
from support.processes import stop
from support.prometheus import PrometheusServer

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- helpers


class Proc:
    """A ``python -m dualtrack`` child whose output is collected while it runs."""

    def __init__(self, args: List[str], *, env: Optional[Dict[str, str]] = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "dualtrack", *args], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out: List[str] = []
        self.err: List[str] = []
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True)]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, sink: List[str]) -> None:
        for line in stream:
            sink.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the readers drain
                value = predicate()
                if value:
                    return value
                raise AssertionError(f"exited ({self.proc.returncode}) before {what}:\n{self.stderr[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.stderr[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> int:
        code = stop(self.proc, timeout=20)
        for reader in self._readers:
            reader.join(timeout=5)
        return code


def listening_addresses(pid: int) -> List[Tuple[str, int]]:
    return [(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN]


def good_answer(signal_name: str = "memory_used_ratio", value: str = "0.5") -> Dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {SIGNAL_LABEL: signal_name}, "value": [time.time(), value]}]}}


def adapter_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALTRACK_")}
    env.update(extra)
    return env


# --------------------------------------------------------------------------- YAML is loaded safely

PAYLOADS = {
    "os.system": "!!python/object/apply:os.system ['touch {sentinel}']",
    "subprocess.Popen": "!!python/object/new:subprocess.Popen [['touch', '{sentinel}']]",
    "os.mkdir": "!!python/object/apply:os.mkdir ['{sentinel}']",
    "python/name": "!!python/name:os.system",
    "python/module": "!!python/module:os",
}


def _load_strategy(path: Path) -> Any:
    return load_strategies(path)


def _load_scenario(path: Path) -> Any:
    return load_scenario(path)


def _load_config(path: Path) -> Any:
    return OptimizationConfig.from_yaml(path)


def _load_adapter_config(path: Path) -> Any:
    args = build_parser().parse_args(["adapter", "--config", str(path)])
    return adapter_cmd.resolve(args, environ={})


LOADERS = {"strategy": _load_strategy, "scenario": _load_scenario, "optimizer config": _load_config,
           "adapter --config": _load_adapter_config}
#: where each kind of file would carry a string, so the tag sits where a value is expected
NESTED = {"strategy": "strategy: x\ndescription: {payload}\n", "scenario": "name: x\ndescription: {payload}\n",
          "optimizer config": "metrics_host: {payload}\n", "adapter --config": "prometheus_url: {payload}\n"}


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
@pytest.mark.parametrize("kind", LOADERS, ids=LOADERS.keys())
@pytest.mark.parametrize("placement", ["document", "nested"])
def test_python_yaml_tags_are_refused_and_nothing_executes(tmp_path: Path, kind: str, payload: str,
                                                           placement: str) -> None:
    """A strategy, scenario, optimizer-config or adapter --config file carrying !!python/object/apply:os.system (and Popen, mkdir, name, module tags), as the whole document or as a value: a ConfigError naming the file, and the payload's sentinel file is never created."""
    sentinel = tmp_path / "pwned"
    text = payload.format(sentinel=sentinel)
    if placement == "nested":
        text = NESTED[kind].format(payload=text)
    path = tmp_path / "hostile.yaml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        LOADERS[kind](path)
    assert info.value.source == str(path)
    assert "python" in str(info.value) or "tag" in str(info.value)
    time.sleep(0.05)  # a spawned 'touch' would have landed by now
    assert not sentinel.exists()


def test_the_payloads_are_live_under_an_unsafe_loader(tmp_path: Path) -> None:
    """Control for the test above: PyYAML's unsafe loader does run the os.mkdir payload, so the sentinel check is meaningful."""
    sentinel = tmp_path / "pwned"
    yaml.unsafe_load(PAYLOADS["os.mkdir"].format(sentinel=sentinel))
    assert sentinel.is_dir()


def test_the_cli_refuses_tagged_rule_and_config_files_and_runs_nothing(tmp_path: Path) -> None:
    """`dualtrack rules check` on a tagged rule file and `dualtrack adapter --config` on a tagged config: exit status 2 or 1 with the file named, no sentinel created."""
    sentinel = tmp_path / "pwned"
    rule = tmp_path / "rules.yaml"
    rule.write_text(f"strategy: !!python/object/apply:os.system ['touch {sentinel}']\n", encoding="utf-8")
    config = tmp_path / "adapter.yaml"
    config.write_text(f"output: !!python/object/apply:os.system ['touch {sentinel}']\n", encoding="utf-8")
    checked = subprocess.run([sys.executable, "-m", "dualtrack", "rules", "check", str(rule)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode != 0 and str(rule) in checked.stdout + checked.stderr
    adapter = subprocess.run([sys.executable, "-m", "dualtrack", "adapter", "--config", str(config), "--once"],
                             capture_output=True, text=True, timeout=60, env=adapter_env())
    assert adapter.returncode == 2 and str(config) in adapter.stderr
    assert "Traceback" not in checked.stderr + adapter.stderr
    assert not sentinel.exists()


SOURCE_DIRS = ("src", "benchmarks", "tools", "tests")
UNSAFE_YAML_FUNCS = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "load_all"}
UNSAFE_YAML_LOADERS = {"Loader", "UnsafeLoader", "FullLoader", "CLoader", "CUnsafeLoader", "CFullLoader"}
SAFE_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
FORBIDDEN_CALLS = {("os", "system"), ("os", "popen"), ("pickle", "load"), ("pickle", "loads"),
                   ("marshal", "loads"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput")}


def _python_files() -> List[Path]:
    files: List[Path] = []
    for folder in SOURCE_DIRS:
        files.extend(p for p in (ROOT / folder).rglob("*.py") if ".venv" not in p.parts)
    return sorted(files)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _problems(path: Path) -> List[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: List[str] = []
    where = lambda node: f"{path.relative_to(ROOT)}:{node.lineno}"  # noqa: E731
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("yaml", "os", "pickle", "marshal"):
            for alias in node.names:
                if (node.module == "yaml" and alias.name in UNSAFE_YAML_FUNCS | UNSAFE_YAML_LOADERS | {"load"}) or \
                        (node.module, alias.name) in FORBIDDEN_CALLS:
                    found.append(f"{where(node)}: from {node.module} import {alias.name}")
        if isinstance(node, ast.Attribute) and _dotted(node.value) == "yaml" and node.attr in UNSAFE_YAML_LOADERS:
            found.append(f"{where(node)}: yaml.{node.attr}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
            found.append(f"{where(node)}: {name}()")
        if tuple(name.split(".")) in FORBIDDEN_CALLS:
            found.append(f"{where(node)}: {name}()")
        if name.startswith("yaml.") and name.split(".", 1)[1] in UNSAFE_YAML_FUNCS:
            found.append(f"{where(node)}: {name}()")
        if name == "yaml.load":
            loader = next((k.value for k in node.keywords if k.arg == "Loader"),
                          node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader).rsplit(".", 1)[-1] not in SAFE_LOADERS:
                found.append(f"{where(node)}: yaml.load() without a safe Loader")
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                found.append(f"{where(node)}: shell={ast.unparse(keyword.value)}")
    return found


def test_the_source_tree_has_no_unsafe_yaml_no_eval_no_exec_no_shell() -> None:
    """Every Python file of src/, benchmarks/, tools/ and tests/, parsed: no yaml.load without SafeLoader (nor unsafe_load/full_load/Loader), no eval()/exec(), no os.system/os.popen, no shell=True, no pickle/marshal loads (the one yaml.unsafe_load is this file's own control)."""
    problems = [p for f in _python_files() for p in _problems(f)]
    me = Path(__file__).relative_to(ROOT)
    allowed = [p for p in problems if p.startswith(f"{me}:") and p.endswith("yaml.unsafe_load()")]
    assert len(allowed) == 1 and [p for p in problems if p not in allowed] == [], problems
    # The grep a reviewer would run finds nothing either (comments and strings aside).
    pattern = re.compile(r"^\s*[^#\s].*(\byaml\.load\(|\beval\(|\bexec\(|shell\s*=\s*True|\bos\.system\()")
    lines = [f"{f.relative_to(ROOT)}:{n}" for f in _python_files() if f.name != Path(__file__).name
             for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
             if pattern.search(line) and "SafeLoader" not in line]
    assert lines == []


# --------------------------------------------------------------------------- loopback by default


def test_the_optimizer_listens_on_loopback_only_by_default() -> None:
    """OptimizationConfig's default metrics_host is 127.0.0.1 and a started optimizer's listening socket, as the kernel reports it, is bound to 127.0.0.1 only."""
    assert OptimizationConfig().metrics_host == "127.0.0.1"
    optimizer = DualTrackOptimizer(OptimizationConfig(metrics_port=0, enable_resource_monitoring=False))
    optimizer.start()
    try:
        port = optimizer._server.port
        bound = [addr for addr in listening_addresses(os.getpid()) if addr[1] == port]
        assert bound == [("127.0.0.1", port)]
    finally:
        optimizer.stop()


def test_the_adapter_serves_its_own_metrics_on_loopback_only_by_default(fake_http: FakeHTTPServer,
                                                                        tmp_path: Path) -> None:
    """`dualtrack adapter` with no --metrics-host: the parser default is 127.0.0.1 and the running process listens on 127.0.0.1 only."""
    defaults = build_parser().parse_args(["adapter"])
    assert adapter_cmd.resolve(defaults, environ={})["metrics_host"] == "127.0.0.1"
    fake_http.respond(200, good_answer())
    proc = Proc(["--log-level", "INFO", "adapter", "--prometheus-url", fake_http.url, "--output",
                 str(tmp_path / "prefs.json"), "--interval", "5", "--metrics-port", "0"], env=adapter_env())
    try:
        url = proc.wait_for(lambda: re.search(r"serving the adapter's metrics on (\S+)", proc.stderr), "/metrics")
        port = int(url.group(1).rsplit(":", 1)[1].split("/")[0])
        assert url.group(1) == f"http://127.0.0.1:{port}/metrics"
        assert listening_addresses(proc.proc.pid) == [("127.0.0.1", port)]
    finally:
        assert proc.stop() == 0, proc.stderr[-2000:]


def test_the_demo_listens_on_loopback_only_by_default(tmp_path: Path) -> None:
    """`dualtrack demo` with no --metrics-host: its /metrics socket is bound to 127.0.0.1 only."""
    proc = Proc(["demo", "--headless", "--duration", "60", "--metrics-port", "0", "--no-chart"])
    try:
        bound = proc.wait_for(lambda: listening_addresses(proc.proc.pid), "the demo's /metrics socket", timeout=60)
        assert [ip for ip, _ in bound] == ["127.0.0.1"], bound
    finally:
        proc.stop()


# --------------------------------------------------------------------------- TLS and client certificates


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """Two CAs made here: ours (server certificate for 127.0.0.1, a client certificate) and a rogue one (a client certificate)."""
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "rogue-ca"):
        (d / f"{ca}.cnf").write_text(
            f"[req]\ndistinguished_name=dn\nx509_extensions=v3\nprompt=no\n[dn]\nCN=dualtrack {ca}\n"
            "[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
            "subjectKeyIdentifier=hash\n")
        openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-config",
                f"{ca}.cnf", cwd=d)
    for name, ca, usage, san in (("server", "ca", "serverAuth", "subjectAltName=IP:127.0.0.1\n"),
                                 ("client", "ca", "clientAuth", ""), ("rogue", "rogue-ca", "clientAuth", "")):
        (d / f"{name}.ext").write_text(
            f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
            f"subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n{san}")
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=dualtrack {name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return {p.name: str(p) for p in d.iterdir() if p.suffix in (".pem", ".key")}


def tls_config(pki: Dict[str, str], tmp_path: Path) -> OptimizationConfig:
    """The TLS settings as an operator writes them: a YAML file read by OptimizationConfig.from_yaml."""
    path = tmp_path / "optimizer.yaml"
    path.write_text(yaml.safe_dump({
        "metrics_port": 0, "enable_resource_monitoring": False, "metrics_tls_certfile": pki["server.pem"],
        "metrics_tls_keyfile": pki["server.key"], "metrics_tls_client_cafile": pki["ca.pem"]}))
    return OptimizationConfig.from_yaml(path)


def test_a_client_certificate_from_another_ca_is_refused(pki: Dict[str, str], tmp_path: Path) -> None:
    """With metrics_tls_client_cafile set (from a YAML config): a client certificate signed by another CA is refused, ours is served, and the server keeps serving after the refusal."""
    optimizer = DualTrackOptimizer(tls_config(pki, tmp_path))
    optimizer.start()
    try:
        url = optimizer._server.url
        assert url.startswith("https://127.0.0.1:")
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url, verify=pki["ca.pem"], cert=(pki["rogue.pem"], pki["rogue.key"]), timeout=5)
        ok = requests.get(url, verify=pki["ca.pem"], cert=(pki["client.pem"], pki["client.key"]), timeout=5)
        assert ok.status_code == 200 and "dualtrack_requests_total" in ok.text
    finally:
        optimizer.stop()


@pytest.mark.prometheus
def test_a_real_prometheus_scrapes_the_tls_endpoint_only_with_a_client_certificate(
        pki: Dict[str, str], tmp_path: Path) -> None:
    """A real Prometheus scrapes the optimizer's TLS /metrics: up with our CA and a client certificate; down with the CA but no certificate, with a rogue-CA certificate, and over plain HTTP."""
    optimizer = DualTrackOptimizer(tls_config(pki, tmp_path))
    optimizer.start()
    target = f"127.0.0.1:{optimizer._server.port}"

    def job(name: str, scheme: str = "https", **tls: str) -> Dict[str, Any]:
        config: Dict[str, Any] = {"job_name": name, "scheme": scheme, "static_configs": [{"targets": [target]}]}
        if scheme == "https":
            config["tls_config"] = {"ca_file": pki["ca.pem"], **tls}
        return config

    prom = PrometheusServer(tmp_path / "prom", scrape_configs=[
        job("with-cert", cert_file=pki["client.pem"], key_file=pki["client.key"]),
        job("no-cert"), job("rogue-cert", cert_file=pki["rogue.pem"], key_file=pki["rogue.key"]),
        job("plain", scheme="http")])
    try:
        prom.start()
        deadline = time.monotonic() + 60
        while True:
            health = {t["labels"]["job"]: t["health"] for t in prom.targets_status()}
            if len(health) == 4 and "unknown" not in health.values():
                break
            assert time.monotonic() < deadline, health
            time.sleep(0.1)
        assert health == {"with-cert": "up", "no-cert": "down", "rogue-cert": "down", "plain": "down"}
        samples = prom.wait_for('dualtrack_concurrency_limit{job="with-cert"}')
        assert samples and samples[0][1] == 4.0
    finally:
        prom.stop()
        optimizer.stop()


# --------------------------------------------------------------------------- credentials

SECRET_WORDS = re.compile(r"token|password|passwd|secret|api[-_]?key|credential|auth", re.I)


def test_no_command_line_flag_takes_a_secret() -> None:
    """Every option of every dualtrack sub-command, from the argparse parser: an option named like a credential takes a file (…-file) or a user name, never the secret itself."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    seen = []
    for name, command in sub.choices.items():
        for action in command._actions:
            for option in action.option_strings:
                seen.append(option)
                if SECRET_WORDS.search(option):
                    assert option.endswith("-file") or option == "--basic-auth-user", f"{name} {option}"
    assert "--bearer-token-file" in seen and "--basic-auth-password-file" in seen
    assert not any(o in seen for o in ("--bearer-token", "--password", "--basic-auth-password", "--token"))


def test_a_password_in_the_command_line_url_is_refused_without_echoing_it(capsys: pytest.CaptureFixture[str],
                                                                          tmp_path: Path) -> None:
    """`--prometheus-url http://user:PASSWORD@host` (the one flag that could carry a secret): exit status 2, told where credentials go, the password not echoed; the same URL from DUALTRACK_PROMETHEUS_URL is accepted."""
    password = "hunter2-on-the-cli"
    status = main(["adapter", "--prometheus-url", f"http://ops:{password}@127.0.0.1:9", "--output",
                   str(tmp_path / "p.json"), "--once"])
    out, err = capsys.readouterr()
    assert status == 2 and "--prometheus-url" in err and "DUALTRACK_PROMETHEUS_PASSWORD" in err
    assert password not in out + err
    args = build_parser().parse_args(["adapter"])
    values = adapter_cmd.resolve(args, environ={"DUALTRACK_PROMETHEUS_URL": f"http://ops:{password}@127.0.0.1:9"})
    _, client = adapter_cmd.build(values, once=True, dry_run=True)
    assert password not in repr(client) and password not in client.base_url


CREDENTIALS = ["env token", "token file", "basic password env", "basic password file"]


def _credential_args(kind: str, secret: str, tmp_path: Path) -> Tuple[List[str], Dict[str, str], str]:
    """(flags, environment, the Authorization header the server must see) for one way of giving a secret."""
    if kind == "env token":
        return [], {"DUALTRACK_PROMETHEUS_BEARER_TOKEN": secret}, f"Bearer {secret}"
    if kind == "token file":
        path = tmp_path / "token"
        path.write_text(secret + "\n")
        return ["--bearer-token-file", str(path)], {}, f"Bearer {secret}"
    basic = "Basic " + base64.b64encode(f"ops:{secret}".encode()).decode()
    if kind == "basic password env":
        return ["--basic-auth-user", "ops"], {"DUALTRACK_PROMETHEUS_PASSWORD": secret}, basic
    path = tmp_path / "password"
    path.write_text(secret + "\n")
    return ["--basic-auth-user", "ops", "--basic-auth-password-file", str(path)], {}, basic


@pytest.mark.parametrize("kind", CREDENTIALS)
def test_credentials_never_reach_logs_errors_metrics_or_the_preferences_file(fake_http: FakeHTTPServer,
                                                                            tmp_path: Path, kind: str) -> None:
    """The adapter at DEBUG with a secret from the env or a file, against a Prometheus that fails first (503, 502 and 401, each echoing the secret back) and then answers: the secret is sent, and appears in no stdout/stderr line (echoes are <redacted>), not on the adapter's /metrics, not in the preferences file."""
    secret = "s3cr3t-" + kind.replace(" ", "-") + "-7f1c"
    flags, env, header = _credential_args(kind, secret, tmp_path)
    fake_http.respond(503, {"status": "error", "errorType": "unavailable", "error": f"overloaded; token {secret}"})
    fake_http.respond(502, f"bad gateway for {secret} / {header}")
    fake_http.respond(401, {"status": "error", "errorType": "unauthorized", "error": f"who is {secret}?"})
    fake_http.respond(200, good_answer())
    output = tmp_path / "out" / "prefs.json"
    output.parent.mkdir()
    proc = Proc(["--log-level", "DEBUG", "adapter", "--prometheus-url", fake_http.url, "--output", str(output),
                 "--interval", "0.5", "--metrics-port", "0", *flags], env=adapter_env(**env))
    try:
        proc.wait_for(output.exists, "a published preferences file")
        url = re.search(r"serving the adapter's metrics on (\S+)", proc.stderr).group(1)
        metrics = requests.get(url, timeout=5).text
    finally:
        assert proc.stop() == 0, proc.stderr[-2000:]
    logs = proc.stdout + proc.stderr
    assert "<redacted>" in logs  # the echoes went through the log, scrubbed
    assert 'dualtrack_adapter_query_errors_total{type="unavailable"}' in metrics
    assert float(re.search(r'dualtrack_adapter_query_errors_total\{type="auth"\} (\S+)', metrics).group(1)) >= 1
    encoded = header.split(" ", 1)[1]
    for text, where in ((logs, "logs"), (metrics, "/metrics"), (output.read_text(), "preferences file")):
        assert secret not in text and encoded not in text, where
    assert any(r.headers.get("Authorization") == header for r in fake_http.requests)
    assert sorted(p.name for p in output.parent.iterdir()) == ["prefs.json"]


@pytest.mark.parametrize("env, flags", [
    ({"DUALTRACK_PROMETHEUS_BEARER_TOKEN": "s3cr3t-with\nnewline"}, []),
    ({"DUALTRACK_PROMETHEUS_BEARER_TOKEN": " s3cr3t-padded "}, []),
    ({"DUALTRACK_PROMETHEUS_URL": "http://ops:s3cr3t-in-url@127.0.0.1:notaport"}, ["--prometheus-url-from-env"]),
    ({"DUALTRACK_PROMETHEUS_BEARER_TOKEN": "s3cr3t-twice"}, ["--bearer-token-file", "TOKENFILE"]),
], ids=["newline", "whitespace", "bad url", "two credentials"])
def test_credential_configuration_errors_do_not_echo_the_secret(tmp_path: Path, env: Dict[str, str],
                                                                flags: List[str]) -> None:
    """Misconfigured credentials (a token with a newline or padding, a URL with a password and a bad port, two credentials at once): exit status 2 with a clear message that never contains the secret."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cr3t-in-file\n")
    args = ["adapter", "--output", str(tmp_path / "p.json"), "--once"]
    if "--prometheus-url-from-env" not in flags:
        args += ["--prometheus-url", "http://127.0.0.1:9"]
    args += [str(token_file) if f == "TOKENFILE" else f for f in flags if f != "--prometheus-url-from-env"]
    proc = subprocess.run([sys.executable, "-m", "dualtrack", *args], capture_output=True, text=True, timeout=60,
                          env=adapter_env(**env))
    assert proc.returncode == 2, proc.stderr
    assert "dualtrack adapter:" in proc.stderr and "Traceback" not in proc.stderr
    assert "s3cr3t" not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- the preferences file


def _run_adapter_once(url: str, output: str, *extra: str, umask: int = -1) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dualtrack", "adapter", "--prometheus-url", url, "--output", output,
                           "--once", *extra], capture_output=True, text=True, timeout=60, env=adapter_env(),
                          umask=umask)


@pytest.mark.parametrize("mode, umask", [("0600", 0o077), ("0640", 0o000), ("0644", 0o077), (None, 0o027)])
def test_the_adapter_writes_its_file_mode_whatever_the_umask(fake_http: FakeHTTPServer, tmp_path: Path,
                                                            mode: Optional[str], umask: int) -> None:
    """`dualtrack adapter --file-mode M` under umasks 077, 000 and 027: the preferences file has exactly mode M (0644 when not given), explicit and umask-independent."""
    fake_http.respond(200, good_answer())
    output = tmp_path / "prefs.json"
    proc = _run_adapter_once(fake_http.url, str(output), *(["--file-mode", mode] if mode else []), umask=umask)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(output.stat().st_mode) == int(mode or "0644", 8)
    assert [p.name for p in tmp_path.iterdir()] == ["prefs.json"]


def test_the_adapter_replaces_a_symlinked_output_and_never_writes_outside_its_folder(fake_http: FakeHTTPServer,
                                                                                   tmp_path: Path) -> None:
    """The configured output is a symlink to a file in another folder: the adapter replaces the link with its own regular file; the file the link pointed to and its folder are untouched."""
    fake_http.respond(200, good_answer())
    folder, outside = tmp_path / "prefs", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    victim = outside / "passwd"
    victim.write_text("root:x:0:0::/root:/bin/sh\n")
    os.chmod(victim, 0o600)
    before = victim.stat()
    output = folder / "prefs.json"
    output.symlink_to(victim)
    proc = _run_adapter_once(fake_http.url, str(output), "--file-mode", "0644")
    assert proc.returncode == 0, proc.stderr
    assert not output.is_symlink() and output.is_file()
    assert json.loads(output.read_text())["sequence"] == 1
    assert victim.read_text() == "root:x:0:0::/root:/bin/sh\n"
    after = victim.stat()
    assert (after.st_mtime_ns, stat.S_IMODE(after.st_mode), after.st_ino) == \
        (before.st_mtime_ns, 0o600, before.st_ino)
    assert sorted(p.name for p in outside.iterdir()) == ["passwd"]
    assert sorted(p.name for p in folder.iterdir()) == ["prefs.json"]


def test_dot_dot_components_in_the_output_are_resolved_once(fake_http: FakeHTTPServer, tmp_path: Path) -> None:
    """--output a/../b/prefs.json writes b/prefs.json (the resolved folder) and nothing in a/; the temp file lives in b/ too."""
    fake_http.respond(200, good_answer())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    proc = _run_adapter_once(fake_http.url, str(tmp_path / "a" / ".." / "b" / "prefs.json"))
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "a").iterdir()) == []
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["prefs.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


# --------------------------------------------------------------------------- configuration and PromQL


@pytest.mark.parametrize("entry, field", [
    ({"name": "evil\n", "promql": "vector(1)"}, "signals[0].name"),
    ({"name": 'a"b', "promql": "vector(1)"}, "signals[0].name"),
    ({"name": "back\\slash", "promql": "vector(1)"}, "signals[0].name"),
    ({"name": "ok", "promql": "vector(1)", "labels": ["path\n"]}, "signals[0].labels"),
    ({"name": "ok", "promql": "vector(1)", "labels": ['le"']}, "signals[0].labels"),
])
def test_user_signal_names_and_labels_that_would_break_promql_are_refused_at_load(
        tmp_path: Path, entry: Dict[str, Any], field: str) -> None:
    """A user signal whose name or label would go into PromQL with a quote, backslash or (trailing) newline: a ConfigError naming the field at load, not a broken query every cycle."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"strategy": "s", "signals": [entry]}))
    with pytest.raises(ConfigError) as info:
        load_strategies(path)
    assert info.value.field == field and info.value.source == str(path)


@pytest.mark.parametrize("window", ["2m]) or vector(1) or rate(x[2m", "2m\n", "5 m", "", "1h1h", "2m offset 1h"])
def test_a_window_that_is_not_a_promql_duration_is_refused_at_start(tmp_path: Path, window: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A rate window that is not a PromQL duration (an injection attempt, a newline, a space, an offset): AdapterSettings raises a ConfigError on field window, PrometheusSource a ValueError, and the CLI exits 2."""
    with pytest.raises(ConfigError) as info:
        AdapterSettings(rules=("r",), strategy="balanced", output=str(tmp_path / "p.json"), window=window)
    assert info.value.field == "window"
    with pytest.raises(ValueError):
        PrometheusSource(PromQLClient("http://127.0.0.1:9"), window=window)
    status = main(["adapter", "--prometheus-url", "http://127.0.0.1:9", "--output", str(tmp_path / "p.json"),
                   "--window", window, "--once"])
    assert status == 2 and "window" in capsys.readouterr().err


def test_query_classes_that_are_not_label_safe_are_refused_at_start(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Query classes with a quote, a backslash or a newline (a metric label and a preferences key): the adapter refuses them at start (ConfigError on query_classes, CLI exit 2), not at the first per-class rule."""
    for bad in ('a"b', "back\\slash", "new\nline", "sp ace"):
        with pytest.raises(ConfigError) as info:
            AdapterSettings(rules=("r",), strategy="balanced", output=str(tmp_path / "p.json"),
                            query_classes=("short", bad))
        assert info.value.field == "query_classes"
    status = main(["adapter", "--prometheus-url", "http://127.0.0.1:9", "--output", str(tmp_path / "p.json"),
                   "--query-classes", 'short,lo"ng', "--once"])
    assert status == 2 and "query_classes" in capsys.readouterr().err


class RecordingClient:
    """A PromQLClient stand-in that records every query and answers with an empty vector."""

    def __init__(self) -> None:
        self.queries: List[str] = []

    def instant(self, expr: str, at: Any = None, deadline: Any = None) -> Any:
        from dualtrack.adapter.promql import InstantResult
        self.queries.append(expr)
        return InstantResult("vector", ())


PROMQL_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


def test_no_configuration_value_reaches_promql_except_as_an_escaped_literal(tmp_path: Path) -> None:
    """With query classes, rule selectors (label values with quotes, backslashes, newlines) and user signals configured, every string literal in every query the source sends is a fixed label name/value or an escaped signal name; the configured label values never appear."""
    marker_classes = ("zzclassmarker", "yyclassmarker")
    hostile = ['q"uote', "back\\slash", "new\nline"]
    quoted = lambda v: '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731  (condition syntax)
    rules = {"strategy": "s", "signals": [{"name": "tenant_load", "promql": "sum by (tenant) (up)",
                                           "labels": ["tenant"]}],
             "rules": [{"name": f"r{i}", "when": f"tenant_load{{tenant={quoted(v)}}} > 1 or "
                                                 f"latency_p95_seconds{{query_class={quoted(v)}}} > 1",
                        "actions": {"add": {"local_bias": 0.1}}} for i, v in enumerate(hostile)]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(rules, allow_unicode=True))
    client = RecordingClient()
    settings = AdapterSettings(rules=(str(path),), strategy="s", output=str(tmp_path / "p.json"),
                               query_classes=marker_classes)
    adapter = Adapter(settings, PrometheusSource(client, window="2m"), registry=CollectorRegistry())  # type: ignore[arg-type]
    assert adapter.run_cycle().result == "no_data"
    assert len(client.queries) == 2  # the batch and the user signal
    text = "\n".join(client.queries)
    for value in marker_classes + tuple(hostile):
        assert value not in text and escape_label_value(value) not in text
    names = {escape_label_value(s.name) for s in adapter.strategies.catalog}
    fixed = {SIGNAL_LABEL, "", "success", "error", "timeout", "cancelled", "local", "api"}  # the calls in flight
    literals = set(PROMQL_STRING.findall(text))
    assert literals - fixed - names - {f"_input_{n}" for n in
                                       ("requests", "buckets", "duration_sum", "duration_count", "cost", "tokens",
                                        "quality_sum", "quality_count", "rate_limited")} == set(), literals


HOSTILE_VALUES = ['a"b', "back\\slash", "trailing\\", 'both\\"', "new\nline", "tab\there\rcr", "unicodé ✓", "{}()=~,"]


@pytest.mark.prometheus
def test_label_values_with_quotes_backslashes_and_newlines_stay_literal_through_a_real_prometheus(
        prometheus_factory: Callable[..., PrometheusServer], tmp_path: Path) -> None:
    """A user signal whose PromQL carries hostile label values (quotes, backslashes, newlines, tabs, unicode) built with escape_label_value, and rules selecting each value: a real Prometheus returns them literally, the source keeps them, and every rule fires on its own value; a signal whose name has quotes and a newline (escaped by the source itself) comes back under its exact name."""
    prom = prometheus_factory()
    branches = " or ".join(f'label_replace(vector({i + 1}), "tenant", "{escape_label_value(v)}", "", "")'
                           for i, v in enumerate(HOSTILE_VALUES))
    quoted = lambda v: '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731  (condition syntax)
    rules = {"strategy": "s", "signals": [{"name": "tenant_load", "promql": branches, "labels": ["tenant"]}],
             "rules": [{"name": f"value_{i}", "when": f"tenant_load{{tenant={quoted(v)}}} == {i + 1}",
                        "actions": {"add": {"local_bias": 0.0}}} for i, v in enumerate(HOSTILE_VALUES)]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(rules, allow_unicode=True))
    source = PrometheusSource(PromQLClient(prom.url, timeout=5, retries=0), window="2m")
    settings = AdapterSettings(rules=(str(path),), strategy="s", output=str(tmp_path / "p.json"))
    adapter = Adapter(settings, source, registry=CollectorRegistry())
    result = adapter.run_cycle()
    assert result.result == "ok", result.error
    assert sorted(result.fired) == sorted(f"value_{i}" for i in range(len(HOSTILE_VALUES)))
    values = source.fetch(adapter.strategies.catalog)
    assert {dict(k)["tenant"] for k in values.series("tenant_load")} == set(HOSTILE_VALUES)
    assert values.errors == {}

    # The source's own escaping: a signal name no YAML file may declare, built directly.
    weird = Signal('we"ird\\name\nx', "", "", (), "vector(7)", builtin=False)
    got = SignalValues()
    assert source._fetch_one(got, weird, _WithSignal(weird), None, None) is None
    assert got.get(weird.name, {}) == 7.0


class _WithSignal:
    """The minimal catalog interface ``_store`` reads, holding one signal."""

    def __init__(self, signal: Signal) -> None:
        self.signal = signal

    def __contains__(self, name: object) -> bool:
        return name == self.signal.name

    def __getitem__(self, name: str) -> Signal:
        return self.signal
