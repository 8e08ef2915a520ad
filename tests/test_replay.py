"""The adapter replays Prometheus' history at start: the last intervals evaluated, nothing published,
so that its first cycle decides from their evidence and not from nothing."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from prometheus_client import CollectorRegistry

from dualtrack.adapter.engine import RuleEngine
from dualtrack.adapter.learned_state import StateFile
from dualtrack.adapter.loop import Adapter, AdapterSettings
from dualtrack.adapter.prometheus_source import PrometheusSource
from dualtrack.adapter.promql import PromQLClient
from dualtrack.adapter.signals import Catalog, SignalValues
from dualtrack.adapter.strategy import load_strategies
from dualtrack.bundled import bundled_dir
from dualtrack.clock import VirtualClock
from dualtrack.errors import ConfigError, SourceUnavailable
from support.workload import CLASSES, BackfilledStack, backfilled_stack
from test_learned_state import evidence

STRATEGIES = load_strategies(bundled_dir("rules"))


def settings(tmp_path: Path, **changes: Any) -> AdapterSettings:
    values: Dict[str, Any] = dict(rules=(str(bundled_dir("rules")),), strategy="adaptive",
                                  output=str(tmp_path / "prefs.json"), interval_seconds=30.0,
                                  query_classes=CLASSES, replay_intervals=10)
    values.update(changes)
    return AdapterSettings(**values)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackfilledStack]:
    stack = backfilled_stack(tmp_path_factory.mktemp("stack"))
    yield stack
    stack.close()


class _Then(VirtualClock):
    """The history's end for "now" (unix time), the real monotonic clock for the queries' deadlines."""

    def monotonic(self) -> float:
        return time.monotonic()


@pytest.mark.prometheus
def test_the_replay_learns_from_the_history_and_publishes_nothing(tmp_path: Path, stack: BackfilledStack) -> None:
    with PromQLClient(stack.prom.url, timeout=10) as client:
        source = PrometheusSource(client, window="2m", interval="30s")
        clock = _Then(start=stack.history.end)
        adapter = Adapter(settings(tmp_path), source, registry=CollectorRegistry(), clock=clock,
                          strategies=STRATEGIES, stdout=io.StringIO())
        assert adapter.replay_history() == 10
        assert adapter.registry.get_sample_value("dualtrack_adapter_replayed_intervals_total") == 10
        assert not (tmp_path / "prefs.json").exists()  # nothing published
        assert adapter.engine.last is not None and adapter.engine.last.strategy == "adaptive"
        replayed = adapter.engine.estimator
        assert replayed is not None and all(replayed.arrivals.get(qc, 0) > 0 for qc in CLASSES)

        # A cold adapter's first cycle has one interval of evidence; the replay gave it ten, decayed.
        cold = RuleEngine(STRATEGIES, "adaptive", query_classes=CLASSES, interval_seconds=30.0)
        cold.evaluate(source.fetch_at(STRATEGIES.catalog, stack.history.end - 30.0), 0.0)
        assert cold.estimator is not None
        for track in ("local", "api"):
            assert replayed.pooled(track).calls > 1.5 * cold.estimator.pooled(track).calls, track


class _History:
    """Interval ``k`` of test_learned_state's evidence for each past moment asked, failing on cue."""

    def __init__(self, fail_at_call: Optional[int] = None) -> None:
        self.asked: List[float] = []
        self.fail_at_call = fail_at_call

    def fetch(self, catalog: Catalog, *, deadline: object = None) -> SignalValues:
        return evidence(len(self.asked))

    def fetch_at(self, catalog: Catalog, at: float, *, deadline: object = None) -> SignalValues:
        if self.fail_at_call is not None and len(self.asked) + 1 == self.fail_at_call:
            raise SourceUnavailable("connection refused")
        self.asked.append(at)
        return evidence(len(self.asked))

    def constraint_states(self, values: SignalValues) -> dict:
        return {}


def adapter_for(tmp_path: Path, source: Any, clock: VirtualClock, **changes: Any) -> Adapter:
    return Adapter(settings(tmp_path, query_classes=("short", "long"), **changes), source,
                   registry=CollectorRegistry(), clock=clock, strategies=STRATEGIES, stdout=io.StringIO())


def test_the_replay_asks_for_the_last_intervals_oldest_first(tmp_path: Path) -> None:
    clock = VirtualClock(start=10_000.0)
    source = _History()
    adapter = adapter_for(tmp_path, source, clock, replay_intervals=4)
    assert adapter.replay_history() == 4
    assert source.asked == [10_000.0 - 120, 10_000.0 - 90, 10_000.0 - 60, 10_000.0 - 30]


def test_a_failing_source_stops_the_replay_and_what_was_learned_stays(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    adapter = adapter_for(tmp_path, _History(fail_at_call=3), VirtualClock(start=10_000.0))
    assert adapter.replay_history() == 2
    assert "replay of the history stopped after 2 of 10 intervals: connection refused" in caplog.text
    assert adapter.engine.estimator is not None
    assert adapter.registry.get_sample_value("dualtrack_adapter_replayed_intervals_total") == 2


def test_with_a_restored_state_only_the_intervals_since_it_was_saved_are_replayed(tmp_path: Path) -> None:
    clock = VirtualClock(start=10_000.0)
    first = adapter_for(tmp_path, _History(), clock, state_file=str(tmp_path / "state.json"), replay_intervals=0)
    assert first.run_cycle().result == "ok"  # saves the state at 10,000
    clock.advance(95.0)  # down for 95 s: two whole intervals after the state's last cycle
    source = _History()
    again = adapter_for(tmp_path, source, clock, state_file=str(tmp_path / "state.json"))
    assert again.state is not None and again.state.saved_at == 10_000.0
    assert again.replay_history() == 2
    assert source.asked == [10_095.0 - 60, 10_095.0 - 30]


def test_no_replay_from_a_source_without_history_nor_when_off(tmp_path: Path) -> None:
    class NoHistory:
        def fetch(self, catalog: Catalog, *, deadline: object = None) -> SignalValues:
            return evidence(0)

        def constraint_states(self, values: SignalValues) -> dict:
            return {}

    assert adapter_for(tmp_path, NoHistory(), VirtualClock()).replay_history() == 0
    source = _History()
    assert adapter_for(tmp_path, source, VirtualClock(), replay_intervals=0).replay_history() == 0
    assert source.asked == []
    with pytest.raises(ConfigError, match="replay.*from 0 to 120"):
        settings(tmp_path, replay_intervals=-1)
    with pytest.raises(ConfigError, match="replay"):
        settings(tmp_path, replay_intervals=2.5)


def test_a_restored_state_saved_just_now_replays_nothing(tmp_path: Path) -> None:
    clock = VirtualClock(start=10_000.0)
    StateFile(str(tmp_path / "state.json"), interval_seconds=30.0, clock=clock).save(
        adapter_for(tmp_path, _History(), clock, replay_intervals=0).engine)
    source = _History()
    clock.advance(40.0)  # not one whole interval after the state's last cycle
    again = adapter_for(tmp_path, source, clock, state_file=str(tmp_path / "state.json"))
    assert again.replay_history() == 0 and source.asked == []
