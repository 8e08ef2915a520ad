"""``dualtrack demo``: a scenario in real time, with a live view and a chart."""

from .run import DemoOptions, run_demo

__all__ = ["DemoOptions", "run_demo"]
