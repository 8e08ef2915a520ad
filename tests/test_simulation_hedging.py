"""Hedged requests in the simulator: the same rules as the router's (``router.hedging``), in virtual time.

A hedge fires at the delay and not before, only for a call without a first
token; the budget caps it; a fast failure falls back instead; the loser is
cancelled and every call is recorded once, as the router records it; and
without ``hedge`` nothing changes.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

import pytest
import yaml

from dualtrack.bundled import bundled_dir
from dualtrack.router.hedging import HedgePolicy
from dualtrack.router.policy import RoutePlan, hedgeable
from dualtrack.simulation import Request, Scenario, Simulation
from dualtrack.simulation.models import Call

DELAY = 1.0  # a fixed hedge delay: long queries' prefill (about 1.6 s) exceeds it, short ones' does not
#: Every due hedge fires: each request earns a whole hedge, and the bucket holds plenty.
EVERY_DUE = HedgePolicy(delay=DELAY, budget=1.0, burst=1000.0)


def local_heavy(**local: Any) -> Scenario:
    """Three minutes of the steady workload at 1 query/s on a local server with 4 slots: long
    queries show their first token after the delay, short ones before it, and some wait for a slot."""
    data = yaml.safe_load((bundled_dir("scenarios") / "steady.yaml").read_text())
    data = copy.deepcopy(data)
    data["duration"] = "3m"
    data["workload"]["rate"] = 1.0
    data["models"]["local"].update({"concurrency": 4, "max_queue": 64, **local})
    return Scenario.from_dict(data)


class Recorder:
    """Every completion the simulator recorded through its optimizer: (record id, path, outcome)."""

    def __init__(self, sim: Simulation) -> None:
        self.records: List[Tuple[str, str, str]] = []
        original = sim.optimizer.record_request_completion

        def record(request_id: str, path: str, result: Dict[str, Any], success: bool = True,
                   error_type: Optional[str] = None) -> None:
            self.records.append((request_id, path, result.get("outcome", "")))
            original(request_id, path, result, success, error_type)

        sim.optimizer.record_request_completion = record  # type: ignore[method-assign]


def run(scenario: Scenario, hedge: Optional[HedgePolicy], policy: str = "all_local",
        record: bool = False) -> Tuple[Simulation, List[Request], Optional[Recorder]]:
    sim = Simulation(scenario, policy, seed=5, keep_requests=True, hedge=hedge, record_metrics=record)
    recorder = Recorder(sim) if record else None
    sim.run()
    return sim, sim.requests, recorder


def hedge_call(req: Request) -> Optional[Call]:
    calls = [c for c in req.calls if c.record_id.endswith("/hedge")]
    assert len(calls) <= 1
    return calls[0] if calls else None


def test_a_call_is_hedged_at_the_delay_exactly_when_it_has_no_first_token_by_then() -> None:
    sim, requests, _ = run(local_heavy(), EVERY_DUE)
    hedged = alive = 0
    for req in requests:
        first = req.calls[0]
        due = first.start + DELAY
        silent = first.first_token > due and first.end > due and first.deadline > due
        second = hedge_call(req)
        assert req.hedged is (second is not None)
        assert (second is not None) is silent, req.rid
        if second is not None:
            hedged += 1
            assert second.start == pytest.approx(due, abs=1e-9)  # at the delay, not before
            assert second.track == "api" and req.calls == [first, second]  # the other track, no third call
        elif first.first_token <= due:
            alive += 1
    assert hedged > 20 and alive > 20  # both cases happen
    assert sim.totals["hedges"]["fired"] == hedged
    assert sim.totals["hedges"]["throttled"] == 0
    assert sim.summary()["hedges"] == sim.totals["hedges"]


def test_the_adaptive_delay_waits_for_enough_first_token_times() -> None:
    policy = HedgePolicy(min_samples=20)
    sim, requests, _ = run(local_heavy(), policy)
    times = sim.first_token_times
    assert times is not None and len(times["local"]) >= 20
    ended: List[float] = []  # when each local call that showed a first token was closed
    for req in requests:
        second = hedge_call(req)
        if second is not None:
            first = req.calls[0]
            # the delay came from samples: at least min_samples local first tokens shown before the start
            shown = sum(1 for r in requests for c in r.calls
                        if c.track == "local" and c.done and c.first_token <= first.start and c.start < first.start)
            assert shown >= policy.min_samples
            assert second.start - first.start >= policy.min_delay
            assert first.first_token > second.start
            ended.append(second.start)
    assert ended, "the p95 delay hedged nothing"
    assert sim.totals["hedges"]["fired"] == len(ended)


def test_the_budget_caps_hedges_at_its_share_plus_the_burst() -> None:
    sim, requests, _ = run(local_heavy(), HedgePolicy(delay=DELAY, budget=0.05, burst=1.0))
    hedges = sim.totals["hedges"]
    hedgeable_requests = sum(1 for r in requests if r.path != "parallel")
    assert hedges["throttled"] > 0
    assert hedges["fired"] <= 1.0 + 0.05 * hedgeable_requests
    assert hedges["fired"] >= 0.05 * hedgeable_requests - 1  # the credit is spent, not lost
    # every due hedge either fired or was throttled
    due = sum(1 for r in requests if r.calls[0].first_token > r.calls[0].start + DELAY
              and r.calls[0].end > r.calls[0].start + DELAY)
    assert hedges["fired"] + hedges["throttled"] == due
    assert hedges["fired"] == sum(1 for r in requests if r.hedged)


def test_a_fast_failure_falls_back_and_is_never_hedged() -> None:
    # the local model is off: every call fails after 5 ms, well before the delay
    sim, requests, recorder = run(local_heavy(available=False), HedgePolicy(delay=0.05, budget=1.0, burst=1000.0),
                                  record=True)
    assert recorder is not None
    assert sim.totals["hedges"] == {"fired": 0, "won": 0, "wasted": 0, "throttled": 0}
    assert sim.totals["fallbacks"] == len(requests) > 100
    assert all(not r.hedged and [c.record_id for c in r.calls] == [r.rid, f"{r.rid}/fallback"] for r in requests)
    assert not [rid for rid, _, _ in recorder.records if rid.endswith("/hedge")]


def test_a_failure_after_the_hedge_leaves_the_other_call_to_answer() -> None:
    # every local call fails, at its first token: long queries' after the delay, once hedged
    sim, requests, _ = run(local_heavy(error_rate=1.0), EVERY_DUE)
    hedged = [r for r in requests if r.hedged]
    assert hedged
    for req in hedged:
        first, second = req.calls  # no fallback after a hedge
        assert first.outcome == "error" and second.outcome == "success"
        assert req.outcome == "success" and req.answered_by == "api"
    assert sim.totals["hedges"]["won"] == len(hedged)


def test_the_loser_is_cancelled_and_every_call_recorded_once_under_its_track() -> None:
    sim, requests, recorder = run(local_heavy(), EVERY_DUE, record=True)
    assert recorder is not None
    ids = [rid for rid, _, _ in recorder.records]
    assert len(ids) == len(set(ids))  # once each
    by_id = {rid: (path, outcome) for rid, path, outcome in recorder.records}
    won = wasted = cancelled = 0
    for req in requests:
        if not req.hedged:
            assert f"{req.rid}/hedge" not in by_id
            continue
        first, second = req.calls
        # two calls under their own tracks, no record of the request itself
        assert by_id[req.rid][0] == "local" and by_id[f"{req.rid}/hedge"][0] == "api"
        assert [c.record_id for c in req.calls] == [req.rid, f"{req.rid}/hedge"]
        assert req.outcome == "success"
        winner, loser = (first, second) if req.answered_by == "local" else (second, first)
        assert by_id[winner.record_id][1] == "success"
        assert by_id[loser.record_id][1] == loser.outcome
        if loser.outcome == "cancelled":  # still running when the winner answered: cancelled then
            cancelled += 1
            assert loser.end > winner.end or (loser.end == winner.end and loser is second)
        else:  # it had failed already; the winner answered after it
            assert loser.outcome in ("error", "timeout")
        won += winner is second
        wasted += winner is first
    assert won > 0 and wasted > 0 and cancelled > 0
    assert (sim.totals["hedges"]["won"], sim.totals["hedges"]["wasted"]) == (won, wasted)
    assert sim.totals["calls"]["local"]["cancelled"] + sim.totals["calls"]["api"]["cancelled"] == cancelled
    assert not [p for p, _, _ in recorder.records if p == "parallel"]  # all_local never races


def test_without_hedge_the_run_is_what_it_was() -> None:
    scenario = local_heavy()
    plain = Simulation(scenario, "strategy:adaptive", seed=7).run().to_dict()
    explicit = Simulation(scenario, "strategy:adaptive", seed=7, hedge=None).run().to_dict()
    # a hedge that is never due (its delay is past every timeout) changes nothing either, but the count
    never = Simulation(scenario, "strategy:adaptive", seed=7, hedge=HedgePolicy(delay=1e6)).run().to_dict()
    for out in (plain, explicit, never):
        out.pop("wall_seconds")
    assert "hedges" not in plain["summary"]
    assert never["summary"].pop("hedges") == {"fired": 0, "won": 0, "wasted": 0, "throttled": 0}
    assert plain == explicit == never


def test_hedging_changes_the_run_and_is_deterministic() -> None:
    scenario = local_heavy()
    a = Simulation(scenario, "strategy:adaptive", seed=7, hedge=HedgePolicy()).run().to_dict()
    b = Simulation(scenario, "strategy:adaptive", seed=7, hedge=HedgePolicy()).run().to_dict()
    plain = Simulation(scenario, "strategy:adaptive", seed=7).run().to_dict()
    for out in (a, b, plain):
        out.pop("wall_seconds")
    assert a == b
    assert a["summary"]["hedges"]["fired"] > 0
    assert a["summary"]["calls"] != plain["summary"]["calls"]


def test_hedge_must_be_a_hedge_policy_and_a_hedged_run_does_not_fork() -> None:
    with pytest.raises(ValueError, match="hedge: expected a HedgePolicy"):
        Simulation(local_heavy(), "all_local", hedge=0.95)  # type: ignore[arg-type]
    sim = Simulation(local_heavy(), "all_local", record_metrics=False, hedge=HedgePolicy())
    with pytest.raises(ValueError, match="hedge cannot be forked"):
        sim.fork()


def plan(path: str, fallback: Optional[str], overrides: Optional[List[str]] = None) -> RoutePlan:
    rec: Dict[str, Any] = {"overrides": overrides} if overrides is not None else {}
    return RoutePlan(path=path, tracks=("local", "api") if path == "parallel" else (path,), fallback=fallback,
                     timeouts_seconds={}, quality_threshold=0.8, preempt=True, query_class="short", complexity=0.2,
                     recommendation=rec)


def test_only_a_single_track_plan_with_a_fallback_and_no_override_is_hedgeable() -> None:
    assert hedgeable(plan("local", "api"))
    assert hedgeable(plan("api", "local", overrides=[]))
    assert not hedgeable(plan("local", None))  # nowhere else to go
    assert not hedgeable(plan("parallel", None))  # both tracks already
    assert not hedgeable(plan("api", "local", overrides=["memory"]))  # a machine limit forced the track


def closed_at(req: Request, call: Call) -> float:
    """When a call of an all_local run was closed: at its answer or failure, its timeout, or, cancelled,
    at the answer of the other call of its hedged race."""
    if call.outcome == "cancelled":
        (other,) = [c for c in req.calls if c is not call]
        return other.end
    return call.deadline if call.outcome == "timeout" else call.end


def test_first_token_times_are_fed_as_the_router_feeds_them() -> None:
    sim, requests, _ = run(local_heavy(), EVERY_DUE)
    times = sim.first_token_times
    assert times is not None
    for track in ("local", "api"):
        shown = [c for r in requests for c in r.calls
                 if c.track == track and c.outcome != "error" and c.first_token <= closed_at(r, c)]
        # a hedged first call that lost without a first token adds the time it waited, a lower bound
        waited = [r.calls[0] for r in requests if r.hedged and r.calls[0].track == track
                  and r.calls[0].outcome == "cancelled" and r.calls[0].first_token > closed_at(r, r.calls[0])]
        assert len(shown) + len(waited) < 256  # all kept
        assert len(times[track]) == len(shown) + len(waited)
        if track == "local":
            assert waited
