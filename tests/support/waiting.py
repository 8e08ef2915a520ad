"""Waiting in tests: on a condition, with a deadline and a message, never a fixed sleep.

    wait_until(lambda: out.exists(), 20, "a first publish")
    prefs = wait_until(lambda: out.exists() and read_preferences(out), 60, "a first published file")

The predicate's truthy value is returned, so a wait can hand over what it saw.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")

# Short enough that tests don't idle; a predicate that is costly to call (a
# scrape, a process that must not be disturbed) passes a longer ``poll``.
POLL_S = 0.01
_LAST_CHARS = 300


def wait_until(predicate: Callable[[], T], timeout: float, what: str, poll: float = POLL_S) -> T:
    """Call ``predicate`` every ``poll`` s until it returns something truthy; return that.

    After ``timeout`` s, AssertionError: "timed out after <timeout> s waiting
    for <what> (last: <the last falsy value>)". The predicate is called at
    least once, the last time after the deadline has passed; an exception it
    raises ends the wait at once (waiting will not fix it).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            last = repr(value)
            if len(last) > _LAST_CHARS:
                last = last[:_LAST_CHARS] + "..."
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last})")
        time.sleep(poll)
