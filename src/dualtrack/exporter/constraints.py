"""Deprecated alias: constraint checks moved to :mod:`dualtrack.constraints`
(they are shared by both halves and the simulator). Removed in 0.3."""

from ..constraints import CONSTRAINTS, MB, ConstraintCheck, request_checks, resource_checks

__all__ = ["CONSTRAINTS", "MB", "ConstraintCheck", "request_checks", "resource_checks"]
