"""Where the facade gets its preferences from: the :class:`PreferenceSource` protocol.

Two things implement it: :class:`~dualtrack.preferences.PreferencesReader`
(a file that a separate ``dualtrack adapter`` process writes) and the
adapter's embedded engine (the same rules run in-process). The facade,
``DualTrackOptimizer``, is built on either and never needs to know which;
a test can hand it anything with this one method::

    class Fixed:
        def current_preferences(self) -> Preferences:
            return Preferences.defaults(now=0.0)
"""

from __future__ import annotations

from typing import Protocol

from .model import Preferences


class PreferenceSource(Protocol):
    """Anything that can say which preferences to obey now."""

    def current_preferences(self) -> Preferences:
        """The preferences to obey now. Asked on every request: cheap, and safe defaults
        rather than an exception when there are no good preferences."""
        ...


__all__ = ["PreferenceSource"]
