"""Hedged requests and first-token deadlines: what the router learns from time to first token.

Both answer one question about a running call: *has it shown a sign of
life yet?* A streaming backend's sign of life is its first token; a backend
that does not report one shows life only with its whole answer.

1. The router keeps, per track, the recent first-token times of its calls
   (:class:`FirstTokenTimes`, the last :data:`SAMPLES_KEPT`): the first
   token where the backend reports it, the whole answer's time where it
   does not, and, for a call the router gave up on because it had no first
   token, the time it had waited (a lower bound: without it, giving up on
   slow calls would hide them and pull the estimate down).
2. **Hedging** (:class:`HedgePolicy`): a single-track call that has no
   first token after its track's recent p95 (the *hedge delay*) gets a
   second call on the other track; the first acceptable answer wins and the
   other call is cancelled, as in a parallel race. A budget (a token bucket,
   :class:`HedgeBudget`) caps the second calls at a share of requests (10%
   by default), so a slow track cannot double the load on the other one. A
   call that *fails* before the delay is not hedged: it falls back as
   always; hedging is for slowness only.
3. **First-token deadline** (:class:`FirstTokenDeadline`): a single-track
   call to a backend that reports first tokens is abandoned (recorded as a
   ``timeout``) when it has no first token by ``max(floor, factor × p95)``,
   and the other track is tried, instead of waiting for the whole-answer
   timeout.

Both stay off for a track until it has ``min_samples`` measurements: no
data is not a reason to act. Everything here is cheap and bounded: a deque
per track, a quantile recomputed only when a sample arrived, one lock.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Deque, Dict, List, Optional

from prometheus_client import CollectorRegistry, Counter

from .._quantile import quantile

__all__ = ["HEDGE_OUTCOMES", "SAMPLES_KEPT", "FirstTokenDeadline", "FirstTokenTimes", "HedgeBudget",
           "HedgeMetrics", "HedgePolicy"]

SAMPLES_KEPT = 256
"""First-token times kept per track: enough for a stable p95 (about a dozen
values above it), few enough to follow a change within a few hundred calls."""

HEDGE_OUTCOMES = ("fired", "won", "wasted", "throttled")
"""``dualtrack_hedges_total`` outcomes: a second call started (fired); it gave
the answer (won); the first call gave it (wasted); a hedge was due but the
budget had no credit left (throttled). A hedged request where neither call
answered counts as fired only."""


def _check(name: str, value: float, lower: float, upper: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lower <= value <= upper:
        raise ValueError(f"{name}: expected a number in [{lower}, {upper}], got {value!r}")
    return float(value)


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= SAMPLES_KEPT:
        raise ValueError(f"{name}: expected an integer in [1, {SAMPLES_KEPT}], got {value!r}")
    return value


@dataclass(frozen=True)
class HedgePolicy:
    """When the router sends a second call for a slow single-track request.

    ::

        router = DualTrackRouter(optimizer, local, api, hedge=HedgePolicy(budget=0.05))

    - ``quantile`` (0.95): the hedge delay is this quantile of the first
      track's recent first-token times, at least ``min_delay`` seconds;
    - ``delay``: a fixed delay in seconds instead (no adaptation);
    - ``budget`` (0.1): at most this share of hedgeable requests get a
      second call, plus ``burst`` (1) at once;
    - ``min_samples`` (20): no hedging on a track with fewer measurements
      (unless ``delay`` is fixed).
    """

    quantile: float = 0.95
    budget: float = 0.1
    burst: float = 1.0
    min_samples: int = 20
    min_delay: float = 0.01
    delay: Optional[float] = None

    def __post_init__(self) -> None:
        _check("quantile", self.quantile, 0.5, 1.0)
        _check("budget", self.budget, 0.0, 1.0)
        _check("burst", self.burst, 1.0, 1000.0)
        _check_count("min_samples", self.min_samples)
        _check("min_delay", self.min_delay, 0.0)
        if self.delay is not None:
            _check("delay", self.delay, 0.0)

    def delay_seconds(self, times: "FirstTokenTimes") -> Optional[float]:
        """The hedge delay for a call on the track ``times`` measures, or ``None`` (not enough data)."""
        if self.delay is not None:
            return self.delay
        value = times.quantile(self.quantile, self.min_samples)
        return None if value is None else max(self.min_delay, value)


@dataclass(frozen=True)
class FirstTokenDeadline:
    """How long a single-track call may go without a first token before the
    router gives up on it and tries the other track.

    ::

        router = DualTrackRouter(optimizer, local, api, first_token_deadline=FirstTokenDeadline(factor=3))

    The deadline is ``max(floor, factor × the quantile)`` of the track's
    recent first-token times (p95 by default, ``floor`` 1 s), off until the
    track has ``min_samples`` of them. It applies only to backends that
    report their first token (streaming), and only where the plan has a
    fallback: with nowhere else to go, waiting for the answer is better.
    """

    factor: float = 3.0
    quantile: float = 0.95
    floor: float = 1.0
    min_samples: int = 20

    def __post_init__(self) -> None:
        _check("factor", self.factor, 1.0)
        _check("quantile", self.quantile, 0.5, 1.0)
        _check("floor", self.floor, 0.0)
        _check_count("min_samples", self.min_samples)

    def seconds(self, times: "FirstTokenTimes") -> Optional[float]:
        """The first-token deadline for a call on the track ``times`` measures, or ``None``."""
        value = times.quantile(self.quantile, self.min_samples)
        return None if value is None else max(self.floor, self.factor * value)


class FirstTokenTimes:
    """One track's recent first-token times, in seconds (thread-safe, bounded)."""

    def __init__(self, kept: int = SAMPLES_KEPT) -> None:
        self._samples: Deque[float] = deque(maxlen=kept)
        self._sorted: Optional[List[float]] = None  # cache, dropped when a sample arrives
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        if seconds >= 0 and not math.isinf(seconds):  # NaN fails >= 0
            with self._lock:
                self._samples.append(seconds)
                self._sorted = None

    def __len__(self) -> int:
        return len(self._samples)

    def quantile(self, q: float, min_samples: int) -> Optional[float]:
        """The ``q`` quantile, or ``None`` with fewer than ``min_samples`` samples."""
        with self._lock:
            if len(self._samples) < min_samples:
                return None
            if self._sorted is None:
                self._sorted = sorted(self._samples)
            return quantile(self._sorted, q)


class HedgeBudget:
    """A token bucket: each hedgeable request adds ``budget`` credit (up to
    ``burst``), each hedge spends one. Over ``n`` requests at most
    ``burst + budget × n`` hedges fire, however slow the track is."""

    _EPSILON = 1e-9  # ten additions of 0.1 make 0.9999999999999999

    def __init__(self, budget: float, burst: float) -> None:
        self.budget = budget
        self.burst = burst
        self._credit = burst
        self._lock = threading.Lock()

    def earn(self) -> None:
        with self._lock:
            self._credit = min(self.burst, self._credit + self.budget)

    def spend(self) -> bool:
        """Take one hedge's credit; False when there is not enough."""
        with self._lock:
            if self._credit + self._EPSILON < 1.0:
                return False
            self._credit = max(0.0, self._credit - 1.0)
            return True


class HedgeMetrics:
    """``dualtrack_hedges_total{outcome}``, in the optimizer's registry (created once per registry)."""

    _by_registry: "weakref.WeakKeyDictionary[CollectorRegistry, HedgeMetrics]" = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.hedges = Counter("dualtrack_hedges", "Hedged requests: second calls started (fired), answered "
                              "by the hedge (won) or by the first call (wasted), or not started for want of "
                              "budget (throttled).", ["outcome"], registry=registry)
        # Created up front so rate() sees the first increment.
        self.by_outcome: Dict[str, object] = {o: self.hedges.labels(o) for o in HEDGE_OUTCOMES}

    def count(self, outcome: str) -> None:
        self.by_outcome[outcome].inc()  # type: ignore[attr-defined]

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> "HedgeMetrics":
        with cls._lock:
            metrics = cls._by_registry.get(registry)
            if metrics is None:
                metrics = cls._by_registry[registry] = cls(registry)
            return metrics
