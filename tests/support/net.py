"""Loopback networking helpers for tests: the launcher's own, so a port is picked one way everywhere."""

from __future__ import annotations

from dualtrack.local_prometheus import LOOPBACK, free_port

__all__ = ["LOOPBACK", "free_port"]
