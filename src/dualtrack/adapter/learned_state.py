"""What the adaptive strategy has learned, kept across restarts: a warm start.

An adapter that restarts (a deploy, a crash, the embedded engine's process
starting again) forgets every estimate the objective-driven strategy built:
which class is worth more on which track, the local server's slots and
capacity, the memory and battery lines, the API's prices and rate limit. It
starts again from the strategy's starting preferences and spends the next
minutes learning what it knew. ``benchmarks/restart.py`` measures what that
costs on the simulator, and what keeping the state saves.

The state file holds the estimator and the engine's last routing (the global
and per-class preferences, and the track each class was held on). It is
written atomically after each good cycle and read once at start::

    state = StateFile("/var/lib/dualtrack/adapter-state.json", max_age_seconds=3600)
    state.restore(engine)       # "restored", "absent", "stale", "mismatch" or "invalid"
    ...                         # each good cycle:
    state.save(engine)

A state is used only when it fits: the same strategy, query classes and
adaptation interval, and no older than ``max_age_seconds`` (the evidence of
an hour ago may no longer describe the tracks; change detection would catch
most of it, but not a local server that was replaced). Anything else starts
cold, as without a state file, with the reason logged; a file that cannot be
read or does not hold a state says which file and what is wrong. Nothing in
it is trusted blindly: every value is checked for its type and range.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from dataclasses import fields
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import PreferencesError
from ..preferences.writer import write_file_atomic
from ..vocabulary import ROUTING_NAMES, TRACKS
from .engine import RuleEngine
from .estimator import MEMORY_SIGNALS, Estimator, EstimatorSettings, Tally, TrackState, _DecayedLine
from .objective import Split

log = logging.getLogger(__name__)

#: The file's ``kind``, and the version of its layout (a state of another layout starts cold).
KIND = "dualtrack-adapter-state"
SCHEMA = 1

#: What ``StateFile.restore`` can answer.
RESULTS = ("restored", "absent", "stale", "mismatch", "invalid")

#: The default age beyond which a state is not used.
DEFAULT_MAX_AGE_SECONDS = 3600.0


class StateError(ValueError):
    """A state file that cannot be used: names the file (or field) and what is wrong."""


# ---------------------------------------------------------------- values


#: No count, rate, time or price the adapter keeps comes near this: a larger value is damage.
LARGEST = 1e12


def _number(where: str, value: Any, *, optional: bool = False, low: float = -math.inf) -> Any:
    if value is None and optional:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low
            or abs(value) > LARGEST):
        wanted = "a finite number" + (f" >= {low:g}" if low > -math.inf else "") + f" of at most {LARGEST:g}"
        raise StateError(f"{where}: expected {wanted}{' or null' if optional else ''}, got {value!r}")
    return float(value)


def _mapping(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise StateError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _numbers(where: str, value: Any, *, length: Optional[int] = None, low: float = -math.inf) -> List[float]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise StateError(f"{where}: expected a list of {length or 'any number of'} numbers, got {value!r}")
    return [_number(f"{where}[{i}]", v, low=low) for i, v in enumerate(value)]


def _count(where: str, value: Any) -> int:
    number = _number(where, value, low=0.0)
    if number != int(number):
        raise StateError(f"{where}: expected a whole number, got {value!r}")
    return int(number)


def _pair(where: str, value: Any, *, low: float = -math.inf) -> Tuple[float, float]:
    first, second = _numbers(where, value, length=2, low=low)
    return first, second


def _number_map(where: str, value: Any, *, low: float = -math.inf) -> Dict[str, float]:
    return {k: _number(f"{where}.{k}", v, low=low) for k, v in _mapping(where, value).items()}


def _within(where: str, keys: Any, allowed: Tuple[str, ...], *, exact: bool = False) -> None:
    """Keys (of an object, or names in a list) among ``allowed`` (all of them, with ``exact``)."""
    extra = sorted(set(keys) - set(allowed))
    missing = sorted(set(allowed) - set(keys)) if exact else []
    if extra or missing:
        wrong = (f"unknown {', '.join(map(str, extra))}" if extra else "") + \
                ("; " if extra and missing else "") + (f"missing {', '.join(missing)}" if missing else "")
        raise StateError(f"{where}: {wrong} (expected {'' if exact else 'some of '}{', '.join(allowed)})")


def _tally(where: str, value: Any) -> Tally:
    data = _mapping(where, value)
    names = {f.name for f in fields(Tally)}
    unknown = set(data) - names
    if unknown:
        raise StateError(f"{where}: unknown count(s) {', '.join(sorted(unknown))}")
    return Tally(**{k: _number(f"{where}.{k}", v, low=0.0) for k, v in data.items()})


def _tally_map(where: str, value: Any) -> Dict[str, Tally]:
    return {c: _tally(f"{where}.{c}", t) for c, t in _mapping(where, value).items()}


def _line(where: str, value: Any, decay: float) -> _DecayedLine:
    data = _mapping(where, value)
    line = _DecayedLine(decay)
    line.sums = _numbers(f"{where}.sums", data.get("sums"), length=5)
    line.points = _count(f"{where}.points", data.get("points"))
    return line


def _encode_line(line: _DecayedLine) -> Dict[str, Any]:
    return {"sums": list(line.sums), "points": line.points}


# ---------------------------------------------------------------- estimator

# The estimator's attributes a state carries, by how each is checked on the way in (all of them
# never negative but the battery's room); ``classes`` and ``settings`` come from the strategy.
_CHECKS: Dict[str, Callable[[str, Any], Any]] = {
    "number or null": lambda w, v: _number(w, v, optional=True, low=0.0),
    "number": lambda w, v: _number(w, v, low=0.0),
    "numbers by name": lambda w, v: _number_map(w, v, low=0.0),
    "list of numbers": lambda w, v: _numbers(w, v, low=0.0),
}
_KINDS: Dict[str, Tuple[str, ...]] = {
    "number or null": ("capacity", "wanted_load", "slots", "_usual_local_failures", "memory_slots", "usual_api_cost",
                       "planned_spend", "planned_load", "server_queue", "server_capacity", "api_rate_limit"),
    "number": ("local_wait", "spend_bias"),
    "numbers by name": ("arrivals", "base_service", "_memory_guesses", "interval_calls"),
    "list of numbers": ("spent",),
}
_PLAIN: Dict[str, Callable[[str, Any], Any]] = {
    **{name: _CHECKS[kind] for kind, names in _KINDS.items() for name in names},
    "battery_room": lambda w, v: _number(w, v, optional=True),  # below the threshold: negative
    "_api_cost_sums": lambda w, v: _numbers(w, v, length=2, low=0.0),
}
_COUNTS = ("cycles_since_queued", "_slots_seen_free")  # whole numbers (the first may be null)
_SPECIAL = ("decay", "tracks", "_memory_lines", "_battery_line", "battery_drain", "own_changes", "server_full",
            "held_against", "_api_accepted")
#: Attributes a state does not carry: they come from the strategy (but for the settings' decay,
#: kept as ``decay``: a strategy whose objective decays its evidence otherwise drops the state).
NOT_KEPT = ("classes", "settings")


def encode_estimator(est: Estimator) -> Dict[str, Any]:
    """The estimator as JSON-ready data (see :func:`decode_estimator`)."""
    out: Dict[str, Any] = {name: getattr(est, name) for name in _PLAIN}
    out.update({name: getattr(est, name) for name in _COUNTS})
    out["decay"] = est.settings.decay
    out["tracks"] = {
        track: {
            "tallies": {c: _encode_tally(t) for c, t in state.tallies.items()},
            "pending": {c: _encode_tally(t) for c, t in state.pending.items()},
            "changes": state.changes,
            "quality_cusum": {c: list(v) for c, v in state.quality_cusum.items()},
        } for track, state in est.tracks.items()
    }
    out["_memory_lines"] = {name: _encode_line(line) for name, line in est._memory_lines.items()}
    out["_battery_line"] = _encode_line(est._battery_line)
    out["battery_drain"] = list(est.battery_drain) if est.battery_drain is not None else None
    out["own_changes"] = sorted([list(pair) for pair in est.own_changes])
    out["server_full"] = est.server_full
    out["held_against"] = dict(est.held_against)
    out["_api_accepted"] = [list(pair) for pair in est._api_accepted]
    return out


def _encode_tally(t: Tally) -> Dict[str, float]:
    return {f.name: getattr(t, f.name) for f in fields(Tally) if getattr(t, f.name)}


def decode_estimator(data: Any, query_classes: Tuple[str, ...], where: str = "estimator") -> Estimator:
    """An estimator with the evidence of ``data`` (written by :func:`encode_estimator`), its
    settings the defaults but for the decay it was saved with.

    Raises :class:`StateError` naming the first value that is missing or wrong."""
    data = _mapping(where, data)
    known = set(_PLAIN) | set(_COUNTS) | set(_SPECIAL)
    unknown = set(data) - known
    if unknown:
        raise StateError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    missing = known - set(data)
    if missing:
        raise StateError(f"{where}: missing field(s) {', '.join(sorted(missing))}")
    decay = _number(f"{where}.decay", data["decay"], low=0.0)
    if decay >= 1.0:
        raise StateError(f"{where}.decay: expected a number below 1, got {decay!r}")
    settings = EstimatorSettings(decay=decay)
    est = Estimator(query_classes, settings)
    for name, check in _PLAIN.items():
        setattr(est, name, check(f"{where}.{name}", data[name]))
    for name in ("arrivals", "base_service"):
        _within(f"{where}.{name}", getattr(est, name), query_classes)
    _within(f"{where}.interval_calls", est.interval_calls, TRACKS, exact=True)
    _within(f"{where}._memory_guesses", est._memory_guesses, MEMORY_SIGNALS)
    since = data["cycles_since_queued"]
    est.cycles_since_queued = None if since is None else _count(f"{where}.cycles_since_queued", since)
    est._slots_seen_free = _count(f"{where}._slots_seen_free", data["_slots_seen_free"])
    tracks = _mapping(f"{where}.tracks", data["tracks"])
    if set(tracks) != set(TRACKS):
        raise StateError(f"{where}.tracks: expected the tracks {', '.join(TRACKS)}, got {', '.join(sorted(tracks))}")
    for track, raw in tracks.items():
        w = f"{where}.tracks.{track}"
        raw = _mapping(w, raw)
        cusum = _mapping(f"{w}.quality_cusum", raw.get("quality_cusum", {}))
        for part in ("tallies", "pending", "quality_cusum"):
            _within(f"{w}.{part}", _mapping(f"{w}.{part}", raw.get(part, {})), query_classes)
        est.tracks[track] = TrackState(
            tallies=_tally_map(f"{w}.tallies", raw.get("tallies", {})),
            pending=_tally_map(f"{w}.pending", raw.get("pending", {})),
            changes=_count(f"{w}.changes", raw.get("changes", 0)),
            quality_cusum={c: _pair(f"{w}.quality_cusum.{c}", v, low=0.0) for c, v in cusum.items()})
    lines = _mapping(f"{where}._memory_lines", data["_memory_lines"])
    for name in MEMORY_SIGNALS:
        if name in lines:
            est._memory_lines[name] = _line(f"{where}._memory_lines.{name}", lines[name], settings.memory_decay)
    est._battery_line = _line(f"{where}._battery_line", data["_battery_line"], settings.battery_decay)
    drain = data["battery_drain"]
    est.battery_drain = None if drain is None else _pair(f"{where}.battery_drain", drain)
    own = data["own_changes"]
    if not isinstance(own, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
                                            for p in own):
        raise StateError(f"{where}.own_changes: expected a list of [track, class] pairs, got {own!r}")
    est.own_changes = {(p[0], p[1]) for p in own}
    _within(f"{where}.own_changes", {p[0] for p in own}, TRACKS)
    _within(f"{where}.own_changes", {p[1] for p in own}, query_classes)
    if not isinstance(data["server_full"], bool):
        raise StateError(f"{where}.server_full: expected true or false, got {data['server_full']!r}")
    est.server_full = data["server_full"]
    est.held_against = {c: _count(f"{where}.held_against.{c}", v)
                        for c, v in _mapping(f"{where}.held_against", data["held_against"]).items()}
    _within(f"{where}.held_against", est.held_against, query_classes)
    accepted = data["_api_accepted"]
    if not isinstance(accepted, list):
        raise StateError(f"{where}._api_accepted: expected a list of [calls, seconds] pairs, got {accepted!r}")
    est._api_accepted = deque(_pair(f"{where}._api_accepted[{i}]", p, low=0.0) for i, p in enumerate(accepted))
    return est


# ---------------------------------------------------------------- engine


def encode_engine(engine: RuleEngine) -> Dict[str, Any]:
    """What the engine has learned, as JSON-ready data (None-free: a cold engine has no estimator)."""
    return {
        "routing": dict(engine.routing),
        "query_classes": {qc: dict(p) for qc, p in engine.class_prefs.items()},
        "mode": engine.mode,
        "held": dict(engine.last_split.preferred) if engine.last_split is not None else None,
        "estimator": encode_estimator(engine.estimator) if engine.estimator is not None else None,
    }


def _preferences(where: str, value: Any) -> Dict[str, float]:
    prefs = _number_map(where, value)
    if set(prefs) != set(ROUTING_NAMES):
        raise StateError(f"{where}: expected the preferences {', '.join(ROUTING_NAMES)}, "
                         f"got {', '.join(sorted(prefs))}")
    return prefs


def restore_engine(engine: RuleEngine, data: Any, where: str = "state") -> None:
    """Put what ``data`` (from :func:`encode_engine`) holds into ``engine``: all of it or, on a
    :class:`StateError`, none of it."""
    data = _mapping(where, data)
    routing = _preferences(f"{where}.routing", data.get("routing"))
    classes = _mapping(f"{where}.query_classes", data.get("query_classes"))
    class_prefs = {qc: _preferences(f"{where}.query_classes.{qc}", p) for qc, p in classes.items()}
    if set(class_prefs) != set(engine.query_classes):
        raise StateError(f"{where}.query_classes: expected {', '.join(engine.query_classes)}, "
                         f"got {', '.join(sorted(class_prefs))}")
    mode = data.get("mode")
    if mode is not None and not isinstance(mode, str):
        raise StateError(f"{where}.mode: expected a mode name or null, got {mode!r}")
    held = data.get("held")
    held_shares = None if held is None else _number_map(f"{where}.held", held, low=0.0)
    if held_shares is not None:
        _within(f"{where}.held", held_shares, engine.query_classes)
    estimator = None
    if data.get("estimator") is not None:
        estimator = decode_estimator(data["estimator"], engine.query_classes, f"{where}.estimator")
    engine.routing = routing
    engine.class_prefs = class_prefs
    engine.mode = mode
    engine.last_split = Split(dict(held_shares), [], preferred=dict(held_shares)) if held_shares is not None else None
    engine.estimator = estimator


# ---------------------------------------------------------------- the file


class StateFile:
    """The state file of one engine: :meth:`save` after each good cycle, :meth:`restore` at start."""

    def __init__(self, path: str, *, max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS, interval_seconds: float,
                 clock: Clock = SYSTEM_CLOCK, mode: int = 0o600) -> None:
        if not path:
            raise ValueError("state file: a path is required")
        if not max_age_seconds > 0:
            raise ValueError(f"state file: the maximum age must be positive, got {max_age_seconds!r}")
        self.path = os.fspath(path)
        self.max_age_seconds = float(max_age_seconds)
        self.interval_seconds = float(interval_seconds)
        self.clock = clock
        self.mode = mode
        self._last_error: Optional[str] = None
        self.saved_at: Optional[float] = None  # when the state restored was saved (unix seconds)
        self.at_start: Optional[str] = None  # what :meth:`restore` gave (one of RESULTS)
        self.saves = {"ok": 0, "error": 0}  # writes so far, by result

    def document(self, engine: RuleEngine) -> Dict[str, Any]:
        return {"kind": KIND, "schema": SCHEMA, "saved_at": self.clock.time(), "strategy": engine.strategy,
                "interval_seconds": self.interval_seconds, "query_classes": list(engine.query_classes),
                "engine": encode_engine(engine)}

    def save(self, engine: RuleEngine) -> bool:
        """Write the engine's state atomically; False (the error logged once) when it cannot."""
        ok = self._save(engine)
        self.saves["ok" if ok else "error"] += 1
        return ok

    def _save(self, engine: RuleEngine) -> bool:
        try:
            data = json.dumps(self.document(engine), sort_keys=True, allow_nan=False).encode()
            write_file_atomic(self.path, data, mode=self.mode, what="adapter state")
        except (PreferencesError, ValueError, OSError) as err:
            # Logged once per kind of failure (a temp file's random name differs at each try).
            cause = err.__cause__ or err
            kind = f"{type(cause).__name__}:{getattr(cause, 'errno', None)}"
            if kind != self._last_error:
                log.error("could not save the adapter state (the adapter goes on without it): %s", err)
                self._last_error = kind
            return False
        if self._last_error is not None:
            log.info("adapter state saved to %s again", self.path)
            self._last_error = None
        return True

    def restore(self, engine: RuleEngine) -> str:
        """Put the saved state into ``engine`` when it fits; one of :data:`RESULTS`. Never raises:
        whatever is wrong is logged (naming the file) and the engine starts cold."""
        self.at_start = self._restore(engine)
        return self.at_start

    def _restore(self, engine: RuleEngine) -> str:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            log.info("no adapter state at %s: starting cold", self.path)
            return "absent"
        except OSError as err:
            log.error("%s: cannot read the adapter state (starting cold): %s", self.path, err)
            return "invalid"
        try:
            doc = _mapping(self.path, json.loads(raw))
            if doc.get("kind") != KIND:
                raise StateError(f"{self.path}: not a dualtrack adapter state (kind {doc.get('kind')!r})")
            age = self.clock.time() - _number(f"{self.path}: saved_at", doc.get("saved_at"))
        except (ValueError, StateError) as err:  # json.JSONDecodeError is a ValueError
            log.error("%s: unusable adapter state (starting cold): %s", self.path, err)
            return "invalid"
        fits = self._mismatch(doc, engine)
        if fits is not None:
            log.warning("%s: adapter state not used (starting cold): %s", self.path, fits)
            return "mismatch"
        if abs(age) > self.max_age_seconds:
            # (Saved "in the future" by more than that: the clock moved, and when it was saved is unknown.)
            when = f"{age:.0f} s ago" if age >= 0 else f"{-age:.0f} s ahead of this clock"
            log.warning("%s: adapter state saved %s, beyond the %.0f s it is kept for: starting cold",
                        self.path, when, self.max_age_seconds)
            return "stale"
        try:
            restore_engine(engine, doc.get("engine"), f"{self.path}: engine")
        except StateError as err:
            log.error("unusable adapter state (starting cold): %s", err)
            return "invalid"
        log.info("adapter state restored from %s (saved %.0f s ago)", self.path, max(0.0, age))
        self.saved_at = self.clock.time() - age
        return "restored"

    def _mismatch(self, doc: Mapping[str, Any], engine: RuleEngine) -> Optional[str]:
        """Why a state saved under other settings does not fit ``engine`` (None: it fits)."""
        if doc.get("schema") != SCHEMA:
            return f"layout {doc.get('schema')!r}, this version reads {SCHEMA}"
        if doc.get("strategy") != engine.strategy:
            return f"saved for the strategy {doc.get('strategy')!r}, running {engine.strategy!r}"
        if doc.get("query_classes") != list(engine.query_classes):
            return f"saved for the query classes {doc.get('query_classes')!r}, running {list(engine.query_classes)!r}"
        if doc.get("interval_seconds") != self.interval_seconds:
            return (f"saved at a {doc.get('interval_seconds')!r} s adaptation interval, "
                    f"running {self.interval_seconds:g} s")
        return None


class StateCollector(Collector):
    """Scrape-time counters of a :class:`StateFile`: ``<prefix>_state_loads_total{result}`` (1 for
    what reading it at start gave) and ``<prefix>_state_saves_total{result}`` (ok, error)."""

    def __init__(self, state: StateFile, prefix: str) -> None:
        self.state = state
        self.prefix = prefix

    def describe(self) -> Iterator[Any]:
        return self.collect()

    def collect(self) -> Iterator[Any]:
        loads = CounterMetricFamily(f"{self.prefix}_state_loads", "Reads of the learned-state file at start, by "
                                    "result (restored, absent, stale, mismatch, invalid).", labels=["result"])
        for result in RESULTS:
            loads.add_metric([result], 1.0 if result == self.state.at_start else 0.0)
        yield loads
        saves = CounterMetricFamily(f"{self.prefix}_state_saves", "Writes of the learned-state file, by result "
                                    "(ok, error).", labels=["result"])
        for result, count in self.state.saves.items():
            saves.add_metric([result], float(count))
        yield saves


__all__ = ["DEFAULT_MAX_AGE_SECONDS", "KIND", "NOT_KEPT", "RESULTS", "SCHEMA", "StateCollector", "StateError",
           "StateFile", "decode_estimator", "encode_engine", "encode_estimator", "restore_engine"]
