"""Benchmarks. ``adaptation``: the scenario suite in virtual time (``dualtrack bench adaptation``)."""

from .adaptation import DEFAULT_POLICIES, QUICK_POLICIES, format_report, run_suite

__all__ = ["DEFAULT_POLICIES", "QUICK_POLICIES", "format_report", "run_suite"]
