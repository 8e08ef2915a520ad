"""The rule-condition language: parsed by a grammar, never ``eval``-ed.

A condition reads signals the way PromQL reads series, compares them and
combines the comparisons::

    latency_p95_seconds{path="local"} > 1.5 * latency_p95_seconds{path="api"}
    battery_ratio < battery_threshold_ratio and battery_discharging == 1
    not present(quality_mean{path="local"}) or quality_mean{path="local"} >= 0.8

Grammar: numbers, signal references with ``{label="value", ...}``
selectors, ``+ - * /``, comparisons ``< <= > >= == !=``, ``and or not``,
parentheses, and the functions ``min(a, b, ...)``, ``max(a, b, ...)``,
``abs(x)``, ``present(x)``, ``absent(x)``, ``coalesce(x, default)``.

**No data is not zero.** A signal without data evaluates to *unknown*;
arithmetic on unknown is unknown, a comparison with unknown is unknown, and
``and``/``or``/``not`` follow three-valued (Kleene) logic: ``false and
unknown`` is false, ``true or unknown`` is true. A rule fires only when its
condition is *true*. Division by zero is unknown too.

**Label binding.** A rule evaluated per query class (``for_each:
query_class``) binds ``query_class``; a reference that does not name a label
the signal has takes it from the binding. A reference that names neither
reads the signal's aggregate over that label (``latency_p95_seconds`` alone
is the overall p95).

Conditions are compiled once at load time, with types checked (a
condition must be a comparison or a logical combination of them) and
signal names and labels checked against the catalog.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

Value = Union[float, bool, None]  # None is "unknown / no data"

_GRAMMAR = r"""
?start: or_expr

?or_expr: and_expr ("or" and_expr)*       -> or_
?and_expr: not_expr ("and" not_expr)*      -> and_
?not_expr: "not" not_expr                  -> not_
         | comparison
?comparison: sum (COMP_OP sum)?            -> compare
?sum: product (ADD_OP product)*            -> arith
?product: unary (MUL_OP unary)*            -> arith
?unary: "-" unary                          -> neg
      | atom
?atom: NUMBER                              -> number
     | "true"                              -> true
     | "false"                             -> false
     | FUNC "(" or_expr ("," or_expr)* ")" -> call
     | NAME selector?                      -> signal
     | "(" or_expr ")"

selector: "{" [matcher ("," matcher)* ","?] "}"
matcher: NAME "=" STRING

FUNC.2: /(min|max|abs|present|absent|coalesce)(?=\s*\()/
COMP_OP: "<=" | ">=" | "==" | "!=" | "<" | ">"
ADD_OP: "+" | "-"
MUL_OP: "*" | "/"
NAME: /[a-zA-Z_][a-zA-Z0-9_]*/
STRING: /"([^"\\]|\\.)*"/
NUMBER: /(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?/

%import common.WS
%ignore WS
"""

_KEYWORDS = {"and", "or", "not", "true", "false"}

_PARSER = Lark(_GRAMMAR, parser="lalr", maybe_placeholders=False)


class ConditionError(ValueError):
    """A condition that does not parse or does not type-check.

    ``column`` is the 1-based column in the condition text, when known.
    """

    def __init__(self, message: str, column: Optional[int] = None) -> None:
        self.message = message
        self.column = column
        super().__init__(message if column is None else f"{message} (column {column})")


# ------------------------------------------------------------------ evaluation


class Context:
    """What a condition reads: signal values and the current label bindings.

    ``lookup(name, labels)`` returns a float or ``None`` (no data).
    ``used`` collects every signal value read, for the reasons in the
    preferences file.
    """

    def __init__(self, lookup: Callable[[str, Mapping[str, str]], Optional[float]],
                 bindings: Optional[Mapping[str, str]] = None) -> None:
        self._lookup = lookup
        self.bindings: Mapping[str, str] = bindings or {}
        self.used: Dict[str, Optional[float]] = {}

    def read(self, ref: "SignalRef") -> Optional[float]:
        labels = dict(ref.matchers)
        for dim in ref.dims:
            if dim not in labels and dim in self.bindings:
                labels[dim] = self.bindings[dim]
        value = self._lookup(ref.name, labels)
        if value is not None and (math.isnan(value) or math.isinf(value)):
            value = None
        self.used[format_ref(ref.name, labels)] = value
        return value


def format_ref(name: str, labels: Mapping[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


class Node:
    kind = "number"  # "number" or "bool": checked at compile time

    def evaluate(self, ctx: Context) -> Value:  # pragma: no cover - abstract
        raise NotImplementedError

    def signals(self) -> List["SignalRef"]:
        return []


@dataclass
class Number(Node):
    value: float
    kind = "number"

    def evaluate(self, ctx: Context) -> Value:
        return self.value


@dataclass
class Bool(Node):
    value: bool
    kind = "bool"

    def evaluate(self, ctx: Context) -> Value:
        return self.value


@dataclass
class SignalRef(Node):
    name: str
    matchers: Tuple[Tuple[str, str], ...]
    dims: Tuple[str, ...] = ()
    kind = "number"

    def evaluate(self, ctx: Context) -> Value:
        return ctx.read(self)

    def signals(self) -> List["SignalRef"]:
        return [self]


@dataclass
class Neg(Node):
    operand: Node
    kind = "number"

    def evaluate(self, ctx: Context) -> Value:
        v = self.operand.evaluate(ctx)
        return None if v is None else -v

    def signals(self) -> List[SignalRef]:
        return self.operand.signals()


@dataclass
class Arith(Node):
    op: str
    left: Node
    right: Node
    kind = "number"

    def evaluate(self, ctx: Context) -> Value:
        a = self.left.evaluate(ctx)
        b = self.right.evaluate(ctx)
        if a is None or b is None:
            return None
        if self.op == "+":
            result = a + b
        elif self.op == "-":
            result = a - b
        elif self.op == "*":
            result = a * b
        else:
            if b == 0:
                return None
            result = a / b
        return None if math.isnan(result) or math.isinf(result) else result

    def signals(self) -> List[SignalRef]:
        return self.left.signals() + self.right.signals()


_COMPARE: Dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


@dataclass
class Compare(Node):
    op: str
    left: Node
    right: Node
    kind = "bool"

    def evaluate(self, ctx: Context) -> Value:
        a = self.left.evaluate(ctx)
        b = self.right.evaluate(ctx)
        if a is None or b is None:
            return None
        return _COMPARE[self.op](a, b)

    def signals(self) -> List[SignalRef]:
        return self.left.signals() + self.right.signals()


@dataclass
class And(Node):
    operands: Tuple[Node, ...]
    kind = "bool"

    def evaluate(self, ctx: Context) -> Value:
        # Evaluate every operand (no short-circuit) so reasons show all values read.
        values = [o.evaluate(ctx) for o in self.operands]
        if any(v is False for v in values):
            return False
        if any(v is None for v in values):
            return None
        return True

    def signals(self) -> List[SignalRef]:
        return [s for o in self.operands for s in o.signals()]


@dataclass
class Or(Node):
    operands: Tuple[Node, ...]
    kind = "bool"

    def evaluate(self, ctx: Context) -> Value:
        values = [o.evaluate(ctx) for o in self.operands]
        if any(v is True for v in values):
            return True
        if any(v is None for v in values):
            return None
        return False

    def signals(self) -> List[SignalRef]:
        return [s for o in self.operands for s in o.signals()]


@dataclass
class Not(Node):
    operand: Node
    kind = "bool"

    def evaluate(self, ctx: Context) -> Value:
        v = self.operand.evaluate(ctx)
        return None if v is None else not v

    def signals(self) -> List[SignalRef]:
        return self.operand.signals()


@dataclass
class Call(Node):
    func: str
    args: Tuple[Node, ...]

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "bool" if self.func in ("present", "absent") else "number"

    def evaluate(self, ctx: Context) -> Value:
        values = [a.evaluate(ctx) for a in self.args]
        f = self.func
        if f == "present":
            return values[0] is not None
        if f == "absent":
            return values[0] is None
        if f == "coalesce":
            return next((v for v in values if v is not None), None)
        if any(v is None for v in values):
            return None
        if f == "abs":
            return abs(values[0])  # type: ignore[arg-type]
        if f == "min":
            return min(values)  # type: ignore[type-var]
        return max(values)  # type: ignore[type-var]

    def signals(self) -> List[SignalRef]:
        return [s for a in self.args for s in a.signals()]


_ARITY = {"abs": (1, 1), "present": (1, 1), "absent": (1, 1), "coalesce": (2, 8), "min": (2, 8), "max": (2, 8)}


# ------------------------------------------------------------------ building


def _column(item: object) -> Optional[int]:
    return getattr(item, "column", None)


@v_args(inline=True)
class _Build(Transformer):
    def number(self, tok: Token) -> Node:
        return Number(float(tok))

    def true(self) -> Node:
        return Bool(True)

    def false(self) -> Node:
        return Bool(False)

    def neg(self, operand: Node) -> Node:
        _expect(operand, "number", "'-'")
        if isinstance(operand, Number):
            return Number(-operand.value)
        return Neg(operand)

    def arith(self, first: Node, *rest: object) -> Node:
        node = first
        items = list(rest)
        if not items:  # a lone operand passes through untouched
            return node
        _expect(node, "number", f"'{items[0]}'")
        for i in range(0, len(items), 2):
            op = str(items[i])
            right = items[i + 1]
            assert isinstance(right, Node)
            _expect(right, "number", f"'{op}'")
            node = Arith(op, node, right)
        return node

    def compare(self, left: Node, op: Optional[Token] = None, right: Optional[Node] = None) -> Node:
        if op is None:
            return left
        assert right is not None
        _expect(left, "number", f"'{op}'", _column(op))
        _expect(right, "number", f"'{op}'", _column(op))
        return Compare(str(op), left, right)

    def and_(self, *operands: Node) -> Node:
        if len(operands) == 1:
            return operands[0]
        for o in operands:
            _expect(o, "bool", "'and'")
        return And(tuple(operands))

    def or_(self, *operands: Node) -> Node:
        if len(operands) == 1:
            return operands[0]
        for o in operands:
            _expect(o, "bool", "'or'")
        return Or(tuple(operands))

    def not_(self, operand: Node) -> Node:
        _expect(operand, "bool", "'not'")
        return Not(operand)

    def call(self, func: Token, *args: Node) -> Node:
        name = str(func)
        low, high = _ARITY[name]
        if not low <= len(args) <= high:
            want = str(low) if low == high else f"{low} to {high}"
            raise ConditionError(f"{name}() takes {want} arguments, got {len(args)}", _column(func))
        for a in args:
            _expect(a, "number", f"{name}()", _column(func))
        if name in ("present", "absent") and not isinstance(args[0], SignalRef):
            raise ConditionError(f"{name}() takes a signal, e.g. {name}(quality_mean{{path=\"local\"}})",
                                 _column(func))
        return Call(name, tuple(args))

    def signal(self, name: Token, selector: Optional[List[Tuple[str, str]]] = None) -> Node:
        if str(name) in _KEYWORDS:
            raise ConditionError(f"unexpected keyword {str(name)!r}", _column(name))
        matchers = tuple(selector or ())
        seen = set()
        for label, _ in matchers:
            if label in seen:
                raise ConditionError(f"label {label!r} given twice in {name}{{...}}", _column(name))
            seen.add(label)
        ref = SignalRef(str(name), tuple(sorted(matchers)))
        ref.column = _column(name)  # type: ignore[attr-defined]
        return ref

    def selector(self, *matchers: Tuple[str, str]) -> List[Tuple[str, str]]:
        return [m for m in matchers if m is not None]

    def matcher(self, label: Token, value: Token) -> Tuple[str, str]:
        text = str(value)[1:-1]
        return (str(label), text.replace('\\"', '"').replace("\\\\", "\\"))


def _expect(node: Node, kind: str, where: str, column: Optional[int] = None) -> None:
    if node.kind != kind:
        what = "a comparison or logical expression" if kind == "bool" else "a number or signal"
        raise ConditionError(f"{where} needs {what}", column)


# ------------------------------------------------------------------ public API


@dataclass(frozen=True)
class SignalInfo:
    """What the compiler needs to know about a signal: its labels and, per
    label, the allowed values (``None`` = any value)."""

    dims: Tuple[str, ...]
    allowed: Mapping[str, Optional[Sequence[str]]]


class Condition:
    """A compiled condition. ``evaluate(ctx)`` returns True, False or None (unknown)."""

    def __init__(self, text: str, root: Node) -> None:
        self.text = text
        self.root = root

    def evaluate(self, ctx: Context) -> Optional[bool]:
        value = self.root.evaluate(ctx)
        return None if value is None else bool(value)

    def signals(self) -> List[SignalRef]:
        return self.root.signals()

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"


def parse_expression(text: str) -> Node:
    """Parse without catalog checks (used for selectors in test files too)."""
    if not isinstance(text, str) or not text.strip():
        raise ConditionError("empty condition")
    if len(text) > 4096:
        raise ConditionError("condition is longer than 4096 characters")
    try:
        root = _Build().transform(_PARSER.parse(text))
    except RecursionError as err:
        raise ConditionError(f"the condition is nested too deeply (at most {MAX_DEPTH} levels)") from err
    except VisitError as err:
        if isinstance(err.orig_exc, ConditionError):
            raise err.orig_exc from None
        raise ConditionError(f"cannot parse: {err.orig_exc}") from err
    except UnexpectedCharacters as err:
        where = err.pos_in_stream
        found = repr(text[where]) if where is not None and 0 <= where < len(text) else "input"
        raise ConditionError(f"unexpected character {found}", err.column) from err
    except UnexpectedEOF as err:
        raise ConditionError("the condition ends too early") from err
    except UnexpectedToken as err:
        token = err.token
        if token.type == "$END":
            raise ConditionError("the condition ends too early") from err
        raise ConditionError(f"unexpected {str(token)!r}", getattr(token, "column", None)) from err
    except UnexpectedInput as err:  # pragma: no cover - other lark input errors
        raise ConditionError(f"cannot parse: {err}", getattr(err, "column", None)) from err
    except LarkError as err:  # pragma: no cover - defensive
        raise ConditionError(f"cannot parse: {err}") from err
    if _depth(root) > MAX_DEPTH:
        # Evaluation recurses too; refuse what could overflow it later.
        raise ConditionError(f"the condition is nested too deeply (at most {MAX_DEPTH} levels)")
    return root


MAX_DEPTH = 64


def _children(node: Node) -> Tuple[Node, ...]:
    if isinstance(node, (Neg, Not)):
        return (node.operand,)
    if isinstance(node, (Arith, Compare)):
        return (node.left, node.right)
    if isinstance(node, (And, Or)):
        return node.operands
    if isinstance(node, Call):
        return node.args
    return ()


def _depth(root: Node) -> int:
    deepest = 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in _children(node))
    return deepest


def compile_condition(text: str, catalog: Mapping[str, SignalInfo], *,
                      bound: Sequence[str] = ()) -> Condition:
    """Parse ``text`` and check it against ``catalog``.

    ``bound`` lists labels the evaluation context will bind (for example
    ``("query_class",)`` for a rule evaluated per query class).
    """
    root = parse_expression(text)
    if root.kind != "bool":
        raise ConditionError("a condition must be a comparison (e.g. 'x > 1') or a logical combination of them")
    for ref in root.signals():
        info = catalog.get(ref.name)
        column = getattr(ref, "column", None)
        if info is None:
            hint = difflib.get_close_matches(ref.name, list(catalog), n=1)
            suffix = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConditionError(f"unknown signal {ref.name!r}{suffix}", column)
        ref.dims = info.dims
        for label, value in ref.matchers:
            if label not in info.dims:
                has = ", ".join(info.dims) if info.dims else "no labels"
                raise ConditionError(f"signal {ref.name!r} has {has}; it cannot be selected by {label!r}", column)
            allowed = info.allowed.get(label)
            if allowed is not None and value not in allowed:
                raise ConditionError(
                    f"{label}={value!r} is not one of {list(allowed)} in {ref.name}{{...}}", column)
    del bound  # bindings are resolved at evaluation time; kept for API symmetry
    return Condition(text, root)


def parse_selector(text: str) -> Tuple[str, Dict[str, str]]:
    """Parse ``name{label="value"}`` into ``(name, labels)`` (for test files)."""
    node = parse_expression(text)
    if not isinstance(node, SignalRef):
        raise ConditionError(f"expected a signal like name{{label=\"value\"}}, got {text!r}")
    return node.name, dict(node.matchers)
