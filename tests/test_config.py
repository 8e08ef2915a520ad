"""OptimizationStrategy, ResourceConstraints, ModelPrice and OptimizationConfig:
the spec's defaults, and eager validation of every field (wrong type,
bool-for-int, NaN, inf, negative, zero where impossible), plus loading from
dicts and YAML with file, line and field in every error."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict

import pytest

from dualtrack.config import (
    DEFAULT_QUERY_CLASSES,
    ModelPrice,
    OptimizationConfig,
    OptimizationStrategy,
    ResourceConstraints,
)
from dualtrack.errors import ConfigError

NAN = float("nan")
INF = float("inf")


def raises_naming(field: str, value: Any):
    """``pytest.raises(ValueError)`` whose message names ``field`` and shows ``value``."""
    return pytest.raises(ValueError, match=rf"{re.escape(field)}: .*{re.escape(repr(value))}")


# --------------------------------------------------------------------------- defaults


def test_resource_constraints_defaults_are_the_specs():
    c = ResourceConstraints()
    assert (c.max_memory_mb, c.max_cpu_percent, c.max_gpu_memory_mb) == (4096.0, 80.0, 2048.0)
    assert c.max_concurrent_requests == 4 and type(c.max_concurrent_requests) is int
    assert (c.target_latency_ms, c.max_cost_per_request, c.battery_threshold_percent) == (2000.0, 0.01, 20.0)
    # Additions, with safe defaults: no budget, a quality floor.
    assert c.max_cost_per_hour is None and c.min_quality_score == 0.6


def test_optimization_config_defaults_are_the_specs():
    config = OptimizationConfig()
    assert config.strategy is OptimizationStrategy.ADAPTIVE
    assert config.constraints == ResourceConstraints()
    assert config.metrics_window_size == 100
    assert config.adaptation_interval_seconds == 30.0
    assert config.monitor_interval_seconds == 1.0
    assert config.enable_caching is True and config.enable_preemption is True
    assert config.enable_resource_monitoring is True
    assert config.cache_ttl_seconds == 300.0
    # Additions: safe by default (loopback only, not served, in-process adaptation).
    assert config.query_classes == DEFAULT_QUERY_CLASSES == ("short", "medium", "long")
    assert config.query_class_boundaries_tokens == (256, 2048)
    assert config.metrics_host == "127.0.0.1" and config.metrics_port is None
    assert config.metrics_tls_certfile is config.metrics_tls_keyfile is config.metrics_tls_client_cafile is None
    assert config.preferences_file is None and config.rules_path is None
    assert config.prices == {"local": ModelPrice(0.0, 0.0)}
    # Two configs do not share mutable defaults.
    other = OptimizationConfig()
    assert other.constraints is not config.constraints and other.prices is not config.prices


def test_spec_strategies_exist_with_their_values():
    for name in ("BALANCED", "LATENCY_FOCUSED", "RESOURCE_EFFICIENT", "QUALITY_FOCUSED", "ADAPTIVE"):
        assert OptimizationStrategy[name].value == name.lower()


# --------------------------------------------------------------------------- ResourceConstraints, every field

FLOAT_CONSTRAINTS = ("max_memory_mb", "max_cpu_percent", "max_gpu_memory_mb", "target_latency_ms",
                     "max_cost_per_request", "battery_threshold_percent", "max_cost_per_hour", "min_quality_score")
POSITIVE_CONSTRAINTS = ("max_memory_mb", "max_cpu_percent", "max_gpu_memory_mb", "target_latency_ms")


def test_every_constraint_field_is_covered_here():
    assert {f.name for f in fields(ResourceConstraints)} == set(FLOAT_CONSTRAINTS) | {"max_concurrent_requests"}


@pytest.mark.parametrize("name", FLOAT_CONSTRAINTS)
@pytest.mark.parametrize("bad", ["100", True, NAN, INF, -INF, -1.0, [1], {}])
def test_constraint_numbers_reject_bad_values(name, bad):
    with raises_naming(f"constraints.{name}", bad):
        ResourceConstraints(**{name: bad})


@pytest.mark.parametrize("name", POSITIVE_CONSTRAINTS)
def test_constraint_zero_is_impossible_where_it_makes_no_sense(name):
    with raises_naming(f"constraints.{name}", 0.0):
        ResourceConstraints(**{name: 0})


@pytest.mark.parametrize("name", ["max_cost_per_request", "battery_threshold_percent", "max_cost_per_hour",
                                  "min_quality_score"])
def test_constraint_zero_is_allowed_where_it_means_something(name):
    # A zero cost cap (never pay), no battery floor, a zero budget, no quality floor.
    assert getattr(ResourceConstraints(**{name: 0}), name) == 0.0


@pytest.mark.parametrize("name, upper", [("max_cpu_percent", 100), ("battery_threshold_percent", 100),
                                         ("min_quality_score", 1)])
def test_constraint_upper_bounds(name, upper):
    assert getattr(ResourceConstraints(**{name: upper}), name) == upper
    with pytest.raises(ValueError, match=rf"constraints\.{name}: must be at most {upper}"):
        ResourceConstraints(**{name: upper + 0.5})


@pytest.mark.parametrize("bad", [True, False, 2.5, "4", NAN, INF, 0, -3, None])
def test_max_concurrent_requests_is_a_positive_integer(bad):
    with raises_naming("constraints.max_concurrent_requests", bad):
        ResourceConstraints(max_concurrent_requests=bad)


def test_integral_floats_are_accepted_as_integers_and_ints_as_floats():
    c = ResourceConstraints(max_concurrent_requests=8.0, max_memory_mb=512)
    assert c.max_concurrent_requests == 8 and type(c.max_concurrent_requests) is int
    assert c.max_memory_mb == 512.0 and type(c.max_memory_mb) is float


# --------------------------------------------------------------------------- OptimizationConfig, every field

POSITIVE_FLOATS = ("adaptation_interval_seconds", "monitor_interval_seconds", "preferences_check_interval_seconds",
                   "signal_window_seconds", "inflight_ttl_seconds", "adaptation_state_max_age_seconds")
POSITIVE_INTS = ("metrics_window_size", "max_inflight_tracked", "history_size", "max_model_labels")
BOOLEANS = ("enable_caching", "enable_preemption", "enable_resource_monitoring")


@pytest.mark.parametrize("name", POSITIVE_FLOATS + ("cache_ttl_seconds",))
@pytest.mark.parametrize("bad", ["30", True, NAN, INF, -1.0, None])
def test_config_seconds_reject_bad_values(name, bad):
    with raises_naming(name, bad):
        OptimizationConfig(**{name: bad})


@pytest.mark.parametrize("name", POSITIVE_FLOATS)
def test_config_intervals_cannot_be_zero(name):
    with raises_naming(name, 0.0):
        OptimizationConfig(**{name: 0})


def test_cache_ttl_zero_is_allowed_and_means_no_caching_window():
    assert OptimizationConfig(cache_ttl_seconds=0).cache_ttl_seconds == 0.0


@pytest.mark.parametrize("name", POSITIVE_INTS)
@pytest.mark.parametrize("bad", [True, 1.5, "10", NAN, INF, 0, -1, None])
def test_config_counts_reject_bad_values(name, bad):
    with raises_naming(name, bad):
        OptimizationConfig(**{name: bad})


@pytest.mark.parametrize("name", BOOLEANS)
@pytest.mark.parametrize("bad", [1, 0, "true", None, NAN])
def test_config_toggles_must_be_booleans(name, bad):
    with raises_naming(name, bad):
        OptimizationConfig(**{name: bad})


@pytest.mark.parametrize("bad, message", [
    (True, "expected an integer"), (-1, "at least 0"), (65536, "at most 65535"), ("9464", "expected an integer"),
    (NAN, "expected an integer"),
])
def test_metrics_port(bad, message):
    with pytest.raises(ValueError, match=rf"metrics_port: .*{message}"):
        OptimizationConfig(metrics_port=bad)
    assert OptimizationConfig(metrics_port=0).metrics_port == 0  # any free port


@pytest.mark.parametrize("bad", ["", None, 127001])
def test_metrics_host(bad):
    with raises_naming("metrics_host", bad):
        OptimizationConfig(metrics_host=bad)


@pytest.mark.parametrize("name", ["preferences_file", "rules_path", "metrics_tls_certfile",
                                  "metrics_tls_keyfile", "metrics_tls_client_cafile", "adaptation_state_file"])
@pytest.mark.parametrize("bad", ["", 3, True])
def test_optional_paths_reject_empty_and_non_strings(name, bad):
    with raises_naming(name, bad):
        OptimizationConfig(**{name: bad})


def test_paths_accept_pathlib(tmp_path):
    config = OptimizationConfig(preferences_file=tmp_path / "p.json", rules_path=tmp_path)
    assert config.preferences_file == str(tmp_path / "p.json") and config.rules_path == str(tmp_path)


def test_tls_files_go_together():
    with pytest.raises(ValueError, match="metrics_tls_certfile and metrics_tls_keyfile"):
        OptimizationConfig(metrics_tls_certfile="cert.pem")
    with pytest.raises(ValueError, match="metrics_tls_certfile and metrics_tls_keyfile"):
        OptimizationConfig(metrics_tls_keyfile="key.pem")
    with pytest.raises(ValueError, match="metrics_tls_client_cafile needs"):
        OptimizationConfig(metrics_tls_client_cafile="ca.pem")


@pytest.mark.parametrize("bad, match", [
    ("123", r"monitored_pids: expected a list"), ([0], r"monitored_pids: must be at least 1, got 0"),
    ([True], r"monitored_pids: expected an integer, got bool True"), ([1.5], r"monitored_pids: .*1\.5"),
])
def test_monitored_pids(bad, match):
    with pytest.raises(ValueError, match=match):
        OptimizationConfig(monitored_pids=bad)
    assert OptimizationConfig(monitored_pids=[12, 34]).monitored_pids == (12, 34)


@pytest.mark.parametrize("bad", [None, "fast", 3, {"max_memory_mb": "x"}])
def test_constraints_field(bad):
    with pytest.raises(ValueError, match="constraints"):
        OptimizationConfig(constraints=bad)


def test_constraints_as_a_mapping_is_validated_like_from_dict():
    assert OptimizationConfig(constraints={"max_memory_mb": 512}).constraints.max_memory_mb == 512.0
    # An unknown key is a ValueError naming it (not a TypeError from the constructor).
    with pytest.raises(ValueError, match=r"constraints\.max_memroy_mb: unknown setting; did you mean 'max_memory_mb'"):
        OptimizationConfig(constraints={"max_memroy_mb": 512})


# --------------------------------------------------------------------------- strategy


@pytest.mark.parametrize("given, expected", [
    ("latency_focused", OptimizationStrategy.LATENCY_FOCUSED),
    ("Latency-Focused", OptimizationStrategy.LATENCY_FOCUSED),
    ("  RESOURCE_EFFICIENT ", OptimizationStrategy.RESOURCE_EFFICIENT),
    ("quality-focused", OptimizationStrategy.QUALITY_FOCUSED),
    ("Balanced", OptimizationStrategy.BALANCED),
    ("cost", OptimizationStrategy.COST),
    (OptimizationStrategy.ADAPTIVE, OptimizationStrategy.ADAPTIVE),
])
def test_strategy_by_name_in_any_case_with_dashes(given, expected):
    assert OptimizationConfig(strategy=given).strategy is expected
    assert OptimizationConfig.from_dict({"strategy": given}).strategy is expected


def test_unknown_strategy_suggests_the_closest():
    with pytest.raises(ValueError,
                       match=r"strategy: unknown strategy 'latency-focussed'; did you mean 'latency_focused'\?"):
        OptimizationConfig(strategy="latency-focussed")
    with pytest.raises(ValueError, match=r"strategy: unknown strategy 'zzz'; expected one of \["):
        OptimizationConfig(strategy="zzz")
    with pytest.raises(ValueError, match=r"strategy: expected a strategy name, got int 3"):
        OptimizationConfig(strategy=3)


# --------------------------------------------------------------------------- query classes


def test_query_classes_validation():
    assert OptimizationConfig(query_classes=["chat"], query_class_boundaries_tokens=[]).query_classes == ("chat",)
    with pytest.raises(ValueError, match="query_classes: 'other' is reserved"):
        OptimizationConfig(query_classes=("short", "other"), query_class_boundaries_tokens=(100,))
    with pytest.raises(ValueError, match=r"query_classes: names must be unique, got \['a', 'b', 'a'\]"):
        OptimizationConfig(query_classes=("a", "b", "a"), query_class_boundaries_tokens=(1, 2))
    with pytest.raises(ValueError, match=r"query_classes: expected 1 to 10 classes .*got 0"):
        OptimizationConfig(query_classes=(), query_class_boundaries_tokens=())
    with pytest.raises(ValueError, match=r"query_classes: expected 1 to 10 classes .*got 11"):
        OptimizationConfig(query_classes=[f"c{i}" for i in range(11)], query_class_boundaries_tokens=list(range(1, 11)))
    with pytest.raises(ValueError, match=r"query_classes: expected a list of names, got 'short'"):
        OptimizationConfig(query_classes="short")
    for bad in ("has space", "", "x" * 65, 5, "quo\"te"):
        with pytest.raises(ValueError, match="query_classes: expected a short name"):
            OptimizationConfig(query_classes=(bad,), query_class_boundaries_tokens=())


def test_boundaries_count_and_order():
    with pytest.raises(ValueError, match="needs 2 boundaries for 3 classes, got 1"):
        OptimizationConfig(query_class_boundaries_tokens=(256,))
    with pytest.raises(ValueError, match="needs 1 boundaries for 2 classes, got 2"):
        OptimizationConfig(query_classes=("a", "b"), query_class_boundaries_tokens=(1, 2))
    with pytest.raises(ValueError, match=r"must be strictly increasing, got \[2048, 256\]"):
        OptimizationConfig(query_class_boundaries_tokens=(2048, 256))
    with pytest.raises(ValueError, match=r"must be strictly increasing, got \[5, 5\]"):
        OptimizationConfig(query_class_boundaries_tokens=(5, 5))
    with raises_naming("query_class_boundaries_tokens", True):
        OptimizationConfig(query_class_boundaries_tokens=(True, 5))
    with pytest.raises(ValueError, match=r"query_class_boundaries_tokens: expected a list of integers"):
        OptimizationConfig(query_class_boundaries_tokens="256")
    # A custom classifier needs no boundaries.
    config = OptimizationConfig(query_classifier=lambda q, c: "short", query_class_boundaries_tokens=())
    assert config.query_class_boundaries_tokens == ()
    with pytest.raises(ValueError, match="query_classifier: expected a callable"):
        OptimizationConfig(query_classifier="short")


# --------------------------------------------------------------------------- prices


def test_prices_as_mapping_pair_or_modelprice():
    config = OptimizationConfig(prices={
        "gpt": {"input_per_million": 2.5, "output_per_million": 10},
        "claude": (3, 15),
        "local": ModelPrice(0, 0),
    })
    assert config.prices["gpt"] == ModelPrice(2.5, 10.0)
    assert config.prices["claude"] == ModelPrice(3.0, 15.0)
    assert isinstance(config.prices["claude"].input_per_million, float)
    assert config.price_for("gpt").cost(1_000_000, 100_000) == pytest.approx(2.5 + 1.0)
    assert config.price_for("nope") is None
    assert OptimizationConfig(prices={}).prices == {}


@pytest.mark.parametrize("prices, match", [
    ({"api": (1.0, NAN)}, r"prices\.api\.output_per_million: expected a finite number, got nan"),
    ({"api": (INF, 1.0)}, r"prices\.api\.input_per_million: expected a finite number, got inf"),
    ({"api": (-1, 0)}, r"prices\.api\.input_per_million: must not be negative, got -1"),
    ({"api": (True, 0)}, r"prices\.api\.input_per_million: expected a number, got bool True"),
    ({"api": ("1", 0)}, r"prices\.api\.input_per_million: expected a number, got str '1'"),
    ({"api": (1, 2, 3)}, r"prices\.api: expected \{input_per_million, output_per_million\}"),
    ({"api": 5}, r"prices\.api: expected"),
    ({"api": {"input_per_million": 1}}, r"prices\.api\.output_per_million: missing"),
    ({"api": {"input_per_milion": 1, "output_per_million": 1}},
     r"prices\.api\.input_per_milion: unknown setting; did you mean 'input_per_million'"),
    ({"": (1, 1)}, r"prices: model names must be non-empty strings"),
    ([("api", (1, 1))], r"prices: expected a mapping"),
])
def test_bad_prices(prices, match):
    with pytest.raises(ValueError, match=match):
        OptimizationConfig(prices=prices)


# --------------------------------------------------------------------------- from_dict


def test_from_dict_builds_a_full_config():
    config = OptimizationConfig.from_dict({
        "strategy": "Latency-Focused",
        "constraints": {"max_memory_mb": 1024, "max_concurrent_requests": 2},
        "metrics_window_size": 50,
        "query_classes": ["small", "big"],
        "query_class_boundaries_tokens": [500],
        "monitored_pids": [10],
        "prices": {"api": {"input_per_million": 1, "output_per_million": 2}},
        "metrics_port": 9464,
    })
    assert config.strategy is OptimizationStrategy.LATENCY_FOCUSED
    assert config.constraints.max_memory_mb == 1024.0 and config.constraints.max_concurrent_requests == 2
    assert config.query_classes == ("small", "big") and config.query_class_boundaries_tokens == (500,)
    assert config.monitored_pids == (10,) and config.metrics_port == 9464
    assert config.prices["api"] == ModelPrice(1.0, 2.0)


@pytest.mark.parametrize("data, field, hint", [
    ({"metrics_windw_size": 5}, "metrics_windw_size", "metrics_window_size"),
    ({"stratgy": "balanced"}, "stratgy", "strategy"),
    ({"constraints": {"max_memroy_mb": 1}}, "constraints.max_memroy_mb", "max_memory_mb"),
    ({"constraints": {"target_latency": 1}}, "constraints.target_latency", "target_latency_ms"),
])
def test_from_dict_rejects_unknown_keys_with_the_closest_suggestion(data, field, hint):
    with pytest.raises(ConfigError) as info:
        OptimizationConfig.from_dict(data, source="settings.json")
    err = info.value
    assert err.field == field and err.source == "settings.json"
    assert f"did you mean '{hint}'" in str(err)
    assert str(err).startswith(f"settings.json: {field}: unknown setting")


def test_from_dict_unknown_key_without_a_close_match_has_no_hint():
    with pytest.raises(ConfigError, match=r"^<dict>: zzzzzz: unknown setting$"):
        OptimizationConfig.from_dict({"zzzzzz": 1})


def test_from_dict_does_not_accept_a_classifier_callable():
    # Code is not configuration: a classifier is passed to the constructor.
    with pytest.raises(ConfigError, match="query_classifier: unknown setting"):
        OptimizationConfig.from_dict({"query_classifier": "x"})


def test_from_dict_value_errors_become_config_errors_naming_field_and_source():
    with pytest.raises(ConfigError) as info:
        OptimizationConfig.from_dict({"metrics_window_size": True}, source="cfg")
    assert info.value.field == "metrics_window_size" and info.value.source == "cfg"
    assert "got bool True" in str(info.value)
    with pytest.raises(ConfigError) as info:
        OptimizationConfig.from_dict({"constraints": {"max_cpu_percent": NAN}}, source="cfg")
    assert info.value.field == "constraints.max_cpu_percent" and "nan" in str(info.value)
    # A nested check that did not know the source still names it.
    with pytest.raises(ConfigError, match=r"^cfg: prices\.api\.input_per_milion"):
        OptimizationConfig.from_dict({"prices": {"api": {"input_per_milion": 1, "output_per_million": 1}}},
                                     source="cfg")


@pytest.mark.parametrize("data", [[1, 2], "strategy: balanced", None])
def test_from_dict_needs_a_mapping(data):
    with pytest.raises(ConfigError, match="expected a mapping of settings"):
        OptimizationConfig.from_dict(data)


def test_from_dict_constraints_must_be_a_mapping():
    with pytest.raises(ConfigError, match="constraints: expected a mapping"):
        OptimizationConfig.from_dict({"constraints": [1]})


# --------------------------------------------------------------------------- from_yaml


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dualtrack.yaml"
    path.write_text(text)
    return path


def test_from_yaml_loads(tmp_path):
    path = write(tmp_path, """\
strategy: quality-focused
constraints:
  max_memory_mb: 2048
  battery_threshold_percent: 15
prices:
  api: [2.5, 10]
query_classes: [short, long]
query_class_boundaries_tokens: [1000]
""")
    config = OptimizationConfig.from_yaml(path)
    assert config.strategy is OptimizationStrategy.QUALITY_FOCUSED
    assert config.constraints.max_memory_mb == 2048.0 and config.constraints.battery_threshold_percent == 15.0
    assert config.prices["api"] == ModelPrice(2.5, 10.0)
    assert config.query_classes == ("short", "long")


def test_an_empty_yaml_file_is_the_defaults(tmp_path):
    assert OptimizationConfig.from_yaml(write(tmp_path, "# nothing\n")) == OptimizationConfig()


@pytest.mark.parametrize("text, line, field, message", [
    ("strategy: balanced\nmetrics_window_size: 0\n", 2, "metrics_window_size", "must be at least 1, got 0"),
    ("strategy: balanced\nconstraints:\n  max_memory_mb: 100\n  max_cpu_percent: .nan\n", 4,
     "constraints.max_cpu_percent", "expected a finite number, got nan"),
    ("constraints:\n  max_memory_mb: 100\n  max_memroy: 1\n", 3, "constraints.max_memroy",
     "did you mean 'max_memory_mb'"),
    ("enable_caching: yes\nenable_cachng: true\n", 2, "enable_cachng", "did you mean 'enable_caching'"),
    ("prices:\n  local: [0, 0]\n  api:\n    input_per_million: 1\n    output_per_milion: 2\n", 5,
     "prices.api.output_per_milion", "did you mean 'output_per_million'"),
    ("prices:\n  api: {input_per_million: 1}\n", 2, "prices.api.output_per_million", "missing"),
    ("strategy: fastest\n", 1, "strategy", "unknown strategy 'fastest'"),
    ("\n\nmetrics_port: 99999\n", 3, "metrics_port", "at most 65535"),
])
def test_from_yaml_errors_carry_file_line_and_field(tmp_path, text, line, field, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        OptimizationConfig.from_yaml(path)
    err = info.value
    assert (err.source, err.line, err.field) == (str(path), line, field)
    assert str(err).startswith(f"{path}:{line}: {field}: ")
    assert message in str(err)


def test_from_yaml_syntax_error_has_a_line(tmp_path):
    path = write(tmp_path, "strategy: balanced\nconstraints: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        OptimizationConfig.from_yaml(path)
    assert info.value.source == str(path) and info.value.line is not None and info.value.line >= 2
    assert "invalid YAML" in str(info.value)


def test_from_yaml_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"expected a mapping of settings, got list"):
        OptimizationConfig.from_yaml(write(tmp_path, "- strategy\n- balanced\n"))


def test_from_yaml_refuses_python_tags(tmp_path):
    path = write(tmp_path, "strategy: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError):
        OptimizationConfig.from_yaml(path)


def test_config_errors_are_value_errors():
    # Callers that catch ValueError (the spec's contract) catch ConfigError too.
    assert issubclass(ConfigError, ValueError)


def _all_field_names() -> Dict[str, Any]:
    return {f.name: f for f in fields(OptimizationConfig)}


def test_every_config_field_is_covered_here():
    covered = (set(POSITIVE_FLOATS) | set(POSITIVE_INTS) | set(BOOLEANS) | {
        "strategy", "constraints", "cache_ttl_seconds", "query_classes", "query_class_boundaries_tokens",
        "query_classifier", "prices", "preferences_file", "rules_path", "adaptation_state_file", "metrics_host",
        "metrics_port",
        "metrics_tls_certfile", "metrics_tls_keyfile", "metrics_tls_client_cafile", "monitored_pids",
        "local_server_metrics_url", "local_server_slots"})  # the last two: tests/test_server_signals.py
    assert set(_all_field_names()) == covered
