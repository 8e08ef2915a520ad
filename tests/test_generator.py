"""Tests for dualtrack.simulation.generator: random scenarios drawn from a seed, and ``--save``/replay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dualtrack.cli import main
from dualtrack.simulation import Scenario, Simulation, load_scenario
from dualtrack.simulation.generator import (
    CLASS_NAMES,
    EPISODES,
    MIN_GAP_MINUTES,
    generate_data,
    generate_scenario,
    generate_suite,
    save_scenarios,
)
from dualtrack.simulation.scenario import EXPECT_KINDS

SAMPLE = [(seed, index) for seed in (1, 2, 3) for index in range(25)]


def test_a_scenario_is_a_function_of_seed_and_index() -> None:
    assert generate_data(4, 7) == generate_data(4, 7)
    assert generate_scenario(4, 7) == generate_scenario(4, 7)
    # drawing others in between changes nothing: each (seed, index) has its own stream
    generate_suite(3, [9])
    assert generate_data(4, 7) == generate_data(4, 7)
    assert generate_data(4, 7) != generate_data(4, 8) and generate_data(4, 7) != generate_data(5, 7)
    assert generate_data(4, 7)["name"] == "random_4_007"
    with pytest.raises(ValueError):
        generate_data(-1, 0)


@pytest.mark.parametrize("seed, index", SAMPLE)
def test_every_drawn_scenario_validates_and_is_plausible(seed: int, index: int) -> None:
    data = generate_data(seed, index)
    scenario = Scenario.from_dict(data)  # the normal loader: schema and meaning
    assert scenario == generate_scenario(seed, index)
    assert 30 * 60 <= scenario.duration <= 45 * 60
    assert scenario.class_names == CLASS_NAMES
    assert scenario.adaptation_interval == 30.0
    assert 0.3 <= float(data["description"].split("all-local demand ")[1].split(" x")[0]) <= 3.2
    times = [e.at for e in scenario.timeline]
    assert len(times) <= 4 and times == sorted(times)
    assert all(MIN_GAP_MINUTES * 60 <= t <= scenario.duration - MIN_GAP_MINUTES * 60 for t in times)
    assert all(b - a >= MIN_GAP_MINUTES * 60 for a, b in zip(times, times[1:], strict=False))
    for event in scenario.timeline:
        if event.expect is not None:
            assert event.expect.kind in EXPECT_KINDS and event.expect.preference == "local_bias"
    battery = scenario.params["battery"]
    assert battery is None or "battery_threshold_percent" in data["constraints"]


def test_the_draws_cover_the_catalogue() -> None:
    scenarios = [generate_data(seed, index) for seed, index in SAMPLE]
    events = [e for s in scenarios for e in s.get("timeline", [])]
    counts = [len(s.get("timeline", [])) for s in scenarios]
    assert set(counts) == {0, 1, 2, 3, 4}
    kinds = {e["expect"].get("kind", "onset") for e in events if "expect" in e}
    assert kinds == {"onset", "recovery"}
    assert any("expect" not in e for e in events)  # not every change has a clear direction
    assert sum("max_cost_per_hour" in s["constraints"] for s in scenarios) > 5
    assert sum(s["machine"]["battery"] is not None for s in scenarios) > 5
    paths = {p for e in events for op in ("set", "scale", "add") for p in e.get(op, {})}
    for path in ("api.outage", "api.latency_multiplier", "api.price_multiplier", "api.rate_limit_per_minute",
                 "local.speed_factor", "local.available", "local.error_rate", "workload.rate", "battery.plugged"):
        assert path in paths, path
    assert any(p.startswith("local.quality.") for p in paths) and any(p.startswith("api.quality.") for p in paths)
    assert any(p.startswith("workload.share.") for p in paths)
    assert len(EPISODES) >= 12
    # the ratio of all-local demand to local capacity spans starved to ample
    ratios = [float(s["description"].split("all-local demand ")[1].split(" x")[0]) for s in scenarios]
    assert min(ratios) < 0.5 and max(ratios) > 2.0


def test_a_recovery_restores_what_its_onset_changed() -> None:
    for seed, index in SAMPLE:
        scenario = generate_scenario(seed, index)
        timeline = scenario.timeline
        for onset, recovery in zip(timeline, timeline[1:], strict=False):
            if recovery.expect is None or recovery.expect.kind != "recovery" or onset.expect is None:
                continue
            assert recovery.expect.direction != onset.expect.direction
            assert recovery.expect.query_class == onset.expect.query_class


def test_saved_scenarios_reload_to_the_same_scenario(tmp_path: Path) -> None:
    datas = [generate_data(6, i) for i in range(4)]
    paths = save_scenarios(datas, tmp_path / "drawn")
    assert [p.name for p in paths] == [f"random_6_00{i}.yaml" for i in range(4)]
    for data, path in zip(datas, paths, strict=True):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema=")
        schema = (path.parent / first.split("$schema=", 1)[1]).resolve()
        assert schema.name == "scenario.schema.json" and json.loads(schema.read_text())["title"]
        assert yaml.safe_load(path.read_text()) == json.loads(json.dumps(data))
        loaded = load_scenario(path)
        assert loaded == Scenario.from_dict(data) and loaded.source == str(path)
        assert Simulation(loaded.time_scaled(0.1), "all_api").run().summary == \
            Simulation(Scenario.from_dict(data).time_scaled(0.1), "all_api").run().summary


def test_bench_random_save_and_replay(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "random.json"
    args = ["bench", "adaptation", "--random", "1", "--seed", "3", "--quick", "--policy", "all_api", "--policy",
            "fixed_50_50", "--jobs", "1"]
    assert main(args + ["--save", str(tmp_path / "drawn"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "random_3_000" in printed and "seeds: generator seed 3, 1 scenario each" in printed
    first = json.loads(out.read_text())
    assert first["suite"] == "random" and first["seeds"]["generator"] == [3]
    entry = first["scenarios"]["random_3_000"]
    assert entry["generated"] == {"seed": 3, "index": 0}
    saved = tmp_path / "drawn" / "random_3_000.yaml"
    assert entry["file"] == str(saved) and saved.is_file()

    replay = tmp_path / "replay.json"
    assert main(["bench", "adaptation", "--scenario", str(saved), "--quick", "--policy", "all_api", "--policy",
                 "fixed_50_50", "--jobs", "1", "--json", str(replay)]) == 0
    again = json.loads(replay.read_text())["scenarios"]["random_3_000"]
    for policy in ("all_api", "fixed_50_50"):
        assert again["policies"][policy]["summary"] == entry["policies"][policy]["summary"]


def test_bad_random_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "adaptation", "--random", "0"]) == 2
    assert "--random" in capsys.readouterr().err
    assert main(["bench", "adaptation", "--save", str(tmp_path)]) == 2
    assert "--save" in capsys.readouterr().err
    assert main(["bench", "adaptation", "--random", "1", "--seeds", "3-1"]) == 2
    assert "--seeds" in capsys.readouterr().err
