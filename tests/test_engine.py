"""Tests for dualtrack.adapter.engine: one adaptation cycle, and what holds across cycles."""

from __future__ import annotations

import itertools
import math
import textwrap
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from dualtrack.adapter.conditions import parse_selector
from dualtrack.adapter.engine import TIMEOUT_FLOOR_MAX_SECONDS, Decision, RuleEngine
from dualtrack.adapter.signals import SignalValues
from dualtrack.adapter.strategy import PREFS, Strategy, StrategySet, load_strategies
from dualtrack.bundled import bundled_dir
from dualtrack.errors import ConfigError

#: No floor, no relax, no step limit: isolates the semantics under test.
FREE = """\
exploration_floor: 0
relax: 0
max_step: {local_bias: 1, parallel_threshold: 1.01, timeout_multiplier: 10, quality_threshold: 1}
"""
EPS = 1e-9


def sv(values: Optional[Mapping[str, Optional[float]]] = None) -> SignalValues:
    """SignalValues from ``{'name{label="v"}': value}``."""
    out = SignalValues()
    for key, value in (values or {}).items():
        name, labels = parse_selector(key)
        out.set(name, labels, value)
    return out


def load(folder: Path, **files: str) -> StrategySet:
    """Write ``name=body`` strategy files (``strategy: name`` is prepended) and load the folder."""
    for name, body in files.items():
        (folder / f"{name}.yaml").write_text(f"strategy: {name}\n" + textwrap.dedent(body), encoding="utf-8")
    return load_strategies(folder)


def engine_for(folder: Path, body: str, classes: Sequence[str] = ("short", "long")) -> RuleEngine:
    return RuleEngine(load(folder, s=body), "s", query_classes=classes)


def run(engine: RuleEngine, steps: Sequence[Tuple[float, Optional[Mapping[str, Optional[float]]]]]) -> List[Decision]:
    return [engine.evaluate(sv(values), now=t) for t, values in steps]


HOT = {"cpu_usage_ratio": 1.0}
COLD = {"cpu_usage_ratio": 0.0}


# ------------------------------------------------------------------ for / cooldown


def hold_engine(tmp_path: Path) -> RuleEngine:
    return engine_for(tmp_path, FREE + textwrap.dedent("""\
        rules:
          - name: r
            when: cpu_usage_ratio > 0.5
            for: 1m
            actions: {add: {local_bias: 0.01}}
        """))


def test_for_holds_across_cycles(tmp_path: Path) -> None:
    decisions = run(hold_engine(tmp_path), [(0, HOT), (30, HOT), (60, HOT), (90, HOT)])
    assert [d.fired for d in decisions] == [[], [], ["r"], ["r"]]
    assert decisions[-1].routing["local_bias"] == pytest.approx(0.52)


@pytest.mark.parametrize("interruption", [COLD, {}], ids=["false", "unknown"])
def test_for_resets_when_the_condition_goes_false_or_unknown(tmp_path: Path, interruption: Dict[str, float]) -> None:
    decisions = run(hold_engine(tmp_path),
                    [(0, HOT), (30, HOT), (45, interruption), (60, HOT), (90, HOT), (119, HOT), (120, HOT)])
    assert [bool(d.fired) for d in decisions] == [False, False, False, False, False, False, True]


def test_cooldown(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, FREE + textwrap.dedent("""\
        rules:
          - name: r
            when: cpu_usage_ratio > 0.5
            cooldown: 1m
            actions: {add: {local_bias: 0.01}}
        """))
    decisions = run(engine, [(0, HOT), (30, HOT), (45, COLD), (59, HOT), (60, HOT), (90, HOT), (120, HOT)])
    assert [bool(d.fired) for d in decisions] == [True, False, False, False, True, False, True]
    assert decisions[-1].routing["local_bias"] == pytest.approx(0.53)


# ------------------------------------------------------------------ actions and relax


def test_actions_apply_set_then_scale_then_add(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, FREE + textwrap.dedent("""\
        rules:
          - name: r
            when: cpu_usage_ratio > 0.5
            actions:
              add: {timeout_multiplier: 0.5}
              scale: {timeout_multiplier: 2}
              set: {timeout_multiplier: 1.5}
        """))
    d = engine.evaluate(sv(HOT), now=0)
    assert d.routing["timeout_multiplier"] == pytest.approx(3.5)  # (1.5 * 2) + 0.5
    assert d.reasons[0].changes == {"timeout_multiplier": pytest.approx(2.5)}
    assert d.reasons[0].signals == {"cpu_usage_ratio": 1.0}
    assert d.reasons[0].strategy == "s" and d.reasons[0].query_class is None


def test_rules_apply_in_file_order(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, FREE + textwrap.dedent("""\
        rules:
          - {name: first, when: cpu_usage_ratio > 0.5, actions: {scale: {timeout_multiplier: 2}}}
          - {name: second, when: cpu_usage_ratio > 0.5, actions: {add: {timeout_multiplier: 0.1}}}
        """))
    d = engine.evaluate(sv(HOT), now=0)
    assert d.fired == ["first", "second"]
    assert d.routing["timeout_multiplier"] == pytest.approx(2.1)


def test_untouched_preferences_relax_toward_the_baseline(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, """\
        exploration_floor: 0
        relax: 0.5
        max_step: {local_bias: 1, quality_threshold: 1}
        rules:
          - {name: push, when: cpu_usage_ratio > 0.5, actions: {set: {local_bias: 0.9, quality_threshold: 0.6}}}
          - {name: hold_quality, when: memory_used_ratio > 0.5, actions: {add: {quality_threshold: 0}}}
        """)
    d1, d2, d3 = run(engine, [(0, HOT), (30, {"memory_used_ratio": 1.0}), (60, {})])
    assert (d1.routing["local_bias"], d1.routing["quality_threshold"]) == pytest.approx((0.9, 0.6))
    # local_bias relaxes halfway back to 0.5; quality_threshold was touched (by +0) so it stays
    assert (d2.routing["local_bias"], d2.routing["quality_threshold"]) == pytest.approx((0.7, 0.6))
    assert (d3.routing["local_bias"], d3.routing["quality_threshold"]) == pytest.approx((0.6, 0.7))
    assert d3.routing["parallel_threshold"] == pytest.approx(0.7)  # at the baseline all along


def test_step_limit(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, """\
        exploration_floor: 0.05
        relax: 0
        max_step: {local_bias: 0.1}
        rules:
          - {name: r, when: cpu_usage_ratio > 0.5, actions: {set: {local_bias: 1.0}}}
        """)
    decisions = run(engine, [(t, HOT) for t in range(0, 300, 30)])
    assert [round(d.routing["local_bias"], 9) for d in decisions[:6]] == [0.6, 0.7, 0.8, 0.9, 0.95, 0.95]
    # the clamp (1 - floor) wins over the rule's 1.0; classes follow the global value
    assert all(d.query_classes["long"]["local_bias"] == d.routing["local_bias"] for d in decisions)


# ------------------------------------------------------------------ per class


CLASS_RULES = """\
exploration_floor: 0
relax: 0.5
max_step: {local_bias: 1}
rules:
  - name: weak_local
    for_each: query_class
    when: quality_mean{path="local"} < 0.5
    actions: {add: {local_bias: -0.2}}
  - {name: global_push, when: cpu_usage_ratio > 0.5, actions: {add: {local_bias: 0.1}}}
"""
LONG_WEAK = {'quality_mean{path="local",query_class="long"}': 0.3}


def test_per_class_rules_change_only_that_class(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, CLASS_RULES)
    d = engine.evaluate(sv(LONG_WEAK), now=0)
    assert d.routing["local_bias"] == pytest.approx(0.5)
    assert d.query_classes["long"]["local_bias"] == pytest.approx(0.3)
    assert d.query_classes["short"]["local_bias"] == pytest.approx(0.5)
    assert set(d.class_overrides()) == {"long"}
    assert d.class_overrides()["long"]["local_bias"] == pytest.approx(0.3)
    reason = d.reasons[0]
    assert (reason.rule, reason.query_class) == ("weak_local", "long")
    assert reason.signals == {'quality_mean{path="local",query_class="long"}': 0.3}
    assert reason.message == 'quality_mean{path="local"} < 0.5 for long'  # no description: condition + class


def test_class_offsets_ride_on_global_changes_and_relax_to_zero(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, CLASS_RULES)
    d1, d2, d3 = run(engine, [(0, LONG_WEAK), (30, HOT), (60, {})])
    assert d1.query_classes["long"]["local_bias"] == pytest.approx(0.3)
    # global +0.1; the long offset (-0.2) relaxes halfway to -0.1
    assert d2.routing["local_bias"] == pytest.approx(0.6)
    assert d2.query_classes["long"]["local_bias"] == pytest.approx(0.5)
    assert d2.query_classes["short"]["local_bias"] == pytest.approx(0.6)
    # global relaxes to 0.55, the offset to -0.05
    assert d3.query_classes["long"]["local_bias"] == pytest.approx(0.5)
    assert d3.routing["local_bias"] == pytest.approx(0.55)


def test_per_class_rules_do_not_fire_on_aggregates(tmp_path: Path) -> None:
    # query_class is bound: a path-only value is not this class's value
    engine = engine_for(tmp_path, CLASS_RULES)
    d = engine.evaluate(sv({'quality_mean{path="local"}': 0.1}), now=0)
    assert d.fired == [] and d.class_overrides() == {}


def test_class_overrides_tolerance() -> None:
    prefs = {"local_bias": 0.5, "parallel_threshold": 0.7, "timeout_multiplier": 1.0, "quality_threshold": 0.8}
    d = Decision("s", None, dict(prefs), {"a": dict(prefs), "b": {**prefs, "local_bias": 0.5 + 1e-12},
                                         "c": {**prefs, "quality_threshold": 0.85}}, {}, {}, [])
    assert list(d.class_overrides()) == ["c"]
    assert list(d.class_overrides(tolerance=1e-13)) == ["b", "c"]


# ------------------------------------------------------------------ health


HEALTH = """\
exploration_floor: 0.05
relax: 0
max_step: {local_bias: 0.2}
health: {unhealthy_when: success_ratio < 0.5}
"""
API_DOWN = {'success_ratio{path="api"}': 0.0, 'success_ratio{path="local"}': 1.0}
ALL_UP = {'success_ratio{path="api"}': 1.0, 'success_ratio{path="local"}': 1.0}


def test_an_unhealthy_track_is_drained_to_the_clamp_edge(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, HEALTH)
    d1, d2, d3 = run(engine, [(0, API_DOWN), (30, API_DOWN), (60, API_DOWN)])
    assert d1.healthy == {"local": True, "api": False}
    assert "unhealthy_track" in d1.fired
    assert [round(d.routing["local_bias"], 9) for d in (d1, d2, d3)] == [0.7, 0.9, 0.95]
    assert all(d3.query_classes[qc]["local_bias"] == pytest.approx(0.95) for qc in ("short", "long"))


def test_an_unhealthy_local_track_drains_toward_the_api(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, HEALTH)
    bad_local = {'success_ratio{path="api"}': 1.0, 'success_ratio{path="local"}': 0.1}
    decisions = run(engine, [(t, bad_local) for t in (0, 30, 60)])
    assert decisions[-1].healthy == {"local": False, "api": True}
    assert [round(d.routing["local_bias"], 9) for d in decisions] == [0.3, 0.1, 0.05]


def test_unknown_health_keeps_the_previous_state_and_recovery_is_reported(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, HEALTH)
    d1, d2, d3, d4 = run(engine, [(0, API_DOWN), (30, {}), (60, ALL_UP), (90, ALL_UP)])
    assert d2.healthy == {"local": True, "api": False}  # no data: still unhealthy
    assert d2.routing["local_bias"] == pytest.approx(0.9)  # and still draining
    assert d2.fired == []
    assert d3.healthy == {"local": True, "api": True}
    assert "track_recovered" in d3.fired and "unhealthy_track" not in d3.fired
    assert [r.message for r in d3.reasons if r.rule == "track_recovered"] == ["api is healthy again"]
    assert d4.fired == []  # recovery is reported once
    assert d3.routing["local_bias"] == pytest.approx(0.9)  # relax 0: no gate, stays


def test_by_default_a_rate_limited_api_is_not_unhealthy_a_failing_one_is(tmp_path: Path) -> None:
    """The default condition counts calls refused with HTTP 429 as answered: 40% of the API's
    calls succeed and 50% are refused (a full API), it stays healthy; 40% succeed and 5% are
    refused (most of them fail), it is drained."""
    default_health = HEALTH.replace("health: {unhealthy_when: success_ratio < 0.5}\n", "")
    engine = engine_for(tmp_path, default_health)
    full = {'success_ratio{path="api"}': 0.4, 'rate_limited_ratio{path="api"}': 0.5,
            'success_ratio{path="local"}': 1.0}
    assert engine.evaluate(sv(full), now=0).healthy == {"local": True, "api": True}
    failing = dict(full, **{'rate_limited_ratio{path="api"}': 0.05})
    d = engine.evaluate(sv(failing), now=30)
    assert d.healthy == {"local": True, "api": False} and "unhealthy_track" in d.fired
    # Routers that do not count refusals apart (no rate_limited_ratio): success alone decides.
    old = {'success_ratio{path="api"}': 0.4, 'success_ratio{path="local"}': 1.0}
    assert engine_for(tmp_path, default_health).evaluate(sv(old), now=0).healthy["api"] is False


def test_health_starts_unknown() -> None:
    engine = RuleEngine(load_strategies(bundled_dir("rules")), "balanced")
    assert engine.evaluate(SignalValues(), now=0).healthy == {"local": None, "api": None}


def test_both_tracks_unhealthy_means_no_gate(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, HEALTH)
    both = {'success_ratio{path="api"}': 0.0, 'success_ratio{path="local"}': 0.0}
    d = engine.evaluate(sv(both), now=0)
    assert d.healthy == {"local": False, "api": False}
    assert d.routing["local_bias"] == pytest.approx(0.5)


def test_health_for(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, HEALTH.replace("success_ratio < 0.5}", "success_ratio < 0.5, for: 1m}"))
    decisions = run(engine, [(0, API_DOWN), (30, API_DOWN), (60, API_DOWN)])
    assert [d.healthy["api"] for d in decisions] == [True, True, False]


# ------------------------------------------------------------------ adaptive modes


def mode_set(folder: Path, min_dwell: str = "0s") -> StrategySet:
    return load(
        folder,
        base=FREE,
        m1="preferences: {local_bias: 0.3}\n" + FREE,
        m2="preferences: {local_bias: 0.7}\n" + FREE,
        ad=f"""\
            modes:
              default: base
              min_dwell: {min_dwell}
              select:
                - {{use: m1, when: battery_ratio < 0.2, for: 1m, clear_for: 2m}}
                - {{use: m2, when: cpu_usage_ratio > 0.9, for: 30s}}
            """)


LOW_BATTERY = {"battery_ratio": 0.1}


def modes_of(decisions: Sequence[Decision]) -> List[Optional[str]]:
    return [d.mode for d in decisions]


def test_mode_needs_its_condition_for_its_for(tmp_path: Path) -> None:
    engine = RuleEngine(mode_set(tmp_path), "ad")
    decisions = run(engine, [(0, LOW_BATTERY), (30, LOW_BATTERY), (60, LOW_BATTERY)])
    assert modes_of(decisions) == ["base", "base", "m1"]
    assert decisions[2].fired == ["mode_switch"] and decisions[2].reasons[0].message == "mode base -> m1"
    assert decisions[2].strategy == "ad"
    assert engine.active_strategy().name == "m1"
    # the new mode's preferences and clamps now apply (m1's baseline pulls nothing: relax 0)
    assert decisions[2].routing["local_bias"] == pytest.approx(0.5)


def test_mode_priority_is_the_order_of_select(tmp_path: Path) -> None:
    engine = RuleEngine(mode_set(tmp_path), "ad")
    both = {**LOW_BATTERY, "cpu_usage_ratio": 1.0}
    decisions = run(engine, [(0, both), (30, both), (60, both), (90, both)])
    # m2 enters first (for: 30s); m1 wins as soon as it has held for its 1m
    assert modes_of(decisions) == ["base", "m2", "m1", "m1"]


@pytest.mark.parametrize("clear", [{"battery_ratio": 0.5}, {}], ids=["false", "unknown"])
def test_mode_is_kept_until_clear_for(tmp_path: Path, clear: Dict[str, float]) -> None:
    engine = RuleEngine(mode_set(tmp_path), "ad")
    steps = [(0, LOW_BATTERY), (30, LOW_BATTERY), (60, LOW_BATTERY)] + [(t, clear) for t in (90, 150, 209, 210)]
    assert modes_of(run(engine, steps)) == ["base", "base", "m1", "m1", "m1", "m1", "base"]


def test_a_short_blip_does_not_leave_the_mode(tmp_path: Path) -> None:
    engine = RuleEngine(mode_set(tmp_path), "ad")
    steps = [(0, LOW_BATTERY), (60, LOW_BATTERY), (90, {}), (120, LOW_BATTERY), (300, {}), (419, {}), (420, {})]
    assert modes_of(run(engine, steps)) == ["base", "m1", "m1", "m1", "m1", "m1", "base"]


def test_min_dwell(tmp_path: Path) -> None:
    engine = RuleEngine(mode_set(tmp_path, min_dwell="5m"), "ad")
    normal = {"battery_ratio": 0.9}
    steps = [(0, LOW_BATTERY), (30, LOW_BATTERY), (60, LOW_BATTERY)] + [(t, normal) for t in (90, 210, 359, 360)]
    # the first switch is not held back (the start does not count toward min_dwell);
    # clear_for would allow leaving at 210, min_dwell holds m1 until 60 + 300
    assert modes_of(run(engine, steps)) == ["base", "base", "m1", "m1", "m1", "m1", "base"]


def test_a_mode_switch_is_step_limited_from_the_clamped_previous_value(tmp_path: Path) -> None:
    strategies = load(
        tmp_path,
        wide="relax: 0\nexploration_floor: 0\nmax_step: {local_bias: 1}\n"
             "rules: [{name: up, when: cpu_usage_ratio > 0.5, actions: {set: {local_bias: 1.0}}}]\n",
        narrow="relax: 0\nexploration_floor: 0\npreferences: {local_bias: 0.2}\n"
               "clamps: {local_bias: [0.0, 0.4]}\nmax_step: {local_bias: 0.05}\n",
        ad="modes:\n  default: wide\n  select: [{use: narrow, when: battery_ratio < 0.2}]\n")
    engine = RuleEngine(strategies, "ad")
    d1, d2, d3 = run(engine, [(0, HOT), (30, LOW_BATTERY), (60, LOW_BATTERY)])
    assert (d1.mode, d1.routing["local_bias"]) == ("wide", 1.0)
    # 1.0 is outside narrow's clamps: it is clamped to 0.4 first, then steps from there
    assert (d2.mode, d2.routing["local_bias"]) == ("narrow", 0.4)
    assert d3.routing["local_bias"] == pytest.approx(0.4)  # relax 0: nothing pulls it further


# ------------------------------------------------------------------ learning


LEARNING = FREE + textwrap.dedent("""\
learning: {rate: 0.5, gain: 1.0, max_offset: 0.3, weights: {quality: 1, latency: 0, cost: 0}}
""")


def quality(cls: str, local: float, api: float) -> Dict[str, float]:
    return {f'quality_mean{{path="local",query_class="{cls}"}}': local,
            f'quality_mean{{path="api",query_class="{cls}"}}': api}


def test_learning_moves_class_offsets_toward_the_better_track(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, LEARNING)
    d1 = engine.evaluate(sv({**quality("long", 0.9, 0.5), **quality("short", 0.5, 0.6)}), now=0)
    assert d1.query_classes["long"]["local_bias"] == pytest.approx(0.8)  # +0.4, capped at max_offset 0.3
    assert d1.query_classes["short"]["local_bias"] == pytest.approx(0.4)  # -0.1
    assert d1.routing["local_bias"] == pytest.approx(0.5)  # learning is per class only
    learned = {r.query_class: r for r in d1.reasons if r.rule == "learning"}
    assert set(learned) == {"long", "short"}
    assert learned["long"].changes == {"local_bias": pytest.approx(0.3)}
    assert learned["long"].message.startswith("local serves long better")
    assert learned["short"].message.startswith("api serves short better")
    # the advantage is an EWMA: 0.5 * -0.1 + 0.5 * -0.4
    d2 = engine.evaluate(sv(quality("short", 0.5, 0.9)), now=30)
    assert d2.query_classes["short"]["local_bias"] == pytest.approx(0.25)
    # no data: the learned offset stays
    d3 = engine.evaluate(sv(), now=60)
    assert d3.query_classes["short"]["local_bias"] == pytest.approx(0.25)
    assert d3.query_classes["long"]["local_bias"] == pytest.approx(0.8)


def test_learning_compares_only_components_both_tracks_have(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, LEARNING.replace("latency: 0,", "latency: 1,"))
    values = {**quality("long", 0.5, 0.5), "latency_target_seconds": 1.0,
              'latency_p95_seconds{path="local",query_class="long"}': 10.0}
    d = engine.evaluate(sv(values), now=0)
    assert d.query_classes["long"]["local_bias"] == pytest.approx(0.5)
    assert "learning" not in d.fired


def test_learning_offset_is_step_limited(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, LEARNING.replace("max_step: {local_bias: 1,", "max_step: {local_bias: 0.1,"))
    decisions = run(engine, [(t, quality("long", 1.0, 0.0)) for t in (0, 30, 60, 90)])
    assert [round(d.query_classes["long"]["local_bias"], 9) for d in decisions] == [0.6, 0.7, 0.8, 0.8]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=8),
       st.floats(0.05, 0.5), st.floats(0.01, 5))  # max_offset <= 0.5 keeps 0.5 +- offset in [0, 1]
def test_learning_direction_and_bounds(tmp_path_factory: pytest.TempPathFactory, observations: List[Tuple[float, float]],
                                       max_offset: float, gain: float) -> None:
    folder = tmp_path_factory.mktemp("learning")
    body = (FREE + f"learning: {{rate: 1.0, gain: {gain!r}, max_offset: {max_offset!r}, "
                   "weights: {quality: 1, latency: 0, cost: 0}}\n")
    engine = engine_for(folder, body, classes=("long",))
    for i, (local, api) in enumerate(observations):
        offset = engine.evaluate(sv(quality("long", local, api)), now=30 * i).query_classes["long"]["local_bias"] - 0.5
        # rate 1: the offset follows the latest advantage, in its direction, within max_offset
        assert abs(offset) <= max_offset + EPS
        assert offset == pytest.approx(max(-max_offset, min(max_offset, gain * (local - api))), abs=1e-9)


# ------------------------------------------------------------------ timeouts


def test_timeouts_follow_the_latency_signal_within_min_max(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, FREE + textwrap.dedent("""\
        timeouts:
          base_seconds: {local: 20, api: 25}
          latency_signal: latency_p95_seconds
          latency_factor: 3
          min_seconds: 2
          max_seconds: 60
        rules:
          - {name: longer, when: cpu_usage_ratio > 0.5, actions: {set: {timeout_multiplier: 2}}}
        """))
    d = engine.evaluate(sv({'latency_p95_seconds{path="local"}': 5.0, 'latency_p95_seconds{path="api"}': 100.0,
                            'latency_p95_seconds{path="parallel"}': 0.1,
                            'latency_p99_seconds{path="local"}': 50.0}), now=0)
    assert d.timeouts_seconds == {"local": 15.0, "api": 60.0, "parallel": 2.0}
    d = engine.evaluate(sv(HOT), now=30)  # no latency data: the base values; the multiplier is not applied
    assert d.routing["timeout_multiplier"] == 2.0
    assert d.timeouts_seconds == {"local": 20.0, "api": 25.0, "parallel": 30.0}


# ------------------------------------------------------------------ hot reload, determinism


def test_hot_reload_keeps_preferences_and_timers(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    v2 = tmp_path / "v2"
    v1.mkdir()
    v2.mkdir()
    body = FREE + textwrap.dedent("""\
        rules:
          - {name: r, when: cpu_usage_ratio > 0.5, for: 1m, actions: {add: {local_bias: STEP}}}
          - {name: c, for_each: query_class, when: memory_used_ratio > 0.5, actions: {add: {local_bias: -0.2}}}
        """)
    engine = RuleEngine(load(v1, s=body.replace("STEP", "0.1")), "s")
    run(engine, [(0, {"memory_used_ratio": 1.0, **HOT}), (30, HOT), (60, HOT)])
    before = (dict(engine.routing), {k: dict(v) for k, v in engine.class_prefs.items()})
    assert before[0]["local_bias"] == pytest.approx(0.6)

    engine.replace_strategies(load(v2, s=body.replace("STEP", "-0.3")))
    assert (engine.routing, engine.class_prefs) == before
    d = engine.evaluate(sv(HOT), now=90)  # the hold timer of 'r' survived the reload
    assert d.fired == ["r"]
    assert d.routing["local_bias"] == pytest.approx(0.3)
    assert d.query_classes["long"]["local_bias"] == pytest.approx(0.1)  # the class offset survived too


def test_hot_reload_without_the_strategy_keeps_the_old_rules(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    engine = RuleEngine(load(tmp_path / "a", s=FREE), "s")
    with pytest.raises(ConfigError, match="no strategy named 's'"):
        engine.replace_strategies(load(tmp_path / "b", other=FREE))
    assert engine.top.name == "s" and "s" in engine.strategies
    engine.evaluate(SignalValues(), now=0)


def test_hot_reload_drops_a_vanished_mode(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    engine = RuleEngine(mode_set(tmp_path / "one"), "ad")
    run(engine, [(0, LOW_BATTERY), (60, LOW_BATTERY)])
    assert engine.mode == "m1"
    (tmp_path / "two").mkdir()
    engine.replace_strategies(load(tmp_path / "two", base=FREE,
                                   ad="modes: {default: base, select: []}\n"))
    assert engine.mode is None
    assert engine.evaluate(SignalValues(), now=90).mode == "base"


def test_same_inputs_same_decisions() -> None:
    strategies = load_strategies(bundled_dir("rules"))
    inputs = [
        {"latency_p95_seconds": 4.0, "latency_target_seconds": 2.0, **quality("long", 0.4, 0.9),
         'success_ratio{path="api"}': 0.3, 'success_ratio{path="local"}': 1.0},
        {"battery_discharging": 1, "battery_ratio": 0.1, "battery_threshold_ratio": 0.2, "timeout_ratio": 0.3},
        {'latency_p95_seconds{path="local"}': 6.0, 'latency_p95_seconds{path="api"}': 1.0,
         'latency_p99_seconds{path="api"}': 3.0, "memory_used_ratio": 0.95},
    ]
    for name in strategies.names():
        a, b = RuleEngine(strategies, name), RuleEngine(strategies, name)
        for i, values in enumerate(itertools.islice(itertools.cycle(inputs), 20)):
            da, db = a.evaluate(sv(values), now=i * 30.0), b.evaluate(sv(values), now=i * 30.0)
            assert da == db


# ------------------------------------------------------------------ regressions


def test_overflowing_learning_inputs_do_not_poison_the_class_preferences(tmp_path: Path) -> None:
    # latency / a tiny target overflows to inf on both tracks; inf - inf is NaN. It used
    # to become the learned advantage, for good, and publish a NaN local_bias.
    engine = engine_for(tmp_path, LEARNING, classes=("long",))
    overflow = {"latency_target_seconds": 1e-300,
                'latency_p95_seconds{path="local",query_class="long"}': 1e10,
                'latency_p95_seconds{path="api",query_class="long"}': 1e10}
    d = engine.evaluate(sv(overflow), now=0)
    assert d.query_classes["long"]["local_bias"] == pytest.approx(0.5)
    # and learning still works afterwards
    decisions = run(engine, [(30 * i, {**quality("long", 0.2, 0.9)}) for i in range(1, 6)])
    assert decisions[-1].query_classes["long"]["local_bias"] < 0.5
    assert all(math.isfinite(v) for d in decisions for p in d.query_classes.values() for v in p.values())


def test_an_overflowing_scale_action_cannot_produce_nan(tmp_path: Path) -> None:
    # global scale to inf, then a per-class add: the class offset is inf - inf = NaN
    engine = engine_for(tmp_path, FREE + textwrap.dedent("""\
        rules:
          - {name: huge, when: cpu_usage_ratio > 0.5, actions: {scale: {timeout_multiplier: 1.0e+308}}}
          - {name: huger, when: cpu_usage_ratio > 0.5, actions: {scale: {timeout_multiplier: 1.0e+308}}}
          - {name: per_class, for_each: query_class, when: cpu_usage_ratio > 0.5,
             actions: {add: {timeout_multiplier: 0.1}}}
        """))
    d = engine.evaluate(sv(HOT), now=0)
    assert d.routing["timeout_multiplier"] == 10.0  # inf, clamped
    for prefs in d.query_classes.values():
        assert all(math.isfinite(v) for v in prefs.values())
    assert all(math.isfinite(v) for v in d.timeouts_seconds.values())


# ------------------------------------------------------------------ properties of the shipped strategies

SHIPPED = load_strategies(bundled_dir("rules"))
CLASSES = ("short", "long")


def _read_by_shipped() -> List[str]:
    """Every signal the shipped strategies read (conditions, timeouts, learning)."""
    names = {"quality_mean", "latency_p95_seconds", "cost_per_request_dollars", "latency_target_seconds",
             "cost_per_request_limit_dollars"}  # what learning reads
    for s in SHIPPED.strategies.values():
        conditions = [r.condition for r in s.rules] + [s.health.condition]
        conditions += [c.condition for c in s.modes.select] if s.modes else []
        names.update(ref.name for c in conditions if c is not None for ref in c.signals())
        names.add(s.timeouts.latency_signal)
    return sorted(names)


def _keys() -> List[Tuple[str, Dict[str, str]]]:
    """(signal, labels) at every level the engine may read: overall, per path, per class, both."""
    keys: List[Tuple[str, Dict[str, str]]] = []
    for name in _read_by_shipped():
        dims = SHIPPED.catalog[name].dims
        paths = ("local", "api", "parallel") if "path" in dims else ()
        classes = CLASSES if "query_class" in dims else ()
        for path in (None,) + paths:
            for qc in (None,) + classes:
                keys.append((name, {k: v for k, v in (("path", path), ("query_class", qc)) if v is not None}))
    return keys


KEYS = _keys()
VALUES = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-0.5, max_value=3.0),
    st.sampled_from([0.0, 1.0, 0.5, 0.05, 0.95, 2.0, 10.0, -1.0, 1e308, -1e308, 1e-300, 5e-324,
                     math.nan, math.inf, -math.inf]),
)
INDEX = st.integers(0, len(KEYS) - 1)
#: Unlabelled signals (machine state, limits, overall latency...) drive the adaptive
#: modes; giving each a value most of the time makes mode switches common.
UNLABELLED = st.fixed_dictionaries({i: VALUES for i, (_, labels) in enumerate(KEYS) if not labels})
CYCLES = st.lists(
    st.tuples(st.sampled_from([0.0, 1.0, 10.0, 30.0, 30.0, 30.0, 60.0, 120.0, 600.0]),
              st.dictionaries(INDEX, VALUES, max_size=12)),
    min_size=1, max_size=25)


def _signal_values(state: Mapping[int, Optional[float]]) -> SignalValues:
    values = SignalValues()
    for index, value in state.items():
        name, labels = KEYS[index]
        values.set(name, labels, value)
    return values


def _check_bounds(active: Strategy, previous_active: Strategy, new: Mapping[str, float],
                  old: Mapping[str, float], healthy: Mapping[str, Optional[bool]], where: str,
                  current: Mapping[str, bool]) -> None:
    for pref in PREFS:
        lo, hi = active.clamps[pref]
        step = active.max_step[pref]
        value = new[pref]
        assert math.isfinite(value), f"{where}.{pref} = {value}"
        assert lo <= value <= hi, f"{where}.{pref} = {value} outside {active.name} clamps [{lo}, {hi}]"
        # _bound steps from the previous value clamped into the active strategy's clamps ...
        anchor = min(max(old[pref], lo), hi)
        assert abs(value - anchor) <= step + EPS, f"{where}.{pref}: {old[pref]} -> {value}, max_step {step}"
        # ... which is the previous value itself unless the strategy changed
        if active.name == previous_active.name:
            assert abs(value - old[pref]) <= step + EPS
        # health gate: an unhealthy track drives local_bias to the clamp edge, one step at a
        # time, unless an objective weighs it on this interval's calls (``current``)
        if pref == "local_bias":
            local_ok = healthy["local"] is not False or current["local"]
            api_ok = healthy["api"] is not False or current["api"]
            if local_ok and not api_ok:
                assert value == pytest.approx(min(hi, anchor + step), abs=EPS)
            elif api_ok and not local_ok:
                assert value == pytest.approx(max(lo, anchor - step), abs=EPS)


def _index(key: str) -> int:
    name, labels = parse_selector(key)
    return KEYS.index((name, labels))


@pytest.mark.parametrize("name", sorted(SHIPPED.names()))
@settings(max_examples=200, deadline=None)
# Overflowing learning inputs (a regression: they used to publish a NaN class local_bias).
@example(unlabelled={_index("latency_target_seconds"): 1e-300},
         labelled={_index('latency_p95_seconds{path="local",query_class="long"}'): 1e10,
                   _index('latency_p95_seconds{path="api",query_class="long"}'): 1e10},
         cycles=[(0.0, {}), (30.0, {})])
@given(unlabelled=UNLABELLED, labelled=st.dictionaries(INDEX, VALUES, max_size=30), cycles=CYCLES)
def test_preferences_stay_in_clamps_and_move_at_most_max_step(
        name: str, unlabelled: Dict[int, Optional[float]], labelled: Dict[int, Optional[float]],
        cycles: List[Tuple[float, Dict[int, Optional[float]]]]) -> None:
    engine = RuleEngine(SHIPPED, name, query_classes=CLASSES)
    twin = RuleEngine(SHIPPED, name, query_classes=CLASSES)
    top = SHIPPED[name]
    state = {k: v for k, v in {**unlabelled, **labelled}.items() if v is not None}
    now = 0.0
    last_switch: Optional[float] = None
    for dt, delta in cycles:
        now += dt
        for index, value in delta.items():
            if value is None:
                state.pop(index, None)  # the signal stops reporting
            else:
                state[index] = value
        previous_active = engine.active_strategy()
        prev_routing = dict(engine.routing)
        prev_classes = {qc: dict(p) for qc, p in engine.class_prefs.items()}

        decision = engine.evaluate(_signal_values(state), now=now)

        active = engine.active_strategy()
        if active.name != previous_active.name:
            event("mode switch")
        if False in decision.healthy.values():
            event("unhealthy track")
        if any(r.rule not in ("mode_switch", "unhealthy_track", "track_recovered") for r in decision.reasons):
            event("a rule fired")
        # An objective's estimates of a track are current with enough calls in the interval.
        est = engine.estimator
        current = {t: (active.objective or top.objective) is not None and est is not None
                   and est.interval_calls[t] >= est.settings.min_calls for t in ("local", "api")}
        _check_bounds(active, previous_active, decision.routing, prev_routing, decision.healthy, "routing",
                      current)
        assert set(decision.query_classes) == set(CLASSES)
        for qc in CLASSES:
            _check_bounds(active, previous_active, decision.query_classes[qc], prev_classes[qc],
                          decision.healthy, f"query_classes.{qc}", current)
        assert decision.routing == engine.routing
        t = active.timeouts
        # Above max_seconds only by the target floor, and never beyond its ceiling.
        most = max(t.max_seconds, TIMEOUT_FLOOR_MAX_SECONDS if t.target_floor > 0 else 0.0)
        for path, seconds in decision.timeouts_seconds.items():
            assert t.min_seconds - 1e-3 <= seconds <= most + 1e-3, path
            if seconds > t.max_seconds + 1e-3:
                target = _signal_values(state).get("latency_target_seconds", {})
                assert target is not None and seconds == pytest.approx(
                    min(t.target_floor * target, TIMEOUT_FLOOR_MAX_SECONDS), abs=1e-3), path
        if top.modes is not None:
            assert decision.mode in {top.modes.default} | {c.use for c in top.modes.select}
            if "mode_switch" in decision.fired:
                assert last_switch is None or now - last_switch >= top.modes.min_dwell_seconds
                last_switch = now
        else:
            assert decision.mode is None and active is top
        # determinism: a second engine fed the same inputs decides the same
        assert twin.evaluate(_signal_values(state), now=now) == decision


def _interval_counts(track: str, qc: str, calls: float, success: float) -> Dict[str, float]:
    labels = f'{{path="{track}",query_class="{qc}"}}'
    ok = calls * success
    return {f"interval_calls{labels}": calls, f"interval_successes{labels}": ok,
            f"interval_within_target{labels}": ok, f"interval_useful{labels}": ok,
            f"interval_quality_sum{labels}": 0.9 * ok, f"interval_quality_count{labels}": ok,
            f"interval_latency_sum{labels}": calls * 1.0, f"interval_latency_count{labels}": calls}


def test_an_objective_strategy_is_gated_on_a_failing_track_it_has_no_current_calls_for() -> None:
    # The objective weighs a failing track from its interval counts. When the router steered
    # away from the track at once (or the counts are missing), the track's estimates stay
    # those of before the failure; the health condition, over the signal window, says it.
    engine = RuleEngine(SHIPPED, "adaptive", query_classes=("short", "long"))
    both = {**_interval_counts("local", "short", 40, 1.0), **_interval_counts("api", "short", 40, 1.0),
            **_interval_counts("local", "long", 40, 1.0), **_interval_counts("api", "long", 40, 1.0),
            **ALL_UP}
    engine.evaluate(sv(both), now=0)
    before = {qc: engine.class_prefs[qc]["local_bias"] for qc in ("short", "long")}
    local_only = {**_interval_counts("local", "short", 40, 1.0), **_interval_counts("local", "long", 40, 1.0),
                  **API_DOWN}
    hi = SHIPPED["adaptive"].clamps["local_bias"][1]
    step = SHIPPED["adaptive"].max_step["local_bias"]
    d = engine.evaluate(sv(local_only), now=30)
    assert d.healthy["api"] is False and "unhealthy_track" in d.fired
    for qc in ("short", "long"):
        assert d.query_classes[qc]["local_bias"] == pytest.approx(min(hi, before[qc] + step))
