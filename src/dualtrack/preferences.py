"""The preferences file: the contract between the adapter (writer) and routers (readers).

The adapter decides how traffic should be split and publishes the decision as
one JSON document (``docs/preferences.md`` documents every field; the JSON
Schema is :data:`PREFERENCES_SCHEMA_PATH`). Routers read it::

    # adapter
    writer = PreferencesWriter("/run/dualtrack/preferences.json", mode=0o644)
    written = writer.publish(Preferences(
        generated_at=now, valid_until=now + 60, strategy="balanced",
        source="embedded", routing=Routing.DEFAULT.replace(local_bias=0.65)))

    # router, on every request (cheap: at most one os.stat per second)
    reader = PreferencesReader("/run/dualtrack/preferences.json", registry=registry)
    routing = reader.current().routing_for("long")

Writer guarantees
    The document is validated before anything touches the disk. It is written
    to a temp file in the *same* folder, created with ``O_CREAT|O_EXCL|
    O_NOFOLLOW`` under an unpredictable name (so a symlink planted there is
    never followed), fsynced, chmod-ed to the explicit mode (independent of the
    umask) and renamed over the target with ``os.replace`` (a symlink at the
    target is replaced, never written through); the folder is then fsynced.
    A reader sees the old document or the new one, never a mix. On any failure
    the temp file is removed and :class:`~dualtrack.errors.PreferencesError` is
    raised with the cause chained. Sequence numbers continue after a restart.

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
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import json
import logging
import math
import os
import re
import secrets
import stat as _stat
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, ClassVar, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from .clock import SYSTEM_CLOCK, Clock
from .errors import PreferencesError

__all__ = [
    "SCHEMA_VERSION",
    "SOURCES",
    "PATHS",
    "PARALLEL_NEVER",
    "DEFAULT_TIMEOUTS_SECONDS",
    "DEFAULT_VALIDITY_SECONDS",
    "MAX_FILE_BYTES",
    "READ_ERROR_REASONS",
    "PREFERENCES_SCHEMA_PATH",
    "Routing",
    "ConstraintState",
    "Reason",
    "Preferences",
    "PreferencesReadError",
    "PreferencesWriter",
    "PreferencesReader",
    "load_schema",
    "read_preferences",
    "write_preferences",
]

SCHEMA_VERSION = 1
"""The document format version this module writes and accepts."""

SOURCES: Tuple[str, ...] = ("embedded", "prometheus", "defaults", "static")
"""Where the signal values behind a document came from."""

PATHS: Tuple[str, ...] = ("local", "api", "parallel")
"""The keys of ``timeouts_seconds``."""

PARALLEL_NEVER = 1.01
"""A ``parallel_threshold`` above every complexity score (scores are 0..1): never run in parallel."""

DEFAULT_TIMEOUTS_SECONDS: Mapping[str, float] = {"local": 30.0, "api": 30.0, "parallel": 30.0}

DEFAULT_VALIDITY_SECONDS = 300.0
"""Validity window of :meth:`Preferences.defaults`."""

MAX_FILE_BYTES = 1024 * 1024
"""Readers reject larger files (reason ``too_large``): a real document is a few KiB."""

READ_ERROR_REASONS: Tuple[str, ...] = (
    "missing", "empty", "unreadable", "invalid_json", "invalid", "wrong_version", "too_large",
)
"""Values of the ``reason`` label of ``dualtrack_preferences_read_errors_total``."""

PREFERENCES_SCHEMA_PATH = resources.files("dualtrack") / "schemas" / "preferences.schema.json"
"""The published JSON Schema (draft 2020-12) of the preferences file."""

_TIMESTAMP_MAX = 1e11  # unix seconds; larger values are almost surely milliseconds
_SEQUENCE_MAX = 2**53 - 1  # exact in every JSON implementation
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------- errors


class PreferencesReadError(PreferencesError):
    """A preferences document could not be read, parsed or validated.

    ``reason`` is one of :data:`READ_ERROR_REASONS` (the metric label),
    ``field`` the path of the offending field (``routing.local_bias``,
    ``reasons[0].rule``) where one is to blame, ``source`` the file (or
    ``<dict>``/``<string>``), ``message`` the problem alone.
    """

    def __init__(self, message: str, *, reason: str = "invalid", field: Optional[str] = None,
                 source: Optional[str] = None) -> None:
        self.message = message
        self.reason = reason
        self.field = field
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        what = f"{self.field}: " if self.field else ""
        return f"{where}{what}{self.message}"

    @property
    def problem(self) -> str:
        """The message without the source: ``routing.local_bias: 1.7 is greater ...``."""
        return f"{self.field}: {self.message}" if self.field else self.message


# ---------------------------------------------------------------- validation helpers


def _finite(label: str, value: Any, *, lower: Optional[float] = None, upper: Optional[float] = None,
            lower_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{label}: expected a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{label}: expected a finite number, got {value!r}")
    if lower is not None and (value <= lower if lower_open else value < lower):
        bound = "greater than" if lower_open else "at least"
        raise ValueError(f"{label}: must be {bound} {lower:g}, got {value!r}")
    if upper is not None and value > upper:
        raise ValueError(f"{label}: must be at most {upper:g}, got {value!r}")
    return value


def _optional_finite(label: str, value: Any) -> Optional[float]:
    return None if value is None else _finite(label, value)


def _name(label: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"{label}: expected a name of letters, digits, '_', '.', '-' "
                         f"(at most 64 characters), got {value!r}")
    return value


def _text(label: str, value: Any, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str) or (not allow_empty and not value):
        raise ValueError(f"{label}: expected a{'' if allow_empty else ' non-empty'} string, got {value!r}")
    return value


def _field_path(parts: Sequence[Union[str, int]]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT_RE.match(part):
            out += ("." if out else "") + part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# ---------------------------------------------------------------- data model


@dataclass(frozen=True)
class Routing:
    """How a router splits traffic. Validated on construction (``ValueError``).

    * ``local_bias``: share of traffic to the local track, 0..1.
    * ``parallel_threshold``: complexity score (0..1) at or above which a
      query runs on both tracks; up to :data:`PARALLEL_NEVER` (1.01) allowed,
      anything above 1 means never.
    * ``timeout_multiplier``: scales every per-path timeout; > 0, <= 10.
    * ``quality_threshold``: minimal acceptable answer quality, 0..1.

    ``Routing.DEFAULT`` holds the specification's defaults (0.5, 0.7, 1.0, 0.8)::

        faster = Routing.DEFAULT.replace(local_bias=0.8, timeout_multiplier=0.8)
    """

    local_bias: float = 0.5
    parallel_threshold: float = 0.7
    timeout_multiplier: float = 1.0
    quality_threshold: float = 0.8

    DEFAULT: ClassVar["Routing"]
    FIELDS: ClassVar[Tuple[str, ...]] = (
        "local_bias", "parallel_threshold", "timeout_multiplier", "quality_threshold",
    )

    def __post_init__(self) -> None:
        checks = {
            "local_bias": dict(lower=0.0, upper=1.0),
            "parallel_threshold": dict(lower=0.0, upper=PARALLEL_NEVER),
            "timeout_multiplier": dict(lower=0.0, lower_open=True, upper=10.0),
            "quality_threshold": dict(lower=0.0, upper=1.0),
        }
        for name, bounds in checks.items():
            object.__setattr__(self, name, _finite(name, getattr(self, name), **bounds))  # type: ignore[arg-type]

    def replace(self, **changes: float) -> "Routing":
        """A copy with ``changes`` applied (validated); unknown names raise ``ValueError``."""
        unknown = sorted(set(changes) - set(self.FIELDS))
        if unknown:
            raise ValueError(f"{unknown[0]}: not a routing preference; expected one of {list(self.FIELDS)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> Dict[str, float]:
        return {name: getattr(self, name) for name in self.FIELDS}


Routing.DEFAULT = Routing(0.5, 0.7, 1.0, 0.8)


@dataclass(frozen=True)
class ConstraintState:
    """One resource constraint when the document was generated.

    ``value``/``limit`` are ``None`` when there is no data / no limit.
    """

    violated: bool
    value: Optional[float] = None
    limit: Optional[float] = None

    def __post_init__(self) -> None:
        if not isinstance(self.violated, bool):
            raise ValueError(f"violated: expected true or false, got {self.violated!r}")
        object.__setattr__(self, "value", _optional_finite("value", self.value))
        object.__setattr__(self, "limit", _optional_finite("limit", self.limit))

    def as_dict(self) -> Dict[str, Any]:
        return {"violated": self.violated, "value": self.value, "limit": self.limit}


@dataclass(frozen=True)
class Reason:
    """Why the preferences are what they are: one rule that fired.

    ``signals`` maps signal keys such as ``latency_p95_seconds{path="local"}``
    to the values that fired the rule (``None``: no data); ``changes`` maps
    preference names to the deltas the rule caused (``{"local_bias": -0.1}``).
    """

    rule: str
    message: str
    query_class: Optional[str] = None
    signals: Dict[str, Optional[float]] = field(default_factory=dict)
    changes: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _text("rule", self.rule, allow_empty=False)
        _text("message", self.message)
        if self.query_class is not None:
            _text("query_class", self.query_class)
        object.__setattr__(self, "signals", {
            _text("signals key", k): _optional_finite(f"signals[{json.dumps(k)}]", v)
            for k, v in dict(self.signals).items()})
        object.__setattr__(self, "changes", {
            _text("changes key", k): _finite(f"changes[{json.dumps(k)}]", v)
            for k, v in dict(self.changes).items()})

    def as_dict(self) -> Dict[str, Any]:
        return {
            "rule": self.rule,
            "message": self.message,
            "query_class": self.query_class,
            "signals": {k: self.signals[k] for k in sorted(self.signals)},
            "changes": {k: self.changes[k] for k in sorted(self.changes)},
        }


@dataclass(frozen=True, kw_only=True)
class Preferences:
    """One published preferences document. Immutable by convention: treat the
    dicts and the list as read-only (one instance is shared by every thread of
    a router).

    Build one in the adapter, publish it with :class:`PreferencesWriter`; read
    it in a router with :class:`PreferencesReader`::

        prefs = Preferences(generated_at=now, valid_until=now + 60,
                            strategy="balanced", source="embedded",
                            routing=Routing(local_bias=0.6))
        prefs.routing_for("long").local_bias
    """

    schema_version: int = SCHEMA_VERSION
    sequence: int = 0
    generated_at: float
    valid_until: float
    strategy: str
    source: str
    mode: Optional[str] = None
    routing: Routing = Routing.DEFAULT
    timeouts_seconds: Dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS_SECONDS))
    query_classes: Dict[str, Routing] = field(default_factory=dict)
    constraints: Dict[str, ConstraintState] = field(default_factory=dict)
    reasons: List[Reason] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.schema_version, bool) or self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version: {self.schema_version!r} is not supported "
                             f"(this version of dualtrack understands {SCHEMA_VERSION})")
        seq = self.sequence
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= _SEQUENCE_MAX:
            raise ValueError(f"sequence: expected an integer in 0..{_SEQUENCE_MAX}, got {seq!r}")
        generated = _finite("generated_at", self.generated_at, lower=0.0, upper=_TIMESTAMP_MAX)
        valid_until = _finite("valid_until", self.valid_until, lower=0.0, upper=_TIMESTAMP_MAX)
        if valid_until < generated:
            raise ValueError(f"valid_until: {valid_until!r} is before generated_at {generated!r}")
        object.__setattr__(self, "generated_at", generated)
        object.__setattr__(self, "valid_until", valid_until)
        _text("strategy", self.strategy, allow_empty=False)
        if self.source not in SOURCES:
            raise ValueError(f"source: expected one of {list(SOURCES)}, got {self.source!r}")
        if self.mode is not None:
            _text("mode", self.mode)
        if not isinstance(self.routing, Routing):
            raise ValueError(f"routing: expected a Routing, got {type(self.routing).__name__}")
        timeouts = dict(self.timeouts_seconds)
        if set(timeouts) != set(PATHS):
            raise ValueError(f"timeouts_seconds: expected exactly the keys {list(PATHS)}, got {sorted(timeouts)}")
        object.__setattr__(self, "timeouts_seconds", {
            p: _finite(f"timeouts_seconds.{p}", timeouts[p], lower=0.0, lower_open=True) for p in PATHS})
        classes = dict(self.query_classes)
        for name, routing in classes.items():
            _name("query_classes", name)
            if not isinstance(routing, Routing):
                raise ValueError(f"query_classes.{name}: expected a Routing, got {type(routing).__name__}")
        object.__setattr__(self, "query_classes", classes)
        constraints = dict(self.constraints)
        for name, state in constraints.items():
            _name("constraints", name)
            if not isinstance(state, ConstraintState):
                raise ValueError(f"constraints.{name}: expected a ConstraintState, got {type(state).__name__}")
        object.__setattr__(self, "constraints", constraints)
        reasons = list(self.reasons)
        for i, reason in enumerate(reasons):
            if not isinstance(reason, Reason):
                raise ValueError(f"reasons[{i}]: expected a Reason, got {type(reason).__name__}")
        object.__setattr__(self, "reasons", reasons)

    # ------------------------------------------------------------ queries

    def routing_for(self, query_class: Optional[str]) -> Routing:
        """The effective routing of ``query_class`` (the global one unless overridden)."""
        if query_class is None:
            return self.routing
        return self.query_classes.get(query_class, self.routing)

    def is_expired(self, now: float) -> bool:
        """True once ``now`` (wall-clock seconds) is past ``valid_until``."""
        return now > self.valid_until

    def age(self, now: float) -> float:
        """Seconds since ``generated_at`` (negative if the writer's clock is ahead)."""
        return now - self.generated_at

    @property
    def validity_seconds(self) -> float:
        """Length of the validity window, ``valid_until - generated_at``."""
        return self.valid_until - self.generated_at

    def freshness(self, now: float, expiry_grace_seconds: Optional[float] = None) -> str:
        """``"fresh"``, ``"stale"`` or ``"expired"`` at wall time ``now`` under the reader's policy."""
        return _freshness(self, self.age(now), expiry_grace_seconds)

    @property
    def violated_constraints(self) -> List[str]:
        return [name for name in sorted(self.constraints) if self.constraints[name].violated]

    # ------------------------------------------------------------ serialization

    def to_dict(self) -> Dict[str, Any]:
        """The JSON document as plain data, keys in a stable order."""
        return {
            "schema_version": self.schema_version,
            "sequence": self.sequence,
            "generated_at": self.generated_at,
            "valid_until": self.valid_until,
            "strategy": self.strategy,
            "source": self.source,
            "mode": self.mode,
            "routing": self.routing.as_dict(),
            "timeouts_seconds": {p: self.timeouts_seconds[p] for p in PATHS},
            "query_classes": {k: self.query_classes[k].as_dict() for k in sorted(self.query_classes)},
            "constraints": {k: self.constraints[k].as_dict() for k in sorted(self.constraints)},
            "reasons": [r.as_dict() for r in self.reasons],
        }

    def to_json(self) -> str:
        """Indented JSON with a trailing newline; the same object always gives the same text."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source_name: str = "<dict>") -> "Preferences":
        """Validate ``data`` (schema, then semantics) and build the object.

        Raises :class:`PreferencesReadError` (a :class:`PreferencesError`)
        naming the field, e.g. ``routing.local_bias: 1.7 is greater than the
        maximum of 1``; ``reason`` is ``wrong_version`` for another
        ``schema_version`` and ``invalid`` otherwise.
        """
        _check_version(data, source_name)
        _check_finite(data, [], source_name)
        _check_schema(data, source_name)
        if data["valid_until"] < data["generated_at"]:
            raise PreferencesReadError(
                f"{data['valid_until']!r} is before generated_at {data['generated_at']!r}",
                field="valid_until", source=source_name)
        try:
            return cls(
                schema_version=data["schema_version"],
                sequence=int(data["sequence"]),
                generated_at=data["generated_at"],
                valid_until=data["valid_until"],
                strategy=data["strategy"],
                source=data["source"],
                mode=data.get("mode"),
                routing=Routing(**data["routing"]),
                timeouts_seconds=data["timeouts_seconds"],
                query_classes={k: Routing(**v) for k, v in data.get("query_classes", {}).items()},
                constraints={k: ConstraintState(**v) for k, v in data.get("constraints", {}).items()},
                reasons=[Reason(**r) for r in data.get("reasons", [])],
            )
        except (ValueError, TypeError) as err:  # the schema should have caught it; belt and braces
            raise PreferencesReadError(str(err), source=source_name) from err

    @classmethod
    def from_json(cls, text: Union[str, bytes], source_name: str = "<string>") -> "Preferences":
        """Parse and validate a document. Raises :class:`PreferencesReadError`
        with ``reason`` ``empty``, ``invalid_json``, ``too_large``,
        ``wrong_version`` or ``invalid``."""
        return cls.from_dict(_parse_json(text, source_name), source_name)

    @classmethod
    def defaults(cls, now: Optional[float] = None, strategy: str = "defaults",
                 validity_seconds: float = DEFAULT_VALIDITY_SECONDS) -> "Preferences":
        """Safe defaults: ``Routing.DEFAULT``, 30 s timeouts, source ``defaults``."""
        now = SYSTEM_CLOCK.time() if now is None else now
        validity = _finite("validity_seconds", validity_seconds, lower=0.0)
        return cls(generated_at=now, valid_until=now + validity, strategy=strategy, source="defaults",
                   routing=Routing.DEFAULT, timeouts_seconds=dict(DEFAULT_TIMEOUTS_SECONDS))


def _freshness(prefs: Preferences, age: float, grace: Optional[float]) -> str:
    window = prefs.validity_seconds
    grace = window / 2.0 if grace is None else grace
    if age <= window:
        return "fresh"
    if age <= window + grace:
        return "stale"
    return "expired"


# ---------------------------------------------------------------- schema + parsing

_validator_lock = threading.Lock()
_validator: Any = None


def load_schema() -> Dict[str, Any]:
    """The published JSON Schema as a dict (a fresh copy)."""
    return json.loads(PREFERENCES_SCHEMA_PATH.read_text(encoding="utf-8"))


def _schema_validator() -> Any:
    global _validator
    with _validator_lock:
        if _validator is None:
            from jsonschema import Draft202012Validator  # import cost paid once, on first use

            schema = load_schema()
            Draft202012Validator.check_schema(schema)
            _validator = Draft202012Validator(schema)
        return _validator


def _check_version(data: Any, source: str) -> None:
    if isinstance(data, dict) and "schema_version" in data:
        version = data["schema_version"]
        if isinstance(version, int) and not isinstance(version, bool) and version != SCHEMA_VERSION:
            raise PreferencesReadError(
                f"{version} is not supported (this version of dualtrack understands {SCHEMA_VERSION})",
                reason="wrong_version", field="schema_version", source=source)


def _check_finite(value: Any, path: List[Union[str, int]], source: str) -> None:
    # The schema's range checks let NaN through (every comparison is false).
    if isinstance(value, float) and not math.isfinite(value):
        raise PreferencesReadError(f"{value!r} is not a finite number", field=_field_path(path) or None,
                                   source=source)
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, path + [str(k)], source)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, path + [i], source)


def _check_schema(data: Any, source: str) -> None:
    from jsonschema.exceptions import best_match

    error = best_match(_schema_validator().iter_errors(data))
    if error is None:
        return
    path: List[Union[str, int]] = list(error.absolute_path)
    message = error.message
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        if missing:
            path.append(missing[0])
            message = "required field is missing"
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        extra = [name for name in error.instance if name not in allowed]
        if extra and allowed:
            path.append(extra[0])
            message = f"unexpected field; allowed: {', '.join(allowed)}"
    raise PreferencesReadError(_one_line(message), field=_field_path(path) or None, source=source)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(text: Union[str, bytes], source: str) -> Any:
    if isinstance(text, (bytes, bytearray)):
        if len(text) > MAX_FILE_BYTES:
            raise PreferencesReadError(f"{len(text)} bytes is larger than the limit of {MAX_FILE_BYTES}",
                                       reason="too_large", source=source)
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise PreferencesReadError(f"not UTF-8 text ({err.reason} at byte {err.start})",
                                       reason="invalid_json", source=source) from err
    elif len(text) > MAX_FILE_BYTES:
        raise PreferencesReadError(f"{len(text)} characters is larger than the limit of {MAX_FILE_BYTES}",
                                   reason="too_large", source=source)
    if not text.strip():
        raise PreferencesReadError("the file is empty", reason="empty", source=source)
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise PreferencesReadError(f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}",
                                   reason="invalid_json", source=source) from err
    except (ValueError, RecursionError) as err:  # NaN/Infinity, huge integers, absurd nesting
        raise PreferencesReadError(f"not valid JSON: {_one_line(str(err) or type(err).__name__)}",
                                   reason="invalid_json", source=source) from err


def _read_file_bytes(path: str, source: str) -> bytes:
    """Read at most MAX_FILE_BYTES (+1 to detect more) from a regular file."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not _stat.S_ISREG(st.st_mode):
                raise PreferencesReadError("not a regular file", reason="unreadable", source=source)
            return fh.read(MAX_FILE_BYTES + 1)
    except PreferencesReadError:
        raise
    except (FileNotFoundError, NotADirectoryError) as err:
        raise PreferencesReadError("no such file", reason="missing", source=source) from err
    except OSError as err:
        raise PreferencesReadError(f"cannot read: {err.strerror or err}", reason="unreadable",
                                   source=source) from err


def read_preferences(path: Union[str, "os.PathLike[str]"]) -> Preferences:
    """Read and validate one preferences file; raises :class:`PreferencesReadError`
    (``source`` is ``path`` as given, ``reason`` a metric label)."""
    source = os.fspath(path)
    return Preferences.from_json(_read_file_bytes(source, source), source)


# ---------------------------------------------------------------- writer


def _random_token() -> str:
    """The unpredictable part of a temp file name (a test seam)."""
    return secrets.token_hex(8)


def _split_target(path: Union[str, "os.PathLike[str]"]) -> Tuple[str, str]:
    folder, name = os.path.split(os.fspath(path))
    if name in ("", ".", ".."):
        raise PreferencesError(f"{os.fspath(path)}: expected a file path, not a folder")
    return os.path.realpath(folder or "."), name


def _temp_pattern(name: str) -> "re.Pattern[str]":
    return re.compile(r"^\." + re.escape(name) + r"\.[0-9a-f]{8,64}\.tmp$")


_OPEN_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
_TEMP_ATTEMPTS = 8


def _create_temp(folder: str, name: str, mode: int) -> Tuple[str, int]:
    last: Optional[OSError] = None
    for _ in range(_TEMP_ATTEMPTS):
        tmp = os.path.join(folder, f".{name}.{_random_token()}.tmp")
        try:
            return tmp, os.open(tmp, _OPEN_FLAGS, mode)
        except FileExistsError as err:
            # Something is already there (maybe a planted symlink): O_EXCL refused
            # to touch it. Never remove it, just pick another name.
            last = err
        except OSError as err:
            if err.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
                last = err
                continue
            raise
    raise FileExistsError(errno.EEXIST, f"no free temp file name after {_TEMP_ATTEMPTS} attempts",
                          os.path.join(folder, f".{name}.*.tmp")) from last


def _fsync_dir(folder: str) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(folder, flags)
    except OSError:
        return  # best effort: some platforms cannot open folders
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(folder: str, name: str, data: bytes, mode: int) -> str:
    target = os.path.join(folder, name)
    tmp: Optional[str] = None
    fd = -1
    try:
        tmp, fd = _create_temp(folder, name, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fchmod(fd, mode)  # the mode passed to os.open went through the umask
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)  # replaces a symlink at target, never writes through it
        tmp = None
    except BaseException as err:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(err, Exception):
            raise PreferencesError(f"{target}: could not write preferences: {err}") from err
        raise
    _fsync_dir(folder)
    return target


def _validated_bytes(prefs: Preferences) -> bytes:
    if not isinstance(prefs, Preferences):
        raise PreferencesError(f"expected Preferences, got {type(prefs).__name__}")
    # Round-trip through the reader's validation so a writer can never publish
    # a document that readers would reject.
    data = prefs.to_dict()
    Preferences.from_dict(data, source_name="<preferences to write>")
    return (json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def write_preferences(path: Union[str, "os.PathLike[str]"], prefs: Preferences, mode: int = 0o644) -> str:
    """Validate ``prefs`` and write it atomically to ``path`` with permissions ``mode``.

    Returns the path written (``realpath(folder)/name``). Raises
    :class:`PreferencesError` (cause chained); never leaves a temp file behind.
    """
    folder, name = _split_target(path)
    return _write_atomic(folder, name, _validated_bytes(prefs), mode)


class PreferencesWriter:
    """Publishes preferences to one file, numbering them.

    The folder is resolved once (``realpath``) at construction; the writer
    only ever creates files inside it. Leftover temp files of a previous
    writer (killed mid-write) are removed at construction::

        writer = PreferencesWriter("/run/dualtrack/preferences.json")
        written = writer.publish(prefs)   # written.sequence == previous + 1
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"], *, mode: int = 0o644,
                 clock: Optional[Clock] = None, logger: Optional[logging.Logger] = None) -> None:
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise ValueError(f"mode: expected permission bits such as 0o644, got {mode!r}")
        self.folder, self.name = _split_target(path)
        self.path = os.path.join(self.folder, self.name)
        self.mode = mode
        self._clock = clock or SYSTEM_CLOCK
        self._log = logger or _log
        self._lock = threading.Lock()
        self._warned_expired = False
        self._sequence = self._existing_sequence()
        self.cleanup_stale_temp_files()

    @property
    def sequence(self) -> int:
        """The sequence number of the last document written (or found at start)."""
        return self._sequence

    def _existing_sequence(self) -> int:
        try:
            if not _stat.S_ISREG(os.lstat(self.path).st_mode):
                return 0
            return read_preferences(self.path).sequence
        except (OSError, PreferencesError):
            return 0

    def publish(self, prefs: Preferences) -> Preferences:
        """Write ``prefs`` with the next sequence number; return what was written."""
        with self._lock:
            numbered = dataclasses.replace(prefs, sequence=self._sequence + 1)
            expired = numbered.valid_until < self._clock.time()
            if expired and not self._warned_expired:  # once per episode, not per cycle
                self._log.warning("publishing preferences to %s that expired at %s; readers will "
                                  "use safe defaults", self.path, _iso(numbered.valid_until))
            self._warned_expired = expired
            _write_atomic(self.folder, self.name, _validated_bytes(numbered), self.mode)
            self._sequence = numbered.sequence
            return numbered

    def cleanup_stale_temp_files(self, max_age_seconds: float = 60.0) -> List[str]:
        """Remove this target's ``.<name>.<hex>.tmp`` files older than ``max_age_seconds``.

        Ages compare file mtimes with the system's wall clock (mtimes are set by
        the kernel, not by an injected clock). Returns the paths removed;
        errors are logged, never raised.
        """
        pattern = _temp_pattern(self.name)
        now = SYSTEM_CLOCK.time()
        removed: List[str] = []
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return removed
        for entry in entries:
            if not pattern.match(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                if _stat.S_ISDIR(st.st_mode) or now - st.st_mtime < max_age_seconds:
                    continue
                os.unlink(entry.path)  # a symlink is removed itself, its target untouched
                removed.append(entry.path)
            except FileNotFoundError:
                continue
            except OSError as err:
                self._log.warning("could not remove stale temp file %s: %s", entry.path, err)
        if removed:
            self._log.info("removed %d stale preferences temp file(s) in %s", len(removed), self.folder)
        return removed


# ---------------------------------------------------------------- reader


def _iso(ts: float) -> str:
    try:
        return _dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{ts!r} (unix seconds)"


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
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"], *, clock: Optional[Clock] = None,
                 check_interval_seconds: float = 1.0, expiry_grace_seconds: Optional[float] = None,
                 defaults: Optional[Preferences] = None, registry: Any = None,
                 logger: Optional[logging.Logger] = None) -> None:
        self.path = os.fspath(path)
        self._clock = clock or SYSTEM_CLOCK
        self.check_interval_seconds = _finite("check_interval_seconds", check_interval_seconds, lower=0.0)
        self.expiry_grace_seconds = (None if expiry_grace_seconds is None else
                                     _finite("expiry_grace_seconds", expiry_grace_seconds, lower=0.0))
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
        self._logged: set = set()
        self._fallback_key: Optional[Tuple[Any, ...]] = None
        self._fallback: Optional[Preferences] = None
        self._on_defaults_logged = False

        self.parse_count = 0
        self.reload_count = 0
        self.error_counts: Dict[str, int] = {reason: 0 for reason in READ_ERROR_REASONS}
        if registry is not None:
            registry.register(_ReaderCollector(self))

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
            state = _freshness(loaded.prefs, age, self.expiry_grace_seconds)
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
                             f"expired at {_iso(p.valid_until)} and the {grace:g} s grace period is over; "
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
                valid_until=min(wall + max(base.validity_seconds, 1.0), _TIMESTAMP_MAX),
                reasons=[reason, *base.reasons])
            self._fallback, self._fallback_key = fallback, key
            return fallback


class _ReaderCollector:
    """Exports a reader's state at scrape time."""

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
