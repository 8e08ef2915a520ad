"""Base URLs given by users (Prometheus, model servers): parsed once, never echoed with secrets.

Both the adapter's PromQL client and the router's HTTP backends take a base
URL from configuration. They share the checks (a string, http or https, a
host, a valid port, no query string or fragment) and the way a bad URL is
shown in an error: with any user:password replaced by ``***`` and the query
string (where API keys tend to hide) left out.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """``url`` without its userinfo, query string and fragment, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if "@" in parts.netloc:
        parts = parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1])
    return urlunsplit(parts._replace(query="", fragment=""))


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password (``http://user:secret@host``)."""
    try:
        return bool(urlsplit(url.strip()).password)
    except ValueError:
        return False


def split_base_url(base_url: Any, field: str = "base_url") -> SplitResult:
    """``base_url`` split, or ``ValueError`` naming ``field`` (the URL shown redacted).

    Checks: a string; http:// or https://; a host; a numeric port in range;
    no query string or fragment. Credentials are left to the caller (one
    client accepts them, another refuses them).
    """
    if not isinstance(base_url, str):
        raise ValueError(f"{field}: expected a string, got {type(base_url).__name__}")
    shown = redact_url(base_url)
    try:
        parts = urlsplit(base_url.strip())
        parts.port  # noqa: B018 - raises on a non-numeric or out-of-range port
    except ValueError:
        raise ValueError(f"{field}: not a valid URL: {shown}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{field}: expected an http:// or https:// URL with a host, got {shown}")
    if parts.query or parts.fragment:
        raise ValueError(f"{field}: must not carry a query string or fragment: {shown}")
    return parts
