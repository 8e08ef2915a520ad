"""Random scenarios: plausible workloads, machines, models and regime changes, drawn from a seed.

    data = generate_data(seed=1, index=0)          # plain data, as a scenario file holds it
    scenario = generate_scenario(seed=1, index=0)  # validated by the normal loader
    paths = save_scenarios([data], "out/")         # YAML files: replay with --scenario out/<name>.yaml

A scenario is a pure function of ``(seed, index)``: the same pair always
gives the same file, whatever else is drawn. The adaptation benchmark runs
``--random N`` of them so that the adaptive strategy is judged on situations
its rules were not tuned on.

What is drawn (``docs/simulation.md`` lists the ranges):

1. the workload: 30-45 minutes of Poisson arrivals, the three classes
   ``short``, ``medium`` and ``long`` (the names the shipped scenarios use,
   so a split tuned on ``steady`` applies) with their shares and token
   lengths varied;
2. the local model's capacity relative to the load: the ratio of the
   all-local demand to what the local model can serve is drawn from 0.3
   (ample) to 3 (starved) and its concurrency and speeds are set from it;
3. the quality of each track per class (local usually weaker on long
   queries, not always), the API's prices, latency and errors, the latency
   target and the quality floor, sometimes a cost budget
   (``max_cost_per_hour``), sometimes a laptop battery;
4. 0-4 regime changes from a catalogue (:data:`EPISODES`), at least five
   minutes apart, each with the reaction it should cause (``expect``, with
   ``kind: onset`` or ``recovery``) where the right direction is clear.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import yaml

from .scenario import Scenario

#: The query classes of every generated scenario: the shipped scenarios' names.
CLASS_NAMES: Tuple[str, ...] = ("short", "medium", "long")
#: Bump when the same (seed, index) would draw a different scenario.
GENERATOR_VERSION = 1
MIN_GAP_MINUTES = 5.0
DEMAND_RATIO_RANGE = (0.3, 3.0)

_SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "scenario.schema.json"

# Per class: share before variation, input and output token medians (ranges), the
# clip bounds (the shipped scenarios' class boundaries), complexity mean range.
_CLASSES: Dict[str, Dict[str, Any]] = {
    "short": {"share": 0.55, "tin": (50, 200), "tout": (25, 120), "tin_clip": (8, 255), "tout_clip": (4, 400),
              "sigma": (0.6, 0.5), "complexity": (0.1, 0.3)},
    "medium": {"share": 0.30, "tin": (400, 1200), "tout": (100, 400), "tin_clip": (256, 2047),
               "tout_clip": (16, 1200), "sigma": (0.5, 0.5), "complexity": (0.35, 0.55)},
    "long": {"share": 0.15, "tin": (2500, 7000), "tout": (200, 700), "tin_clip": (2048, 16000),
             "tout_clip": (32, 2000), "sigma": (0.4, 0.4), "complexity": (0.6, 0.85)},
}


def scenario_name(seed: int, index: int) -> str:
    return f"random_{seed}_{index:03d}"


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _sig(x: float, digits: int = 3) -> float:
    """``x`` to ``digits`` significant digits (readable files)."""
    if x == 0:
        return 0.0
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def _mean_tokens(spec: Dict[str, Any], key: str) -> float:
    median = spec[key]["median"]
    sigma = spec[key]["sigma"]
    return median * math.exp(sigma * sigma / 2.0)


class _Draw:
    """The drawing of one scenario: the rng and what later draws need to know."""

    def __init__(self, seed: int, index: int) -> None:
        self.rng = random.Random(f"dualtrack-scenario-generator:{GENERATOR_VERSION}:{seed}:{index}")
        self.seed = seed
        self.index = index
        self.notes: List[str] = []
        # what the episodes of the timeline leave for their recoveries
        self.outage = "off"
        self.creep_expected = False
        self.price_expected = False
        self.burst_expected = False
        self.drift: Tuple[str, str, float, Optional[str]] = ("local", "short", 0.0, None)
        self.mix_class = "short"

    # ---------------------------------------------------------------- the world

    def workload(self) -> Dict[str, Any]:
        rng = self.rng
        self.rate = round(_log_uniform(rng, 1.5, 6.0), 2)
        weights = {n: c["share"] * math.exp(rng.gauss(0.0, 0.5)) for n, c in _CLASSES.items()}
        total = sum(weights.values())
        classes: Dict[str, Any] = {}
        for name, c in _CLASSES.items():
            sigma_in, sigma_out = c["sigma"]
            classes[name] = {
                "share": round(max(0.03, weights[name] / total), 3),
                "tokens_in": {"median": int(rng.uniform(*c["tin"])), "sigma": sigma_in,
                              "min": c["tin_clip"][0], "max": c["tin_clip"][1]},
                "tokens_out": {"median": int(rng.uniform(*c["tout"])), "sigma": sigma_out,
                               "min": c["tout_clip"][0], "max": c["tout_clip"][1]},
                "complexity": {"mean": round(rng.uniform(*c["complexity"]), 2), "sd": 0.1},
            }
        self.classes = classes
        total_share = sum(c["share"] for c in classes.values())
        self.shares = {n: c["share"] / total_share for n, c in classes.items()}
        return {"rate": self.rate, "mix_variation": round(rng.uniform(0.0, 0.3), 2), "mix_period": "5m",
                "classes": classes}

    def local(self) -> Dict[str, Any]:
        """The local model, its speed set so that the all-local demand is a drawn ratio of its capacity."""
        rng = self.rng
        ratio = _log_uniform(rng, *DEMAND_RATIO_RANGE)
        contention = round(rng.uniform(0.01, 0.05), 3)
        overhead = 0.03
        prefill_per_decode = rng.uniform(20.0, 60.0)
        tin = sum(self.shares[n] * _mean_tokens(c, "tokens_in") for n, c in self.classes.items())
        tout = sum(self.shares[n] * _mean_tokens(c, "tokens_out") for n, c in self.classes.items())
        work = tin / prefill_per_decode + tout  # decode-token equivalents per query
        concurrency = rng.choice((2, 4, 8, 16, 32))
        decode = 0.0
        for _ in range(8):
            # capacity = slots / (service time x contention at full load) = rate / ratio
            per_slot = concurrency * ratio / (self.rate * (1.0 + contention * (concurrency - 1)))
            decode = work / max(per_slot - overhead, 1e-3)
            if decode > 150.0 and concurrency < 64:
                concurrency *= 2  # a fast server serves more at once, not one request faster
            elif decode < 12.0 and concurrency > 1:
                concurrency //= 2
            else:
                break
        decode = min(max(decode, 4.0), 400.0)
        capacity = concurrency / ((overhead + work / decode) * (1.0 + contention * (concurrency - 1)))
        self.demand_ratio = round(self.rate / capacity, 3)
        self.concurrency = concurrency
        self.notes.append(f"all-local demand {self.demand_ratio:g} x the local model's capacity "
                          f"({concurrency} slots at {decode:.0f} tokens/s)")

        base_memory = round(rng.uniform(1500.0, 6000.0))
        per_request = round(rng.uniform(20.0, 120.0))
        gpu_total = rng.choice((8192.0, 12288.0, 16384.0, 24576.0))
        gpu_base = round(gpu_total * rng.uniform(0.35, 0.6))
        gpu_per_request = round(rng.uniform(40.0, 200.0))
        self.memory_limits = (
            # the limits bind before the slots are full a good part of the time
            round(150 + base_memory + per_request * concurrency * rng.uniform(0.6, 1.5)),
            round(min(gpu_total, gpu_base + gpu_per_request * concurrency * rng.uniform(0.6, 1.5))),
        )

        floor = self.floor = round(rng.uniform(0.6, 0.78), 2)
        api_quality = {"short": rng.uniform(0.86, 0.94), "medium": rng.uniform(0.84, 0.93),
                       "long": rng.uniform(0.80, 0.92)}
        local_quality = {"short": rng.uniform(0.80, 0.92), "medium": rng.uniform(0.68, 0.86),
                         "long": rng.uniform(0.50, 0.80)}
        if rng.random() < 0.2:  # a strong local model: as good as the API on long queries
            local_quality["long"] = min(0.95, api_quality["long"] + rng.uniform(-0.01, 0.04))
        if rng.random() < 0.2:
            local_quality["short"] = min(0.96, api_quality["short"] + rng.uniform(-0.01, 0.03))
        self.quality = {"local": {n: round(q, 3) for n, q in local_quality.items()},
                        "api": {n: round(q, 3) for n, q in api_quality.items()}}
        self.local_good = [n for n in CLASS_NAMES if self.quality["local"][n] >= floor + 0.02]
        self.thermal_threshold = round(rng.uniform(0.7, 0.95), 2)
        self.local_error_rate = round(rng.uniform(0.001, 0.006), 4)
        return {
            "model": "local-model", "concurrency": concurrency, "max_queue": concurrency * 4,
            "contention": contention, "overhead": "30ms",
            "decode_tokens_per_second": _sig(decode), "prefill_tokens_per_second": _sig(decode * prefill_per_decode),
            "base_memory_mb": base_memory, "memory_per_request_mb": per_request,
            "gpu_memory_total_mb": gpu_total, "gpu_base_memory_mb": gpu_base,
            "gpu_memory_per_request_mb": gpu_per_request, "error_rate": self.local_error_rate,
            "thermal": {"threshold": self.thermal_threshold, "max_throttle": round(rng.uniform(0.2, 0.5), 2)},
            "battery_drain_per_hour": round(rng.uniform(0.4, 1.2), 2),
            "quality": self.quality["local"], "quality_noise": round(rng.uniform(0.04, 0.08), 3),
        }

    def api(self) -> Dict[str, Any]:
        rng = self.rng
        price_in = _sig(_log_uniform(rng, 0.15, 10.0))
        price_out = _sig(price_in * rng.uniform(2.0, 5.0))
        self.rtt = round(rng.uniform(0.03, 0.2), 3)
        self.ttft = round(rng.uniform(0.2, 0.8), 2)
        self.api_decode = round(rng.uniform(50.0, 150.0))
        self.rate_limit = int(self.rate * 60 * rng.uniform(1.2, 3.0)) if rng.random() < 0.15 else None
        self.prices = (price_in, price_out)
        out: Dict[str, Any] = {
            "model": "api-model", "rtt": f"{self.rtt * 1000:.0f}ms", "time_to_first_token": f"{self.ttft * 1000:.0f}ms",
            "decode_tokens_per_second": self.api_decode, "latency_sigma": round(rng.uniform(0.15, 0.35), 2),
            "tail_probability": round(rng.uniform(0.005, 0.03), 3),
            "error_rate": round(rng.uniform(0.002, 0.01), 4),
            "price": {"input_per_million": price_in, "output_per_million": price_out},
            "quality": self.quality["api"], "quality_noise": round(rng.uniform(0.03, 0.05), 3),
        }
        if self.rate_limit is not None:
            out["rate_limit_per_minute"] = self.rate_limit
        return out

    def api_latency(self, name: str, multiplier: float = 1.0) -> float:
        """The API's median latency for the class's mean query (prefill at 20,000 tokens/s)."""
        c = self.classes[name]
        return multiplier * (self.rtt + self.ttft + _mean_tokens(c, "tokens_in") / 20000.0
                             + _mean_tokens(c, "tokens_out") / self.api_decode)

    def query_cost(self, name: str) -> float:
        c = self.classes[name]
        return (_mean_tokens(c, "tokens_in") * self.prices[0] + _mean_tokens(c, "tokens_out") * self.prices[1]) / 1e6

    def constraints(self) -> Dict[str, Any]:
        rng = self.rng
        target = min(max(self.api_latency("long") * rng.uniform(1.1, 2.2), 2.0), 30.0)
        self.target = round(target, 1)
        out: Dict[str, Any] = {
            "target_latency_ms": round(self.target * 1000),
            "max_memory_mb": self.memory_limits[0], "max_gpu_memory_mb": self.memory_limits[1],
            "max_concurrent_requests": 64,
            "max_cost_per_request": _sig(max(2.0 * self.query_cost("long"), 1e-4), 2),
            "min_quality_score": self.floor,
        }
        spend = self.rate * 3600.0 * sum(self.shares[n] * self.query_cost(n) for n in CLASS_NAMES)
        self.budget: Optional[float] = None
        if rng.random() < 0.3:
            self.budget = _sig(max(spend * rng.uniform(0.4, 1.1), 0.01), 2)
            out["max_cost_per_hour"] = self.budget
            self.notes.append(f"a budget of ${self.budget:g}/h against ${spend:.2f}/h all on the API")
        self.battery: Optional[Dict[str, Any]] = None
        if rng.random() < 0.3:
            self.threshold = round(rng.uniform(15.0, 30.0))
            out["battery_threshold_percent"] = self.threshold
            self.battery = {"level": round(rng.uniform(0.5, 1.0), 2), "plugged": rng.random() < 0.6,
                            "idle_drain_per_hour": round(rng.uniform(0.05, 0.12), 3), "charge_per_hour": 0.5,
                            "critical_level": 0.05}
            self.notes.append(f"a laptop battery at {self.battery['level']:.0%}, "
                              f"{'plugged in' if self.battery['plugged'] else 'unplugged'}")
        return out

    # ---------------------------------------------------------------- what is used

    @property
    def local_used(self) -> bool:
        """A sensible policy sends a fair share to the local model: it answers some class well and has room."""
        return bool(self.local_good) and self.demand_ratio < 2.5

    @property
    def api_used(self) -> bool:
        """A sensible policy sends a fair share to the API: local is weak on some class or short of capacity."""
        weak = [n for n in CLASS_NAMES
                if self.quality["local"][n] < max(self.floor + 0.02, self.quality["api"][n] - 0.05)]
        return bool(weak) or self.demand_ratio > 0.7

    # ---------------------------------------------------------------- the timeline

    def times(self, duration_min: int) -> List[float]:
        """0-4 event times in minutes, at least five apart, none in the first or last five minutes."""
        rng = self.rng
        n = rng.choices((0, 1, 2, 3, 4), weights=(1, 2, 3, 3, 3))[0]
        span = duration_min - 2 * MIN_GAP_MINUTES
        n = min(n, int(span // MIN_GAP_MINUTES) + 1)
        slack = span - (n - 1) * MIN_GAP_MINUTES
        offsets = sorted(rng.uniform(0.0, slack) for _ in range(n))
        # half minutes keep events on adaptation boundaries; flooring keeps the gaps
        return [MIN_GAP_MINUTES + math.floor(2 * o) / 2 + i * MIN_GAP_MINUTES for i, o in enumerate(offsets)]

    def timeline(self, times: List[float]) -> List[Dict[str, Any]]:
        rng = self.rng
        events: List[Dict[str, Any]] = []
        i = 0
        while i < len(times):
            left = len(times) - i
            choices = [(name, e) for name, e in EPISODES.items() if e.fits(self)]
            weights = [e.weight for _, e in choices]
            name, episode = rng.choices(choices, weights=weights)[0]
            steps = episode.steps(self, left)
            # an episode recovers when the slots allow (and mostly does); one that does not is the last
            recover = episode.recovery is not None and left > steps and (rng.random() < 0.85 or left - steps > 1)
            made = episode.onset(self, steps)
            if recover:
                assert episode.recovery is not None
                made.append(episode.recovery(self))
            for event, at in zip(made, times[i:], strict=False):
                events.append({"at": f"{at:g}m", **event})
            self.notes.append(name.replace("_", " "))
            i += len(made)
            if not recover and episode.recovery is not None:
                break
        return events


def _expect(direction: str, kind: str = "onset", query_class: Optional[str] = None) -> Dict[str, Any]:
    out: Dict[str, Any] = {"local_bias": direction}
    if query_class is not None:
        out["query_class"] = query_class
    if kind != "onset":
        out["kind"] = kind
    return out


def _event(label: str, *, expect: Optional[Dict[str, Any]] = None, **ops: Dict[str, Any]) -> Dict[str, Any]:
    event: Dict[str, Any] = {"label": label}
    event.update({op: changes for op, changes in ops.items() if changes})
    if expect is not None:
        event["expect"] = expect
    return event


class Episode:
    """A kind of regime change: its onset event(s) and, when it has one, its recovery."""

    def __init__(self, weight: float, onset: Callable[[_Draw, int], List[Dict[str, Any]]],
                 recovery: Optional[Callable[[_Draw], Dict[str, Any]]] = None,
                 fits: Callable[[_Draw], bool] = lambda d: True,
                 steps: Callable[[_Draw, int], int] = lambda d, left: 1) -> None:
        self.weight = weight
        self.onset = onset
        self.recovery = recovery
        self.fits = fits
        self.steps = steps


# ------------------------------------------------------------------ the catalogue


def _outage(d: _Draw, steps: int) -> List[Dict[str, Any]]:
    d.outage = d.rng.choice(("error", "hang"))
    label = "API outage (HTTP 503)" if d.outage == "error" else "API hangs (no answer until timeout)"
    return [_event(label, set={"api.outage": d.outage}, expect=_expect("up") if d.api_used else None)]


def _outage_over(d: _Draw) -> Dict[str, Any]:
    return _event("API recovered", set={"api.outage": "off"},
                  expect=_expect("down", "recovery") if d.api_used else None)


def _creep_steps(d: _Draw, left: int) -> int:
    return max(1, min(3, left - 1, d.rng.randint(2, 3)))


def _creep(d: _Draw, steps: int) -> List[Dict[str, Any]]:
    out = []
    multiplier = 1.0
    d.creep_expected = False
    for k in range(steps):
        factor = round(d.rng.uniform(1.6, 2.2), 2)
        multiplier *= factor
        # only once the API's typical answer nears the latency target does leaning local clearly pay
        clear = d.api_used and d.api_latency("medium", multiplier) >= 0.5 * d.target
        d.creep_expected = d.creep_expected or clear
        out.append(_event(f"API latency creeps up (step {k + 1}, x{multiplier:.2f})",
                          scale={"api.latency_multiplier": factor}, expect=_expect("up") if clear else None))
    return out


def _creep_over(d: _Draw) -> Dict[str, Any]:
    return _event("API latency back to normal", set={"api.latency_multiplier": 1.0},
                  expect=_expect("down", "recovery") if d.creep_expected else None)


def _price_up(d: _Draw, steps: int) -> List[Dict[str, Any]]:
    factor = round(d.rng.uniform(3.0, 6.0), 1)
    clear = d.api_used and bool(d.local_good) and d.demand_ratio < 1.5
    d.price_expected = clear
    return [_event(f"API prices x{factor:g}", scale={"api.price_multiplier": factor},
                   expect=_expect("up") if clear else None)]


def _price_down(d: _Draw, steps: int) -> List[Dict[str, Any]]:
    factor = round(d.rng.uniform(0.15, 0.4), 2)
    d.price_expected = d.local_used
    return [_event(f"API prices x{factor:g}", scale={"api.price_multiplier": factor},
                   expect=_expect("down") if d.local_used else None)]


def _price_back(direction: str) -> Callable[[_Draw], Dict[str, Any]]:
    def recovery(d: _Draw) -> Dict[str, Any]:
        return _event("API prices back to normal", set={"api.price_multiplier": 1.0},
                      expect=_expect(direction, "recovery") if d.price_expected else None)
    return recovery


def _rate_limit(d: _Draw, steps: int) -> List[Dict[str, Any]]:
    limit = max(1, int(d.rate * 60 * d.rng.uniform(0.2, 0.5)))
    return [_event(f"API rate limit of {limit}/min", set={"api.rate_limit_per_minute": limit},
                   expect=_expect("up") if d.api_used else None)]


def _rate_limit_over(d: _Draw) -> Dict[str, Any]:
    return _event("API rate limit lifted", set={"api.rate_limit_per_minute": d.rate_limit},
                  expect=_expect("down", "recovery") if d.api_used else None)


def _throttle(d: _Draw, steps: int) -> List[Dict[str, Any]]:
    factor = round(d.rng.uniform(0.3, 0.6), 2)
    return [_event(f"local model throttled (clocks capped at {factor:.0%})",
                   scale={"local.speed_factor": factor}, set={"local.thermal.threshold": 0.5},
                   expect=_expect("down") if d.local_used else None)]


def _throttle_over(d: _Draw) -> Dict[str, Any]:
    return _event("cooling restored", set={"local.speed_factor": 1.0, "local.thermal.threshold": d.thermal_threshold},
                  expect=_expect("up", "recovery") if d.local_used else None)


def _crash(d: _Draw, steps: int) -> List[Dict[str, Any]]:
    return [_event("local model server down", set={"local.available": False},
                   expect=_expect("down") if d.local_used else None)]


def _crash_over(d: _Draw) -> Dict[str, Any]:
    return _event("local model server back", set={"local.available": True},
                  expect=_expect("up", "recovery") if d.local_used else None)


def _errors(d: _Draw, steps: int) -> List[Dict[str, Any]]:
    rate = round(d.rng.uniform(0.2, 0.6), 2)
    return [_event(f"local model fails {rate:.0%} of its calls", set={"local.error_rate": rate},
                   expect=_expect("down") if d.local_used else None)]


def _errors_over(d: _Draw) -> Dict[str, Any]:
    return _event("local errors over", set={"local.error_rate": d.local_error_rate},
                  expect=_expect("up", "recovery") if d.local_used else None)


def _drift(d: _Draw, steps: int) -> List[Dict[str, Any]]:
    """One class's quality drops on one track, below the floor (local) or below local (API)."""
    rng = d.rng
    floor = d.floor
    candidates = [("local", n) for n in d.local_good] + \
        [("api", n) for n in CLASS_NAMES if d.quality["local"][n] >= floor + 0.02]
    track, name = rng.choice(candidates) if candidates else ("api", rng.choice(CLASS_NAMES))
    q = d.quality[track][name]
    if track == "local":  # below the floor: that class should leave the local model
        drop, direction = q - floor + rng.uniform(0.05, 0.12), "down"
    else:  # below the local model's: that class should come to it
        drop, direction = max(q - d.quality["local"][name] + rng.uniform(0.03, 0.1), 0.05), "up"
    drop = round(min(drop, q - 0.2), 3)
    clear = bool(candidates) and d.demand_ratio < 1.5
    d.drift = (track, name, drop, direction if clear else None)
    who = "local model" if track == "local" else "API"
    return [_event(f"{who}'s {name} answers degrade", add={f"{track}.quality.{name}": -drop},
                   expect=_expect(direction, query_class=name) if clear else None)]


def _drift_over(d: _Draw) -> Dict[str, Any]:
    track, name, drop, direction = d.drift
    back = None if direction is None else ("up" if direction == "down" else "down")
    who = "local model" if track == "local" else "API"
    return _event(f"{who}'s {name} answers restored", add={f"{track}.quality.{name}": drop},
                  expect=_expect(back, "recovery", name) if back else None)


def _mix(d: _Draw, steps: int) -> List[Dict[str, Any]]:
    d.mix_class = name = d.rng.choice(("short", "long"))
    factor = round(d.rng.uniform(2.5, 4.0), 1)
    # which way the traffic-weighted preference should move depends on too much: no expectation
    return [_event(f"more {name} queries (share x{factor:g})", scale={f"workload.share.{name}": factor})]


def _mix_over(d: _Draw) -> Dict[str, Any]:
    name = d.mix_class
    return _event("query mix back to normal", set={f"workload.share.{name}": d.classes[name]["share"]})


def _burst(d: _Draw, steps: int) -> List[Dict[str, Any]]:
    factor = d.rng.uniform(2.0, 4.0)
    rate = round(d.rate * factor, 2)
    d.burst_expected = d.local_used and d.demand_ratio * factor > 1.0
    return [_event(f"burst to {rate:g} requests/s", set={"workload.rate": rate},
                   expect=_expect("down") if d.burst_expected else None)]


def _burst_over(d: _Draw) -> Dict[str, Any]:
    return _event("burst over", set={"workload.rate": d.rate},
                  expect=_expect("up", "recovery") if d.burst_expected else None)


def _unplug(d: _Draw, steps: int) -> List[Dict[str, Any]]:
    assert d.battery is not None
    level = round(d.threshold / 100.0 + d.rng.uniform(0.03, 0.15), 2)
    d.battery["plugged"] = False
    return [_event(f"unplugged at {level:.0%} charge", set={"battery.plugged": False, "battery.level": level},
                   expect=_expect("down") if d.local_used else None)]


def _low_battery(d: _Draw, steps: int) -> List[Dict[str, Any]]:
    level = round(d.threshold / 100.0 - d.rng.uniform(0.01, 0.05), 2)
    return [_event(f"battery low ({level:.0%})", set={"battery.level": level},
                   expect=_expect("down") if d.local_used else None)]


def _plug_in(d: _Draw) -> Dict[str, Any]:
    assert d.battery is not None
    d.battery["plugged"] = True
    return _event("plugged in", set={"battery.plugged": True},
                  expect=_expect("up", "recovery") if d.local_used else None)


#: The regime changes a generated scenario draws from: name -> episode (weights are relative).
EPISODES: Dict[str, Episode] = {
    "api_outage": Episode(3, _outage, _outage_over),
    "api_latency_creep": Episode(2, _creep, _creep_over, steps=_creep_steps),
    "api_price_rise": Episode(2, _price_up, _price_back("down")),
    "api_price_cut": Episode(1, _price_down, _price_back("up")),
    "api_rate_limit": Episode(1.5, _rate_limit, _rate_limit_over),
    "local_throttle": Episode(2, _throttle, _throttle_over),
    "local_crash": Episode(1.5, _crash, _crash_over),
    "local_errors": Episode(1.5, _errors, _errors_over),
    "quality_drift": Episode(2, _drift, _drift_over),
    "mix_shift": Episode(1, _mix, _mix_over),
    "load_burst": Episode(2, _burst, _burst_over),
    "battery_unplugged": Episode(3, _unplug, _plug_in,
                                 fits=lambda d: d.battery is not None and bool(d.battery["plugged"])),
    "battery_low": Episode(3, _low_battery, _plug_in,
                           fits=lambda d: d.battery is not None and not d.battery["plugged"]),
}


# ------------------------------------------------------------------ public


def generate_data(seed: int, index: int) -> Dict[str, Any]:
    """The scenario drawn for ``(seed, index)``, as plain data (what a scenario file holds)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be at least 0, got {seed} and {index}")
    d = _Draw(seed, index)
    duration = d.rng.randint(30, 45)
    workload = d.workload()
    local = d.local()
    api = d.api()
    constraints = d.constraints()
    battery = None if d.battery is None else dict(d.battery)
    timeline = d.timeline(d.times(duration))
    data: Dict[str, Any] = {
        "name": scenario_name(seed, index),
        "description": (f"Drawn by dualtrack's scenario generator (version {GENERATOR_VERSION}) for seed {seed}, "
                        f"index {index}: " + "; ".join(d.notes) + "."),
        "duration": f"{duration}m",
        "seed": d.rng.randrange(2 ** 31),
        "adaptation_interval": "30s",
        "monitor_interval": "1s",
        "constraints": constraints,
        "workload": workload,
        "models": {"local": local, "api": api},
        "machine": {"battery": battery},
    }
    if timeline:
        data["timeline"] = timeline
    return data


def generate_scenario(seed: int, index: int) -> Scenario:
    """The scenario drawn for ``(seed, index)``, validated by the normal loader."""
    data = generate_data(seed, index)
    return Scenario.from_dict(data, source=f"<generated {data['name']}>")


def generate_suite(count: int, seeds: Iterable[int]) -> List[Tuple[Dict[str, Any], Scenario]]:
    """``count`` scenarios per seed (indexes 0..count-1), as data and as validated scenarios."""
    if count < 1:
        raise ValueError(f"the number of random scenarios must be at least 1, got {count}")
    out = []
    for seed in seeds:
        for index in range(count):
            data = generate_data(seed, index)
            out.append((data, Scenario.from_dict(data, source=f"<generated {data['name']}>")))
    return out


def scenario_yaml(data: Dict[str, Any], folder: Union[str, Path]) -> str:
    """A scenario file's text, its first line pointing editors at the schema (relative to ``folder``)."""
    try:
        schema = os.path.relpath(_SCHEMA, Path(folder).resolve())
    except ValueError:  # another drive (Windows)
        schema = _SCHEMA.as_uri()
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=118, allow_unicode=True)
    return f"# yaml-language-server: $schema={schema}\n{body}"


def save_scenarios(datas: Sequence[Dict[str, Any]], folder: Union[str, Path]) -> List[Path]:
    """Write each scenario as ``<folder>/<name>.yaml`` (replay with ``--scenario <file>``)."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for data in datas:
        path = root / f"{data['name']}.yaml"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(scenario_yaml(data, root), encoding="utf-8")
        os.replace(tmp, path)
        paths.append(path)
    return paths


__all__ = [
    "CLASS_NAMES", "DEMAND_RATIO_RANGE", "EPISODES", "Episode", "GENERATOR_VERSION", "generate_data",
    "generate_scenario", "generate_suite", "save_scenarios", "scenario_name", "scenario_yaml",
]
