"""Scenario files: a workload, two simulated models, a machine and a timeline.

A scenario is YAML (``scenarios/*.yaml``), validated against the published
JSON Schema (``schemas/scenario.schema.json``) and then checked for meaning:
class names agree between the workload and the quality tables, every
timeline change names a parameter that exists and leaves it in range,
constraint overrides are valid ``ResourceConstraints`` fields. Errors name
file, line and field::

    scenarios/api_outage.yaml:41: timeline[1].set.api.outtage: unknown parameter; did you mean 'api.outage'?

Usage::

    scenario = load_scenario("api_outage")          # a bundled scenario, by name
    scenario = load_scenario("my/scenario.yaml")    # or a file
    quick = scenario.time_scaled(0.25)              # a 1 h timeline in 15 min
    config = scenario.optimization_config("adaptive")

The timeline changes parameters by dotted path (``set``, ``scale``,
``add``); ``docs/simulation.md`` lists every path. ``expect`` on an event
says which way routing preferences should move after it; the adaptation
benchmark measures how many adaptation intervals that takes.

The module is long on purpose: it is one concept, the scenario file --
its defaults, the timeline's settable parameters, the ``Scenario`` model,
loading and every meaning check with its error message. Splitting it would
scatter the checks away from the defaults and parameters they guard.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from .. import _yaml
from .._schema import load_validator, schema_error
from ..bundled import bundled_dir
from ..config import ModelPrice, OptimizationConfig, ResourceConstraints
from ..errors import ConfigError
from ..vocabulary import ROUTING_NAMES, TRACKS, parse_duration

PREFERENCE_NAMES: Tuple[str, ...] = ROUTING_NAMES
"""The old name of :data:`dualtrack.vocabulary.ROUTING_NAMES`."""

# ------------------------------------------------------------------ defaults
# A mid-size quantised model on a workstation GPU (batched serving, vLLM-like)
# and a hosted frontier-ish API. docs/simulation.md explains each number.

LOCAL_DEFAULTS: Dict[str, Any] = {
    "model": "local-8b-q4",
    "prefill_tokens_per_second": 2500.0,
    "decode_tokens_per_second": 70.0,
    "concurrency": 16,
    "max_queue": 64,
    "contention": 0.03,
    "overhead": 0.03,
    "base_memory_mb": 2900.0,
    "memory_per_request_mb": 60.0,
    "gpu_memory_total_mb": 8192.0,
    "gpu_base_memory_mb": 4800.0,
    "gpu_memory_per_request_mb": 110.0,
    "error_rate": 0.003,
    "speed_factor": 1.0,
    "available": True,
    "thermal": {"heat_time": 90.0, "cool_time": 60.0, "threshold": 0.8, "max_throttle": 0.4},
    "battery_drain_per_hour": 0.6,
    "cpu_per_utilisation": 0.45,
    "quality": {},
    "quality_noise": 0.06,
    "complexity_penalty": 0.12,
}

API_DEFAULTS: Dict[str, Any] = {
    "model": "api-large",
    "rtt": 0.08,
    "time_to_first_token": 0.35,
    "prefill_tokens_per_second": 20000.0,
    "decode_tokens_per_second": 95.0,
    "latency_sigma": 0.25,
    "tail_probability": 0.02,
    "tail_alpha": 1.6,
    "latency_multiplier": 1.0,
    "rate_limit_per_minute": None,
    "error_rate": 0.005,
    "outage": "off",
    "price": {"input_per_million": 2.5, "output_per_million": 10.0},
    "price_multiplier": 1.0,
    "quality": {},
    "quality_noise": 0.04,
    "complexity_penalty": 0.03,
}

MACHINE_DEFAULTS: Dict[str, Any] = {
    "cpu_base": 0.08,
    "memory_total_mb": 32768.0,
    "system_memory_used_mb": 9000.0,
    "router_memory_mb": 150.0,
}

BATTERY_DEFAULTS: Dict[str, Any] = {
    "level": 0.9,
    "plugged": True,
    "idle_drain_per_hour": 0.08,
    "charge_per_hour": 0.5,
    "critical_level": 0.05,
}

#: Quality when a scenario gives none for a class: local weaker on longer classes.
_DEFAULT_QUALITY = {"local": (0.86, 0.78, 0.62), "api": (0.90, 0.89, 0.87)}

_DURATION_KEYS = {("local", "overhead"), ("local", "thermal", "heat_time"), ("local", "thermal", "cool_time"),
                  ("api", "rtt"), ("api", "time_to_first_token")}

# ------------------------------------------------------------------ timeline parameters

#: kind -> (check(value) -> error or None, numeric)
_KINDS: Dict[str, Tuple[Callable[[Any], Optional[str]], bool]] = {}


def _kind(name: str, numeric: bool) -> Callable[[Callable[[Any], Optional[str]]], Callable[[Any], Optional[str]]]:
    def register(check: Callable[[Any], Optional[str]]) -> Callable[[Any], Optional[str]]:
        _KINDS[name] = (check, numeric)
        return check
    return register


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@_kind("positive", True)
def _positive(v: Any) -> Optional[str]:
    return None if _is_number(v) and v > 0 else f"must be a number above 0, got {v!r}"


@_kind("non_negative", True)
def _non_negative(v: Any) -> Optional[str]:
    return None if _is_number(v) and v >= 0 else f"must be a number of at least 0, got {v!r}"


@_kind("ratio", True)
def _ratio(v: Any) -> Optional[str]:
    return None if _is_number(v) and 0 <= v <= 1 else f"must be a number within 0..1, got {v!r}"


@_kind("throttle", True)
def _throttle(v: Any) -> Optional[str]:
    return None if _is_number(v) and 0 <= v <= 0.95 else f"must be a number within 0..0.95, got {v!r}"


@_kind("count", True)
def _count(v: Any) -> Optional[str]:
    if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
        return None
    return f"must be an integer of at least 1, got {v!r}"


@_kind("limit", True)
def _limit(v: Any) -> Optional[str]:
    return None if v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1) else \
        f"must be an integer of at least 1 or null (no limit), got {v!r}"


@_kind("bool", False)
def _bool(v: Any) -> Optional[str]:
    return None if isinstance(v, bool) else f"must be true or false, got {v!r}"


@_kind("outage", False)
def _outage(v: Any) -> Optional[str]:
    if v in ("off", "error", "hang") and isinstance(v, str):
        return None
    hint = " (quote it: YAML reads off, on, yes and no as booleans)" if isinstance(v, bool) else ""
    return f"must be one of off, error, hang, got {v!r}{hint}"


@_kind("seconds", True)
def _seconds(v: Any) -> Optional[str]:
    return None if _is_number(v) and v >= 0 else f"must be a duration, got {v!r}"


#: Timeline parameters: dotted path -> kind. ``<class>`` stands for a query class.
SETTABLE: Dict[str, str] = {
    "workload.rate": "positive",
    "workload.share.<class>": "non_negative",
    "local.speed_factor": "positive",
    "local.error_rate": "ratio",
    "local.concurrency": "count",
    "local.max_queue": "count",
    "local.prefill_tokens_per_second": "positive",
    "local.decode_tokens_per_second": "positive",
    "local.available": "bool",
    "local.thermal.threshold": "ratio",
    "local.thermal.max_throttle": "throttle",
    "local.quality.<class>": "ratio",
    "api.outage": "outage",
    "api.rate_limit_per_minute": "limit",
    "api.price_multiplier": "non_negative",
    "api.latency_multiplier": "positive",
    "api.error_rate": "ratio",
    "api.rtt": "seconds",
    "api.time_to_first_token": "seconds",
    "api.decode_tokens_per_second": "positive",
    "api.quality.<class>": "ratio",
    "battery.plugged": "bool",
    "battery.level": "ratio",
}


# ------------------------------------------------------------------ model


@dataclass(frozen=True)
class TokenDistribution:
    """Lognormal token counts: ``median * exp(sigma * N(0,1))``, clipped to [min, max]."""

    median: float
    sigma: float = 0.5
    min: int = 1
    max: int = 100_000

    def draw(self, gauss: float) -> int:
        n = int(self.median * math.exp(self.sigma * gauss) + 0.5)
        return self.min if n < self.min else self.max if n > self.max else n

    @property
    def mean(self) -> float:
        """Mean of the unclipped distribution."""
        return self.median * math.exp(self.sigma * self.sigma / 2.0)


@dataclass(frozen=True)
class QueryClassSpec:
    name: str
    share: float
    tokens_in: TokenDistribution
    tokens_out: TokenDistribution
    complexity_mean: float = 0.3
    complexity_sd: float = 0.1


#: What an expected reaction answers: a new condition (``onset``) or the end of one (``recovery``).
EXPECT_KINDS: Tuple[str, ...] = ("onset", "recovery")


@dataclass(frozen=True)
class Expectation:
    """Which way a preference should move after an event.

    ``kind``: ``onset`` (a new condition: an outage, a slowdown, a price
    rise) or ``recovery`` (a condition ends: the API is back, the battery is
    plugged in). The benchmark holds onsets and recoveries to different
    reaction limits: a recovery shows only once traffic probes the track again.
    """

    preference: str
    direction: str  # "up" or "down"
    query_class: Optional[str] = None
    kind: str = "onset"

    def describe(self) -> str:
        where = f"[{self.query_class}]" if self.query_class else ""
        return f"{self.preference}{where} {self.direction}"


@dataclass(frozen=True)
class Change:
    op: str  # set, scale, add
    path: str
    value: Any


@dataclass(frozen=True)
class Event:
    """A regime change at ``at`` seconds: parameter changes, and the expected reaction."""

    at: float
    label: str
    changes: Tuple[Change, ...]
    expect: Optional[Expectation] = None
    line: Optional[int] = field(default=None, compare=False)  # where it was read: not part of the event

    def touches(self, prefix: str) -> bool:
        return any(c.path.startswith(prefix) for c in self.changes)


@dataclass(frozen=True)
class Scenario:
    """A validated scenario. Build with :func:`load_scenario` or :meth:`from_dict`.

    ``params`` is the starting state of every timeline parameter (and the
    rest of the model and machine settings), as nested dicts: ``params["api"]
    ["outage"]``; a simulation deep-copies it and applies the timeline.
    """

    name: str
    description: str
    duration: float
    seed: int
    adaptation_interval: float
    monitor_interval: float
    constraints: Mapping[str, Any]
    optimizer: Mapping[str, Any]
    classes: Tuple[QueryClassSpec, ...]
    mix_variation: float
    mix_period: float
    params: Mapping[str, Any]
    timeline: Tuple[Event, ...]
    source: str = field(default="<dict>", compare=False)  # where it was read: not part of the scenario

    # -------------------------------------------------------------- construction

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> "Scenario":
        """Validate and build a scenario from plain data (as a YAML file would hold)."""
        text = json.dumps(data, default=str)
        return _build(_yaml.loads(text, source=source))

    @property
    def class_names(self) -> Tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def class_shares(self) -> Dict[str, float]:
        """Normalized starting shares of the query classes."""
        total = sum(c.share for c in self.classes)
        return {c.name: c.share / total for c in self.classes}

    def initial_params(self) -> Dict[str, Any]:
        """A fresh, mutable copy of the starting parameters."""
        return copy.deepcopy(dict(self.params))

    def time_scaled(self, factor: float) -> "Scenario":
        """The same scenario with its duration and timeline scaled by ``factor``
        (0.25: a 1 h scenario in 15 min). Adaptation and monitor intervals are kept."""
        if not factor > 0:
            raise ValueError(f"factor: must be above 0, got {factor!r}")
        return replace(self, duration=self.duration * factor, mix_period=self.mix_period * factor,
                       timeline=tuple(replace(e, at=e.at * factor) for e in self.timeline))

    def with_params(self, changes: Mapping[str, Any]) -> "Scenario":
        """A copy whose starting parameters have ``changes`` applied (dotted paths,
        the timeline's names: ``{"workload.rate": 28}``). Validated like the timeline."""
        params = self.initial_params()
        for path, value in changes.items():
            error = _check_path(path, self.class_names)
            if error is not None:
                raise ConfigError(error, source=self.source, field=path)
            error = _apply(params, Change("set", path, value), self.class_names)
            if error is not None:
                raise ConfigError(error, source=self.source, field=path)
        return replace(self, params=params)

    def with_timeline(self, timeline: Tuple[Event, ...]) -> "Scenario":
        return replace(self, timeline=tuple(sorted(timeline, key=lambda e: e.at)))

    # -------------------------------------------------------------- optimizer

    def optimization_config(self, strategy: str = "adaptive", *, rules_path: Optional[str] = None,
                            **overrides: Any) -> OptimizationConfig:
        """The ``OptimizationConfig`` a simulated router of this scenario runs with."""
        api = self.params["api"]
        local = self.params["local"]
        prices = {local["model"]: ModelPrice(0.0, 0.0),
                  api["model"]: ModelPrice(api["price"]["input_per_million"], api["price"]["output_per_million"])}
        names = self.class_names
        kwargs: Dict[str, Any] = dict(
            strategy=strategy,
            constraints=ResourceConstraints(**dict(self.constraints)),
            adaptation_interval_seconds=self.adaptation_interval,
            monitor_interval_seconds=self.monitor_interval,
            query_classes=names,
            query_class_boundaries_tokens=_boundaries(self.classes),
            prices=prices,
            rules_path=rules_path,
        )
        opt = self.optimizer
        if "metrics_window_size" in opt:
            kwargs["metrics_window_size"] = opt["metrics_window_size"]
        if "signal_window" in opt:
            kwargs["signal_window_seconds"] = opt["signal_window"]
        if "enable_preemption" in opt:
            kwargs["enable_preemption"] = opt["enable_preemption"]
        kwargs.update(overrides)
        return OptimizationConfig(**kwargs)


def _boundaries(classes: Tuple[QueryClassSpec, ...]) -> Tuple[int, ...]:
    """Default-classifier boundaries between consecutive classes (geometric
    midpoints of their input medians). The simulator names each query's class
    itself, so these only keep the config valid and plausible."""
    out: List[int] = []
    for a, b in zip(classes, classes[1:], strict=False):
        out.append(int(math.sqrt(a.tokens_in.median * b.tokens_in.median)))
    if any(y <= x for x, y in zip(out, out[1:], strict=False)) or any(x < 1 for x in out):
        out = list(range(1, len(classes)))
    return tuple(out)


# ------------------------------------------------------------------ loading

_VALIDATOR = load_validator("scenario.schema.json")


def scenario_names() -> List[str]:
    """Names of the bundled scenarios (``scenarios/*.yaml``)."""
    return sorted(p.stem for p in bundled_dir("scenarios").glob("*.yaml"))


def load_scenario(path_or_name: Union[str, Path]) -> Scenario:
    """Load and validate a scenario file, or a bundled scenario by name.

    ``"api_outage"`` resolves to ``scenarios/api_outage.yaml``; anything that
    looks like a path (has a separator or ends in .yaml/.yml) is read as a file.
    Raises ``ConfigError`` (file:line: field: message) when invalid.
    """
    text = str(path_or_name)
    looks_like_path = isinstance(path_or_name, Path) or "/" in text or "\\" in text or \
        text.endswith((".yaml", ".yml"))
    if looks_like_path:
        path = Path(path_or_name)
    else:
        path = bundled_dir("scenarios") / f"{text}.yaml"
        if not path.is_file():
            names = scenario_names()
            hint = difflib.get_close_matches(text, names, n=1)
            suffix = f"; did you mean {hint[0]!r}?" if hint else f"; bundled scenarios: {', '.join(names)}"
            raise ConfigError(f"no scenario named {text!r}{suffix}", source=str(bundled_dir("scenarios")))
    return _build(_yaml.load(path))




class _Checker:
    def __init__(self, doc: _yaml.LocatedDocument) -> None:
        self.doc = doc

    def fail(self, path: Tuple[Any, ...], message: str) -> ConfigError:
        return self.doc.error(path, message)

    def duration(self, value: Any, path: Tuple[Any, ...], default: float) -> float:
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as err:
            raise self.fail(path, str(err)) from err


def _merge(defaults: Mapping[str, Any], given: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    out = copy.deepcopy(dict(defaults))
    for key, value in (given or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _build(doc: _yaml.LocatedDocument) -> Scenario:
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error((), "a scenario file must be a mapping (name:, duration:, workload:, ...)")
    schema_err = schema_error(doc, _VALIDATOR,
                              property_names="is not a parameter path like api.outage or local.quality.long")
    if schema_err is not None:
        raise schema_err
    c = _Checker(doc)

    duration = c.duration(data["duration"], ("duration",), 0.0)
    if duration <= 0:
        raise c.fail(("duration",), "must be longer than 0")
    adaptation = c.duration(data.get("adaptation_interval"), ("adaptation_interval",), 30.0)
    monitor = c.duration(data.get("monitor_interval"), ("monitor_interval",), 1.0)
    for key, value in (("adaptation_interval", adaptation), ("monitor_interval", monitor)):
        if value <= 0:
            raise c.fail((key,), "must be longer than 0")

    # constraints: ResourceConstraints fields, checked by its own validation
    constraints = dict(data.get("constraints") or {})
    try:
        ResourceConstraints.from_dict(constraints, source=doc.source)
    except ConfigError as err:
        key = (err.field or "").split(".", 1)[-1]
        raise c.fail(("constraints", key) if key in constraints else ("constraints",), err.message) from err

    optimizer = dict(data.get("optimizer") or {})
    if "signal_window" in optimizer:
        optimizer["signal_window"] = c.duration(optimizer["signal_window"], ("optimizer", "signal_window"), 120.0)
        if optimizer["signal_window"] <= 0:
            raise c.fail(("optimizer", "signal_window"), "must be longer than 0")

    # workload
    w = data["workload"]
    classes: List[QueryClassSpec] = []
    for name, spec in w["classes"].items():
        if name == "other":
            raise c.fail(("workload", "classes", name), "'other' is reserved (values outside the configured classes)")
        dists = []
        for key in ("tokens_in", "tokens_out"):
            t = spec[key]
            dist = TokenDistribution(float(t["median"]), float(t.get("sigma", 0.5)), int(t.get("min", 1)),
                                     int(t.get("max", 100_000)))
            if dist.min > dist.max:
                raise c.fail(("workload", "classes", name, key, "min"), f"min {dist.min} is above max {dist.max}")
            dists.append(dist)
        cx = spec.get("complexity") or {}
        classes.append(QueryClassSpec(name, float(spec["share"]), dists[0], dists[1],
                                      float(cx.get("mean", 0.3)), float(cx.get("sd", 0.1))))
    if sum(q.share for q in classes) <= 0:
        raise c.fail(("workload", "classes"), "the class shares add up to 0; give at least one a share above 0")
    names = tuple(q.name for q in classes)
    mix_period = c.duration(w.get("mix_period"), ("workload", "mix_period"), 300.0)
    if mix_period <= 0:
        raise c.fail(("workload", "mix_period"), "must be longer than 0")

    # model and machine parameters
    models = data.get("models") or {}
    params: Dict[str, Any] = {
        "workload": {"rate": float(w["rate"]), "share": {q.name: q.share for q in classes}},
        "local": _merge(LOCAL_DEFAULTS, models.get("local")),
        "api": _merge(API_DEFAULTS, models.get("api")),
    }
    for path in _DURATION_KEYS:
        node = params
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = c.duration(node[path[-1]], ("models",) + path, 0.0)
    for track in TRACKS:
        quality = params[track]["quality"]
        for key in quality:
            if key not in names:
                hint = difflib.get_close_matches(str(key), names, n=1)
                raise c.fail(("models", track, "quality", key),
                             f"unknown query class{'; did you mean ' + repr(hint[0]) + '?' if hint else ''} "
                             f"(workload classes: {', '.join(names)})")
        defaults = _DEFAULT_QUALITY[track]
        for i, name in enumerate(names):
            quality.setdefault(name, defaults[min(i, len(defaults) - 1)])
    if params["local"]["model"] == params["api"]["model"]:
        raise c.fail(("models", "api", "model"), "the local and API models need different names (prices are per model)")
    machine_data = data.get("machine") or {}
    machine = _merge(MACHINE_DEFAULTS, {k: v for k, v in machine_data.items() if k != "battery"})
    params["machine"] = machine
    battery_given = machine_data.get("battery", {})
    params["battery"] = None if battery_given is None else _merge(BATTERY_DEFAULTS, battery_given)

    # timeline
    events: List[Event] = []
    state = copy.deepcopy(params)
    indexed = sorted(enumerate(data.get("timeline") or []),
                     key=lambda ie: c.duration(ie[1]["at"], ("timeline", ie[0], "at"), 0.0))
    for index, entry in indexed:
        where: Tuple[Any, ...] = ("timeline", index)
        at = c.duration(entry["at"], where + ("at",), 0.0)
        if at >= duration:
            raise c.fail(where + ("at",), f"the event at {at:g}s is not before the end of the scenario ({duration:g}s)")
        changes: List[Change] = []
        for op in ("set", "scale", "add"):
            for path, value in (entry.get(op) or {}).items():
                field_path = where + (op, path)
                error = _check_path(path, names)
                if error is not None:
                    raise c.fail(field_path, error)
                kind = _kind_of(path)
                if path.startswith("battery.") and state["battery"] is None:
                    raise c.fail(field_path, "this scenario's machine has no battery (machine.battery: null)")
                if op != "set":
                    if not _KINDS[kind][1] or kind in ("count", "limit"):
                        raise c.fail(field_path, f"{path} cannot be changed with {op}; use set")
                    if not _is_number(value):
                        raise c.fail(field_path, f"{op} needs a number, got {value!r}")
                elif kind == "seconds":
                    try:
                        value = parse_duration(value)
                    except ValueError as err:
                        raise c.fail(field_path, str(err)) from err
                change = Change(op, path, value)
                error = _apply(state, change, names)
                if error is not None:
                    raise c.fail(field_path, error)
                changes.append(change)
        expect = None
        if entry.get("expect"):
            e = dict(entry["expect"])
            qc = e.pop("query_class", None)
            kind = e.pop("kind", "onset")
            if qc is not None and qc not in names:
                raise c.fail(where + ("expect", "query_class"),
                             f"unknown query class {qc!r} (workload classes: {', '.join(names)})")
            if len(e) != 1:
                raise c.fail(where + ("expect",), "expect one preference direction per event, e.g. {local_bias: up}")
            pref, direction = next(iter(e.items()))
            expect = Expectation(pref, direction, qc, kind)
        label = entry.get("label") or ", ".join(f"{ch.op} {ch.path}={ch.value}" for ch in changes)
        events.append(Event(at, label, tuple(changes), expect, doc.line(where)))
    if sum(state["workload"]["share"].values()) <= 0 and events:
        raise c.fail(("timeline",), "the timeline leaves every class share at 0")

    return Scenario(
        name=data["name"], description=str(data.get("description", "")).strip(), duration=duration,
        seed=int(data.get("seed", 0)), adaptation_interval=adaptation, monitor_interval=monitor,
        constraints=constraints, optimizer=optimizer, classes=tuple(classes),
        mix_variation=float(w.get("mix_variation", 0.0)), mix_period=mix_period,
        params=params, timeline=tuple(events), source=doc.source,
    )


def _kind_of(path: str) -> str:
    parts = path.split(".")
    key = path if path in SETTABLE else ".".join(parts[:-1] + ["<class>"])
    return SETTABLE[key]


def _check_path(path: str, classes: Tuple[str, ...]) -> Optional[str]:
    if path in SETTABLE:
        return None
    parts = path.split(".")
    generic = ".".join(parts[:-1] + ["<class>"])
    if generic in SETTABLE:
        if parts[-1] in classes:
            return None
        hint = difflib.get_close_matches(parts[-1], classes, n=1)
        return (f"unknown query class {parts[-1]!r}{'; did you mean ' + repr(hint[0]) + '?' if hint else ''} "
                f"(workload classes: {', '.join(classes)})")
    hint = difflib.get_close_matches(path, [p.replace("<class>", classes[0]) for p in SETTABLE], n=1)
    return f"unknown parameter{'; did you mean ' + repr(hint[0]) + '?' if hint else ''} (docs/simulation.md lists them)"


def _apply(state: Dict[str, Any], change: Change, classes: Tuple[str, ...]) -> Optional[str]:
    """Apply one change to a parameter state; an error message when the result is invalid."""
    parts = change.path.split(".")
    node = state
    for part in parts[:-1]:
        node = node[part]
    key = parts[-1]
    kind = _kind_of(change.path)
    if change.op == "set":
        value = change.value
    elif change.op == "scale":
        value = node[key] * change.value
    else:
        value = node[key] + change.value
    if kind in ("ratio", "throttle") and change.op != "set" and _is_number(value):
        value = min(max(value, 0.0), 1.0 if kind == "ratio" else 0.95)  # drift stops at the ends of the range
    error = _KINDS[kind][0](value)
    if error is not None:
        return f"{change.op} {change.path}: {error}"
    node[key] = value
    return None


def apply_change(state: Dict[str, Any], change: Change) -> None:
    """Apply a validated change to a running simulation's parameter state."""
    classes = tuple(state["workload"]["share"])
    error = _apply(state, change, classes)
    if error is not None:  # validated at load; a hand-built Event may still be wrong
        raise ConfigError(error, field=change.path)


__all__ = [
    "Change", "EXPECT_KINDS", "Event", "Expectation", "QueryClassSpec", "Scenario", "SETTABLE", "TokenDistribution",
    "apply_change", "load_scenario", "scenario_names",
]
