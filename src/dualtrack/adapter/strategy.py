"""Strategy rule files: loading, validation and compilation.

A strategy file (``rules/<name>.yaml``) is validated against the published
JSON Schema (``schemas/strategy.schema.json``) and then compiled: every
condition parsed and checked against the signal catalog, every duration
parsed, every preference range checked. Nothing is evaluated lazily, so a
file that loads is a file that runs. Errors name the file, the line, the
rule and the field::

    rules/latency_focused.yaml:31: rules[2].when: rule 'prefer_faster_track': unknown signal
    'latncy_p95_seconds'; did you mean 'latency_p95_seconds'?

``load_strategies(path)`` loads a folder (or files) into a ``StrategySet``;
strategies refer to each other by name (the adaptive strategy's modes).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .. import _yaml
from .._schema import load_validator, schema_error
from ..errors import ConfigError
from ..vocabulary import DEFAULT_ROUTING, DEFAULT_TIMEOUTS_SECONDS, ROUTING_FIELDS, ROUTING_NAMES, parse_duration
from .conditions import Condition, ConditionError, compile_condition
from .objective import TERMS, ObjectiveSpec
from .signals import BUILTIN_CATALOG, Catalog, Signal, user_signal

PREFS: Tuple[str, ...] = ROUTING_NAMES

#: The spec's starting preferences.
DEFAULT_BASELINE: Dict[str, float] = dict(DEFAULT_ROUTING)
#: What each preference can ever be; clamps must lie within these.
HARD_LIMITS: Dict[str, Tuple[float, float]] = {f.name: (f.lower, f.upper) for f in ROUTING_FIELDS.values()}
DEFAULT_MAX_STEP: Dict[str, float] = {f.name: f.max_step for f in ROUTING_FIELDS.values()}
DEFAULT_TIMEOUTS: Dict[str, float] = dict(DEFAULT_TIMEOUTS_SECONDS)
#: When a track is unhealthy (drained to the exploration floor), if a strategy does not say: most
#: of its calls fail. Calls refused by a rate limit (HTTP 429) count as answered here: draining a
#: rate-limited API sends local every call, the ones it would have accepted too, while its refusals
#: fall back to local anyway.
DEFAULT_UNHEALTHY_WHEN = "success_ratio + coalesce(rate_limited_ratio, 0) < 0.5"


# ------------------------------------------------------------------ model


@dataclass(frozen=True)
class Action:
    op: str  # "set", "scale" or "add"
    pref: str
    value: float


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    condition: Condition
    hold_seconds: float
    cooldown_seconds: float
    for_each: Optional[str]
    actions: Tuple[Action, ...]
    line: Optional[int] = None


@dataclass(frozen=True)
class Health:
    condition: Optional[Condition]
    hold_seconds: float = 0.0


@dataclass(frozen=True)
class Timeouts:
    base_seconds: Mapping[str, float]
    latency_signal: str = "latency_p99_seconds"
    latency_factor: float = 2.0
    min_seconds: float = 1.0
    max_seconds: float = 120.0
    # Strategies with an objective: a path not congested gets at least this x the latency
    # target (0: off), never beyond 600 s; see RuleEngine._timeout_floors.
    target_floor: float = 0.0


@dataclass(frozen=True)
class Learning:
    enabled: bool = False
    rate: float = 0.2
    gain: float = 1.0
    max_offset: float = 0.3
    weights: Mapping[str, float] = field(default_factory=lambda: {"quality": 1.0, "latency": 0.5, "cost": 0.5})


@dataclass(frozen=True)
class ModeChoice:
    use: str
    condition: Condition
    hold_seconds: float
    clear_seconds: float


@dataclass(frozen=True)
class Modes:
    default: str
    min_dwell_seconds: float
    select: Tuple[ModeChoice, ...]


@dataclass(frozen=True)
class Strategy:
    """A compiled strategy. Immutable: a reload builds a new one."""

    name: str
    description: str
    source: str
    baseline: Mapping[str, float]
    clamps: Mapping[str, Tuple[float, float]]  # exploration floor already folded into local_bias
    max_step: Mapping[str, float]
    relax: float
    exploration_floor: float
    health: Health
    timeouts: Timeouts
    learning: Learning
    rules: Tuple[Rule, ...]
    modes: Optional[Modes] = None
    objective: Optional[ObjectiveSpec] = None
    signals: Tuple[Signal, ...] = ()
    document: Optional[_yaml.LocatedDocument] = None  # kept for `rules test` line numbers

    @property
    def tests(self) -> List[Mapping[str, Any]]:
        data = self.document.data if self.document is not None else None
        return list(data.get("tests", [])) if isinstance(data, dict) else []


# ------------------------------------------------------------------ schema


_VALIDATOR = load_validator("strategy.schema.json")
STRATEGY_SCHEMA: Dict[str, Any] = dict(_VALIDATOR.schema)  # type: ignore[arg-type]  # a dict: load_validator's
_PREFERENCE_NAMES = f"is not a preference ({', '.join(ROUTING_NAMES)})"


# ------------------------------------------------------------------ compile


class _Compiler:
    def __init__(self, doc: _yaml.LocatedDocument, catalog: Catalog) -> None:
        self.doc = doc
        self.catalog = catalog
        self.infos = catalog.infos()

    def fail(self, path: Tuple[Any, ...], message: str) -> ConfigError:
        return self.doc.error(path, message)

    def duration(self, value: Any, path: Tuple[Any, ...], default: float = 0.0) -> float:
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as err:
            raise self.fail(path, str(err)) from err

    def condition(self, text: str, path: Tuple[Any, ...], rule: Optional[str] = None,
                  bound: Sequence[str] = ()) -> Condition:
        prefix = f"rule {rule!r}: " if rule else ""
        try:
            return compile_condition(text, self.infos, bound=bound)
        except ConditionError as err:
            raise self.fail(path, prefix + str(err)) from err
        except RecursionError as err:
            # Deeply nested text overflows the parser's recursion; that is a bad
            # file, not a crash of the loader (or of a running adapter's reload).
            raise self.fail(path, prefix + "the condition is nested too deeply") from err

    def prefs(self, values: Optional[Mapping[str, float]], path: Tuple[Any, ...], *,
              default: Mapping[str, float], within_limits: bool) -> Dict[str, float]:
        out = dict(default)
        for pref, value in (values or {}).items():
            if within_limits:
                lo, hi = HARD_LIMITS[pref]
                if not lo <= value <= hi:
                    raise self.fail(path + (pref,), f"{value!r} is outside [{lo:g}, {hi:g}]")
            out[pref] = float(value)
        return out

    def compile(self, data: Mapping[str, Any]) -> Strategy:
        name = data["strategy"]
        baseline = self.prefs(data.get("preferences"), ("preferences",), default=DEFAULT_BASELINE,
                              within_limits=True)
        floor = float(data.get("exploration_floor", 0.05))
        clamps: Dict[str, Tuple[float, float]] = dict(HARD_LIMITS)
        for pref, pair in (data.get("clamps") or {}).items():
            lo, hi = float(pair[0]), float(pair[1])
            hard_lo, hard_hi = HARD_LIMITS[pref]
            if lo > hi:
                raise self.fail(("clamps", pref), f"low {lo:g} is above high {hi:g}")
            if lo < hard_lo or hi > hard_hi:
                raise self.fail(("clamps", pref), f"[{lo:g}, {hi:g}] is outside [{hard_lo:g}, {hard_hi:g}]")
            clamps[pref] = (lo, hi)
        lo, hi = clamps["local_bias"]
        lo, hi = max(lo, floor), min(hi, 1.0 - floor)
        if lo > hi:
            raise self.fail(("exploration_floor",),
                            f"a floor of {floor:g} leaves no room inside the local_bias clamps")
        clamps["local_bias"] = (lo, hi)
        for pref in PREFS:
            c_lo, c_hi = clamps[pref]
            if not c_lo <= baseline[pref] <= c_hi:
                raise self.fail(("preferences", pref),
                                f"{baseline[pref]:g} is outside its clamps [{c_lo:g}, {c_hi:g}] "
                                "(the exploration floor narrows local_bias)")
        max_step = self.prefs(data.get("max_step"), ("max_step",), default=DEFAULT_MAX_STEP, within_limits=False)
        for pref, value in max_step.items():
            if value <= 0:
                raise self.fail(("max_step", pref), f"must be greater than 0, got {value:g}")

        health_data = data.get("health") or {}
        health_text = health_data.get("unhealthy_when", DEFAULT_UNHEALTHY_WHEN)
        health = Health(
            self.condition(health_text, ("health", "unhealthy_when"), bound=("path",)),
            self.duration(health_data.get("for"), ("health", "for")),
        )

        t = data.get("timeouts") or {}
        base = dict(DEFAULT_TIMEOUTS)
        base.update({k: float(v) for k, v in (t.get("base_seconds") or {}).items()})
        latency_signal = t.get("latency_signal", "latency_p99_seconds")
        if latency_signal not in self.catalog or "path" not in self.catalog[latency_signal].dims:
            raise self.fail(("timeouts", "latency_signal"),
                            f"{latency_signal!r} is not a signal with a path label")
        timeouts = Timeouts(base, latency_signal, float(t.get("latency_factor", 2.0)),
                            float(t.get("min_seconds", 1.0)), float(t.get("max_seconds", 120.0)),
                            float(t.get("target_floor", 0.0)))
        if timeouts.min_seconds > timeouts.max_seconds:
            raise self.fail(("timeouts", "min_seconds"), "min_seconds is above max_seconds")

        ld = data.get("learning") or {}
        weights = {"quality": 1.0, "latency": 0.5, "cost": 0.5}
        weights.update({k: float(v) for k, v in (ld.get("weights") or {}).items()})
        learning = Learning(bool(ld.get("enabled", bool(ld))), float(ld.get("rate", 0.2)),
                            float(ld.get("gain", 1.0)), float(ld.get("max_offset", 0.3)), weights)

        objective = None
        od = data.get("objective")
        if od is not None:
            given = {k: float(v) for k, v in (od.get("weights") or {}).items()}
            weights = dict(ObjectiveSpec().weights) if not given else {t: given.get(t, 0.0) for t in TERMS}
            total = sum(weights.values())
            if total <= 0:
                raise self.fail(("objective", "weights"), "at least one weight must be greater than 0")
            objective = ObjectiveSpec(weights={t: w / total for t, w in weights.items()},
                                      probe=float(od.get("probe", 0.03)),
                                      probe_calls=float(od.get("probe_calls", 1.0)),
                                      observed_calls=float(od.get("observed_calls", 0.0)),
                                      probe_after_change=bool(od.get("probe_after_change", False)),
                                      utilization=float(od.get("utilization", 0.9)),
                                      decay=float(od.get("decay", 0.7)),
                                      battery_horizon=self.duration(od.get("battery_horizon"),
                                                                    ("objective", "battery_horizon")))

        rules: List[Rule] = []
        seen: Dict[str, int] = {}
        for index, entry in enumerate(data.get("rules") or []):
            path: Tuple[Any, ...] = ("rules", index)
            rule_name = entry["name"]
            if rule_name in seen:
                raise self.fail(path + ("name",),
                                f"rule name {rule_name!r} is already used by rules[{seen[rule_name]}]")
            seen[rule_name] = index
            for_each = entry.get("for_each")
            condition = self.condition(entry["when"], path + ("when",), rule_name,
                                       bound=(for_each,) if for_each else ())
            actions: List[Action] = []
            for op in ("set", "scale", "add"):
                for pref, value in (entry["actions"].get(op) or {}).items():
                    if op == "set":
                        lo, hi = HARD_LIMITS[pref]
                        if not lo <= value <= hi:
                            raise self.fail(path + ("actions", op, pref),
                                            f"rule {rule_name!r}: {value!r} is outside [{lo:g}, {hi:g}]")
                    if op == "scale" and value < 0:
                        raise self.fail(path + ("actions", op, pref),
                                        f"rule {rule_name!r}: a scale factor cannot be negative")
                    actions.append(Action(op, pref, float(value)))
            rules.append(Rule(
                rule_name, entry.get("description", ""), condition,
                self.duration(entry.get("for"), path + ("for",)),
                self.duration(entry.get("cooldown"), path + ("cooldown",)),
                for_each, tuple(actions), self.doc.line(path),
            ))

        modes = None
        if "modes" in data:
            md = data["modes"]
            choices = []
            for index, entry in enumerate(md["select"]):
                path = ("modes", "select", index)  # same type as a rule's path
                hold = self.duration(entry.get("for"), path + ("for",))
                choices.append(ModeChoice(
                    entry["use"], self.condition(entry["when"], path + ("when",)),
                    hold, self.duration(entry.get("clear_for"), path + ("clear_for",), default=hold),
                ))
            modes = Modes(md["default"], self.duration(md.get("min_dwell"), ("modes", "min_dwell")), tuple(choices))

        return Strategy(
            name=name, description=data.get("description", ""), source=self.doc.source,
            baseline=baseline, clamps=clamps, max_step=max_step,
            relax=float(data.get("relax", 0.1)), exploration_floor=floor, health=health,
            timeouts=timeouts, learning=learning, rules=tuple(rules), modes=modes, objective=objective,
            document=self.doc,
        )


def _parse_user_signals(doc: _yaml.LocatedDocument, builtins: Optional[Catalog] = None) -> List[Signal]:
    """The file's ``signals:``; with ``builtins``, a name clash with a built-in is an error."""
    out = []
    for index, entry in enumerate(doc.data.get("signals") or []):
        try:
            signal = user_signal(entry)
        except ValueError as err:
            field_name, _, message = str(err).partition(": ")
            raise doc.error(("signals", index, field_name), message) from err
        if builtins is not None and signal.name in builtins and builtins[signal.name].builtin:
            raise doc.error(("signals", index, "name"), f"signal {signal.name!r} is built in; choose another name")
        out.append(signal)
    return out


def _non_finite(data: Any, path: Tuple[Any, ...] = ()) -> Optional[Tuple[Any, ...]]:
    """The path of the first NaN/Inf number (YAML ``.nan``/``.inf``), if any."""
    if isinstance(data, float) and not math.isfinite(data):
        return path
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        found = _non_finite(value, path + (key,))
        if found is not None:
            return found
    return None


def _read(path: Union[str, Path]) -> _yaml.LocatedDocument:
    doc = _yaml.load(path)
    if not isinstance(doc.data, dict):
        raise ConfigError("expected a mapping with at least 'strategy:'", source=doc.source, line=1)
    error = schema_error(doc, _VALIDATOR, property_names=_PREFERENCE_NAMES)
    if error is not None:
        raise error
    # JSON Schema's minimum/maximum let NaN through, and a NaN relax, step or
    # action would publish NaN preferences. Test inputs may use .nan on purpose
    # (NaN signal values are no data), so tests: is exempt.
    bad = _non_finite({k: v for k, v in doc.data.items() if k != "tests"})
    if bad is not None:
        raise doc.error(bad, "must be a finite number (not .nan or .inf)")
    return doc


def compile_strategy(doc: _yaml.LocatedDocument, catalog: Catalog = BUILTIN_CATALOG) -> Strategy:
    """Compile one validated document against ``catalog``."""
    strategy = _Compiler(doc, catalog).compile(doc.data)
    signals = tuple(_parse_user_signals(doc))
    return Strategy(**{**strategy.__dict__, "signals": signals})


class StrategySet:
    """Compiled strategies by name, sharing one signal catalog."""

    def __init__(self, strategies: Mapping[str, Strategy], catalog: Catalog) -> None:
        self.strategies = dict(strategies)
        self.catalog = catalog

    def __getitem__(self, name: str) -> Strategy:
        try:
            return self.strategies[name]
        except KeyError:
            hint = difflib.get_close_matches(name, list(self.strategies), n=1)
            suffix = f"; did you mean {hint[0]!r}?" if hint else f"; loaded: {sorted(self.strategies)}"
            raise ConfigError(f"no strategy named {name!r}{suffix}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.strategies

    def names(self) -> List[str]:
        return sorted(self.strategies)

    def sources(self) -> List[str]:
        return sorted({s.source for s in self.strategies.values()})


def rule_files(paths: Iterable[Union[str, Path]]) -> List[Path]:
    """Expand folders into their ``*.yaml``/``*.yml`` files (sorted)."""
    out: List[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml") and x.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise ConfigError("no such file or folder", source=str(p))
    return out


def load_strategies(paths: Union[str, Path, Iterable[Union[str, Path]]],
                    catalog: Catalog = BUILTIN_CATALOG,
                    errors: Optional[List[ConfigError]] = None) -> StrategySet:
    """Load, validate and compile strategy files.

    Without ``errors`` the first problem raises ``ConfigError``. With a list,
    problems are appended to it instead: a bad file contributes its first
    problem and is skipped, the good files are still compiled (with the user
    signals of every file that could be read) and their cross-file
    references (modes, duplicate names) checked among themselves; the result
    holds the good strategies only::

        errors: List[ConfigError] = []
        strategies = load_strategies("rules/", errors=errors)
        for err in errors:
            print(err)  # rules/cost.yaml:12: rules[0].when: rule 'x': ...
    """

    def report(err: ConfigError) -> None:
        if errors is None:
            raise err
        errors.append(err)

    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    files: List[Path] = []
    missing = False
    for p in paths:
        try:
            files.extend(rule_files([p]))
        except ConfigError as err:
            missing = True
            report(err)
    if not files and not missing:
        report(ConfigError("no strategy files (*.yaml) found", source=", ".join(str(p) for p in paths)))

    docs: List[_yaml.LocatedDocument] = []
    user: Dict[str, Tuple[Signal, str]] = {}
    for f in files:
        try:
            doc = _read(f)
            signals = _parse_user_signals(doc, catalog)
            for index, signal in enumerate(signals):
                other = user.get(signal.name)
                if other is not None and other[0] != signal:
                    raise doc.error(("signals", index, "name"),
                                    f"signal {signal.name!r} is defined differently in {other[1]}")
        except ConfigError as err:
            report(err)
            continue
        docs.append(doc)
        for signal in signals:
            user.setdefault(signal.name, (signal, doc.source))
    try:
        catalog = catalog.with_user_signals(s for s, _ in user.values())
    except ValueError as err:  # pragma: no cover - clashes are reported per file above
        raise ConfigError(str(err)) from err

    strategies: Dict[str, Strategy] = {}
    for doc in docs:
        try:
            strategy = compile_strategy(doc, catalog)
            if strategy.name in strategies:
                raise doc.error(("strategy",), f"strategy {strategy.name!r} is also defined in "
                                               f"{strategies[strategy.name].source}")
        except ConfigError as err:
            report(err)
            continue
        strategies[strategy.name] = strategy

    bad: List[str] = []
    for strategy in strategies.values():
        try:
            _check_modes(strategy, strategies)
        except ConfigError as err:
            report(err)
            bad.append(strategy.name)
    for name in bad:
        del strategies[name]
    return StrategySet(strategies, catalog)


def _check_modes(strategy: Strategy, strategies: Mapping[str, Strategy]) -> None:
    """An adaptive strategy's modes must name other, non-adaptive, loaded strategies."""
    if strategy.modes is None:
        return
    doc = strategy.document
    assert doc is not None
    names = [strategy.modes.default] + [c.use for c in strategy.modes.select]
    fields = [("modes", "default")] + [("modes", "select", i, "use") for i in range(len(strategy.modes.select))]
    for mode, where in zip(names, fields, strict=False):
        if mode == strategy.name:
            raise doc.error(where, "a strategy cannot use itself as a mode")
        if mode not in strategies:
            hint = difflib.get_close_matches(mode, list(strategies), n=1)
            suffix = f"; did you mean {hint[0]!r}?" if hint else f"; loaded: {sorted(strategies)}"
            raise doc.error(where, f"no strategy named {mode!r}{suffix}")
        if strategies[mode].modes is not None:
            raise doc.error(where, f"mode {mode!r} is itself an adaptive strategy; modes cannot nest")
