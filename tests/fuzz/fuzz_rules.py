#!/usr/bin/env python3
"""atheris: strategy-file text -> load_strategies: a StrategySet or a ConfigError naming the file."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import atheris
from _common import ROOT, seed_corpus

from dualtrack.adapter.strategy import StrategySet, load_strategies  # noqa: E402
from dualtrack.errors import ConfigError  # noqa: E402

FOLDER = Path(tempfile.mkdtemp(prefix="fuzz-rules-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
PATH = FOLDER / "fuzzed.yaml"


def test_one_input(data: bytes) -> None:
    PATH.write_bytes(data)
    started = time.monotonic()
    try:
        result = load_strategies(PATH)
    except ConfigError as err:
        if err.source != str(PATH):
            raise AssertionError(f"ConfigError without the file: {err!r}") from err
    else:
        assert isinstance(result, StrategySet)
    elapsed = time.monotonic() - started
    if elapsed > 2.0:
        raise AssertionError(f"took {elapsed:.1f} s")


if __name__ == "__main__":
    seed_corpus(sys.argv, [p.read_text(encoding="utf-8") for p in sorted((ROOT / "rules").glob("*.yaml"))])
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
