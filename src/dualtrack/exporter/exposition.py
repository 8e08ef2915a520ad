"""Serving ``/metrics``: by the optimizer itself, or by the host application.

Three ways, pick one:

1. **The optimizer serves it** (``OptimizationConfig(metrics_port=9464)``):
   binds ``metrics_host`` (default ``127.0.0.1``: loopback only, say
   ``0.0.0.0`` on purpose), with TLS when ``metrics_tls_certfile`` /
   ``metrics_tls_keyfile`` are set and client certificates required when
   ``metrics_tls_client_cafile`` is set. A port already in use is a
   ``MetricsPortInUse`` error at start, not a traceback from a thread.
2. **Your app serves it**: ``optimizer.registry`` is a normal
   ``CollectorRegistry`` (``generate_latest(optimizer.registry)``), and
   ``wsgi_app(optimizer)`` is a WSGI app to mount at ``/metrics``.
3. **Several worker processes** (gunicorn, uWSGI): set
   ``PROMETHEUS_MULTIPROC_DIR`` to an empty folder before the workers start;
   every worker records into its own files and ``multiprocess_registry()``
   adds them up at scrape time — counters and histograms sum across workers,
   ``dualtrack_requests_in_flight`` is the live sum. Scrape-time gauges
   (resources, constraint limits, preferences) are per process: pass one
   process's optimizer as ``extra=`` so they appear once. Exemplars are not
   supported by prometheus_client in this mode.
"""

from __future__ import annotations

import errno
import os
import ssl
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Protocol

from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess, start_http_server
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from ..config import OptimizationConfig
from ..errors import ConfigError


class HasRegistry(Protocol):
    """Anything that records into a registry (``DualTrackOptimizer``)."""

    registry: CollectorRegistry


class MetricsPortInUse(ConfigError):
    """The metrics port is already taken by another process."""


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint. ``close()`` stops it."""

    host: str
    port: int
    tls: bool
    _server: Any
    _thread: Any

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, config: OptimizationConfig) -> MetricsServer:
    """Serve ``registry`` on ``config.metrics_host:metrics_port`` (port 0 = any free port)."""
    assert config.metrics_port is not None
    tls = config.metrics_tls_certfile is not None
    for name in ("metrics_tls_certfile", "metrics_tls_keyfile", "metrics_tls_client_cafile"):
        path = getattr(config, name)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"file not found: {path}", field=name)
    try:
        server, thread = start_http_server(
            config.metrics_port, addr=config.metrics_host, registry=registry,
            certfile=config.metrics_tls_certfile, keyfile=config.metrics_tls_keyfile,
            client_cafile=config.metrics_tls_client_cafile,
            client_auth_required=config.metrics_tls_client_cafile is not None,
        )
    except ssl.SSLError as err:  # an OSError too: a bad certificate or key, not a bad address
        why = err.args[0] if err.args and isinstance(err.args[0], str) else str(err)
        raise ConfigError(f"cannot load the TLS certificate or its key: {why}", field="metrics_tls_certfile") from err
    except OSError as err:
        where = f"{config.metrics_host}:{config.metrics_port}"
        if err.errno == errno.EADDRINUSE:
            raise MetricsPortInUse(f"cannot serve /metrics on {where}: the port is already in use "
                                   "(another exporter running? choose another metrics_port)",
                                   field="metrics_port") from err
        raise ConfigError(f"cannot serve /metrics on {where}: {err.strerror or err}", field="metrics_host") from err
    port = server.server_address[1]
    return MetricsServer(config.metrics_host, port, tls, server, thread)


def wsgi_app(optimizer: HasRegistry) -> Callable[..., Iterable[bytes]]:
    """A WSGI app serving the optimizer's metrics (mount it at ``/metrics``)."""
    return make_wsgi_app(optimizer.registry)


def multiprocess_registry(extra: Optional[HasRegistry] = None) -> CollectorRegistry:
    """A registry that adds up every worker's metrics (``PROMETHEUS_MULTIPROC_DIR``).

    ``extra``: an optimizer whose scrape-time collectors (resources,
    constraint limits, preferences) should appear once.
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise ConfigError("PROMETHEUS_MULTIPROC_DIR is not set; multiprocess mode needs it in every worker")
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    if extra is not None:
        for collector in scrape_time_collectors(extra):
            registry.register(collector)
    return registry


def scrape_time_collectors(optimizer: HasRegistry) -> Iterable[Collector]:
    """The optimizer's custom collectors (those not backed by multiprocess files)."""
    registry = optimizer.registry
    # prometheus_client keeps the collector -> names map privately; custom
    # collectors are the ones that are not metric wrappers.
    collectors = list(getattr(registry, "_collector_to_names", {}))
    return [c for c in collectors if not isinstance(c, MetricWrapperBase)]
