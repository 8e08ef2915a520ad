"""The preferences file on the wire: JSON text, its limits and its JSON Schema.

Everything here works on plain data (dicts, lists, numbers), so that both the
model (:mod:`.model`) and the file's readers and writer can use it:

* :func:`parse_json` turns the bytes of a file into data, refusing what no
  reader should accept (more than :data:`MAX_FILE_BYTES`, not UTF-8, NaN,
  ``Infinity``, absurd nesting);
* :func:`check_document` checks that data against the format version and the
  published JSON Schema (:data:`PREFERENCES_SCHEMA_PATH`), naming the field
  to blame;
* :func:`dump_json` is the one text form every writer produces;
* :func:`read_document_bytes` reads a file, bounded, telling "missing" from
  "unreadable".

Every problem is a :class:`PreferencesReadError` whose ``reason`` is one of
:data:`READ_ERROR_REASONS`, the label readers count it under.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import threading
from importlib import resources
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import PreferencesError

SCHEMA_VERSION = 1
"""The document format version this package writes and accepts."""

MAX_FILE_BYTES = 1024 * 1024
"""Readers reject larger files (reason ``too_large``): a real document is a few KiB."""

READ_ERROR_REASONS: Tuple[str, ...] = (
    "missing", "empty", "unreadable", "invalid_json", "invalid", "wrong_version", "too_large",
)
"""Values of the ``reason`` label of ``dualtrack_preferences_read_errors_total``."""

PREFERENCES_SCHEMA_PATH = resources.files("dualtrack") / "schemas" / "preferences.schema.json"
"""The published JSON Schema (draft 2020-12) of the preferences file."""

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PreferencesReadError(PreferencesError):
    """A preferences document could not be read, parsed or validated.

    ``reason`` is one of :data:`READ_ERROR_REASONS` (the metric label),
    ``field`` the path of the offending field (``routing.local_bias``,
    ``reasons[0].rule``) where one is to blame, ``source`` the file (or
    ``<dict>``/``<string>``), ``message`` the problem alone.
    """

    def __init__(self, message: str, *, reason: str = "invalid", field: Optional[str] = None,
                 source: Optional[str] = None) -> None:
        self.message = message
        self.reason = reason
        self.field = field
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        what = f"{self.field}: " if self.field else ""
        return f"{where}{what}{self.message}"

    @property
    def problem(self) -> str:
        """The message without the source: ``routing.local_bias: 1.7 is greater ...``."""
        return f"{self.field}: {self.message}" if self.field else self.message


def _field_path(parts: Sequence[Union[str, int]]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT_RE.match(part):
            out += ("." if out else "") + part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# ---------------------------------------------------------------- JSON Schema

_validator_lock = threading.Lock()
_validator: Any = None


def load_schema() -> Dict[str, Any]:
    """The published JSON Schema as a dict (a fresh copy)."""
    return json.loads(PREFERENCES_SCHEMA_PATH.read_text(encoding="utf-8"))


def _schema_validator() -> Any:
    global _validator
    with _validator_lock:
        if _validator is None:
            from jsonschema import Draft202012Validator  # import cost paid once, on first use

            schema = load_schema()
            Draft202012Validator.check_schema(schema)
            _validator = Draft202012Validator(schema)
        return _validator


def _check_version(data: Any, source: str) -> None:
    if isinstance(data, dict) and "schema_version" in data:
        version = data["schema_version"]
        if isinstance(version, int) and not isinstance(version, bool) and version != SCHEMA_VERSION:
            raise PreferencesReadError(
                f"{version} is not supported (this version of dualtrack understands {SCHEMA_VERSION})",
                reason="wrong_version", field="schema_version", source=source)


def _check_finite(value: Any, path: List[Union[str, int]], source: str) -> None:
    # The schema's range checks let NaN through (every comparison is false).
    if isinstance(value, float) and not math.isfinite(value):
        raise PreferencesReadError(f"{value!r} is not a finite number", field=_field_path(path) or None,
                                   source=source)
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, path + [str(k)], source)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, path + [i], source)


def _check_schema(data: Any, source: str) -> None:
    from jsonschema.exceptions import best_match

    error = best_match(_schema_validator().iter_errors(data))
    if error is None:
        return
    path: List[Union[str, int]] = list(error.absolute_path)
    message = error.message
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        if missing:
            path.append(missing[0])
            message = "required field is missing"
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        extra = [name for name in error.instance if name not in allowed]
        if extra and allowed:
            path.append(extra[0])
            message = f"unexpected field; allowed: {', '.join(allowed)}"
    raise PreferencesReadError(_one_line(message), field=_field_path(path) or None, source=source)


def check_document(data: Any, source: str) -> None:
    """Raise :class:`PreferencesReadError` unless ``data`` is a valid document.

    Checked in this order, so that the error names the real problem: the
    format version (reason ``wrong_version``), finite numbers, the JSON
    Schema, then ``valid_until`` not before ``generated_at`` (reason
    ``invalid``).
    """
    _check_version(data, source)
    _check_finite(data, [], source)
    _check_schema(data, source)
    if data["valid_until"] < data["generated_at"]:
        raise PreferencesReadError(
            f"{data['valid_until']!r} is before generated_at {data['generated_at']!r}",
            field="valid_until", source=source)


# ---------------------------------------------------------------- text

def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: Union[str, bytes], source: str) -> Any:
    """The data in ``text``; :class:`PreferencesReadError` with reason ``too_large``, ``empty`` or
    ``invalid_json`` otherwise. ``NaN`` and ``Infinity`` are not JSON and are refused."""
    if isinstance(text, (bytes, bytearray)):
        if len(text) > MAX_FILE_BYTES:
            raise PreferencesReadError(f"{len(text)} bytes is larger than the limit of {MAX_FILE_BYTES}",
                                       reason="too_large", source=source)
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise PreferencesReadError(f"not UTF-8 text ({err.reason} at byte {err.start})",
                                       reason="invalid_json", source=source) from err
    elif len(text) > MAX_FILE_BYTES:
        raise PreferencesReadError(f"{len(text)} characters is larger than the limit of {MAX_FILE_BYTES}",
                                   reason="too_large", source=source)
    if not text.strip():
        raise PreferencesReadError("the file is empty", reason="empty", source=source)
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise PreferencesReadError(f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}",
                                   reason="invalid_json", source=source) from err
    except (ValueError, RecursionError) as err:  # NaN/Infinity, huge integers, absurd nesting
        raise PreferencesReadError(f"not valid JSON: {_one_line(str(err) or type(err).__name__)}",
                                   reason="invalid_json", source=source) from err


def dump_json(data: Any) -> str:
    """Indented JSON with a trailing newline: the text form of every document written."""
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def read_document_bytes(path: str, source: str) -> bytes:
    """The bytes of the regular file ``path``: at most :data:`MAX_FILE_BYTES`, plus one to tell a larger file.

    :class:`PreferencesReadError` with reason ``missing`` or ``unreadable`` otherwise.
    """
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise PreferencesReadError("not a regular file", reason="unreadable", source=source)
            return fh.read(MAX_FILE_BYTES + 1)
    except PreferencesReadError:
        raise
    except (FileNotFoundError, NotADirectoryError) as err:
        raise PreferencesReadError("no such file", reason="missing", source=source) from err
    except OSError as err:
        raise PreferencesReadError(f"cannot read: {err.strerror or err}", reason="unreadable",
                                   source=source) from err


__all__ = [
    "MAX_FILE_BYTES", "PREFERENCES_SCHEMA_PATH", "READ_ERROR_REASONS", "SCHEMA_VERSION", "PreferencesReadError",
    "check_document", "dump_json", "load_schema", "parse_json", "read_document_bytes",
]
