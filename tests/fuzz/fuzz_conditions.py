#!/usr/bin/env python3
"""atheris: condition text -> compile_condition + evaluate: a Condition or a ConditionError."""

from __future__ import annotations

import math
import sys

import atheris
import yaml
from _common import ROOT, seed_corpus

from dualtrack.adapter.conditions import ConditionError, Context, compile_condition  # noqa: E402
from dualtrack.adapter.signals import BUILTIN_CATALOG  # noqa: E402

INFOS = BUILTIN_CATALOG.infos()
VALUES = [None, 0.0, 1.0, -1.0, 0.5, 1e308, -1e308, 5e-324, math.nan, math.inf]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    pick = fdp.ConsumeIntInRange(0, len(VALUES) - 1)
    text = fdp.ConsumeUnicodeNoSurrogates(4200)
    try:
        condition = compile_condition(text, INFOS, bound=("query_class",))
    except ConditionError as err:
        assert err.message
        return
    ctx = Context(lambda name, labels: VALUES[(pick + len(name) + len(labels)) % len(VALUES)],
                  {"query_class": "short"})
    assert condition.evaluate(ctx) in (True, False, None)
    assert all(v is None or math.isfinite(v) for v in ctx.used.values())


def _conditions() -> list:
    out = []
    for path in sorted((ROOT / "rules").glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        out += [rule["when"] for rule in data.get("rules") or []]
    return out


if __name__ == "__main__":
    # FuzzedDataProvider: one byte picks the values, the rest is the text.
    seed_corpus(sys.argv, ["\x03" + c for c in _conditions()])
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
