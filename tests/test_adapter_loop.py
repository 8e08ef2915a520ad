"""The adapter loop and the adaptation controller, driven by a scripted signal source.

The loop's behaviour on failure (backoff, keeping the last file, metrics) does
not depend on Prometheus: a fake source that answers or fails on cue, and a
virtual clock, show it exactly. tests/test_adapter.py does the same against a
real Prometheus.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Union

import pytest
from prometheus_client import CollectorRegistry

from dualtrack.adapter.controller import AdaptationController, MemoryPublisher, StreamPublisher
from dualtrack.adapter.engine import RuleEngine
from dualtrack.adapter.loop import Adapter, AdapterSettings
from dualtrack.adapter.signals import Catalog, SignalValues
from dualtrack.adapter.strategy import load_strategies
from dualtrack.bundled import bundled_dir
from dualtrack.clock import VirtualClock
from dualtrack.errors import QueryTimeout, SourceError, SourceUnavailable
from dualtrack.preferences import ConstraintState, Preferences, read_preferences

STRATEGIES = load_strategies(bundled_dir("rules"))


class ScriptedSource:
    """Answers each fetch with the next scripted item: signal values, or an error to raise."""

    def __init__(self, script: List[Union[SignalValues, SourceError]]) -> None:
        self.script = list(script)
        self.deadlines: List[Optional[float]] = []

    def fetch(self, catalog: Catalog, *, deadline: Optional[float] = None) -> SignalValues:
        self.deadlines.append(deadline)
        item = self.script.pop(0)
        if isinstance(item, SourceError):
            raise item
        return item

    def constraint_states(self, values: SignalValues) -> Dict[str, ConstraintState]:
        ratio = values.get("memory_used_ratio", {})
        return {"memory": ConstraintState(ratio is not None and ratio > 0.9)}


def some_signals() -> SignalValues:
    values = SignalValues()
    values.set("success_ratio", {"path": "api"}, 1.0)
    values.set("success_ratio", {"path": "local"}, 1.0)
    return values


def make(tmp_path: Path, script: List[Union[SignalValues, SourceError]], **settings: object) -> Adapter:
    values: Dict[str, object] = dict(rules=(str(bundled_dir("rules")),), strategy="balanced",
                                     output=str(tmp_path / "prefs.json"), interval_seconds=10.0,
                                     max_backoff_seconds=60.0)
    values.update(settings)
    return Adapter(AdapterSettings(**values), ScriptedSource(script), registry=CollectorRegistry(),  # type: ignore[arg-type]
                   clock=VirtualClock(), strategies=STRATEGIES, stdout=io.StringIO())


def sample(adapter: Adapter, name: str, **labels: str) -> Optional[float]:
    return adapter.registry.get_sample_value(name, labels)


def test_failures_back_off_doubling_up_to_the_limit_and_keep_the_last_file(tmp_path: Path) -> None:
    down = SourceUnavailable("connection refused")
    adapter = make(tmp_path, [some_signals(), down, down, down, QueryTimeout("slow"), down, some_signals()])
    first = adapter.run_cycle()
    assert first.result == "ok" and first.published and first.sequence == 1
    published = (tmp_path / "prefs.json").read_bytes()
    assert adapter.next_delay() == 10.0

    delays = []
    for _ in range(5):
        result = adapter.run_cycle()
        assert result.result == "error" and not result.published
        delays.append(adapter.next_delay())
    assert delays == [10.0, 20.0, 40.0, 60.0, 60.0]  # doubling from the interval, capped at max_backoff
    # Nothing republished: the file's valid_until runs out honestly.
    assert (tmp_path / "prefs.json").read_bytes() == published
    assert sample(adapter, "dualtrack_adapter_cycles_total", result="error") == 5
    assert sample(adapter, "dualtrack_adapter_consecutive_failures") == 5

    recovered = adapter.run_cycle()
    assert recovered.result == "ok" and recovered.sequence == 2
    assert adapter.next_delay() == 10.0 and adapter.failures == 0
    assert sample(adapter, "dualtrack_adapter_consecutive_failures") == 0
    assert read_preferences(tmp_path / "prefs.json").sequence == 2


def test_the_cycle_deadline_leaves_a_fifth_of_the_interval(tmp_path: Path) -> None:
    adapter = make(tmp_path, [some_signals()])
    start = adapter.clock.monotonic()
    adapter.run_cycle()
    assert adapter.source.deadlines == [pytest.approx(start + 8.0)]  # type: ignore[attr-defined]


def test_an_empty_answer_is_no_data_and_still_publishes(tmp_path: Path) -> None:
    adapter = make(tmp_path, [SignalValues()])
    result = adapter.run_cycle()
    assert result.result == "no_data" and result.published
    assert sample(adapter, "dualtrack_adapter_cycles_total", result="no_data") == 1
    assert read_preferences(tmp_path / "prefs.json").source == "prometheus"


def test_dry_run_prints_the_document_and_writes_nothing(tmp_path: Path) -> None:
    adapter = make(tmp_path, [some_signals()], dry_run=True)
    result = adapter.run_cycle()
    assert result.result == "ok" and not result.published
    printed = json.loads(adapter.stdout.getvalue())  # type: ignore[attr-defined]
    assert printed["sequence"] == 0 and printed["strategy"] == "balanced"
    assert not (tmp_path / "prefs.json").exists()


def test_the_controller_never_raises_and_keeps_the_last_preferences() -> None:
    clock = VirtualClock()
    engine = RuleEngine(STRATEGIES, "balanced")
    initial = Preferences.defaults(now=clock.time())
    publisher = MemoryPublisher(initial)

    class Exploding(ScriptedSource):
        def fetch(self, catalog: Catalog, *, deadline: Optional[float] = None) -> SignalValues:
            raise ZeroDivisionError("a bug")

    controller = AdaptationController(engine, Exploding([]), publisher, source_name="embedded",
                                      validity_seconds=90.0, clock=clock)
    cycle = controller.run_cycle()
    assert cycle.result == "error" and cycle.error_kind == "internal" and "ZeroDivisionError" in (cycle.error or "")
    assert publisher.current is initial and publisher.sequence == 0

    controller.source = ScriptedSource([some_signals()])
    cycle = controller.run_cycle()
    assert cycle.ok and cycle.preferences is publisher.current
    assert publisher.sequence == 1 and publisher.current.source == "embedded"
    assert publisher.current.valid_until == pytest.approx(clock.time() + 90.0)
    assert publisher.current.constraints == {"memory": ConstraintState(False)}


def test_the_stream_publisher_numbers_nothing() -> None:
    out = io.StringIO()
    publisher = StreamPublisher(out)
    prefs = Preferences.defaults(now=1_700_000_000.0)
    assert publisher.publish(prefs) is prefs
    assert publisher.sequence == -1  # documents go out as sequence 0
    assert json.loads(out.getvalue())["source"] == "defaults"
