"""Smoke test of the adaptation-noise benchmark: every scenario run with each routing draw, and
the suite figures computed from them. The figures themselves are chance: never asserted."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, List, Optional, Tuple

import pytest

from support.bench_scripts import bench_script, run_script

ROOT = Path(__file__).resolve().parent.parent


def test_adaptation_noise_quick_runs_each_scenario_with_each_draw(tmp_path: Path) -> None:
    out = tmp_path / "noise.json"
    proc = run_script("adaptation_noise", "--random", "2", "--repeats", "2", "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert sorted(figures["objectives"]) == ["random_1_000", "random_1_001"]
    runs = figures["objectives"].values()
    assert all(len(v) == 2 and all(0.0 < j <= 1.0 for j in v) for v in runs)
    means = [sum(v[r] for v in runs) / 2 for r in range(2)]
    assert figures["suite_means"] == pytest.approx(means)
    assert figures["detectable_change_percent"] >= 0.0
    assert "is inside chance" in proc.stdout


def test_adaptation_noise_hindsight_reruns_the_searched_split_on_the_other_draws(tmp_path: Path) -> None:
    out = tmp_path / "noise.json"
    proc = run_script("adaptation_noise", "--random", "1", "--repeats", "2", "--quick", "--hindsight", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    searched, fresh = figures["hindsight_objectives"]["random_1_000"]
    adaptive = figures["objectives"]["random_1_000"]
    h = figures["hindsight"]
    assert h["selection_bias_percent"]["mean"] == pytest.approx((fresh / searched - 1) * 100)
    assert h["gap_bench_percent"]["mean"] == pytest.approx((adaptive[0] / searched - 1) * 100)
    assert h["gap_unbiased_percent"]["mean"] == pytest.approx((sum(adaptive) / 2 / fresh - 1) * 100)
    assert "selection bias" in proc.stdout


def test_adaptation_noise_compares_with_an_earlier_run_of_the_same_scenarios(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    common = ["--random", "1", "--repeats", "2", "--quick"]
    assert run_script("adaptation_noise", *common, "--json", str(first)).returncode == 0
    # Other rules: a larger probe share on the track each class does not choose.
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    adaptive = rules / "adaptive.yaml"
    text, changed = re.subn(r"^  probe: [0-9.]+$", "  probe: 0.05", adaptive.read_text(), flags=re.M)
    assert changed == 1
    adaptive.write_text(text)
    proc = run_script("adaptation_noise", *common, "--rules", str(rules), "--baseline", str(first),
                      "--json", str(second))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a = json.loads(first.read_text())["objectives"]["random_1_000"]
    b = json.loads(second.read_text())
    mine = b["objectives"]["random_1_000"]
    assert mine != a  # the rules changed something
    assert b["compared"]["mean_difference_percent"] == pytest.approx((sum(mine) / sum(a) - 1) * 100)
    assert f"against {first}" in proc.stdout
    # A baseline without this run's scenarios is refused before anything runs.
    proc = run_script("adaptation_noise", "--random", "2", "--repeats", "2", "--quick", "--baseline", str(first),
                      timeout=60)
    assert proc.returncode == 2 and "it has no runs of random_1_001" in proc.stderr


def test_adaptation_noise_rejects_a_single_repeat() -> None:
    proc = run_script("adaptation_noise", "--repeats", "1", timeout=60)
    assert proc.returncode == 2 and "--repeats at least 2" in proc.stderr


def test_telling_the_local_model_overwrites_the_estimate_each_cycle_and_only_during_the_run() -> None:
    from dualtrack.adapter.estimator import Estimator
    from dualtrack.simulation import Simulation
    from dualtrack.simulation.generator import generate_scenario

    noise = bench_script("adaptation_noise")
    original = Estimator.update
    scenario = generate_scenario(1, 0).time_scaled(0.1)
    sim = Simulation(scenario, "strategy:adaptive")
    with noise.local_model_told(sim):
        assert Estimator.update is not original
        sim.run_until(5 * scenario.adaptation_interval)
        est = sim.optimizer.adaptive.engine.estimator
        slots = sim.params["local"]["concurrency"]
        assert est.slots == slots and est._slots_seen_free == slots
        # Each class's service time is the model's for the class's mean tokens, at one speed for all
        # (at most the nominal one: throttling and batching only slow it).
        nominal = {c.name: sim.local.service_time(round(c.tokens_in.mean), round(c.tokens_out.mean), 1.0)
                   for c in scenario.classes}
        told = {c: est.base_service[c] for c in nominal}
        assert all(told[c] >= nominal[c] * 0.999 for c in nominal)
        assert sorted(nominal, key=nominal.__getitem__) == sorted(told, key=told.__getitem__)
    assert Estimator.update is original


def test_telling_the_local_model_needs_a_strategy() -> None:
    proc = run_script("adaptation_noise", "--policy", "all_local", "--tell-local-model", timeout=60)
    assert proc.returncode == 2 and "--tell-local-model needs a strategy" in proc.stderr


def _told_for_five_cycles(what: str, slots_error: Tuple[float, bool] = (0.0, False),
                          seen: Optional[List[float]] = None) -> Tuple[Any, Any, Any]:
    """A short generated run whose estimator is told ``what`` of the local model: (module, run, estimator);
    ``seen`` gets the told slots over the ones without the error, each cycle."""
    from dualtrack.simulation import Simulation
    from dualtrack.simulation.generator import generate_scenario

    noise = bench_script("adaptation_noise")
    scenario = generate_scenario(1, 0).time_scaled(0.1)
    sim = Simulation(scenario, "strategy:adaptive")
    told = noise.tell_local_model

    def tell(estimator: Any, run: Any, what: str, factor: float = 1.0) -> None:
        told(estimator, run, what, factor)
        if seen is not None and estimator.slots is not None:
            seen.append(factor)

    with noise._common.replaced(noise, "tell_local_model", tell), noise.local_model_told(sim, what, slots_error):
        sim.run_until(5 * scenario.adaptation_interval)
    return noise, sim, sim.optimizer.adaptive.engine.estimator


def test_telling_only_the_slots_leaves_the_service_times_estimated() -> None:
    noise, sim, est = _told_for_five_cycles("slots")
    scenario = sim.scenario
    assert est.slots == sim.params["local"]["concurrency"]
    # The service times are the estimator's own (from latencies), not the model's for the mean tokens.
    speed = sim.local.speed()
    told = {c.name: sim.local.service_time(round(c.tokens_in.mean), round(c.tokens_out.mean), speed)
            for c in scenario.classes}
    assert any(est.base_service.get(c) != pytest.approx(s, rel=1e-6) for c, s in told.items())
    with pytest.raises(ValueError, match="one of both, slots, service"):
        with noise.local_model_told(sim, "everything"):
            pass


def test_telling_the_effective_local_model_counts_the_slots_in_calls_alone() -> None:
    _, sim, est = _told_for_five_cycles("effective")
    scenario = sim.scenario
    params = sim.params["local"]
    n, contention = params["concurrency"], params["contention"]
    assert contention > 0 and n > 1
    # Fewer slots than declared: a full batch serves each call slower, by 1 + contention x (n - 1).
    assert est.slots == pytest.approx(n / (1.0 + contention * (n - 1)))
    assert est.slots < n
    # Each class's service time is a call alone's: the nominal speed, throttling aside (none yet here).
    alone = params["speed_factor"] * sim.local.thermal_factor()
    for c in scenario.classes:
        assert est.base_service[c.name] == pytest.approx(
            sim.local.service_time(round(c.tokens_in.mean), round(c.tokens_out.mean), alone))
    # One half alone leaves the other half estimated.
    _, sim, est = _told_for_five_cycles("effective-slots")
    assert est.slots == pytest.approx(n / (1.0 + contention * (n - 1)))
    assert any(est.base_service.get(c.name) != pytest.approx(
        sim.local.service_time(round(c.tokens_in.mean), round(c.tokens_out.mean), alone), rel=1e-6)
        for c in scenario.classes)


def test_telling_the_effective_slots_in_the_estimators_own_units_scales_them_by_its_service_times() -> None:
    _, sim, est = _told_for_five_cycles("effective-own")
    params = sim.params["local"]
    n, contention = params["concurrency"], params["contention"]
    effective = n / (1.0 + contention * (n - 1))
    alone_speed = params["speed_factor"] * sim.local.thermal_factor()
    alone = {c.name: sim.local.service_time(round(c.tokens_in.mean), round(c.tokens_out.mean), alone_speed)
             for c in sim.scenario.classes}
    # The service times stay the estimator's own; the slots are the effective ones in those units:
    # x (its service times / a call alone's), weighted by the classes' arrivals.
    base = est.base_service
    assert base and any(base[c] != pytest.approx(alone[c], rel=1e-6) for c in base)
    weight = {c: est.arrivals.get(c, 0.0) + 1e-9 for c in base}
    ratio = sum(weight[c] * base[c] for c in base) / sum(weight[c] * alone[c] for c in base)
    assert ratio != pytest.approx(1.0, abs=1e-3)  # the estimator's units are not a call alone's
    assert est.slots == pytest.approx(effective * ratio)
    assert est._slots_seen_free == max(1, int(est.slots))


def test_the_told_slots_error_is_one_factor_a_scenario_or_a_fresh_one_each_cycle() -> None:
    once: List[float] = []
    noise, sim, est = _told_for_five_cycles("effective-own", (0.3, False), once)
    assert len(once) >= 3 and len(set(once)) == 1 and once[0] != pytest.approx(1.0, abs=1e-6)
    # The told slots (checked by hand in the test above) times the factor.
    assert est.slots == pytest.approx(noise.effective_own_slots(est, sim) * once[0])
    # The same scenario draws the same factor again (the paired runs' draws see one error).
    again: List[float] = []
    _told_for_five_cycles("effective-own", (0.3, False), again)
    assert again == once
    each: List[float] = []
    _told_for_five_cycles("effective-own", (0.3, True), each)
    assert len(set(each)) == len(each) >= 3
    # Without an error nothing is scaled.
    none: List[float] = []
    _told_for_five_cycles("effective-own", (0.0, False), none)
    assert set(none) == {1.0}


def test_the_told_slots_error_needs_told_slots() -> None:
    for extra in (["--tell-slots-error", "0.2"], ["--tell-local-model", "service", "--tell-slots-error", "0.2"],
                  ["--tell-local-model", "effective-own", "--tell-slots-error-each-cycle"],
                  ["--tell-local-model", "effective-own", "--tell-slots-error", "-1"]):
        proc = run_script("adaptation_noise", *extra, timeout=60)
        assert proc.returncode == 2 and "needs a --tell-local-model that tells the slots" in proc.stderr, extra


def test_adaptation_noise_runs_named_scenarios_over_the_draws(tmp_path: Path) -> None:
    # A shipped scenario by name: the bench's one draw of it is chance too (api_price_spike's verdict
    # moves with the routing dice), so it is measured over draws like the generated ones.
    out = tmp_path / "noise.json"
    proc = run_script("adaptation_noise", "--scenario", "steady", "--repeats", "2", "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert list(figures["objectives"]) == ["steady"] and figures["seeds"] == [] and figures["named"] == ["steady"]
    first, second = figures["objectives"]["steady"]
    assert first != second  # other routing draws: another run
    from dualtrack.bench.adaptation import QUICK_TIME_SCALE
    from dualtrack.simulation import Simulation
    from dualtrack.simulation.scenario import load_scenario
    bench_draw = Simulation(load_scenario("steady").time_scaled(QUICK_TIME_SCALE), "strategy:adaptive").run()
    assert first == pytest.approx(bench_draw.summary["objective"])
    # A name that is neither shipped nor a file is refused before anything runs, naming it.
    proc = run_script("adaptation_noise", "--scenario", "no_such_scenario", "--repeats", "2", timeout=60)
    assert proc.returncode == 2 and "--scenario no_such_scenario" in proc.stderr


def test_adaptation_noise_runs_a_generated_scenario_by_name(tmp_path: Path) -> None:
    # random_<seed>_<index> picks one generated scenario out of a set (say those with a budget),
    # the same draws as when its whole seed runs: a subset pairs with an earlier run of the set.
    out = tmp_path / "noise.json"
    proc = run_script("adaptation_noise", "--scenario", "random_1_002", "--repeats", "2", "--quick",
                      "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert list(figures["objectives"]) == ["random_1_002"] and figures["named"] == ["random_1_002"]
    from dualtrack.bench.adaptation import QUICK_TIME_SCALE
    from dualtrack.simulation import Simulation
    from dualtrack.simulation.generator import generate_scenario
    bench_draw = Simulation(generate_scenario(1, 2).time_scaled(QUICK_TIME_SCALE), "strategy:adaptive").run()
    assert figures["objectives"]["random_1_002"][0] == pytest.approx(bench_draw.summary["objective"])


def test_the_comparison_counts_the_moves_and_names_the_largest_each_way() -> None:
    noise = bench_script("adaptation_noise")
    theirs = {"a": [1.0, 1.0], "b": [0.5, 0.5], "c": [0.8, 0.8], "d": [0.9, 0.9]}
    mine = {"a": [1.01, 1.01], "b": [0.49, 0.49], "c": [0.8, 0.8], "d": [0.9045, 0.9045]}
    c = noise.compare(mine, theirs)
    assert (c["up"], c["down"]) == (2, 1)  # "c" did not move
    assert [n for n, _ in c["largest_down"]] == ["b"]
    assert [n for n, _ in c["largest_up"]] == ["a", "d"]
    assert c["largest_down"][0][1] == pytest.approx(-2.0)
    assert c["largest_up"][1][1] == pytest.approx(0.5)
    assert c["mean_difference_percent"] == pytest.approx((1.0 - 2.0 + 0.0 + 0.5) / 4)
