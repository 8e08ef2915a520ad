"""The OpenAI-compatible HTTP backend: ``POST /v1/chat/completions``, streaming or not.

:class:`OpenAICompatibleBackend` talks to Ollama, the llama.cpp server,
vLLM or a hosted OpenAI-compatible API, and reads server-sent events when
it streams. Tokens come from the ``usage`` fields (estimated, and flagged,
when the server sends none). The answer is read with the bounded reader
of :mod:`dualtrack._http`, which the PromQL client uses too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union
from urllib.parse import urlunsplit

import requests

from .. import _validate
from .._http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    BodyReader,
    body_pieces,
    check_header_value,
    checked_headers,
    connection_reason,
    scrub,
    short,
)
from .._urls import redact_url, split_base_url
from ..exporter.query_classes import CHARS_PER_TOKEN
from .backend import (
    BackendError,
    Completion,
    Prompt,
    QualityScorer,
    chat_messages,
    check_model,
    check_track,
    estimate_tokens,
    prompt_text,
    score_quality,
)

__all__ = ["OpenAICompatibleBackend"]

log = logging.getLogger(__name__)

# How a failed read of the answer (see dualtrack._http.Fail) shows as a BackendError kind.
_READ_FAILURE_KINDS: Dict[str, str] = {
    "too_big": "error",
    "timeout": "timeout",
    "cancelled": "cancelled",
    "broken": "unavailable",
    "undecodable": "error",
}


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
        self.model = check_model(model)
        self.track = check_track(track)
        self.name = name or f"{self.track}:{model}"
        self.timeout = _validate.number("timeout", timeout, lower=0, lower_open=True)
        self.connect_timeout = _validate.number("connect_timeout", connect_timeout, lower=0, lower_open=True)
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
            check_header_value("api_key", api_key)
            self._headers["Authorization"] = "Bearer " + api_key
            self._secrets.append(api_key)
        extra = checked_headers(headers, authorization_set_by=None if api_key is None else "api_key")
        self._headers.update(extra)
        self._secrets += extra.values()
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

    def _error(self, message: str, kind: str, **fields: Any) -> BackendError:
        return BackendError(scrub(f"{self.url}: {message}", self._secrets), kind, backend=self.name,
                            model=self.model, **fields)

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

    @property
    def reports_first_token(self) -> bool:
        """A streaming backend sees its first token arrive; a non-streaming one only the whole answer."""
        return self.stream

    def generate(self, prompt: Prompt, *, timeout: Optional[float] = None,
                 cancel: Optional[threading.Event] = None,
                 first_token: Optional[threading.Event] = None) -> Completion:
        budget = self.timeout if timeout is None else float(timeout)
        started = time.monotonic()
        deadline = started + budget
        cancel = cancel if cancel is not None else threading.Event()
        messages = chat_messages(prompt)
        tokens_in_estimate = estimate_tokens(prompt_text(prompt))
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
            raise self._error(f"cannot connect: {connection_reason(err, name_timeouts=False)}", "unavailable") from err
        except requests.exceptions.RequestException as err:
            raise self._error(f"request failed: {type(err).__name__}", "unavailable") from err

        with resp:
            if resp.status_code != 200:
                raise self._http_error(resp, deadline)
            failure = _ReadFailure(self._error, tokens_in_estimate)
            reader = BodyReader(resp, failure, limit=self.max_response_bytes, deadline=deadline, budget=budget,
                                cancel=cancel, guard_each_read=True, report_undecodable=False)
            first_token_at: List[float] = []  # set by _read_stream at the first piece of the answer
            if self.stream:
                text, usage = self._read_stream(reader, failure, tokens_in_estimate, first_token, first_token_at)
            else:
                text, usage = self._read_whole(reader)
        estimated = usage is None
        if usage is None:
            usage = (tokens_in_estimate, estimate_tokens(text))
            if not self._warned_estimate:
                self._warned_estimate = True
                log.warning("%s: the server reported no token usage; estimating tokens as characters / 4",
                            self.name)
        quality = score_quality(self.quality_scorer, prompt, text, self.name)
        return Completion(text=text, tokens_in=usage[0], tokens_out=usage[1], quality_score=quality,
                          model=self.model, cost=None, usage_estimated=estimated,
                          first_token_seconds=first_token_at[0] - started if first_token_at else None)

    def _http_error(self, resp: requests.Response, deadline: float) -> BackendError:
        status = resp.status_code
        try:
            raw = b""
            for piece in body_pieces(resp):
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

    def _read_whole(self, reader: BodyReader) -> Tuple[str, Optional[Tuple[int, int]]]:
        raw = reader.read()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as err:
            raise self._error(f"the answer is not JSON: {short(raw[:200].decode('utf-8', 'replace'))!r}",
                              "error") from err
        if isinstance(body, dict) and "error" in body:
            raise self._error(f"the server answered with an error: {_error_detail(raw)}", "error")
        try:
            content = body["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            raise self._error("the answer has no choices[0].message", "error") from err
        text = content if isinstance(content, str) else ""
        return text, _usage(body.get("usage"))

    def _read_stream(self, reader: BodyReader, failure: _ReadFailure, tokens_in_estimate: int,
                     first_token: Optional[threading.Event] = None,
                     first_token_at: Optional[List[float]] = None) -> Tuple[str, Optional[Tuple[int, int]]]:
        parts: List[str] = []
        usage: Optional[Tuple[int, int]] = None
        chars = 0

        def partial() -> Dict[str, Any]:
            # What the call cost so far, for a cancelled or timed-out stream.
            got = usage or (tokens_in_estimate, int(math.ceil(chars / CHARS_PER_TOKEN)))
            return {"tokens_in": got[0], "tokens_out": got[1]}

        failure.spent = partial
        for data in _sse_data(reader.pieces()):
            if data.strip() == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except (ValueError, RecursionError) as err:
                raise self._error(f"a stream event is not JSON: {short(data[:200])!r}", "error") from err
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
                    if not parts:  # the first token: the moment a hedge or deadline waits for
                        if first_token_at is not None:
                            first_token_at.append(time.monotonic())
                        if first_token is not None:
                            first_token.set()
                    parts.append(content)
                    chars += len(content)
        return "".join(parts), usage


class _ReadFailure:
    """Turns a failed read of the answer into a :class:`BackendError` carrying
    what the call had cost when it stopped (``spent``)."""

    def __init__(self, error: Callable[..., BackendError], tokens_in: int) -> None:
        self._error = error
        # Once the server has the request, the prompt counts as processed.
        self.spent: Callable[[], Dict[str, Any]] = lambda: {"tokens_in": tokens_in}

    def __call__(self, kind: str, message: str) -> BackendError:
        return self._error(message, _READ_FAILURE_KINDS[kind], **self.spent())


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
        return short(raw[:200].decode("utf-8", "replace"))
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            message = error.get("message")
            if isinstance(message, str):
                return short(message)
        elif isinstance(error, str):
            return short(error)
    return short(raw[:200].decode("utf-8", "replace"))


def _retry_after(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare for APIs; not worth a parser here
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


