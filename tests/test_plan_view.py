"""What the objective-driven strategy believes, as metrics: the plan's view.

The view holds the figures each decision was made from (the expected
objective per query per path and class, the reasons' numbers), the
estimator's changes counted by path, class and what changed, and the
estimates behind the compliance term, absent while unknown. The engine swaps
a new view in at each objective cycle; the adapter process exports it as
``dualtrack_adapter_*``, the embedded optimizer as ``dualtrack_adaptation_*``.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from dualtrack import DualTrackOptimizer, OptimizationConfig
from dualtrack.adapter.engine import RuleEngine
from dualtrack.adapter.estimator import Estimator
from dualtrack.adapter.loop import Adapter, AdapterSettings
from dualtrack.adapter.objective import ObjectiveSpec, choose_split
from dualtrack.adapter.plan_view import ESTIMATES, PlanCollector, PlanView, change_key, merged_changes, plan_view
from dualtrack.adapter.signals import Catalog, SignalValues
from dualtrack.adapter.strategy import load_strategies
from dualtrack.bundled import bundled_dir
from dualtrack.clock import VirtualClock
from support.prometheus import promtool
from test_engine import FREE, engine_for
from test_objective import INTERVAL, calls, interval

STRATEGIES = load_strategies(bundled_dir("rules"))
CLASSES = ("short", "long")


def both_tracks(api_success: float = 1.0) -> SignalValues:
    """One interval: each class answered on both tracks; long queries' local answers mostly below the floor."""
    return interval({("local", "short"): calls(20, latency=1.0), ("api", "short"): calls(20, cost=0.001, latency=0.5),
                     ("local", "long"): calls(10, latency=8.0, useful=0.2),
                     ("api", "long"): calls(10, success=api_success, cost=0.002, latency=3.0)})


def test_the_view_holds_the_figures_of_the_reasons_and_only_the_estimates_known() -> None:
    est = Estimator(CLASSES)
    for _ in range(3):
        est.update(both_tracks(), INTERVAL)
    split = choose_split(est, ObjectiveSpec(), interval_seconds=INTERVAL)
    view = plan_view(est, split, {("api", "", "latency"): 2})

    for qc in CLASSES:
        local, api = view.expected[qc]["local"], view.expected[qc]["api"]
        # The same figures the decision's reason gives in words.
        reason = next(r for r in split.reasons if r.startswith(f"{qc}: local"))
        assert re.search(rf"local {local:.3f} vs api {api:.3f} expected per query", reason), reason
    # Long queries: 80% of their local answers useless, the API's all useful: worth more on the API.
    assert view.expected["long"]["api"] > view.expected["long"]["local"]
    assert view.changes == {("api", "", "latency"): 2}
    assert est.api_rate_limit is None and "api_rate_limit" not in view.estimates
    assert est.planned_load is not None and view.estimates["planned_load"] == pytest.approx(est.planned_load)
    assert est.planned_spend is None and "planned_spend" not in view.estimates  # no budget: none planned


def test_changes_are_keyed_by_path_class_and_what_and_accumulate() -> None:
    assert change_key("local", "latency") == ("local", "", "latency")
    assert change_key("api:short", "quality") == ("api", "short", "quality")
    counts: dict = {}
    merged_changes(counts, {"api": "success", "local:long": "quality"})
    merged_changes(counts, {"api": "success"})
    assert counts == {("api", "", "success"): 2, ("local", "long", "quality"): 1}


def test_the_collector_exports_the_latest_view_and_nothing_before_one() -> None:
    registry = CollectorRegistry()
    current: dict = {"view": None}
    registry.register(PlanCollector(lambda: current["view"], "dualtrack_test"))
    assert not [m for m in registry.collect() if m.name.startswith("dualtrack_test")]

    current["view"] = PlanView(expected={"short": {"local": 0.7, "api": 0.6}}, estimates={"slots": 4.0},
                               changes={("local", "", "latency"): 3})
    get = registry.get_sample_value
    assert get("dualtrack_test_expected_value", {"path": "local", "query_class": "short"}) == 0.7
    assert get("dualtrack_test_expected_value", {"path": "api", "query_class": "short"}) == 0.6
    assert get("dualtrack_test_changes_detected_total", {"path": "local", "query_class": "", "what": "latency"}) == 3
    assert get("dualtrack_test_estimated_local_slots") == 4.0
    for suffix, _, attribute in ESTIMATES:  # the unknown ones are absent, not 0
        if attribute != "slots":
            assert get(f"dualtrack_test_{suffix}") is None

    current["view"] = PlanView(expected={"short": {"local": 0.5, "api": 0.6}}, estimates={})
    assert get("dualtrack_test_expected_value", {"path": "local", "query_class": "short"}) == 0.5
    assert get("dualtrack_test_estimated_local_slots") is None


def test_the_engine_swaps_in_a_view_each_objective_cycle_and_counts_its_changes() -> None:
    engine = RuleEngine(STRATEGIES, "adaptive", query_classes=CLASSES)
    for k in range(3):
        engine.evaluate(both_tracks(), now=k * INTERVAL)
    first = engine.plan
    assert first is not None and engine.last_split is not None
    assert first.expected == engine.last_split.expected and set(first.expected["long"]) == {"local", "api"}
    assert first.changes == {}

    engine.evaluate(both_tracks(api_success=0.0), now=3 * INTERVAL)  # the API fails every long call
    assert engine.plan is not first  # a new view, the old one untouched (a scrape may hold it)
    assert engine.plan.changes == {("api", "", "success"): 1} and first.changes == {}
    assert engine.plan.expected["long"]["api"] < first.expected["long"]["api"]


def test_a_strategy_without_an_objective_has_no_plan_to_show(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, FREE)  # rules only, no objective
    engine.evaluate(both_tracks(), now=0.0)
    assert engine.plan is None


class _Source:
    """The same interval every cycle."""

    def fetch(self, catalog: Catalog, *, deadline: object = None) -> SignalValues:
        return both_tracks()

    def constraint_states(self, values: SignalValues) -> dict:
        return {}


@pytest.mark.prometheus
def test_the_adapter_process_exports_its_plan_and_promtool_accepts_it(tmp_path: Path) -> None:
    settings = AdapterSettings(rules=(str(bundled_dir("rules")),), strategy="adaptive",
                               output=str(tmp_path / "prefs.json"), interval_seconds=30.0,
                               query_classes=CLASSES)
    adapter = Adapter(settings, _Source(), registry=CollectorRegistry(), clock=VirtualClock(),
                      strategies=STRATEGIES, stdout=io.StringIO())
    assert adapter.registry.get_sample_value("dualtrack_adapter_expected_value",
                                             {"path": "local", "query_class": "short"}) is None
    for _ in range(2):
        assert adapter.run_cycle().result == "ok"
    split = adapter.engine.last_split
    assert split is not None
    for qc in CLASSES:
        for path in ("local", "api"):
            assert adapter.registry.get_sample_value(
                "dualtrack_adapter_expected_value", {"path": path, "query_class": qc}) == split.expected[qc][path]
    promtool("check", "metrics", input=generate_latest(adapter.registry).decode(), check=True)


def test_the_embedded_optimizer_exports_its_plan() -> None:
    clock = VirtualClock()
    registry = CollectorRegistry()
    optimizer = DualTrackOptimizer(OptimizationConfig(enable_resource_monitoring=False), registry=registry,
                                   clock=clock)
    assert optimizer.adaptive is not None
    for i in range(40):
        rid = f"r{i}"
        optimizer.record_request_start(rid, "a short question")
        clock.advance(0.5)
        optimizer.record_request_completion(rid, ("local", "api")[i % 2],
                                            {"tokens_in": 10, "tokens_out": 20, "quality_score": 0.9})
    optimizer.adapt_now()
    split = optimizer.adaptive.engine.last_split
    assert split is not None and split.expected
    for qc, by_path in split.expected.items():
        for path, value in by_path.items():
            assert registry.get_sample_value("dualtrack_adaptation_expected_value",
                                             {"path": path, "query_class": qc}) == value
    assert registry.get_sample_value("dualtrack_adapter_expected_value",
                                     {"path": "local", "query_class": "short"}) is None  # the process's name only
