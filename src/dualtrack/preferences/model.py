"""The preferences document as Python objects: :class:`Preferences` and its parts.

A :class:`Preferences` holds the global :class:`Routing`, per-path timeouts,
per-query-class routing overrides, the :class:`ConstraintState` of each
resource constraint and the :class:`Reason` of each rule that fired. Every
object validates itself on construction (``ValueError`` naming the field), so
an invalid document cannot be built, only refused::

    prefs = Preferences(generated_at=now, valid_until=now + 60, strategy="balanced",
                        source="embedded", routing=Routing.DEFAULT.replace(local_bias=0.6))
    Preferences.from_json(prefs.to_json()) == prefs      # True
    prefs.freshness(now + 75)                            # "stale" (grace: half the window)

The routing preferences' names, defaults and bounds are the vocabulary's
(:data:`dualtrack.vocabulary.ROUTING_FIELDS`); the JSON form and its schema
are :mod:`.codec`'s.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Union

from .._validate import boolean, number, optional_number
from ..clock import SYSTEM_CLOCK
from ..vocabulary import DEFAULT_TIMEOUTS_SECONDS, PATHS, ROUTING_FIELDS, ROUTING_NAMES
from .codec import SCHEMA_VERSION, PreferencesReadError, check_document, dump_json, parse_json

SOURCES: Tuple[str, ...] = ("embedded", "prometheus", "defaults", "static")
"""Where the signal values behind a document came from."""

DEFAULT_VALIDITY_SECONDS = 300.0
"""Validity window of :meth:`Preferences.defaults`."""

TIMESTAMP_MAX = 1e11
"""The largest ``generated_at``/``valid_until`` accepted, in unix seconds: larger values are almost surely
milliseconds."""

_SEQUENCE_MAX = 2**53 - 1  # exact in every JSON implementation
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def _name(label: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"{label}: expected a name of letters, digits, '_', '.', '-' "
                         f"(at most 64 characters), got {value!r}")
    return value


def _text(label: str, value: Any, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str) or (not allow_empty and not value):
        raise ValueError(f"{label}: expected a{'' if allow_empty else ' non-empty'} string, got {value!r}")
    return value


def iso_time(ts: float) -> str:
    """Wall-clock unix seconds as local ISO 8601 for messages (``2023-11-14T22:13:20+00:00``)."""
    try:
        return _dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{ts!r} (unix seconds)"


# ---------------------------------------------------------------- parts


@dataclass(frozen=True)
class Routing:
    """How a router splits traffic. Validated on construction (``ValueError``).

    * ``local_bias``: share of traffic to the local track, 0..1.
    * ``parallel_threshold``: complexity score (0..1) at or above which a
      query runs on both tracks; up to :data:`~dualtrack.vocabulary.PARALLEL_NEVER`
      (1.01) allowed, anything above 1 means never.
    * ``timeout_multiplier``: scales every per-path timeout; 0.1..10.
    * ``quality_threshold``: minimal acceptable answer quality, 0..1.

    ``Routing.DEFAULT`` holds the specification's defaults (0.5, 0.7, 1.0, 0.8)::

        faster = Routing.DEFAULT.replace(local_bias=0.8, timeout_multiplier=0.8)
    """

    local_bias: float = ROUTING_FIELDS["local_bias"].default
    parallel_threshold: float = ROUTING_FIELDS["parallel_threshold"].default
    timeout_multiplier: float = ROUTING_FIELDS["timeout_multiplier"].default
    quality_threshold: float = ROUTING_FIELDS["quality_threshold"].default

    DEFAULT: ClassVar["Routing"]
    FIELDS: ClassVar[Tuple[str, ...]] = ROUTING_NAMES

    def __post_init__(self) -> None:
        for name in self.FIELDS:
            spec = ROUTING_FIELDS[name]
            object.__setattr__(self, name, number(name, getattr(self, name), lower=spec.lower, upper=spec.upper))

    def replace(self, **changes: float) -> "Routing":
        """A copy with ``changes`` applied (validated); unknown names raise ``ValueError``."""
        unknown = sorted(set(changes) - set(self.FIELDS))
        if unknown:
            raise ValueError(f"{unknown[0]}: not a routing preference; expected one of {list(self.FIELDS)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> Dict[str, float]:
        return {name: getattr(self, name) for name in self.FIELDS}


# The fields above must be the vocabulary's routing preferences, in its order:
# a preference added there and not here would fail only when first used.
if tuple(f.name for f in dataclasses.fields(Routing)) != ROUTING_NAMES:
    raise TypeError(f"Routing's fields {[f.name for f in dataclasses.fields(Routing)]} are not the "
                    f"vocabulary's ROUTING_NAMES {list(ROUTING_NAMES)}")

Routing.DEFAULT = Routing()


@dataclass(frozen=True)
class ConstraintState:
    """One resource constraint when the document was generated.

    ``value``/``limit`` are ``None`` when there is no data / no limit.
    """

    violated: bool
    value: Optional[float] = None
    limit: Optional[float] = None

    def __post_init__(self) -> None:
        boolean("violated", self.violated)
        object.__setattr__(self, "value", optional_number("value", self.value))
        object.__setattr__(self, "limit", optional_number("limit", self.limit))

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
            _text("signals key", k): optional_number(f"signals[{json.dumps(k)}]", v)
            for k, v in dict(self.signals).items()})
        object.__setattr__(self, "changes", {
            _text("changes key", k): number(f"changes[{json.dumps(k)}]", v)
            for k, v in dict(self.changes).items()})

    def as_dict(self) -> Dict[str, Any]:
        return {
            "rule": self.rule,
            "message": self.message,
            "query_class": self.query_class,
            "signals": {k: self.signals[k] for k in sorted(self.signals)},
            "changes": {k: self.changes[k] for k in sorted(self.changes)},
        }


# ---------------------------------------------------------------- the document


@dataclass(frozen=True, kw_only=True)
class Preferences:
    """One published preferences document. Immutable by convention: treat the
    dicts and the list as read-only (one instance is shared by every thread of
    a router).

    Build one in the adapter, publish it with a
    :class:`~dualtrack.preferences.PreferencesWriter`; read it in a router
    with a :class:`~dualtrack.preferences.PreferencesReader`::

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
        generated = number("generated_at", self.generated_at, lower=0.0, upper=TIMESTAMP_MAX)
        valid_until = number("valid_until", self.valid_until, lower=0.0, upper=TIMESTAMP_MAX)
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
            p: number(f"timeouts_seconds.{p}", timeouts[p], lower=0.0, lower_open=True) for p in PATHS})
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
        return freshness_at_age(self, self.age(now), expiry_grace_seconds)

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
        return dump_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source_name: str = "<dict>") -> "Preferences":
        """Validate ``data`` (schema, then semantics) and build the object.

        Raises :class:`~dualtrack.preferences.PreferencesReadError` (a
        :class:`~dualtrack.errors.PreferencesError`) naming the field, e.g.
        ``routing.local_bias: 1.7 is greater than the maximum of 1``;
        ``reason`` is ``wrong_version`` for another ``schema_version`` and
        ``invalid`` otherwise.
        """
        check_document(data, source_name)
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
        """Parse and validate a document. Raises
        :class:`~dualtrack.preferences.PreferencesReadError` with ``reason``
        ``empty``, ``invalid_json``, ``too_large``, ``wrong_version`` or ``invalid``."""
        return cls.from_dict(parse_json(text, source_name), source_name)

    @classmethod
    def defaults(cls, now: Optional[float] = None, strategy: str = "defaults",
                 validity_seconds: float = DEFAULT_VALIDITY_SECONDS) -> "Preferences":
        """Safe defaults: ``Routing.DEFAULT``, 30 s timeouts, source ``defaults``."""
        now = SYSTEM_CLOCK.time() if now is None else now
        validity = number("validity_seconds", validity_seconds, lower=0.0)
        return cls(generated_at=now, valid_until=now + validity, strategy=strategy, source="defaults",
                   routing=Routing.DEFAULT, timeouts_seconds=dict(DEFAULT_TIMEOUTS_SECONDS))


def freshness_at_age(prefs: Preferences, age: float, grace: Optional[float]) -> str:
    """``"fresh"`` while ``age`` is within the validity window, ``"stale"`` for ``grace`` seconds more
    (by default half the window), ``"expired"`` after."""
    window = prefs.validity_seconds
    grace = window / 2.0 if grace is None else grace
    if age <= window:
        return "fresh"
    if age <= window + grace:
        return "stale"
    return "expired"


__all__ = [
    "DEFAULT_VALIDITY_SECONDS", "SOURCES", "TIMESTAMP_MAX", "ConstraintState", "Preferences", "Reason", "Routing",
    "freshness_at_age", "iso_time",
]
