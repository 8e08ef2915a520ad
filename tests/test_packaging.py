"""The release path: `python -m build` makes a wheel and an sdist that pass `twine check`,
carry the bundled rules, scenarios and schemas, and take their version from one place."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import dualtrack

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the backend (hatchling) is in the test environment; no network needed.
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def test_wheel_and_sdist_pass_twine_check(dist: Path) -> None:
    files = sorted(dist.iterdir())
    assert sorted(f.suffix for f in files) == [".gz", ".whl"]
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2


def test_the_wheel_carries_what_the_package_reads_at_run_time(dist: Path) -> None:
    [wheel] = dist.glob("*.whl")
    assert wheel.name.startswith(f"dualtrack-{dualtrack.__version__}-")  # one version, from __init__
    names = set(zipfile.ZipFile(wheel).namelist())
    for rule in ("adaptive", "balanced", "cost", "latency_focused", "quality_focused", "resource_efficient"):
        assert f"dualtrack/_bundled/rules/{rule}.yaml" in names
    assert "dualtrack/_bundled/scenarios/steady.yaml" in names
    assert {"dualtrack/py.typed", "dualtrack/schemas/strategy.schema.json",
            "dualtrack/schemas/preferences.schema.json", "dualtrack/schemas/scenario.schema.json"} <= names
    metadata = zipfile.ZipFile(wheel).read(f"dualtrack-{dualtrack.__version__}.dist-info/METADATA").decode()
    for extra in ("demo", "litellm", "langgraph"):
        assert f"Provides-Extra: {extra}" in metadata
