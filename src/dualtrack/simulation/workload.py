"""The queries of a simulation: when they arrive, what they are, and each one being served.

    workload = Workload(scenario, seed=1)
    spec = workload.next()            # a QuerySpec, or None after the scenario's end
    request = Request("r1", spec, spec.at)

:class:`Workload` is a pure function of the scenario and the seed, so every
policy run on the same seed faces the very same queries and random draws.
:class:`QueryTape` draws them once and replays them to any number of runs
(the benchmark's search over static splits runs one scenario a hundred
times); a run fed from the tape sees exactly the workload's queries.
:class:`Request` is what the event loop keeps about one query while it is
served (its plan, its model calls, how it ended); planners read its
``spec`` and ``context``.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

from ..router.policy import RoutePlan
from .models import Call, Draws
from .scenario import Scenario, apply_change


class QuerySpec:
    """One query of the workload: when, which class, how long, its random draws."""

    __slots__ = ("at", "query_class", "tokens_in", "tokens_out", "complexity", "draws")

    def __init__(self, at: float, query_class: str, tokens_in: int, tokens_out: int, complexity: float,
                 draws: Draws) -> None:
        self.at = at
        self.query_class = query_class
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out
        self.complexity = complexity
        self.draws = draws


class Workload:
    """Poisson arrivals and queries: a pure function of the scenario and the seed.

    The rate and class shares follow the timeline's ``workload.*`` changes;
    with ``mix_variation`` the shares also drift at random every
    ``mix_period``. Every policy sees the same queries.
    """

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.rng = random.Random(f"dualtrack-sim:{seed}:workload")
        self.classes = scenario.classes
        self.duration = scenario.duration
        self.state = {"workload": scenario.initial_params()["workload"]}
        self.variation = scenario.mix_variation
        self.factors = [1.0] * len(self.classes)
        changes: List[Tuple[float, int, Any]] = [(e.at, 0, e) for e in scenario.timeline if e.touches("workload.")]
        if self.variation > 0:
            k = 1
            while k * scenario.mix_period < scenario.duration:
                changes.append((k * scenario.mix_period, 1, None))
                k += 1
        changes.sort(key=lambda c: (c[0], c[1]))
        self._changes = changes
        self._next_change = 0
        self.t = 0.0
        if self.variation > 0:
            self._redraw_mix()
        self._recompute()

    def _recompute(self) -> None:
        shares = self.state["workload"]["share"]
        weights = [shares[c.name] * f for c, f in zip(self.classes, self.factors, strict=True)]
        total = sum(weights)
        acc, cum = 0.0, []
        for w in weights:
            acc += w / total
            cum.append(acc)
        cum[-1] = 1.0
        self._cum = cum

    def _redraw_mix(self) -> None:
        s = self.variation
        self.factors = [math.exp(s * self.rng.gauss(0.0, 1.0) - 0.5 * s * s) for _ in self.classes]

    def current_shares(self) -> Dict[str, float]:
        prev = 0.0
        out = {}
        for c, edge in zip(self.classes, self._cum, strict=True):
            out[c.name] = edge - prev
            prev = edge
        return out

    def next(self) -> Optional[QuerySpec]:
        """The next query, or ``None`` after the end of the scenario."""
        rng = self.rng
        while True:
            t = self.t + rng.expovariate(self.state["workload"]["rate"])
            if self._next_change < len(self._changes) and self._changes[self._next_change][0] <= t:
                # Poisson arrivals are memoryless: restart from the change with the new rate.
                at, kind, event = self._changes[self._next_change]
                self._next_change += 1
                self.t = at
                if kind == 0:
                    for ch in event.changes:
                        if ch.path.startswith("workload."):
                            apply_change(self.state, ch)
                else:
                    self._redraw_mix()
                self._recompute()
                continue
            break
        if t >= self.duration:
            return None
        self.t = t
        c = self.classes[bisect_right(self._cum, rng.random())] if len(self.classes) > 1 else self.classes[0]
        gauss = rng.gauss
        uniform = rng.random
        complexity = gauss(c.complexity_mean, c.complexity_sd) if c.complexity_sd > 0 else c.complexity_mean
        complexity = 0.0 if complexity < 0.0 else 1.0 if complexity > 1.0 else round(complexity, 3)
        return QuerySpec(t, c.name, c.tokens_in.draw(gauss(0.0, 1.0)), c.tokens_out.draw(gauss(0.0, 1.0)),
                         complexity, Draws(gauss(0.0, 1.0), gauss(0.0, 1.0), uniform(), uniform(),
                                           gauss(0.0, 1.0), uniform(), uniform()))


class QuerySource(Protocol):
    """Where a simulation takes its queries from, one at a time, in arrival order."""

    def next(self) -> Optional[QuerySpec]: ...


class QueryTape:
    """Every query of a scenario for a seed, drawn once by :class:`Workload`.

    ``reader()`` gives a fresh source that replays them: the same queries,
    the same draws, so a run fed from the tape equals one that draws them.
    The queries are shared, never changed by a run.
    """

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario.name
        self.seed = seed
        self.duration = scenario.duration
        workload = Workload(scenario, seed)
        specs: List[QuerySpec] = []
        spec = workload.next()
        while spec is not None:
            specs.append(spec)
            spec = workload.next()
        self.specs: Sequence[QuerySpec] = tuple(specs)

    def __len__(self) -> int:
        return len(self.specs)

    def reader(self) -> "TapeReader":
        return TapeReader(self.specs)


class TapeReader:
    """One replay of a :class:`QueryTape`."""

    __slots__ = ("specs", "_i")

    def __init__(self, specs: Sequence[QuerySpec]) -> None:
        self.specs = specs
        self._i = 0

    def next(self) -> Optional[QuerySpec]:
        i = self._i
        if i >= len(self.specs):
            return None
        self._i = i + 1
        return self.specs[i]


class Request:
    """One query being served: its plan, its calls and how it ended."""

    __slots__ = ("rid", "spec", "arrival", "plan", "path", "calls", "fallback_used", "hedged", "done", "outcome",
                 "latency", "quality", "cost", "answered_by", "context")

    def __init__(self, rid: str, spec: QuerySpec, arrival: float) -> None:
        self.rid = rid
        self.spec = spec
        self.arrival = arrival
        self.plan: Optional[RoutePlan] = None
        self.path = ""
        self.calls: List[Call] = []
        self.fallback_used = False
        self.hedged = False  # a second call was started on the other track (a hedge)
        self.done = False
        self.outcome = ""
        self.latency = 0.0
        self.quality: Optional[float] = None
        self.cost = 0.0
        self.answered_by: Optional[str] = None
        self.context = {"query_class": spec.query_class, "estimated_tokens": spec.tokens_in,
                        "complexity": spec.complexity}


__all__ = ["QuerySource", "QuerySpec", "QueryTape", "Request", "TapeReader", "Workload"]
