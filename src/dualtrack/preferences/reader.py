"""Reading the preferences file: once (:func:`read_preferences`) or for a router (:class:`PreferencesReader`).

A router asks its reader on every request; the reader answers from memory
and looks at the file at most once per ``check_interval_seconds``::

    reader = PreferencesReader("/run/dualtrack/preferences.json", registry=registry)
    routing = reader.current().routing_for("long")

Reader policy (last-known-good, then expiry)
    * A missing, empty, torn, unparsable, invalid, too large (> 1 MiB) or
      wrong-version file never replaces the last good preferences. Each problem
      is counted in ``dualtrack_preferences_read_errors_total{reason}`` (once
      per file version) and logged once until a good file has been read again.
    * Preferences are *fresh* until ``valid_until``, *stale* (still used, but
      reported) until ``valid_until + grace``, then *expired*: the reader
      returns safe defaults (source ``defaults``, with a reason naming the
      expiry time), so a dead adapter cannot pin routing forever. The grace is
      ``expiry_grace_seconds``, by default half the validity window
      (``(valid_until - generated_at) / 2``).
    * Age is measured on the wall clock (the file's times are wall-clock) but
      never runs slower than the monotonic clock since the file was read: a
      wall clock set backwards can neither expire fresh preferences nor keep a
      dead adapter's preferences alive forever.
    * Before any good file has been read, the reader returns the defaults.

The reader's state is exported at scrape time by :class:`_ReaderGauges`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Set, Tuple, Union

from .._validate import number, optional_number
from ..clock import SYSTEM_CLOCK, Clock
from .codec import MAX_FILE_BYTES, READ_ERROR_REASONS, PreferencesReadError, read_document_bytes
from .model import TIMESTAMP_MAX, Preferences, Reason, freshness_at_age, iso_time

# One logger for the whole file contract, named as before the package was split: operators filter on it.
_log = logging.getLogger("dualtrack.preferences")


def read_preferences(path: Union[str, "os.PathLike[str]"]) -> Preferences:
    """Read and validate one preferences file; raises :class:`~dualtrack.preferences.PreferencesReadError`
    (``source`` is ``path`` as given, ``reason`` a metric label)."""
    source = os.fspath(path)
    return Preferences.from_json(read_document_bytes(source, source), source)


@dataclass(frozen=True)
class _Loaded:
    prefs: Preferences
    mono_at_load: float
    age_at_load: float


_NO_SIG: Tuple[Any, ...] = ()


class PreferencesReader:
    """Reads the preferences file for a router: cheap, thread-safe, last-known-good.

    ``current()`` stats the file at most once per ``check_interval_seconds``
    and re-reads it only when ``(st_mtime_ns, st_size, st_ino)`` changed. The
    thread that finds a check due does it; other threads meanwhile get the
    previous answer instead of waiting on I/O. See the module docstring for
    the expiry policy. ``parse_count`` counts read+parse attempts.

    A reader is a :class:`~dualtrack.preferences.PreferenceSource`
    (:meth:`current_preferences`).
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"], *, clock: Optional[Clock] = None,
                 check_interval_seconds: float = 1.0, expiry_grace_seconds: Optional[float] = None,
                 defaults: Optional[Preferences] = None, registry: Any = None,
                 logger: Optional[logging.Logger] = None) -> None:
        self.path = os.fspath(path)
        self._clock = clock or SYSTEM_CLOCK
        self.check_interval_seconds = number("check_interval_seconds", check_interval_seconds, lower=0.0)
        self.expiry_grace_seconds = optional_number("expiry_grace_seconds", expiry_grace_seconds, lower=0.0)
        if defaults is not None and not isinstance(defaults, Preferences):
            raise ValueError(f"defaults: expected Preferences, got {type(defaults).__name__}")
        self._defaults = defaults
        self._log = logger or _log

        self._io_lock = threading.Lock()      # one refresh at a time
        self._state_lock = threading.Lock()   # fallback cache + transition logs; never held across I/O
        self._checked = False
        self._next_check = 0.0
        self._sig: Tuple[Any, ...] = _NO_SIG
        self._loaded: Optional[_Loaded] = None
        self._last_error: Optional[Tuple[str, str]] = None
        self._last_problem_key: Optional[Tuple[Any, ...]] = None
        self._logged: Set[Tuple[str, str]] = set()
        self._fallback_key: Optional[Tuple[Any, ...]] = None
        self._fallback: Optional[Preferences] = None
        self._on_defaults_logged = False

        self.parse_count = 0
        self.reload_count = 0
        self.error_counts: Dict[str, int] = {reason: 0 for reason in READ_ERROR_REASONS}
        if registry is not None:
            registry.register(_ReaderGauges(self))

    # ------------------------------------------------------------ public

    def current(self, force: bool = False) -> Preferences:
        """The preferences to obey now: the last good file's, or safe defaults.

        ``force=True`` checks the file now, regardless of the interval
        (same as :meth:`refresh`).
        """
        if force:
            return self.refresh()
        mono = self._clock.monotonic()
        if not self._checked or mono >= self._next_check:
            # Only the first call waits for a read in progress; later callers
            # keep the previous answer rather than block on the file system.
            if self._io_lock.acquire(blocking=not self._checked):
                try:
                    if not self._checked or mono >= self._next_check:
                        self._refresh_locked(mono)
                finally:
                    self._io_lock.release()
        return self._effective(self._clock.time(), self._clock.monotonic())[0]

    def current_preferences(self) -> Preferences:
        """:meth:`current`, as a :class:`~dualtrack.preferences.PreferenceSource` is asked."""
        return self.current()

    def refresh(self) -> Preferences:
        """Check the file now, regardless of the interval (e.g. on SIGHUP)."""
        with self._io_lock:
            self._refresh_locked(self._clock.monotonic())
        return self._effective(self._clock.time(), self._clock.monotonic())[0]

    @property
    def last_good(self) -> Optional[Preferences]:
        """The last valid document read, expired or not (``None`` before any)."""
        loaded = self._loaded
        return loaded.prefs if loaded else None

    def status(self) -> Dict[str, Any]:
        """Where the reader stands, for health endpoints and the CLI.

        ``state``: ``fresh``/``stale`` (using the file), ``expired`` (using
        defaults because the file is too old), ``defaults`` (no good file read
        yet, the file is bad), ``no_file`` (no good file read yet, none there).
        """
        self.current()
        wall, mono = self._clock.time(), self._clock.monotonic()
        _, state, age = self._effective(wall, mono)
        loaded = self._loaded
        last_error = self._last_error
        return {
            "path": self.path,
            "state": state,
            "age_seconds": age,
            "sequence": loaded.prefs.sequence if loaded else None,
            "generated_at": loaded.prefs.generated_at if loaded else None,
            "valid_until": loaded.prefs.valid_until if loaded else None,
            "reloads": self.reload_count,
            "last_error": {"reason": last_error[0], "message": last_error[1]} if last_error else None,
        }

    # ------------------------------------------------------------ refresh (holds _io_lock)

    def _refresh_locked(self, mono: float) -> None:
        self._next_check = mono + self.check_interval_seconds
        try:
            self._check_file(mono)
        finally:
            # Set only now: until the first check is done, callers wait for it
            # instead of getting defaults while a good file is being read.
            self._checked = True

    def _check_file(self, mono: float) -> None:
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            self._sig = _NO_SIG
            self._problem(("missing",), "missing", "no such file")
            return
        except OSError as err:
            self._sig = _NO_SIG
            self._problem(("stat",), "unreadable", f"cannot stat: {err.strerror or err}")
            return
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if sig == self._sig:
            return
        if st.st_size > MAX_FILE_BYTES:
            self._sig = sig
            self._problem(sig, "too_large", f"{st.st_size} bytes is larger than the limit of {MAX_FILE_BYTES}")
            return
        self.parse_count += 1
        try:
            prefs = read_preferences(self.path)
        except PreferencesReadError as err:
            # An I/O error may clear up without the file changing (permissions):
            # retry it at the next check; a bad document waits for a new version.
            self._sig = _NO_SIG if err.reason in ("unreadable", "missing") else sig
            self._problem(sig, err.reason, err.problem)
            return
        self._sig = sig
        self._loaded = _Loaded(prefs, mono, max(0.0, prefs.age(self._clock.time())))
        self.reload_count += 1
        if self._last_error is not None or self._logged:
            self._log.info("preferences %s: read sequence %d (strategy %s) after earlier problems",
                           self.path, prefs.sequence, prefs.strategy)
        self._last_error = None
        self._last_problem_key = None
        self._logged.clear()

    def _problem(self, key: Tuple[Any, ...], reason: str, detail: str) -> None:
        problem_key = (key, reason, detail)
        if problem_key == self._last_problem_key:
            return  # the same problem with the same file version: counted already
        self._last_problem_key = problem_key
        self.error_counts[reason] += 1
        self._last_error = (reason, detail)
        if (reason, detail) in self._logged:
            return
        self._logged.add((reason, detail))
        loaded = self._loaded
        keeping = (f"keeping the last good preferences (sequence {loaded.prefs.sequence})"
                   if loaded else "using safe defaults")
        self._log.warning("preferences %s: %s (reason=%s); %s", self.path, detail, reason, keeping)

    # ------------------------------------------------------------ state (no I/O)

    def _age(self, loaded: _Loaded, wall: float, mono: float) -> float:
        return max(loaded.prefs.age(wall), loaded.age_at_load + (mono - loaded.mono_at_load))

    def _effective(self, wall: float, mono: float) -> Tuple[Preferences, str, Optional[float]]:
        loaded = self._loaded
        if loaded is not None:
            age = self._age(loaded, wall, mono)
            state = freshness_at_age(loaded.prefs, age, self.expiry_grace_seconds)
            if state != "expired":
                if self._on_defaults_logged:
                    with self._state_lock:
                        if self._on_defaults_logged:
                            self._on_defaults_logged = False
                            self._log.info("preferences %s: using sequence %d again",
                                           self.path, loaded.prefs.sequence)
                return loaded.prefs, state, age
            return self._fallback_for(("expired", id(loaded)), loaded, wall), "expired", age
        last = self._last_error
        state = "no_file" if last is None or last[0] == "missing" else "defaults"
        return self._fallback_for(("none", last), None, wall), state, None

    def _fallback_for(self, key: Tuple[Any, ...], loaded: Optional[_Loaded], wall: float) -> Preferences:
        cached = self._fallback
        if (cached is not None and self._fallback_key == key
                and cached.generated_at <= wall <= cached.valid_until):
            return cached
        with self._state_lock:
            base = self._defaults or Preferences.defaults(now=wall)
            if loaded is not None:
                p = loaded.prefs
                grace = p.validity_seconds / 2 if self.expiry_grace_seconds is None else self.expiry_grace_seconds
                reason = Reason(
                    rule="preferences_expired",
                    message=(f"preferences from {self.path} (sequence {p.sequence}, strategy {p.strategy}) "
                             f"expired at {iso_time(p.valid_until)} and the {grace:g} s grace period is over; "
                             f"using safe defaults"))
                if not self._on_defaults_logged:
                    self._on_defaults_logged = True
                    self._log.warning("preferences %s: %s", self.path, reason.message)
            else:
                last = self._last_error
                why = f"{last[1]} ({last[0]})" if last else "not read yet"
                reason = Reason(rule="no_preferences",
                                message=f"no valid preferences read from {self.path}: {why}; using safe defaults")
            fallback = dataclasses.replace(
                base, source="defaults", generated_at=wall,
                valid_until=min(wall + max(base.validity_seconds, 1.0), TIMESTAMP_MAX),
                reasons=[reason, *base.reasons])
            self._fallback, self._fallback_key = fallback, key
            return fallback


class _ReaderGauges:
    """A Prometheus custom collector that exports a reader's state at scrape time.

    (Not named a collector: in dualtrack that word means the sliding windows, ``MetricsCollector``.)
    """

    def __init__(self, reader: PreferencesReader) -> None:
        self._reader = reader

    def describe(self) -> Iterator[Any]:
        return iter(())  # unchecked collector: the gauges below may be absent

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        r = self._reader
        errors = CounterMetricFamily(
            "dualtrack_preferences_read_errors",
            "Preferences file problems that kept the last good preferences, by reason.",
            labels=["reason"])
        for reason in READ_ERROR_REASONS:
            errors.add_metric([reason], r.error_counts[reason])
        yield errors
        yield CounterMetricFamily("dualtrack_preferences_reloads",
                                  "Valid preferences documents read.", value=r.reload_count)
        _, state, _ = r._effective(r._clock.time(), r._clock.monotonic())
        yield GaugeMetricFamily(
            "dualtrack_preferences_expired",
            "1 while the reader uses safe defaults (preferences expired or none read yet).",
            value=1.0 if state in ("expired", "defaults", "no_file") else 0.0)
        loaded = r._loaded
        if loaded is None:
            return  # absent means absent: no document, no sequence
        p = loaded.prefs
        yield GaugeMetricFamily("dualtrack_preferences_sequence",
                                "Sequence number of the last good preferences document.", value=p.sequence)
        yield GaugeMetricFamily("dualtrack_preferences_generated_timestamp_seconds",
                                "generated_at of the last good preferences document.", value=p.generated_at)
        yield GaugeMetricFamily("dualtrack_preferences_valid_until_timestamp_seconds",
                                "valid_until of the last good preferences document.", value=p.valid_until)


__all__ = ["PreferencesReader", "read_preferences"]
