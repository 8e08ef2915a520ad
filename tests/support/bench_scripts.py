"""The scripts under ``benchmarks/`` as modules, for tests of their parts."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parent.parent.parent / "benchmarks"


def bench_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module (the scripts import ``_common`` and each other
    from their own folder, so it is on ``sys.path`` while they load)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def run_script(name: str, *args: str, timeout: float = 300) -> "subprocess.CompletedProcess[str]":
    """``python benchmarks/<name>.py ARGS...`` from the repository's root; its output as text."""
    return subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=BENCHMARKS.parent)
