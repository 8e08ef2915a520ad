"""Shared pytest fixtures, by section. Add new sections below; keep each small."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

# No test reaches anything but loopback: litellm would fetch its price map from
# GitHub at import unless told to use the copy it ships.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from support.fakehttp import FakeHTTPServer  # noqa: E402
from support.net import free_port as _free_port  # noqa: E402
from support.prometheus import PrometheusServer  # noqa: E402

# --------------------------------------------------------------------------- net


@pytest.fixture
def free_port() -> Callable[[], int]:
    """``free_port()`` -> a loopback TCP port that was free a moment ago."""
    return _free_port


@pytest.fixture
def fake_http() -> Iterator[FakeHTTPServer]:
    """A started, scripted HTTP server on 127.0.0.1 (see support/fakehttp.py)."""
    with FakeHTTPServer() as server:
        yield server


# --------------------------------------------------------------------------- Prometheus


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """Start real Prometheus servers; all are stopped at teardown.

    ``prometheus_factory(targets=[("job", "127.0.0.1:8000")], rule_files=[...])``
    returns a started ``PrometheusServer`` (keyword arguments as its
    constructor). Pass ``start=False`` to get it stopped, e.g. to
    ``backfill_openmetrics()`` first and ``start()`` yourself.
    """
    servers: List[PrometheusServer] = []

    def make(*, start: bool = True, **options: Any) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prometheus-{len(servers)}", **options)
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.close()
