"""``OnceLogger``: each distinct problem logged once, so a bad caller cannot flood the logs.

    once = OnceLogger(logging.getLogger(__name__))
    once.warning(("completion", "TypeError"), "completion failed (%s)", "TypeError", exc_info=err)

At most ``limit`` distinct keys are remembered; past that, new problems are
not logged (they are still counted wherever the caller counts them).
``clear()`` forgets them, for a problem that is news again after a recovery.
"""

from __future__ import annotations

import logging
from typing import Any, Hashable, Optional, Set


class OnceLogger:
    """Logs each distinct problem once, so a bad caller cannot flood the logs."""

    def __init__(self, logger: logging.Logger, limit: int = 256) -> None:
        self._log = logger
        self._seen: Set[Hashable] = set()
        self._limit = limit

    def warning(self, key: Hashable, message: str, *args: Any, exc_info: Optional[BaseException] = None) -> None:
        if key in self._seen or len(self._seen) >= self._limit:
            return
        self._seen.add(key)
        self._log.warning(message, *args, exc_info=exc_info)

    def clear(self) -> None:
        self._seen.clear()


__all__ = ["OnceLogger"]
