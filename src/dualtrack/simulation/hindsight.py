"""The best per-class static split in hindsight: a strong baseline for the adaptation benchmark.

    evaluator = SplitEvaluator(scenario, seed=1)
    found = search_split(evaluator)                 # grid of local shares per class
    found.split, found.objective, found.method      # {"short": 1.0, "medium": 0.5, "long": 0.0}, 0.8912, "grid"

A split gives each query class a fixed local share (the rest goes to the
API, with the router's default timeouts and one fallback, never parallel:
:class:`~dualtrack.simulation.planners.PerClassStaticPlanner`). Which split
is best depends on the scenario, so the search runs the scenario once per
candidate and keeps the one with the highest objective -- in hindsight,
knowing the whole run: no router could pick it in advance.

How it searches (``method``):

- ``grid``: every split of the grid (:data:`GRID_LEVELS` per class, 125
  splits for three classes);
- ``descent``: every split of the coarse grid (every other level: 0, 0.5,
  1), then coordinate descent on the full grid from the best of them -- each
  class in turn tries every level with the others fixed, until a whole
  round improves nothing;
- ``auto`` (the default): ``grid`` when the grid costs at most
  :data:`FULL_GRID_QUERY_BUDGET` simulated queries (splits x queries in the
  run), ``descent`` otherwise.

Both always evaluate the splits in ``include`` (the benchmark passes the
static policies' splits: every class local, every class on the API, every
class half and half, the split tuned on ``steady``), so the result is never
worse than any of them.

:func:`search_schedule` goes one step further: the best split *per regime
segment* (between two timeline events), a split schedule that knows when
each regime starts and what suits it. It starts from a split (the static
one found above) and, at the start of each segment, forks the run
(:meth:`Simulation.fork`, the state carried over: queues, heat, battery,
spend), tries candidate splits for that segment -- the current one, the
starting one, every class local, every class on the API, then a climb from
the best of them: one class one grid level up or down at a time, while that
improves -- each run to the segment's end plus :data:`SETTLE_SECONDS` (so the
queries it routed last are counted), keeps the one with the best objective
so far, and runs on with it. The schedule is judged one segment at a time
(what a segment's split leaves to the next is not weighed), so it is a
strong reference rather than the best schedule there is.

Runs are fast: statics never read the optimizer, so they run with
``record_metrics=False``, and all share one :class:`QueryTape` (the queries
drawn once). Each split is run at most once per evaluator.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .loop import Simulation
from .models import INF
from .objective import OBJECTIVE, Objective
from .planners import PerClassStaticPlanner, perclass_policy
from .results import SimulationResult
from .scenario import Scenario
from .workload import QueryTape

#: Local shares per class the search may pick.
GRID_LEVELS: Tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
#: ``auto`` searches the full grid up to this many simulated queries (splits x queries per run).
FULL_GRID_QUERY_BUDGET = 500_000
#: A segment's candidate split is judged this long after the segment's end, so that the
#: queries it routed near the end are counted (a call times out after 30 s, its fallback after 30 more).
SETTLE_SECONDS = 60.0
METHODS: Tuple[str, ...] = ("auto", "grid", "descent")

SplitKey = Tuple[float, ...]


def uniform_split(classes: Sequence[str], share: float) -> Dict[str, float]:
    """Every class with the same local share (``1.0``: all local)."""
    return {name: float(share) for name in classes}


def grid_splits(classes: Sequence[str], levels: Sequence[float] = GRID_LEVELS) -> List[Dict[str, float]]:
    """Every split of the grid, in a fixed order."""
    return [dict(zip(classes, combo, strict=True)) for combo in itertools.product(levels, repeat=len(classes))]


class SplitEvaluator:
    """Runs per-class splits on one scenario and seed: fast, and each split once."""

    def __init__(self, scenario: Scenario, seed: Optional[int] = None, objective: Objective = OBJECTIVE) -> None:
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else int(seed)
        self.objective_weights = objective
        self.classes = scenario.class_names
        self._tape: Optional[QueryTape] = None
        self.scores: Dict[SplitKey, float] = {}

    @property
    def tape(self) -> QueryTape:
        if self._tape is None:
            self._tape = QueryTape(self.scenario, self.seed)
        return self._tape

    def key(self, split: Mapping[str, float]) -> SplitKey:
        missing = [c for c in self.classes if c not in split]
        extra = [c for c in split if c not in self.classes]
        if missing or extra:
            raise ValueError(f"split {dict(split)} must give a share for each class of {self.scenario.name} "
                             f"({', '.join(self.classes)}), and only for those")
        return tuple(float(split[c]) for c in self.classes)

    def split(self, key: SplitKey) -> Dict[str, float]:
        return dict(zip(self.classes, key, strict=True))

    def run(self, split: Mapping[str, float]) -> SimulationResult:
        """One full run of the split (its result, summary and series)."""
        key = self.key(split)
        result = Simulation(self.scenario, perclass_policy(self.split(key)), seed=self.seed,
                            objective=self.objective_weights, record_metrics=False, tape=self.tape).run()
        self.scores[key] = result.summary["objective"]
        return result

    def objective(self, split: Mapping[str, float]) -> float:
        """The split's objective (rounded as the benchmark reports it); each split runs once."""
        key = self.key(split)
        if key not in self.scores:
            self.run(split)
        return self.scores[key]

    def best(self) -> Tuple[Dict[str, float], float]:
        """The best split evaluated so far (ties: the one with more local traffic, for a fixed order)."""
        if not self.scores:
            raise ValueError("no split evaluated yet")
        key = max(self.scores, key=lambda k: (self.scores[k], k))
        return self.split(key), self.scores[key]


@dataclass(frozen=True)
class Hindsight:
    """What :func:`search_split` found."""

    split: Dict[str, float]
    objective: float
    method: str  # "grid" or "descent"
    evaluated: int  # splits run
    grid_size: int
    levels: Tuple[float, ...]
    scores: Dict[SplitKey, float] = field(repr=False, default_factory=dict)

    def describe(self) -> str:
        how = (f"full grid of {self.grid_size} splits" if self.method == "grid"
               else f"coarse grid and coordinate descent, {self.evaluated} of {self.grid_size} splits")
        return f"levels {', '.join(f'{v:g}' for v in self.levels)} per class; {how}"


def choose_method(evaluator: SplitEvaluator, levels: Sequence[float], method: str = "auto") -> str:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if method != "auto":
        return method
    size = len(levels) ** len(evaluator.classes)
    return "grid" if size * len(evaluator.tape) <= FULL_GRID_QUERY_BUDGET else "descent"


def search_split(evaluator: SplitEvaluator, levels: Sequence[float] = GRID_LEVELS, *, method: str = "auto",
                 include: Iterable[Mapping[str, float]] = ()) -> Hindsight:
    """The best split of the grid ``levels`` per class (see the module for ``method``)."""
    levels = tuple(sorted(set(float(v) for v in levels)))
    if not levels or levels[0] < 0.0 or levels[-1] > 1.0:
        raise ValueError(f"levels: local shares within 0..1, got {levels}")
    chosen = choose_method(evaluator, levels, method)
    for split in include:
        evaluator.objective(split)
    classes = evaluator.classes
    if chosen == "grid":
        for split in grid_splits(classes, levels):
            evaluator.objective(split)
    else:
        coarse = levels[::2] if levels[-1] in levels[::2] else levels[::2] + (levels[-1],)
        for split in grid_splits(classes, coarse):
            evaluator.objective(split)

        def best() -> Tuple[SplitKey, float]:
            split, value = evaluator.best()
            return evaluator.key(split), value

        _descend(lambda key: evaluator.objective(evaluator.split(key)), best()[0], levels, best)
    split, objective = evaluator.best()
    return Hindsight(split, objective, chosen, len(evaluator.scores), len(levels) ** len(classes), levels,
                     dict(evaluator.scores))


def _descend(score: Callable[[SplitKey], float], start: SplitKey, levels: Sequence[float],
             best: Callable[[], Tuple[SplitKey, float]]) -> None:
    """Coordinate descent: each class in turn tries every level, the others fixed, until a round improves nothing."""
    current = start
    current_score = score(current)
    improved = True
    while improved:
        improved = False
        for i in range(len(current)):
            for level in levels:
                score(current[:i] + (level,) + current[i + 1:])
            key, value = best()
            if value > current_score:
                current, current_score, improved = key, value, True


def _climb(score: Callable[[SplitKey], float], start: SplitKey, levels: Sequence[float],
           best: Callable[[], Tuple[SplitKey, float]]) -> None:
    """Hill climbing on the grid: one class one level up or down at a time, while that improves."""
    index = {level: i for i, level in enumerate(levels)}
    current = start
    current_score = score(current)
    while True:
        for i, level in enumerate(current):
            at = index.get(level)
            if at is None:
                continue
            for step in (-1, 1):
                if 0 <= at + step < len(levels):
                    score(current[:i] + (levels[at + step],) + current[i + 1:])
        key, value = best()
        if value <= current_score:
            return
        current, current_score = key, value


@dataclass(frozen=True)
class Schedule:
    """What :func:`search_schedule` found: a split per regime segment, and the run that follows it."""

    segments: Tuple[Tuple[float, Dict[str, float]], ...]  # (start, split), in time order
    objective: float
    evaluated: int  # segment runs tried
    result: SimulationResult = field(repr=False, compare=False)

    def describe(self) -> str:
        return "; ".join(f"from {start / 60:g} min: " + ", ".join(f"{c}={v:g}" for c, v in split.items())
                         for start, split in self.segments)


def search_schedule(evaluator: SplitEvaluator, start: Mapping[str, float],
                    levels: Sequence[float] = GRID_LEVELS) -> Schedule:
    """The best split per regime segment, segment after segment, from the split ``start`` (see the module)."""
    scenario = evaluator.scenario
    levels = tuple(sorted(set(float(v) for v in levels)))
    classes = evaluator.classes
    base = evaluator.key(start)
    bounds = sorted({e.at for e in scenario.timeline if 0.0 < e.at < scenario.duration})
    sim = Simulation(scenario, perclass_policy(evaluator.split(base)), seed=evaluator.seed,
                     objective=evaluator.objective_weights, record_metrics=False, tape=evaluator.tape)
    planner = sim.planner
    assert isinstance(planner, PerClassStaticPlanner)
    segments: List[Tuple[float, Dict[str, float]]] = []
    evaluated = 0
    previous = base
    for begin, end in zip([0.0] + bounds, bounds + [INF], strict=True):
        sim.run_until(begin)
        scores: Dict[SplitKey, float] = {}

        def score(key: SplitKey, end: float = end, scores: Dict[SplitKey, float] = scores) -> float:
            if key not in scores:
                trial = sim.fork()
                trial_planner = trial.planner
                assert isinstance(trial_planner, PerClassStaticPlanner)
                trial_planner.shares = dict(zip(classes, key, strict=True))
                trial.run_until(end + SETTLE_SECONDS)
                scores[key] = trial.summary()["objective"]
            return scores[key]

        def best(scores: Dict[SplitKey, float] = scores, previous: SplitKey = previous) -> Tuple[SplitKey, float]:
            # ties keep the split already running, then a fixed order
            key = max(scores, key=lambda k: (scores[k], k == previous, k))
            return key, scores[key]

        for candidate in (previous, base, (1.0,) * len(classes), (0.0,) * len(classes)):
            score(candidate)
        _climb(score, best()[0], levels, best)
        chosen, _ = best()
        evaluated += len(scores)
        planner.shares = dict(zip(classes, chosen, strict=True))
        segments.append((begin, dict(planner.shares)))
        previous = chosen
    sim.run_until(INF)
    result = sim.result()
    return Schedule(tuple(segments), result.summary["objective"], evaluated, result)


__all__ = [
    "FULL_GRID_QUERY_BUDGET", "GRID_LEVELS", "Hindsight", "METHODS", "SETTLE_SECONDS", "Schedule", "SplitEvaluator",
    "choose_method", "grid_splits", "search_schedule", "search_split", "uniform_split",
]
