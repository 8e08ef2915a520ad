"""The adaptation benchmark: does adapting help, and how fast does it react?

    results = run_suite(["api_outage"], seed=1, quick=True)
    results["scenarios"]["api_outage"]["ranking"]     # policies, best first
    print(format_report(results))

Each scenario of the suite runs in virtual time once per policy: the
adaptive strategy, each fixed strategy (``strategy:<name>``), the static
policies (``all_local``, ``all_api``, ``fixed_50_50``) and the oracle. Every
run of a scenario sees the same queries and the same random draws (the
workload is a function of the scenario and the seed), so differences are the
policies'. Policies are ranked by one composite objective
(:mod:`dualtrack.simulation.objective`); reaction time is the number of
adaptation intervals after each regime change until the preferences move in
the direction the scenario file expects.

Targets (``docs/benchmarks.md``): in every scenario with a regime change the
adaptive strategy beats the best static policy, stays within 15% of the
oracle, and reacts to each change within two adaptation intervals.
"""

from __future__ import annotations

import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..simulation import (OBJECTIVE, ORACLE, STATIC_POLICIES, Scenario, Simulation, check_policy, load_scenario,
                          scenario_names)

ADAPTIVE = "strategy:adaptive"
FIXED_STRATEGIES: Tuple[str, ...] = ("balanced", "latency_focused", "resource_efficient", "quality_focused", "cost")
DEFAULT_POLICIES: Tuple[str, ...] = ((ADAPTIVE,) + tuple(f"strategy:{s}" for s in FIXED_STRATEGIES)
                                     + STATIC_POLICIES + (ORACLE,))
QUICK_POLICIES: Tuple[str, ...] = (ADAPTIVE,) + STATIC_POLICIES + (ORACLE,)
#: ``--quick`` runs each scenario's timeline compressed to this fraction (1 h -> 15 min).
QUICK_TIME_SCALE = 0.25
#: Targets.
ORACLE_GAP_LIMIT = 0.15
REACTION_LIMIT_INTERVALS = 2
SCHEMA = "dualtrack.bench.adaptation/1"

_STRATEGY_CACHE: Dict[Optional[str], Any] = {}


def _strategies(rules_path: Optional[str]) -> Any:
    """Rules loaded once per process (parsing them per run would dominate short runs)."""
    if rules_path not in _STRATEGY_CACHE:
        from ..adapter.strategy import load_strategies
        from ..bundled import bundled_dir

        _STRATEGY_CACHE[rules_path] = load_strategies(rules_path or bundled_dir("rules"))
    return _STRATEGY_CACHE[rules_path]


def _prepare(name: str, quick: bool) -> Scenario:
    scenario = load_scenario(name)
    return scenario.time_scaled(QUICK_TIME_SCALE) if quick else scenario


def _run_one(job: Tuple[str, str, Optional[int], bool, Optional[str], bool]) -> Dict[str, Any]:
    name, policy, seed, quick, rules_path, series = job
    scenario = _prepare(name, quick)
    sim = Simulation(scenario, policy, seed=seed, strategies=_strategies(rules_path), measure_reactions=True)
    result = sim.run()
    out = result.to_dict(series=series)
    out["objective_components"] = {k: round(v, 6) for k, v in OBJECTIVE.components(result.summary).items()}
    return out


def run_suite(scenarios: Optional[Iterable[str]] = None, policies: Optional[Iterable[str]] = None,
              seed: Optional[int] = None, *, quick: bool = False, jobs: int = 1, rules_path: Optional[str] = None,
              series: bool = False, progress: Optional[Callable[[str, str, Dict[str, Any]], None]] = None
              ) -> Dict[str, Any]:
    """Run every scenario with every policy; return JSON-ready results with rankings and targets.

    ``scenarios``: names or files (default: every bundled scenario);
    ``policies``: default :data:`DEFAULT_POLICIES` (:data:`QUICK_POLICIES`
    with ``quick``); ``seed``: one seed for every scenario (default: each
    scenario's own); ``quick``: timelines compressed to a quarter;
    ``jobs``: worker processes; ``series``: keep every run's per-interval
    time series in the results. Deterministic for a seed, except the
    ``wall_seconds`` fields.
    """
    # The suite: every bundled scenario but the demo's (90 s of real time, a show, not a test).
    names = list(scenarios) if scenarios is not None else [n for n in scenario_names() if n != "demo"]
    chosen = [check_policy(p) for p in (policies if policies is not None else
                                          (QUICK_POLICIES if quick else DEFAULT_POLICIES))]
    loaded = {name: _prepare(name, quick) for name in names}  # validate everything before running anything
    _strategies(rules_path)
    jobs_list = [(name, policy, seed, quick, rules_path, series) for name in names for policy in chosen]
    started = time.perf_counter()
    runs: List[Dict[str, Any]] = []
    if jobs > 1 and len(jobs_list) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for job, out in zip(jobs_list, pool.map(_run_one, jobs_list)):
                runs.append(out)
                if progress is not None:
                    progress(job[0], job[1], out)
    else:
        for job in jobs_list:
            out = _run_one(job)
            runs.append(out)
            if progress is not None:
                progress(job[0], job[1], out)
    wall = time.perf_counter() - started

    results: Dict[str, Any] = {
        "schema": SCHEMA,
        "seed": seed,
        "quick": quick,
        "policies": chosen,
        "objective": {"weights": OBJECTIVE.as_dict(),
                      "formula": "J = 0.35*useful + 0.25*within_target + 0.15*quality + 0.10*savings "
                                 "+ 0.15*compliance (docs/benchmarks.md)"},
        "targets": {"beats_best_static": True, "oracle_gap_limit": ORACLE_GAP_LIMIT,
                    "reaction_limit_intervals": REACTION_LIMIT_INTERVALS},
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "wall_seconds": round(wall, 3),
        "scenarios": {},
    }
    by_scenario: Dict[str, Dict[str, Any]] = {}
    for (name, policy, *_), out in zip(jobs_list, runs):
        by_scenario.setdefault(name, {})[policy] = out
    for name in names:
        results["scenarios"][loaded[name].name if name in loaded else name] = _analyse(loaded[name],
                                                                                       by_scenario[name])
    results["summary"] = _overall(results["scenarios"])
    return results


def _analyse(scenario: Scenario, runs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    scores = {p: r["summary"]["objective"] for p, r in runs.items()}
    ranking = sorted(scores, key=lambda p: (-scores[p], p))
    statics = [p for p in runs if p in STATIC_POLICIES]
    best_static = max(statics, key=lambda p: (scores[p], p)) if statics else None
    out: Dict[str, Any] = {
        "description": scenario.description,
        "duration_seconds": scenario.duration,
        "adaptation_interval_seconds": scenario.adaptation_interval,
        "regime_changes": len(scenario.timeline),
        "events": [{"t": e.at, "label": e.label,
                    "expect": e.expect.describe() if e.expect else None} for e in scenario.timeline],
        "ranking": ranking,
        "best_static": best_static,
        "policies": {},
    }
    oracle = scores.get(ORACLE)
    for policy in ranking:
        run = runs[policy]
        entry = dict(run)
        entry["rank"] = ranking.index(policy) + 1
        if oracle is not None and oracle > 0:
            entry["oracle_gap"] = round((oracle - scores[policy]) / oracle, 6)
        reactions = [r for r in run["reactions"] if r.get("applicable")]
        if reactions:
            intervals = [r["published_intervals"] for r in reactions]
            entry["reaction_max_intervals"] = None if any(i is None for i in intervals) else max(intervals)
        out["policies"][policy] = entry
    if ADAPTIVE in runs:
        a = scores[ADAPTIVE]
        target: Dict[str, Any] = {"objective": a}
        if best_static is not None:
            target["best_static"] = best_static
            target["best_static_objective"] = scores[best_static]
            target["margin_over_best_static"] = round(a - scores[best_static], 6)
            target["beats_best_static"] = a > scores[best_static]
        if oracle is not None:
            target["oracle_objective"] = oracle
            target["oracle_gap"] = round((oracle - a) / oracle, 6) if oracle > 0 else None
            target["within_oracle_limit"] = target["oracle_gap"] is not None and target["oracle_gap"] <= ORACLE_GAP_LIMIT
            if best_static is not None and oracle > scores[best_static]:
                # How much of the oracle's lead over the best static policy adaptation recovers.
                target["oracle_lead_captured"] = round((a - scores[best_static]) / (oracle - scores[best_static]), 4)
        reactions = [r for r in runs[ADAPTIVE]["reactions"] if r.get("applicable")]
        target["reactions"] = [{"t": r["t"], "label": r["label"], "expect": r["expect"],
                                "intervals": r["published_intervals"], "applied_intervals": r["intervals"]}
                               for r in reactions]
        target["reacts_in_time"] = all(r["published_intervals"] is not None
                                       and r["published_intervals"] <= REACTION_LIMIT_INTERVALS for r in reactions)
        target["applies"] = len(scenario.timeline) > 0
        out["adaptive"] = target
    return out


def _overall(scenarios: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    checked = {n: s["adaptive"] for n, s in scenarios.items() if "adaptive" in s and s["adaptive"]["applies"]}
    return {
        "scenarios_with_regime_changes": sorted(checked),
        "beats_best_static_everywhere": all(t.get("beats_best_static", False) for t in checked.values()),
        "within_oracle_limit_everywhere": all(t.get("within_oracle_limit", False) for t in checked.values()),
        "reacts_in_time_everywhere": all(t.get("reacts_in_time", False) for t in checked.values()),
        "misses": sorted(
            [f"{n}: {what}" for n, t in checked.items() for what, ok in (
                ("does not beat the best static policy", t.get("beats_best_static", False)),
                ("more than 15% below the oracle", t.get("within_oracle_limit", False)),
                ("reacts late or not at all", t.get("reacts_in_time", False))) if not ok]),
    }


# ------------------------------------------------------------------ report

_COLUMNS = ("policy", "p95 s", "in target", "cost $", "quality", "useful", "viol s", "failed", "J", "vs oracle",
            "reaction", "applied")


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _reaction_text(run: Dict[str, Any], key: str) -> str:
    reactions = [r for r in run["reactions"] if r.get("applicable")]
    if not reactions:
        return "-"
    return ",".join("x" if r[key] is None else str(r[key]) for r in reactions)


def format_scenario(name: str, data: Dict[str, Any]) -> str:
    rows: List[Sequence[str]] = []
    for policy in data["ranking"]:
        run = data["policies"][policy]
        s = run["summary"]
        gap = run.get("oracle_gap")
        rows.append((
            policy.replace("strategy:", ""),
            _fmt(s["p95_latency_seconds"], ".2f"),
            _fmt(s["within_target_ratio"] * 100, ".1f") + "%",
            _fmt(s["total_cost"], ".2f"),
            _fmt(s["quality_mean"], ".3f"),
            _fmt(s["useful_ratio"] * 100, ".1f") + "%",
            _fmt(s["violation_seconds"], ".0f"),
            str(s["failed"]),
            _fmt(s["objective"], ".4f"),
            "-" if gap is None or policy == ORACLE else f"{-gap * 100:+.1f}%",
            _reaction_text(run, "published_intervals"),
            _reaction_text(run, "intervals"),
        ))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(_COLUMNS)]
    lines = [f"== {name} ({data['duration_seconds'] / 60:g} min, {data['regime_changes']} regime changes; "
             f"adaptation every {data['adaptation_interval_seconds']:g}s)"]
    for e in data["events"]:
        lines.append(f"   {e['t'] / 60:5.1f} min  {e['label']}" + (f"  [expect {e['expect']}]" if e["expect"] else ""))
    lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(_COLUMNS, widths))))
    for r in rows:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    a = data.get("adaptive")
    if a is not None:
        parts = []
        if "beats_best_static" in a:
            parts.append(f"adaptive {'beats' if a['beats_best_static'] else 'does NOT beat'} best static "
                         f"({a['best_static']}) by {a['margin_over_best_static']:+.4f}")
        if a.get("oracle_gap") is not None:
            parts.append(f"{a['oracle_gap'] * 100:.1f}% below the oracle")
        if "oracle_lead_captured" in a:
            parts.append(f"captures {a['oracle_lead_captured'] * 100:.0f}% of the oracle's lead over best static")
        if a["reactions"]:
            parts.append("reacts " + ("within" if a["reacts_in_time"] else "NOT within")
                         + f" {REACTION_LIMIT_INTERVALS} intervals")
        lines.append("  " + "; ".join(parts))
    return "\n".join(lines)


def format_report(results: Dict[str, Any]) -> str:
    """The per-scenario tables and the verdict on the targets, as text."""
    out = []
    for name, data in results["scenarios"].items():
        out.append(format_scenario(name, data))
        out.append("")
    s = results["summary"]
    out.append("J = 0.35*useful + 0.25*in-target + 0.15*quality + 0.10*savings + 0.15*compliance (higher is "
               "better). reaction: per event, adaptation intervals until the published preferences moved as "
               "expected (vs the same run without the event; x = not before the next event); applied: the same "
               "for the preferences the router applied, immediate overrides included")
    verdict = "all targets met" if not s["misses"] else "targets missed: " + "; ".join(s["misses"])
    out.append(f"targets ({len(s['scenarios_with_regime_changes'])} scenarios with regime changes): {verdict}")
    out.append(f"ran in {results['wall_seconds']:.1f}s on {results['machine']['platform']} "
               f"({results['machine']['cpus']} CPUs)")
    return "\n".join(out)


__all__ = ["ADAPTIVE", "DEFAULT_POLICIES", "QUICK_POLICIES", "format_report", "format_scenario", "run_suite"]
