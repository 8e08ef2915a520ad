"""Writing the preferences file atomically: :func:`write_preferences` and :class:`PreferencesWriter`.

The adapter publishes each decision with a writer, which numbers the documents::

    writer = PreferencesWriter("/run/dualtrack/preferences.json", mode=0o644)
    written = writer.publish(Preferences(
        generated_at=now, valid_until=now + 60, strategy="balanced",
        source="embedded", routing=Routing.DEFAULT.replace(local_bias=0.65)))

Writer guarantees
    The document is validated before anything touches the disk, by the same
    checks readers apply, so a writer can never publish a document readers
    would reject. It is written to a temp file in the *same* folder, created
    with ``O_CREAT|O_EXCL|O_NOFOLLOW`` under an unpredictable name (so a
    symlink planted there is never followed), fsynced, chmod-ed to the
    explicit mode (independent of the umask) and renamed over the target with
    ``os.replace`` (a symlink at the target is replaced, never written
    through); the folder is then fsynced. A reader sees the old document or
    the new one, never a mix. On any failure the temp file is removed and
    :class:`~dualtrack.errors.PreferencesError` is raised with the cause
    chained. Sequence numbers continue after a restart.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import re
import secrets
import stat
import threading
from typing import List, Optional, Tuple, Union

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import PreferencesError
from .codec import dump_json
from .model import Preferences, iso_time
from .reader import read_preferences

# One logger for the whole file contract, named as before the package was split: operators filter on it.
_log = logging.getLogger("dualtrack.preferences")

_OPEN_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
_TEMP_ATTEMPTS = 8


def _random_token() -> str:
    """The unpredictable part of a temp file name (a test seam)."""
    return secrets.token_hex(8)


def _split_target(path: Union[str, "os.PathLike[str]"]) -> Tuple[str, str]:
    folder, name = os.path.split(os.fspath(path))
    if name in ("", ".", ".."):
        raise PreferencesError(f"{os.fspath(path)}: expected a file path, not a folder")
    return os.path.realpath(folder or "."), name


def _temp_pattern(name: str) -> "re.Pattern[str]":
    return re.compile(r"^\." + re.escape(name) + r"\.[0-9a-f]{8,64}\.tmp$")


def _create_temp(folder: str, name: str, mode: int) -> Tuple[str, int]:
    last: Optional[OSError] = None
    for _ in range(_TEMP_ATTEMPTS):
        tmp = os.path.join(folder, f".{name}.{_random_token()}.tmp")
        try:
            return tmp, os.open(tmp, _OPEN_FLAGS, mode)
        except FileExistsError as err:
            # Something is already there (maybe a planted symlink): O_EXCL refused
            # to touch it. Never remove it, just pick another name.
            last = err
        except OSError as err:
            if err.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
                last = err
                continue
            raise
    raise FileExistsError(errno.EEXIST, f"no free temp file name after {_TEMP_ATTEMPTS} attempts",
                          os.path.join(folder, f".{name}.*.tmp")) from last


def _fsync_dir(folder: str) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(folder, flags)
    except OSError:
        return  # best effort: some platforms cannot open folders
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(folder: str, name: str, data: bytes, mode: int, what: str = "preferences") -> str:
    target = os.path.join(folder, name)
    tmp: Optional[str] = None
    fd = -1
    try:
        tmp, fd = _create_temp(folder, name, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fchmod(fd, mode)  # the mode passed to os.open went through the umask
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)  # replaces a symlink at target, never writes through it
        tmp = None
    except BaseException as err:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(err, Exception):
            raise PreferencesError(f"{target}: could not write {what}: {err}") from err
        raise
    _fsync_dir(folder)
    return target


def _validated_bytes(prefs: Preferences) -> bytes:
    if not isinstance(prefs, Preferences):
        raise PreferencesError(f"expected Preferences, got {type(prefs).__name__}")
    # Round-trip through the reader's validation so a writer can never publish
    # a document that readers would reject.
    data = prefs.to_dict()
    Preferences.from_dict(data, source_name="<preferences to write>")
    return dump_json(data).encode("utf-8")


def write_preferences(path: Union[str, "os.PathLike[str]"], prefs: Preferences, mode: int = 0o644) -> str:
    """Validate ``prefs`` and write it atomically to ``path`` with permissions ``mode``.

    Returns the path written (``realpath(folder)/name``). Raises
    :class:`~dualtrack.errors.PreferencesError` (cause chained); never leaves a temp file behind.
    """
    folder, name = _split_target(path)
    return _write_atomic(folder, name, _validated_bytes(prefs), mode)


def write_file_atomic(path: Union[str, "os.PathLike[str]"], data: bytes, *, mode: int = 0o600,
                      what: str = "the file") -> str:
    """Write ``data`` to ``path`` atomically, with the guarantees of the preferences writer (a
    temp file in the same folder, fsynced, renamed over the target). For the other files the
    adapter keeps beside the preferences (its learned state). Raises
    :class:`~dualtrack.errors.PreferencesError` naming the file and ``what`` it holds."""
    folder, name = _split_target(path)
    return _write_atomic(folder, name, data, mode, what)


class PreferencesWriter:
    """Publishes preferences to one file, numbering them.

    The folder is resolved once (``realpath``) at construction; the writer
    only ever creates files inside it. Leftover temp files of a previous
    writer (killed mid-write) are removed at construction::

        writer = PreferencesWriter("/run/dualtrack/preferences.json")
        written = writer.publish(prefs)   # written.sequence == previous + 1
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"], *, mode: int = 0o644,
                 clock: Optional[Clock] = None, logger: Optional[logging.Logger] = None) -> None:
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise ValueError(f"mode: expected permission bits such as 0o644, got {mode!r}")
        self.folder, self.name = _split_target(path)
        self.path = os.path.join(self.folder, self.name)
        self.mode = mode
        self._clock = clock or SYSTEM_CLOCK
        self._log = logger or _log
        self._lock = threading.Lock()
        self._warned_expired = False
        self._sequence = self._existing_sequence()
        self.cleanup_stale_temp_files()

    @property
    def sequence(self) -> int:
        """The sequence number of the last document written (or found at start)."""
        return self._sequence

    def _existing_sequence(self) -> int:
        try:
            if not stat.S_ISREG(os.lstat(self.path).st_mode):
                return 0
            return read_preferences(self.path).sequence
        except (OSError, PreferencesError):
            return 0

    def publish(self, prefs: Preferences) -> Preferences:
        """Write ``prefs`` with the next sequence number; return what was written."""
        with self._lock:
            numbered = dataclasses.replace(prefs, sequence=self._sequence + 1)
            expired = numbered.valid_until < self._clock.time()
            if expired and not self._warned_expired:  # once per episode, not per cycle
                self._log.warning("publishing preferences to %s that expired at %s; readers will "
                                  "use safe defaults", self.path, iso_time(numbered.valid_until))
            self._warned_expired = expired
            _write_atomic(self.folder, self.name, _validated_bytes(numbered), self.mode)
            self._sequence = numbered.sequence
            return numbered

    def cleanup_stale_temp_files(self, max_age_seconds: float = 60.0) -> List[str]:
        """Remove this target's ``.<name>.<hex>.tmp`` files older than ``max_age_seconds``.

        Ages compare file mtimes with the system's wall clock (mtimes are set by
        the kernel, not by an injected clock). Returns the paths removed;
        errors are logged, never raised.
        """
        pattern = _temp_pattern(self.name)
        now = SYSTEM_CLOCK.time()
        removed: List[str] = []
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return removed
        for entry in entries:
            if not pattern.match(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode) or now - st.st_mtime < max_age_seconds:
                    continue
                os.unlink(entry.path)  # a symlink is removed itself, its target untouched
                removed.append(entry.path)
            except FileNotFoundError:
                continue
            except OSError as err:
                self._log.warning("could not remove stale temp file %s: %s", entry.path, err)
        if removed:
            self._log.info("removed %d stale preferences temp file(s) in %s", len(removed), self.folder)
        return removed


__all__ = ["PreferencesWriter", "write_file_atomic", "write_preferences"]
