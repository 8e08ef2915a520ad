"""The error an integration raises when its optional dependency is not installed."""

from __future__ import annotations


def missing_extra(extra: str, err: ImportError) -> ImportError:
    """``err`` (a failed ``import <extra>``) as the one-line ImportError that says what to install.

    Only a missing ``<extra>`` package itself is translated: when the package is
    there but one of its own imports fails, ``err`` is returned unchanged, since
    installing the extra again would not fix that.
    """
    missing = (err.name or "").split(".")[0]
    if missing != extra:
        return err
    return ImportError(f"dualtrack.integrations.{extra} needs {extra}: pip install 'dualtrack[{extra}]'",
                       name=err.name)
