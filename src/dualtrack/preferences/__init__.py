"""The preferences file: the contract between the adapter (writer) and routers (readers).

The adapter decides how traffic should be split and publishes the decision as
one JSON document (``docs/preferences.md`` documents every field; the JSON
Schema is :data:`PREFERENCES_SCHEMA_PATH`). Routers read it::

    # adapter
    writer = PreferencesWriter("/run/dualtrack/preferences.json", mode=0o644)
    written = writer.publish(Preferences(
        generated_at=now, valid_until=now + 60, strategy="balanced",
        source="embedded", routing=Routing.DEFAULT.replace(local_bias=0.65)))

    # router, on every request (cheap: at most one os.stat per second)
    reader = PreferencesReader("/run/dualtrack/preferences.json", registry=registry)
    routing = reader.current().routing_for("long")

The writer validates, then writes atomically (temp file in the same folder,
fsync, ``os.replace``); a reader never sees a torn file, keeps the last good
copy when the file is bad and falls back to safe defaults once it has expired.

Modules, each importing only those above it:

``codec``
    the document on the wire: ``SCHEMA_VERSION``, the size limit, JSON
    parsing, the JSON Schema (:func:`load_schema`), :class:`PreferencesReadError`
    and its ``reason`` labels.
``model``
    the document as objects: :class:`Routing`, :class:`ConstraintState`,
    :class:`Reason`, :class:`Preferences` (``to_json``/``from_json``), ``SOURCES``.
``source``
    :class:`PreferenceSource`, what the facade reads recommendations from.
``reader``
    :func:`read_preferences` (one read, raising) and :class:`PreferencesReader`
    (last-known-good, expiry policy, scrape-time gauges).
``writer``
    the atomic writer: :func:`write_preferences` and :class:`PreferencesWriter`
    (numbering, stale temp file cleanup).

``PATHS``, ``PARALLEL_NEVER`` and ``DEFAULT_TIMEOUTS_SECONDS`` are
:mod:`dualtrack.vocabulary`'s, re-exported here.
"""

from ..vocabulary import DEFAULT_TIMEOUTS_SECONDS, PARALLEL_NEVER, PATHS
from .codec import (
    MAX_FILE_BYTES,
    PREFERENCES_SCHEMA_PATH,
    READ_ERROR_REASONS,
    SCHEMA_VERSION,
    PreferencesReadError,
    load_schema,
)
from .model import DEFAULT_VALIDITY_SECONDS, SOURCES, ConstraintState, Preferences, Reason, Routing
from .reader import PreferencesReader, read_preferences
from .source import PreferenceSource
from .writer import PreferencesWriter, write_preferences

__all__ = [
    "SCHEMA_VERSION",
    "SOURCES",
    "PATHS",
    "PARALLEL_NEVER",
    "DEFAULT_TIMEOUTS_SECONDS",
    "DEFAULT_VALIDITY_SECONDS",
    "MAX_FILE_BYTES",
    "READ_ERROR_REASONS",
    "PREFERENCES_SCHEMA_PATH",
    "Routing",
    "ConstraintState",
    "Reason",
    "Preferences",
    "PreferenceSource",
    "PreferencesReadError",
    "PreferencesWriter",
    "PreferencesReader",
    "load_schema",
    "read_preferences",
    "write_preferences",
]
