#!/usr/bin/env python3
"""atheris: preferences-file bytes -> Preferences.from_json: Preferences or PreferencesReadError;
a reader given the bytes after a good file keeps the good copy."""

from __future__ import annotations

import os
import sys
import tempfile
import time

import atheris
from _common import seed_corpus

from dualtrack.clock import VirtualClock  # noqa: E402
from dualtrack.preferences import Preferences, PreferencesReader, PreferencesReadError  # noqa: E402

GOOD = Preferences.defaults(now=time.time()).to_json()
FOLDER = tempfile.mkdtemp(prefix="fuzz-prefs-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
PATH = os.path.join(FOLDER, "preferences.json")


def test_one_input(data: bytes) -> None:
    try:
        prefs = Preferences.from_json(data, "fuzzed")
    except PreferencesReadError:
        prefs = None
    else:
        assert isinstance(prefs, Preferences)
    # A reader that saw a good file keeps it when the file turns into these bytes.
    clock = VirtualClock(start=time.time())
    with open(PATH, "w", encoding="utf-8") as fh:
        fh.write(GOOD)
    reader = PreferencesReader(PATH, clock=clock, check_interval_seconds=0)
    first = reader.current(force=True)
    with open(PATH, "wb") as fh:
        fh.write(data)
    os.utime(PATH, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    after = reader.current(force=True)
    if prefs is None:
        assert after.sequence == first.sequence and after.routing == first.routing


if __name__ == "__main__":
    seed_corpus(sys.argv, [GOOD])
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
