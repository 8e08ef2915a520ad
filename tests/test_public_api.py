"""The spec's interface is a public contract: names, signatures, defaults."""

from __future__ import annotations

import inspect
from importlib import resources
from typing import Any, Dict, Optional

import dualtrack
from dualtrack import (
    AdaptiveOptimizer,
    DualTrackOptimizer,
    MetricsCollector,
    OptimizationConfig,
    ResourceMonitor,
)

SPEC_NAMES = {"OptimizationStrategy", "PerformanceMetrics", "ResourceConstraints", "OptimizationConfig",
              "DualTrackOptimizer", "MetricsCollector", "ResourceMonitor", "AdaptiveOptimizer"}
EMPTY = inspect.Parameter.empty


def params(func: Any) -> Dict[str, inspect.Parameter]:
    return dict(inspect.signature(func).parameters)


def positional(func: Any) -> list:
    """(name, default) of the parameters a caller may pass positionally, ``self`` excluded."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [(p.name, p.default) for p in params(func).values() if p.kind in kinds and p.name != "self"]


def test_all_exports_the_specs_names_and_they_resolve():
    assert SPEC_NAMES <= set(dualtrack.__all__)
    for name in dualtrack.__all__:
        assert getattr(dualtrack, name) is not None, name
    assert len(dualtrack.__all__) == len(set(dualtrack.__all__))
    # Everything exported is reachable from the top level only through __all__.
    assert not {n for n in dualtrack.__all__ if n.startswith("_") and n != "__version__"}


def test_dual_track_optimizer_signatures():
    init = positional(DualTrackOptimizer.__init__)
    assert init[0][0] == "config" and len(init) == 1  # config first; the rest keyword-only
    keyword_only = {n for n, p in params(DualTrackOptimizer.__init__).items() if p.kind is p.KEYWORD_ONLY}
    assert {"registry", "clock"} <= keyword_only
    assert positional(DualTrackOptimizer.start) == []
    assert positional(DualTrackOptimizer.stop) == []
    assert positional(DualTrackOptimizer.record_request_start) == [
        ("request_id", EMPTY), ("query", EMPTY), ("context", None)]
    assert positional(DualTrackOptimizer.record_request_completion) == [
        ("request_id", EMPTY), ("processing_path", EMPTY), ("result", EMPTY), ("success", True),
        ("error_type", None)]
    assert positional(DualTrackOptimizer.get_optimization_recommendations) == [("query", EMPTY), ("context", None)]
    assert positional(DualTrackOptimizer.get_optimization_status) == []
    assert positional(DualTrackOptimizer.adapt_now) == []


def test_spec_calls_work_positionally_as_written_in_the_spec():
    optimizer = DualTrackOptimizer(OptimizationConfig(enable_resource_monitoring=False))
    rec = optimizer.get_optimization_recommendations("What is 2+2?", {"user": "x"})
    optimizer.record_request_start("req-1", "What is 2+2?", None)
    optimizer.record_request_completion("req-1", rec["preferred_path"], {"tokens_processed": 12}, True, None)
    assert isinstance(optimizer.get_optimization_status(), dict)
    optimizer.start()
    optimizer.stop()


def test_component_signatures():
    assert positional(MetricsCollector.__init__) == [("config", EMPTY)]
    assert positional(MetricsCollector.record_metric) == [("metric", EMPTY)]
    assert positional(MetricsCollector.get_metrics_summary)[0] == ("path", None)
    assert positional(ResourceMonitor.__init__) == [("config", EMPTY)]
    for name in ("start_monitoring", "get_current_usage"):
        assert positional(getattr(ResourceMonitor, name)) == [], name
    assert positional(ResourceMonitor.check_constraints) == [("constraints", EMPTY)]
    assert [n for n, _ in positional(AdaptiveOptimizer.__init__)] == ["config", "metrics_collector",
                                                                       "resource_monitor"]
    assert positional(AdaptiveOptimizer.adapt_strategy) == []
    assert positional(AdaptiveOptimizer.get_routing_preferences) == []


def test_adaptive_optimizer_as_the_spec_builds_it():
    config = OptimizationConfig(enable_resource_monitoring=False)
    collector = MetricsCollector(config)
    monitor = ResourceMonitor(config, nvml=False)
    adaptive = AdaptiveOptimizer(config, collector, monitor)
    assert set(adaptive.routing_preferences) == {"local_bias", "parallel_threshold", "timeout_multiplier",
                                                 "quality_threshold"}
    assert adaptive.routing_preferences == {"local_bias": 0.5, "parallel_threshold": 0.7,
                                            "timeout_multiplier": 1.0, "quality_threshold": 0.8}
    note = adaptive.adapt_strategy()
    assert isinstance(note, dict) and note["ok"] is True
    prefs = adaptive.get_routing_preferences()
    assert prefs == adaptive.routing_preferences and prefs is not adaptive.routing_preferences


def test_return_annotations_of_the_public_surface():
    hints = {
        DualTrackOptimizer.get_optimization_recommendations: Dict[str, Any],
        DualTrackOptimizer.get_optimization_status: Dict[str, Any],
        DualTrackOptimizer.record_request_start: None,
        DualTrackOptimizer.record_request_completion: None,
        MetricsCollector.get_metrics_summary: Dict[str, Any],
    }
    for func, expected in hints.items():
        annotation = inspect.signature(func, eval_str=True).return_annotation
        assert annotation == expected, func.__qualname__
    context = inspect.signature(DualTrackOptimizer.record_request_start, eval_str=True).parameters["context"]
    assert context.annotation in (Optional[Dict], Optional[Dict[str, Any]])


def test_py_typed_is_shipped():
    assert (resources.files("dualtrack") / "py.typed").is_file()


def test_public_classes_have_docstrings_showing_use():
    for name in SPEC_NAMES:
        assert (getattr(dualtrack, name).__doc__ or "").strip(), name
    assert "record_request_start" in (dualtrack.__doc__ or "")
