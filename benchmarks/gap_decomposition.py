#!/usr/bin/env python3
"""Where the adaptive strategy's gap to ``perclass_hindsight`` comes from: the plan's choices, or the machinery.

    python benchmarks/gap_decomposition.py --random 20 --seed 1 --seed 3 --jobs 2
    python benchmarks/gap_decomposition.py --scenario steady --scenario api_outage --json out.json
    python benchmarks/gap_decomposition.py --random 2 --quick                 # a smoke run, not figures

``strategy:adaptive`` is more than its plan. Each cycle the plan
(:class:`dualtrack.adapter.objective.SplitPlanner`) chooses each query
class's local share; around it run the estimator, the strategy's guard
rails, the adapted timeouts, the optimizer's immediate overrides (memory or
GPU memory over its limit, the battery low, the cost cap, a failing track:
``dualtrack.optimizer.overrides``) and the router's exploration floor. When
adaptive scores below the best static per-class split, is it the plan's
choice of shares, or what the machinery does with any shares?

Each scenario is run four ways, with the same queries and routing draws:

``hindsight``
    ``perclass_hindsight`` the bench's way: the best split of the grid
    (0, 0.25, ... 1 per class), searched on this draw; its search score.
``adaptive``
    ``strategy:adaptive`` as shipped.
``fed``
    ``strategy:adaptive`` with every cycle's plan replaced by the hindsight
    split (the plan still runs, so the estimator's bookkeeping is as usual;
    only its shares are overwritten), everything else as shipped: what
    adaptive would score if its plan always chose the best fixed split.
``fed, no overrides``
    the same with the optimizer's immediate overrides switched off.
``fed, no floor``
    the fed run with no exploration floor (the strategy's
    ``exploration_floor`` and the router's ``RoutingPolicy(floor=...)`` at
    zero): the split's shares exactly, overrides on.

and the gap ``adaptive - hindsight`` splits exactly into

- **plan** = ``adaptive - fed``: what the plan's choices gain or lose
  against the hindsight split, events included (positive where adapting
  beats any fixed split);
- **machinery** = ``fed - hindsight``: what running a fixed split through
  the adaptive machinery costs or gains (the probes' floor, timeouts, guard
  rails, overrides), of which **overrides** = ``fed - fed, no overrides``
  and **floor** = ``fed - fed, no floor`` (what the 2% each track keeps
  costs a split that wants none).

All as % of the hindsight split's objective. Each figure is one routing
draw: per scenario it carries the chance that ``adaptation_noise.py``
measures (a median 0.1% of J), and the hindsight's search score its
selection bias (about -0.07% on average); read the suite's means and
medians, and a single scenario's figures only where they are large.

About 5 runs and one hindsight search per scenario: 10-40 s each on one
core; ``--jobs`` runs scenarios in parallel.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import _common

import dualtrack.adapter.engine as engine
import dualtrack.optimizer.facade as facade
from dualtrack.adapter.strategy import StrategySet, load_strategies
from dualtrack.bench.adaptation import QUICK_TIME_SCALE
from dualtrack.bundled import bundled_dir
from dualtrack.router.policy import RoutingPolicy
from dualtrack.simulation import Simulation
from dualtrack.simulation.generator import generate_scenario, scenario_name
from dualtrack.simulation.hindsight import SplitEvaluator, search_split, uniform_split
from dualtrack.simulation.planners import STATIC_POLICIES, STATIC_SHARES
from dualtrack.simulation.scenario import Scenario, load_scenario

#: The runs of a scenario, in the order they are reported.
RUNS = ("hindsight", "adaptive", "fed", "fed_no_overrides", "fed_no_floor")
#: The parts of the gap, each a difference of two runs.
PARTS = {"gap": ("adaptive", "hindsight"), "plan": ("adaptive", "fed"), "machinery": ("fed", "hindsight"),
         "overrides": ("fed", "fed_no_overrides"), "floor": ("fed", "fed_no_floor")}
#: What the summary says each part is.
PART_TEXT = {"gap": "adaptive - hindsight", "plan": "adaptive - fed", "machinery": "fed - hindsight",
             "overrides": "fed - fed without overrides", "floor": "fed - fed without the exploration floor"}

# (name, a shipped scenario's name or None, seed, index, rules, quick)
Job = Tuple[str, Optional[str], int, int, Optional[str], bool]


@contextmanager
def plan_fed(shares: Mapping[str, float]) -> Iterator[None]:
    """While it lasts, every adaptation cycle's plan chooses ``shares`` (a local share per class; classes
    not in it keep the plan's own). The plan still runs first: what it records on the estimator (the
    planned spend and load) is as usual."""
    original = engine.choose_split

    def fed(estimator: Any, spec: Any, **kwargs: Any) -> Any:
        split = original(estimator, spec, **kwargs)
        split.shares = {c: float(shares.get(c, v)) for c, v in split.shares.items()}
        split.reasons.append("fed: the hindsight split replaces the plan's shares (gap_decomposition.py)")
        return split

    with _common.replaced(engine, "choose_split", fed):
        yield


@contextmanager
def overrides_off() -> Iterator[None]:
    """While it lasts, the optimizer's immediate overrides never act (the readings are still taken)."""
    original = facade.compute_overrides

    def none(*args: Any, **kwargs: Any) -> Any:
        found = original(*args, **kwargs)
        return replace(found, over_limit=(), battery_low=False, cost={}, api_failing=False, local_failing=False)

    with _common.replaced(facade, "compute_overrides", none):
        yield


def without_floor(strategies: StrategySet) -> StrategySet:
    """The same strategies with no exploration floor: ``local_bias`` clamped only as their files say."""
    out = {}
    for name in strategies.names():
        strategy = strategies[name]
        data = strategy.document.data if strategy.document is not None else {}
        lo, hi = (data.get("clamps") or {}).get("local_bias", (0.0, 1.0))
        clamps = {**strategy.clamps, "local_bias": (float(lo), float(hi))}
        out[name] = replace(strategy, exploration_floor=0.0, clamps=clamps)
    return StrategySet(out, strategies.catalog)


@contextmanager
def router_floor(floor: float) -> Iterator[None]:
    """While it lasts, a ``RoutingPolicy`` built without a ``floor`` gets ``floor``."""
    original = RoutingPolicy.__init__

    def init(self: RoutingPolicy, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("floor", floor)
        original(self, *args, **kwargs)

    with _common.replaced(RoutingPolicy, "__init__", init):
        yield


def _scenario(job: Job) -> Scenario:
    _name, shipped, seed, index, _rules, quick = job
    scenario = load_scenario(shipped) if shipped else generate_scenario(seed, index)
    return scenario.time_scaled(QUICK_TIME_SCALE) if quick else scenario


def decompose(scenario: Scenario, rules: Optional[str] = None) -> Dict[str, Any]:
    """The four runs of one scenario (their objectives), the hindsight split, and the gap's parts."""
    evaluator = SplitEvaluator(scenario)
    found = search_split(evaluator, include=[uniform_split(evaluator.classes, STATIC_SHARES[name])
                                             for name in STATIC_POLICIES])
    strategies = load_strategies(rules or bundled_dir("rules"))

    def adaptive(rules: StrategySet = strategies) -> float:
        return float(Simulation(scenario, "strategy:adaptive", strategies=rules).run().summary["objective"])

    runs = {"hindsight": float(found.objective), "adaptive": adaptive()}
    with plan_fed(found.split):
        runs["fed"] = adaptive()
        with overrides_off():
            runs["fed_no_overrides"] = adaptive()
        with router_floor(0.0):
            runs["fed_no_floor"] = adaptive(without_floor(strategies))
    parts = {part: (runs[a] - runs[b]) / runs["hindsight"] * 100 for part, (a, b) in PARTS.items()}
    return {"split": dict(found.split), "objectives": runs, "parts_percent": parts}


def _job(job: Job) -> Tuple[str, Dict[str, Any]]:
    return job[0], decompose(_scenario(job), job[4])


def summarize(results: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """Each part's mean, median and range over the scenarios (% of the hindsight split's objective)."""
    out: Dict[str, Any] = {"scenarios": len(results)}
    for part in PARTS:
        values = [r["parts_percent"][part] for r in results.values()]
        out[part] = {"mean": statistics.mean(values), "median": statistics.median(values),
                     "min": min(values), "max": max(values), "below_minus_1_percent": sum(v < -1.0 for v in values)}
    return out


def _jobs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> List[Job]:
    # The named scenarios are loaded here to name a bad one at once; each job loads its own.
    jobs: List[Job] = [(name, name, 0, 0, args.rules, args.quick)
                       for name, _ in _common.named_scenarios(args.scenario, parser)]
    if args.random:
        jobs += [(scenario_name(s, i), None, s, i, args.rules, args.quick)
                 for s in (args.seed or [1]) for i in range(args.random)]
    if not jobs:
        parser.error("name at least one --scenario, or --random N")
    return jobs


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="strategy:adaptive's gap to perclass_hindsight split into the plan's part (adaptive against "
                    "the machinery fed the hindsight split) and the machinery's (fed against the split itself), "
                    "with the immediate overrides' share of it.")
    _common.add_scenario_option(parser)
    parser.add_argument("--random", type=int, default=0, metavar="N", help="scenarios drawn per --seed")
    parser.add_argument("--seed", type=int, action="append", metavar="S",
                        help="generator seed for --random; repeat for several (default 1)")
    parser.add_argument("--rules", default=None, help="strategy rules folder (default: the bundled rules)")
    parser.add_argument("--jobs", type=int, default=1, help="scenarios in parallel (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="scenarios at 0.25x their length (a smoke run, not figures)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.random < 0 or args.jobs < 1:
        parser.error("--random must be at least 0 and --jobs at least 1")
    jobs = _jobs(args, parser)
    info = _common.announce(f"gap decomposition: strategy:adaptive against perclass_hindsight, {len(jobs)} scenarios")
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        results = dict(pool.map(_job, jobs))
    print(f"\n{'scenario':24s} {'hindsight':>9s} {'adaptive':>9s} {'fed':>9s} {'gap %':>7s} {'plan %':>7s} "
          f"{'mach. %':>7s} {'overr. %':>8s} {'floor %':>7s}  split")
    for name, r in results.items():
        o, p = r["objectives"], r["parts_percent"]
        split = ", ".join(f"{c} {v:g}" for c, v in r["split"].items())
        print(f"{name:24s} {o['hindsight']:9.4f} {o['adaptive']:9.4f} {o['fed']:9.4f} {p['gap']:+7.2f} "
              f"{p['plan']:+7.2f} {p['machinery']:+7.2f} {p['overrides']:+8.2f} {p['floor']:+7.2f}  {split}")
    overall = summarize(results)
    print("\nover the scenarios, % of the hindsight split's objective (mean, median, range; scenarios below -1%):")
    for part, what in PART_TEXT.items():
        s = overall[part]
        print(f"  {part:10s} ({what}): mean {s['mean']:+.3f}, median {s['median']:+.3f}, "
              f"{s['min']:+.2f} to {s['max']:+.2f}; {s['below_minus_1_percent']} below -1%")
    print(f"({len(jobs)} scenarios in {time.perf_counter() - started:.0f} s with {args.jobs} jobs)")
    if args.json:
        _common.write_json(args.json, {"machine": info, "quick": args.quick, "rules": args.rules,
                                       "scenarios": results, "summary": overall})
    return 0


if __name__ == "__main__":
    sys.exit(main())
