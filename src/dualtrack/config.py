"""Configuration: the spec's ``OptimizationStrategy``, ``ResourceConstraints``
and ``OptimizationConfig``, validated eagerly.

Every field is checked in ``__post_init__``: a wrong type, NaN, a negative
number or a zero where zero makes no sense raises ``ValueError`` naming the
field and the value. ``OptimizationConfig.from_dict`` / ``from_yaml`` reject
unknown keys and suggest the closest valid one::

    config = OptimizationConfig.from_yaml("dualtrack.yaml")
    config = OptimizationConfig(strategy="latency_focused",
                                constraints=ResourceConstraints(target_latency_ms=1500))
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from . import _validate, _yaml
from .errors import ConfigError

# OUTCOMES and PATHS were defined here before the vocabulary module: re-exported for one release.
from .vocabulary import DEFAULT_QUERY_CLASSES, OUTCOMES, PATHS  # noqa: F401


class OptimizationStrategy(Enum):
    """The optimization strategies; each has a rule file in ``rules/``."""

    BALANCED = "balanced"
    LATENCY_FOCUSED = "latency_focused"
    RESOURCE_EFFICIENT = "resource_efficient"
    QUALITY_FOCUSED = "quality_focused"
    COST = "cost"
    ADAPTIVE = "adaptive"

    @classmethod
    def parse(cls, value: Union["OptimizationStrategy", str]) -> "OptimizationStrategy":
        """Accept a member or its name/value in any case (``"latency-focused"`` too)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            key = value.strip().lower().replace("-", "_")
            for member in cls:
                if member.value == key:
                    return member
            names = [m.value for m in cls]
            hint = difflib.get_close_matches(key, names, n=1)
            suffix = f"; did you mean {hint[0]!r}?" if hint else f"; expected one of {names}"
            raise ValueError(f"strategy: unknown strategy {value!r}{suffix}")
        raise ValueError(f"strategy: expected a strategy name, got {type(value).__name__} {value!r}")


# ---------------------------------------------------------------- validation helpers


def _number(owner: str, name: str, value: Any, *, positive: bool = False,
            non_negative: bool = False, upper: Optional[float] = None) -> float:
    label = f"{owner}.{name}" if owner else name
    lower = 0.0 if positive or non_negative else None
    return _validate.number(label, value, lower=lower, lower_open=positive, upper=upper)


def _integer(owner: str, name: str, value: Any, *, minimum: int = 1) -> int:
    return _validate.integer(f"{owner}.{name}" if owner else name, value, minimum=minimum)


@dataclass
class ResourceConstraints:
    """Limits the optimizer keeps the system within. The spec's fields, plus
    ``max_cost_per_hour`` (API budget burn; ``None`` = no budget) and
    ``min_quality_score`` (mean quality below it is a violation)."""

    max_memory_mb: float = 4096.0
    max_cpu_percent: float = 80.0
    max_gpu_memory_mb: float = 2048.0
    max_concurrent_requests: int = 4
    target_latency_ms: float = 2000.0
    max_cost_per_request: float = 0.01
    battery_threshold_percent: float = 20.0
    max_cost_per_hour: Optional[float] = None
    min_quality_score: float = 0.6

    def __post_init__(self) -> None:
        o = "constraints"
        self.max_memory_mb = _number(o, "max_memory_mb", self.max_memory_mb, positive=True)
        self.max_cpu_percent = _number(o, "max_cpu_percent", self.max_cpu_percent, positive=True, upper=100.0)
        self.max_gpu_memory_mb = _number(o, "max_gpu_memory_mb", self.max_gpu_memory_mb, positive=True)
        self.max_concurrent_requests = _integer(o, "max_concurrent_requests", self.max_concurrent_requests)
        self.target_latency_ms = _number(o, "target_latency_ms", self.target_latency_ms, positive=True)
        self.max_cost_per_request = _number(o, "max_cost_per_request", self.max_cost_per_request, non_negative=True)
        self.battery_threshold_percent = _number(
            o, "battery_threshold_percent", self.battery_threshold_percent, non_negative=True, upper=100.0
        )
        if self.max_cost_per_hour is not None:
            self.max_cost_per_hour = _number(o, "max_cost_per_hour", self.max_cost_per_hour, non_negative=True)
        self.min_quality_score = _number(o, "min_quality_score", self.min_quality_score, non_negative=True, upper=1.0)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> "ResourceConstraints":
        _check_keys(cls, data, source, prefix="constraints")
        try:
            return cls(**dict(data))
        except ValueError as err:
            raise _config_error(err, source) from err


@dataclass(frozen=True)
class ModelPrice:
    """Dollars per million input and output tokens for one model."""

    input_per_million: float
    output_per_million: float

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input_per_million + tokens_out * self.output_per_million) / 1e6


ClassifierFunction = Callable[[str, Optional[Dict[str, Any]]], str]
"""A user's query classifier: (query, context) -> class name."""


@dataclass
class OptimizationConfig:
    """Everything the optimizer needs, with safe defaults.

    The spec's fields come first; the additions after them are documented in
    ``docs/configuration.md``.
    """

    # Strategy selection
    strategy: OptimizationStrategy = OptimizationStrategy.ADAPTIVE

    # Resource constraints
    constraints: ResourceConstraints = field(default_factory=ResourceConstraints)

    # Monitoring configuration
    metrics_window_size: int = 100
    adaptation_interval_seconds: float = 30.0
    monitor_interval_seconds: float = 1.0

    # Feature toggles
    enable_caching: bool = True
    enable_preemption: bool = True
    enable_resource_monitoring: bool = True

    # Cache configuration
    cache_ttl_seconds: float = 300.0

    # ---- additions
    # Query classes (a metric label, so a small fixed set) and the default
    # classifier's boundaries in estimated input tokens: len(classes) - 1 values.
    query_classes: Tuple[str, ...] = DEFAULT_QUERY_CLASSES
    query_class_boundaries_tokens: Tuple[int, ...] = (256, 2048)
    query_classifier: Optional[ClassifierFunction] = None
    # Price table per model; a result without ``model`` uses its path name.
    # Unknown models have unknown cost (counted, not guessed).
    prices: Dict[str, ModelPrice] = field(default_factory=lambda: {"local": ModelPrice(0.0, 0.0)})
    # Preferences written by a separate adapter; None = adapt in-process.
    preferences_file: Optional[str] = None
    preferences_check_interval_seconds: float = 1.0
    # Strategy rules: a file or folder; None = the bundled rules/.
    rules_path: Optional[str] = None
    # What the embedded adaptive strategy learned, saved each cycle and read at start so that
    # a restart goes on from it (None: not kept); a state older than the max age is not used.
    adaptation_state_file: Optional[str] = None
    adaptation_state_max_age_seconds: float = 3600.0
    # Time window of the in-process signals (embedded adapter).
    signal_window_seconds: float = 120.0
    # /metrics exposition; metrics_port None = not served by the optimizer.
    metrics_host: str = "127.0.0.1"
    metrics_port: Optional[int] = None
    metrics_tls_certfile: Optional[str] = None
    metrics_tls_keyfile: Optional[str] = None
    metrics_tls_client_cafile: Optional[str] = None
    # Requests started but never completed are dropped (and counted) after this.
    inflight_ttl_seconds: float = 600.0
    max_inflight_tracked: int = 100_000
    # Adaptation history kept for get_optimization_status().
    history_size: int = 50
    # Distinct ``model`` label values before the rest fold into "other".
    max_model_labels: int = 16
    # Extra processes (e.g. a local model server) whose memory counts against max_memory_mb.
    monitored_pids: Tuple[int, ...] = ()
    # The local model server's /metrics (vLLM, llama.cpp, SGLang, TGI), read on the
    # monitor's interval in embedded mode; its slots (no server exports them).
    local_server_metrics_url: Optional[str] = None
    local_server_slots: Optional[int] = None

    def __post_init__(self) -> None:
        self.strategy = OptimizationStrategy.parse(self.strategy)
        if isinstance(self.constraints, Mapping):
            # from_dict: an unknown key is a ValueError naming it, not a TypeError.
            self.constraints = ResourceConstraints.from_dict(self.constraints)
        if not isinstance(self.constraints, ResourceConstraints):
            raise ValueError(f"constraints: expected ResourceConstraints, got {type(self.constraints).__name__}")
        self.metrics_window_size = _integer("", "metrics_window_size", self.metrics_window_size)
        for name in ("adaptation_interval_seconds", "monitor_interval_seconds",
                     "preferences_check_interval_seconds", "signal_window_seconds",
                     "inflight_ttl_seconds", "adaptation_state_max_age_seconds"):
            setattr(self, name, _number("", name, getattr(self, name), positive=True))
        self.cache_ttl_seconds = _number("", "cache_ttl_seconds", self.cache_ttl_seconds, non_negative=True)
        for name in ("enable_caching", "enable_preemption", "enable_resource_monitoring"):
            setattr(self, name, _validate.boolean(name, getattr(self, name)))

        if isinstance(self.query_classes, str) or not isinstance(self.query_classes, (list, tuple)):
            raise ValueError(f"query_classes: expected a list of names, got {self.query_classes!r}")
        classes = tuple(_validate.label_value("query_classes", c) for c in self.query_classes)
        if not 1 <= len(classes) <= 10:
            raise ValueError(f"query_classes: expected 1 to 10 classes (it is a metric label), got {len(classes)}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"query_classes: names must be unique, got {list(classes)}")
        if "other" in classes:
            raise ValueError("query_classes: 'other' is reserved for values outside the configured set")
        self.query_classes = classes
        bounds = self.query_class_boundaries_tokens
        if isinstance(bounds, (str, bytes)) or not isinstance(bounds, (list, tuple)):
            raise ValueError(f"query_class_boundaries_tokens: expected a list of integers, got {bounds!r}")
        bounds = tuple(_integer("", "query_class_boundaries_tokens", b) for b in bounds)
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"query_class_boundaries_tokens: must be strictly increasing, got {list(bounds)}")
        if self.query_classifier is None and len(bounds) != len(classes) - 1:
            raise ValueError(
                f"query_class_boundaries_tokens: the default classifier needs {len(classes) - 1} "
                f"boundaries for {len(classes)} classes, got {len(bounds)}"
            )
        self.query_class_boundaries_tokens = bounds
        if self.query_classifier is not None and not callable(self.query_classifier):
            raise ValueError(f"query_classifier: expected a callable, got {self.query_classifier!r}")

        if not isinstance(self.prices, Mapping):
            raise ValueError(f"prices: expected a mapping of model name to price, got {self.prices!r}")
        prices: Dict[str, ModelPrice] = {}
        for model, price in self.prices.items():
            if not isinstance(model, str) or not model:
                raise ValueError(f"prices: model names must be non-empty strings, got {model!r}")
            if isinstance(price, Mapping):
                _check_keys(ModelPrice, price, "<dict>", prefix=f"prices.{model}")
                # A missing key is a ValueError naming it, not ModelPrice's TypeError.
                missing = [f.name for f in fields(ModelPrice) if f.name not in price]
                if missing:
                    raise ValueError(f"prices.{model}.{missing[0]}: missing, got {dict(price)!r}")
                price = ModelPrice(**dict(price))
            elif isinstance(price, (list, tuple)) and len(price) == 2:
                price = ModelPrice(*price)
            if not isinstance(price, ModelPrice):
                raise ValueError(f"prices.{model}: expected {{input_per_million, output_per_million}}, got {price!r}")
            _number("prices", f"{model}.input_per_million", price.input_per_million, non_negative=True)
            _number("prices", f"{model}.output_per_million", price.output_per_million, non_negative=True)
            prices[model] = ModelPrice(float(price.input_per_million), float(price.output_per_million))
        self.prices = prices

        self.preferences_file = _validate.optional_str("preferences_file", self.preferences_file)
        self.rules_path = _validate.optional_str("rules_path", self.rules_path)
        self.adaptation_state_file = _validate.optional_str("adaptation_state_file", self.adaptation_state_file)
        if not isinstance(self.metrics_host, str) or not self.metrics_host:
            raise ValueError(f"metrics_host: expected a host name or address, got {self.metrics_host!r}")
        if self.metrics_port is not None:
            self.metrics_port = _integer("", "metrics_port", self.metrics_port, minimum=0)
            if self.metrics_port > 65535:
                raise ValueError(f"metrics_port: must be at most 65535, got {self.metrics_port}")
        for name in ("metrics_tls_certfile", "metrics_tls_keyfile", "metrics_tls_client_cafile"):
            setattr(self, name, _validate.optional_str(name, getattr(self, name)))
        if (self.metrics_tls_certfile is None) != (self.metrics_tls_keyfile is None):
            raise ValueError("metrics_tls_certfile and metrics_tls_keyfile must be given together")
        if self.metrics_tls_client_cafile and not self.metrics_tls_certfile:
            raise ValueError("metrics_tls_client_cafile needs metrics_tls_certfile and metrics_tls_keyfile")
        self.max_inflight_tracked = _integer("", "max_inflight_tracked", self.max_inflight_tracked)
        self.history_size = _integer("", "history_size", self.history_size)
        self.max_model_labels = _integer("", "max_model_labels", self.max_model_labels)
        if isinstance(self.monitored_pids, (str, bytes)) or not isinstance(self.monitored_pids, (list, tuple)):
            raise ValueError(f"monitored_pids: expected a list of process ids, got {self.monitored_pids!r}")
        self.monitored_pids = tuple(_integer("", "monitored_pids", p) for p in self.monitored_pids)
        url = self.local_server_metrics_url
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            raise ValueError(f"local_server_metrics_url: expected an http(s) URL such as "
                             f"http://127.0.0.1:8000/metrics, got {url!r}")
        if self.local_server_slots is not None:
            self.local_server_slots = _integer("", "local_server_slots", self.local_server_slots)

    # ------------------------------------------------------------ loading

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> "OptimizationConfig":
        """Build a config from plain data (as parsed from YAML or JSON).

        Unknown keys are rejected with the closest valid key suggested;
        ``strategy`` may be given by name.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"expected a mapping of settings, got {type(data).__name__}", source=source)
        _check_keys(cls, data, source, exclude=("query_classifier",))
        values = dict(data)
        if "constraints" in values and values["constraints"] is not None:
            if not isinstance(values["constraints"], Mapping):
                raise ConfigError("expected a mapping", source=source, field="constraints")
            values["constraints"] = ResourceConstraints.from_dict(values["constraints"], source=source)
        for key in ("query_classes", "query_class_boundaries_tokens", "monitored_pids"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except ValueError as err:
            raise _config_error(err, source) from err

    @classmethod
    def from_yaml(cls, path: Union[str, Path]) -> "OptimizationConfig":
        """Load a YAML config file; errors name the file, line and field."""
        doc = _yaml.load(path)
        data = doc.data if doc.data is not None else {}
        try:
            return cls.from_dict(data, source=str(path))
        except ConfigError as err:
            if err.field and err.line is None:
                parts = tuple(err.field.split("."))
                raise ConfigError(err.message, source=str(path), line=doc.line(parts), field=err.field) from err
            raise

    def price_for(self, model: str) -> Optional[ModelPrice]:
        return self.prices.get(model)


def _check_keys(cls: Any, data: Mapping[str, Any], source: str, *, prefix: str = "",
                exclude: Tuple[str, ...] = ()) -> None:
    valid = [f.name for f in fields(cls) if f.name not in exclude]
    for key in data:
        if key not in valid:
            hint = difflib.get_close_matches(str(key), valid, n=1)
            where = f"{prefix}.{key}" if prefix else str(key)
            suffix = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"unknown setting{suffix}", source=source, field=where)


def _config_error(err: ValueError, source: str) -> ConfigError:
    """Turn a ``'field: message'`` ValueError into a ConfigError naming the source."""
    if isinstance(err, ConfigError):
        if err.source in (None, "<dict>") and source != "<dict>":
            # Raised by a nested check that did not know the file: name it.
            return ConfigError(err.message, source=source, line=err.line, field=err.field)
        return err
    text = str(err)
    field_name, sep, message = text.partition(": ")
    if sep and " " not in field_name:
        return ConfigError(message, source=source, field=field_name)
    return ConfigError(text, source=source)
