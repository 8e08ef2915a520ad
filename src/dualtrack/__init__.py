"""dualtrack: telemetry and adaptation for LLM applications that route each
query to a local model, an API model, or both in parallel.

The public API is the spec's interface (TASK-DP-003)::

    from dualtrack import DualTrackOptimizer, OptimizationConfig

    optimizer = DualTrackOptimizer(OptimizationConfig(strategy="adaptive"))
    optimizer.start()
    recommendation = optimizer.get_optimization_recommendations("What is 2+2?")
    optimizer.record_request_start("req-1", "What is 2+2?")
    optimizer.record_request_completion("req-1", recommendation["preferred_path"],
                                        {"tokens_in": 8, "tokens_out": 3, "quality_score": 0.9})
    optimizer.stop()

Everything not listed in ``__all__`` is internal and may change.
"""

from .adapter.embedded import AdaptiveOptimizer
from .config import ModelPrice, OptimizationConfig, OptimizationStrategy, ResourceConstraints
from .errors import ConfigError, DualTrackError, PreferencesError
from .exporter.collector import MetricsCollector, PerformanceMetrics
from .exporter.monitor import ResourceMonitor
from .optimizer import DualTrackOptimizer
from .preferences import Preferences, PreferencesReader, PreferencesWriter, Routing

__version__ = "0.2.0"

__all__ = [
    "AdaptiveOptimizer",
    "ConfigError",
    "DualTrackError",
    "DualTrackOptimizer",
    "MetricsCollector",
    "ModelPrice",
    "OptimizationConfig",
    "OptimizationStrategy",
    "PerformanceMetrics",
    "Preferences",
    "PreferencesError",
    "PreferencesReader",
    "PreferencesWriter",
    "ResourceConstraints",
    "ResourceMonitor",
    "Routing",
    "__version__",
]
