"""The adaptation benchmark: does adapting help, and how fast does it react?

    results = run_suite(["api_outage"], quick=True)
    results["scenarios"]["api_outage"]["ranking"]       # policies, best first
    results = run_suite(random=40, seeds=[1], jobs=2)   # 40 scenarios drawn for seed 1
    print(format_report(results))

Each scenario runs in virtual time once per policy: the adaptive strategy
(and, with ``all_strategies``, each fixed strategy), the static policies
(``all_local``, ``all_api``, ``fixed_50_50``), two per-class static splits
-- ``perclass_steady`` (the best split on the shipped ``steady`` scenario,
applied unchanged everywhere) and ``perclass_hindsight`` (the best split for
this very scenario, found by running the candidates) -- and the ``oracle``
(the best of three upper references, :mod:`dualtrack.simulation.reference`).
Every run of a scenario sees the same queries and random draws, so the
differences are the policies'. Policies are ranked by one objective
(:mod:`dualtrack.simulation.objective`); reaction time is the number of
adaptation intervals after each regime change until the preferences move
the way the scenario file expects. The targets and how each figure is
computed: :mod:`.verdicts`; the text report: :mod:`.report`; the jobs run in
worker processes: :mod:`.jobs`.

The shipped suite is every bundled scenario but the demo's; ``random=N``
draws N scenarios per generator seed instead
(:mod:`dualtrack.simulation.generator`), ``save`` writes them as scenario
files so that any run can be replayed. Deterministic for a seed, except the
``wall_seconds`` and ``job_seconds`` fields.
"""

from __future__ import annotations

import copy
import os
import platform
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ..simulation import (
    OBJECTIVE,
    ORACLE,
    STATIC_POLICIES,
    Scenario,
    check_policy,
    choose_oracle,
    generate_suite,
    load_scenario,
    perclass_policy,
    save_scenarios,
    scenario_names,
)
from ..simulation.hindsight import GRID_LEVELS, METHODS
from ..simulation.planners import STRATEGY_PREFIX, strategy_set
from .jobs import PERCLASS_HINDSIGHT, PERCLASS_STEADY, BaselineJob, PolicyJob, run_baselines, run_policy
from .report import format_report, format_scenario
from .verdicts import (
    ADAPTIVE,
    ORACLE_GAP_LIMIT,
    RANDOM_TARGETS,
    REACTION_LIMIT_INTERVALS,
    STEADY_TOLERANCE,
    analyse_scenario,
    overall,
)

FIXED_STRATEGIES: Tuple[str, ...] = ("balanced", "latency_focused", "resource_efficient", "quality_focused", "cost")
FIXED_STRATEGY_POLICIES: Tuple[str, ...] = tuple(STRATEGY_PREFIX + s for s in FIXED_STRATEGIES)
BASELINE_POLICIES: Tuple[str, ...] = STATIC_POLICIES + (PERCLASS_STEADY, PERCLASS_HINDSIGHT, ORACLE)
#: What a run compares by default: the adaptive strategy and the baselines (the fixed strategies are opt-in).
DEFAULT_POLICIES: Tuple[str, ...] = (ADAPTIVE,) + BASELINE_POLICIES
ALL_POLICIES: Tuple[str, ...] = (ADAPTIVE,) + FIXED_STRATEGY_POLICIES + BASELINE_POLICIES
QUICK_POLICIES: Tuple[str, ...] = DEFAULT_POLICIES
#: ``quick`` runs each timeline compressed to this fraction (1 h -> 15 min) ...
QUICK_TIME_SCALE = 0.25
#: ... and searches the per-class splits on this coarser grid.
QUICK_LEVELS: Tuple[float, ...] = (0.0, 0.5, 1.0)
STEADY = "steady"
SCHEMA = "dualtrack.bench.adaptation/1"
SUITES = ("shipped", "random")


#: A strategy policy with this suffix reads the simulated local server's load gauges
#: (queue depth, running, slots) besides the request metrics: what they buy is measured.
SERVER_SIGNALS = "+server"
#: A strategy or static policy with this suffix hedges slow single-track calls as the router does
#: (:class:`~dualtrack.router.hedging.HedgePolicy` with its defaults: p95 delay, 10% budget).
HEDGE = "+hedge"


def split_bench_policy(policy: str) -> Tuple[str, bool, bool]:
    """``(simulation policy, server signals, hedge)`` of a bench policy name, its suffixes in any order."""
    base, server, hedge = policy, False, False
    while True:
        if base.endswith(SERVER_SIGNALS) and not server:
            base, server = base[:-len(SERVER_SIGNALS)], True
        elif base.endswith(HEDGE) and not hedge:
            base, hedge = base[:-len(HEDGE)], True
        else:
            return base, server, hedge


def check_bench_policy(policy: str) -> str:
    """A policy the benchmark can run: a simulation policy, ``perclass_steady`` or ``perclass_hindsight``;
    ``strategy:<name>+server``: the strategy reading the local server's own load gauges too;
    ``<policy>+hedge``: a strategy or a static policy hedging slow calls (both: ``strategy:adaptive+server+hedge``)."""
    if policy in (PERCLASS_STEADY, PERCLASS_HINDSIGHT):
        return policy
    base, server, hedge = split_bench_policy(policy)
    if "+" in base:
        raise ValueError(f"policy {policy!r}: unknown suffix {base[base.index('+'):]!r}; expected {SERVER_SIGNALS} "
                         f"or {HEDGE}, each at most once")
    if server and not base.startswith(STRATEGY_PREFIX):
        raise ValueError(f"policy {policy!r}: {SERVER_SIGNALS} goes after a strategy (strategy:adaptive"
                         f"{SERVER_SIGNALS})")
    if hedge and (base == ORACLE or base in (PERCLASS_STEADY, PERCLASS_HINDSIGHT)):
        raise ValueError(f"policy {policy!r}: {HEDGE} goes after a strategy or a static policy (strategy:adaptive"
                         f"{HEDGE}, all_local{HEDGE}, perclass:...{HEDGE}), not after {base}")
    check_policy(base)
    return policy


@dataclass
class _Item:
    """One scenario of the suite, with the seed it runs with."""

    key: str
    scenario: Scenario
    seed: int
    info: Dict[str, Any] = field(default_factory=dict)
    runs: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    baselines: Optional[Dict[str, Any]] = None


def _prepare(scenario: Scenario, quick: bool) -> Scenario:
    return scenario.time_scaled(QUICK_TIME_SCALE) if quick else scenario


def _shipped_items(names: Sequence[str], seeds: Sequence[Optional[int]], quick: bool) -> List[_Item]:
    items = []
    for name in names:
        scenario = _prepare(load_scenario(name), quick)  # validate everything before running anything
        for seed in seeds:
            run_seed = scenario.seed if seed is None else seed
            key = scenario.name if len(seeds) == 1 else f"{scenario.name}@{run_seed}"
            items.append(_Item(key, scenario, run_seed))
    keys = [i.key for i in items]
    if len(set(keys)) != len(keys):
        raise ValueError("scenarios: the same scenario twice (" + ", ".join(sorted({k for k in keys
                                                                                     if keys.count(k) > 1})) + ")")
    return items


def _random_items(count: int, seeds: Sequence[int], quick: bool, save: Optional[Union[str, Path]]) -> List[_Item]:
    drawn = generate_suite(count, seeds)
    if save is not None:
        save_scenarios([data for data, _ in drawn], save)
    items = []
    for i, (data, scenario) in enumerate(drawn):
        seed, index = seeds[i // count], i % count
        item = _Item(scenario.name, _prepare(scenario, quick), scenario.seed)
        item.info["generated"] = {"seed": seed, "index": index}
        if save is not None:
            item.info["file"] = str(Path(save) / f"{data['name']}.yaml")
        items.append(item)
    return items


def _info(item: _Item) -> Dict[str, Any]:
    s = item.scenario
    info = {
        "description": s.description,
        "duration_seconds": s.duration,
        "adaptation_interval_seconds": s.adaptation_interval,
        "regime_changes": len(s.timeline),
        "seed": item.seed,
        "events": [{"t": e.at, "label": e.label, "expect": e.expect.describe() if e.expect else None,
                    "kind": e.expect.kind if e.expect else None} for e in s.timeline],
    }
    info.update(item.info)
    return info


def material(scenario: Scenario, segments: Sequence[Mapping[str, Any]], reaction: Mapping[str, Any]) -> Optional[bool]:
    """Did the best split in hindsight move the way an event's ``local_bias`` expectation says?

    The split schedule (:func:`~dualtrack.simulation.hindsight.search_schedule`) picks the
    best per-class split for each segment between regime changes. If it keeps local's share
    where it was across an event, or moves it the other way, then moving as the event's
    ``expect`` says was worth nothing in this scenario: the event is not *material*, and an
    objective-driven strategy that does not react to it is right. None for expectations on
    other preferences (the schedule only splits traffic)."""
    event = next((e for e in scenario.timeline if abs(e.at - reaction["t"]) < 1e-6 and e.expect), None)
    if event is None or event.expect is None or event.expect.preference != "local_bias":
        return None
    before = [seg for seg in segments if seg["from_seconds"] < event.at - 1e-6]
    after = [seg for seg in segments if seg["from_seconds"] <= event.at + 1e-6]
    if not before or not after:
        return None
    weights = scenario.class_shares
    classes = [event.expect.query_class] if event.expect.query_class else list(weights)

    def local_share(split: Mapping[str, float]) -> float:
        total = sum(weights[c] for c in classes)
        return sum(weights[c] * split.get(c, 0.0) for c in classes) / total if total > 0 else 0.0

    moved = local_share(after[-1]["split"]) - local_share(before[-1]["split"])
    return moved > 1e-9 if event.expect.direction == "up" else moved < -1e-9


def _inapplicable_reactions(scenario: Scenario) -> List[Dict[str, Any]]:
    """What a policy without preferences reports for each expected reaction: not applicable."""
    return [{"t": round(e.at, 6), "label": e.label, "expect": e.expect.describe(), "kind": e.expect.kind,
             "applicable": False, "intervals": None, "published_intervals": None}
            for e in scenario.timeline if e.expect is not None]


Task = Tuple[Tuple[str, str], Callable[[Any], Dict[str, Any]], Any]


def _execute(tasks: Iterable[Task], jobs: int,
             on_done: Callable[[Tuple[str, str], Dict[str, Any]], List[Task]]) -> None:
    """Run the tasks (in order, ``jobs`` at a time); ``on_done`` may answer with more tasks."""
    pending: Deque[Task] = deque(tasks)
    if jobs <= 1:
        while pending:
            tag, fn, job = pending.popleft()
            pending.extend(on_done(tag, fn(job)))
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        running: Dict[Future[Dict[str, Any]], Tuple[str, str]] = {}
        for tag, fn, job in pending:
            running[pool.submit(fn, job)] = tag
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: running[f]):  # a fixed order for the callbacks
                tag = running.pop(future)
                for new_tag, fn, job in on_done(tag, future.result()):
                    running[pool.submit(fn, job)] = new_tag


def run_suite(scenarios: Optional[Iterable[str]] = None, policies: Optional[Iterable[str]] = None,
              seed: Optional[int] = None, *, quick: bool = False, jobs: int = 1, rules_path: Optional[str] = None,
              series: bool = False, progress: Optional[Callable[[str, str, Dict[str, Any]], None]] = None,
              random: Optional[int] = None, seeds: Optional[Sequence[int]] = None,
              save: Optional[Union[str, Path]] = None, all_strategies: bool = False,
              hindsight_search: str = "auto") -> Dict[str, Any]:
    """Run every scenario with every policy; return JSON-ready results with rankings and targets.

    ``scenarios``: names or files (default: every bundled scenario but the
    demo's); ``random``: instead, draw that many scenarios per generator
    seed; ``seeds`` (or ``seed``): for the shipped suite, the seeds every
    scenario runs with (default: each scenario's own), for a random suite
    the generator seeds (default 1); ``save``: a folder to write the drawn
    scenarios to. ``policies``: default :data:`DEFAULT_POLICIES`, plus the
    fixed strategies with ``all_strategies``. ``quick``: timelines
    compressed to a quarter and the coarse split grid. ``jobs``: worker
    processes; ``series``: keep every run's per-interval time series.
    ``hindsight_search``: ``auto``, ``grid`` or ``descent``
    (:mod:`dualtrack.simulation.hindsight`).
    """
    if hindsight_search not in METHODS:
        raise ValueError(f"hindsight search: expected one of {', '.join(METHODS)}, got {hindsight_search!r}")
    if seed is not None and seeds is not None:
        raise ValueError("give seed or seeds, not both")
    run_seeds: List[Optional[int]] = list(seeds) if seeds is not None else [seed]
    if not run_seeds:
        raise ValueError("seeds: give at least one seed")
    chosen = list(policies) if policies is not None else list(ALL_POLICIES if all_strategies else DEFAULT_POLICIES)
    if policies is not None and all_strategies:
        chosen += [p for p in FIXED_STRATEGY_POLICIES if p not in chosen]
    chosen = [check_bench_policy(p) for p in chosen]
    if random is not None:
        if scenarios is not None:
            raise ValueError("give scenarios or a random suite, not both")
        generator_seeds = [1 if s is None else int(s) for s in run_seeds]
        items = _random_items(random, generator_seeds, quick, save)
        suite = "random"
    else:
        if save is not None:
            raise ValueError("save: only a random suite draws scenarios to save")
        names = list(scenarios) if scenarios is not None else [n for n in scenario_names() if n != "demo"]
        items = _shipped_items(names, run_seeds, quick)
        suite = "shipped"
    strategy_policies = [p for p in chosen if p.startswith(STRATEGY_PREFIX)]
    if strategy_policies:
        strategy_set(rules_path)  # a bad rules file fails here, before anything runs
    levels = QUICK_LEVELS if quick else GRID_LEVELS
    need_baselines = PERCLASS_HINDSIGHT in chosen or ORACLE in chosen
    need_steady = PERCLASS_STEADY in chosen

    by_key = {item.key: item for item in items}
    steady_split: Dict[str, Any] = {}
    tasks: List[Task] = []
    steady_key: Optional[str] = None
    if need_steady:
        steady = _prepare(load_scenario(STEADY), quick)
        shared = [i for i in items if i.scenario.name == STEADY and i.seed == steady.seed and need_baselines]
        if shared:
            steady_key = shared[0].key
        else:
            steady_key = "<steady reference>"
            tasks.append(((steady_key, "baselines"), run_baselines,
                          BaselineJob(steady_key, steady, steady.seed, levels, hindsight_search, schedule=False,
                                      search_only=True)))
        steady_split["seed"] = steady.seed
    # the steady reference first (perclass_steady waits for it), then the longest jobs: the baselines
    # run the scenario some fifty times each
    if need_baselines:
        for item in sorted(items, key=lambda i: (i.key != steady_key,
                                                 -i.scenario.duration * i.scenario.params["workload"]["rate"], i.key)):
            tasks.append(((item.key, "baselines"), run_baselines,
                          BaselineJob(item.key, item.scenario, item.seed, levels, hindsight_search, series=series)))
    for item in items:
        for policy in chosen:
            from_baselines = policy in (PERCLASS_HINDSIGHT, ORACLE) or (policy in STATIC_POLICIES and need_baselines)
            if from_baselines or policy == PERCLASS_STEADY:
                continue  # perclass_steady runs once the steady reference is known
            base, server, hedge = split_bench_policy(policy)
            tasks.append(((item.key, policy), run_policy,
                          PolicyJob(item.key, item.scenario, item.seed, base, policy, rules_path, series,
                                    server_signals=server, hedge=hedge)))

    def steady_tasks() -> List[Task]:
        out: List[Task] = []
        for item in items:
            if set(item.scenario.class_names) == set(steady_split["split"]):
                policy = perclass_policy({c: steady_split["split"][c] for c in item.scenario.class_names})
                out.append(((item.key, PERCLASS_STEADY), run_policy,
                            PolicyJob(item.key, item.scenario, item.seed, policy, PERCLASS_STEADY, None, series)))
            else:
                item.info["perclass_steady"] = {"split": None, "seed": steady_split["seed"],
                                                "note": "the scenario's query classes differ from steady's"}
        return out

    def on_done(tag: Tuple[str, str], out: Dict[str, Any]) -> List[Task]:
        key, what = tag
        more: List[Task] = []
        if what == "baselines":
            if key in by_key:
                by_key[key].baselines = out
            if need_steady and key == steady_key:
                steady_split["split"] = out["search"]["split"]
                more = steady_tasks()
        else:
            by_key[key].runs[what] = out
            if progress is not None:
                progress(key, what, out)
        return more

    started = time.perf_counter()
    _execute(tasks, jobs, on_done)
    wall = time.perf_counter() - started

    results: Dict[str, Any] = {
        "schema": SCHEMA,
        "suite": suite,
        "seed": seed,
        "seeds": _seeds(suite, items, run_seeds, random),
        "quick": quick,
        "policies": chosen,
        "objective": {"weights": OBJECTIVE.as_dict(),
                      "formula": "J = 0.35*useful + 0.25*within_target + 0.15*quality + 0.10*savings "
                                 "+ 0.15*compliance (docs/benchmarks.md)"},
        "targets": {"beats_best_static": True, "oracle_gap_limit": ORACLE_GAP_LIMIT,
                    "reaction_limit_intervals": REACTION_LIMIT_INTERVALS,
                    "shipped": {"at_least_hindsight_with_regime_changes": True,
                                "steady_tolerance": STEADY_TOLERANCE,
                                "applied_reaction_limits_intervals": {"onset": 1, "recovery": 2}},
                    "random": dict(RANDOM_TARGETS)},
        "hindsight": {"levels": list(levels), "search": hindsight_search},
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "jobs": jobs,
        "wall_seconds": round(wall, 3),
        "scenarios": {},
    }
    if need_steady:
        results["perclass_steady"] = dict(steady_split)
    for item in items:
        runs = _assemble(item, chosen, steady_split)
        results["scenarios"][item.key] = analyse_scenario(_info(item), runs)
    results["summary"] = overall(results["scenarios"], suite)
    return results


def _seeds(suite: str, items: Sequence[_Item], run_seeds: Sequence[Optional[int]],
           random: Optional[int]) -> Dict[str, Any]:
    if suite == "random":
        return {"generator": [1 if s is None else s for s in run_seeds], "per_seed": random,
                "runs": {i.key: i.seed for i in items}}
    return {"given": any(s is not None for s in run_seeds), "runs": {i.key: i.seed for i in items}}


def _assemble(item: _Item, chosen: Sequence[str], steady_split: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The policies' entries of one scenario, the baselines unpacked and the oracle chosen."""
    runs = dict(item.runs)
    base = item.baselines
    inapplicable = _inapplicable_reactions(item.scenario)
    if PERCLASS_STEADY in runs:
        runs[PERCLASS_STEADY]["split"] = steady_split["split"]
        item.info["perclass_steady"] = {"split": steady_split["split"], "seed": steady_split["seed"]}
    if base is not None:
        for name, run in base["statics"].items():
            runs[name] = run
        hindsight = base["hindsight"]
        search = dict(base["search"])
        steady_run = runs.get(PERCLASS_STEADY)
        if steady_run is not None and steady_run["summary"]["objective"] > hindsight["summary"]["objective"]:
            # the steady split is a split of the grid too: the search missed it, so it is the best found
            hindsight = copy.deepcopy(steady_run)
            hindsight["policy"] = PERCLASS_HINDSIGHT
            search.update(split=steady_split["split"], objective=steady_run["summary"]["objective"],
                          how=search["how"] + "; the steady split did better than the search found")
        runs[PERCLASS_HINDSIGHT] = hindsight
        item.info["hindsight"] = search
        schedule = base["schedule"]
        candidates = {"greedy": base["greedy"]["summary"]["objective"],
                      "split_schedule": schedule["summary"]["objective"] if schedule is not None else None,
                      "perclass_hindsight": hindsight["summary"]["objective"]}
        source = choose_oracle(candidates)
        picked = {"greedy": base["greedy"], "split_schedule": schedule, "perclass_hindsight": hindsight}[source]
        assert picked is not None
        oracle = copy.deepcopy(picked)
        oracle["policy"] = ORACLE
        oracle["oracle_source"] = source
        runs[ORACLE] = oracle
        item.info["oracle"] = {"source": source, "candidates": candidates,
                               "schedule": schedule["segments"] if schedule is not None else None}
        item.info["baselines_job_seconds"] = base["job_seconds"]
        if schedule is not None:
            for run in runs.values():
                for reaction in run.get("reactions") or []:
                    reaction["material"] = material(item.scenario, schedule["segments"], reaction)
    for run in runs.values():
        if not run.get("reactions") and inapplicable:
            run["reactions"] = copy.deepcopy(inapplicable)
    return {p: runs[p] for p in chosen if p in runs}


__all__ = [
    "ADAPTIVE", "ALL_POLICIES", "BASELINE_POLICIES", "DEFAULT_POLICIES", "FIXED_STRATEGIES",
    "FIXED_STRATEGY_POLICIES", "HEDGE", "QUICK_LEVELS", "QUICK_POLICIES", "SERVER_SIGNALS", "SUITES",
    "check_bench_policy", "format_report", "format_scenario", "run_suite", "split_bench_policy",
]
