"""Tests for dualtrack.adapter.strategy: loading, validation and compilation of rule files."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import List

import jsonschema
import pytest

from dualtrack.adapter.conditions import Context
from dualtrack.adapter.signals import BUILTIN_CATALOG
from dualtrack.adapter.strategy import (
    DEFAULT_BASELINE,
    DEFAULT_MAX_STEP,
    HARD_LIMITS,
    PREFS,
    STRATEGY_SCHEMA,
    StrategySet,
    load_strategies,
    parse_duration,
    rule_files,
)
from dualtrack.bundled import bundled_dir
from dualtrack.errors import ConfigError
from dualtrack.objective import OBJECTIVE

SHIPPED = {"adaptive", "balanced", "cost", "latency_focused", "quality_focused", "resource_efficient"}

#: a valid rule to pad files with
RULE = """\
  - name: ok_rule
    when: latency_p95_seconds > 1
    actions: {add: {local_bias: 0.1}}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_strategies(path)
    return info.value


# ------------------------------------------------------------------ shipped strategies


def test_every_shipped_file_loads() -> None:
    folder = bundled_dir("rules")
    strategies = load_strategies(folder)
    assert set(strategies.names()) == SHIPPED
    assert len(rule_files([folder])) == len(SHIPPED)
    for name in SHIPPED:
        s = strategies[name]
        assert Path(s.source).name == f"{name}.yaml"
        assert s.description
        assert s.tests, f"{name} ships without tests"
        for pref in PREFS:
            lo, hi = s.clamps[pref]
            assert HARD_LIMITS[pref][0] <= lo <= s.baseline[pref] <= hi <= HARD_LIMITS[pref][1]
            assert s.max_step[pref] > 0
        lo, hi = s.clamps["local_bias"]
        assert lo >= s.exploration_floor and hi <= 1 - s.exploration_floor
    adaptive = strategies["adaptive"]
    assert adaptive.objective is not None  # objective-driven: the benchmark's own weights
    assert dict(adaptive.objective.weights) == pytest.approx(OBJECTIVE.as_dict())


def test_shipped_files_point_editors_at_the_schema() -> None:
    for path in rule_files([bundled_dir("rules")]):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema=")
        target = (path.parent / first.split("$schema=", 1)[1]).resolve()
        if target.exists():  # a source checkout; a wheel has no ../src
            assert target.name == "strategy.schema.json"


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(STRATEGY_SCHEMA)


def test_strategy_set_lookup_suggests() -> None:
    strategies = load_strategies(bundled_dir("rules"))
    assert "balanced" in strategies and "nope" not in strategies
    with pytest.raises(ConfigError, match="did you mean 'balanced'"):
        strategies["balancd"]
    with pytest.raises(ConfigError, match="loaded: "):
        strategies["zzzz"]
    assert len(strategies.sources()) == len(SHIPPED)


# ------------------------------------------------------------------ defaults


def test_a_minimal_file_takes_the_defaults(tmp_path: Path) -> None:
    s = load_strategies(write(tmp_path, "m.yaml", "strategy: minimal\n"))["minimal"]
    assert dict(s.baseline) == DEFAULT_BASELINE
    assert dict(s.max_step) == DEFAULT_MAX_STEP
    assert s.relax == 0.1 and s.exploration_floor == 0.05
    assert s.clamps["local_bias"] == (0.05, 0.95)  # the floor narrows the hard limits
    assert s.clamps["timeout_multiplier"] == HARD_LIMITS["timeout_multiplier"]
    assert s.health.condition is not None
    assert s.health.condition.text == "success_ratio + coalesce(rate_limited_ratio, 0) < 0.5"
    assert s.timeouts.latency_signal == "latency_p99_seconds" and s.timeouts.latency_factor == 2.0
    assert dict(s.timeouts.base_seconds) == {"local": 30.0, "api": 30.0, "parallel": 30.0}
    assert not s.learning.enabled and s.modes is None and s.rules == () and s.tests == []


def test_learning_section_enables_learning_unless_disabled(tmp_path: Path) -> None:
    on = write(tmp_path, "on.yaml", "strategy: learns\nlearning: {rate: 0.5}\n")
    off = write(tmp_path, "off.yaml", "strategy: static\nlearning: {enabled: false, rate: 0.5}\n")
    strategies = load_strategies([on, off])
    assert strategies["learns"].learning.enabled and strategies["learns"].learning.rate == 0.5
    assert not strategies["static"].learning.enabled
    assert dict(strategies["learns"].learning.weights) == {"quality": 1.0, "latency": 0.5, "cost": 0.5}


def test_rule_compilation(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", """\
        strategy: r
        rules:
          - name: first
            when: latency_p95_seconds > 1
            actions: {add: {local_bias: 0.1}}
          - name: second
            description: per class
            for_each: query_class
            when: quality_mean{path="local"} < 0.5
            for: 1m30s
            cooldown: 500ms
            actions: {add: {quality_threshold: -0.05}, scale: {timeout_multiplier: 1.5}, set: {local_bias: 0.2}}
        """)
    s = load_strategies(path)["r"]
    first, second = s.rules
    assert (first.name, first.line, first.hold_seconds, first.cooldown_seconds, first.for_each) == (
        "first", 3, 0.0, 0.0, None)
    assert (second.hold_seconds, second.cooldown_seconds, second.for_each, second.line) == (
        90.0, 0.5, "query_class", 6)
    # actions are ordered set, scale, add whatever the order in the file
    assert [(a.op, a.pref, a.value) for a in second.actions] == [
        ("set", "local_bias", 0.2), ("scale", "timeout_multiplier", 1.5), ("add", "quality_threshold", -0.05)]


def test_mode_clear_for_defaults_to_for(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", "strategy: base\n")
    write(tmp_path, "other.yaml", "strategy: other\n")
    write(tmp_path, "ad.yaml", """\
        strategy: ad
        modes:
          default: base
          min_dwell: 2m
          select:
            - {use: other, when: battery_ratio < 0.2, for: 30s}
            - {use: base, when: battery_ratio > 0.9, for: 10s, clear_for: 1h}
        """)
    modes = load_strategies(tmp_path)["ad"].modes
    assert modes is not None and modes.min_dwell_seconds == 120
    assert [(c.hold_seconds, c.clear_seconds) for c in modes.select] == [(30, 30), (10, 3600)]


# ------------------------------------------------------------------ errors name file, line and field


def test_error_format(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", "strategy: s\nrelax: 0.1\nrelx: 0.2\n")
    err = load_error(path)
    assert (err.source, err.line, err.field) == (str(path), 3, "relx")
    assert err.message == "unknown field; did you mean 'relax'?"
    assert str(err) == f"{path}:3: relx: unknown field; did you mean 'relax'?"


def test_unknown_field_in_a_rule(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", """\
        strategy: s
        rules:
          - name: r
            when: latency_p95_seconds > 1
            actions: {add: {local_bias: 0.1}}
            cooldwn: 1m
        """)
    err = load_error(path)
    assert (err.line, err.field, err.message) == (6, "rules[0].cooldwn", "unknown field; did you mean 'cooldown'?")


def test_unknown_preference_name(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "s.yaml", "strategy: s\nclamps:\n  local_bais: [0, 1]\n"))
    assert err.field == "clamps" and err.line == 2 and "'local_bais' is not one of" in err.message


@pytest.mark.parametrize("value", ["5 minutes", "1d", "-5", "30 s", "m"])
def test_bad_duration(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, "s.yaml", f"""\
        strategy: s
        rules:
          - name: r
            when: latency_p95_seconds > 1
            for: "{value}"
            actions: {{add: {{local_bias: 0.1}}}}
        """)
    err = load_error(path)
    assert (err.source, err.line, err.field) == (str(path), 5, "rules[0].for")


def test_negative_numeric_duration(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", "strategy: s\nmodes:\n  default: x\n  min_dwell: -1\n  select: []\n")
    err = load_error(path)
    assert (err.line, err.field) == (4, "modes.min_dwell") and "minimum" in err.message


def test_invalid_condition_names_rule(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", "strategy: s\nrules:\n" + RULE + """\
  - name: broken
    when: latncy_p95_seconds > 1
    actions: {add: {local_bias: 0.1}}
""")
    err = load_error(path)
    assert (err.line, err.field) == (7, "rules[1].when")
    assert err.message == ("rule 'broken': unknown signal 'latncy_p95_seconds'; "
                           "did you mean 'latency_p95_seconds'? (column 1)")


@pytest.mark.parametrize("when,expected", [
    ("latency_p95_seconds + 1", "a condition must be a comparison"),
    ("latency_p95_seconds >", "the condition ends too early"),
    ('latency_p95_seconds{path="moon"} > 1', "path='moon' is not one of"),
    ('battery_ratio{path="local"} > 1', "cannot be selected by 'path'"),
    ("not " * 1000 + "true", "the condition is nested too deeply"),
])
def test_condition_errors(tmp_path: Path, when: str, expected: str) -> None:
    path = write(tmp_path, "s.yaml", f"strategy: s\nrules:\n  - name: r\n    when: '{when}'\n"
                                     "    actions: {add: {local_bias: 0.1}}\n")
    err = load_error(path)
    assert (err.line, err.field) == (4, "rules[0].when")
    assert err.message.startswith("rule 'r': ") and expected in err.message


def test_health_and_mode_conditions_are_checked(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "h.yaml", "strategy: h\nhealth:\n  unhealthy_when: sucess_ratio < 0.5\n"))
    assert (err.line, err.field) == (3, "health.unhealthy_when") and "did you mean 'success_ratio'" in err.message
    err = load_error(write(tmp_path, "m.yaml", "strategy: m\nmodes:\n  default: x\n  select:\n"
                                               "    - use: y\n      when: battery_ratio <\n"))
    assert (err.line, err.field, err.message) == (6, "modes.select[0].when", "the condition ends too early")


@pytest.mark.parametrize("pair,message", [
    ("[0.0, 1.5]", "[0, 1.5] is outside [0, 1]"),
    ("[-0.1, 0.5]", "[-0.1, 0.5] is outside [0, 1]"),
    ("[0.8, 0.2]", "low 0.8 is above high 0.2"),
])
def test_clamps_out_of_range(tmp_path: Path, pair: str, message: str) -> None:
    err = load_error(write(tmp_path, "s.yaml", f"strategy: s\nclamps:\n  quality_threshold: {pair}\n"))
    assert (err.line, err.field, err.message) == (3, "clamps.quality_threshold", message)


def test_clamps_must_be_pairs(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "s.yaml", "strategy: s\nclamps:\n  quality_threshold: [0.1]\n"))
    assert (err.line, err.field) == (3, "clamps.quality_threshold")


def test_baseline_outside_clamps(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", """\
        strategy: s
        preferences: {local_bias: 0.5, timeout_multiplier: 4.0}
        clamps:
          timeout_multiplier: [0.5, 3.0]
        """)
    err = load_error(path)
    assert (err.line, err.field) == (2, "preferences.timeout_multiplier")
    assert err.message.startswith("4 is outside its clamps [0.5, 3]")


def test_baseline_outside_hard_limits(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "s.yaml", "strategy: s\npreferences:\n  local_bias: 1.5\n"))
    assert (err.line, err.field, err.message) == (3, "preferences.local_bias", "1.5 is outside [0, 1]")


def test_floor_narrows_local_bias_below_the_baseline(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "s.yaml", "strategy: s\nexploration_floor: 0.3\npreferences: {local_bias: 0.8}\n"))
    assert err.field == "preferences.local_bias" and "0.8 is outside its clamps [0.3, 0.7]" in err.message


def test_floor_leaving_no_room(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", """\
        strategy: s
        preferences: {local_bias: 0.8}
        clamps:
          local_bias: [0.7, 1.0]
        exploration_floor: 0.4
        """)
    err = load_error(path)
    assert (err.line, err.field) == (5, "exploration_floor")
    assert err.message == "a floor of 0.4 leaves no room inside the local_bias clamps"


def test_duplicate_rule_names(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "s.yaml", "strategy: s\nrules:\n" + RULE + RULE))
    assert (err.line, err.field, err.message) == (6, "rules[1].name", "rule name 'ok_rule' is already used by rules[0]")


@pytest.mark.parametrize("yaml_text,line,field,message", [
    ("max_step: {local_bias: 0}\n", 2, "max_step.local_bias", "must be greater than 0, got 0"),
    ("timeouts: {min_seconds: 10, max_seconds: 5}\n", 2, "timeouts.min_seconds", "min_seconds is above max_seconds"),
    ("timeouts:\n  latency_signal: battery_ratio\n", 3, "timeouts.latency_signal",
     "'battery_ratio' is not a signal with a path label"),
    ("rules:\n  - name: r\n    when: 'true'\n    actions: {set: {local_bias: 2}}\n", 5,
     "rules[0].actions.set.local_bias", "rule 'r': 2 is outside [0, 1]"),
    ("rules:\n  - name: r\n    when: 'true'\n    actions: {scale: {local_bias: -1}}\n", 5,
     "rules[0].actions.scale.local_bias", "rule 'r': a scale factor cannot be negative"),
    ("rules:\n  - name: r\n    when: 'true'\n    actions: {}\n", 5, "rules[0].actions", "{} should be non-empty"),
    ("relax: 1.5\n", 2, "relax", "1.5 is greater than the maximum of 1"),
    ("timeouts: {target_floor: -1}\n", 2, "timeouts.target_floor", "-1 is less than the minimum of 0"),
])
def test_range_errors(tmp_path: Path, yaml_text: str, line: int, field: str, message: str) -> None:
    err = load_error(write(tmp_path, "s.yaml", "strategy: s\n" + yaml_text))
    assert (err.line, err.field, err.message) == (line, field, message)


@pytest.mark.parametrize("key, given, default, bundled", [
    ("probe_calls", 2.5, 1.0, 1.0),
    ("observed_calls", 8.0, 0.0, 0.0),  # off unless a strategy asks for it (adaptive: probe_after_change)
])
def test_the_objective_probing_settings(tmp_path: Path, key: str, given: float, default: float,
                                        bundled: float) -> None:
    objective = load_strategies(write(tmp_path, "s.yaml", f"strategy: s\nobjective:\n  {key}: {given}\n"))["s"].objective
    assert objective is not None and getattr(objective, key) == given
    unset = load_strategies(write(tmp_path, "d.yaml", "strategy: d\nobjective:\n  probe: 0.02\n"))["d"].objective
    assert getattr(unset, key) == default
    assert getattr(load_strategies(bundled_dir("rules"))["adaptive"].objective, key) == bundled
    err = load_error(write(tmp_path, "t.yaml", f"strategy: t\nobjective:\n  {key}: -1\n"))
    assert (err.line, err.field, err.message) == (3, f"objective.{key}", "-1 is less than the minimum of 0")


def test_the_objective_probes_for_recoveries_only_when_asked(tmp_path: Path) -> None:
    asked = load_strategies(write(tmp_path, "s.yaml", "strategy: s\nobjective:\n  probe_after_change: true\n"))
    assert asked["s"].objective is not None and asked["s"].objective.probe_after_change is True
    unset = load_strategies(write(tmp_path, "d.yaml", "strategy: d\nobjective:\n  probe: 0.02\n"))["d"].objective
    assert unset is not None and unset.probe_after_change is False
    assert load_strategies(bundled_dir("rules"))["adaptive"].objective.probe_after_change is True
    err = load_error(write(tmp_path, "t.yaml", "strategy: t\nobjective:\n  probe_after_change: often\n"))
    assert (err.line, err.field) == (3, "objective.probe_after_change")
    assert "is not of type 'boolean'" in err.message


def test_the_objective_battery_horizon_is_a_duration(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", "strategy: s\nobjective:\n  battery_horizon: 1h30m\n")
    objective = load_strategies(path)["s"].objective
    assert objective is not None and objective.battery_horizon == 5400.0
    bare = write(tmp_path, "t.yaml", "strategy: t\nobjective:\n  probe: 0.02\n")
    assert load_strategies(bare)["t"].objective.battery_horizon == 0.0  # not planned unless asked
    err = load_error(write(tmp_path, "u.yaml", "strategy: u\nobjective:\n  battery_horizon: soon\n"))
    assert (err.line, err.field) == (3, "objective.battery_horizon")
    assert "'soon' does not match" in err.message


@pytest.mark.parametrize("yaml_text,line,field", [
    ("relax: .nan\n", 2, "relax"),
    ("max_step: {local_bias: .nan}\n", 2, "max_step.local_bias"),
    ("timeouts: {max_seconds: .inf}\n", 2, "timeouts.max_seconds"),
    ("timeouts: {target_floor: .inf}\n", 2, "timeouts.target_floor"),
    ("learning: {rate: .nan}\n", 2, "learning.rate"),
    ("rules:\n  - name: r\n    when: 'true'\n    actions: {add: {local_bias: .nan}}\n", 5,
     "rules[0].actions.add.local_bias"),
])
def test_non_finite_numbers_are_rejected(tmp_path: Path, yaml_text: str, line: int, field: str) -> None:
    # JSON Schema's minimum/maximum let NaN through; a NaN would reach the preferences.
    err = load_error(write(tmp_path, "s.yaml", "strategy: s\n" + yaml_text))
    assert (err.line, err.field) == (line, field)
    assert err.message == "must be a finite number (not .nan or .inf)"


def test_nan_signal_values_in_tests_are_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", """\
        strategy: s
        tests:
          - name: nan is no data
            cycles: [{signals: {latency_p95_seconds: .nan}}]
            expect: [{cycle: 1, routing: {local_bias: 0.5}}]
        """)
    assert load_strategies(path)["s"].tests[0]["name"] == "nan is no data"


def test_invalid_yaml_syntax_has_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", "strategy: s\nrules:\n  - name: r\n    when: [unclosed\n    for: 1m\n")
    err = load_error(path)
    assert err.source == str(path) and err.line == 5 and err.message.startswith("invalid YAML: ")


def test_tabs_are_invalid_yaml(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "s.yaml", "strategy: s\nclamps:\n\tlocal_bias: [0, 1]\n"))
    assert err.line == 3 and "invalid YAML" in err.message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "", "# only a comment\n", "42\n"])
def test_non_mapping_document(tmp_path: Path, text: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    err = load_error(path)
    assert (err.source, err.line) == (str(path), 1)
    assert err.message == "expected a mapping with at least 'strategy:'"


def test_missing_strategy_name(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "s.yaml", "description: nameless\n"))
    assert err.line == 1 and "'strategy' is a required property" in err.message


def test_bad_strategy_name(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "s.yaml", "strategy: Bad-Name\n"))
    assert (err.line, err.field) == (1, "strategy")


def test_duplicate_strategy_names_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", "strategy: same\n")
    second = write(tmp_path, "b.yaml", "description: again\nstrategy: same\n")
    err = load_error(tmp_path)
    assert (err.source, err.line, err.field) == (str(second), 2, "strategy")
    assert err.message == f"strategy 'same' is also defined in {first}"


# ------------------------------------------------------------------ adaptive modes


@pytest.fixture
def base_strategies(tmp_path: Path) -> Path:
    write(tmp_path, "balanced.yaml", "strategy: balanced\n")
    write(tmp_path, "cost.yaml", "strategy: cost\n")
    return tmp_path


def adaptive_file(folder: Path, name: str, default: str, use: str) -> Path:
    return write(folder, f"{name}.yaml", f"""\
        strategy: {name}
        modes:
          default: {default}
          select:
            - use: {use}
              when: battery_ratio < 0.2
        """)


def test_mode_naming_a_missing_strategy(base_strategies: Path) -> None:
    path = adaptive_file(base_strategies, "adaptive", "balanced", "cots")
    err = load_error(base_strategies)
    assert (err.source, err.line, err.field) == (str(path), 5, "modes.select[0].use")
    assert err.message == "no strategy named 'cots'; did you mean 'cost'?"


def test_mode_default_missing(base_strategies: Path) -> None:
    adaptive_file(base_strategies, "adaptive", "zzzz", "cost")
    err = load_error(base_strategies)
    assert (err.line, err.field) == (3, "modes.default") and "no strategy named 'zzzz'; loaded: [" in err.message


def test_mode_naming_itself(base_strategies: Path) -> None:
    adaptive_file(base_strategies, "adaptive", "balanced", "adaptive")
    err = load_error(base_strategies)
    assert (err.field, err.message) == ("modes.select[0].use", "a strategy cannot use itself as a mode")


def test_mode_naming_another_adaptive_strategy(base_strategies: Path) -> None:
    adaptive_file(base_strategies, "one", "balanced", "cost")
    adaptive_file(base_strategies, "two", "one", "cost")
    err = load_error(base_strategies)
    assert err.field == "modes.default"
    assert err.message == "mode 'one' is itself an adaptive strategy; modes cannot nest"


# ------------------------------------------------------------------ user signals


def test_user_promql_signals_are_usable_in_conditions(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", """\
        strategy: s
        signals:
          - name: gpu_temperature_celsius
            promql: max(DCGM_FI_DEV_GPU_TEMP)
            help: hottest GPU
            unit: celsius
          - name: queue_depth
            promql: sum by (path) (my_queue_depth)
            labels: [path]
        rules:
          - name: hot
            when: gpu_temperature_celsius > 85 and queue_depth{path="local"} > 10
            actions: {add: {local_bias: -0.1}}
        """)
    strategies = load_strategies(path)
    s = strategies["s"]
    assert [sig.name for sig in s.signals] == ["gpu_temperature_celsius", "queue_depth"]
    sig = strategies.catalog["gpu_temperature_celsius"]
    assert not sig.builtin and sig.promql == "max(DCGM_FI_DEV_GPU_TEMP)" and sig.unit == "celsius"
    assert strategies.catalog["queue_depth"].dims == ("path",)
    assert "gpu_temperature_celsius" not in BUILTIN_CATALOG  # the shared catalog is not mutated
    values = {"gpu_temperature_celsius": 90.0, 'queue_depth{path="local"}': 11.0}
    lookup = lambda name, labels: values.get(  # noqa: E731
        name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""))
    assert s.rules[0].condition.evaluate(Context(lookup)) is True


def test_user_signal_defined_in_one_file_is_usable_in_another(tmp_path: Path) -> None:
    write(tmp_path, "a_signals.yaml", "strategy: sigs\nsignals:\n  - {name: my_signal, promql: vector(1)}\n")
    write(tmp_path, "b.yaml", "strategy: b\nrules:\n  - name: r\n    when: my_signal > 0\n"
                              "    actions: {add: {local_bias: 0.1}}\n")
    assert load_strategies(tmp_path)["b"].rules[0].condition.text == "my_signal > 0"


def test_user_signal_clashing_with_a_builtin(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", """\
        strategy: s
        signals:
          - name: mine
            promql: vector(1)
          - name: battery_ratio
            promql: vector(1)
        """)
    err = load_error(path)
    assert (err.source, err.line, err.field) == (str(path), 5, "signals[1].name")
    assert err.message == "signal 'battery_ratio' is built in; choose another name"


def test_user_signal_defined_differently_in_two_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "strategy: a\nsignals:\n  - {name: mine, promql: vector(1)}\n")
    write(tmp_path, "b.yaml", "strategy: b\nsignals:\n  - {name: mine, promql: vector(1)}\n")
    assert set(load_strategies(tmp_path).names()) == {"a", "b"}  # the same definition twice is fine
    c = write(tmp_path, "c.yaml", "strategy: c\nsignals:\n  - {name: mine, promql: vector(2)}\n")
    err = load_error(tmp_path)
    assert (err.source, err.line, err.field) == (str(c), 3, "signals[0].name")
    assert "defined differently in" in err.message and "a.yaml" in err.message


@pytest.mark.parametrize("entry,field", [
    ("{name: bad-name, promql: up}", "signals[0].name"),
    ("{name: ok, promql: '  '}", "signals[0].promql"),
    ("{name: ok, promql: up, labels: [1]}", "signals[0].labels[0]"),
    ("{name: ok}", "signals[0]"),
])
def test_bad_user_signal(tmp_path: Path, entry: str, field: str) -> None:
    err = load_error(write(tmp_path, "s.yaml", f"strategy: s\nsignals:\n  - {entry}\n"))
    assert (err.line, err.field) == (3, field)


# ------------------------------------------------------------------ files and folders


def test_missing_path(tmp_path: Path) -> None:
    err = load_error(tmp_path / "nope.yaml")
    assert err.source == str(tmp_path / "nope.yaml") and err.message == "no such file or folder"


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a rule file")
    assert load_error(tmp_path).message == "no strategy files (*.yaml) found"


def test_rule_files_expands_folders_sorted(tmp_path: Path) -> None:
    for name in ["b.yml", "a.yaml", "c.txt"]:
        (tmp_path / name).write_text("strategy: x\n")
    (tmp_path / "sub.yaml").mkdir()
    assert [p.name for p in rule_files([tmp_path])] == ["a.yaml", "b.yml"]


# ------------------------------------------------------------------ collecting every error


def test_errors_list_collects_one_problem_per_bad_file(tmp_path: Path) -> None:
    write(tmp_path, "a_good.yaml", "strategy: good\n")
    bad1 = write(tmp_path, "b_bad.yaml", "strategy: bad_one\nrelx: 1\n")
    bad2 = write(tmp_path, "c_bad.yaml", "strategy: bad_two\nrules:\n  - name: r\n    when: nope > 1\n"
                                         "    actions: {add: {local_bias: 0.1}}\n    cooldown: soon\n")
    bad3 = write(tmp_path, "d_bad.yaml", "strategy: [unclosed\n")
    write(tmp_path, "e_good.yaml", "strategy: also_good\n")
    errors: List[ConfigError] = []
    strategies = load_strategies(tmp_path, errors=errors)
    assert isinstance(strategies, StrategySet)
    assert strategies.names() == ["also_good", "good"]
    assert sorted((e.source, e.line, e.field) for e in errors) == [
        (str(bad1), 2, "relx"), (str(bad2), 6, "rules[0].cooldown"), (str(bad3), 2, None)]


def test_errors_list_checks_cross_references_among_the_good_files(tmp_path: Path) -> None:
    write(tmp_path, "balanced.yaml", "strategy: balanced\n")
    write(tmp_path, "cost.yaml", "strategy: cost\nrelax: 2\n")  # bad: so 'cost' is not loaded
    adaptive = adaptive_file(tmp_path, "adaptive", "balanced", "cost")
    ok = adaptive_file(tmp_path, "fine", "balanced", "balanced")
    dup = write(tmp_path, "z_dup.yaml", "strategy: balanced\n")
    errors: List[ConfigError] = []
    strategies = load_strategies(tmp_path, errors=errors)
    assert strategies.names() == ["balanced", "fine"]
    by_file = {e.source: e for e in errors}
    assert set(by_file) == {str(tmp_path / "cost.yaml"), str(adaptive), str(dup)}
    assert by_file[str(adaptive)].field == "modes.select[0].use"
    assert "no strategy named 'cost'" in by_file[str(adaptive)].message
    assert "is also defined in" in by_file[str(dup)].message
    assert str(ok) not in by_file


def test_errors_list_reports_missing_paths_and_keeps_going(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "strategy: a\n")
    errors: List[ConfigError] = []
    strategies = load_strategies([tmp_path / "missing", tmp_path], errors=errors)
    assert strategies.names() == ["a"]
    assert [(e.source, e.message) for e in errors] == [(str(tmp_path / "missing"), "no such file or folder")]


def test_errors_list_reports_an_empty_folder(tmp_path: Path) -> None:
    errors: List[ConfigError] = []
    assert load_strategies(tmp_path, errors=errors).names() == []
    assert [e.message for e in errors] == ["no strategy files (*.yaml) found"]


def test_errors_list_stays_empty_for_good_files() -> None:
    errors: List[ConfigError] = []
    assert set(load_strategies(bundled_dir("rules"), errors=errors).names()) == SHIPPED
    assert errors == []


def test_without_errors_list_the_first_problem_raises(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "strategy: a\nrelx: 1\n")
    write(tmp_path, "b.yaml", "strategy: b\nrelx: 1\n")
    err = load_error(tmp_path)
    assert err.source == str(tmp_path / "a.yaml")


# ------------------------------------------------------------------ parse_duration


@pytest.mark.parametrize("value,seconds", [
    (30, 30.0), (0, 0.0), (2.5, 2.5), ("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0),
    ("1m30s", 90.0), ("1h2m3s", 3723.0), ("1.5s", 1.5), (" 10s ", 10.0), ("0s", 0.0), ("1s500ms", 1.5),
    ("1d", 86400.0),  # one duration grammar with PromQL's (vocabulary.parse_duration): days and weeks too
])
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["", "30", "30 s", "1x", "s", "-5s", "1m 30s", "5 minutes", "1.s", "30s1m", "1m1m",
                                   True, None, [1], -1])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)  # type: ignore[arg-type]
