"""Query classes and complexity: what kind of query is this?

The query class is a metric label, so it comes from a small configured set
(default ``short``, ``medium``, ``long`` by estimated input tokens); a
classifier returning anything else folds into ``other``. Callers that know
better pass ``context={"query_class": "long"}`` or plug in their own
classifier (``OptimizationConfig.query_classifier``).

The complexity score (0..1) decides when a query is raced on both tracks
(``complexity >= parallel_threshold``). The default heuristic is deliberately
simple and cheap — length, plus a little for code, maths and multi-part
questions; pass ``context={"complexity": 0.9}`` to override it.
"""

from __future__ import annotations

import bisect
from typing import Any, Callable, Mapping, Optional, Sequence

from ..config import OptimizationConfig

#: Characters per token, a common rough estimate for English text.
CHARS_PER_TOKEN = 4.0


def estimate_tokens(query: str, context: Optional[Mapping[str, Any]] = None) -> int:
    """Estimated input tokens: ``context["estimated_tokens"]`` when given, else len/4."""
    if context:
        given = context.get("estimated_tokens")
        if isinstance(given, int) and not isinstance(given, bool) and given >= 0:
            return given
    return int(len(query) / CHARS_PER_TOKEN) if isinstance(query, str) else 0


class QueryClassifier:
    """Classifies queries into the configured, bounded set of classes."""

    def __init__(self, config: OptimizationConfig,
                 fold: Optional[Callable[[object], str]] = None) -> None:
        self.classes = tuple(config.query_classes)
        self._known = frozenset(self.classes)
        self._bounds: Sequence[int] = config.query_class_boundaries_tokens
        self._custom = config.query_classifier
        self._fold = fold or (lambda v: v if v in self._known else "other")
        self._long = self._bounds[-1] if self._bounds else 2048

    def classify(self, query: str, context: Optional[Mapping[str, Any]] = None) -> str:
        if context:
            explicit = context.get("query_class")
            if explicit is not None:
                return self._fold(explicit)
        if self._custom is not None:
            return self._fold(self._custom(query, dict(context) if context else None))
        index = bisect.bisect_right(self._bounds, estimate_tokens(query, context))
        return self.classes[index]

    def complexity(self, query: str, context: Optional[Mapping[str, Any]] = None) -> float:
        if context:
            given = context.get("complexity")
            if isinstance(given, (int, float)) and not isinstance(given, bool) and 0.0 <= given <= 1.0:
                return float(given)
        tokens = estimate_tokens(query, context)
        # In thousandths, in integers: 0.7 for length (reached at twice the
        # longest class boundary), 0.1 per marker, 0.1 for a multi-part
        # question, at most 1.0. The length part is rounded half up from its
        # exact value; n / 1000 is then the same float that round(x, 3) gives,
        # at a fifth of its cost (round with digits formats the float).
        # Compare before multiplying: a caller's estimated_tokens may be any int.
        cap = 2 * self._long
        score = 700 if tokens >= cap else (1400 * tokens + cap) // (2 * cap)
        if isinstance(query, str):
            head = query[:1000]  # the start of a query says enough; scanning more costs per request
            # 0.1 for each marker of code, maths or reasoning found. Hot path
            # (every recommendation scans the query), so written out rather
            # than looped over a tuple: a marker with a character that is rare
            # in prose is only searched for when that character occurs (a
            # one-character search is a memchr).
            found = (("`" in head and "```" in head) + ("def " in head) + ("class " in head)
                     + ("SELECT " in head) + ("\\" in head and "\\frac" in head) + ("prove" in head)
                     + ("step by step" in head) + ("derive" in head) + ("explain why" in head))
            score += 100 * found
            # "More than one '?'" stops at the second one.
            first = head.find("?")
            if first != -1 and head.find("?", first + 1) != -1:
                score += 100
        return (score if score < 1000 else 1000) / 1000

