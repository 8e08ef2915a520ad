"""The fake backend: a simulated model that takes real time, for tests and the live demo."""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Callable, Dict, Optional, Union

from .. import _validate
from .backend import KINDS, BackendError, Completion, Prompt, check_track, estimate_tokens, prompt_text

__all__ = ["FakeBackend"]


class FakeBackend:
    """A simulated model that takes real time: for tests and the live demo.

    ::

        api = FakeBackend("api", latency=0.8, jitter=0.3, quality=0.9, error_rate=0.01)
        api.set(error_rate=1.0, error_kind="unavailable")   # an outage, while it runs

    Each call waits ``latency`` seconds (times a uniform factor in
    ``1 ± jitter``), interruptibly: ``cancel`` ends the wait at once
    (``cancelled``, with the tokens produced so far), and a call that would
    outlast its ``timeout`` ends at the deadline (``timeout``). With
    probability ``error_rate`` it fails with ``error_kind`` after
    ``error_latency`` seconds. Quality is ``quality`` ± ``quality_jitter``
    (clamped to 0..1; ``None`` = unknown). ``gate``, when given, holds every
    call until the event is set (tests use it to order events without
    sleeping). ``cost`` is dollars per full answer (``None``: priced by the
    optimizer from ``model``).

    It reports its first token (``reports_first_token``): by default the
    first token comes with the whole answer, after ``latency``. With
    ``first_token_latency`` (seconds, or a function of the backend's ``rng``
    returning seconds, for a distribution such as a heavy tail) the first
    token comes after that time and the rest of the answer ``latency``
    later, as a streaming server would send it.

    Parameters can be changed at any time with :meth:`set`; calls already
    running keep the values they started with. ``calls``, ``completed``,
    ``cancelled`` and ``failed`` count what happened.
    """

    reports_first_token = True

    _PARAMS = ("latency", "jitter", "error_rate", "error_kind", "error_latency", "quality", "quality_jitter",
               "tokens_out", "cost", "text", "gate", "first_token_latency")

    def __init__(self, track: str = "local", *, name: Optional[str] = None, model: Optional[str] = None,
                 latency: float = 0.0, jitter: float = 0.0, error_rate: float = 0.0, error_kind: str = "error",
                 error_latency: float = 0.0, quality: Optional[float] = 0.8, quality_jitter: float = 0.0,
                 tokens_out: int = 64, cost: Optional[float] = None, text: Optional[str] = None,
                 gate: Optional[threading.Event] = None, rng: Optional[random.Random] = None,
                 first_token_latency: Union[None, float, Callable[[random.Random], float]] = None) -> None:
        self.track = check_track(track)
        self.model = model or f"fake-{self.track}"
        self.name = name or self.model
        self._lock = threading.Lock()
        self._rng = rng or random.Random()
        self.calls = self.completed = self.cancelled = self.failed = 0
        self.latency = self.jitter = self.error_rate = self.error_latency = self.quality_jitter = 0.0
        self.error_kind = "error"
        self.quality: Optional[float] = None
        self.tokens_out = 0
        self.cost: Optional[float] = None
        self.text: Optional[str] = None
        self.gate: Optional[threading.Event] = None
        self.first_token_latency: Union[None, float, Callable[[random.Random], float]] = None
        self.set(latency=latency, jitter=jitter, error_rate=error_rate, error_kind=error_kind,
                 error_latency=error_latency, quality=quality, quality_jitter=quality_jitter,
                 tokens_out=tokens_out, cost=cost, text=text, gate=gate, first_token_latency=first_token_latency)

    def set(self, **changes: Any) -> None:
        """Change parameters (validated, all or none); running calls are unaffected."""
        unknown = sorted(set(changes) - set(self._PARAMS))
        if unknown:
            raise ValueError(f"{unknown[0]}: not a FakeBackend parameter; expected one of {list(self._PARAMS)}")
        checked: Dict[str, Any] = {}
        for key, value in changes.items():
            if key in ("latency", "error_latency"):
                value = _validate.number(key, value, lower=0)
            elif key in ("jitter", "error_rate", "quality_jitter"):
                value = _validate.number(key, value, lower=0, upper=1)
            elif key == "quality":
                value = _validate.optional_number(key, value, lower=0, upper=1)
            elif key == "error_kind":
                if value not in KINDS or value == "cancelled":
                    raise ValueError(f"error_kind: expected one of error, timeout, rate_limited, unavailable, "
                                     f"got {value!r}")
            elif key == "tokens_out":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"tokens_out: expected an integer >= 0, got {value!r}")
            elif key == "cost":
                value = _validate.optional_number(key, value, lower=0)
            elif key == "text":
                if value is not None and not isinstance(value, str):
                    raise ValueError(f"text: expected a string or None, got {value!r}")
            elif key == "first_token_latency":
                if value is not None and not callable(value):
                    value = _validate.number(key, value, lower=0)
            elif key == "gate":
                if value is not None and not isinstance(value, threading.Event):
                    raise ValueError(f"gate: expected a threading.Event or None, got {value!r}")
            checked[key] = value
        with self._lock:
            for key, value in checked.items():
                setattr(self, key, value)

    def __repr__(self) -> str:
        return (f"FakeBackend(name={self.name!r}, track={self.track!r}, latency={self.latency:g}, "
                f"error_rate={self.error_rate:g}, quality={self.quality!r})")

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def generate(self, prompt: Prompt, *, timeout: float, cancel: threading.Event,
                 first_token: Optional[threading.Event] = None) -> Completion:
        entered = started = time.monotonic()
        deadline = started + max(float(timeout), 0.0)
        with self._lock:
            self.calls += 1
            latency = self.latency * (1.0 + self.jitter * (2.0 * self._rng.random() - 1.0))
            fails = self._rng.random() < self.error_rate
            quality = self.quality
            if quality is not None and self.quality_jitter:
                quality = min(1.0, max(0.0, quality + self.quality_jitter * (2.0 * self._rng.random() - 1.0)))
            first_after = self.first_token_latency
            if callable(first_after):
                first_after = max(0.0, float(first_after(self._rng)))
            p = (self.error_kind, self.error_latency, self.tokens_out, self.cost, self.text, self.gate)
        error_kind, error_latency, tokens_out, cost, text, gate = p
        tokens_in = estimate_tokens(prompt_text(prompt))
        generating_since: Optional[float] = started  # output tokens accrue from here

        def stop(kind: str, message: str) -> BackendError:
            # Tokens produced so far, in proportion to the time spent generating.
            done = 0.0
            if latency > 0 and generating_since is not None:
                done = min(1.0, (time.monotonic() - generating_since) / latency)
            self._count("cancelled" if kind == "cancelled" else "failed")
            return BackendError(message, kind, backend=self.name, model=self.model, tokens_in=tokens_in,
                                tokens_out=int(tokens_out * done), cost=None if cost is None else cost * done)

        def pause(seconds: float) -> None:
            # Wait ``seconds``, ended early by cancel (raises) or the deadline (raises).
            remaining = deadline - time.monotonic()
            if cancel.wait(min(seconds, max(remaining, 0.0))):
                raise stop("cancelled", "cancelled")
            if seconds > remaining:
                raise stop("timeout", f"no answer within {timeout:.3f} s")

        if gate is not None:
            # Wait for the gate, the cancel or the deadline, whichever first.
            while not gate.wait(0.005):
                if cancel.is_set():
                    raise stop("cancelled", "cancelled while held at the gate")
                if time.monotonic() >= deadline:
                    raise stop("timeout", "held at the gate past the deadline")
            started = generating_since = time.monotonic()
        if fails:
            pause(error_latency)
            self._count("failed")
            raise BackendError(f"simulated {error_kind}", error_kind, backend=self.name, model=self.model,
                               tokens_in=tokens_in if error_kind != "rate_limited" else 0)
        if first_after is not None:
            generating_since = None  # nothing is generated before the first token
            pause(first_after)
            generating_since = time.monotonic()
            first_token_seconds = generating_since - entered
            if first_token is not None:
                first_token.set()
        pause(latency)
        if first_after is None:  # the first token comes with the whole answer
            first_token_seconds = time.monotonic() - entered
            if first_token is not None:
                first_token.set()
        self._count("completed")
        return Completion(text if text is not None else f"[{self.name}] answer", tokens_in, tokens_out,
                          quality_score=quality, model=self.model, cost=cost,
                          first_token_seconds=first_token_seconds)
