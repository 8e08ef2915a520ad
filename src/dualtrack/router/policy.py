"""Routing policy: from a recommendation to a plan. Pure and cheap.

The live router (``router.router``) and the simulator (``simulation``) both
turn each query into a ``RoutePlan`` here, so what the benchmarks measure
is what the router does.

- ``local_bias`` is a traffic share: a query goes local with that
  probability (per query class, as the preferences say).
- A query whose complexity reaches ``parallel_threshold`` runs on both
  tracks; with preemption the first acceptable answer wins.
- An immediate override from the optimizer (memory, GPU memory,
  concurrency, battery, cost) forces its path; a failing track's override
  only moves the share, so the track keeps its exploration floor.
- Otherwise each track keeps at least ``floor`` of the traffic (0.5% by
  default), so a track that fell out of favour still produces the metrics
  that can bring it back. The strategies keep their own exploration floor
  in the preferences they publish (``exploration_floor``, and the probes of
  an objective); the router's is the backstop for preferences without one.
- The other track is the fallback, tried once on error or timeout.

How a plan's calls end in an answer is decided here too, by pure functions
that the live router and the simulator both call (each with its own threads
or events around them): :func:`fallback_track` (the other track, once),
:func:`race_winner` (which answer wins a parallel race or a hedged one),
:func:`race_failure_outcome` (how a race without an answer ended) and
:func:`hedgeable` (whether a slow call may get a hedge at all).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, TypeVar

from ..optimizer.overrides import SOFT_OVERRIDES
from ..vocabulary import TRACKS, other_track

_Answer = TypeVar("_Answer")


@dataclass(frozen=True)
class RoutePlan:
    path: str  # "local", "api" or "parallel"
    tracks: Tuple[str, ...]  # tracks to start: one, or both for parallel
    fallback: Optional[str]  # track tried once if the first fails; None for parallel
    timeouts_seconds: Mapping[str, float]
    quality_threshold: float
    preempt: bool
    query_class: str
    complexity: float
    recommendation: Mapping[str, Any]


other = other_track
"""The old name of :func:`dualtrack.vocabulary.other_track`."""


#: The least share of the traffic each track keeps whatever the preferences say (see above).
DEFAULT_FLOOR = 0.005


class RoutingPolicy:
    """Turns recommendations into plans.

    ``rng`` is injectable so the simulator is deterministic for a seed.
    """

    def __init__(self, optimizer: Any, *, rng: Optional[random.Random] = None, floor: float = DEFAULT_FLOOR,
                 enable_preemption: Optional[bool] = None, fallback: bool = True) -> None:
        if not 0.0 <= floor <= 0.5:
            raise ValueError(f"floor: must be within [0, 0.5], got {floor!r}")
        self.optimizer = optimizer
        self.rng = rng or random.Random()
        self.floor = floor
        self.enable_preemption = (optimizer.config.enable_preemption if enable_preemption is None
                                  else enable_preemption)
        self.fallback = fallback

    def plan(self, query: str, context: Optional[Dict[str, Any]] = None) -> RoutePlan:
        rec = self.optimizer.get_optimization_recommendations(query, context)
        routing = rec["routing"]
        complexity = float(rec.get("complexity", 0.0))
        overrides = rec.get("overrides")
        if overrides and not all(o in SOFT_OVERRIDES for o in overrides):
            path = rec["preferred_path"]  # a machine limit, the battery, the cost cap: now, for every query
        elif routing["parallel_threshold"] <= 1.0 and complexity >= routing["parallel_threshold"]:
            path = "parallel"
        else:
            share = min(max(routing["local_bias"], self.floor), 1.0 - self.floor)
            path = "local" if self.rng.random() < share else "api"
        if path == "parallel":
            tracks: Tuple[str, ...] = TRACKS
            fallback = None
        else:
            tracks = (path,)
            fallback = other_track(path) if self.fallback else None
        return RoutePlan(
            path=path, tracks=tracks, fallback=fallback,
            timeouts_seconds=rec["timeouts_seconds"],
            quality_threshold=routing["quality_threshold"],
            preempt=self.enable_preemption,
            query_class=rec["query_class"], complexity=complexity, recommendation=rec,
        )


# ------------------------------------------------------------------ how a plan's calls end


def fallback_track(plan: RoutePlan, *, fell_back: bool) -> Optional[str]:
    """The track to try after a single-track call failed (error or timeout), or ``None``: give up.

    The plan's fallback (the other track), tried once: ``fell_back`` says it
    already was.
    """
    if fell_back or plan.fallback not in TRACKS:
        return None
    return plan.fallback


def hedgeable(plan: RoutePlan) -> bool:
    """A slow call of this plan may get a second call on the other track (a hedge).

    Only a single-track plan with somewhere else to go (a fallback) and no
    immediate override: when a machine limit, the battery or the cost cap
    forced the track, a slow call must not undo that by starting the other
    one. Whether a hedge then fires is the delay's and the budget's call
    (:class:`~dualtrack.router.hedging.HedgePolicy`).
    """
    if plan.fallback not in TRACKS:
        return False
    rec = plan.recommendation
    return not (isinstance(rec, Mapping) and rec.get("overrides"))


def acceptable(quality: Optional[float], threshold: float) -> bool:
    """An answer may preempt a race: its quality is unknown or at least ``threshold``."""
    return quality is None or quality >= threshold


def race_winner(answers: Sequence[_Answer], quality: Callable[[_Answer], Optional[float]], threshold: float, *,
                preempt: bool, settled: bool) -> Optional[_Answer]:
    """The answer that wins a parallel race so far, or ``None`` (none yet, or none at all once settled).

    ``answers`` are the successful calls so far, earliest first; ``quality``
    reads an answer's quality (``None``: unknown). With ``preempt`` the best
    :func:`acceptable` answer wins as soon as there is one, and the calls
    still running are cancelled. Once ``settled`` (no call is still running)
    the best answer wins, acceptable or not. Best: the highest quality,
    unknown counting as ``threshold``; ties go to the earlier answer.
    """
    if preempt:
        candidates = [a for a in answers if acceptable(quality(a), threshold)]
        if candidates:
            return _best(candidates, quality, threshold)
    if settled and answers:
        return _best(answers, quality, threshold)
    return None


def _best(answers: Sequence[_Answer], quality: Callable[[_Answer], Optional[float]], threshold: float) -> _Answer:
    def rank(answer: _Answer) -> float:
        q = quality(answer)
        return threshold if q is None else q

    best = answers[0]
    for answer in answers[1:]:
        if rank(answer) > rank(best):
            best = answer
    return best


def race_failure_outcome(failures: Iterable[str]) -> str:
    """How a race without an answer ended: ``timeout`` when every call timed out, else ``error``."""
    kinds = list(failures)
    return "timeout" if kinds and all(kind == "timeout" for kind in kinds) else "error"


__all__ = ["RoutePlan", "RoutingPolicy", "acceptable", "fallback_track", "hedgeable", "race_failure_outcome",
           "race_winner"]
