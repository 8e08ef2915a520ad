"""The small exception hierarchy of dualtrack.

Low-level errors (YAML, HTTP, NVML, the file system) are translated at the
boundary into these, chained with ``raise ... from err`` so the cause stays
visible.
"""

from __future__ import annotations

from typing import Optional


class DualTrackError(Exception):
    """Base class of every error dualtrack raises on purpose."""


class ConfigError(DualTrackError, ValueError):
    """A configuration, rule or scenario file (or dict) is invalid.

    ``source`` is the file (or ``<dict>``), ``line`` the 1-based line where it
    is known, ``field`` the dotted path of the offending field.
    """

    def __init__(
        self,
        message: str,
        *,
        source: Optional[str] = None,
        line: Optional[int] = None,
        field: Optional[str] = None,
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ""
        if self.source:
            where = self.source + (f":{self.line}" if self.line else "") + ": "
        elif self.line:
            where = f"line {self.line}: "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


class PreferencesError(DualTrackError):
    """A preferences file could not be read, parsed or validated."""


class SourceError(DualTrackError):
    """A signal source (Prometheus, any PromQL engine) could not answer. Subclasses tell why.

    "Source" here is where the adapter reads signals from; the model servers
    a router calls are *backends* (``router.backends.BackendError``).
    """

    #: short, bounded label for metrics (``dualtrack_adapter_query_errors_total{type}``)
    kind = "source"


class NoData(SourceError):
    """The query succeeded but returned nothing usable (empty, NaN, Inf)."""

    kind = "no_data"


class SourceUnavailable(SourceError):
    """The source could not be reached or answered with a server error."""

    kind = "unavailable"


#: The old name of :class:`SourceUnavailable`; kept for one release (removed in 0.3).
BackendUnavailable = SourceUnavailable


class QueryTimeout(SourceError):
    """The source did not answer within the timeout."""

    kind = "timeout"


class BadQuery(SourceError):
    """The source rejected the query (PromQL ``bad_data`` and similar)."""

    kind = "bad_query"

    def __init__(self, message: str, error_type: str = "bad_data") -> None:
        super().__init__(message)
        self.error_type = error_type


class AuthenticationFailed(SourceError):
    """The source refused our credentials (HTTP 401/403).

    Not a ``BackendUnavailable``: retrying cannot help and the fix is in the
    configuration (token, password), so it is counted apart.
    """

    kind = "auth"


class BadResponse(SourceError):
    """The source answered with something that is not a valid API response."""

    kind = "bad_response"
