"""The facade: ``DualTrackOptimizer``, what an application or a router talks to.

It sits above both halves and wires them through narrow interfaces: the
exporter records requests and watches the machine; a preference source (the
embedded adapter, or a reader of the adapter process's file) says how to
route; immediate overrides keep the machine within its limits between two
adaptation cycles.

| module | holds |
|---|---|
| ``facade`` | ``DualTrackOptimizer``: lifecycle, the request path, recommendations, status |
| ``overrides`` | the immediate overrides (memory, GPU memory, concurrency, battery, cost) |
| ``state_gauges`` | scrape-time gauges: constraint limits and violations, effective preferences |
"""

from .facade import DualTrackOptimizer, MachineMonitor

__all__ = ["DualTrackOptimizer", "MachineMonitor"]
