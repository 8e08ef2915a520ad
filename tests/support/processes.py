"""Stopping the child processes tests start (Prometheus, Alertmanager, the adapter).

``stop(proc, timeout)``: SIGTERM, wait up to ``timeout`` s, then SIGKILL; the
exit status. The same function the Prometheus launcher stops its process with.
"""

from __future__ import annotations

from dualtrack.local_prometheus import stop_process as stop

__all__ = ["stop"]
