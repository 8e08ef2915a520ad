"""What every benchmark script reports the same way: the machine, and its figures as JSON.

The scripts run as ``python benchmarks/<name>.py``, so this folder is on
``sys.path`` and they ``import _common``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

from dualtrack.bench.verdicts import flat
from dualtrack.simulation.generator import generate_scenario
from dualtrack.simulation.scenario import Scenario, load_scenario

T = TypeVar("T")
R = TypeVar("R")

#: The bench's name of a generated scenario (``dualtrack bench adaptation --random``).
_GENERATED = re.compile(r"random_(\d+)_(\d+)")


def machine() -> Dict[str, Any]:
    """The machine a figure came from: Python, CPUs, platform, prometheus_client."""
    return {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "cpus": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "prometheus_client": version("prometheus-client")}


def announce(title: str) -> Dict[str, Any]:
    """Print the run's title line with the machine; return the machine (for the JSON)."""
    info = machine()
    print(f"{title} — Python {info['python']}, {info['cpus']} CPUs, prometheus_client {info['prometheus_client']}")
    return info


def add_scenario_option(parser: argparse.ArgumentParser) -> None:
    """``--scenario NAME``, repeatable: the shipped scenarios, files or generated scenarios
    :func:`named_scenarios` loads."""
    parser.add_argument("--scenario", action="append", metavar="NAME",
                        help="a shipped scenario's name, a scenario file or random_<seed>_<index> (a generated "
                             "scenario); repeat for several")


def add_generated_options(parser: argparse.ArgumentParser) -> None:
    """``--random N``, ``--seed S`` (repeatable) and ``--scenario NAME`` (repeatable): the scenarios a
    script runs, drawn by the generator or named (:func:`scenario_names` lists them)."""
    parser.add_argument("--random", type=int, default=20, metavar="N", help="generated scenarios per seed (20)")
    parser.add_argument("--seed", type=int, action="append", metavar="S", help="generator seed (repeatable; 1)")
    parser.add_argument("--scenario", action="append", metavar="NAME",
                        help="a shipped scenario or random_<seed>_<index> instead (repeatable)")


def scenario_names(args: argparse.Namespace) -> List[str]:
    """The names :func:`add_generated_options` asked for: the ``--scenario`` ones, else ``--random``
    of each ``--seed`` (seed 1 by default) as ``random_<seed>_<index>``."""
    return args.scenario or [f"random_{s}_{i:03d}" for s in (args.seed or [1]) for i in range(args.random)]


def scenario_for(name: str) -> Scenario:
    """``random_<seed>_<index>`` as the generator draws it; else a shipped scenario or a file."""
    match = _GENERATED.fullmatch(name)
    if match:
        return generate_scenario(int(match.group(1)), int(match.group(2)))
    return load_scenario(name)


def named_scenarios(names: Optional[Sequence[str]], parser: argparse.ArgumentParser) -> List[Tuple[str, Scenario]]:
    """Each ``--scenario NAME`` (a shipped scenario's name, a file, or ``random_<seed>_<index>`` as the
    generator draws it), loaded; one that does not load is the parser's error, naming it."""
    out: List[Tuple[str, Scenario]] = []
    for name in names or []:
        try:
            out.append((name, scenario_for(name)))
        except (OSError, ValueError) as err:
            parser.error(f"--scenario {name}: {err}")
    return out


def hindsight_splits(parser: argparse.ArgumentParser, path: str) -> Dict[str, Dict[str, Any]]:
    """Each scenario of a bench JSON (``dualtrack bench adaptation --json``), by name: its hindsight
    split's ``objective``, ``policy`` and ``split`` (local share per class), and ``flat`` (the oracle
    leads the split by less than ``MIN_ORACLE_LEAD``); a file that has no such figures is the
    parser's one-line error, naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            scenarios = json.load(fh)["scenarios"]
        out = {}
        for name, s in sorted(scenarios.items()):
            hindsight = s["hindsight"]
            objective = float(hindsight["objective"])
            out[name] = {"objective": objective, "policy": str(hindsight["policy"]),
                         "split": {c: float(v) for c, v in hindsight["split"].items()},
                         "flat": flat(objective, float(s["adaptive"]["oracle_objective"]))}
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        parser.error(f"--bench {path}: not a bench JSON with hindsight splits and the oracle "
                     f"({type(err).__name__}: {err})")


def run_each(fn: Callable[[T], R], items: Sequence[T], jobs: int) -> List[R]:
    """``[fn(item) for item in items]``, in ``jobs`` processes when ``jobs`` is more than 1 (``fn`` a
    module-level function, for the pool to pickle), in this one otherwise; in ``items``' order."""
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            return list(pool.map(fn, items))
    return [fn(item) for item in items]


def write_json(path: str, figures: Dict[str, Any]) -> None:
    """Write ``figures`` to ``path`` (folders made as needed) and say so."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(figures, fh, indent=2)
        fh.write("\n")
    print(f"figures written to {path}")


@contextmanager
def replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """While it lasts, ``owner.name`` is ``value`` (a module's function or a class's method replaced for
    a run, on purpose: what the benchmarks look inside the adaptation with); restored after."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)
