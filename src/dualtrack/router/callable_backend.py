"""The callable backend: a plain function you already have, as a :class:`~dualtrack.router.backend.Backend`."""

from __future__ import annotations

import dataclasses
import inspect
import threading
from typing import Any, Callable, Mapping, Optional

from .backend import (
    BackendError,
    Completion,
    Prompt,
    QualityScorer,
    check_model,
    check_track,
    estimate_tokens,
    prompt_text,
    score_quality,
)

__all__ = ["CallableBackend"]


class CallableBackend:
    """Wraps a function you already have::

        def ask(prompt):                      # or ask(prompt, *, timeout, cancel)
            return my_client.complete(prompt)  # str, Completion, or a mapping

        api = CallableBackend(ask, "api", "gpt-4o-mini")

    ``fn`` gets ``timeout`` and ``cancel`` keyword arguments when its
    signature accepts them (it should then honour them; the router stops
    waiting at the deadline either way). It may return a string (tokens are
    estimated), a :class:`Completion`, or a mapping with ``text`` and any of
    ``tokens_in``, ``tokens_out``, ``quality_score``, ``cost``. It may raise
    :class:`BackendError`; ``TimeoutError`` becomes ``timeout``, any other
    exception ``error`` (its type named, its message not, as client errors
    can quote credentials).

    A function that streams can report its first token: give it a
    ``first_token`` parameter (a ``threading.Event``, or ``None``) and set
    it when the first piece of the answer arrives; the backend then declares
    ``reports_first_token`` and the router can hedge and apply first-token
    deadlines to it. (``**kwargs`` alone does not count: a function that
    never sets the event would look stuck.)
    """

    def __init__(self, fn: Callable[..., Any], track: str, model: str, *, name: Optional[str] = None,
                 quality_scorer: Optional[QualityScorer] = None) -> None:
        if not callable(fn):
            raise ValueError(f"fn: expected a callable, got {fn!r}")
        self.fn = fn
        self.track = check_track(track)
        self.model = check_model(model)
        self.name = name or f"{self.track}:{model}"
        self.quality_scorer = quality_scorer
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):  # builtins without a signature
            params = {}  # type: ignore[assignment]
        varkw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._pass = tuple(k for k in ("timeout", "cancel") if varkw or k in params)
        self.reports_first_token = "first_token" in params
        if self.reports_first_token:
            self._pass += ("first_token",)

    def __repr__(self) -> str:
        return f"CallableBackend(name={self.name!r}, track={self.track!r}, model={self.model!r})"

    def generate(self, prompt: Prompt, *, timeout: float, cancel: threading.Event,
                 first_token: Optional[threading.Event] = None) -> Completion:
        if cancel.is_set():
            raise BackendError("cancelled before the call", "cancelled", backend=self.name, model=self.model)
        kwargs = {"timeout": timeout, "cancel": cancel, "first_token": first_token}
        try:
            value = self.fn(prompt, **{k: kwargs[k] for k in self._pass})
        except BackendError:
            raise
        except TimeoutError as err:
            raise BackendError("the function timed out", "timeout", backend=self.name, model=self.model) from err
        except Exception as err:
            raise BackendError(f"the function raised {type(err).__name__}", "error",
                               backend=self.name, model=self.model) from err
        completion = self._completion(prompt, value)
        if cancel.is_set():
            raise BackendError("cancelled", "cancelled", backend=self.name, model=self.model,
                               tokens_in=completion.tokens_in, tokens_out=completion.tokens_out,
                               cost=completion.cost)
        return completion

    def _completion(self, prompt: Prompt, value: Any) -> Completion:
        if isinstance(value, Completion):
            completion = value
        elif isinstance(value, str):
            completion = Completion(value, estimate_tokens(prompt_text(prompt)), estimate_tokens(value),
                                    model=self.model, usage_estimated=True)
        elif isinstance(value, Mapping) and isinstance(value.get("text"), str):
            text = value["text"]
            estimated = "tokens_in" not in value or "tokens_out" not in value
            completion = Completion(
                text,
                int(value.get("tokens_in", estimate_tokens(prompt_text(prompt)))),
                int(value.get("tokens_out", estimate_tokens(text))),
                quality_score=value.get("quality_score"), model=str(value.get("model") or self.model),
                cost=value.get("cost"), usage_estimated=estimated)
        else:
            raise BackendError(f"the function returned {type(value).__name__}; expected str, Completion or "
                               "a mapping with 'text'", "error", backend=self.name, model=self.model)
        if completion.quality_score is None and self.quality_scorer is not None:
            quality = score_quality(self.quality_scorer, prompt, completion.text, self.name)
            completion = dataclasses.replace(completion, quality_score=quality)
        if not completion.model:
            completion = dataclasses.replace(completion, model=self.model)
        return completion

