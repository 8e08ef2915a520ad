"""Tests for dualtrack.adapter.conditions: the rule-condition language."""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualtrack.adapter.conditions import (
    Condition,
    ConditionError,
    Context,
    SignalInfo,
    compile_condition,
    format_ref,
    parse_expression,
    parse_selector,
)
from dualtrack.adapter.signals import BUILTIN_CATALOG

PATHS = ("local", "api", "parallel")

#: A small catalog: three unlabelled signals and one with path and query_class.
CATALOG: Dict[str, SignalInfo] = {
    "a": SignalInfo((), {}),
    "b": SignalInfo((), {}),
    "c": SignalInfo((), {}),
    "lat": SignalInfo(("path", "query_class"), {"path": PATHS, "query_class": None}),
}


def lookup_from(values: Mapping[str, Optional[float]]):
    """A lookup reading ``values`` keyed like ``lat{path="api"}`` (missing = no data)."""
    def lookup(name: str, labels: Mapping[str, str]) -> Optional[float]:
        return values.get(format_ref(name, labels))
    return lookup


def ev(text: str, values: Optional[Mapping[str, Optional[float]]] = None,
       bindings: Optional[Mapping[str, str]] = None) -> Optional[bool]:
    ctx = Context(lookup_from(values or {}), bindings)
    return compile_condition(text, CATALOG).evaluate(ctx)


def error(text: str, catalog: Mapping[str, SignalInfo] = CATALOG) -> ConditionError:
    with pytest.raises(ConditionError) as info:
        compile_condition(text, catalog)
    return info.value


# ------------------------------------------------------------------ parsing and precedence


@pytest.mark.parametrize("text", [
    "a + b * c == 7",          # * binds tighter than +: 1 + 6, not 3 * 3
    "a - b - c == -4",         # left-associative: (1 - 2) - 3
    "c / b / a == 1.5",        # left-associative: (3 / 2) / 1
    "-a * b == -2",            # unary minus on the operand
    "(a + b) * c == 9",        # parentheses override
    "a + b > c - a",           # arithmetic binds tighter than comparison: 3 > 2
    "-(a + b) == -3",
])
def test_arithmetic_precedence(text: str) -> None:
    assert ev(text, {"a": 1, "b": 2, "c": 3}) is True


def test_not_binds_tighter_than_and() -> None:
    # (not a > 1) and b > 1 -> true and false -> false; not (a > 1 and b > 1) would be true
    assert ev("not a > 1 and b > 1", {"a": 0, "b": 0}) is False
    assert ev("not (a > 1 and b > 1)", {"a": 0, "b": 0}) is True


def test_and_binds_tighter_than_or() -> None:
    # true or (false and false) -> true; (true or false) and false would be false
    assert ev("true or false and false") is True
    assert ev("(true or false) and false") is False


def test_not_not() -> None:
    assert ev("not not a > 0", {"a": 1}) is True


@pytest.mark.parametrize("op,expected", [
    ("<", True), ("<=", True), (">", False), (">=", False), ("==", False), ("!=", True),
])
def test_comparisons(op: str, expected: bool) -> None:
    assert ev(f"a {op} b", {"a": 1, "b": 2}) is expected


@pytest.mark.parametrize("op,expected", [("<=", True), (">=", True), ("==", True), ("!=", False), ("<", False)])
def test_comparisons_on_equal_values(op: str, expected: bool) -> None:
    assert ev(f"a {op} 2", {"a": 2}) is expected


def test_number_forms() -> None:
    assert ev("1e3 > 999.5 and .5 == 0.5 and 2.5E-1 == 0.25 and 10 == 10.")


def test_chained_comparison_is_a_syntax_error() -> None:
    err = error("a < b < c")
    assert "unexpected" in err.message and err.column == 7


# ------------------------------------------------------------------ functions


@pytest.mark.parametrize("text", [
    "min(a, b) == 1", "max(a, b) == 2", "min(c, b, a, 4, 5, 6, 7, 8) == 1", "max(a, b, c) == 3",
    "abs(0 - c) == 3", "abs(a) == 1",
    "coalesce(a, 5) == 1", "coalesce(missing_x, 5) == 5",
    "present(a)", "not absent(a)", "absent(missing_x)", "not present(missing_x)",
    "coalesce(missing_x, missing_y, 7) == 7",
])
def test_functions(text: str) -> None:
    catalog = {**CATALOG, "missing_x": SignalInfo((), {}), "missing_y": SignalInfo((), {})}
    cond = compile_condition(text, catalog)
    assert cond.evaluate(Context(lookup_from({"a": 1, "b": 2, "c": 3}))) is True


def test_functions_with_no_data_are_unknown_except_present_absent_coalesce() -> None:
    assert ev("min(a, b) > 0", {"a": 1}) is None
    assert ev("max(a, b) > 0", {"a": 1}) is None
    assert ev("abs(a) > 0") is None
    assert ev("coalesce(a, b) > 0") is None  # every argument unknown
    assert ev("present(a)") is False
    assert ev("absent(a)") is True


@pytest.mark.parametrize("text,message", [
    ("abs(a, b) > 0", "abs() takes 1 arguments, got 2"),
    ("min(a) > 0", "min() takes 2 to 8 arguments, got 1"),
    ("max(a, b, c, a, b, c, a, b, c) > 0", "max() takes 2 to 8 arguments, got 9"),
    ("coalesce(a) > 0", "coalesce() takes 2 to 8 arguments, got 1"),
    ("present(a, b)", "present() takes 1 arguments, got 2"),
])
def test_function_arity(text: str, message: str) -> None:
    err = error(text)
    assert err.message == message
    assert err.column == 1


def test_present_needs_a_signal() -> None:
    assert "present() takes a signal" in error("present(1)").message
    assert "absent() takes a signal" in error("absent(a + 1)").message


def test_function_names_are_signal_names_without_parentheses() -> None:
    # FUNC only matches before "(": a signal called min is just an unknown signal here
    assert error("min > 1").message.startswith("unknown signal 'min'")
    assert ev("min (a, b) == 1", {"a": 1, "b": 2}) is True  # whitespace before ( is allowed


# ------------------------------------------------------------------ three-valued logic

T, F, U = True, False, None
#: signal values that make ``x > 0`` true, false and unknown
AS_VALUE = {T: 1.0, F: -1.0, U: None}

AND_TABLE = {(T, T): T, (T, F): F, (T, U): U, (F, T): F, (F, F): F, (F, U): F,
             (U, T): U, (U, F): F, (U, U): U}
OR_TABLE = {(T, T): T, (T, F): T, (T, U): T, (F, T): T, (F, F): F, (F, U): U,
            (U, T): T, (U, F): U, (U, U): U}


def _two(x: Optional[bool], y: Optional[bool]) -> Dict[str, Optional[float]]:
    return {"a": AS_VALUE[x], "b": AS_VALUE[y]}


@pytest.mark.parametrize("x,y", list(AND_TABLE))
def test_and_truth_table(x: Optional[bool], y: Optional[bool]) -> None:
    assert ev("a > 0 and b > 0", _two(x, y)) is AND_TABLE[(x, y)]


@pytest.mark.parametrize("x,y", list(OR_TABLE))
def test_or_truth_table(x: Optional[bool], y: Optional[bool]) -> None:
    assert ev("a > 0 or b > 0", _two(x, y)) is OR_TABLE[(x, y)]


@pytest.mark.parametrize("x,expected", [(T, F), (F, T), (U, U)])
def test_not_truth_table(x: Optional[bool], expected: Optional[bool]) -> None:
    assert ev("not a > 0", {"a": AS_VALUE[x]}) is expected


def test_unknown_propagates_through_arithmetic_and_comparison() -> None:
    assert ev("a + 1 > 0") is None
    assert ev("-a < 0") is None
    assert ev("a * 0 == 0") is None  # no data times zero is still no data, not 0
    assert ev("a != 1") is None  # not "true because absent"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_signal_values_are_no_data(bad: float) -> None:
    ctx = Context(lookup_from({"a": bad}))
    assert compile_condition("a > 0 or a <= 0", CATALOG).evaluate(ctx) is None
    assert compile_condition("present(a)", CATALOG).evaluate(ctx) is False
    assert ctx.used == {"a": None}


def test_division_by_zero_is_unknown() -> None:
    assert ev("a / b > 0", {"a": 1, "b": 0}) is None
    assert ev("a / 0 < 1", {"a": 1}) is None
    assert ev("0 / 0 == 0") is None
    assert ev("a / b == 0.5", {"a": 1, "b": 2}) is True


def test_overflow_is_unknown() -> None:
    assert ev("a * b > 0", {"a": 1e308, "b": 10}) is None
    assert ev("a + b > 0", {"a": 1e308, "b": 1e308}) is None
    assert ev("1e999 > 1") is True  # a literal that overflows is +inf, compared as such


def test_rule_fires_only_on_true() -> None:
    cond = compile_condition("a > 0", CATALOG)
    result = cond.evaluate(Context(lookup_from({})))
    assert result is None and result is not False


# ------------------------------------------------------------------ selectors and label binding


def test_binding_fills_unnamed_dims() -> None:
    seen = []

    def lookup(name: str, labels: Mapping[str, str]) -> Optional[float]:
        seen.append((name, dict(labels)))
        return 1.0

    cond = compile_condition('lat{path="local"} > 0', CATALOG, bound=("query_class",))
    assert cond.evaluate(Context(lookup, {"query_class": "long"})) is True
    assert seen == [("lat", {"path": "local", "query_class": "long"})]


def test_explicit_matchers_win_over_bindings() -> None:
    values = {'lat{path="api",query_class="short"}': 5.0, 'lat{path="api",query_class="long"}': 1.0}
    ctx = Context(lookup_from(values), {"query_class": "long", "path": "local"})
    assert compile_condition('lat{path="api",query_class="short"} == 5', CATALOG).evaluate(ctx) is True
    assert compile_condition('lat{path="api"} == 1', CATALOG).evaluate(ctx) is True


def test_without_binding_an_unnamed_dim_reads_the_aggregate() -> None:
    values = {"lat": 2.0, 'lat{path="api"}': 3.0, 'lat{path="api",query_class="long"}': 9.0}
    assert ev("lat == 2", values) is True
    assert ev('lat{path="api"} == 3', values) is True
    assert ev('lat{query_class="long"} > 0', values) is None  # that level has no value here
    assert ev("lat == 9", values, {"path": "api", "query_class": "long"}) is True


def test_bindings_for_labels_a_signal_lacks_are_ignored() -> None:
    assert ev("a == 4", {"a": 4}, {"query_class": "long", "path": "api"}) is True


def test_selector_syntax() -> None:
    assert ev('lat{path="api",} == 1', {'lat{path="api"}': 1}) is True  # trailing comma
    assert ev("lat{} == 1", {"lat": 1}) is True
    assert ev('lat{query_class="any value at all"} == 1', {'lat{query_class="any value at all"}': 1}) is True


def test_used_records_every_value_read() -> None:
    ctx = Context(lookup_from({"a": 1.0, 'lat{path="local",query_class="long"}': 2.0}), {"query_class": "long"})
    # and/or do not short-circuit, so b and c are recorded even though 'false' decides
    cond = compile_condition('false and (a > 0 or b > 0) and lat{path="local"} > c', CATALOG)
    assert cond.evaluate(ctx) is False
    assert ctx.used == {"a": 1.0, "b": None, "c": None, 'lat{path="local",query_class="long"}': 2.0}


def test_condition_signals_lists_references() -> None:
    cond = compile_condition('lat{path="api"} > a and present(b)', CATALOG)
    assert [(s.name, s.matchers) for s in cond.signals()] == [("lat", (("path", "api"),)), ("a", ()), ("b", ())]
    assert cond.signals()[0].dims == ("path", "query_class")
    assert "lat" in repr(cond)


# ------------------------------------------------------------------ type errors


@pytest.mark.parametrize("text,message", [
    ("a and b > 1", "'and' needs a comparison or logical expression"),
    ("a > 1 or b", "'or' needs a comparison or logical expression"),
    ("not a", "'not' needs a comparison or logical expression"),
    ("(a > 1) + 1 > 0", "'+' needs a number or signal"),
    ("-(a > 1) < 0", "'-' needs a number or signal"),
    ("min(a > 1, 2) > 0", "min() needs a number or signal"),
    ("true == false", "'==' needs a number or signal"),
    ("present(a) * 2 > 1", "'*' needs a number or signal"),
])
def test_type_errors(text: str, message: str) -> None:
    assert error(text).message == message


@pytest.mark.parametrize("text", ["a + 1", "a", "3", "min(a, b)"])
def test_a_condition_must_be_boolean(text: str) -> None:
    assert error(text).message.startswith("a condition must be a comparison")


def test_bool_literals_are_conditions() -> None:
    assert isinstance(compile_condition("true", CATALOG), Condition)
    assert ev("false") is False


# ------------------------------------------------------------------ catalog checks


def test_unknown_signal_with_suggestion() -> None:
    err = error("latncy_p95_seconds > 1", BUILTIN_CATALOG.infos())
    assert err.message == "unknown signal 'latncy_p95_seconds'; did you mean 'latency_p95_seconds'?"
    assert err.column == 1


def test_unknown_signal_column_and_no_suggestion() -> None:
    err = error("a > 1 and zzzzqqq > 2")
    assert err.message == "unknown signal 'zzzzqqq'" and err.column == 11
    assert "(column 11)" in str(err)


def test_label_the_signal_does_not_have() -> None:
    err = error('battery_ratio{path="local"} > 0.5', BUILTIN_CATALOG.infos())
    assert err.message == "signal 'battery_ratio' has no labels; it cannot be selected by 'path'"
    err = error('lat{outcome="error"} > 0.5')
    assert "has path, query_class" in err.message and "'outcome'" in err.message


def test_bad_path_value() -> None:
    err = error('lat{path="moon"} > 1')
    assert err.message == "path='moon' is not one of ['local', 'api', 'parallel'] in lat{...}"


def test_label_given_twice() -> None:
    assert "label 'path' given twice" in error('lat{path="api",path="local"} > 1').message


def test_builtin_catalog_compiles_the_docstring_examples() -> None:
    infos = BUILTIN_CATALOG.infos()
    for text in ['latency_p95_seconds{path="local"} > 1.5 * latency_p95_seconds{path="api"}',
                 "battery_ratio < battery_threshold_ratio and battery_discharging == 1",
                 'not present(quality_mean{path="local"}) or quality_mean{path="local"} >= 0.8']:
        assert isinstance(compile_condition(text, infos), Condition)


# ------------------------------------------------------------------ syntax errors


@pytest.mark.parametrize("text,message,column", [
    ("a >> 1", "unexpected '>'", 4),
    ("a > 1)", "unexpected ')'", 6),
    ("@", "unexpected character '@'", 1),
    ("a > 1 $ 2", "unexpected character '$'", 7),
    ("é > 1", "unexpected character 'é'", 1),
    ("a > 1 b", "unexpected 'b'", 7),
    ("minx(1) > 0", "unexpected '('", 5),
    ('"text" == 1', "unexpected '\"text\"'", 1),
])
def test_syntax_errors_carry_a_column(text: str, message: str, column: int) -> None:
    err = error(text)
    assert (err.message, err.column) == (message, column)
    assert str(err).endswith(f"(column {column})")


@pytest.mark.parametrize("text", ["a >", "(a > 1", "a > 1 and", "min(a,", "lat{path=", "not"])
def test_truncated_input(text: str) -> None:
    assert error(text).message == "the condition ends too early"


@pytest.mark.parametrize("text,keyword,column", [
    ("and > 1", "and", 1),
    ("a > 1 and or", "or", 11),
    ("a >= not", "not", 6),
    ("true and false or", None, None),
])
def test_keyword_misuse(text: str, keyword: Optional[str], column: Optional[int]) -> None:
    err = error(text)
    if keyword is None:
        assert err.message == "the condition ends too early"
    else:
        assert err.message == f"unexpected keyword {keyword!r}"
        assert err.column == column


def test_keyword_prefixes_are_names() -> None:
    catalog = {**CATALOG, "truex": SignalInfo((), {}), "not_a": SignalInfo((), {}), "order": SignalInfo((), {})}
    values = {"truex": 1.0, "not_a": 2.0, "order": 3.0}
    cond = compile_condition("truex == 1 and not_a == 2 and order == 3", catalog)
    assert cond.evaluate(Context(lookup_from(values))) is True


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_condition(text: str) -> None:
    assert error(text).message == "empty condition"


def test_non_string_is_rejected() -> None:
    with pytest.raises(ConditionError, match="empty condition"):
        compile_condition(None, CATALOG)  # type: ignore[arg-type]


def test_very_long_input_is_rejected() -> None:
    text = " or ".join(["a > 1"] * 500)
    assert len(text) > 4096
    assert error(text).message == "condition is longer than 4096 characters"
    ok = " or ".join(["a > 1"] * 400)
    assert len(ok) <= 4096 and ev(ok, {"a": 2}) is True


@pytest.mark.parametrize("text", ["not " * 1000 + "true", "-" * 2000 + "1 > 0",
                                  "(" * 1500 + "a > 0" + ")" * 1500, "not " * 70 + "true"])
def test_deep_nesting_is_a_condition_error(text: str) -> None:
    assert len(text) <= 4096
    assert "nested too deeply" in error(text).message


def test_reasonable_nesting_is_fine() -> None:
    assert ev("not " * 10 + "a > 1", {"a": 2}) is True


# ------------------------------------------------------------------ parse_selector


def test_parse_selector() -> None:
    assert parse_selector("battery_ratio") == ("battery_ratio", {})
    assert parse_selector('latency_p95_seconds{path="api", query_class="long"}') == (
        "latency_p95_seconds", {"path": "api", "query_class": "long"})
    assert parse_selector(r'x{q="a \"b\" c"}') == ("x", {"q": 'a "b" c'})


@pytest.mark.parametrize("text", ["a > 1", "1", "min(a, b)", "", 'a{path="x"', "-a"])
def test_parse_selector_rejects_non_selectors(text: str) -> None:
    with pytest.raises(ConditionError):
        parse_selector(text)


def test_parse_expression_does_not_check_the_catalog() -> None:
    node = parse_expression("no_such_signal{any=\"label\"} > 1")
    assert node.kind == "bool"


# ------------------------------------------------------------------ properties

TOKENS = ["a", "b", "lat", "(", ")", "{", "}", ",", '"api"', '"x"', "path", "=", "==", "<", ">=", "!=",
          "+", "-", "*", "/", "and", "or", "not", "true", "false", "min(", "abs(", "present(", "coalesce(",
          "1", "0", "2.5", ".5", "1e3", "@", "\\", "é"]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), st.lists(st.sampled_from(TOKENS), max_size=40).map(" ".join),
                 st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)))
def test_compile_never_raises_anything_but_condition_error(text: str) -> None:
    try:
        result = compile_condition(text, CATALOG, bound=("query_class",))
    except ConditionError as err:
        assert err.message
        assert err.column is None or err.column >= 1
    else:
        assert isinstance(result, Condition)


# Generated well-formed expressions, evaluated both by the engine and by a
# reference implementation of the documented semantics.

SIGNAL_KEYS = ["a", "b", "lat", 'lat{path="local"}', 'lat{path="api"}']
LITERALS = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0]),
                     st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))

Tree = Tuple[Any, ...]

numeric: st.SearchStrategy[Tree] = st.recursive(
    st.one_of(LITERALS.map(lambda v: ("num", v)), st.sampled_from(SIGNAL_KEYS).map(lambda k: ("sig", k))),
    lambda inner: st.one_of(
        st.tuples(st.just("arith"), st.sampled_from("+-*/"), inner, inner),
        st.tuples(st.just("neg"), inner),
        st.tuples(st.just("abs"), inner),
        st.tuples(st.sampled_from(["min", "max", "coalesce"]), st.lists(inner, min_size=2, max_size=3)),
    ),
    max_leaves=6,
)
boolean: st.SearchStrategy[Tree] = st.recursive(
    st.one_of(
        st.tuples(st.just("cmp"), st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), numeric, numeric),
        st.booleans().map(lambda b: ("bool", b)),
        st.tuples(st.sampled_from(["present", "absent"]), st.sampled_from(SIGNAL_KEYS)),
    ),
    lambda inner: st.one_of(
        st.tuples(st.sampled_from(["and", "or"]), st.lists(inner, min_size=2, max_size=3)),
        st.tuples(st.just("not"), inner),
    ),
    max_leaves=5,
)
SIGNAL_VALUES = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                          st.sampled_from([0.0, 1.0, -1.0, 1e308, -1e308, 5e-324]))


def render(t: Tree) -> str:
    kind = t[0]
    if kind == "num":
        return f"({t[1]!r})"
    if kind == "sig":
        return t[1]
    if kind == "bool":
        return "true" if t[1] else "false"
    if kind == "arith":
        return f"({render(t[2])} {t[1]} {render(t[3])})"
    if kind == "neg":
        return f"(-{render(t[1])})"
    if kind == "abs":
        return f"abs({render(t[1])})"
    if kind in ("min", "max", "coalesce"):
        return f"{kind}({', '.join(render(x) for x in t[1])})"
    if kind == "cmp":
        return f"({render(t[2])} {t[1]} {render(t[3])})"
    if kind in ("present", "absent"):
        return f"{kind}({t[1]})"
    if kind in ("and", "or"):
        return "(" + f" {kind} ".join(render(x) for x in t[1]) + ")"
    assert kind == "not"
    return f"(not {render(t[1])})"


def reference(t: Tree, values: Mapping[str, Optional[float]]) -> Any:
    """The documented semantics, written independently of the implementation."""
    kind = t[0]
    if kind == "num":
        return t[1]
    if kind == "bool":
        return t[1]
    if kind in ("sig", "present", "absent"):
        v = values.get(t[1])
        v = None if v is None or not math.isfinite(v) else v
        return v if kind == "sig" else (v is not None) if kind == "present" else (v is None)
    if kind == "neg":
        v = reference(t[1], values)
        return None if v is None else -v
    if kind == "abs":
        v = reference(t[1], values)
        return None if v is None else abs(v)
    if kind == "arith":
        x, y = reference(t[2], values), reference(t[3], values)
        if x is None or y is None or (t[1] == "/" and y == 0):
            return None
        r = {"+": lambda: x + y, "-": lambda: x - y, "*": lambda: x * y, "/": lambda: x / y}[t[1]]()
        return r if math.isfinite(r) else None
    if kind in ("min", "max", "coalesce"):
        vs = [reference(x, values) for x in t[1]]
        if kind == "coalesce":
            return next((v for v in vs if v is not None), None)
        return None if None in vs else (min(vs) if kind == "min" else max(vs))
    if kind == "cmp":
        x, y = reference(t[2], values), reference(t[3], values)
        if x is None or y is None:
            return None
        return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y, "==": x == y, "!=": x != y}[t[1]]
    if kind == "not":
        v = reference(t[1], values)
        return None if v is None else not v
    vs = [reference(x, values) for x in t[1]]
    if kind == "and":
        return False if False in vs else None if None in vs else True
    return True if True in vs else None if None in vs else False


def signal_keys(t: Tree) -> set:
    if t[0] in ("sig", "present", "absent"):
        return {t[1]}
    return {k for part in t[1:] for x in (part if isinstance(part, list) else [part])
            if isinstance(x, tuple) for k in signal_keys(x)}


@settings(max_examples=200, deadline=None)
@given(boolean, st.fixed_dictionaries({k: SIGNAL_VALUES for k in SIGNAL_KEYS}))
def test_generated_expressions_follow_the_documented_semantics(tree: Tree, values: Dict[str, Optional[float]]) -> None:
    text = render(tree)
    cond = compile_condition(text, CATALOG)
    ctx = Context(lookup_from(values))
    result = cond.evaluate(ctx)
    assert result in (True, False, None)
    assert result is reference(tree, values), text
    # every signal of the expression is read (no short-circuit) and recorded
    assert set(ctx.used) == signal_keys(tree)
    for v in ctx.used.values():
        assert v is None or math.isfinite(v)
