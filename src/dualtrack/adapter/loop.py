"""The adapter process: every interval, signals → rules → preferences file.

One cycle (``Adapter.run_cycle``):

1. reload the rule files if they changed — a bad edit keeps the last good
   rules, sets ``dualtrack_adapter_rules_reload_success`` to 0 and logs
   the error (file:line) once;
2. run the adaptation controller (``adapter.controller``, the same cycle the
   embedded adapter runs): fetch every signal from the source within the
   cycle budget, evaluate the strategy, publish the preferences file
   atomically (or print it with ``dry_run``);
3. save what the strategy has learned to the state file, when one is set
   (``state_file``; read once at start: a restart goes on from it, see
   ``adapter.learned_state``);
4. export the adapter's own metrics.

When the source is down, slow or refusing credentials the cycle fails: the
last published preferences stay as they are — not republished, so their
``valid_until`` runs out honestly and readers follow the expiry policy —
and the next attempt backs off (doubling, up to ``max_backoff_seconds``).
The first good cycle after an outage publishes fresh preferences again.
One bad cycle never kills the loop; SIGTERM ends it between cycles, never
in the middle of a write.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, TextIO, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .._validate import label_value
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigError, SourceError
from ..preferences import Preferences, PreferencesWriter
from ..vocabulary import DEFAULT_QUERY_CLASSES
from .controller import AdaptationController, Cycle, HistorySource, Publisher, SignalSource, StreamPublisher
from .engine import RuleEngine
from .learned_state import DEFAULT_MAX_AGE_SECONDS, StateCollector, StateFile
from .plan_view import PlanCollector
from .prometheus_source import check_window
from .strategy import StrategySet, load_strategies, rule_files

log = logging.getLogger(__name__)

#: The most intervals of history the adapter replays at start (an hour at 30 s).
MAX_REPLAY_INTERVALS = 120

CYCLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class AdapterSettings:
    """Everything the adapter process needs. One frozen object, logged once at start."""

    rules: Tuple[str, ...]
    strategy: str
    output: str
    interval_seconds: float = 30.0
    window: str = "2m"
    validity_seconds: Optional[float] = None  # default: 3 intervals
    query_classes: Tuple[str, ...] = DEFAULT_QUERY_CLASSES
    max_backoff_seconds: float = 300.0
    file_mode: int = 0o644
    once: bool = False
    dry_run: bool = False
    state_file: Optional[str] = None  # what the strategy learned, kept across restarts (None: not kept)
    state_max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS  # a state older than this at start is not used
    # Intervals of history evaluated at start, publishing nothing, before the first cycle (a source
    # that keeps history, as Prometheus does; with a restored state, only those since it was saved).
    replay_intervals: int = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.interval_seconds) or self.interval_seconds <= 0:
            raise ConfigError(f"must be a positive number of seconds, got {self.interval_seconds!r}",
                              field="interval")
        if self.validity_seconds is not None and not self.validity_seconds > 0:
            raise ConfigError(f"must be positive, got {self.validity_seconds!r}", field="validity")
        if not self.output:
            raise ConfigError("an output file is required", field="output")
        if not math.isfinite(self.state_max_age_seconds) or self.state_max_age_seconds <= 0:
            raise ConfigError(f"must be a positive number of seconds, got {self.state_max_age_seconds!r}",
                              field="state_max_age")
        if isinstance(self.replay_intervals, bool) or not isinstance(self.replay_intervals, int) \
                or not 0 <= self.replay_intervals <= MAX_REPLAY_INTERVALS:
            raise ConfigError(f"must be a whole number of intervals from 0 to {MAX_REPLAY_INTERVALS}, "
                              f"got {self.replay_intervals!r}", field="replay")
        if self.state_file is not None and os.path.realpath(self.state_file) == os.path.realpath(self.output):
            raise ConfigError("must not be the preferences file (--output)", field="state_file")
        try:
            check_window(self.window)
        except ValueError as err:
            raise ConfigError(str(err).partition(": ")[2], field="window") from None
        # The routers' rule for class names (a metric label, a key of the
        # preferences file): refused here, not by the file's validation the
        # first time a per-class rule fires.
        try:
            for qc in self.query_classes:
                label_value("query_classes", qc)
        except ValueError as err:
            raise ConfigError(str(err).partition(": ")[2], field="query_classes") from None

    @property
    def validity(self) -> float:
        return self.validity_seconds if self.validity_seconds is not None else 3.0 * self.interval_seconds


@dataclass
class CycleResult:
    result: str  # "ok", "no_data", "error"
    duration_seconds: float
    error: Optional[str] = None
    published: bool = False
    sequence: Optional[int] = None
    fired: List[str] = field(default_factory=list)


class AdapterMetrics:
    """The adapter's own /metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.cycles = Counter("dualtrack_adapter_cycles", "Adaptation cycles, by result (ok, no_data, error).",
                              ["result"], registry=registry)
        for result in ("ok", "no_data", "error"):
            self.cycles.labels(result)
        self.cycle_duration = Histogram("dualtrack_adapter_cycle_duration_seconds", "Duration of a cycle.",
                                        buckets=CYCLE_BUCKETS, registry=registry)
        self.query_duration = Histogram("dualtrack_adapter_query_duration_seconds",
                                        "Duration of each PromQL query.", buckets=CYCLE_BUCKETS, registry=registry)
        self.query_errors = Counter("dualtrack_adapter_query_errors", "Failed queries, by error type.",
                                    ["type"], registry=registry)
        for kind in ("unavailable", "timeout", "auth", "bad_query", "bad_response"):
            self.query_errors.labels(kind)
        self.publish_errors = Counter("dualtrack_adapter_publish_errors",
                                      "Preferences files that could not be written.", registry=registry)
        self.rule_evaluations = Counter("dualtrack_adapter_rule_evaluations", "Rule evaluations.",
                                        ["strategy", "rule"], registry=registry)
        self.rule_fires = Counter("dualtrack_adapter_rule_fires", "Rules that fired.", ["strategy", "rule"],
                                  registry=registry)
        self.preference = Gauge("dualtrack_adapter_preference", "Published preferences, by query class.",
                                ["preference", "query_class"], registry=registry)
        self.timeouts = Gauge("dualtrack_adapter_timeout_seconds", "Published timeout per path.", ["path"],
                              registry=registry)
        self.last_publish = Gauge("dualtrack_adapter_last_publish_timestamp_seconds",
                                  "When preferences were last published (unix seconds).", registry=registry)
        self.valid_until = Gauge("dualtrack_adapter_preferences_valid_until_timestamp_seconds",
                                 "valid_until of the last published preferences.", registry=registry)
        self.reload_success = Gauge("dualtrack_adapter_rules_reload_success",
                                    "1 if the last rules (re)load succeeded, 0 if the running rules are stale.",
                                    registry=registry)
        self.last_reload = Gauge("dualtrack_adapter_rules_last_reload_timestamp_seconds",
                                 "When the rules were last loaded successfully.", registry=registry)
        self.mode_info = Gauge("dualtrack_adapter_mode_info", "The strategy and the mode it is in (value 1).",
                               ["strategy", "mode"], registry=registry)
        self.consecutive_failures = Gauge("dualtrack_adapter_consecutive_failures",
                                          "Cycles failed in a row (0 when healthy).", registry=registry)
        self.signals = Gauge("dualtrack_adapter_signal_values", "Signal values fetched in the last cycle.",
                             registry=registry)
        self.replayed = Counter("dualtrack_adapter_replayed_intervals",
                                "Intervals of history evaluated at start, before the first cycle (nothing "
                                "published).", registry=registry)

    def observe_query(self, seconds: float, error: Optional[str]) -> None:
        self.query_duration.observe(seconds)
        if error is not None:
            self.query_errors.labels(error).inc()


class _RulesWatcher:
    """Notices changed rule files by (path, mtime, size); cheap: stats only."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self.stamp = self._stamp()

    def _stamp(self) -> Tuple[Tuple[str, int, int], ...]:
        out = []
        try:
            files = rule_files(self.paths)
        except ConfigError:
            return ()
        for f in files:
            try:
                st = f.stat()
                out.append((str(f), st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((str(f), -1, -1))
        return tuple(out)

    def changed(self) -> bool:
        stamp = self._stamp()
        if stamp != self.stamp:
            self.stamp = stamp
            return True
        return False


class Adapter:
    """The loop. ``source`` is a ``PrometheusSource`` (any :class:`SignalSource` will do: tests pass a fake)."""

    def __init__(self, settings: AdapterSettings, source: SignalSource, *,
                 registry: Optional[CollectorRegistry] = None, clock: Clock = SYSTEM_CLOCK,
                 strategies: Optional[StrategySet] = None, stdout: Optional[TextIO] = None) -> None:
        self.settings = settings
        self.source = source
        self.clock = clock
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = AdapterMetrics(self.registry)
        self.stdout = stdout or sys.stdout
        self.strategies = strategies or load_strategies(list(settings.rules))
        self.engine = RuleEngine(self.strategies, settings.strategy, query_classes=settings.query_classes,
                                 interval_seconds=settings.interval_seconds)
        # What the objective-driven strategy believes: its estimates and plan, at scrape time.
        self.registry.register(PlanCollector(lambda: self.engine.plan, "dualtrack_adapter"))
        self.metrics.reload_success.set(1)
        self.metrics.last_reload.set(clock.time())
        self._watcher = _RulesWatcher(list(settings.rules))
        self._reload_error: Optional[str] = None
        self.writer: Optional[PreferencesWriter] = None
        publisher: Publisher
        if settings.dry_run:
            publisher = StreamPublisher(self.stdout)
        else:
            publisher = self.writer = PreferencesWriter(settings.output, mode=settings.file_mode, clock=clock)
        self.controller = AdaptationController(self.engine, source, publisher, source_name="prometheus",
                                               validity_seconds=settings.validity, clock=clock)
        self.failures = 0
        self.stop_event = threading.Event()
        self.state: Optional[StateFile] = None
        if settings.state_file is not None:
            self.state = StateFile(settings.state_file, max_age_seconds=settings.state_max_age_seconds,
                                   interval_seconds=settings.interval_seconds, clock=clock)
            self.state.restore(self.engine)
            self.registry.register(StateCollector(self.state, "dualtrack_adapter"))

    # ------------------------------------------------------------ replay

    def replay_history(self) -> int:
        """Evaluate the strategy on the last ``replay_intervals`` intervals the source holds, oldest
        first, publishing nothing: the first cycle then decides from their evidence, not from
        nothing. With a learned state restored, only the intervals since it was saved. Stops at the
        first interval the source cannot answer (what was learned stays). Returns the intervals
        replayed; 0 with a source that keeps no history."""
        count = self.settings.replay_intervals
        if count <= 0 or not isinstance(self.source, HistorySource):
            return 0
        step = self.settings.interval_seconds
        now, mono = self.clock.time(), self.clock.monotonic()
        if self.state is not None and self.state.saved_at is not None:
            # Only intervals wholly after the state's last cycle: its evidence is already in.
            count = min(count, max(0, int((now - self.state.saved_at) // step) - 1))
        catalog = self.engine.strategies.catalog
        done = 0
        for k in range(count, 0, -1):
            try:
                values = self.source.fetch_at(catalog, now - k * step, deadline=self.clock.monotonic() + 0.8 * step)
            except SourceError as err:
                log.warning("replay of the history stopped after %d of %d intervals: %s", done, count, err)
                break
            self.engine.evaluate(values, mono - k * step)
            done += 1
        self.metrics.replayed.inc(done)
        if done:
            log.info("replayed %d interval(s) of history (%.0f s) before the first cycle", done, done * step)
        return done

    # ------------------------------------------------------------ cycle

    def reload_rules_if_changed(self) -> None:
        if not self._watcher.changed():
            return
        try:
            strategies = load_strategies(list(self.settings.rules))
            self.engine.replace_strategies(strategies)
        except ConfigError as err:
            self.metrics.reload_success.set(0)
            message = str(err)
            if message != self._reload_error:
                log.error("rules reload failed; keeping the last good rules: %s", message)
                self._reload_error = message
            return
        self.strategies = strategies
        self._reload_error = None
        self.metrics.reload_success.set(1)
        self.metrics.last_reload.set(self.clock.time())
        log.info("rules reloaded from %s", ", ".join(strategies.sources()))

    def run_cycle(self) -> CycleResult:
        start = self.clock.monotonic()
        try:
            result = self._cycle(start)
        except Exception as err:  # one bad cycle never kills the loop
            log.exception("adaptation cycle failed unexpectedly")
            result = CycleResult("error", 0.0, f"{type(err).__name__}: {err}")
        result.duration_seconds = self.clock.monotonic() - start
        self.metrics.cycles.labels(result.result).inc()
        self.metrics.cycle_duration.observe(result.duration_seconds)
        self.failures = 0 if result.result != "error" else self.failures + 1
        self.metrics.consecutive_failures.set(self.failures)
        return result

    def _cycle(self, start: float) -> CycleResult:
        self.reload_rules_if_changed()
        # Leave a fifth of the interval for evaluating and writing.
        cycle = self.controller.run_cycle(deadline=start + 0.8 * self.settings.interval_seconds)
        if cycle.values is not None:
            self.metrics.signals.set(len(cycle.values))
        if cycle.decision is not None:
            strategy = self.engine.active_strategy()
            for rule in strategy.rules:
                count = len(self.settings.query_classes) if rule.for_each else 1
                self.metrics.rule_evaluations.labels(strategy.name, rule.name).inc(count)
            for reason in cycle.decision.reasons:
                self.metrics.rule_fires.labels(reason.strategy, reason.rule).inc()
        if cycle.error_kind == "publish":
            self.metrics.publish_errors.inc()
        if not cycle.ok or cycle.preferences is None:
            return CycleResult("error", 0.0, cycle.error, fired=cycle.fired)
        self._export(cycle.preferences, cycle.decision.mode if cycle.decision else None)
        if self.state is not None and not self.settings.dry_run:
            self.state.save(self.engine)
        return CycleResult(cycle.result, 0.0, published=not self.settings.dry_run,
                           sequence=cycle.preferences.sequence, fired=cycle.fired)

    def _export(self, prefs: Preferences, mode: Optional[str]) -> None:
        m = self.metrics
        for qc in self.settings.query_classes:
            for pref, value in prefs.routing_for(qc).as_dict().items():
                m.preference.labels(pref, qc).set(value)
        for path, seconds in prefs.timeouts_seconds.items():
            m.timeouts.labels(path).set(seconds)
        m.last_publish.set(prefs.generated_at)
        m.valid_until.set(prefs.valid_until)
        m.mode_info.clear()
        m.mode_info.labels(prefs.strategy, mode or prefs.strategy).set(1)

    # ------------------------------------------------------------ loop

    def next_delay(self) -> float:
        """Seconds to wait before the next cycle: the interval, or a backoff after failures."""
        if self.failures == 0:
            return self.settings.interval_seconds
        return min(self.settings.interval_seconds * (2 ** (self.failures - 1)),
                   max(self.settings.max_backoff_seconds, self.settings.interval_seconds))

    def run(self) -> int:
        """Replay the history (``replay_intervals``), then run until ``stop_event`` is set (SIGTERM) or
        once with ``once``. Returns an exit status."""
        self.replay_history()
        while True:
            result = self.run_cycle()
            if result.result == "error":
                log.warning("cycle failed (%s); next attempt in %.1fs", result.error, self.next_delay())
            else:
                log.info("cycle %s in %.3fs; sequence %s; fired: %s", result.result, result.duration_seconds,
                         result.sequence, ", ".join(result.fired) or "none")
            if self.settings.once:
                return 0 if result.result != "error" else 1
            if self.stop_event.wait(self.next_delay()):
                return 0


def effective_settings_text(settings: AdapterSettings, source_desc: str) -> str:
    data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.__dict__.items()}
    data["file_mode"] = oct(settings.file_mode)
    data["source"] = source_desc
    return json.dumps(data, sort_keys=True)


__all__ = ["Adapter", "AdapterSettings", "Cycle", "CycleResult"]
