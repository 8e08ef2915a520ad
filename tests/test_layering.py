"""The layering contract (docs/architecture.md) holds, and the check really fails on a violation.

``make test`` runs ``lint-imports`` with the contracts in pyproject.toml. Here
the same check runs on the real package (it must pass) and on a copy of it
with one forbidden import planted (it must fail and name the import), so a
contract that silently stopped checking would be noticed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def run_lint_imports(config: Path, src: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(src))
    return subprocess.run([str(LINT_IMPORTS), "--config", str(config), "--no-cache"], cwd=config.parent,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of src/dualtrack and pyproject.toml to plant violations in."""
    root = tmp_path_factory.mktemp("layering")
    shutil.copytree(ROOT / "src" / "dualtrack", root / "src" / "dualtrack",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_package_keeps_its_layers() -> None:
    result = run_lint_imports(ROOT / "pyproject.toml", ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, imported, contract", [
    # The two halves never import each other, not even in a function body.
    ("exporter/_planted.py", "def f():\n    from ..adapter import engine\n    return engine\n", "layers"),
    ("adapter/_planted.py", "from ..exporter import collector\n", "layers"),
    # A lower layer never imports a higher one.
    ("preferences/_planted.py", "from ..optimizer import DualTrackOptimizer\n", "layers"),
    # The foundation imports nothing above it.
    ("_planted.py", "from .router import policy\n", "foundation"),
])
def test_a_planted_violation_fails_the_check(package_copy: Path, module: str, imported: str, contract: str) -> None:
    planted = package_copy / "src" / "dualtrack" / module
    if contract == "foundation":
        # Only the listed foundation modules are checked: plant into one of them.
        planted = package_copy / "src" / "dualtrack" / "clock.py"
        original = planted.read_text()
        planted.write_text(original + "\n" + imported)
    else:
        planted.write_text(imported)
    try:
        result = run_lint_imports(package_copy / "pyproject.toml", package_copy / "src")
    finally:
        if contract == "foundation":
            planted.write_text(original)
        else:
            planted.unlink()
    assert result.returncode != 0, result.stdout
    assert re.search(r"[1-9]\d* broken", result.stdout), result.stdout
    name = "dualtrack.clock" if contract == "foundation" else "dualtrack." + module[:-3].replace("/", ".")
    assert name in result.stdout, result.stdout
