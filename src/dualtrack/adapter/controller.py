"""The adaptation controller: ONE cycle, for both ways of running the adapter.

    controller = AdaptationController(engine, source, publisher, source_name="prometheus",
                                      validity_seconds=90, clock=clock)
    cycle = controller.run_cycle(deadline=clock.monotonic() + 24)
    cycle.result, cycle.preferences.routing

A cycle, in order:

1. **fetch** every signal from the :class:`SignalSource` within the deadline;
2. **evaluate** the strategy with the rule engine;
3. **publish** the preferences document through the :class:`Publisher`.

The two modes differ only in what they hand the controller:

| mode | source | publisher |
|---|---|---|
| embedded (one process, no server) | ``EmbeddedSource``: the in-process windows | ``MemoryPublisher`` |
| process (``dualtrack adapter``) | ``PrometheusSource``: PromQL | ``PreferencesWriter`` (atomic file), |
| | | or ``StreamPublisher`` (``--dry-run``) |

A failed cycle publishes nothing: the last preferences stay as they are,
not republished, so their ``valid_until`` runs out honestly and readers
follow the expiry policy. The controller never raises: a source that cannot
answer, a file that cannot be written and an unexpected error are all a
:class:`Cycle` with ``result == "error"``. The callers add what is theirs:
the process mode its metrics, rule reloads and backoff; the embedded mode its
notification history.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, TextIO, runtime_checkable

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import PreferencesError, SourceError
from ..preferences import ConstraintState, Preferences, Reason, Routing
from .engine import Decision, RuleEngine
from .signals import Catalog, SignalValues

log = logging.getLogger(__name__)


class SignalSource(Protocol):
    """Where a cycle's signal values come from."""

    def fetch(self, catalog: Catalog, *, deadline: Optional[float] = None) -> SignalValues:
        """Every signal of ``catalog`` now; ``deadline`` is a monotonic time.

        Raises :class:`~dualtrack.errors.SourceError` when it cannot answer at all.
        """
        ...

    def constraint_states(self, values: SignalValues) -> Dict[str, ConstraintState]:
        """The constraints' states as this source knows them (for the document)."""
        ...


@runtime_checkable
class HistorySource(Protocol):
    """A signal source that can also answer as of a past moment (Prometheus keeps history):
    what the adapter replays at start (``Adapter.replay_history``)."""

    def fetch_at(self, catalog: Catalog, at: float, *, deadline: Optional[float] = None) -> SignalValues:
        """Every signal of ``catalog`` as of ``at`` (unix seconds). Raises
        :class:`~dualtrack.errors.SourceError` when it cannot answer at all."""
        ...


class Publisher(Protocol):
    """Where a cycle's preferences go."""

    @property
    def sequence(self) -> int:
        """The sequence number of the last document published (0: none yet)."""
        ...

    def publish(self, prefs: Preferences) -> Preferences:
        """Publish ``prefs``; return the document as published.

        Raises :class:`~dualtrack.errors.PreferencesError` when it cannot.
        """
        ...


class MemoryPublisher:
    """Keeps the latest document in memory (the embedded adapter)."""

    def __init__(self, initial: Preferences) -> None:
        self.current = initial
        self._sequence = 0

    @property
    def sequence(self) -> int:
        return self._sequence

    def publish(self, prefs: Preferences) -> Preferences:
        self._sequence = prefs.sequence
        self.current = prefs
        return prefs


class StreamPublisher:
    """Prints each document as JSON instead of writing a file (``dualtrack adapter --dry-run``)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    @property
    def sequence(self) -> int:
        return -1  # documents go out numbered 0: nothing is published for real

    def publish(self, prefs: Preferences) -> Preferences:
        self.stream.write(prefs.to_json())
        self.stream.flush()
        return prefs


@dataclass
class Cycle:
    """What one cycle did."""

    result: str  # "ok", "no_data" (the source answered with nothing) or "error"
    error: Optional[str] = None
    error_kind: Optional[str] = None  # "source", "publish" or "internal"
    values: Optional[SignalValues] = None
    decision: Optional[Decision] = None
    preferences: Optional[Preferences] = None  # as published
    fired: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result != "error"


def decision_to_preferences(decision: Decision, *, sequence: int, now: float, validity_seconds: float,
                            source: str, constraints: Dict[str, ConstraintState]) -> Preferences:
    """The preferences document for a decision (what the adapter publishes)."""
    return Preferences(
        sequence=sequence,
        generated_at=now,
        valid_until=now + validity_seconds,
        strategy=decision.strategy,
        source=source,
        mode=decision.mode,
        routing=Routing(**decision.routing),
        timeouts_seconds=dict(decision.timeouts_seconds),
        query_classes={qc: Routing(**p) for qc, p in decision.class_overrides().items()},
        constraints=dict(constraints),
        reasons=[Reason(rule=r.rule, message=r.message, query_class=r.query_class,
                        signals=dict(r.signals), changes=dict(r.changes)) for r in decision.reasons],
    )


class AdaptationController:
    """Fetch, evaluate, publish: one cycle at a time (a lock keeps them one at a time)."""

    def __init__(self, engine: RuleEngine, source: SignalSource, publisher: Publisher, *, source_name: str,
                 validity_seconds: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self.engine = engine
        self.source = source
        self.source_name = source_name  # the documents' ``source``: "embedded" or "prometheus"
        self.publisher = publisher
        self.validity_seconds = validity_seconds
        self.clock = clock
        self._lock = threading.Lock()

    def run_cycle(self, *, deadline: Optional[float] = None) -> Cycle:
        """One cycle; never raises (a failure is a ``Cycle`` with ``result == "error"``)."""
        with self._lock:
            try:
                return self._cycle(self.engine.strategies.catalog, deadline)
            except Exception as err:  # one bad cycle never kills adaptation
                log.exception("adaptation cycle failed unexpectedly; keeping the current preferences")
                return Cycle("error", f"{type(err).__name__}: {err}", "internal")

    def _cycle(self, catalog: Catalog, deadline: Optional[float]) -> Cycle:
        try:
            values = self.source.fetch(catalog, deadline=deadline)
        except SourceError as err:
            log.warning("cannot fetch signals (%s); keeping the last preferences: %s", err.kind, err)
            return Cycle("error", f"{err.kind}: {err}", "source")
        for name, problem in values.errors.items():
            log.warning("signal %s: %s", name, problem)
        decision = self.engine.evaluate(values, self.clock.monotonic())
        now = self.clock.time()
        prefs = decision_to_preferences(decision, sequence=self.publisher.sequence + 1, now=now,
                                        validity_seconds=self.validity_seconds, source=self.source_name,
                                        constraints=self.source.constraint_states(values))
        try:
            prefs = self.publisher.publish(prefs)
        except PreferencesError as err:
            log.error("cannot publish preferences: %s", err)
            return Cycle("error", f"publish: {err}", "publish", values, decision, fired=decision.fired)
        return Cycle("ok" if len(values) else "no_data", None, None, values, decision, prefs, decision.fired)


__all__ = ["AdaptationController", "Cycle", "HistorySource", "MemoryPublisher", "Publisher", "SignalSource",
           "StreamPublisher",
           "decision_to_preferences"]
