"""JSON Schema validation of YAML documents, with errors that name file, line and field.

Strategy files and scenarios are validated against the schemas we publish
(``schemas/``, the same files editors use through yaml-language-server);
this turns jsonschema's best error into a ``ConfigError`` a person can act
on: an unknown key with the closest valid one suggested, a bare YAML
boolean that should have been quoted, the alternatives of an ``anyOf``.
"""

from __future__ import annotations

import difflib
import json
from collections import deque
from importlib import resources
from typing import Any, Dict, Optional

import jsonschema

from ._yaml import LocatedDocument
from .errors import ConfigError


def load_validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator for ``schemas/<name>`` shipped in the package."""
    text = resources.files("dualtrack").joinpath(f"schemas/{name}").read_text(encoding="utf-8")
    schema: Dict[str, Any] = json.loads(text)
    return jsonschema.Draft202012Validator(schema)


def _comparable(path: Any) -> Any:
    # YAML mapping keys need not be strings: one mapping can hold 0, "" and
    # None, and jsonschema's key compares error paths element by element
    # ("int" > "str" is a TypeError). Numbers keep their order, the rest
    # compare as text.
    return tuple((0, part, "") if isinstance(part, (int, float)) and not isinstance(part, bool)
                 else (1, 0, str(part)) for part in path)


def _relevance(error: jsonschema.ValidationError) -> Any:
    """jsonschema's relevance key, with every error path in it made comparable."""
    key: Any = jsonschema.exceptions.relevance(error)  # a tuple; typed as a comparable
    return tuple(_comparable(part) if isinstance(part, deque) else part for part in key)


def schema_error(doc: LocatedDocument, validator: jsonschema.Draft202012Validator, *,
                 property_names: str = "is not a valid name here") -> Optional[ConfigError]:
    """The most relevant schema violation of ``doc`` as a ConfigError, or None when valid.

    ``property_names`` completes the message for a key rejected by a
    ``propertyNames`` rule (``'x' <property_names>``).
    """
    errors = list(validator.iter_errors(doc.data))
    if not errors:
        return None
    err = jsonschema.exceptions.best_match(errors, key=_relevance)
    path = tuple(err.absolute_path)
    message = err.message
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = list(err.schema.get("properties", {}))
        extra = [k for k in err.instance if k not in allowed]
        if extra:
            hint = difflib.get_close_matches(str(extra[0]), allowed, n=1)
            path = path + (extra[0],)
            message = f"unknown field{'; did you mean ' + repr(hint[0]) + '?' if hint else ''}"
    elif err.validator == "propertyNames":
        message = f"{err.instance!r} {property_names}"
    elif err.validator == "enum" and isinstance(err.instance, bool):
        message += " (quote it: YAML reads off, on, yes and no as booleans)"
    elif err.validator in ("anyOf", "oneOf") and err.context:
        if err.schema.get(err.validator) and all("required" in s for s in err.schema[err.validator]):
            wanted = list(dict.fromkeys(r for s in err.schema[err.validator] for r in s["required"]))
            message = f"needs at least one of {', '.join(wanted)}"
        else:
            message = f"{err.instance!r} is not valid here: " + "; or ".join(sorted({c.message for c in err.context}))
    return doc.error(path, message)
