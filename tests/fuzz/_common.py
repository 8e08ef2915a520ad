"""Shared set-up of the atheris harnesses: import dualtrack instrumented."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

with atheris.instrument_imports(include=["dualtrack", "lark", "yaml", "jsonschema"]):
    import dualtrack  # noqa: F401  (instrumented for coverage feedback)


def seed_corpus(argv: List[str], texts: List[str]) -> None:
    """Write ``texts`` into the corpus folder given as the first argument, if it is empty."""
    folders = [a for a in argv[1:] if not a.startswith("-") and os.path.isdir(a)]
    if not folders or os.listdir(folders[0]):
        return
    for index, text in enumerate(texts):
        Path(folders[0], f"seed-{index}").write_text(text, encoding="utf-8")
