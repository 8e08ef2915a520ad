"""The names and limits every part of dualtrack shares, defined once.

Paths, tracks, outcomes, the routing preferences with their bounds and
defaults, "never parallel", the default timeouts and the one duration
grammar. Everything else imports them from here; ``tests/test_vocabulary.py``
checks the published JSON Schemas against them, so a file format cannot
drift from the code.

    from dualtrack.vocabulary import PATHS, ROUTING_FIELDS, parse_duration

    parse_duration("1m30s")            # 90.0
    ROUTING_FIELDS["local_bias"].clip(1.4)   # 1.0
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Tuple, Union

# ------------------------------------------------------------------ paths and tracks

TRACKS: Tuple[str, str] = ("local", "api")
"""The two models a query can run on."""

PATHS: Tuple[str, ...] = ("local", "api", "parallel")
"""How a request can be served: one track, or both at once (first acceptable
answer wins). A bounded metric label, and the keys of per-path timeouts."""

OUTCOMES: Tuple[str, ...] = ("success", "error", "timeout", "cancelled")
"""How a request or model call ended. A bounded metric label."""

RATE_LIMITED = "rate_limited"
"""The error type of a call refused by a rate limit (HTTP 429): an ``error``
outcome, counted apart as well (``dualtrack_rate_limited_total``) because a
full API is not a failing one."""

OTHER = "other"
"""The label value that stands for every value outside a bounded set."""

DEFAULT_QUERY_CLASSES: Tuple[str, ...] = ("short", "medium", "long")
"""The query classes when the configuration names none."""


def other_track(track: str) -> str:
    """The track that is not ``track`` (the fallback of a single-track call)."""
    return "api" if track == "local" else "local"


# ------------------------------------------------------------------ routing preferences

PARALLEL_NEVER = 1.01
"""A ``parallel_threshold`` above every complexity score (scores are 0..1): never run in parallel."""


@dataclass(frozen=True)
class RoutingField:
    """One routing preference: its meaning, default and the range it may ever take.

    Strategies clamp within ``lower..upper``; the preferences file refuses
    values outside it.
    """

    name: str
    default: float
    lower: float
    upper: float
    max_step: float
    help: str

    def clip(self, value: float) -> float:
        return self.lower if value < self.lower else self.upper if value > self.upper else value


ROUTING_FIELDS: Mapping[str, RoutingField] = MappingProxyType({f.name: f for f in (
    RoutingField("local_bias", 0.5, 0.0, 1.0, 0.1,
                 "share of traffic sent to the local track, 0 (all API) to 1 (all local)"),
    RoutingField("parallel_threshold", 0.7, 0.0, PARALLEL_NEVER, 0.1,
                 "complexity score (0..1) at or above which a query runs on both tracks; "
                 f"above 1 (up to {PARALLEL_NEVER}) means never"),
    RoutingField("timeout_multiplier", 1.0, 0.1, 10.0, 0.25,
                 "factor applied to every per-path timeout"),
    RoutingField("quality_threshold", 0.8, 0.0, 1.0, 0.05,
                 "minimal acceptable answer quality, 0..1"),
)})
"""The routing preferences, in document order. Defaults are the specification's (0.5, 0.7, 1.0, 0.8);
``max_step`` is a strategy's default step limit per cycle."""

ROUTING_NAMES: Tuple[str, ...] = tuple(ROUTING_FIELDS)
"""``("local_bias", "parallel_threshold", "timeout_multiplier", "quality_threshold")``."""

DEFAULT_ROUTING: Mapping[str, float] = MappingProxyType({f.name: f.default for f in ROUTING_FIELDS.values()})

DEFAULT_TIMEOUTS_SECONDS: Mapping[str, float] = MappingProxyType({"local": 30.0, "api": 30.0, "parallel": 30.0})
"""Per-path timeouts before any adaptation, and the router's when it has no preferences."""


# ------------------------------------------------------------------ durations

_UNITS: Tuple[Tuple[str, float], ...] = (
    ("y", 365 * 86400.0), ("w", 7 * 86400.0), ("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0),
    ("ms", 0.001),
)
# Prometheus' grammar (model.ParseDuration): units from the largest to the
# smallest, each at most once (2m, 90s, 1h30m, 1s500ms). Strategy and scenario
# files use the same grammar and may also write decimals (1.5s).
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_DURATION_RE = re.compile("".join(f"(?:({_NUMBER}){unit}(?![a-z]))?" for unit, _ in _UNITS))
_INTEGER_RE = re.compile(r"[0-9]+")

DURATION_HINT = "a duration like 500ms, 30s, 2m, 1h or 1m30s"


def parse_duration(value: Union[int, float, str]) -> float:
    """``30`` / ``"30s"`` / ``"1m30s"`` / ``"500ms"`` / ``"1.5s"`` -> seconds (``ValueError`` otherwise).

    A number is seconds. Text follows Prometheus' duration grammar (units
    ``y w d h m s ms``, largest first, each at most once), with decimals allowed.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_HINT}, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"durations cannot be negative, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected {DURATION_HINT}, got {value!r}")
    text = value.strip()
    match = _DURATION_RE.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"expected {DURATION_HINT}, got {value!r}")
    return sum(float(number) * seconds for number, (_, seconds) in zip(match.groups(), _UNITS, strict=False) if number)


def check_promql_duration(value: object) -> str:
    """``value`` if Prometheus accepts it as a range (``2m``, ``90s``, ``1h30m``), else ``ValueError``.

    The same grammar as :func:`parse_duration`, with whole numbers only, as
    PromQL requires.
    """
    if isinstance(value, str) and value:
        match = _DURATION_RE.fullmatch(value)
        if match is not None and all(n is None or _INTEGER_RE.fullmatch(n) for n in match.groups()):
            return value
    raise ValueError(f"expected a PromQL duration such as 2m, 90s or 1h30m, got {value!r}")


__all__ = [
    "DEFAULT_QUERY_CLASSES", "DEFAULT_ROUTING", "DEFAULT_TIMEOUTS_SECONDS", "DURATION_HINT", "OTHER", "OUTCOMES",
    "PARALLEL_NEVER", "PATHS", "RATE_LIMITED", "ROUTING_FIELDS", "ROUTING_NAMES", "RoutingField", "TRACKS",
    "check_promql_duration", "other_track", "parse_duration",
]
