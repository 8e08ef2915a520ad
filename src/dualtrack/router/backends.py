"""Backends: the models a router calls, behind one small blocking interface.

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

Implementations:

- :class:`OpenAICompatibleBackend`: ``POST /v1/chat/completions`` on Ollama,
  the llama.cpp server, vLLM or a hosted OpenAI-compatible API, streaming or
  not; tokens from the ``usage`` fields (estimated, and flagged, when the
  server sends none).
- :class:`CallableBackend`: wraps a plain function, for an application that
  already has a client.
- :class:`FakeBackend`: a simulated model in real time (latency, errors,
  quality), for tests and the real-time demo; its parameters can be changed
  while it runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Sequence, Tuple, Union
from typing import runtime_checkable
from urllib.parse import urlunsplit

import requests
import urllib3

from .._urls import redact_url, split_base_url
from ..errors import DualTrackError
from ..exporter.query_classes import CHARS_PER_TOKEN

__all__ = [
    "KINDS",
    "TRACKS",
    "Backend",
    "BackendError",
    "CallableBackend",
    "Completion",
    "FakeBackend",
    "OpenAICompatibleBackend",
    "Prompt",
    "QualityScorer",
]

log = logging.getLogger(__name__)

TRACKS: Tuple[str, ...] = ("local", "api")

KINDS: Tuple[str, ...] = ("error", "timeout", "cancelled", "rate_limited", "unavailable")
"""Values of :attr:`BackendError.kind`."""

Prompt = Union[str, Sequence[Mapping[str, Any]]]
QualityScorer = Callable[[Prompt, str], Optional[float]]

#: The body of one answer is bounded: a runaway server cannot exhaust memory.
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_READ_CHUNK = 64 * 1024
#: Secrets shorter than this are not scrubbed (scrubbing "ab" would mangle messages).
_MIN_SCRUB_LEN = 4


# --------------------------------------------------------------------------- results and errors


@dataclass(frozen=True)
class Completion:
    """One answer. ``quality_score`` is 0..1 or ``None`` (unknown); ``cost``
    is dollars or ``None`` (the optimizer prices it from ``model``).
    ``usage_estimated`` is True when the token counts are estimates
    (characters / 4) because the server reported no usage."""

    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    quality_score: Optional[float] = None
    model: str = ""
    cost: Optional[float] = None
    usage_estimated: bool = False


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


# --------------------------------------------------------------------------- helpers


def estimate_tokens(text: str) -> int:
    """Tokens in ``text`` by the usual characters / 4 rule."""
    return int(math.ceil(len(text) / CHARS_PER_TOKEN)) if text else 0


def _prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    parts = []
    for message in prompt:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            parts.append(content)
    return "\n".join(parts)


def _messages(prompt: Prompt) -> List[Dict[str, Any]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, (list, tuple)) and all(isinstance(m, Mapping) for m in prompt):
        return [dict(m) for m in prompt]
    raise BackendError(f"prompt: expected a string or a list of chat messages, got {type(prompt).__name__}")


def _check_track(track: Any) -> str:
    if track not in TRACKS:
        raise ValueError(f"track: expected 'local' or 'api', got {track!r}")
    return track


def _check_seconds(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a finite number of seconds {bound}, got {value!r}")
    return float(value)


def _check_ratio(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a number within [0, 1], got {value!r}")
    return float(value)


def _short(text: str, limit: int = 200) -> str:
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _score(scorer: Optional[QualityScorer], prompt: Prompt, text: str, owner: str) -> Optional[float]:
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


def _check_header_value(name: str, value: Any) -> str:
    # requests rejects CR/LF with an error that quotes the value; a key must
    # never reach that message, so check first and never echo it.
    if not isinstance(value, str) or not value or value != value.strip() \
            or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError(f"{name}: empty, not a string, or contains whitespace at the ends or control characters")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{name}: contains characters an HTTP header cannot carry") from None
    return value


# --------------------------------------------------------------------------- OpenAI-compatible HTTP


class OpenAICompatibleBackend:
    """Chat completions over HTTP: Ollama, llama.cpp server, vLLM, hosted APIs.

    ::

        local = OpenAICompatibleBackend("http://127.0.0.1:11434", "llama3.1:8b", track="local")
        api = OpenAICompatibleBackend("https://api.openai.com/v1", "gpt-4o-mini", track="api",
                                      api_key_env="OPENAI_API_KEY", stream=True)

    ``base_url`` may end in ``/v1`` or not; requests go to
    ``.../v1/chat/completions``. The key (``api_key``, or read once from the
    environment variable named by ``api_key_env``) is sent as
    ``Authorization: Bearer``; it never appears in an error, a log line or
    ``repr``. ``headers`` are extra headers (their values are treated as
    secrets too); ``extra_body`` is merged into every request body
    (``temperature``, ``max_tokens``...). ``timeout`` is the default
    whole-answer deadline when ``generate`` is given none.

    Streaming (``stream=True``) reads server-sent events and asks for usage
    in the last chunk (``stream_options.include_usage``; set
    ``include_usage=False`` for a server that rejects the field). Without
    usage, tokens are estimated (characters / 4) and the completion says so
    (``usage_estimated``). ``cancel`` is checked between pieces of the answer
    (the connection is then closed, which stops generation on servers that
    watch for it); a non-streaming call can only notice it once the answer
    starts arriving, so prefer streaming where cancellation matters.

    Errors: HTTP 429 is ``rate_limited`` (with ``retry_after``), 5xx and
    connection failures ``unavailable``, no answer in time ``timeout``, any
    other failure ``error``.

    ``quality_scorer(prompt, text) -> float | None`` scores answers; without
    one, quality is unknown (``None``). ``session``: bring your own
    ``requests.Session`` (shared by all threads, not closed by ``close()``);
    otherwise each thread gets its own session.
    """

    def __init__(self, base_url: str, model: str, *, api_key: Optional[str] = None,
                 api_key_env: Optional[str] = None, track: str = "api", timeout: float = 60.0,
                 session: Optional[requests.Session] = None, stream: bool = False,
                 headers: Optional[Mapping[str, str]] = None, quality_scorer: Optional[QualityScorer] = None,
                 name: Optional[str] = None, extra_body: Optional[Mapping[str, Any]] = None,
                 include_usage: bool = True, connect_timeout: float = 5.0,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, verify: Union[bool, str] = True) -> None:
        self.url = self._endpoint(base_url)
        if not isinstance(model, str) or not model:
            raise ValueError(f"model: expected a non-empty model name, got {model!r}")
        self.model = model
        self.track = _check_track(track)
        self.name = name or f"{self.track}:{model}"
        self.timeout = _check_seconds("timeout", timeout)
        self.connect_timeout = _check_seconds("connect_timeout", connect_timeout)
        self.stream = bool(stream)
        self.include_usage = bool(include_usage)
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int) or max_response_bytes <= 0:
            raise ValueError(f"max_response_bytes: expected a positive integer, got {max_response_bytes!r}")
        self.max_response_bytes = max_response_bytes
        self.extra_body = dict(extra_body or {})
        for key in ("model", "messages", "stream"):
            if key in self.extra_body:
                raise ValueError(f"extra_body: {key!r} is set by the backend")
        if quality_scorer is not None and not callable(quality_scorer):
            raise ValueError("quality_scorer: expected a callable (prompt, text) -> float | None")
        self.quality_scorer = quality_scorer
        self._verify = verify

        if api_key is not None and api_key_env is not None:
            raise ValueError("api_key and api_key_env: give at most one")
        if api_key_env is not None:
            if not isinstance(api_key_env, str) or not api_key_env:
                raise ValueError("api_key_env: expected the name of an environment variable")
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise ValueError(f"api_key_env: the environment variable {api_key_env} is not set or empty")
        self._secrets: List[str] = []
        self._headers: Dict[str, str] = {"Content-Type": "application/json", "User-Agent": "dualtrack"}
        if api_key is not None:
            _check_header_value("api_key", api_key)
            self._headers["Authorization"] = "Bearer " + api_key
            self._secrets.append(api_key)
        for hname, value in (headers or {}).items():
            if not isinstance(hname, str) or not hname or any(ch in hname for ch in ":\r\n\0 "):
                raise ValueError(f"headers: invalid header name {hname!r}")
            _check_header_value(f"headers[{hname!r}]", value)
            if hname.lower() == "authorization" and api_key is not None:
                raise ValueError("headers: an Authorization header conflicts with api_key")
            self._headers[hname] = value
            self._secrets.append(value)
        self._auth = "bearer" if api_key is not None else "none"

        self._session = session
        self._local = threading.local()
        self._own_sessions: List[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self._warned_estimate = False

    @staticmethod
    def _endpoint(base_url: Any) -> str:
        parts = split_base_url(base_url)
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"base_url: must not carry credentials (use api_key): {redact_url(base_url)}")
        path = parts.path.rstrip("/")
        if path.endswith("/chat/completions"):
            path = path[: -len("/chat/completions")]
        if not path.endswith("/v1"):
            path += "/v1"
        return urlunsplit((parts.scheme, parts.netloc, path + "/chat/completions", "", ""))

    def __repr__(self) -> str:
        return (f"OpenAICompatibleBackend(name={self.name!r}, url={self.url!r}, model={self.model!r}, "
                f"track={self.track!r}, stream={self.stream}, auth={self._auth})")

    def close(self) -> None:
        """Close the sessions this backend opened (not one passed in)."""
        with self._sessions_lock:
            sessions, self._own_sessions = self._own_sessions, []
        for session in sessions:
            session.close()

    def __enter__(self) -> "OpenAICompatibleBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------

    def _scrub(self, message: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if len(secret) >= _MIN_SCRUB_LEN:
                message = message.replace(secret, "<redacted>")
        return message

    def _error(self, message: str, kind: str, **fields: Any) -> BackendError:
        return BackendError(self._scrub(f"{self.url}: {message}"), kind, backend=self.name, model=self.model, **fields)

    def _session_for_thread(self) -> requests.Session:
        # requests does not promise that one Session is safe across threads;
        # one per thread keeps keep-alive connections without that question.
        if self._session is not None:
            return self._session
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
            with self._sessions_lock:
                self._own_sessions.append(session)
        return session

    def generate(self, prompt: Prompt, *, timeout: Optional[float] = None,
                 cancel: Optional[threading.Event] = None) -> Completion:
        budget = self.timeout if timeout is None else float(timeout)
        started = time.monotonic()
        deadline = started + budget
        cancel = cancel if cancel is not None else threading.Event()
        messages = _messages(prompt)
        tokens_in_estimate = estimate_tokens(_prompt_text(prompt))
        if cancel.is_set():
            raise self._error("cancelled before the request was sent", "cancelled")
        if budget <= 0:
            raise self._error("no time left to send the request", "timeout")
        body: Dict[str, Any] = dict(self.extra_body)
        body.update(model=self.model, messages=messages, stream=self.stream)
        if self.stream and self.include_usage:
            body.setdefault("stream_options", {"include_usage": True})
        headers = dict(self._headers)
        if self.stream:
            headers["Accept"] = "text/event-stream"

        try:
            resp = self._session_for_thread().post(
                self.url, data=json.dumps(body).encode(), headers=headers, stream=True, verify=self._verify,
                timeout=(min(self.connect_timeout, budget), budget))
        except requests.exceptions.ConnectTimeout as err:
            raise self._error(f"connect timed out after {min(self.connect_timeout, budget):.2f} s",
                              "unavailable", tokens_in=0) from err
        except requests.exceptions.Timeout as err:
            raise self._error(f"no answer within {budget:.2f} s", "timeout", tokens_in=tokens_in_estimate) from err
        except requests.exceptions.ConnectionError as err:
            raise self._error(f"cannot connect: {_connection_reason(err)}", "unavailable") from err
        except requests.exceptions.RequestException as err:
            raise self._error(f"request failed: {type(err).__name__}", "unavailable") from err

        with resp:
            if resp.status_code != 200:
                raise self._http_error(resp, deadline)
            reader = _BodyReader(resp, deadline, cancel, self.max_response_bytes, self._error, budget)
            # Once the server has the request, the prompt counts as processed.
            reader.on_stop = lambda: {"tokens_in": tokens_in_estimate}
            if self.stream:
                text, usage = self._read_stream(reader, tokens_in_estimate)
            else:
                text, usage = self._read_whole(reader)
        estimated = usage is None
        if usage is None:
            usage = (tokens_in_estimate, estimate_tokens(text))
            if not self._warned_estimate:
                self._warned_estimate = True
                log.warning("%s: the server reported no token usage; estimating tokens as characters / 4",
                            self.name)
        quality = _score(self.quality_scorer, prompt, text, self.name)
        return Completion(text=text, tokens_in=usage[0], tokens_out=usage[1], quality_score=quality,
                          model=self.model, cost=None, usage_estimated=estimated)

    def _http_error(self, resp: requests.Response, deadline: float) -> BackendError:
        status = resp.status_code
        try:
            raw = b""
            for piece in _body_pieces(resp):
                raw += piece
                if len(raw) > 4096 or time.monotonic() > deadline:
                    break
        except Exception:  # the error body is a courtesy; the status says enough
            raw = b""
        detail = _error_detail(raw)
        suffix = f": {detail}" if detail else ""
        if status == 429:
            return self._error(f"HTTP 429 rate limited{suffix}", "rate_limited", status=status,
                               retry_after=_retry_after(resp.headers.get("Retry-After")))
        if status >= 500:
            return self._error(f"HTTP {status}{suffix}", "unavailable", status=status)
        if status in (401, 403):
            return self._error(f"HTTP {status}: the server refused the credentials (auth={self._auth}){suffix}",
                               "error", status=status)
        if status == 404:
            return self._error(f"HTTP 404: is the base URL right, and does the server know model "
                               f"{self.model!r}?{suffix}", "error", status=status)
        return self._error(f"HTTP {status}{suffix}", "error", status=status)

    def _read_whole(self, reader: "_BodyReader") -> Tuple[str, Optional[Tuple[int, int]]]:
        raw = b"".join(reader.pieces())
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as err:
            raise self._error(f"the answer is not JSON: {_short(raw[:200].decode('utf-8', 'replace'))!r}",
                              "error") from err
        if isinstance(body, dict) and "error" in body:
            raise self._error(f"the server answered with an error: {_error_detail(raw)}", "error")
        try:
            content = body["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            raise self._error("the answer has no choices[0].message", "error") from err
        text = content if isinstance(content, str) else ""
        return text, _usage(body.get("usage"))

    def _read_stream(self, reader: "_BodyReader", tokens_in_estimate: int) -> Tuple[str, Optional[Tuple[int, int]]]:
        parts: List[str] = []
        usage: Optional[Tuple[int, int]] = None
        chars = 0

        def partial() -> Dict[str, Any]:
            # What the call cost so far, for a cancelled or timed-out stream.
            got = usage or (tokens_in_estimate, int(math.ceil(chars / CHARS_PER_TOKEN)))
            return {"tokens_in": got[0], "tokens_out": got[1]}

        reader.on_stop = partial
        for data in _sse_data(reader.pieces()):
            if data.strip() == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except (ValueError, RecursionError) as err:
                raise self._error(f"a stream event is not JSON: {_short(data[:200])!r}", "error") from err
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:
                raise self._error(f"the server sent an error mid-stream: {_error_detail(data.encode())}",
                                  "error", **partial())
            usage = _usage(chunk.get("usage")) or usage
            choices = chunk.get("choices")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict):
                delta = choices[0].get("delta")
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    parts.append(content)
                    chars += len(content)
        return "".join(parts), usage


class _BodyReader:
    """Reads an answer piece by piece, within a whole-answer deadline, and
    stops (closing the connection) once ``cancel`` is set."""

    def __init__(self, resp: requests.Response, deadline: float, cancel: threading.Event, limit: int,
                 error: Callable[..., BackendError], budget: float) -> None:
        self.resp = resp
        self.deadline = deadline
        self.cancel = cancel
        self.limit = limit
        self.error = error
        self.budget = budget
        self.on_stop: Callable[[], Dict[str, Any]] = dict
        # requests' read timeout bounds each socket read, not the answer: a
        # server trickling tokens could hold us far past the deadline. So
        # before every read the socket's timeout is cut to the time left.
        conn = getattr(resp.raw, "connection", None)
        self._sock = getattr(conn, "sock", None)

    def pieces(self) -> Iterator[bytes]:
        size = 0
        try:
            for piece in _body_pieces(self.resp, before_read=self._before_read):
                size += len(piece)
                if size > self.limit:
                    raise self.error(f"answer over max_response_bytes={self.limit}; stopped reading", "error",
                                     **self.on_stop())
                yield piece
                self._check()
        except BackendError:
            self.resp.close()
            raise
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as err:
            self.resp.close()
            raise self.error(f"answer not complete within {self.budget:.2f} s", "timeout", **self.on_stop()) from err
        except requests.exceptions.ConnectionError as err:
            self.resp.close()
            if "timed out" in str(err).lower():
                raise self.error(f"answer not complete within {self.budget:.2f} s", "timeout",
                                 **self.on_stop()) from err
            raise self.error("connection broke mid-answer", "unavailable", **self.on_stop()) from err
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as err:
            self.resp.close()
            raise self.error(f"connection broke mid-answer ({type(err).__name__})", "unavailable",
                             **self.on_stop()) from err

    def _check(self) -> None:
        if self.cancel.is_set():
            raise self.error("cancelled; stopped reading", "cancelled", **self.on_stop())
        if time.monotonic() > self.deadline:
            raise self.error(f"answer not complete within {self.budget:.2f} s", "timeout", **self.on_stop())

    def _before_read(self) -> None:
        self._check()
        if self._sock is not None and getattr(self.resp.raw, "connection", None) is None:
            self._sock = None  # the answer is complete and the connection back in the pool
        if self._sock is not None:
            try:
                self._sock.settimeout(max(self.deadline - time.monotonic(), 0.001))
            except OSError:
                self._sock = None


def _body_pieces(resp: requests.Response, before_read: Callable[[], None] = lambda: None) -> Iterator[bytes]:
    """The decoded body, each piece as soon as it arrives (urllib3 2's
    ``read1``; ``iter_content`` would wait to fill a whole chunk)."""
    raw = resp.raw
    read1 = getattr(raw, "read1", None)
    if read1 is None:  # urllib3 1.x
        for piece in resp.iter_content(_READ_CHUNK):
            yield piece
            before_read()
        return
    while True:
        before_read()
        piece = read1(_READ_CHUNK, decode_content=True)
        if not piece:
            return
        yield piece


def _sse_data(pieces: Iterator[bytes]) -> Iterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined by newlines)."""
    buffer = b""
    data: List[str] = []
    for piece in pieces:
        buffer += piece
        while True:
            cut = buffer.find(b"\n")
            if cut < 0:
                break
            line = buffer[:cut].rstrip(b"\r").decode("utf-8", "replace")
            buffer = buffer[cut + 1:]
            if not line:
                if data:
                    yield "\n".join(data)
                    data = []
            elif line.startswith("data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(" ") else value)
            # comments (":...") and other fields (event:, id:, retry:) are ignored
    tail = buffer.rstrip(b"\r").decode("utf-8", "replace")
    if tail.startswith("data:"):
        data.append(tail[5:].lstrip(" "))
    if data:
        yield "\n".join(data)


def _usage(usage: Any) -> Optional[Tuple[int, int]]:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int) and not isinstance(prompt, bool) \
            and not isinstance(completion, bool) and prompt >= 0 and completion >= 0:
        return prompt, completion
    return None


def _error_detail(raw: bytes) -> str:
    """A short message from an OpenAI-style error body (or the raw text)."""
    if not raw:
        return ""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return _short(raw[:200].decode("utf-8", "replace"))
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            message = error.get("message")
            if isinstance(message, str):
                return _short(message)
        elif isinstance(error, str):
            return _short(error)
    return _short(raw[:200].decode("utf-8", "replace"))


def _retry_after(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare for APIs; not worth a parser here
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _connection_reason(err: BaseException) -> str:
    """A short, secret-free reason for a connection failure."""
    lowered = str(err).lower()
    if "refused" in lowered:
        return "connection refused"
    if any(s in lowered for s in ("name or service not known", "nodename nor servname", "name resolution",
                                  "getaddrinfo failed", "no address associated")):
        return "DNS lookup failed"
    if any(s in lowered for s in ("reset", "aborted", "remotedisconnected", "broken pipe")):
        return "connection reset"
    return type(err).__name__


# --------------------------------------------------------------------------- a plain function


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
    """

    def __init__(self, fn: Callable[..., Any], track: str, model: str, *, name: Optional[str] = None,
                 quality_scorer: Optional[QualityScorer] = None) -> None:
        if not callable(fn):
            raise ValueError(f"fn: expected a callable, got {fn!r}")
        self.fn = fn
        self.track = _check_track(track)
        if not isinstance(model, str) or not model:
            raise ValueError(f"model: expected a non-empty model name, got {model!r}")
        self.model = model
        self.name = name or f"{self.track}:{model}"
        self.quality_scorer = quality_scorer
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):  # builtins without a signature
            params = {}  # type: ignore[assignment]
        varkw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._pass = tuple(k for k in ("timeout", "cancel") if varkw or k in params)

    def __repr__(self) -> str:
        return f"CallableBackend(name={self.name!r}, track={self.track!r}, model={self.model!r})"

    def generate(self, prompt: Prompt, *, timeout: float, cancel: threading.Event) -> Completion:
        if cancel.is_set():
            raise BackendError("cancelled before the call", "cancelled", backend=self.name, model=self.model)
        kwargs = {"timeout": timeout, "cancel": cancel}
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
            completion = Completion(value, estimate_tokens(_prompt_text(prompt)), estimate_tokens(value),
                                    model=self.model, usage_estimated=True)
        elif isinstance(value, Mapping) and isinstance(value.get("text"), str):
            text = value["text"]
            estimated = "tokens_in" not in value or "tokens_out" not in value
            completion = Completion(
                text,
                int(value.get("tokens_in", estimate_tokens(_prompt_text(prompt)))),
                int(value.get("tokens_out", estimate_tokens(text))),
                quality_score=value.get("quality_score"), model=str(value.get("model") or self.model),
                cost=value.get("cost"), usage_estimated=estimated)
        else:
            raise BackendError(f"the function returned {type(value).__name__}; expected str, Completion or "
                               "a mapping with 'text'", "error", backend=self.name, model=self.model)
        if completion.quality_score is None and self.quality_scorer is not None:
            completion = _replace(completion, quality_score=_score(self.quality_scorer, prompt, completion.text,
                                                                    self.name))
        if not completion.model:
            completion = _replace(completion, model=self.model)
        return completion


def _replace(completion: Completion, **changes: Any) -> Completion:
    return dataclasses.replace(completion, **changes)


# --------------------------------------------------------------------------- a simulated model in real time


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

    Parameters can be changed at any time with :meth:`set`; calls already
    running keep the values they started with. ``calls``, ``completed``,
    ``cancelled`` and ``failed`` count what happened.
    """

    _PARAMS = ("latency", "jitter", "error_rate", "error_kind", "error_latency", "quality", "quality_jitter",
               "tokens_out", "cost", "text", "gate")

    def __init__(self, track: str = "local", *, name: Optional[str] = None, model: Optional[str] = None,
                 latency: float = 0.0, jitter: float = 0.0, error_rate: float = 0.0, error_kind: str = "error",
                 error_latency: float = 0.0, quality: Optional[float] = 0.8, quality_jitter: float = 0.0,
                 tokens_out: int = 64, cost: Optional[float] = None, text: Optional[str] = None,
                 gate: Optional[threading.Event] = None, rng: Optional[random.Random] = None) -> None:
        self.track = _check_track(track)
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
        self.set(latency=latency, jitter=jitter, error_rate=error_rate, error_kind=error_kind,
                 error_latency=error_latency, quality=quality, quality_jitter=quality_jitter,
                 tokens_out=tokens_out, cost=cost, text=text, gate=gate)

    def set(self, **changes: Any) -> None:
        """Change parameters (validated, all or none); running calls are unaffected."""
        unknown = sorted(set(changes) - set(self._PARAMS))
        if unknown:
            raise ValueError(f"{unknown[0]}: not a FakeBackend parameter; expected one of {list(self._PARAMS)}")
        checked: Dict[str, Any] = {}
        for key, value in changes.items():
            if key in ("latency", "error_latency"):
                value = _check_seconds(key, value, allow_zero=True)
            elif key in ("jitter", "error_rate", "quality_jitter"):
                value = _check_ratio(key, value)
            elif key == "quality":
                value = None if value is None else _check_ratio(key, value)
            elif key == "error_kind":
                if value not in KINDS or value == "cancelled":
                    raise ValueError(f"error_kind: expected one of error, timeout, rate_limited, unavailable, "
                                     f"got {value!r}")
            elif key == "tokens_out":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"tokens_out: expected an integer >= 0, got {value!r}")
            elif key == "cost":
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                          or not math.isfinite(value) or value < 0):
                    raise ValueError(f"cost: expected dollars >= 0 or None, got {value!r}")
            elif key == "text":
                if value is not None and not isinstance(value, str):
                    raise ValueError(f"text: expected a string or None, got {value!r}")
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

    def generate(self, prompt: Prompt, *, timeout: float, cancel: threading.Event) -> Completion:
        started = time.monotonic()
        deadline = started + max(float(timeout), 0.0)
        with self._lock:
            self.calls += 1
            latency = self.latency * (1.0 + self.jitter * (2.0 * self._rng.random() - 1.0))
            fails = self._rng.random() < self.error_rate
            quality = self.quality
            if quality is not None and self.quality_jitter:
                quality = min(1.0, max(0.0, quality + self.quality_jitter * (2.0 * self._rng.random() - 1.0)))
            p = (self.error_kind, self.error_latency, self.tokens_out, self.cost, self.text, self.gate)
        error_kind, error_latency, tokens_out, cost, text, gate = p
        tokens_in = estimate_tokens(_prompt_text(prompt))

        def stop(kind: str, message: str) -> BackendError:
            # Tokens produced so far, in proportion to the time spent generating.
            done = min(1.0, (time.monotonic() - started) / latency) if latency > 0 else 0.0
            self._count("cancelled" if kind == "cancelled" else "failed")
            return BackendError(message, kind, backend=self.name, model=self.model, tokens_in=tokens_in,
                                tokens_out=int(tokens_out * done), cost=None if cost is None else cost * done)

        if gate is not None:
            # Wait for the gate, the cancel or the deadline, whichever first.
            while not gate.wait(0.005):
                if cancel.is_set():
                    raise stop("cancelled", "cancelled while held at the gate")
                if time.monotonic() >= deadline:
                    raise stop("timeout", "held at the gate past the deadline")
            started = time.monotonic()
        wait = error_latency if fails else latency
        remaining = deadline - time.monotonic()
        if cancel.wait(min(wait, max(remaining, 0.0))):
            raise stop("cancelled", "cancelled")
        if wait > remaining:
            raise stop("timeout", f"no answer within {timeout:.3f} s")
        if fails:
            self._count("failed")
            raise BackendError(f"simulated {error_kind}", error_kind, backend=self.name, model=self.model,
                               tokens_in=tokens_in if error_kind != "rate_limited" else 0)
        self._count("completed")
        return Completion(text if text is not None else f"[{self.name}] answer", tokens_in, tokens_out,
                          quality_score=quality, model=self.model, cost=cost)
