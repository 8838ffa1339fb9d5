"""The launcher's directory: what a pilot's job script made for it, and what killed ones left.

Every pilot job's script (see `floe.plugins.jobs`) makes a private `floe-pilot.XXXXXX` under
$TMPDIR (else /tmp), writes the pilot, its token and its CA certificate there, starts the pilot
with `--launch-dir` naming it, and removes it when the pilot ends. A launcher killed outright
(SIGKILL, as a batch system ends a job that outlived its grace, or as the OOM killer picks it)
removes nothing: on a node whose $TMPDIR the batch system does not clean, each such job left a
directory, and with it a copy of the pilot, behind for good.

So the pilot holds an exclusive lock on `lock` in its launcher's directory while it lives (the
kernel lets it go however the pilot ends), and a pilot starting removes the directories beside
its own that a killed one left: named as launchers name them, this user's, holding a `lock` that
nobody holds, and unchanged for `MIN_AGE` (the lock is made and taken in the same moment; the
age only spares a directory whose pilot is taking it right now). A directory without `lock`
(made by a launcher whose pilot never got that far, or by another program) is never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import time
from pathlib import Path

PREFIX = "floe-pilot."
"""How the launcher names its directory (`mktemp -d "$TMPDIR/floe-pilot.XXXXXX"`)."""
LOCK = "lock"
MIN_AGE = 300.0
"""Seconds a launcher's directory must have been left unchanged before it may be removed."""


class LaunchDir:
    """The directory the launcher made for this pilot: `hold()` it, then `sweep()` beside it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        self._lock: int | None = None

    def hold(self) -> None:
        """Take this pilot's lock in its directory, for as long as the pilot lives. Raises
        OSError (naming the file) when it cannot: another pilot holds it, or the directory is
        not there."""
        lock = self.path / LOCK
        handle = os.open(lock, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(handle)
            raise OSError(err.errno, f"{lock} is locked by another process, which uses this "
                                     "launcher's directory") from None
        self._lock = handle

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove the launchers' directories beside this one whose pilot is gone (see the
        module); returns their paths. What cannot be read or removed is left as it is."""
        now = time.time() if now is None else now
        removed = []
        try:
            entries = [entry for entry in os.scandir(self.path.parent)
                       if entry.name.startswith(PREFIX) and entry.path != str(self.path)]
        except OSError:
            return removed
        for entry in entries:
            if _abandoned(entry, now):
                shutil.rmtree(entry.path, ignore_errors=True)
                if not os.path.lexists(entry.path):
                    removed.append(entry.path)
        return removed

    def close(self) -> None:
        """Let the lock go (the launcher then removes the directory)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _abandoned(entry: os.DirEntry, now: float) -> bool:
    """Whether `entry` is a launcher's directory of this user, left unchanged for `MIN_AGE`, with
    a `lock` that nobody holds. A lock taken here is let go at once: its pilot is gone, and no
    new one takes a lock in a directory its launcher did not just make."""
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() \
            or now - info.st_mtime < MIN_AGE:
        return False
    try:
        handle = os.open(os.path.join(entry.path, LOCK), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        return False
    finally:
        os.close(handle)
