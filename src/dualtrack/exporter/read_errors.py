"""Failed resource reads: counted per resource, exported, logged once per kind.

The monitor and its readers (:mod:`.nvml`, the psutil and ``/proc`` reads in
:mod:`.monitor`) report every failed attempt here, so nothing is lost
quietly and a failure that repeats every reading does not flood the log.
"""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Dict, Mapping, Optional, Set, Tuple

from prometheus_client import CollectorRegistry, Counter

# One logger for the whole monitor, under the name it had before it was split
# into modules, so that logging configurations naming it keep working.
log = logging.getLogger("dualtrack.exporter.resources")

#: The ``resource`` label values of ``dualtrack_resource_read_errors_total``.
RESOURCES: Tuple[str, ...] = ("cpu", "memory", "process", "gpu", "battery", "temperature")


class ReadErrors:
    """Counts of failed reads per resource (see :data:`RESOURCES`) and the log-once memory."""

    def __init__(self) -> None:
        self._counts: Dict[str, int] = {r: 0 for r in RESOURCES}
        self._logged: Set[Tuple[str, str]] = set()
        self._counter: Optional[Counter] = None

    @property
    def counts(self) -> Mapping[str, int]:
        """A copy of the counts so far."""
        return MappingProxyType(dict(self._counts))

    def count(self, resource: str, err: Optional[BaseException], message: str) -> None:
        """One failed attempt to read ``resource``: count it, log ``message`` once per kind."""
        self._counts[resource] += 1
        if self._counter is not None:
            self._counter.labels(resource).inc()
        self.log_once(resource, err, message)

    def log_once(self, resource: str, err: Optional[BaseException], message: str,
                 level: int = logging.WARNING) -> None:
        """Log ``message`` at ``level`` the first time per (resource, message, error type); debug after."""
        key = (resource, message if err is None else f"{message}:{type(err).__name__}")
        if key in self._logged:
            log.debug("%s: %r", message, err)
            return
        self._logged.add(key)
        log.log(level, "%s%s (logged once)", message, "" if err is None else f": {err!r}")

    def register(self, registry: CollectorRegistry) -> None:
        """Export the counts as ``dualtrack_resource_read_errors_total{resource}`` in ``registry``."""
        self._counter = Counter(
            "dualtrack_resource_read_errors",
            "Failed resource read attempts, by resource (cpu, memory, process, gpu, battery, temperature).",
            ["resource"], registry=registry)
        for resource in RESOURCES:  # zero is a true count here, so every series exists from the start
            self._counter.labels(resource).inc(self._counts[resource])
