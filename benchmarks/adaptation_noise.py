#!/usr/bin/env python3
"""How much of an adaptation figure is chance: the same code, the same queries, other routing dice.

    python benchmarks/adaptation_noise.py --random 20 --seed 1 --seed 3 --repeats 4 --jobs 2
    python benchmarks/adaptation_noise.py --random 2 --repeats 2 --quick        # a smoke run
    python benchmarks/adaptation_noise.py ... --json out.json
    python benchmarks/adaptation_noise.py --scenario api_outage --scenario api_price_spike --repeats 6
    python benchmarks/adaptation_noise.py --scenario random_147_000 --scenario random_147_001 ... \
        --repeats 3 --baseline earlier.json     # a subset of a set, paired with the set's earlier run

A split sends each query of a class to local or the API by a draw; the
simulator seeds those draws from the scenario's seed. Every scenario drawn
by the generator (``--random N`` per ``--seed``, as ``dualtrack bench
adaptation --random``; or each ``--scenario``, a shipped scenario's name,
a scenario file or one generated scenario, ``random_<seed>_<index>``) is
run ``--repeats`` times with one policy (default ``strategy:adaptive``):
the first run with the bench's own routing draws, the others with
``Simulation(routing_seed=k)``: the same queries, the same model behaviour,
the same code, only the router's coin flips differ. Every difference
between the runs is chance.

It prints, per scenario, the objective's mean over the runs, its spread
(sample standard deviation) and range; then for the suite:

- the typical spread of one scenario's `J` (median and largest, as % of `J`);
- the suite mean of each run, and their standard deviation: how much the
  suite's mean `J` moves from chance alone;
- the smallest change of a suite mean that chance leaves visible: two runs
  of two codes differ by their own chance too, so about
  ``2 x sqrt(2) x`` that standard deviation (a 95% band);
- the same for the share of scenarios whose `J` moves by more than 1%.

Read a comparison of two versions of the adaptation against these: a
difference inside the band is not a difference.

``--hindsight`` also measures the benchmark's ``perclass_hindsight``
against chance. The bench searches the best split on one draw of the
routing dice and reports the best score it saw: the maximum of many noisy
scores is biased upward (the winner's curse). Here the split is searched
the bench's way, then run again on the ``--repeats - 1`` other draws; the
difference is the selection bias, and the adaptive policy's mean over its
draws is compared with the split's mean over the fresh draws (both
unbiased) as well as the bench's way (one draw each, the search's own
score).

``--baseline FILE`` compares this run with an earlier one of the same
scenarios and repeats (its ``--json``; another ``--rules`` folder, or the
code of another revision on ``PYTHONPATH``): per scenario the difference
of the mean `J` over the draws, and for the suite the mean difference with
its standard error from the draws' own spread (the scenarios are the same,
so only the dice differ), how many scenarios' means went up and down, and
the five that moved most each way (the ones to trace first). A difference
within two standard errors is chance.

``--tell-local-model`` measures what a perfect estimator of the local
model would buy: each adaptation cycle, after the estimator has read the
interval, its local model is overwritten with the simulator's own (the
server's slots, and each class's mean service time at the model's speed
of the moment: throttling and batching slowdown included; ``slots`` or
``service`` tells one of the two). ``effective`` tells another pair, one
that needs no model of the batching slowdown: the slots as the calls the
server carries at full load counted at the speed of a call alone
(``slots / (1 + contention x (slots - 1))``), and each class's service
time of a call alone (throttling included); ``effective-slots`` and
``service-alone`` tell one half of it each. ``effective-own`` tells the
effective slots alone, counted in the estimator's own service times rather
than in calls alone (the told slots times the arrival-weighted ratio of its
service times to a call alone's): the capacity in the units the plan
loads it in, whatever those service times' error.
``--tell-slots-error SIGMA`` multiplies the told slots by ``exp(N(0,
SIGMA))``, one factor a scenario (drawn from its name: the same in each
routing draw), or a fresh one each cycle with
``--tell-slots-error-each-cycle``: how right an estimator of them has to
be to keep what they are worth. Everything else (the API, quality,
arrivals, the plan) is still estimated. It is a
ceiling for work on the local-model estimator, not a policy: run it
against a ``--json`` of the same scenarios without it (``--baseline``).

A run takes about a second on one core (a hindsight search 10-30 s);
``--jobs`` runs them in parallel.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import _common

from dualtrack.adapter.estimator import Estimator
from dualtrack.adapter.strategy import load_strategies
from dualtrack.bench.adaptation import QUICK_TIME_SCALE
from dualtrack.bundled import bundled_dir
from dualtrack.simulation import Simulation
from dualtrack.simulation.generator import scenario_name
from dualtrack.simulation.hindsight import SplitEvaluator, search_split, uniform_split
from dualtrack.simulation.planners import STATIC_POLICIES, STATIC_SHARES, perclass_policy

# (scenario: random_<seed>_<index> or a --scenario name, routing seed or None, policy or HINDSIGHT, rules, quick,
#  repeats, what of the local model to tell, the told slots' error: (sigma, a fresh factor each cycle))
Job = Tuple[str, Optional[int], str, Optional[str], bool, int, Optional[str], Tuple[float, bool]]
#: What ``--tell-local-model`` may tell the estimator: each choice's service times (at the speed of
#: the moment, or of a call alone) and slots (declared, or counted in calls alone); None: estimated.
TELLS: Dict[str, Tuple[Optional[str], Optional[str]]] = {
    "both": ("now", "declared"), "slots": (None, "declared"), "service": ("now", None),
    "effective": ("alone", "effective"), "effective-slots": (None, "effective"), "service-alone": ("alone", None),
    "effective-own": (None, "effective-own"),
}
TOLD = tuple(TELLS)
HINDSIGHT = "perclass_hindsight"


def _scenario(name: str, quick: bool) -> Any:
    scenario = _common.scenario_for(name)
    return scenario.time_scaled(QUICK_TIME_SCALE) if quick else scenario


def _run(job: Job) -> Tuple[str, str, List[float]]:
    """One policy run (its J), or a hindsight search (the search's J, then the split's J on each other draw);
    with the scenario's name and the policy."""
    name, routing_seed, policy, rules, quick, repeats, tell, slots_error = job
    scenario = _scenario(name, quick)
    if policy == HINDSIGHT:
        evaluator = SplitEvaluator(scenario)
        found = search_split(evaluator, include=[uniform_split(evaluator.classes, STATIC_SHARES[static])
                                                 for static in STATIC_POLICIES])
        fresh = [Simulation(scenario, perclass_policy(found.split), record_metrics=False, tape=evaluator.tape,
                            routing_seed=r).run().summary["objective"] for r in range(1, repeats)]
        return name, policy, [float(found.objective), *map(float, fresh)]
    strategies = load_strategies(rules or bundled_dir("rules")) if policy.startswith("strategy:") else None
    sim = Simulation(scenario, policy, strategies=strategies, routing_seed=routing_seed)
    with local_model_told(sim, tell, slots_error) if tell else nullcontext():
        result = sim.run()
    return name, policy, [float(result.summary["objective"])]


def alone_service_times(sim: Simulation) -> Dict[str, float]:
    """Each class's service time for its mean tokens at the speed of a call alone (no other call in
    service; throttling included)."""
    model, params = sim.local, sim.params["local"]
    speed = params["speed_factor"] * model.thermal_factor()
    return {spec.name: model.service_time(round(spec.tokens_in.mean), round(spec.tokens_out.mean), speed)
            for spec in sim.scenario.classes}


def effective_slots(sim: Simulation) -> float:
    """The slots the local server carries at full load, counted in calls alone."""
    declared = sim.params["local"]["concurrency"]
    return declared / (1.0 + sim.params["local"]["contention"] * (declared - 1))


def effective_own_slots(estimator: Estimator, sim: Simulation) -> Optional[float]:
    """:func:`effective_slots` counted in ``estimator``'s own service times (the load it plans is
    arrivals x those times): times the arrival-weighted ratio of them to a call alone's. None while
    local has answered nothing (no units to count them in)."""
    base = estimator.base_service
    if not base:
        return None
    alone = alone_service_times(sim)
    weight = {c: estimator.arrivals.get(c, 0.0) + 1e-9 for c in base}
    return effective_slots(sim) * sum(weight[c] * base[c] for c in base) / sum(weight[c] * alone[c] for c in base)


def tell_local_model(estimator: Estimator, sim: Simulation, what: str = "both", slots_factor: float = 1.0) -> None:
    """Overwrite ``estimator``'s local model with the simulator's: the slots, and each class's
    mean service time at the speed a call starting now would get (``what``: both, or one);
    or, ``effective``, the slots the server carries at full load counted in calls alone and
    each class's service time alone (``effective-slots``, ``service-alone``: one of the two);
    or, ``effective-own``, those slots alone, counted in the estimator's own service times.
    The told slots are multiplied by ``slots_factor`` (an estimator's error)."""
    model = sim.local
    service, slots = TELLS[what]
    if service == "alone":
        estimator.base_service.update(alone_service_times(sim))
    elif service == "now":
        for spec in sim.scenario.classes:
            estimator.base_service[spec.name] = model.service_time(
                round(spec.tokens_in.mean), round(spec.tokens_out.mean), model.speed())
    if slots is None:
        return
    if slots == "effective-own":
        own = effective_own_slots(estimator, sim)
        if own is None:
            return
        told = own
    else:
        told = float(sim.params["local"]["concurrency"]) if slots == "declared" else effective_slots(sim)
    told *= slots_factor
    estimator.slots = told
    estimator._slots_seen_free = max(1, int(told))


@contextmanager
def local_model_told(sim: Simulation, what: str = "both",
                     slots_error: Tuple[float, bool] = (0.0, False)) -> Iterator[None]:
    """While it lasts, every estimator update in this process ends with :func:`tell_local_model`;
    ``slots_error`` (sigma, each cycle): the told slots times ``exp(N(0, sigma))``, one factor for the
    run or a fresh one each cycle, drawn from the scenario's name (and the cycle's number)."""
    if what not in TOLD:
        raise ValueError(f"what: one of {', '.join(TOLD)}, got {what!r}")
    original = Estimator.update
    sigma, each_cycle = slots_error
    key = zlib.crc32(sim.scenario.name.encode())

    def factor(seed: int) -> float:
        return math.exp(random.Random(seed).gauss(0.0, sigma)) if sigma > 0 else 1.0

    run_factor = factor(key)
    cycles = [0]

    def update(estimator: Estimator, values: Any, interval_seconds: float) -> Dict[str, str]:
        events = original(estimator, values, interval_seconds)
        cycles[0] += 1
        tell_local_model(estimator, sim, what, factor(key * 1000 + cycles[0]) if each_cycle else run_factor)
        return events

    with _common.replaced(Estimator, "update", update):
        yield


def add_tell_option(parser: argparse.ArgumentParser, purpose: str) -> None:
    """``--tell-local-model [WHAT]``: :func:`local_model_told` for the script's runs (``purpose``
    ends its help: what the diagnosis shows there)."""
    parser.add_argument("--tell-local-model", nargs="?", const="both", choices=TOLD, metavar="WHAT",
                        help="give the estimator the simulator's own local model every cycle: both (the "
                             "default), slots or service (times); effective (the slots counted in calls "
                             "alone, with the service times of a call alone), effective-slots or "
                             "service-alone; effective-own (the effective slots counted in the estimator's "
                             f"own service times): {purpose}")


def _sd(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(objectives: Dict[str, List[float]]) -> Dict[str, Any]:
    """The figures of a noise run: ``objectives`` maps each scenario to its J per repeat, in repeat order."""
    keys = list(objectives)
    repeats = min(len(v) for v in objectives.values())
    spreads = [_sd(objectives[k]) / statistics.mean(objectives[k]) * 100 for k in keys]
    suite_means = [statistics.mean(objectives[k][r] for k in keys) for r in range(repeats)]
    # Scenarios whose J moves by more than 1% from the first run (the bench's own draws).
    moved = [sum(1 for k in keys if abs(objectives[k][r] / objectives[k][0] - 1.0) > 0.01) / len(keys) * 100
             for r in range(1, repeats)]
    suite_sd = _sd(suite_means)
    mean_j = statistics.mean(suite_means)
    return {
        "scenarios": len(keys),
        "repeats": repeats,
        "scenario_spread_percent": {"median": statistics.median(spreads), "max": max(spreads)},
        "suite_means": suite_means,
        "suite_mean_sd": suite_sd,
        "suite_mean_sd_percent": suite_sd / mean_j * 100 if mean_j else 0.0,
        "detectable_change_percent": 2.0 * math.sqrt(2.0) * suite_sd / mean_j * 100 if mean_j else 0.0,
        "moved_over_1_percent": moved,
    }


def hindsight_figures(objectives: Dict[str, List[float]], hindsight: Dict[str, List[float]]) -> Dict[str, Any]:
    """The hindsight split's selection bias, and the policy's gap to it the bench's way and unbiased.

    ``hindsight`` maps each scenario to [the search's J, the split's J on each other draw]."""
    keys = list(hindsight)
    bias = [(statistics.mean(hindsight[k][1:]) / hindsight[k][0] - 1.0) * 100 for k in keys]
    bench = [(objectives[k][0] / hindsight[k][0] - 1.0) * 100 for k in keys]
    fair = [(statistics.mean(objectives[k]) / statistics.mean(hindsight[k][1:]) - 1.0) * 100 for k in keys]
    return {
        "selection_bias_percent": {"mean": statistics.mean(bias), "median": statistics.median(bias),
                                   "min": min(bias), "max": max(bias)},
        "gap_bench_percent": {"mean": statistics.mean(bench), "median": statistics.median(bench),
                              "at_least": sum(1 for g in bench if g >= 0)},
        "gap_unbiased_percent": {"mean": statistics.mean(fair), "median": statistics.median(fair),
                                 "at_least": sum(1 for g in fair if g >= 0)},
        "within_0_2_percent": sum(1 for g in bench if abs(g) < 0.2),
    }


#: How many scenarios :func:`compare` names among the largest moves each way.
MOVERS = 5


def compare(objectives: Dict[str, List[float]], theirs: Mapping[str, Sequence[float]]) -> Dict[str, Any]:
    """This run against an earlier one's objectives (every scenario of this run in them): the paired
    difference of mean J in % of J, its standard error, and the scenarios that moved beyond their spread."""
    diffs: Dict[str, float] = {}
    variance, better, worse = 0.0, 0, 0
    for name, mine in objectives.items():
        other = [float(v) for v in theirs[name]]
        base = statistics.mean(other)
        diff = (statistics.mean(mine) / base - 1.0) * 100
        # The variance of this scenario's difference, from each side's draws (% of J, squared).
        var = (_sd(mine) ** 2 / len(mine) + _sd(other) ** 2 / len(other)) / base ** 2 * 100 ** 2
        diffs[name] = diff
        variance += var
        better += diff > 2 * math.sqrt(var) and diff > 0
        worse += diff < -2 * math.sqrt(var) and diff < 0
    ranked = sorted(diffs.items(), key=lambda item: item[1])
    values = list(diffs.values())
    return {"scenarios": len(values), "mean_difference_percent": statistics.mean(values),
            "standard_error_percent": math.sqrt(variance) / len(values), "better": better, "worse": worse,
            "up": sum(1 for d in values if d > 0), "down": sum(1 for d in values if d < 0),
            "differences_percent": values,
            # The scenarios to read first: the largest moves each way (at most MOVERS, signed as named).
            "largest_down": [(n, d) for n, d in ranked[:MOVERS] if d < 0],
            "largest_up": [(n, d) for n, d in reversed(ranked[-MOVERS:]) if d > 0]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="How much of an adaptation figure is chance: each drawn scenario run several times "
                    "with the same queries and other routing draws.")
    parser.add_argument("--random", type=int, default=20, metavar="N", help="scenarios drawn per seed (default 20)")
    parser.add_argument("--seed", type=int, action="append", metavar="S",
                        help="generator seed; repeat for several (default 1, none with --scenario)")
    _common.add_scenario_option(parser)
    parser.add_argument("--repeats", type=int, default=4, metavar="R",
                        help="runs per scenario, the bench's own draws first (default 4, at least 2)")
    parser.add_argument("--policy", default="strategy:adaptive", help="the policy to run (default strategy:adaptive)")
    parser.add_argument("--rules", default=None, help="strategy rules folder (default: the bundled rules)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help=f"scenarios at {QUICK_TIME_SCALE:g}x their length (a smoke run, not figures)")
    parser.add_argument("--hindsight", action="store_true",
                        help="also search perclass_hindsight the bench's way and rerun its split on the other "
                             "draws: its selection bias, and the gap to it unbiased")
    parser.add_argument("--baseline", metavar="FILE",
                        help="an earlier run's --json (same scenarios): the paired difference of mean J against it")
    add_tell_option(parser, "what a perfect local-model estimator would buy (compare with --baseline)")
    parser.add_argument("--tell-slots-error", type=float, default=0.0, metavar="SIGMA",
                        help="with --tell-local-model: the told slots times exp(N(0, SIGMA)), one factor a "
                             "scenario (drawn from its name): how right a slots estimate must be")
    parser.add_argument("--tell-slots-error-each-cycle", action="store_true",
                        help="with --tell-slots-error: a fresh factor each cycle, not one a scenario")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.random < 1 or args.repeats < 2 or args.jobs < 1:
        parser.error("--random and --jobs must be at least 1, --repeats at least 2")
    if args.tell_local_model and not args.policy.startswith("strategy:"):
        parser.error("--tell-local-model needs a strategy:<name> policy (a static policy has no estimator)")
    tells_slots = bool(args.tell_local_model) and TELLS[args.tell_local_model][1] is not None
    asked = args.tell_slots_error != 0 or args.tell_slots_error_each_cycle
    if asked and (args.tell_slots_error <= 0 or not tells_slots):
        parser.error("--tell-slots-error SIGMA (at least 0; --tell-slots-error-each-cycle with it) needs a "
                     "--tell-local-model that tells the slots")
    seeds = args.seed or ([] if args.scenario else [1])
    named = [name for name, _ in _common.named_scenarios(args.scenario, parser)]  # loads each once: errors now
    names = [scenario_name(s, i) for s in seeds for i in range(args.random)] + named
    theirs: Optional[Mapping[str, Sequence[float]]] = None
    if args.baseline:
        try:
            with open(args.baseline, encoding="utf-8") as fh:
                baseline = json.load(fh)
        except (OSError, ValueError) as err:
            parser.error(f"--baseline {args.baseline}: {err}")
        theirs = baseline.get("objectives") if isinstance(baseline, dict) else None
        if not isinstance(theirs, dict):
            parser.error(f"--baseline {args.baseline}: no 'objectives' in it: not a JSON written by this script")
        missing = [name for name in names if name not in theirs]
        if missing:
            parser.error(f"--baseline {args.baseline}: it has no runs of {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''} (run it with the same --random, --seed and "
                         "--scenario)")
    told = f", the local model told ({args.tell_local_model})" if args.tell_local_model else ""
    slots_error = (args.tell_slots_error, args.tell_slots_error_each_cycle)
    if args.tell_slots_error:
        told += (f", its slots off by exp(N(0, {args.tell_slots_error:g})) "
                 f"{'each cycle' if args.tell_slots_error_each_cycle else 'a scenario'}")
    what = [f"{args.random} scenarios x seeds {', '.join(map(str, seeds))}"] if seeds else []
    what += [", ".join(named)] if named else []
    info = _common.announce(f"adaptation noise: {args.policy}{told}, {' and '.join(what)}, "
                            f"{args.repeats} routing draws each")
    jobs: List[Job] = [(name, None, HINDSIGHT, None, args.quick, args.repeats, None, (0.0, False))
                       for name in names if args.hindsight]
    jobs += [(name, None if r == 0 else r, args.policy, args.rules, args.quick, args.repeats, args.tell_local_model,
              slots_error) for name in names for r in range(args.repeats)]
    started = time.perf_counter()
    objectives: Dict[str, List[float]] = {}
    hindsight: Dict[str, List[float]] = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        for name, policy, values in pool.map(_run, jobs):  # in job order: repeats in order
            if policy == HINDSIGHT:
                hindsight[name] = values
            else:
                objectives.setdefault(name, []).extend(values)
    figures = summarize(objectives)
    if hindsight:
        figures["hindsight"] = hindsight_figures(objectives, hindsight)
    if theirs is not None:
        figures["compared"] = compare(objectives, theirs)
    print(f"\n{'scenario':16s} {'mean J':>8s} {'sd':>8s} {'sd %':>6s} {'min':>8s} {'max':>8s}")
    for name, values in objectives.items():
        mean = statistics.mean(values)
        print(f"{name:16s} {mean:8.4f} {_sd(values):8.4f} {_sd(values) / mean * 100:6.2f} "
              f"{min(values):8.4f} {max(values):8.4f}")
    spread = figures["scenario_spread_percent"]
    print(f"\none scenario's J, spread from routing draws alone: median {spread['median']:.2f}%, "
          f"largest {spread['max']:.2f}%")
    print("suite mean J per run: " + ", ".join(f"{m:.4f}" for m in figures["suite_means"]) +
          f"; sd {figures['suite_mean_sd']:.4f} ({figures['suite_mean_sd_percent']:.2f}% of J)")
    print(f"a change of the suite mean J smaller than about {figures['detectable_change_percent']:.2f}% "
          f"is inside chance (2 x sqrt 2 x sd)")
    print("scenarios whose J moved by more than 1% from the first run: " +
          ", ".join(f"{m:.0f}%" for m in figures["moved_over_1_percent"]))
    if hindsight:
        h = figures["hindsight"]
        b, g, u = h["selection_bias_percent"], h["gap_bench_percent"], h["gap_unbiased_percent"]
        n = len(hindsight)
        print(f"\nperclass_hindsight on the other draws against its search score (selection bias): "
              f"mean {b['mean']:+.3f}%, median {b['median']:+.3f}%, from {b['min']:+.3f}% to {b['max']:+.3f}%")
        print(f"{args.policy} against perclass_hindsight, the bench's way (one draw, the search's score): "
              f"mean {g['mean']:+.3f}%, median {g['median']:+.3f}%, at least it in {g['at_least']} of {n}")
        print(f"the same unbiased (means over the draws; the split on fresh draws): mean {u['mean']:+.3f}%, "
              f"median {u['median']:+.3f}%, at least it in {u['at_least']} of {n}")
        print(f"scenarios within 0.2% of it the bench's way (a verdict chance can flip): "
              f"{h['within_0_2_percent']} of {n}")
    if theirs is not None:
        c = figures["compared"]
        verdict = ("inside chance" if abs(c["mean_difference_percent"]) <= 2 * c["standard_error_percent"]
                   else "beyond chance")
        print(f"\nagainst {args.baseline}: mean J {c['mean_difference_percent']:+.3f}% "
              f"(standard error {c['standard_error_percent']:.3f}%: {verdict}); better beyond its own spread in "
              f"{c['better']} of {c['scenarios']} scenarios, worse in {c['worse']}; mean up in {c['up']}, "
              f"down in {c['down']}")
        for label, movers in (("down most", c["largest_down"]), ("up most", c["largest_up"])):
            if movers:
                print(f"  {label}: " + ", ".join(f"{n} {d:+.2f}%" for n, d in movers))
    print(f"({len(jobs)} runs in {time.perf_counter() - started:.0f} s with {args.jobs} jobs)")
    if args.json:
        _common.write_json(args.json, {"machine": info, "policy": args.policy, "seeds": seeds, "named": named,
                                       "local_model_told": args.tell_local_model,
                                       "told_slots_error": {"sigma": args.tell_slots_error,
                                                            "each_cycle": args.tell_slots_error_each_cycle},
                                       "random": args.random, "quick": args.quick,
                                       "objectives": objectives, "hindsight_objectives": hindsight,
                                       **figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
