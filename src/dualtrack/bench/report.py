"""The adaptation benchmark's text report: a table per scenario (a line per scenario for the random
suite) and the verdict on each target."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from ..simulation import ORACLE
from .verdicts import MIN_ORACLE_LEAD, RANDOM_REACTION_LIMIT, REACTION_LIMIT_INTERVALS

_PLURAL = {"onset": "onsets", "recovery": "recoveries"}
_COLUMNS = ("policy", "p95 s", "in target", "cost $", "quality", "useful", "viol s", "failed", "J", "vs oracle",
            "reaction", "applied")


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _reaction_text(run: Dict[str, Any], key: str) -> str:
    reactions = [r for r in run["reactions"] if r.get("applicable")]
    if not reactions:
        return "-"
    return ",".join("x" if r[key] is None else str(r[key]) for r in reactions)


def _split_text(split: Dict[str, float]) -> str:
    return " ".join(f"{c}={v:g}" for c, v in split.items())


def _table(columns: Sequence[str], rows: List[Sequence[str]]) -> List[str]:
    """Columns padded to their widest cell: the first left-aligned, the rest right-aligned."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(cells, widths,
                                                                                            strict=True)))
    return [line(columns)] + [line(r) for r in rows]


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
    lines = [f"== {name} ({data['duration_seconds'] / 60:g} min, {data['regime_changes']} regime changes; "
             f"adaptation every {data['adaptation_interval_seconds']:g}s; seed {data.get('seed', '-')})"]
    for e in data["events"]:
        expect = f"  [expect {e['expect']}, {e.get('kind') or 'onset'}]" if e["expect"] else ""
        lines.append(f"   {e['t'] / 60:5.1f} min  {e['label']}{expect}")
    lines.extend(_table(_COLUMNS, rows))
    lines.extend(_baseline_lines(data))
    a = data.get("adaptive")
    if a is not None:
        lines.append("  " + _adaptive_line(a))
    return "\n".join(lines)


def _baseline_lines(data: Dict[str, Any]) -> List[str]:
    lines = []
    search = data.get("hindsight")
    if search is not None:
        lines.append(f"  perclass_hindsight: {_split_text(search['split'])} ({search['how']})")
    steady = data.get("perclass_steady")
    if steady is not None:
        lines.append(f"  perclass_steady: {_split_text(steady['split'])} (best on steady, seed {steady['seed']})")
    oracle = data.get("oracle")
    if oracle is not None:
        candidates = ", ".join(f"{k} {v:.4f}" for k, v in oracle["candidates"].items() if v is not None)
        lines.append(f"  oracle = {oracle['source']} (candidates: {candidates})")
    return lines


def _adaptive_line(a: Dict[str, Any]) -> str:
    parts = []
    if "beats_best_static" in a:
        parts.append(f"adaptive {'beats' if a['beats_best_static'] else 'does NOT beat'} best static "
                     f"({a['best_static']}) by {a['margin_over_best_static']:+.4f}")
    if "margin_over_hindsight" in a:
        parts.append(f"{a['margin_over_hindsight']:+.4f} vs perclass_hindsight")
    if a.get("oracle_gap") is not None:
        parts.append(f"{a['oracle_gap'] * 100:.1f}% below the oracle")
    if a.get("hindsight_lead_captured") is not None:
        parts.append(f"captures {a['hindsight_lead_captured'] * 100:.0f}% of the oracle's lead over "
                     f"perclass_hindsight")
    if a["reactions"]:
        kinds = a["reactions_by_kind"]
        parts.append("applied reactions in time: " + ", ".join(
            f"{k['in_time']}/{k['events']} {_PLURAL[kind]} (<= {k['limit_intervals']})"
            for kind, k in kinds.items() if k["events"]))
    return "; ".join(parts)


def format_random_table(results: Dict[str, Any]) -> List[str]:
    """One line per random scenario."""
    columns = ("scenario", "events", "adaptive J", "best simple static", "hindsight J", "oracle J", "oracle is",
               "vs hindsight", "capture", "applied")
    rows: List[Sequence[str]] = []
    for name, data in results["scenarios"].items():
        a = data.get("adaptive") or {}
        oracle = data.get("oracle") or {}
        reactions = a.get("reactions", [])
        rows.append((
            name, str(data["regime_changes"]), _fmt(a.get("objective"), ".4f"),
            (f"{a['best_static']} {a['best_static_objective']:.4f}" if a.get("best_static") else "-"),
            _fmt(a.get("hindsight_objective"), ".4f"), _fmt(a.get("oracle_objective"), ".4f"),
            oracle.get("source", "-"),
            "-" if a.get("margin_over_hindsight") is None else f"{a['margin_over_hindsight']:+.4f}",
            "-" if a.get("hindsight_lead_captured") is None else f"{a['hindsight_lead_captured'] * 100:.0f}%",
            ",".join("x" if r["applied_intervals"] is None else str(r["applied_intervals"]) for r in reactions) or "-",
        ))
    return _table(columns, rows)


def format_policy_means(results: Dict[str, Any]) -> List[str]:
    """One line per policy, over every scenario it ran on: mean J, mean p95 latency, total cost, the share
    of queries raced on both tracks, and hedges (fired / won by the hedge) where the policy hedges."""
    columns = ("policy", "scenarios", "mean J", "mean p95 s", "cost $", "parallel", "hedged", "hedge won")
    rows: List[Sequence[str]] = []
    for policy in results["policies"]:
        summaries = [data["policies"][policy]["summary"] for data in results["scenarios"].values()
                     if policy in data["policies"]]
        if not summaries:
            continue
        n = len(summaries)
        p95s = [s["p95_latency_seconds"] for s in summaries if s["p95_latency_seconds"] is not None]
        requests = sum(s["requests"] for s in summaries)
        hedges = [s["hedges"] for s in summaries if "hedges" in s]
        fired = sum(h["fired"] for h in hedges)
        rows.append((
            policy.replace("strategy:", ""), str(n),
            f"{sum(s['objective'] for s in summaries) / n:.4f}",
            f"{sum(p95s) / len(p95s):.2f}" if p95s else "-",
            f"{sum(s['total_cost'] for s in summaries):.2f}",
            f"{sum(s['paths']['parallel'] for s in summaries) / requests * 100:.1f}%" if requests else "-",
            f"{fired / requests * 100:.1f}%" if hedges and requests else "-",
            f"{sum(h['won'] for h in hedges) / fired * 100:.0f}%" if hedges and fired else "-",
        ))
    return _table(columns, rows)


def _seeds_line(results: Dict[str, Any]) -> str:
    seeds = results["seeds"]
    if results["suite"] == "random":
        return (f"seeds: generator seed{'s' if len(seeds['generator']) > 1 else ''} "
                f"{', '.join(str(s) for s in seeds['generator'])}, {seeds['per_seed']} "
                f"scenario{'s' if seeds['per_seed'] != 1 else ''} each "
                f"(each run with its scenario's own seed)")
    runs = seeds["runs"]
    if len(set(runs.values())) == 1 and seeds.get("given"):
        return f"seeds: {next(iter(runs.values()))} for every scenario"
    return "seeds: " + ", ".join(f"{n} {s}" for n, s in runs.items()) + \
        (" (each scenario's own)" if not seeds.get("given") else "")


def verdict_lines(results: Dict[str, Any]) -> List[str]:
    s = results["summary"]
    lines = []
    kinds = s["reactions_by_kind"]
    if results["suite"] == "random":
        lines.append(f"targets (random suite, {len(results['scenarios'])} scenarios):")
        for t in s["random"].values():
            verdict = "not measured" if t["met"] is None else "met" if t["met"] else "MISSED"
            lines.append(f"  {t['text']}: {verdict}")
    else:
        shipped = s["shipped"]
        changing = shipped["at_least_hindsight"]
        still = shipped["within_steady_tolerance"]
        ok = sum(1 for v in changing.values() if v)
        lines.append(f"targets (shipped suite, {len(changing)} scenarios with regime changes):")
        lines.append(f"  adaptive >= perclass_hindsight: {ok} of {len(changing)}"
                     + ("" if ok == len(changing) else
                        " (MISSED: " + ", ".join(n for n, v in changing.items() if not v) + ")"))
        if still:
            lines.append(f"  within {shipped['steady_tolerance']:.1%} of perclass_hindsight without regime changes: "
                         + ", ".join(f"{n} {'yes' if v else 'NO'}" for n, v in still.items()))
        lines.append("  applied reactions: " + "; ".join(
            f"{k['in_time']} of {k['events']} {_PLURAL[kind]} within {k['limit_intervals']} interval"
            f"{'s' if k['limit_intervals'] > 1 else ''}" for kind, k in kinds.items()))
    lead = s.get("by_oracle_lead")
    if lead and lead["flat"]["scenarios"] and lead["leading"]["scenarios"]:
        flat, leading = lead["flat"], lead["leading"]
        lines.append(f"  (not a target: where the oracle leads perclass_hindsight by less than {MIN_ORACLE_LEAD:g} "
                     f"({flat['scenarios']} scenarios: nothing to adapt to, only learning to pay for) adaptive >= "
                     f"it in {flat['at_least_hindsight']}, median margin {flat['median_margin']:+.2%}; where it "
                     f"leads by more ({leading['scenarios']}), in {leading['at_least_hindsight']}, median margin "
                     f"{leading['median_margin']:+.2%})")
    m = s.get("material_events")
    if m and m["judged"]:
        share = "-" if m["share_within_2"] is None else f"{m['share_within_2']:.0%}"
        lines.append(f"  (not a target: {m['material']} of the {m['judged']} local_bias events were material -- the "
                     f"best split in hindsight moved that way -- and {share} of those were reacted to within "
                     f"{RANDOM_REACTION_LIMIT} intervals, applied)")
    lines.append("verdict: " + ("all targets met" if not s["misses"] else
                                f"{len(s['misses'])} target{'s' if len(s['misses']) > 1 else ''} missed"))
    return lines


def format_report(results: Dict[str, Any]) -> str:
    """The per-scenario tables (one line per scenario for a random suite) and the verdict on the targets."""
    out = []
    if results["suite"] == "random":
        out.extend(format_random_table(results))
        out.append("")
    else:
        for name, data in results["scenarios"].items():
            out.append(format_scenario(name, data))
            out.append("")
    if sum(1 for p in results["policies"] if p.startswith("strategy:")) > 1:
        out.append("means over the suite (parallel: queries raced on both tracks; hedged: queries given a "
                   "hedge; hedge won: hedges that gave the answer):")
        out.extend(format_policy_means(results))
        out.append("")
    out.append("J = 0.35*useful + 0.25*in-target + 0.15*quality + 0.10*savings + 0.15*compliance (higher is "
               "better). reaction: per event, adaptation intervals until the published preferences moved as "
               "expected (vs the same run without the event; x = not before the next event); applied: the same "
               "for the preferences the router applied, immediate overrides included. oracle: the best of the "
               "greedy oracle, the split schedule and perclass_hindsight (docs/benchmarks.md)")
    out.append(_seeds_line(results))
    out.extend(verdict_lines(results))
    if results["summary"]["misses"]:
        out.extend(f"  missed: {m}" for m in results["summary"]["misses"])
    out.append(f"(old targets: published reactions within {REACTION_LIMIT_INTERVALS} intervals everywhere: "
               f"{'yes' if results['summary']['reacts_in_time_everywhere'] else 'no'}; beats the best simple static "
               f"everywhere: {'yes' if results['summary']['beats_best_static_everywhere'] else 'no'})")
    out.append(f"ran in {results['wall_seconds']:.1f}s on {results['machine']['platform']} "
               f"({results['machine']['cpus']} CPUs, {results['jobs']} worker{'s' if results['jobs'] > 1 else ''})")
    return "\n".join(out)


__all__ = ["format_policy_means", "format_random_table", "format_report", "format_scenario", "verdict_lines"]
