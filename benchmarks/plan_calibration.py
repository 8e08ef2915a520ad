#!/usr/bin/env python3
"""Is the adaptive plan's model of the objective right? Its expectations of static splits against their runs.

    python benchmarks/plan_calibration.py --scenario steady
    python benchmarks/plan_calibration.py --random 1:13 --random 3:10 --tell-local-model --json out.json
    python benchmarks/plan_calibration.py --scenario steady --levels 0,0.5,1 --at 0.5      # a quick look

The adaptive strategy picks each class's local share by the objective it
expects of a split (:class:`dualtrack.adapter.objective.SplitPlanner`,
from the estimator's evidence of the moment). When a good split loses in the
benchmark, is it the estimates, the candidates the plan tries, or the plan's
model of what a split does? This script answers the last question.

For each scenario it runs ``strategy:adaptive`` once, keeps the estimator
of a few adaptation cycles (``--at``, as shares of the run), and asks the
plan of each of those cycles to score every split of a grid (``--levels``
per class). It also runs every split of the grid as a static policy (the
bench's ``perclass`` splits: the same queries, the router's default
timeouts) and reads its objective and terms. Then, per cycle:

- the split the run shows best, the split the plan expects to be best, and
  what that one scored when run (its *regret*); where they differ, the
  plan's expected difference between the two per term against the runs';
- the rank correlation (Spearman) of expectation and run over the grid;
- the split the strategy chose that cycle (its probes included) and the
  *choice gap*: how much more the plan expects of its best split of the
  grid than of that one (the strategy does not pick from the grid: each
  class goes where a query is worth more, held there within the noise,
  then capped; a large gap says the choice, not the model, leaves value);
- per term (useful, within target, quality, savings, compliance), the
  error of the plan's expected *difference* between each of the run's ten
  best splits and the best one, against the difference the runs show
  (mean absolute error, and its sign): a term whose expected differences
  are far off is where the plan's model misleads it.

Differences, not levels: a plan that expects every split 0.01 too high
chooses just as well. The plan's expectation holds for the moment of the
cycle (its arrivals, its prices), a static run is the whole scenario, so
in scenarios with events expect honest disagreement; in event-free ones
(`steady`, and random scenarios drawn without events) the two should agree.

``--tell-local-model`` gives the estimator the simulator's own local model
every cycle (as ``adaptation_noise.py --tell-local-model``), so that what is
left is the plan's model rather than the estimates.

A scenario takes one adaptive run plus one static run per split (27 splits
with ``--levels 0,0.5,1``, 125 with the default five levels: 10-60 s).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import _common
from adaptation_noise import add_tell_option, local_model_told

import dualtrack.adapter.engine as engine
from dualtrack.adapter.objective import ObjectiveSpec, SplitPlanner
from dualtrack.adapter.strategy import load_strategies
from dualtrack.bundled import bundled_dir
from dualtrack.objective import OBJECTIVE, TERMS
from dualtrack.simulation import Simulation
from dualtrack.simulation.generator import generate_scenario
from dualtrack.simulation.hindsight import GRID_LEVELS, SplitEvaluator, grid_splits
from dualtrack.simulation.scenario import Scenario

#: The query terms: the plan expects them per query; compliance is its constraint chances.
QUERY_TERMS = tuple(t for t in TERMS if t != "compliance")
#: The run's best splits whose expected differences are checked.
TOP = 10

#: estimator, the strategy's objective, choose_split's keywords, and the shares it chose
Snapshot = Tuple[Any, ObjectiveSpec, Dict[str, Any], Dict[str, float]]


@contextmanager
def plans_kept(into: List[Snapshot]) -> Iterator[None]:
    """While it lasts, every adaptation cycle's estimator (a copy), objective, keywords and chosen shares
    go to ``into``."""
    original = engine.choose_split

    def keep(estimator: Any, spec: ObjectiveSpec, **kwargs: Any) -> Any:
        before = copy.deepcopy(estimator)
        split = original(estimator, spec, **kwargs)
        into.append((before, spec, dict(kwargs), dict(split.shares)))
        return split

    with _common.replaced(engine, "choose_split", keep):
        yield


def planners(snapshot: Snapshot) -> Dict[str, SplitPlanner]:
    """A cycle's plan with its objective's weights ("all"), with none ("none") and with each query term's alone."""
    estimator, spec, kwargs, _ = snapshot
    zero = {t: 0.0 for t in spec.weights}
    weights = {"all": dict(spec.weights), "none": zero, **{t: {**zero, t: spec.weights[t]} for t in QUERY_TERMS}}
    return {name: SplitPlanner(estimator, replace(spec, weights=w), budget_per_hour=kwargs.get("budget_per_hour"),
                               latency_target=kwargs.get("latency_target"))
            for name, w in weights.items()}


def expected(plans: Mapping[str, SplitPlanner], shares: Mapping[str, float]) -> Dict[str, float]:
    """What a cycle's plan (:func:`planners`) expects of ``shares``: each term's weighted share of the objective.

    The plan's value is linear in the query terms' weights, so each term is the plan's
    value with that term's weight alone, less the value with none (the fallback's
    charge, which is no term of the objective); compliance is the share of the time
    it expects no constraint to be violated (memory, the budget)."""
    base = plans["none"].score(shares).value
    out = {t: plans[t].score(shares).value - base for t in QUERY_TERMS}
    # The plan charges a call's cost (its savings part is -w x cost / the usual API cost of a
    # query); the objective credits what was saved, w x (1 - cost / all-API cost): the same
    # differences, and with the weight added back the same level.
    out["savings"] += plans["savings"].spec.weights["savings"]
    plan = plans["all"].score(shares)
    out["compliance"] = plan.compliance_weight * (1.0 - plan.p_violation)
    out["total"] = sum(out[t] for t in TERMS)
    return out


def realized(summary: Mapping[str, Any]) -> Dict[str, float]:
    """A run's terms, weighted: they add up to its objective."""
    parts = OBJECTIVE.components(summary)
    weights = OBJECTIVE.as_dict()
    out = {t: weights[t] * parts[t] for t in TERMS}
    out["total"] = sum(out[t] for t in TERMS)
    return out


def _ranks(values: Sequence[float]) -> List[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    for r, i in enumerate(order):
        ranks[i] = float(r)
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Rank correlation of two equally long sequences (ties broken by position)."""
    n = len(a)
    if n < 2:
        return 1.0
    ra, rb = _ranks(a), _ranks(b)
    return 1.0 - 6.0 * sum((x - y) ** 2 for x, y in zip(ra, rb, strict=True)) / (n * (n * n - 1))


def compare(snapshot: Snapshot, plans: Mapping[str, SplitPlanner],
            runs: Mapping[Tuple[float, ...], Dict[str, float]], splits: Sequence[Dict[str, float]]) -> Dict[str, Any]:
    """One cycle's plan (its :func:`planners`) against the runs of ``splits`` (keyed by their shares in
    class order)."""
    keys = [tuple(s.values()) for s in splits]
    plan = {k: expected(plans, s) for k, s in zip(keys, splits, strict=True)}
    best_run = max(keys, key=lambda k: runs[k]["total"])
    best_plan = max(keys, key=lambda k: plan[k]["total"])
    top = sorted(keys, key=lambda k: -runs[k]["total"])[1:TOP + 1]
    errors: Dict[str, Dict[str, float]] = {}
    for t in (*TERMS, "total"):
        diffs = [(plan[k][t] - plan[best_run][t]) - (runs[k][t] - runs[best_run][t]) for k in top]
        errors[t] = {"mean_absolute": sum(abs(d) for d in diffs) / len(diffs) if diffs else 0.0,
                     "mean": sum(diffs) / len(diffs) if diffs else 0.0}
    estimator = snapshot[0]
    # Why the plan's best is not the run's: its expected difference from the run's best, per term.
    why = {t: {"expected": plan[best_plan][t] - plan[best_run][t], "run": runs[best_plan][t] - runs[best_run][t]}
           for t in (*TERMS, "total")}
    # What the strategy chose that cycle (probes included), by the plan's own reckoning.
    chosen = {c: snapshot[3][c] for c in plans["all"].gains}
    chosen_expected = expected(plans, chosen)["total"]
    return {
        "best_run": list(best_run), "best_run_objective": runs[best_run]["total"],
        "best_expected": list(best_plan), "best_expected_run_objective": runs[best_plan]["total"],
        "regret": runs[best_run]["total"] - runs[best_plan]["total"],
        "spearman": spearman([plan[k]["total"] for k in keys], [runs[k]["total"] for k in keys]),
        "difference_errors": errors,
        "best_expected_against_best_run": why,
        "chosen": [chosen[c] for c in plans["all"].gains], "chosen_expected_objective": chosen_expected,
        "best_expected_objective": plan[best_plan]["total"],
        "choice_gap": plan[best_plan]["total"] - chosen_expected,
        "estimates": {"slots": estimator.slots, "memory_slots": estimator.memory_slots,
                      "arrivals": dict(estimator.arrivals), "base_service": dict(estimator.base_service)},
    }


def calibrate(scenario: Scenario, *, at: Sequence[float], levels: Sequence[float], tell: Optional[str],
              rules: Optional[str]) -> Dict[str, Any]:
    """The plan of the cycles at ``at`` (shares of the run) against the runs of the grid of ``levels``."""
    snapshots: List[Snapshot] = []
    sim = Simulation(scenario, "strategy:adaptive", strategies=load_strategies(rules or bundled_dir("rules")))
    with plans_kept(snapshots), (local_model_told(sim, tell) if tell else nullcontext()):
        adaptive = sim.run().summary["objective"]
    evaluator = SplitEvaluator(scenario)
    splits = grid_splits(evaluator.classes, levels)
    runs = {tuple(s.values()): realized(evaluator.run(s).summary) for s in splits}
    cycles: List[Dict[str, Any]] = []
    for share in at:
        index = min(len(snapshots) - 1, max(0, round(share * len(snapshots)) - 1))
        plans = planners(snapshots[index])
        if set(plans["all"].gains) != set(evaluator.classes):
            cycles.append({"cycle": index + 1, "skipped": "a class without evidence on both tracks yet"})
            continue
        cycles.append({"cycle": index + 1, **compare(snapshots[index], plans, runs, splits)})
    return {"adaptive_objective": adaptive, "classes": list(evaluator.classes), "splits": len(splits),
            "cycles_run": len(snapshots), "cycles": cycles}


def summarize(results: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """Over every cycle looked at: how often the plan's best is the run's, its regret, the rank
    correlation, and each term's mean absolute error of expected differences."""
    cycles = [c for r in results.values() for c in r["cycles"] if "skipped" not in c]
    if not cycles:
        return {"cycles": 0}
    return {
        "cycles": len(cycles),
        "same_best": sum(1 for c in cycles if c["best_expected"] == c["best_run"]),
        "regret_mean": statistics.mean(c["regret"] for c in cycles),
        "regret_max": max(c["regret"] for c in cycles),
        "spearman_median": statistics.median(c["spearman"] for c in cycles),
        "choice_gap_mean": statistics.mean(c["choice_gap"] for c in cycles),
        "choice_gap_median": statistics.median(c["choice_gap"] for c in cycles),
        "difference_errors": {t: statistics.mean(c["difference_errors"][t]["mean_absolute"] for c in cycles)
                              for t in (*TERMS, "total")},
    }


def _scenarios(args: argparse.Namespace, parser: argparse.ArgumentParser) -> List[Tuple[str, Scenario]]:
    out = _common.named_scenarios(args.scenario, parser)
    for spec in args.random or []:
        seed, sep, index = spec.partition(":")
        if not sep or not seed.isdigit() or not index.isdigit():
            parser.error(f"--random {spec}: expected SEED:INDEX, e.g. 1:13")
        out.append((f"random_{int(seed)}_{int(index):03d}", generate_scenario(int(seed), int(index))))
    if not out:
        parser.error("name at least one --scenario or --random")
    return out


def _shares(text: str, what: str, parser: argparse.ArgumentParser) -> List[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"{what}: expected numbers separated by commas, got {text!r}")
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        parser.error(f"{what}: every value must be within [0, 1], got {text!r}")
    return values


def _print(name: str, result: Mapping[str, Any]) -> None:
    print(f"\n{name}: adaptive {result['adaptive_objective']:.4f}, {result['splits']} splits of "
          f"{', '.join(result['classes'])}, {result['cycles_run']} cycles")
    for cyc in result["cycles"]:
        if "skipped" in cyc:
            print(f"  cycle {cyc['cycle']}: skipped ({cyc['skipped']})")
            continue
        err = cyc["difference_errors"]
        worst = max(TERMS, key=lambda t: err[t]["mean_absolute"])
        print(f"  cycle {cyc['cycle']}: best run {cyc['best_run']} {cyc['best_run_objective']:.4f}; "
              f"plan's best {cyc['best_expected']} ran {cyc['best_expected_run_objective']:.4f} "
              f"(regret {cyc['regret']:.4f}); Spearman {cyc['spearman']:.2f}")
        print("    error of expected differences (top splits vs best), mean |.| (mean): "
              + ", ".join(f"{t} {err[t]['mean_absolute']:.4f} ({err[t]['mean']:+.4f})" for t in TERMS)
              + f"; most off: {worst}")
        chosen = ", ".join(f"{x:.2f}" for x in cyc["chosen"])
        print(f"    chosen [{chosen}], expected {cyc['chosen_expected_objective']:.4f}; the plan's best of the grid "
              f"expected {cyc['best_expected_objective']:.4f} (choice gap {cyc['choice_gap']:+.4f})")
        if cyc["best_expected"] != cyc["best_run"]:
            why = cyc["best_expected_against_best_run"]
            print("    the plan's best less the run's best, expected / run: "
                  + ", ".join(f"{t} {why[t]['expected']:+.4f} / {why[t]['run']:+.4f}" for t in (*TERMS, "total")))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="The adaptive plan's expected objective of static splits against what the splits score "
                    "when run: where the plan's model of a split misleads it.")
    _common.add_scenario_option(parser)
    parser.add_argument("--random", action="append", metavar="SEED:INDEX",
                        help="a scenario of the random suite (e.g. 1:13 for random_1_013); repeat for several")
    parser.add_argument("--at", default="0.25,0.5,0.75,1",
                        help="the cycles to look at, as shares of the run (default 0.25,0.5,0.75,1)")
    parser.add_argument("--levels", default=",".join(f"{x:g}" for x in GRID_LEVELS),
                        help="local shares per class of the grid of splits (default the bench's: 0,0.25,0.5,0.75,1)")
    add_tell_option(parser, "so what is left is the plan's")
    parser.add_argument("--rules", default=None, help="strategy rules folder (default: the bundled rules)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    scenarios = _scenarios(args, parser)
    at = _shares(args.at, "--at", parser)
    levels = _shares(args.levels, "--levels", parser)
    info = _common.announce("plan calibration: strategy:adaptive's expectations against static runs")
    results = {}
    for name, scenario in scenarios:
        results[name] = calibrate(scenario, at=at, levels=levels, tell=args.tell_local_model, rules=args.rules)
        _print(name, results[name])
    overall = summarize(results)
    if overall["cycles"]:
        print(f"\nover {overall['cycles']} cycles of {len(results)} scenarios: the plan's best is the run's best in "
              f"{overall['same_best']}; regret mean {overall['regret_mean']:.4f}, largest {overall['regret_max']:.4f}; "
              f"Spearman median {overall['spearman_median']:.2f}; choice gap (the plan's best of the grid "
              f"over the split chosen, expected) median {overall['choice_gap_median']:+.4f}, "
              f"mean {overall['choice_gap_mean']:+.4f}")
        print("error of expected differences, mean |.| over the cycles: "
              + ", ".join(f"{t} {overall['difference_errors'][t]:.4f}" for t in TERMS))
    if args.json:
        _common.write_json(args.json, {"machine": info, "levels": levels, "at": at,
                                       "local_model_told": args.tell_local_model, "scenarios": results,
                                       "summary": overall})
    return 0


if __name__ == "__main__":
    sys.exit(main())
