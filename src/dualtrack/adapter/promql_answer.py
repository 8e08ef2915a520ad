"""The Prometheus HTTP API's instant-query answer: its model and its strict parser.

``_parse_instant`` turns a decoded JSON body into an :class:`InstantResult`
or raises ``BadResponse`` naming what is wrong and where (a wrong shape, a
range vector, a value that is not a number). ``adapter.promql`` (the client)
uses it on every answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Tuple

from .._http import short
from ..errors import BadResponse


@dataclass(frozen=True)
class Sample:
    """One value of an instant query: its series labels, value and evaluation time.

    ``value`` may be NaN or ±Inf (``0/0``, a ratio over no traffic); such
    samples are kept so the caller can see them, and ``is_finite`` tells the
    caller to treat them as no data.
    """

    labels: Dict[str, str]
    value: float
    timestamp: float

    @property
    def is_finite(self) -> bool:
        return math.isfinite(self.value)


@dataclass(frozen=True)
class InstantResult:
    """The answer to an instant query. Iterable over its samples.

    ``result_type`` is ``"vector"`` or ``"scalar"`` (a scalar is one sample
    with empty labels). ``warnings`` (and ``infos``, newer servers) are the
    server's annotations, e.g. a partial answer from a federated engine.
    """

    result_type: str
    samples: Tuple[Sample, ...]
    warnings: Tuple[str, ...] = ()
    infos: Tuple[str, ...] = ()

    @property
    def finite(self) -> Tuple[Sample, ...]:
        """The samples with a finite value: the ones that carry data."""
        return tuple(s for s in self.samples if s.is_finite)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)


# --------------------------------------------------------------------------- helpers


def _describe(value: Any) -> str:
    """A bounded description of arbitrary JSON for error messages."""
    if isinstance(value, (dict, list)):
        return f"{type(value).__name__} of {len(value)}"
    try:
        return short(repr(value), 60)
    except Exception:  # pragma: no cover - repr of JSON values does not fail
        return type(value).__name__


def _string_list(value: Any, where: str) -> Tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadResponse(f"{where}: expected a list of strings, got {_describe(value)}")
    return tuple(value)


def _parse_value(text: Any, where: str) -> float:
    # The API sends sample values as strings ("1.5", "NaN", "+Inf", "-Inf").
    if not isinstance(text, str):
        raise BadResponse(f"{where}: expected the value as a string, got {_describe(text)}")
    if "_" in text or text != text.strip() or not text:
        raise BadResponse(f"{where}: not a number: {_describe(text)}")
    try:
        return float(text)
    except ValueError:
        raise BadResponse(f"{where}: not a number: {_describe(text)}") from None


def _parse_point(point: Any, where: str) -> Tuple[float, float]:
    if not isinstance(point, list) or len(point) != 2:
        raise BadResponse(f"{where}: expected a [timestamp, \"value\"] pair, got {_describe(point)}")
    ts, text = point
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        raise BadResponse(f"{where}: timestamp is not a number: {_describe(ts)}")
    try:
        timestamp = float(ts)
    except OverflowError:
        raise BadResponse(f"{where}: timestamp out of range") from None
    if not math.isfinite(timestamp):
        raise BadResponse(f"{where}: timestamp is not finite")
    return timestamp, _parse_value(text, where + "[1]")


def _parse_labels(metric: Any, where: str) -> Dict[str, str]:
    if not isinstance(metric, dict):
        raise BadResponse(f"{where}: expected an object of labels, got {_describe(metric)}")
    for key, value in metric.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise BadResponse(f"{where}: label {_describe(key)} is not a string pair")
    return dict(metric)


def _parse_instant(body: Any) -> InstantResult:
    """Turn a decoded ``/api/v1/query`` body into an ``InstantResult``.

    Anything that is not a successful instant-query answer raises
    ``BadResponse`` (and only that): this is the boundary where untrusted
    JSON becomes typed values.
    """
    if not isinstance(body, dict):
        raise BadResponse(f"expected a JSON object, got {_describe(body)}")
    status = body.get("status")
    if status != "success":
        raise BadResponse(f"status: expected 'success', got {_describe(status)}")
    data = body.get("data")
    if not isinstance(data, dict):
        raise BadResponse(f"data: expected an object, got {_describe(data)}")
    warnings = _string_list(body.get("warnings"), "warnings")
    infos = _string_list(body.get("infos"), "infos")
    result_type = data.get("resultType")
    if "result" not in data:
        raise BadResponse("data.result: missing")
    result = data["result"]

    if result_type == "vector":
        if not isinstance(result, list):
            raise BadResponse(f"data.result: expected a list for a vector, got {_describe(result)}")
        samples: List[Sample] = []
        for i, item in enumerate(result):
            where = f"data.result[{i}]"
            if not isinstance(item, dict):
                raise BadResponse(f"{where}: expected an object, got {_describe(item)}")
            if "value" not in item and "histogram" in item:
                raise BadResponse(
                    f"{where}: a native histogram sample; query a number from it "
                    "(histogram_quantile(), histogram_count(), ...)"
                )
            labels = _parse_labels(item.get("metric"), where + ".metric")
            timestamp, value = _parse_point(item.get("value"), where + ".value")
            samples.append(Sample(labels, value, timestamp))
        return InstantResult("vector", tuple(samples), warnings, infos)
    if result_type == "scalar":
        timestamp, value = _parse_point(result, "data.result")
        return InstantResult("scalar", (Sample({}, value, timestamp),), warnings, infos)
    if result_type == "matrix":
        raise BadResponse(
            "the query returned a range vector: wrap it in a function "
            "(rate(), avg_over_time(), last_over_time(), ...) for an instant query"
        )
    if result_type == "string":
        raise BadResponse("the query returned a string; a signal needs a number")
    raise BadResponse(f"data.resultType: unknown {_describe(result_type)}")


# --------------------------------------------------------------------------- client





__all__ = ["InstantResult", "Sample"]
