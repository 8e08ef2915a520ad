"""Every script in examples/ runs, against fakes on loopback, so the examples cannot rot.

Each runs as its own process, the way a reader runs it, with its URLs and
ports pointed at fake servers on 127.0.0.1 and a handful of requests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from support.adapter_process import EMPTY_VECTOR, FakePrometheus
from support.fakehttp import FakeHTTPServer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

OPENAI_ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "fake",
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": "Paris."}}],
                 "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}


def run_example(name: str, *args: str, timeout: float = 120) -> str:
    """Run examples/<name> with ``args``; its output, or a failure with what it printed."""
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1")
    for variable in ("OPENAI_API_KEY", "DUALTRACK_LOCAL_URL", "DUALTRACK_API_URL", "PROMETHEUS_URL",
                     "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(variable, None)  # nothing from the machine running the tests: only the fakes
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture
def openai_servers() -> Iterator[List[FakeHTTPServer]]:
    """Two fake OpenAI-compatible servers on loopback: [local, api]."""
    with FakeHTTPServer() as local, FakeHTTPServer() as api:
        local.respond(200, OPENAI_ANSWER)
        api.respond(200, OPENAI_ANSWER)
        yield [local, api]


def test_every_example_is_tested() -> None:
    tested = {"optimizer_in_app.py", "router_openai_compatible.py", "litellm_router.py", "langgraph_graph.py",
              "multiprocess_metrics.py", "adapter_and_router.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested
    for path in EXAMPLES.glob("*.py"):
        assert path.read_text().startswith("#!/usr/bin/env python3\n\"\"\""), f"{path.name}: say what it shows"


def test_optimizer_in_app(free_port: Callable[[], int]) -> None:
    port = free_port()
    out = run_example("optimizer_in_app.py", "--requests", "30", "--metrics-port", str(port))
    counted = [line for line in out.splitlines() if " requests, success rate " in line]
    assert sum(int(line.split(": ")[1].split()[0]) for line in counted) == 30
    assert f"http://127.0.0.1:{port}/metrics:" in out


def test_router_against_openai_compatible_servers(openai_servers: List[FakeHTTPServer]) -> None:
    local, api = openai_servers
    out = run_example("router_openai_compatible.py", "--local-url", local.url + "/v1", "--api-url",
                      api.url + "/v1", "--requests", "4")
    assert out.count("Paris.") == 4
    assert len(local.requests) + len(api.requests) >= 4
    assert all(r.path == "/v1/chat/completions" for r in local.requests + api.requests)


def test_litellm_router(openai_servers: List[FakeHTTPServer]) -> None:
    local, api = openai_servers
    out = run_example("litellm_router.py", "--local-url", local.url + "/v1", "--api-url", api.url + "/v1",
                      "--requests", "3")
    assert out.count("Paris.") == 6
    recorded = [line for line in out.splitlines() if "calls recorded" in line]
    assert sum(int(line.split(": ")[1].split()[0]) for line in recorded if not line.startswith("parallel")) >= 6
    assert len(local.requests) + len(api.requests) >= 6


def test_litellm_router_with_mock_responses() -> None:
    out = run_example("litellm_router.py", "--mock", "--requests", "2")
    assert out.count("Paris (") == 4


def test_langgraph_graph(openai_servers: List[FakeHTTPServer]) -> None:
    local, api = openai_servers
    out = run_example("langgraph_graph.py", "--local-url", local.url + "/v1", "--api-url", api.url + "/v1",
                      "--requests", "4")
    assert out.count("Paris.") == 4
    assert "calls recorded" in out


def test_multiprocess_workers_share_one_metrics_endpoint(free_port: Callable[[], int]) -> None:
    out = run_example("multiprocess_metrics.py", "--workers", "2", "--requests", "10", "--port", str(free_port()))
    assert "= 20 model calls from 2 workers" in out


def test_adapter_process_and_router(tmp_path: Path) -> None:
    with FakePrometheus() as prometheus:
        prometheus.answer(200, EMPTY_VECTOR)  # no data yet: the adapter still publishes
        out = run_example("adapter_and_router.py", "--prometheus-url", prometheus.url, "--interval", "0.5",
                          "--output", str(tmp_path / "preferences.json"), "--requests", "5")
        assert prometheus.requests, "the adapter never queried Prometheus"
    assert "the adapter published" in out
    assert "from 'prometheus'" in out
    assert sum(1 for line in out.splitlines() if " -> " in line) == 5
