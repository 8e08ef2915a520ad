"""Tests for dualtrack.simulation: scenario files, the simulated models and machine, the runner."""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional

import jsonschema
import pytest
import yaml
from prometheus_client import CollectorRegistry

from dualtrack.bundled import bundled_dir
from dualtrack.clock import VirtualClock
from dualtrack.errors import ConfigError
from dualtrack.simulation import (
    OBJECTIVE,
    ApiModelSim,
    Call,
    Draws,
    LocalModelSim,
    QueryTape,
    Scenario,
    SimulatedMachine,
    Simulation,
    check_policy,
    load_scenario,
    parse_perclass,
    perclass_policy,
    scenario_names,
)
from dualtrack.simulation.scenario import LOCAL_DEFAULTS

REQUIRED = {"steady", "local_thermal_throttle", "api_outage", "api_price_spike", "battery_drain", "burst_load",
            "quality_drift"}


def base_data(**changes: Any) -> Dict[str, Any]:
    """The steady scenario's data, shortened to 5 minutes, with ``changes`` merged in."""
    data = yaml.safe_load((bundled_dir("scenarios") / "steady.yaml").read_text())
    data["duration"] = "5m"
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def scenario(**changes: Any) -> Scenario:
    return Scenario.from_dict(base_data(**changes))


def with_models(data: Dict[str, Any], local: Optional[Dict[str, Any]] = None,
                api: Optional[Dict[str, Any]] = None) -> Scenario:
    data = copy.deepcopy(data)
    data["models"]["local"].update(local or {})
    data["models"]["api"].update(api or {})
    return Scenario.from_dict(data)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def requests_total(registry: CollectorRegistry, path: str, outcome: Optional[str] = None) -> float:
    total = 0.0
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == "dualtrack_requests_total" and s.labels.get("path") == path and \
                    (outcome is None or s.labels.get("outcome") == outcome):
                total += s.value
    return total


def draws(**values: float) -> Draws:
    d = dict(q_local=0.0, q_api=0.0, err_local=0.99, err_api=0.99, lat_api=0.0, tail_u=0.99, tail_x=0.5)
    d.update(values)
    return Draws(**d)


# ------------------------------------------------------------------ scenario files


#: Regime changes after which no preference has a move to time: quality_drift's short queries
#: are answered locally (0.995) when the API's short answers degrade.
NO_MOVE_EXPECTED = {"quality_drift": {"API update degrades short answers"}}


def test_every_bundled_scenario_validates() -> None:
    names = set(scenario_names())
    assert REQUIRED <= names
    for name in names:
        s = load_scenario(name)
        # An hour each; the demo's own scenario is written for 90 s of real time.
        assert s.name == name and s.duration == (90 if name == "demo" else 3600)
        if name == "steady":
            assert s.timeline == ()
        else:
            assert s.timeline, name
            unexpected = {e.label for e in s.timeline if e.expect is None}
            assert unexpected == NO_MOVE_EXPECTED.get(name, set()), f"{name}: every regime change says what to expect"
        assert s.mix_variation > 0  # a seeded random workload mix
    # and the files carry the schema hint for editors
    for path in bundled_dir("scenarios").glob("*.yaml"):
        assert "scenario.schema.json" in path.read_text().splitlines()[0]


def test_the_published_schema_is_a_valid_json_schema() -> None:
    schema = json.loads((Path(__file__).parents[1] / "src/dualtrack/schemas/scenario.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)


def test_a_scenario_can_be_loaded_by_path_and_unknown_names_get_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(base_data(name="mine")))
    assert load_scenario(path).name == "mine"
    with pytest.raises(ConfigError, match="did you mean 'api_outage'"):
        load_scenario("api_outrage")


BAD = [
    ("rate: fast", "workload:\n  rate: fast\n", "workload.rate", "not of type 'number'"),
    ("unknown top-level field", "durashun: 5m\n", "durashun", "did you mean 'duration'"),
    ("unknown timeline parameter", "timeline:\n  - at: 1m\n    set: {api.outtage: error}\n",
     "timeline[0].set.api.outtage", "did you mean 'api.outage'"),
    ("bad outage value", "timeline:\n  - at: 1m\n    set: {api.outage: sideways}\n",
     "timeline[0].set.api.outage", "must be one of off, error, hang"),
    ("event after the end", "timeline:\n  - at: 10m\n    set: {api.outage: error}\n",
     "timeline[0].at", "not before the end"),
    ("scale of a mode", "timeline:\n  - at: 1m\n    scale: {api.outage: 2}\n",
     "timeline[0].scale.api.outage", "cannot be changed with scale"),
    ("battery change without a battery", "timeline:\n  - at: 1m\n    set: {battery.plugged: false}\n",
     "timeline[0].set.battery.plugged", "has no battery"),
    ("event with nothing to do", "timeline:\n  - at: 1m\n    label: nothing\n", "timeline[0]",
     "at least one of set, scale, add"),
    ("quality of an unknown class", "models:\n  local:\n    quality: {huge: 0.5}\n",
     "models.local.quality.huge", "unknown query class"),
    ("expectation on an unknown class", "timeline:\n  - at: 1m\n    set: {api.outage: error}\n"
     "    expect: {local_bias: up, query_class: tiny}\n", "timeline[0].expect.query_class", "unknown query class"),
    ("bad constraint", "constraints:\n  target_latency_ms: -5\n", "constraints.target_latency_ms",
     "greater than 0"),
    ("ratio out of range", "timeline:\n  - at: 1m\n    set: {local.quality.short: 1.5}\n",
     "timeline[0].set.local.quality.short", "within 0..1"),
]


@pytest.mark.parametrize("case, extra, field, message", BAD, ids=[b[0] for b in BAD])
def test_bad_scenario_files_name_file_line_and_field(tmp_path: Path, case: str, extra: str, field: str,
                                                     message: str) -> None:
    header = textwrap.dedent("""\
        name: bad
        duration: 5m
        """)
    body = yaml.safe_dump({k: v for k, v in base_data().items() if k not in ("name", "duration")},
                          sort_keys=False)
    # the case's YAML overrides keys of the base document (later keys win in a merge below)
    data = yaml.safe_load(header + body)
    override = yaml.safe_load(extra)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            merged = copy.deepcopy(data[key])
            for k, v in value.items():
                merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
            data[key] = merged
        else:
            data[key] = value
    text = yaml.safe_dump(data, sort_keys=False)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    err = info.value
    assert err.source == str(path)
    assert err.field == field, str(err)
    assert message in err.message, str(err)
    assert err.line is not None
    # the line is the offending field's line in the file (a list item's: its dash)
    line = text.splitlines()[err.line - 1]
    if field.endswith("]"):
        assert line.lstrip().startswith("- "), (err.line, text)
    else:
        assert field.split(".")[-1] in line, (err.line, text)
    assert str(err).startswith(f"{path}:{err.line}: {field}: ")


def test_time_scaling_and_parameter_overrides() -> None:
    s = load_scenario("api_outage")
    quick = s.time_scaled(0.25)
    assert quick.duration == 900 and [e.at for e in quick.timeline] == [e.at / 4 for e in s.timeline]
    assert quick.adaptation_interval == s.adaptation_interval
    faster = s.with_params({"workload.rate": 20})
    assert faster.params["workload"]["rate"] == 20 and s.params["workload"]["rate"] == 5
    with pytest.raises(ConfigError, match="unknown parameter"):
        s.with_params({"workload.speed": 2})


# ------------------------------------------------------------------ models


def local_model(**params: Any) -> LocalModelSim:
    p = copy.deepcopy(LOCAL_DEFAULTS)
    p["quality"] = {"short": 0.8}
    p.update(params)
    return LocalModelSim(p)


def test_local_model_queues_fifo_beyond_its_concurrency_and_turns_away_a_full_queue() -> None:
    model = local_model(concurrency=2, max_queue=2, contention=0.0, overhead=0.0,
                        prefill_tokens_per_second=1000.0, decode_tokens_per_second=10.0)
    calls = [Call(None, "local", f"c{i}", 0.0, 100.0, 0, 10) for i in range(5)]
    states = [model.submit(c, 0.0, draws(), "short", 0.5) for c in calls]
    assert states == ["started", "started", "queued", "queued", "rejected"]
    assert calls[0].end == pytest.approx(1.0) and calls[4].error_type == "queue_full"
    started = model.release(calls[0], 1.0)
    assert started == [calls[2]] and calls[2].service_start == 1.0 and calls[2].end == pytest.approx(2.0)
    # a queued call that times out leaves the queue without taking a slot
    model.release(calls[3], 1.5)
    assert model.queued == 0 and model.active == 2
    assert model.release(calls[1], 1.0) == []


def test_thermal_throttling_builds_under_sustained_load_and_recovers_when_idle() -> None:
    model = local_model(concurrency=1, thermal={"heat_time": 60.0, "cool_time": 30.0, "threshold": 0.5,
                                                "max_throttle": 0.5})
    assert model.thermal_factor() == 1.0
    hot = Call(None, "local", "hot", 0.0, 1e9, 0, 100_000)
    model.submit(hot, 0.0, draws(), "short", 0.5)
    model.touch(600.0)  # ten minutes at full utilisation
    assert model.heat > 0.99 and model.thermal_factor() == pytest.approx(0.5, abs=0.01)
    model.release(hot, 600.0)
    model.touch(900.0)  # five minutes idle
    assert model.heat < 0.01 and model.thermal_factor() == 1.0


def test_api_model_latency_tail_rate_limit_outages_and_prices() -> None:
    scenario_api = load_scenario("steady").initial_params()["api"]
    api = ApiModelSim(scenario_api)
    first, total = api.base_latency(1000, 100)
    assert first == pytest.approx(0.08 + 0.35 + 1000 / 20000) and total == pytest.approx(first + 100 / 95)
    normal = Call(None, "api", "a", 0.0, 1e9, 1000, 100)
    api.submit(normal, 0.0, draws(), "short", 0.5)
    tail = Call(None, "api", "b", 0.0, 1e9, 1000, 100)
    api.submit(tail, 0.0, draws(tail_u=0.0, tail_x=0.99), "short", 0.5)
    assert tail.end > 5 * normal.end  # Pareto tail
    # prices per token, billed for what was generated
    normal.settle(normal.end, "success")
    assert normal.cost == pytest.approx((1000 * 2.5 + 100 * 10.0) / 1e6)

    scenario_api["rate_limit_per_minute"] = 2
    states = [api.submit(Call(None, "api", f"r{i}", float(i), 1e9, 10, 10), float(i), draws(), "short", 0.5)
              for i in range(3)]
    assert states[-1] == "rejected"
    scenario_api["outage"] = "error"
    down = Call(None, "api", "d", 100.0, 1e9, 10, 10)
    assert api.submit(down, 100.0, draws(), "short", 0.5) == "rejected" and down.error_type == "unavailable"
    scenario_api["outage"] = "hang"
    hung = Call(None, "api", "h", 100.0, 1e9, 10, 10)
    api.submit(hung, 100.0, draws(), "short", 0.5)
    assert hung.end == float("inf")


def test_the_machine_reports_local_load_and_drains_the_battery() -> None:
    s = load_scenario("battery_drain")
    params = s.initial_params()
    params["battery"].update(plugged=False, level=0.5)
    clock = VirtualClock()
    model = LocalModelSim(params["local"])
    machine = SimulatedMachine(params, model, clock)
    idle = machine.sample(0.0)
    assert idle.gpus[0].utilization_ratio == 0.0 and idle.battery is not None and idle.battery.power_plugged is False
    calls = [Call(None, "local", f"c{i}", 0.0, 1e9, 10, 100_000) for i in range(16)]
    for c in calls:
        model.submit(c, 0.0, draws(), "short", 0.5)
    busy = machine.sample(600.0)  # ten minutes at full load
    assert busy.process_memory_bytes > idle.process_memory_bytes
    assert busy.gpu_memory_used_bytes > idle.gpu_memory_used_bytes
    assert busy.cpu_ratio > idle.cpu_ratio and busy.gpus[0].utilization_ratio == 1.0
    drained_busy = 0.5 - busy.battery.ratio
    assert drained_busy == pytest.approx((0.08 + 1.2) / 6, rel=0.01)
    for c in calls:
        model.release(c, 600.0)
    later = machine.sample(1200.0)
    assert busy.battery.ratio - later.battery.ratio == pytest.approx(0.08 / 6, rel=0.01)  # idle drain only
    assert machine.get_current_usage()["battery"]["percent"] == pytest.approx(later.battery.ratio * 100)
    params["battery"]["level"] = 0.04
    machine.sample(1201.0)
    assert model.suspended and not model.available  # the OS suspends the local model on a critical battery
    params["battery"]["plugged"] = True
    machine.sample(1202.0)
    assert not model.suspended


# ------------------------------------------------------------------ the runner


def run(s: Scenario, policy: str, **options: Any) -> Any:
    return Simulation(s, policy, **options).run()


def test_same_seed_same_numbers_other_seed_other_numbers() -> None:
    s = load_scenario("api_outage").time_scaled(1 / 12)  # 5 minutes, both incidents
    a = run(s, "strategy:adaptive", seed=3, measure_reactions=True).to_dict()
    b = run(s, "strategy:adaptive", seed=3, measure_reactions=True).to_dict()
    c = run(s, "strategy:adaptive", seed=4).to_dict()
    a.pop("wall_seconds"), b.pop("wall_seconds"), c.pop("wall_seconds")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["summary"] != c["summary"]


def test_a_routing_seed_rerolls_only_the_routers_draws() -> None:
    s = scenario()
    base = run(s, "fixed_50_50", seed=1).summary
    again = run(s, "fixed_50_50", seed=1, routing_seed=7).summary
    same = run(s, "fixed_50_50", seed=1, routing_seed=7).summary
    other = run(s, "fixed_50_50", seed=1, routing_seed=8).summary
    assert again == same  # deterministic for a routing seed
    # The same queries (count, and what they would all cost on the API), another split of them.
    assert {r["requests"] for r in (base, again, other)} == {base["requests"]}
    assert {r["all_api_cost"] for r in (base, again, other)} == {base["all_api_cost"]}
    assert len({r["paths"]["local"] for r in (base, again, other)}) == 3


def test_every_policy_sees_the_same_queries() -> None:
    s = scenario()
    results = [run(s, p, seed=1).summary for p in ("all_local", "all_api", "oracle")]
    assert len({r["requests"] for r in results}) == 1
    assert len({r["all_api_cost"] for r in results}) == 1


def test_running_in_steps_equals_running_at_once() -> None:
    s = scenario()
    whole = run(s, "strategy:balanced", seed=2)
    sim = Simulation(s, "strategy:balanced", seed=2)
    t = 0.0
    while not sim.done:
        t += 7.3
        sim.run_until(t)
    stepped = sim.result()
    assert stepped.summary == whole.summary and stepped.series == whole.series
    assert sim.clock.monotonic() == pytest.approx(t)


def test_queueing_raises_local_latency_under_load() -> None:
    light = run(scenario(workload={"rate": 1}), "all_local", seed=1).summary
    heavy = run(scenario(workload={"rate": 8}), "all_local", seed=1).summary
    assert heavy["p95_latency_seconds"] > 2 * light["p95_latency_seconds"]
    assert heavy["errors"].get("local:queue_full", 0) > 0 and "local:queue_full" not in light["errors"]


def outage(kind: str) -> Scenario:
    return scenario(timeline=[{"at": "1m", "set": {"api.outage": kind}, "expect": {"local_bias": "up"}}])


def test_an_outage_produces_errors_or_timeouts_and_one_fallback_per_request() -> None:
    registry = CollectorRegistry()
    sim = Simulation(outage("error"), "all_api", seed=1, registry=registry, keep_requests=True)
    result = sim.run()
    s = result.summary
    assert s["errors"]["api:unavailable"] > 0
    assert s["calls"]["api"]["error"] == sum(v for k, v in s["errors"].items() if k.startswith("api:"))
    for req in sim.requests:
        assert len(req.calls) <= 2  # fallback happens once
        if len(req.calls) == 2:
            assert req.calls[0].track == "api" and req.calls[0].outcome in ("error", "timeout")
            assert req.calls[1].track == "local" and req.calls[1].record_id == f"{req.rid}/fallback"
    assert s["fallbacks"] == sum(1 for r in sim.requests if len(r.calls) == 2)
    assert s["fallback_rescued"] > 0.9 * s["errors"]["api:unavailable"]

    hung = run(outage("hang"), "all_api", seed=1).summary
    assert hung["calls"]["api"]["timeout"] > 0
    # the static policy's 30 s timeout: those requests took at least that long
    assert hung["p99_latency_seconds"] >= 30


def test_the_rate_limit_answers_429() -> None:
    data = base_data()
    s = with_models(data, api={"rate_limit_per_minute": 120})
    summary = run(s, "all_api", seed=1).summary
    assert summary["errors"]["api:rate_limited"] > 0
    assert summary["calls"]["api"]["started"] - summary["errors"]["api:rate_limited"] <= 120 * 5 + 5


def racing() -> Scenario:
    data = base_data(workload={"rate": 1.5})  # light enough that no memory or concurrency override steps in
    for spec in data["workload"]["classes"].values():
        spec["complexity"] = {"mean": 0.95, "sd": 0.0}  # every query is raced on both tracks
    return Scenario.from_dict(data)


def test_preemption_cancels_the_loser_and_records_it_as_cancelled() -> None:
    registry = CollectorRegistry()
    sim = Simulation(racing(), "strategy:balanced", seed=1, registry=registry, keep_requests=True)
    s = sim.run().summary
    assert s["paths"]["parallel"] == s["requests"]
    cancelled = 0
    for req in sim.requests:
        assert [c.record_id for c in req.calls] == [f"{req.rid}/local", f"{req.rid}/api"]
        losers = [c for c in req.calls if c.outcome == "cancelled"]
        if losers:
            cancelled += 1
            (loser,) = losers
            (winner,) = [c for c in req.calls if c is not loser]
            assert winner.outcome == "success" and winner.quality >= req.plan.quality_threshold
            assert req.answered_by == winner.track and req.latency == pytest.approx(winner.end - req.arrival)
    assert cancelled > 0
    for track in ("local", "api"):
        assert requests_total(registry, track, "cancelled") == s["calls"][track]["cancelled"]
    # a cancelled API leg paid for what it generated before it was stopped
    api_losers = [c for r in sim.requests for c in r.calls if c.track == "api" and c.outcome == "cancelled"]
    assert any(c.cost > 0 for c in api_losers)


def test_registry_counters_equal_the_simulated_counts() -> None:
    registry = CollectorRegistry()
    s = run(outage("error"), "strategy:adaptive", seed=5, registry=registry).summary
    for track in ("local", "api"):
        calls = s["calls"][track]
        assert requests_total(registry, track) == calls["started"]
        for outcome in ("success", "error", "timeout", "cancelled"):
            assert requests_total(registry, track, outcome) == calls[outcome], (track, outcome)
    # the parallel request itself: counted once, with no tokens or cost of its own
    assert requests_total(registry, "parallel") == s["paths"]["parallel"]
    cost = sum(x.value for m in registry.collect() for x in m.samples if x.name == "dualtrack_cost_dollars_total")
    assert cost == pytest.approx(s["total_cost"], rel=1e-6)
    assert not [x for m in registry.collect() for x in m.samples
                if x.name in ("dualtrack_cost_dollars_total", "dualtrack_tokens_total")
                and x.labels.get("path") == "parallel"]
    assert sample(registry, "dualtrack_requests_in_flight") == 0
    assert sample(registry, "dualtrack_completions_without_start_total") == 0


def test_the_adaptive_strategy_moves_traffic_local_after_an_api_outage() -> None:
    result = run(outage("error"), "strategy:adaptive", seed=1, measure_reactions=True)
    before = [r for r in result.series if r["t"] <= 60]
    after = [r for r in result.series if 90 <= r["t"] <= 150]
    bias = lambda row: row["preferences"]["effective"]["local_bias"]  # noqa: E731
    assert max(bias(r) for r in after) > bias(before[-1]) + 0.1
    (reaction,) = result.reactions
    assert reaction["applicable"] and reaction["published_intervals"] is not None
    assert reaction["published_intervals"] <= 2
    # The router stops sending the failing API its share within the outage's first interval
    # (the failing-track override), before any cycle has seen it.
    assert reaction["intervals"] == 1
    # With the API sent only its probes, the health gate has fewer calls to judge: it fires later.
    gated = [r for r in result.series if 90 <= r["t"] <= 180]
    assert any("unhealthy_track" in r["fired"] or "shift_from_failing_api" in r["fired"] for r in gated)


def test_the_oracle_avoids_a_dead_api_and_statics_have_no_reactions() -> None:
    oracle = run(outage("error"), "oracle", seed=1)
    all_api = run(outage("error"), "all_api", seed=1)
    assert oracle.summary["calls"]["api"]["error"] < all_api.summary["calls"]["api"]["error"] / 5
    assert all(not r["applicable"] for r in all_api.reactions)


def test_the_objective_is_a_weighted_sum_of_shares() -> None:
    assert sum(OBJECTIVE.as_dict().values()) == pytest.approx(1.0)
    perfect = {"useful_ratio": 1.0, "within_target_ratio": 1.0, "quality_mean": 1.0, "cost_ratio": 0.0,
               "violation_ratio": 0.0}
    assert OBJECTIVE.score(perfect) == pytest.approx(1.0)
    result = run(scenario(), "all_api", seed=1)
    parts: List[float] = list(OBJECTIVE.components(result.summary).values())
    assert all(0.0 <= p <= 1.0 for p in parts)
    assert result.summary["objective"] == pytest.approx(OBJECTIVE.score(result.summary), abs=1e-6)


# ------------------------------------------------------------------ per-class splits, fast runs, forks, expect kinds


def test_a_per_class_split_routes_each_class_with_its_share() -> None:
    s = scenario(workload={"rate": 3})
    sim = Simulation(s, perclass_policy({"short": 1.0, "medium": 0.0, "long": 0.5}), seed=1, keep_requests=True)
    sim.run()
    first = {qc: [r.calls[0].track for r in sim.requests if r.spec.query_class == qc] for qc in s.class_names}
    assert set(first["short"]) == {"local"} and set(first["medium"]) == {"api"}
    share = first["long"].count("local") / len(first["long"])
    assert len(first["long"]) > 50 and 0.35 < share < 0.65
    for req in sim.requests:  # like the statics: the router's default timeouts, one fallback, never parallel
        assert req.plan is not None and req.plan.path in ("local", "api") and not req.plan.preempt
        assert req.plan.fallback == ("api" if req.plan.path == "local" else "local")
        assert req.plan.timeouts_seconds == {"local": 30.0, "api": 30.0, "parallel": 30.0}


def test_a_uniform_split_is_the_fixed_split_to_the_last_digit() -> None:
    s = scenario()
    for fixed, share in (("fixed_50_50", 0.5), ("all_local", 1.0), ("all_api", 0.0)):
        split = run(s, perclass_policy({c: share for c in s.class_names}), seed=2)
        assert split.summary == run(s, fixed, seed=2).summary, fixed


def test_per_class_policy_names_are_checked() -> None:
    assert parse_perclass(perclass_policy({"short": 1, "long": 0.25})) == {"short": 1.0, "long": 0.25}
    assert check_policy("perclass:short=1,medium=0,long=0.5") == "perclass:short=1,medium=0,long=0.5"
    for bad in ("perclass:short=2", "perclass:short", "perclass:", "perclass:a=1,a=0"):
        with pytest.raises(ValueError, match="per-class split"):
            check_policy(bad)
    with pytest.raises(ValueError, match="each query class"):
        Simulation(scenario(), "perclass:short=1,medium=0")


def test_runs_without_metrics_and_from_a_tape_give_the_same_figures() -> None:
    s = outage("hang")
    tape = QueryTape(s, 3)
    for policy in ("fixed_50_50", "all_local", "oracle", perclass_policy({"short": 1, "medium": 0.5, "long": 0})):
        slow = run(s, policy, seed=3).to_dict()
        fast = run(s, policy, seed=3, record_metrics=False, tape=tape).to_dict()
        slow.pop("wall_seconds"), fast.pop("wall_seconds")
        assert fast == slow, policy
    with pytest.raises(ValueError, match="record_metrics"):
        Simulation(s, "strategy:adaptive", record_metrics=False)
    with pytest.raises(ValueError, match="tape"):
        Simulation(s, "all_api", seed=4, tape=tape)


def test_a_fork_runs_on_without_touching_the_original() -> None:
    s = outage("error")
    policy = perclass_policy({"short": 1, "medium": 0.5, "long": 0})
    whole = run(s, policy, seed=1, record_metrics=False)
    sim = Simulation(s, policy, seed=1, record_metrics=False)
    sim.run_until(90.0)
    other = sim.fork()
    other.planner.shares = {"short": 0.0, "medium": 0.0, "long": 0.0}  # type: ignore[attr-defined]
    other.run_until(float("inf"))
    assert sim.now == 90.0 and other.result().summary != whole.summary
    sim.run_until(float("inf"))
    assert sim.result().summary == whole.summary and sim.result().series == whole.series
    with pytest.raises(ValueError, match="fork"):
        Simulation(s, "all_api").fork()


def test_expectations_are_onsets_or_recoveries() -> None:
    recoveries = {(name, e.label) for name in scenario_names() for e in load_scenario(name).timeline
                  if e.expect is not None and e.expect.kind == "recovery"}
    assert ("api_outage", "API recovered") in recoveries and ("battery_drain", "plugged in") in recoveries
    assert ("quality_drift", "the better local model is back") in recoveries
    assert ("burst_load", "burst over") in recoveries and ("local_thermal_throttle", "cooling restored") in recoveries
    onsets = [e for name in scenario_names() for e in load_scenario(name).timeline
              if e.expect is not None and e.expect.kind == "onset"]
    assert onsets and not any(e.label in ("API recovered", "plugged in", "burst over") for e in onsets)
    result = run(outage("error"), "strategy:adaptive", seed=1, measure_reactions=True)
    assert result.events[0]["expect"]["kind"] == "onset" and result.reactions[0]["kind"] == "onset"


def test_a_bad_expectation_kind_names_file_line_and_field(tmp_path: Path) -> None:
    data = base_data(timeline=[{"at": "1m", "set": {"api.outage": "error"},
                                "expect": {"local_bias": "up", "kind": "relapse"}}])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert info.value.field == "timeline[0].expect.kind" and info.value.line is not None
    data["timeline"][0]["expect"]["kind"] = "recovery"
    (event,) = Scenario.from_dict(data).timeline
    assert event.expect is not None and event.expect.kind == "recovery"
