"""The backend contract: the models a router calls, behind one small blocking interface.

A backend has a ``name``, the ``track`` it serves (``"local"`` or ``"api"``),
the ``model`` it reports (the ``model`` label and the price-table key) and
one method::

    completion = backend.generate(prompt, timeout=12.0, cancel=threading.Event())
    completion.text, completion.tokens_in, completion.tokens_out, completion.quality_score

``prompt`` is a string (sent as one user message) or a list of chat
messages (``[{"role": "system", "content": ...}, ...]``). ``timeout`` is a
whole-answer deadline in seconds; ``cancel`` is set by the router when it no
longer wants the answer (the other track of a parallel request won). A
failure raises :class:`BackendError`, whose ``kind`` says what went wrong:
``error``, ``timeout``, ``cancelled``, ``rate_limited`` or ``unavailable``;
it also carries the tokens (and cost) the call incurred before it stopped,
so a cancelled API call is still paid for in the metrics.

A backend that streams may also report its **first token**: it says so with
``reports_first_token = True`` and then accepts a ``first_token`` keyword
(a ``threading.Event``, or ``None``) that it sets the moment the first piece
of the answer arrives, and puts the time from the start of the call to that
moment on :attr:`Completion.first_token_seconds`. The router passes
``first_token`` only to backends that declare it, so a backend written
before this (or one that cannot tell) keeps working; it then has no
first-token deadline, and its hedge delay is learnt from whole-answer times.

This module holds the contract (:class:`Completion`, :class:`BackendError`,
the :class:`Backend` protocol, :data:`KINDS`) and the helpers every
implementation uses: token estimates, prompt handling, argument checks and
the quality scorer. The implementations live beside it:
``openai_backend`` (OpenAI-compatible HTTP), ``callable_backend`` (a plain
function) and ``fake_backend`` (a simulated model in real time).
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

from ..errors import DualTrackError
from ..exporter.query_classes import CHARS_PER_TOKEN
from ..vocabulary import TRACKS

__all__ = [
    "KINDS",
    "Backend",
    "BackendError",
    "Completion",
    "Prompt",
    "QualityScorer",
    "chat_messages",
    "check_model",
    "check_track",
    "estimate_tokens",
    "prompt_text",
    "reports_first_token",
    "score_quality",
]

log = logging.getLogger(__name__)

KINDS: Tuple[str, ...] = ("error", "timeout", "cancelled", "rate_limited", "unavailable")
"""Values of :attr:`BackendError.kind`."""

Prompt = Union[str, Sequence[Mapping[str, Any]]]
QualityScorer = Callable[[Prompt, str], Optional[float]]


# --------------------------------------------------------------------------- results and errors


@dataclass(frozen=True)
class Completion:
    """One answer. ``quality_score`` is 0..1 or ``None`` (unknown); ``cost``
    is dollars or ``None`` (the optimizer prices it from ``model``).
    ``usage_estimated`` is True when the token counts are estimates
    (characters / 4) because the server reported no usage.
    ``first_token_seconds`` is the time from the start of the call to the
    first piece of the answer, for a backend that streams; ``None``: not
    reported."""

    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    quality_score: Optional[float] = None
    model: str = ""
    cost: Optional[float] = None
    usage_estimated: bool = False
    # A timing, not content: two answers with the same text and usage are equal.
    first_token_seconds: Optional[float] = field(default=None, compare=False)


class BackendError(DualTrackError):
    """A model call failed. ``kind`` is one of :data:`KINDS`.

    ``tokens_in``/``tokens_out``/``cost`` are what the call incurred before it
    stopped (a cancelled stream was still generating and billing);
    ``status`` is the HTTP status where there was one, ``retry_after`` the
    seconds a rate-limited server asked for. Messages never carry
    credentials.
    """

    def __init__(self, message: str, kind: str = "error", *, backend: Optional[str] = None,
                 status: Optional[int] = None, retry_after: Optional[float] = None,
                 tokens_in: int = 0, tokens_out: int = 0, cost: Optional[float] = None,
                 model: Optional[str] = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {list(KINDS)}, got {kind!r}")
        self.message = message
        self.kind = kind
        self.backend = backend
        self.status = status
        self.retry_after = retry_after
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out
        self.cost = cost
        self.model = model
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.backend}: " if self.backend else ""
        return f"{where}{self.kind}: {self.message}"

    def __repr__(self) -> str:
        return f"BackendError({self.message!r}, kind={self.kind!r}, backend={self.backend!r})"

    @property
    def outcome(self) -> str:
        """The request outcome label: ``timeout``, ``cancelled`` or ``error``."""
        return self.kind if self.kind in ("timeout", "cancelled") else "error"


@runtime_checkable
class Backend(Protocol):
    """What the router calls. Implementations must be safe to call from
    several threads at once, honour ``timeout`` as a whole-answer deadline
    and stop as soon as they can once ``cancel`` is set (raising
    ``BackendError(kind="cancelled")``)."""

    name: str
    track: str
    model: str

    def generate(self, prompt: Prompt, *, timeout: float, cancel: threading.Event) -> Completion: ...


# --------------------------------------------------------------------------- helpers for implementations


def reports_first_token(backend: Any) -> bool:
    """Whether ``backend`` signals its first token: it declares ``reports_first_token = True``
    and its ``generate`` takes ``first_token`` (a subclass that overrides
    ``generate`` without it inherits the declaration but not the ability)."""
    if getattr(backend, "reports_first_token", False) is not True:
        return False
    try:
        params = inspect.signature(backend.generate).parameters
    except (AttributeError, TypeError, ValueError):
        return False
    return "first_token" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def estimate_tokens(text: str) -> int:
    """Tokens in ``text`` by the usual characters / 4 rule."""
    return int(math.ceil(len(text) / CHARS_PER_TOKEN)) if text else 0


def prompt_text(prompt: Prompt) -> str:
    """The text of ``prompt``: the string, or the messages' contents one per line."""
    if isinstance(prompt, str):
        return prompt
    parts = []
    for message in prompt:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            parts.append(content)
    return "\n".join(parts)


def chat_messages(prompt: Prompt) -> List[Dict[str, Any]]:
    """``prompt`` as chat messages (a string becomes one user message); ``BackendError`` otherwise."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, (list, tuple)) and all(isinstance(m, Mapping) for m in prompt):
        return [dict(m) for m in prompt]
    raise BackendError(f"prompt: expected a string or a list of chat messages, got {type(prompt).__name__}")


def check_track(track: Any) -> str:
    """``track`` if it is one of :data:`~dualtrack.vocabulary.TRACKS`, else ``ValueError``."""
    if track not in TRACKS:
        raise ValueError(f"track: expected 'local' or 'api', got {track!r}")
    return track


def check_model(model: Any) -> str:
    """``model`` if it is a non-empty name, else ``ValueError``."""
    if not isinstance(model, str) or not model:
        raise ValueError(f"model: expected a non-empty model name, got {model!r}")
    return model


def score_quality(scorer: Optional[QualityScorer], prompt: Prompt, text: str, owner: str) -> Optional[float]:
    """Run a quality scorer; a failing or out-of-range scorer gives ``None``."""
    if scorer is None:
        return None
    try:
        value = scorer(prompt, text)
    except Exception as err:  # a scorer bug must not fail the answer
        log.warning("%s: quality_scorer raised %s; quality unknown", owner, type(err).__name__)
        return None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        log.warning("%s: quality_scorer returned %r (expected 0..1 or None); quality unknown", owner, value)
        return None
    return float(value)
