"""Comparing two fetches of the same signals (e.g. raw PromQL forms vs aggregates)."""

from __future__ import annotations

from typing import Iterable

import pytest

from dualtrack.adapter.signals import SignalValues


def assert_same_series(want: SignalValues, got: SignalValues, names: Iterable[str]) -> int:
    """Each signal in ``names`` has data for the same label sets in both, with equal
    values up to rounding (sums in another order). Returns how many values were compared."""
    compared = 0
    for name in names:
        expected, actual = want.series(name), got.series(name)
        assert set(actual) == set(expected), name  # the same series have data (and the same lack it)
        for labels, value in expected.items():
            assert actual[labels] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, labels)
            compared += 1
    return compared
