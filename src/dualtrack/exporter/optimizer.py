"""Deprecated alias: the facade moved to :mod:`dualtrack.optimizer` (it wires the
exporter and the adapter, so it sits above both). ``from dualtrack import
DualTrackOptimizer`` is the stable path. This module is removed in 0.3.
"""

import warnings

from ..optimizer import DualTrackOptimizer
from ..vocabulary import PATHS

warnings.warn("dualtrack.exporter.optimizer is deprecated; import DualTrackOptimizer from dualtrack "
              "(or dualtrack.optimizer)", DeprecationWarning, stacklevel=2)

__all__ = ["DualTrackOptimizer", "PATHS"]
