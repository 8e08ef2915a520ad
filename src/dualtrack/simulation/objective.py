"""The composite objective J: defined once in :mod:`dualtrack.objective` (the
strategies' ``objective:`` weights and the benchmark share it); re-exported here."""

from ..objective import OBJECTIVE, TERMS, Objective

__all__ = ["OBJECTIVE", "TERMS", "Objective"]
