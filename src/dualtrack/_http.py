"""What dualtrack's two HTTP clients share: bounded reads, header checks, secret-free messages.

The adapter's PromQL client (``dualtrack.adapter.promql``) and the router's
OpenAI-compatible model backend (``dualtrack.router.openai_backend``) both
talk to servers they do not control, with credentials they must never echo.
They use one implementation of each of these:

- :class:`BodyReader`: an answer read piece by piece within a byte limit and
  a whole-answer deadline (and, optionally, a cancel event), its failures
  handed to the client to turn into its own exception;
- :func:`body_pieces`: the decoded body, each piece as soon as it arrives;
- :func:`check_header_value` and :func:`checked_headers`: header values that
  are secrets are refused without being quoted;
- :func:`scrub`, :func:`short` and :func:`connection_reason`: messages that
  are bounded, printable and free of secrets;
- :class:`TokenFile`: a bearer token file, re-read when the secret rotates
  (the PromQL client's ``bearer_token_file``).

Base URLs are parsed and redacted by :mod:`dualtrack._urls`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Tuple, Union

import requests
import urllib3

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "MIN_SCRUB_LEN",
    "READ_CHUNK",
    "BodyReader",
    "TokenFile",
    "body_pieces",
    "check_header_value",
    "checked_headers",
    "connection_reason",
    "scrub",
    "short",
]

#: The body of one answer is bounded: a runaway server cannot exhaust memory.
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
READ_CHUNK = 64 * 1024
#: Secrets shorter than this are not scrubbed from messages (scrubbing "ab"
#: would mangle every message); messages never include credentials anyway,
#: the scrub only guards against a server echoing them back.
MIN_SCRUB_LEN = 4

log = logging.getLogger(__name__)

_DECODE_ERRORS = (requests.exceptions.ContentDecodingError, urllib3.exceptions.DecodeError)
_TRANSPORT_ERRORS = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)


# --------------------------------------------------------------------------- messages


def short(text: str, limit: int = 200) -> str:
    """``text`` printable and at most ``limit`` characters (cut with an ellipsis)."""
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def scrub(message: str, secrets: Iterable[str]) -> str:
    """``message`` with every secret of at least :data:`MIN_SCRUB_LEN` characters replaced by ``<redacted>``."""
    # Longest first: a secret that contains another is replaced whole.
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SCRUB_LEN:
            message = message.replace(secret, "<redacted>")
    return message


def connection_reason(err: BaseException, *, name_timeouts: bool = True) -> str:
    """A short, secret-free reason for a connection failure.

    ``name_timeouts``: a failure whose text says "timed out" reads
    ``timed out``; otherwise (the model backend) it reads as the
    exception's type name, like any other unrecognized failure.
    """
    lowered = str(err).lower()
    if "refused" in lowered:
        return "connection refused"
    if any(s in lowered for s in ("name or service not known", "nodename nor servname", "name resolution",
                                  "getaddrinfo failed", "no address associated")):
        return "DNS lookup failed"
    if any(s in lowered for s in ("reset", "aborted", "remotedisconnected", "broken pipe")):
        return "connection reset"
    if name_timeouts and "timed out" in lowered:
        return "timed out"
    return type(err).__name__


# --------------------------------------------------------------------------- headers


def check_header_value(name: str, value: Any) -> str:
    """``value`` if an HTTP header can carry it, else ``ValueError`` naming ``name`` (never quoting the value)."""
    # requests rejects CR/LF/NUL with an InvalidHeader error that quotes the
    # value; a token must never reach that message, so check first.
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string")
    if not value or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value) or value != value.strip():
        raise ValueError(f"{name}: empty, or contains whitespace at the ends or control characters")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{name}: contains characters an HTTP header cannot carry") from None
    return value


def checked_headers(headers: Optional[Mapping[str, str]], *,
                    authorization_set_by: Optional[str] = None) -> Dict[str, str]:
    """The extra headers a user gave, checked; their values are to be treated as secrets.

    ``authorization_set_by`` names what already sets ``Authorization``
    (``"api_key"``); an ``Authorization`` header then conflicts with it.
    """
    checked: Dict[str, str] = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not name or any(ch in name for ch in ":\r\n\0 "):
            raise ValueError(f"headers: invalid header name {name!r}")
        check_header_value(f"headers[{name!r}]", value)
        if name.lower() == "authorization" and authorization_set_by is not None:
            raise ValueError(f"headers: an Authorization header conflicts with {authorization_set_by}")
        checked[name] = value
    return checked


# --------------------------------------------------------------------------- reading an answer


def body_pieces(resp: requests.Response, before_read: Optional[Callable[[], None]] = None) -> Iterator[bytes]:
    """The decoded body, piece by piece, each piece as soon as it arrives.

    urllib3 2's ``read1`` returns whatever has arrived (so the caller can
    check its deadline between pieces); ``iter_content`` blocks until a whole
    chunk is filled. urllib3 returns the connection to the pool once the
    body has been read to its end (tests/test_promql.py checks the reuse).
    ``before_read`` runs before each read (after each piece on urllib3 1.x).
    """
    raw = resp.raw
    read1 = getattr(raw, "read1", None)
    if read1 is None:  # urllib3 1.x
        for piece in resp.iter_content(READ_CHUNK):
            yield piece
            if before_read is not None:
                before_read()
        return
    while True:
        if before_read is not None:
            before_read()
        piece = read1(READ_CHUNK, decode_content=True)
        if not piece:
            return
        yield piece


#: ``fail(kind, message)`` gives the client's exception for a failed read.
#: ``kind``: ``too_big``, ``timeout``, ``cancelled``, ``broken`` (the
#: connection broke mid-answer) or ``undecodable`` (could not be decompressed).
Fail = Callable[[str, str], Exception]


class BodyReader:
    """Reads an answer within a byte limit and a whole-answer deadline.

    ::

        reader = BodyReader(resp, fail, limit=max_bytes, deadline=started + budget, budget=budget)
        raw = reader.read()                  # or: for piece in reader.pieces(): ...

    ``deadline`` is in ``clock()`` seconds (``time.monotonic`` by default);
    ``budget`` is only shown in the timeout message. Each failure is raised
    as ``fail(kind, message)`` (see :data:`Fail`; the exception must not be
    an ``OSError``), with the response closed.

    requests' read timeout bounds each socket read, not the answer: a server
    trickling bytes could hold the client forever. So the deadline is
    checked as each piece arrives, and ``cancel`` (when given) too. With
    ``guard_each_read`` both are also checked before every read, and the
    socket's timeout is cut to the time left, so one slow read cannot
    outlast the deadline (this needs the real monotonic clock).
    ``report_undecodable=False`` counts an answer that cannot be
    decompressed as a broken connection.
    """

    def __init__(self, resp: requests.Response, fail: Fail, *, limit: int, deadline: float, budget: float,
                 clock: Optional[Callable[[], float]] = None, cancel: Optional[threading.Event] = None,
                 guard_each_read: bool = False, report_undecodable: bool = True) -> None:
        self.resp = resp
        self.fail = fail
        self.limit = limit
        self.deadline = deadline
        self.budget = budget
        self.cancel = cancel
        self._clock = clock
        self._guard = guard_each_read
        self._report_undecodable = report_undecodable
        self._sock: Any = None
        if guard_each_read:
            conn = getattr(resp.raw, "connection", None)
            self._sock = getattr(conn, "sock", None)

    def check_declared_length(self) -> None:
        """Refuse at once an answer whose ``Content-Length`` is over the limit."""
        declared = self.resp.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            raise self._stop("too_big", f"answer of {int(declared)} bytes is over max_response_bytes={self.limit}")

    def read(self) -> bytes:
        """The whole body."""
        return b"".join(self.pieces())

    def pieces(self) -> Iterator[bytes]:
        """The body, piece by piece as it arrives."""
        size = 0
        try:
            for piece in body_pieces(self.resp, self._before_read if self._guard else None):
                size += len(piece)
                if size > self.limit:
                    raise self._stop("too_big", f"answer over max_response_bytes={self.limit}; stopped reading")
                yield piece
                self._check()
        except _TRANSPORT_ERRORS as err:
            self.resp.close()
            raise self.fail(*self._classify(err)) from err

    def _classify(self, err: BaseException) -> Tuple[str, str]:
        if self._report_undecodable and isinstance(err, _DECODE_ERRORS):
            return "undecodable", "answer could not be decompressed"
        if isinstance(err, (urllib3.exceptions.ReadTimeoutError, TimeoutError)):
            return "timeout", self._late()
        if isinstance(err, requests.exceptions.ConnectionError):
            # iter_content reports a read timeout as a ConnectionError.
            if "timed out" in str(err).lower():
                return "timeout", self._late()
            return "broken", "connection broke mid-answer"
        # ChunkedEncodingError, IncompleteRead, resets: broke mid-answer.
        return "broken", f"connection broke mid-answer ({type(err).__name__})"

    def _late(self) -> str:
        return f"answer not complete within {self.budget:.2f} s"

    def _now(self) -> float:
        return self._clock() if self._clock is not None else time.monotonic()

    def _stop(self, kind: str, message: str) -> Exception:
        self.resp.close()
        return self.fail(kind, message)

    def _check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise self._stop("cancelled", "cancelled; stopped reading")
        if self._now() > self.deadline:
            raise self._stop("timeout", self._late())

    def _before_read(self) -> None:
        self._check()
        if self._sock is not None and getattr(self.resp.raw, "connection", None) is None:
            self._sock = None  # the answer is complete and the connection back in the pool
        if self._sock is not None:
            try:
                self._sock.settimeout(max(self.deadline - time.monotonic(), 0.001))
            except OSError:
                self._sock = None


# --------------------------------------------------------------------------- credentials


class TokenFile:
    """A bearer token file, re-read when it changes (rotated secrets).

    The file's (mtime, inode, size) is checked on each use: a Kubernetes
    secret swaps a symlink, which changes the inode even when mtimes tie.
    If a later read fails or yields garbage, the last good token is kept.
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._signature: Optional[Tuple[int, int, int]] = None
        self.token = ""
        try:
            self._load()
        except (OSError, ValueError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise ValueError(f"bearer_token_file {self.path}: {reason}") from None

    def _load(self) -> None:
        st = os.stat(self.path)
        with open(self.path, encoding="utf-8") as fh:
            token = fh.read().strip()
        check_header_value("token", token)
        self.token = token
        self._signature = (st.st_mtime_ns, st.st_ino, st.st_size)

    def get(self) -> str:
        with self._lock:
            try:
                st = os.stat(self.path)
                if (st.st_mtime_ns, st.st_ino, st.st_size) != self._signature:
                    self._load()
            except (OSError, ValueError, UnicodeDecodeError) as err:
                log.warning("bearer_token_file %s: cannot re-read (%s); keeping the last good token",
                            self.path, type(err).__name__)
            return self.token
