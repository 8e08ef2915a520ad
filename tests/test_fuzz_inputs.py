"""Bad input, generated: rule files, conditions, PromQL answers, completion
results and recommendation queries that are wrong in every way we could think
of. Each must end in a clear, counted rejection (a ``ConfigError`` naming its
file, a ``ConditionError``, a ``SourceError``, a rejected-input counter), and
the request path must never raise into the caller.

Structure-aware generation: the rule files start from the shipped ones and
are mutated field by field (wrong types, out-of-range numbers, NaN, huge
integers, unicode, generated conditions) or at the YAML text level;
conditions come from the grammar; PromQL answers are well-formed API
envelopes around hostile samples. Complements the narrower properties in
test_conditions.py, test_strategy.py, test_promql.py, test_preferences.py and
test_optimizer.py (see their docstrings).
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import string
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from dualtrack import DualTrackOptimizer, ModelPrice, OptimizationConfig
from dualtrack.adapter.aggregates import INPUTS
from dualtrack.adapter.conditions import (
    MAX_DEPTH,
    Condition,
    ConditionError,
    Context,
    compile_condition,
    parse_selector,
)
from dualtrack.adapter.engine import RuleEngine
from dualtrack.adapter.prometheus_source import SIGNAL_LABEL, PrometheusSource
from dualtrack.adapter.promql_answer import InstantResult, _parse_instant
from dualtrack.adapter.signals import BUILTIN_CATALOG, SignalValues
from dualtrack.adapter.strategy import HARD_LIMITS, PREFS, StrategySet, load_strategies
from dualtrack.bundled import bundled_dir
from dualtrack.clock import VirtualClock
from dualtrack.errors import BadQuery, BadResponse, ConfigError, SourceError, SourceUnavailable
from dualtrack.vocabulary import OUTCOMES, PATHS

_FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fuzz(examples: int) -> settings:
    """Settings for one property: no deadline (the first examples compile schemas), ``examples`` examples."""
    return settings(_FUZZ, max_examples=examples)

# --------------------------------------------------------------------------- shared value strategies

NASTY_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\n", "\\", '"', "\\\"", "a\"b\\c\nd", "é", "\u202e", "\x00", "𝔡𝔲𝔞𝔩",
                     "{{", "}", "$(rm -rf /)", "!!python/object/apply:os.system", "*alias", "&anchor",
                     "2020-13-45", "1e999", "-0", "0x1F", "NaN", ".inf", "yes", "~", "null"]),
)
NASTY_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -1, 1, 10**100, -(10**100), 10**400, 1e308, -1e308, 5e-324, math.nan, math.inf,
                     -math.inf, 0.5, 1.01, 1.0000001, -0.0]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NASTY_NUMBERS, NASTY_TEXT)
#: Any YAML-representable value, nested.
ANY_VALUE = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(NASTY_TEXT, st.integers(-3, 3)), inner, max_size=4)),
    max_leaves=12,
)

# --------------------------------------------------------------------------- conditions from the grammar

SIGNALS_BY_DIMS = {
    (): ["memory_used_ratio", "battery_ratio", "min_quality_ratio", "in_flight_requests"],
    ("path", "query_class"): ["latency_p95_seconds", "success_ratio", "quality_mean", "cost_per_request_dollars"],
}
LABEL_VALUES = st.one_of(st.sampled_from(PATHS), st.sampled_from(["short", "long", "other"]), NASTY_TEXT)


def quote(value: str) -> str:
    """A condition string literal that means exactly ``value``."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def signal_refs(draw: Any) -> str:
    dims = draw(st.sampled_from(sorted(SIGNALS_BY_DIMS)))
    name = draw(st.sampled_from(SIGNALS_BY_DIMS[dims]))
    if not dims or draw(st.booleans()):
        return name
    labels = draw(st.lists(st.sampled_from(dims + ("bogus",)), unique=True, max_size=3))
    return name + "{" + ", ".join(f"{k}={quote(draw(LABEL_VALUES))}" for k in labels) + "}"


NUMBER_LITERALS = st.one_of(
    st.sampled_from(["0", "1", "0.5", ".5", "1e3", "1e400", "1e-400", "9" * 300, "0." + "0" * 300 + "1",
                     "123456789012345678901234567890", "1E+308", "2.5e-3"]),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.17g}").filter(
        lambda s: "e" not in s or s.split("e")[0].replace(".", "").isdigit()).map(lambda s: s.replace("e+", "e")),
)
numeric_exprs = st.recursive(
    st.one_of(NUMBER_LITERALS, signal_refs()),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from("+-*/"), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda x: f"-{x}"),
        inner.map(lambda x: f"abs({x})"),
        st.tuples(st.sampled_from(["min", "max", "coalesce"]), st.lists(inner, min_size=1, max_size=9)).map(
            lambda t: f"{t[0]}({', '.join(t[1])})"),
    ),
    max_leaves=8,
)
bool_exprs = st.recursive(
    st.one_of(
        st.tuples(numeric_exprs, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), numeric_exprs).map(" ".join),
        st.sampled_from(["true", "false"]),
        st.tuples(st.sampled_from(["present", "absent"]), signal_refs()).map(lambda t: f"{t[0]}({t[1]})"),
    ),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda x: f"not {x}"),
    ),
    max_leaves=8,
)
#: Near-grammatical text: grammar output with a random edit, or token soup.
TOKENS = ["(", ")", "{", "}", ",", "=", "==", "<", ">=", "!=", "+", "-", "*", "/", "and", "or", "not", "true",
          "min(", "abs(", "present(", "coalesce(", '"', '\\"', "\\", "1e999", "é", "\u00a0", "\t", "\n",
          "latency_p95_seconds", "path", '"api"', "memory_used_ratio", "0", ".", "e", "@", "#", "$"]
broken_conditions = st.one_of(
    st.tuples(bool_exprs, st.integers(0, 400), st.sampled_from(TOKENS)).map(
        lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:]),
    st.tuples(bool_exprs, st.integers(0, 400), st.integers(1, 5)).map(lambda t: t[0][:t[1]] + t[0][t[1] + t[2]:]),
    st.lists(st.sampled_from(TOKENS), max_size=60).map(" ".join),
    st.text(max_size=300),
)
CONDITION_TEXT = st.one_of(bool_exprs, broken_conditions)
INFOS = BUILTIN_CATALOG.infos()


def _bounded_lookup(seen: List[Tuple[str, Dict[str, str]]], values: Mapping[str, Optional[float]]) -> Any:
    def lookup(name: str, labels: Mapping[str, str]) -> Optional[float]:
        seen.append((name, dict(labels)))
        return values.get(name)
    return lookup


@fuzz(300)
@given(text=CONDITION_TEXT,
       values=st.dictionaries(st.sampled_from([n for names in SIGNALS_BY_DIMS.values() for n in names]),
                              st.one_of(st.none(), st.floats(), st.sampled_from([1e308, -1e308, 5e-324])),
                              max_size=8),
       qc=NASTY_TEXT)
@example(text="latency_p95_seconds > " + "9" * 4000, values={}, qc="short")
@example(text="(" * 2000 + "true" + ")" * 2000, values={}, qc="short")
@example(text='success_ratio{path="api", query_class="\\"; drop"} > 1e400', values={"success_ratio": 1e308}, qc="")
def test_generated_conditions_compile_or_fail_with_a_condition_error_and_evaluate_to_a_truth_value(
        text: str, values: Dict[str, Optional[float]], qc: str) -> None:
    """Grammar-generated and mutated conditions (huge numbers, unicode, quoted label values): compiling yields a Condition or a ConditionError with a message, and evaluating never raises and yields True, False or None."""
    try:
        condition = compile_condition(text, INFOS, bound=("query_class",))
    except ConditionError as err:
        assert err.message and (err.column is None or err.column >= 1)
        event("rejected")
        return
    event("compiled")
    assert isinstance(condition, Condition)
    seen: List[Tuple[str, Dict[str, str]]] = []
    ctx = Context(_bounded_lookup(seen, values), {"query_class": qc})
    assert condition.evaluate(ctx) in (True, False, None)
    for value in ctx.used.values():
        assert value is None or math.isfinite(value)


def _nest(depth: int, kind: str) -> Tuple[str, int]:
    """A condition ``depth`` wrappers deep; returns (text, depth of its parse tree)."""
    if kind == "not":
        return "not " * depth + "(battery_ratio > 0)", depth + 2
    if kind == "neg":
        return "-" * depth + "battery_ratio > 0", depth + 2
    if kind == "abs":
        return "abs(" * depth + "battery_ratio" + ")" * depth + " > 0", depth + 2
    if kind == "min":
        return "min(0, " * depth + "battery_ratio" + ")" * depth + " > 0", depth + 2
    assert kind == "parens"  # parentheses build no node
    return "(" * depth + "battery_ratio > 0" + ")" * depth, 2


@fuzz(120)
@given(depth=st.integers(0, 700), kind=st.sampled_from(["not", "neg", "abs", "min", "parens"]))
@example(depth=MAX_DEPTH - 2, kind="not")
@example(depth=MAX_DEPTH - 1, kind="not")
def test_deep_nesting_is_accepted_up_to_the_limit_and_a_condition_error_beyond(depth: int, kind: str) -> None:
    """Conditions nested 0-700 levels by not/-/abs/min/parentheses: accepted (and evaluable) while the tree and the text nest at most MAX_DEPTH levels, a 'nested too deeply' ConditionError when the tree nests deeper; redundant parentheses beyond MAX_DEPTH may go either way; never RecursionError."""
    text, tree_depth = _nest(depth, kind)
    assume(len(text) <= 4096)
    if tree_depth <= MAX_DEPTH and depth <= MAX_DEPTH:
        condition = compile_condition(text, INFOS)
        assert condition.evaluate(Context(lambda name, labels: 0.5)) in (True, False)
    elif tree_depth > MAX_DEPTH:
        with pytest.raises(ConditionError, match="nested too deeply"):
            compile_condition(text, INFOS)
    else:  # hundreds of redundant parentheses: the parser's own recursion may refuse them
        try:
            compile_condition(text, INFOS)
        except ConditionError as err:
            assert "nested too deeply" in err.message


@fuzz(300)
@given(value=st.text(max_size=30) | st.sampled_from(['\\', '"', '\\"', '\\\\"', '"\\', 'a\nb', '\\n', '\u2028']),
       name=st.sampled_from(["success_ratio", "latency_p95_seconds"]))
def test_label_values_with_quotes_backslashes_and_newlines_reach_the_lookup_literally(value: str, name: str) -> None:
    """A selector value written with escaped quotes/backslashes (and raw newlines, unicode) is read back exactly, and the rule reads the signal under exactly that label value."""
    text = f"{name}{{query_class={quote(value)}}}"
    assert parse_selector(text) == (name, {"query_class": value})
    seen: List[Tuple[str, Dict[str, str]]] = []
    condition = compile_condition(f"{text} > 0", INFOS)
    assert condition.evaluate(Context(_bounded_lookup(seen, {name: 1.0}))) is True
    assert seen == [(name, {"query_class": value})]


# --------------------------------------------------------------------------- the rule loader

RULES_DIR = bundled_dir("rules")
SKELETONS: Dict[str, Any] = {p.name: yaml.safe_load(p.read_text(encoding="utf-8"))
                             for p in sorted(Path(RULES_DIR).glob("*.yaml"))}


def _paths(data: Any, prefix: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out.extend(_paths(value, prefix + (key,)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            out.extend(_paths(value, prefix + (index,)))
    return out


def _near_valid(path: Tuple[Any, ...]) -> st.SearchStrategy[Any]:
    """Values of roughly the right kind for the field at ``path`` (most likely to get past the schema)."""
    last = path[-1] if path else None
    if last in ("when", "unhealthy_when"):
        return CONDITION_TEXT
    if last in ("for", "cooldown", "clear_for", "min_dwell"):
        return st.one_of(st.sampled_from(["0s", "30s", "1m30s", "500ms", "1h", "-1s", "1x", "", "9" * 400 + "h"]),
                         NASTY_NUMBERS)
    if last in PREFS or isinstance(last, int):
        return NASTY_NUMBERS
    if last in ("strategy", "use", "default", "name", "for_each", "latency_signal"):
        return st.one_of(st.sampled_from(["balanced", "cost", "adaptive", "query_class", "path", "x",
                                          "latency_p99_seconds", "battery_ratio"]), NASTY_TEXT)
    return ANY_VALUE


@st.composite
def mutated_rule_files(draw: Any) -> Tuple[str, Any]:
    name = draw(st.sampled_from(sorted(SKELETONS)))
    data = copy.deepcopy(SKELETONS[name])
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "near", "near", "delete", "add_key", "wrap"]))
        if not path:
            if op in ("replace", "wrap"):
                data = draw(ANY_VALUE) if op == "replace" else [data]
            continue
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        if op == "replace":
            parent[key] = draw(ANY_VALUE)
        elif op == "near":
            parent[key] = draw(_near_valid(path))
        elif op == "delete":
            del parent[key]
        elif op == "add_key" and isinstance(parent[key], dict):
            parent[key][draw(NASTY_TEXT)] = draw(ANY_VALUE)
        elif op == "wrap":
            parent[key] = [parent[key]]
    return name, data


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=120)


def _load_folder(folder: Path) -> Tuple[Optional[StrategySet], Optional[ConfigError], List[ConfigError]]:
    try:
        strict: Optional[StrategySet] = load_strategies(folder)
        error = None
    except ConfigError as err:
        strict, error = None, err
    collected: List[ConfigError] = []
    lenient = load_strategies(folder, errors=collected)  # never raises: problems are collected
    assert isinstance(lenient, StrategySet)
    if strict is not None:
        assert collected == [] and lenient.names() == strict.names()
    else:
        assert collected, "the strict load failed but the lenient one found nothing wrong"
    return strict, error, collected


def _run_engine(strategies: StrategySet, rng: random.Random) -> None:
    """A loaded file is a file that runs: a few cycles, preferences finite and inside the hard limits."""
    for name in strategies.names():
        engine = RuleEngine(strategies, name)
        for cycle in range(3):
            values = SignalValues()
            for signal in strategies.catalog:
                if rng.random() < 0.6:
                    values.set(signal.name, {}, rng.choice([0.0, 0.5, 1.0, 2.0, 1e308, -1.0, 5e-324]))
                for path in PATHS if "path" in signal.dims else ():
                    values.set(signal.name, {"path": path}, rng.choice([0.1, 0.9, 3.0, 60.0]))
            decision = engine.evaluate(values, now=30.0 * cycle)
            for prefs in [decision.routing, *decision.query_classes.values()]:
                for pref in PREFS:
                    lo, hi = HARD_LIMITS[pref]
                    assert math.isfinite(prefs[pref]) and lo <= prefs[pref] <= hi, (name, pref, prefs[pref])
            for seconds in decision.timeouts_seconds.values():
                assert math.isfinite(seconds) and seconds > 0


@fuzz(150)
@given(mutated=mutated_rule_files(), seed=st.integers(0, 2**16))
def test_mutated_rule_files_load_or_fail_with_a_config_error_naming_the_file(mutated: Tuple[str, Any],
                                                                             seed: int) -> None:
    """The shipped rule files with 1-3 fields replaced (wrong types, NaN, huge or out-of-range numbers, unicode, generated conditions), deleted or added: loading gives a StrategySet or a ConfigError naming one of the files, never another exception; what loads evaluates to finite preferences within the hard limits."""
    name, data = mutated
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for other in SKELETONS:
            if other != name:
                shutil.copy(Path(RULES_DIR) / other, folder / other)
        (folder / name).write_text(_dump(data), encoding="utf-8")
        files = {str(folder / f) for f in SKELETONS}
        strict, error, collected = _load_folder(folder)
        for err in [error, *collected]:
            if err is not None:
                assert err.source in files, err
                assert str(err).startswith(err.source) and err.message
        event("loaded" if strict is not None else "rejected")
        if strict is not None:
            _run_engine(strict, random.Random(seed))


YAML_NOISE = [":", ": ", "- ", "[", "]", "{", "}", "&a ", "*a", "!!", "!!str ", "!!python/object:os.system ",
              "|", ">", "'", '"', "#", "%YAML 1.1\n", "---\n", "...\n", "\t", "\n", "  ", "? ", "<<: ", "\\",
              "\x00", "\ufeff", "\u2028", "é", "1e999", ".nan", "0x", "2020-13-45", "~"]


@fuzz(150)
@given(name=st.sampled_from(sorted(SKELETONS)),
       edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 8), st.sampled_from(YAML_NOISE)),
                      min_size=1, max_size=4))
def test_text_level_mutations_of_a_rule_file_give_a_strategy_set_or_a_config_error(
        name: str, edits: List[Tuple[float, int, str]]) -> None:
    """A shipped rule file with YAML syntax spliced in (tags, anchors, tabs, NUL, BOM, document markers) or cut out: a StrategySet or a ConfigError naming the file, never another exception."""
    text = (Path(RULES_DIR) / name).read_text(encoding="utf-8")
    for where, cut, noise in edits:
        at = int(where * len(text))
        text = text[:at] + noise + text[at + cut:]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text, encoding="utf-8")
        try:
            strategies = load_strategies(path)
        except ConfigError as err:
            event("rejected")
            assert err.source == str(path) and str(err).startswith(str(path))
        else:
            event("loaded")
            assert isinstance(strategies, StrategySet)


def _laughs(levels: int, where: str) -> str:
    lines = ["strategy: laughs", f"{where}:", "  - &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


HOSTILE_DOCUMENTS = {
    "deep flow list": "strategy: x\nrules: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep flow map": "strategy: x\nrules: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
    "deep block map": "strategy: x\ntests:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(700)) + "  v\n",
    "billion laughs in rules": _laughs(9, "rules"),
    "billion laughs in tests": _laughs(9, "tests"),
    "billion laughs in signals": _laughs(8, "signals"),
    "impossible date": "strategy: x\ndescription: 2020-13-45\n",
    "bad explicit int": "strategy: x\nrelax: !!int abc\n",
    "bad explicit float": "strategy: x\nrelax: !!float abc\n",
    "integer of 5000 digits": "strategy: x\nrelax: " + "9" * 5000 + "\n",
    "hex integer of 5000 digits": "strategy: x\nrelax: 0x" + "f" * 5000 + "\n",
    "python object tag": "strategy: !!python/object/apply:os.system ['true']\n",
    "python name tag": "strategy: x\nrelax: !!python/name:os.system\n",
    "binary": "strategy: !!binary aGVsbG8=\n",
    "set": "strategy: x\nclamps: !!set {a, b}\n",
    "timestamp": "strategy: x\ndescription: 2020-01-01 10:00:00\n",
    "unhashable key": "strategy: x\n? [a, b]\n: 1\n",
    "two documents": "strategy: x\n---\nstrategy: y\n",
    "NUL byte": "strategy: x\x00\n",
    "only a comment": "# nothing\n",
    "a bare scalar": "42\n",
    "huge float": "strategy: x\nrelax: 1e999\n",
    "nan": "strategy: x\nrelax: .nan\n",
    "recursive alias": "strategy: x\nrules: &r [*r]\n",
    "keys 0 and '' side by side": "strategy: x\ntests:\n  - name: t\n    cycles: [{repeat: 2, signals: "
                                  "{'': false, 0: false}}]\n    expect: [{cycle: 1}]\n",
    "keys None and 1.5 side by side": "strategy: x\nmax_step: {~: a, 1.5: b, x: c}\n",
}


@pytest.mark.parametrize("text", HOSTILE_DOCUMENTS.values(), ids=HOSTILE_DOCUMENTS.keys())
def test_hostile_yaml_documents_are_config_errors_quickly(tmp_path: Path, text: str) -> None:
    """Hostile YAML (5000-deep nesting, billion laughs, impossible dates, 5000-digit integers, Python tags, NUL, two documents, mapping keys of mixed types): a ConfigError naming the file within 2 s, never RecursionError/ValueError/TypeError or a hang."""
    path = tmp_path / "hostile.yaml"
    path.write_text(text, encoding="utf-8")
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_strategies(path)
    assert time.monotonic() - started < 2.0
    assert info.value.source == str(path)
    assert len(str(info.value)) < 2000  # a message, not a dump of the document


def test_undecodable_rule_files_are_config_errors(tmp_path: Path) -> None:
    """A rule file that is not UTF-8 (Latin-1 bytes, UTF-16) is a ConfigError naming the file."""
    for index, payload in enumerate([b"strategy: caf\xe9\n", "strategy: x\n".encode("utf-16")]):
        path = tmp_path / f"bad{index}.yaml"
        path.write_bytes(payload)
        with pytest.raises(ConfigError) as info:
            load_strategies(path)
        assert info.value.source == str(path)


# --------------------------------------------------------------------------- PromQL answers

INPUT_NAMES = sorted(INPUTS)
SIGNAL_NAMES = st.one_of(
    st.sampled_from([f"_input_{n}" for n in INPUT_NAMES]),
    st.sampled_from(BUILTIN_CATALOG.names()),
    st.sampled_from(["_input_", "_input_nope", "no_such_signal", "", "_input_buckets\n"]),
    st.text(max_size=12),
)
VALUE_STRINGS = st.one_of(
    st.sampled_from(["NaN", "+Inf", "-Inf", "Inf", "inf", "nan", "0", "-0", "1", "-1", "1e308", "-1e308",
                     "1.7976931348623157e308", "5e-324", "1e-320", "123456789012345678901234567890"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(min_value=0, max_value=1e6).map(repr),
)
LE_VALUES = st.one_of(st.sampled_from(["0.1", "1", "+Inf", "Inf", "NaN", "-Inf", "-1", "1e400", "", "abc",
                                       "0x10", "1_0", " 1", "le", "0.25"]), st.text(max_size=5))


@st.composite
def samples(draw: Any) -> Dict[str, Any]:
    metric: Dict[str, str] = {}
    if draw(st.integers(0, 9)):  # mostly tagged, sometimes not
        metric[SIGNAL_LABEL] = draw(SIGNAL_NAMES)
    for label, values in (("path", st.sampled_from(PATHS) | NASTY_TEXT),
                          ("query_class", st.sampled_from(["short", "long"]) | NASTY_TEXT),
                          ("outcome", st.sampled_from(OUTCOMES) | NASTY_TEXT),
                          ("le", LE_VALUES), ("constraint", st.sampled_from(["memory", "battery"]) | NASTY_TEXT),
                          ("instance", NASTY_TEXT)):
        if draw(st.booleans()):
            metric[label] = draw(values)
    return {"metric": metric, "value": [draw(st.floats(0, 2e9)), draw(VALUE_STRINGS)]}


ANSWERS = st.lists(samples(), max_size=40).map(
    lambda result: {"status": "success", "data": {"resultType": "vector", "result": result}})


def _assert_clean(values: SignalValues) -> None:
    for name, series in values.values.items():
        for labels, value in series.items():
            assert math.isfinite(value), (name, labels, value)


@fuzz(300)
@given(body=ANSWERS)
@example(body={"status": "success", "data": {"resultType": "vector", "result": [
    {"metric": {SIGNAL_LABEL: "_input_buckets", "path": "api", "query_class": "short", "le": "abc"},
     "value": [1, "3"]},
    {"metric": {SIGNAL_LABEL: "_input_buckets", "path": "api", "query_class": "short"}, "value": [1, "3"]}]}})
@example(body={"status": "success", "data": {"resultType": "vector", "result": [
    {"metric": {SIGNAL_LABEL: "_input_requests", "path": "api", "query_class": "x", "outcome": "success"},
     "value": [1, "1e308"]},
    {"metric": {SIGNAL_LABEL: "_input_requests", "path": "api", "query_class": "y", "outcome": "success"},
     "value": [1, "1e308"]}]}})
def test_hostile_promql_answers_become_finite_signal_values(body: Dict[str, Any]) -> None:
    """Well-formed API answers with hostile samples (NaN/Inf strings, overflowing sums, missing or unknown dualtrack_signal, bogus le, unicode labels): parsing plus PrometheusSource._store yield only finite signal values, or BadResponse; nothing else is raised."""
    try:
        result = _parse_instant(json.loads(json.dumps(body)))
    except BadResponse:
        return
    values = SignalValues()
    PrometheusSource._store(values, result, BUILTIN_CATALOG)
    event("some signal values" if len(values) else "no signal values")
    _assert_clean(values)
    for name in values.values:
        assert name in BUILTIN_CATALOG


class ScriptedClient:
    """Stands in for PromQLClient: answers each query from a script (results or errors)."""

    def __init__(self, script: Sequence[Any]) -> None:
        self.script = list(script)
        self.queries = 0

    def instant(self, expr: str, at: Any = None, deadline: Any = None) -> InstantResult:
        item = self.script[min(self.queries, len(self.script) - 1)]
        self.queries += 1
        if isinstance(item, Exception):
            raise item
        return _parse_instant(item)

    def is_online(self) -> bool:
        return True


ERRORS = st.sampled_from([BadQuery("rejected"), BadResponse("garbage"), SourceUnavailable("down")])


@fuzz(150)
@given(script=st.lists(st.one_of(ANSWERS, ERRORS), min_size=1, max_size=4), recorded=st.booleans(),
       batch=st.booleans())
def test_fetch_over_hostile_answers_raises_only_source_errors(script: List[Any], recorded: bool, batch: bool) -> None:
    """PrometheusSource.fetch over scripted answers and failures (batch, per-signal fallback, recorded inputs): finite SignalValues or a SourceError subclass, nothing else."""
    source = PrometheusSource(ScriptedClient(script), window="2m", recorded=recorded, batch=batch)  # type: ignore[arg-type]
    try:
        values = source.fetch(BUILTIN_CATALOG, at=1_700_000_000.0)
    except SourceError:
        return
    _assert_clean(values)


# --------------------------------------------------------------------------- record_request_completion

RESULT_KEYS = ["tokens_in", "tokens_out", "tokens_processed", "cost", "quality_score", "latency_ms", "model",
               "outcome", "query_class"]
FIELD_VALUES = st.one_of(
    st.none(), st.booleans(), NASTY_NUMBERS,
    st.sampled_from(["x" * 100_000, "", "local", "api", "success", "timeout", "gpt-4o", "short"]),
    NASTY_TEXT, st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.builds(lambda: {"nested": {"deeper": [1, {"x": math.nan}]}}),
    st.builds(set), st.builds(object), st.builds(bytearray, st.binary(max_size=4)),
    st.floats(min_value=0, max_value=1), st.integers(0, 10**6),
)
RESULTS = st.one_of(
    st.dictionaries(st.sampled_from(RESULT_KEYS), FIELD_VALUES, max_size=len(RESULT_KEYS)),
    st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), FIELD_VALUES, max_size=3),
    st.sampled_from([None, "result", 42, ["tokens_in", 5], ("a",), 3.5, b"bytes"]),
)
REQUEST_IDS = st.one_of(st.text(max_size=20), st.sampled_from(["x" * 100_000, ""]), st.integers(),
                        st.none(), st.floats(allow_nan=True), st.tuples(st.integers()), st.binary(max_size=4))
PATH_ARGS = st.one_of(st.sampled_from(PATHS), NASTY_TEXT, st.none(), st.integers(), st.lists(st.integers(), max_size=1))
ERROR_TYPES = st.one_of(st.none(), st.sampled_from(["timeout", "cancelled", "boom"]), NASTY_TEXT,
                        st.integers(), st.builds(lambda: RuntimeError("secret message")), st.lists(st.text(), max_size=1))
MAX_TOKENS = 10**9


def _finite_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


def _bad_fields(result: Any) -> List[str]:
    """The reasons the documented validation must reject, computed independently of the implementation."""
    if result is None:
        return []
    if not isinstance(result, Mapping):
        return ["not_a_mapping"]
    bad = []

    def tokens_ok(v: Any) -> bool:
        if type(v) is int:
            return 0 <= v < MAX_TOKENS
        return isinstance(v, float) and v.is_integer() and 0 <= v < MAX_TOKENS

    outcome = result.get("outcome")
    if outcome is not None and not (isinstance(outcome, str) and outcome in OUTCOMES):
        bad.append("bad_outcome")
    latency = result.get("latency_ms")
    if latency is not None and not (_finite_number(latency) and latency >= 0):
        bad.append("bad_latency_ms")
    repaired_zero = True
    for key in ("tokens_in", "tokens_out"):
        v = result.get(key)
        if v is None:
            continue
        if tokens_ok(v):
            repaired_zero = repaired_zero and int(v) == 0
        else:
            bad.append(f"bad_{key}")
    if repaired_zero and "tokens_processed" in result:
        v = result.get("tokens_processed")
        if v is not None and not tokens_ok(v):
            bad.append("bad_tokens_processed")
    cost = result.get("cost")
    if cost is not None and not (_finite_number(cost) and cost >= 0):
        bad.append("bad_cost")
    quality = result.get("quality_score")
    if quality is not None and not (_finite_number(quality) and 0 <= quality <= 1):
        bad.append("bad_quality_score")
    return bad


def _total(registry: CollectorRegistry, name: str, **match: str) -> float:
    return sum(s.value for f in registry.collect() for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in match.items()))


_SHIPPED: List[StrategySet] = []


def _fresh(max_model_labels: int = 4) -> Tuple[DualTrackOptimizer, CollectorRegistry, VirtualClock]:
    if not _SHIPPED:  # loaded once: a fresh optimizer per example would otherwise reload the rules
        _SHIPPED.append(load_strategies(RULES_DIR))
    registry, clock = CollectorRegistry(), VirtualClock()
    config = OptimizationConfig(enable_resource_monitoring=False, max_model_labels=max_model_labels,
                                prices={"local": ModelPrice(0, 0), "api": ModelPrice(1.0, 2.0)})
    optimizer = DualTrackOptimizer(config, registry=registry, clock=clock, strategies=_SHIPPED[0])
    return optimizer, registry, clock


COMPLETIONS = st.lists(st.tuples(REQUEST_IDS, st.booleans(), PATH_ARGS, RESULTS, st.sampled_from([True, False, None, 1, "no"]),
                                 ERROR_TYPES), min_size=1, max_size=12)


@fuzz(200)
@given(completions=COMPLETIONS)
def test_every_completion_counts_once_and_every_bad_field_is_a_counted_rejection(
        completions: List[Tuple[Any, bool, Any, Any, Any, Any]]) -> None:
    """record_request_completion with arbitrary result dicts, hashable request ids, paths and error types (wrong types, NaN, negative, 10^30 or 10^400 numbers, 100 kB strings, nested dicts, unhashable values): never raises; dualtrack_requests_total grows by exactly one per completion, on the folded path; each bad field adds exactly one dualtrack_inputs_rejected_total; no internal error."""
    optimizer, registry, clock = _fresh()
    for rid, started, path, result, success, error_type in completions:
        if started:
            optimizer.record_request_start(rid, "query")
        clock.advance(0.25)
        requests_before = _total(registry, "dualtrack_requests_total")
        rejected_before = _total(registry, "dualtrack_inputs_rejected_total", input="result")
        expected_path = path if isinstance(path, str) and path in PATHS else "other"
        path_before = _total(registry, "dualtrack_requests_total", path=expected_path)

        optimizer.record_request_completion(rid, path, result, success=success, error_type=error_type)

        assert _total(registry, "dualtrack_requests_total") == requests_before + 1
        assert _total(registry, "dualtrack_requests_total", path=expected_path) == path_before + 1
        assert _total(registry, "dualtrack_inputs_rejected_total", input="result") - rejected_before == \
            len(_bad_fields(result)), (result, _bad_fields(result))
    assert _total(registry, "dualtrack_optimizer_errors_total") == 0
    assert registry.get_sample_value("dualtrack_requests_in_flight") == 0
    for name in ("dualtrack_request_duration_seconds_sum", "dualtrack_cost_dollars_total", "dualtrack_tokens_total"):
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == name:
                    # >= 0 fails for NaN; +Inf is possible (two costs of 1e308 are valid inputs)
                    assert sample.value >= 0, (name, sample)


def test_unhashable_request_ids_are_refused_at_start_and_their_completions_recorded() -> None:
    """Request ids that cannot be hashed (a dict, a list, a set), with and without other requests in flight: the start is refused as bad input (dualtrack_inputs_rejected_total{input="start",reason="unhashable_request_id"}), never raises and leaves nothing in flight; each completion is recorded once in dualtrack_requests_total, as a completion without a start; no internal error."""
    optimizer, registry, _ = _fresh()
    for busy in (False, True):
        if busy:
            optimizer.record_request_start("in-flight", "q")
        for rid in ({"id": 1}, [1, 2], {3}):
            before = _total(registry, "dualtrack_requests_total")
            optimizer.record_request_start(rid, "q")  # type: ignore[arg-type]
            optimizer.record_request_completion(rid, "api", {"tokens_in": 1})  # type: ignore[arg-type]
            assert _total(registry, "dualtrack_requests_total") == before + 1, (busy, rid)
    assert registry.get_sample_value("dualtrack_inputs_rejected_total",
                                     {"input": "start", "reason": "unhashable_request_id"}) == 6
    assert registry.get_sample_value("dualtrack_completions_without_start_total") == 6
    assert _total(registry, "dualtrack_optimizer_errors_total") == 0
    assert registry.get_sample_value("dualtrack_requests_in_flight") == 1  # "in-flight", still open


def _distinct(registry: CollectorRegistry, label: str) -> Dict[str, set]:
    out: Dict[str, set] = {}
    for family in registry.collect():
        for sample in family.samples:
            if label in sample.labels and sample.name.startswith("dualtrack_") and \
                    not sample.name.startswith(("dualtrack_label_values_folded", "dualtrack_inputs_rejected")):
                out.setdefault(family.name, set()).add(sample.labels[label])
    return out


def test_thousands_of_random_completions_keep_label_sets_bounded() -> None:
    """5,000 completions with unbounded path, query_class and model values (random strings, 1 MB-ish, unicode, non-strings): every metric keeps path within 4 values, query_class within the classes + 'other', model within priced + max_model_labels + 'other'; every fold is counted."""
    max_models = 8
    optimizer, registry, clock = _fresh(max_model_labels=max_models)
    rng = random.Random(20240606)
    classes = optimizer.config.query_classes
    known_models = set(optimizer.config.prices)
    alphabet = string.ascii_letters + string.digits + "-_./é\"\\\n "

    def junk() -> Any:
        roll = rng.random()
        if roll < 0.5:
            return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        if roll < 0.6:
            return "m" * rng.randint(65, 5000)
        return rng.choice([None, 0, 1.5, ["x"], {"a": 1}, b"bytes", ("t",), "", "other"])

    n = 5000
    for i in range(n):
        rid = f"r{i}"
        context = {"query_class": junk()} if rng.random() < 0.3 else None
        optimizer.record_request_start(rid, "q" * rng.randint(1, 20000), context)
        clock.advance(0.01)
        path = junk() if rng.random() < 0.3 else rng.choice(PATHS)
        result: Dict[str, Any] = {"tokens_in": rng.randint(0, 100), "tokens_out": rng.randint(0, 100)}
        if rng.random() < 0.5:
            result["model"] = junk()
        if rng.random() < 0.1:
            result["query_class"] = junk()
        optimizer.record_request_completion(rid if rng.random() < 0.9 else f"orphan{i}", path, result,
                                            success=rng.random() < 0.8)
    assert _total(registry, "dualtrack_requests_total") == n
    for family, values in _distinct(registry, "path").items():
        assert values <= set(PATHS) | {"other"}, (family, values)
    for family, values in _distinct(registry, "query_class").items():
        assert values <= set(classes) | {"other"}, (family, values)
    models = _distinct(registry, "model")
    assert models, "no model series at all"
    for family, values in models.items():
        assert len(values) <= len(known_models) + max_models + 1 and "other" in values, (family, len(values))
    for label in ("path", "query_class", "model"):
        assert (registry.get_sample_value("dualtrack_label_values_folded_total", {"label": label}) or 0) > 0, label
    series = sum(1 for f in registry.collect() for s in f.samples if s.name.startswith("dualtrack_"))
    assert series < 3000, series  # bounded by the label sets, not by the 5,000 requests
    assert _total(registry, "dualtrack_optimizer_errors_total") == 0


# --------------------------------------------------------------------------- get_optimization_recommendations

RECOMMENDATION_KEYS = {"preferred_path", "routing", "timeouts_seconds", "query_class", "strategy", "source",
                       "reasons", "overrides", "complexity", "mode", "sequence"}
CONTEXT_VALUES = st.one_of(FIELD_VALUES, st.sampled_from(["short", "long", "other"]),
                           st.floats(min_value=-1, max_value=2))
CONTEXTS = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["query_class", "complexity", "estimated_tokens", "path", "priority"]),
                    CONTEXT_VALUES, max_size=5),
    st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), CONTEXT_VALUES, max_size=3),
)
QUERIES = st.one_of(st.text(max_size=200), st.sampled_from(["x" * 200_000, "", "```def f(): ```?? prove \\frac",
                                                              "\x00" * 10, "é" * 5000]),
                    st.none(), st.integers(), st.binary(max_size=8), st.lists(st.text(max_size=3), max_size=2))


@fuzz(200)
@given(calls=st.lists(st.tuples(QUERIES, CONTEXTS), min_size=1, max_size=6))
def test_recommendations_for_arbitrary_queries_and_contexts_have_every_documented_key(
        calls: List[Tuple[Any, Any]]) -> None:
    """get_optimization_recommendations with arbitrary queries (None, bytes, 200 kB text, NUL) and contexts (wrong types, NaN complexity, negative or huge estimated_tokens, unhashable query_class): never raises, never an internal error, and returns every documented key with sane values."""
    optimizer, registry, _ = _fresh()
    classes = set(optimizer.config.query_classes) | {"other"}
    for query, context in calls:
        rec = optimizer.get_optimization_recommendations(query, context)
        assert RECOMMENDATION_KEYS <= set(rec), set(rec)
        assert rec["preferred_path"] in PATHS
        assert set(rec["routing"]) == set(PREFS)
        for pref, value in rec["routing"].items():
            lo, hi = HARD_LIMITS[pref]
            assert math.isfinite(value) and lo <= value <= hi
        assert set(rec["timeouts_seconds"]) == set(PATHS)
        assert all(math.isfinite(v) and v > 0 for v in rec["timeouts_seconds"].values())
        assert rec["query_class"] in classes
        assert math.isfinite(rec["complexity"]) and 0.0 <= rec["complexity"] <= 1.0
        assert isinstance(rec["reasons"], list) and isinstance(rec["overrides"], list)
    assert _total(registry, "dualtrack_optimizer_errors_total") == 0


@pytest.mark.parametrize("context", ["not a dict", ["query_class", "long"], 42, ("a", "b")])
def test_a_context_that_is_not_a_mapping_is_ignored_and_counted(context: Any) -> None:
    """A context that is not a mapping (a string, a list, a number): ignored, counted in dualtrack_inputs_rejected_total{input="recommendation",reason="context_not_a_mapping"}; the recommendation is the one for the query alone (every documented key, not the safe defaults) and no internal error is counted."""
    optimizer, registry, _ = _fresh()
    rec = optimizer.get_optimization_recommendations("query", context)
    alone = optimizer.get_optimization_recommendations("query")
    assert RECOMMENDATION_KEYS <= set(rec) and rec["preferred_path"] in PATHS
    assert rec == alone and rec["source"] != "defaults"
    assert registry.get_sample_value("dualtrack_inputs_rejected_total",
                                     {"input": "recommendation", "reason": "context_not_a_mapping"}) == 1
    assert _total(registry, "dualtrack_optimizer_errors_total") == 0
