"""Clocks. Time-dependent code takes a clock so the simulator can drive it.

``time()`` is wall-clock seconds since the epoch (for timestamps people read:
``generated_at``, ``valid_until``); ``monotonic()`` never goes backwards (for
durations and timeouts). A virtual clock advances both only when told to.
"""

from __future__ import annotations

import threading
import time as _time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clocks."""

    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)


class VirtualClock:
    """A clock that moves only when ``advance()`` or ``set()`` is called.

    Used by the simulator to run an hour of traffic in seconds, and by tests.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._wall = float(start)
        self._mono = 0.0

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"seconds: a virtual clock only moves forward, got {seconds!r}")
        with self._lock:
            self._wall += seconds
            self._mono += seconds
            return self._mono

    def set_wall(self, wall: float) -> None:
        """Jump the wall clock (as NTP might) without touching monotonic time."""
        with self._lock:
            self._wall = float(wall)


SYSTEM_CLOCK = SystemClock()
