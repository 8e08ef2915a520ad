"""PromQL over the Prometheus HTTP API: the adapter's metric provider.

Works with Prometheus and the engines that speak its API (VictoriaMetrics,
Thanos, Mimir), behind a path prefix or not::

    from dualtrack.adapter.promql import PromQLClient, escape_label_value

    with PromQLClient("http://prometheus:9090", timeout=3.0,
                      bearer_token_file="/var/run/secrets/token") as client:
        path = escape_label_value("local")
        result = client.instant(
            f'max(dualtrack:latency_p95_seconds{{path="{path}"}})',
            deadline=cycle_deadline,          # the adapter's budget (monotonic s)
        )
        values = [s.value for s in result.finite]   # NaN/Inf mean "no data"
        if not values:
            ...                                      # no data: not an error here

What can go wrong is told apart, as the adapter handles each differently
(``dualtrack.errors``): ``SourceUnavailable`` (refused, reset, DNS, 5xx),
``QueryTimeout``, ``AuthenticationFailed`` (401/403), ``BadQuery`` (the
server rejected the PromQL; ``error_type`` says why) and ``BadResponse``
(not the API: wrong shapes, not JSON, too big, a range vector). An empty
vector is a valid, empty result. Only ``SourceUnavailable`` and
``QueryTimeout`` are retried, with exponential backoff, and never past the
caller's ``deadline``.

No message or ``repr`` ever shows credentials: the base URL's userinfo is
moved into basic auth and stripped, and every message is scrubbed of the
secrets this client knows. The bounded answer reader, the header checks and
the scrubbing are shared with the router's model backend (``dualtrack._http``).

A client is meant to be used from one thread at a time (the adapter loop).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import math
import os
import time as _time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type, Union
from urllib.parse import unquote, urlencode, urlunsplit

import requests

from .. import _validate
from .._http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    BodyReader,
    TokenFile,
    check_header_value,
    checked_headers,
    connection_reason,
    scrub,
    short,
)
from .._urls import split_base_url
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import (
    AuthenticationFailed,
    BadQuery,
    BadResponse,
    QueryTimeout,
    SourceError,
    SourceUnavailable,
)
from .promql_answer import InstantResult, Sample, _parse_instant

__all__ = [
    "InstantResult",
    "PromQLClient",
    "Sample",
    "escape_label_value",
]

log = logging.getLogger(__name__)

#: Above this many bytes of encoded parameters a query goes as a form POST:
#: proxies and servers cap URL length (often at 4-8 KiB), the API accepts both.
POST_THRESHOLD = 2000
#: Backoff never waits longer than this between two attempts.
MAX_BACKOFF_S = 5.0
#: An attempt with less time than this left before the deadline is not worth sending.
MIN_ATTEMPT_S = 0.01

# Prometheus errorType -> our exception. Unknown types fall back on the HTTP status.
_ERROR_TYPES: Dict[str, type] = {
    "bad_data": BadQuery,
    "execution": BadQuery,
    "timeout": QueryTimeout,
    "canceled": SourceUnavailable,
    "internal": SourceUnavailable,
    "unavailable": SourceUnavailable,
    "not_found": BadResponse,
    "not_acceptable": BadResponse,
}


# How a failed read of an answer (see dualtrack._http.Fail) shows as a SourceError.
_READ_FAILURES: Dict[str, Type[SourceError]] = {
    "too_big": BadResponse,
    "undecodable": BadResponse,
    "timeout": QueryTimeout,
    "broken": SourceUnavailable,
    "cancelled": SourceUnavailable,
}


# --------------------------------------------------------------------------- helpers

_Sleep = Callable[[float], None]


def escape_label_value(value: str) -> str:
    """Escape ``value`` for a double-quoted PromQL string literal.

    ``f'{{path="{escape_label_value(v)}"}}'`` matches exactly ``v``, whatever
    it contains: backslash and double quote are escaped, and newline, carriage
    return and tab become ``\\n``, ``\\r``, ``\\t`` (a raw newline ends a
    PromQL string with a parse error).
    """
    if not isinstance(value, str):
        raise TypeError(f"escape_label_value: expected str, got {type(value).__name__}")
    return (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )


def _format_time(at: Union[float, int, _dt.datetime]) -> str:
    if isinstance(at, _dt.datetime):
        if at.tzinfo is None:
            raise ValueError("at: a naive datetime is ambiguous; give it a timezone or pass unix seconds")
        seconds = at.timestamp()
    elif isinstance(at, (int, float)) and not isinstance(at, bool):
        seconds = float(at)
    else:
        raise TypeError(f"at: expected unix seconds (float) or an aware datetime, got {type(at).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"at: expected a finite time, got {seconds!r}")
    return f"{seconds:.3f}"


# --------------------------------------------------------------------------- parsing


class PromQLClient:
    """A client for the Prometheus HTTP query API.

    ``base_url`` is where the API lives, with any path prefix
    (``http://host:9090``, ``https://gateway/prometheus``). Credentials, at
    most one kind: ``bearer_token``, ``bearer_token_file`` (re-read when it
    changes), ``basic_auth=(user, password)`` or userinfo in ``base_url``
    (moved into basic auth and stripped from the URL). TLS: ``ca_bundle``
    (file or folder) or ``insecure_skip_verify``.

    ``timeout`` bounds each attempt (connect and the whole answer);
    ``retries`` extra attempts follow a ``SourceUnavailable`` or
    ``QueryTimeout``, ``backoff * 2**n`` seconds apart (at most 5 s).
    ``clock`` (monotonic seconds, as the ``deadline`` argument) and
    ``sleep`` are injectable for tests and the simulator. ``session``: bring
    your own ``requests.Session`` (not closed by ``close()``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        bearer_token: Optional[str] = None,
        bearer_token_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        basic_auth: Optional[Tuple[str, str]] = None,
        ca_bundle: Optional[Union[str, "os.PathLike[str]"]] = None,
        insecure_skip_verify: bool = False,
        retries: int = 2,
        backoff: float = 0.2,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        session: Optional[requests.Session] = None,
        headers: Optional[Mapping[str, str]] = None,
        clock: Clock = SYSTEM_CLOCK,
        sleep: _Sleep = _time.sleep,
    ) -> None:
        self._secrets: List[str] = []
        self._base, url_auth = self._parse_base_url(base_url)

        self.timeout = _validate.number("timeout", timeout, lower=0, lower_open=True)
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries: expected an integer >= 0, got {retries!r}")
        self.backoff = _validate.number("backoff", backoff, lower=0)
        if not isinstance(max_response_bytes, int) or isinstance(max_response_bytes, bool) or max_response_bytes <= 0:
            raise ValueError(f"max_response_bytes: expected a positive integer, got {max_response_bytes!r}")
        self.retries = retries
        self.max_response_bytes = max_response_bytes

        # -- credentials: at most one source, all turned into one header value
        given = [
            name
            for name, value in (
                ("bearer_token", bearer_token),
                ("bearer_token_file", bearer_token_file),
                ("basic_auth", basic_auth),
                ("userinfo in base_url", url_auth),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise ValueError(f"credentials: give only one of {', '.join(given)}")
        self._token: Optional[str] = None
        self._token_file: Optional[TokenFile] = None
        self._basic_header: Optional[str] = None
        if bearer_token is not None:
            check_header_value("bearer_token", bearer_token)
            self._token = bearer_token
            self._auth_kind = "bearer"
        elif bearer_token_file is not None:
            self._token_file = TokenFile(bearer_token_file)
            self._auth_kind = "bearer_file"
        elif basic_auth is not None or url_auth is not None:
            user, password = self._check_basic(basic_auth if basic_auth is not None else url_auth)
            # Built here, UTF-8 (RFC 7617), rather than by requests, which
            # encodes latin-1 and fails on other characters.
            encoded = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self._basic_header = "Basic " + encoded
            self._secrets += [password, encoded]
            self._auth_kind = "basic"
        else:
            self._auth_kind = "none"

        # -- extra headers (tenant ids, API keys): values are treated as secrets
        self._headers: Dict[str, str] = {"Accept": "application/json", "User-Agent": "dualtrack-promql"}
        extra = checked_headers(
            headers, authorization_set_by=None if self._auth_kind == "none" else "the credentials given"
        )
        self._headers.update(extra)
        self._secrets += extra.values()

        # -- TLS
        if insecure_skip_verify and ca_bundle is not None:
            raise ValueError("ca_bundle and insecure_skip_verify: give at most one")
        self._verify: Union[bool, str] = True
        if insecure_skip_verify:
            self._verify = False
        elif ca_bundle is not None:
            bundle = os.fspath(ca_bundle)
            if not os.path.exists(bundle):
                raise ValueError(f"ca_bundle: {bundle} does not exist")
            self._verify = bundle

        self._own_session = session is None
        self._session = session if session is not None else requests.Session()
        self._clock = clock
        self._sleep = sleep

    # -- construction helpers ---------------------------------------------

    @staticmethod
    def _parse_base_url(base_url: Any) -> Tuple[str, Optional[Tuple[str, str]]]:
        parts = split_base_url(base_url)
        port = parts.port
        auth: Optional[Tuple[str, str]] = None
        if parts.username is not None or parts.password is not None:
            auth = (unquote(parts.username or ""), unquote(parts.password or ""))
        host = parts.hostname or ""  # never empty: split_base_url requires a host
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        netloc = host if port is None else f"{host}:{port}"
        clean = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        return clean, auth

    @staticmethod
    def _check_basic(pair: Any) -> Tuple[str, str]:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise ValueError("basic_auth: expected a (user, password) pair of strings")
        user, password = pair
        if ":" in user:
            raise ValueError("basic_auth: the user name must not contain ':'")
        return user, password

    # -- public ------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The base URL, without credentials."""
        return self._base

    def instant(
        self,
        expr: str,
        *,
        at: Union[float, int, _dt.datetime, None] = None,
        timeout: Optional[float] = None,
        deadline: Optional[float] = None,
    ) -> InstantResult:
        """Evaluate ``expr`` at one instant (now, or ``at`` in unix seconds).

        ``timeout`` overrides the client's per-attempt timeout; ``deadline``
        (the clock's monotonic seconds) is a hard end for all attempts
        together: each attempt's timeout shrinks to fit it, and no retry
        starts past it.
        """
        if not isinstance(expr, str) or not expr.strip():
            raise ValueError("expr: expected a non-empty PromQL expression")
        params: Dict[str, str] = {"query": expr}
        if at is not None:
            params["time"] = _format_time(at)
        body = self._call("/api/v1/query", params, expr, timeout, deadline)
        try:
            return _parse_instant(body)
        except BadResponse as err:
            raise BadResponse(self._scrub(f"{self._base}: {err} (query: {short(expr)})")) from err

    def is_online(self, timeout: Optional[float] = None) -> bool:
        """True when ``/-/ready`` answers 2xx. Never raises, never retries."""
        try:
            resp = self._session.get(
                self._base + "/-/ready",
                headers=self._request_headers(),
                timeout=timeout or self.timeout,
                verify=self._verify,
            )
            resp.close()
            return 200 <= resp.status_code < 300
        except Exception:  # any failure means "not online" here
            return False

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    def __enter__(self) -> "PromQLClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PromQLClient({self._base!r}, auth={self._auth_kind}, timeout={self.timeout:g}, retries={self.retries})"

    # -- internals ---------------------------------------------------------

    def _scrub(self, message: str) -> str:
        secrets = list(self._secrets)
        if self._token:
            secrets.append(self._token)
        if self._token_file is not None and self._token_file.token:
            secrets.append(self._token_file.token)
        return scrub(message, secrets)

    def _request_headers(self) -> Dict[str, str]:
        headers = dict(self._headers)
        if self._token is not None:
            headers["Authorization"] = "Bearer " + self._token
        elif self._token_file is not None:
            headers["Authorization"] = "Bearer " + self._token_file.get()
        elif self._basic_header is not None:
            headers["Authorization"] = self._basic_header
        return headers

    def _call(
        self,
        path: str,
        params: Dict[str, str],
        expr: str,
        timeout: Optional[float],
        deadline: Optional[float],
    ) -> Any:
        """One API call with retries; returns the decoded JSON body (status success)."""
        per_attempt = self.timeout if timeout is None else float(timeout)
        if not 0 < per_attempt < math.inf:
            raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
        attempts = self.retries + 1
        last: Optional[SourceError] = None
        made = 0
        for attempt in range(attempts):
            attempt_timeout = per_attempt
            if deadline is not None:
                remaining = deadline - self._clock.monotonic()
                if remaining < MIN_ATTEMPT_S:
                    break
                attempt_timeout = min(per_attempt, remaining)
            made += 1
            try:
                return self._attempt(path, params, expr, attempt_timeout)
            except (SourceUnavailable, QueryTimeout) as err:
                last = err
            if attempt + 1 >= attempts:
                break
            delay = min(self.backoff * (2**attempt), MAX_BACKOFF_S)
            if deadline is not None and self._clock.monotonic() + delay + MIN_ATTEMPT_S >= deadline:
                break
            log.debug("query to %s failed (%s); retry %d in %.2f s", self._base, last, attempt + 1, delay)
            self._sleep(delay)

        if last is None:
            raise QueryTimeout(f"{self._base}: the deadline passed before the query could be sent "
                               f"(query: {short(expr)})")
        if made == 1:
            raise last
        why = "attempts before the deadline" if made < attempts else "attempts"
        raise type(last)(f"{last} (gave up after {made} {why})") from last

    def _attempt(self, path: str, params: Dict[str, str], expr: str, attempt_timeout: float) -> Any:
        url = self._base + path
        # The server abandons the evaluation when we stop waiting for it.
        params = dict(params, timeout=f"{attempt_timeout:.3f}")
        use_post = len(urlencode(params)) > POST_THRESHOLD
        started = self._clock.monotonic()
        try:
            resp = self._session.request(
                "POST" if use_post else "GET",
                url,
                params=None if use_post else params,
                data=params if use_post else None,
                headers=self._request_headers(),
                timeout=attempt_timeout,
                verify=self._verify,
                stream=True,
            )
        except requests.exceptions.ConnectTimeout as err:
            raise SourceUnavailable(self._scrub(f"{url}: connect timed out after {attempt_timeout:.2f} s")) from err
        except requests.exceptions.Timeout as err:
            raise QueryTimeout(self._scrub(f"{url}: no answer within {attempt_timeout:.2f} s "
                                           f"(query: {short(expr)})")) from err
        except requests.exceptions.SSLError as err:
            raise SourceUnavailable(self._scrub(f"{url}: TLS error (certificate or ca_bundle?)")) from err
        except requests.exceptions.ConnectionError as err:
            raise SourceUnavailable(self._scrub(f"{url}: cannot connect: {connection_reason(err)}")) from err
        except requests.exceptions.TooManyRedirects as err:
            raise BadResponse(self._scrub(f"{url}: too many redirects")) from err
        except requests.exceptions.RequestException as err:
            raise SourceUnavailable(self._scrub(f"{url}: request failed: {type(err).__name__}")) from err

        with resp:
            if resp.status_code in (401, 403):
                raise AuthenticationFailed(self._scrub(
                    f"{url}: HTTP {resp.status_code}: the server refused the credentials (auth={self._auth_kind})"
                ))
            raw = self._read_body(resp, url, started + attempt_timeout, attempt_timeout)
        return self._decode(resp.status_code, raw, url, expr)

    def _read_body(self, resp: requests.Response, url: str, read_deadline: float, attempt_timeout: float) -> bytes:
        def fail(kind: str, message: str) -> SourceError:
            return _READ_FAILURES[kind](self._scrub(f"{url}: {message}"))

        reader = BodyReader(resp, fail, limit=self.max_response_bytes, deadline=read_deadline,
                            budget=attempt_timeout, clock=self._clock.monotonic)
        reader.check_declared_length()
        return reader.read()

    def _decode(self, status: int, raw: bytes, url: str, expr: str) -> Any:
        try:
            body: Any = json.loads(raw)
        except (ValueError, RecursionError):
            body = None
            snippet = short(raw[:300].decode("utf-8", "replace"))
        else:
            snippet = ""

        if isinstance(body, dict) and body.get("status") == "error":
            raise self._api_error(status, body, url, expr)
        if 200 <= status < 300:
            if body is None:
                raise BadResponse(self._scrub(f"{url}: HTTP {status} but the answer is not JSON: {snippet!r}"))
            return body
        detail = f": {snippet!r}" if snippet else ""
        if status == 429 or status >= 500:
            raise SourceUnavailable(self._scrub(f"{url}: HTTP {status}{detail}"))
        if status == 404:
            raise BadResponse(self._scrub(f"{url}: HTTP 404: is the base URL (and its path prefix) right?"))
        raise BadResponse(self._scrub(f"{url}: unexpected HTTP {status} without an API error{detail}"))

    def _api_error(self, status: int, body: Dict[str, Any], url: str, expr: str) -> SourceError:
        error_type = body.get("errorType")
        error_type = error_type if isinstance(error_type, str) else ""
        error = body.get("error")
        error = short(error, 500) if isinstance(error, str) else "(no error message)"
        cls = _ERROR_TYPES.get(error_type)
        if cls is None:
            if status >= 500 or status == 429:
                cls = SourceUnavailable
            elif 400 <= status < 500:
                cls = BadQuery
            else:
                cls = BadResponse
        shown_type = error_type or "no errorType"
        if cls is BadQuery:
            return BadQuery(
                self._scrub(f"{url}: query rejected ({shown_type}): {error} (query: {short(expr)})"),
                error_type or "bad_data",
            )
        return cls(self._scrub(f"{url}: HTTP {status}, {shown_type}: {error} (query: {short(expr)})"))

