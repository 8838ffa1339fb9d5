"""The launcher's directory: what a pilot's job script made for it, and what killed ones left.

Every pilot job's script (see `floe.plugins.jobs`) makes a private `floe-pilot.XXXXXX` under
$TMPDIR (else /tmp), writes the pilot, its token and its CA certificate there, starts the pilot
with `--launch-dir` naming it, and removes it when the pilot ends. A launcher killed outright
(SIGKILL, as a batch system ends a job that outlived its grace, or as the OOM killer picks it)
removes nothing: on a node whose $TMPDIR the batch system does not clean, each such job left a
directory, and with it a copy of the pilot, behind for good.

So the pilot makes `lock` in its launcher's directory, holds an exclusive lock on it while it
lives (the kernel lets it go however the pilot ends) and writes its host's name into it; and a
pilot starting removes the directories beside its own that killed ones left: named as launchers
name them, this user's, unchanged for `MIN_AGE` (the age only spares a directory whose pilot is
taking its lock right now), and either empty (a launcher killed before it wrote anything, or one
of an earlier version whose pilot had read its token) or holding a `lock` of this host that
nobody holds. A `lock` of another host is left alone: where $TMPDIR is shared between nodes,
locks may be only the node's own. A directory holding files but no `lock` (a pilot that never
got that far, or of an earlier version, perhaps alive) is never touched. Removing one, its
`lock` goes last, so that a removal that fails half way is tried again by the next pilot.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import stat
import time
from pathlib import Path

PREFIX = "floe-pilot."
"""How the launcher names its directory (`mktemp -d "$TMPDIR/floe-pilot.XXXXXX"`)."""
LOCK = "lock"
MIN_AGE = 300.0
"""Seconds a launcher's directory must have been left unchanged before it may be removed."""
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class LaunchDir:
    """The directory the launcher made for this pilot: `hold()` it, then `sweep()` beside it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        self._lock: int | None = None

    def hold(self) -> None:
        """Make and take this pilot's lock in its directory, for as long as the pilot lives.
        Raises OSError, naming the file and why, when it cannot (and leaves no `lock` of its
        own making behind, which another pilot would take for a dead one's)."""
        lock = self.path / LOCK
        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            handle = os.open(lock, flags, 0o600)
        except FileExistsError:
            raise OSError(errno.EEXIST, f"{lock} exists: another pilot uses this launcher's "
                                        "directory") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(handle, socket.gethostname().encode())
        except OSError as err:
            os.close(handle)
            with contextlib.suppress(OSError):
                lock.unlink()
            why = "it is locked by another process" if err.errno in _BUSY else \
                f"{err.strerror or err}: the filesystem of {self.path.parent} may not support locks"
            raise OSError(err.errno, f"cannot lock {lock}: {why}") from None
        self._lock = handle

    def sweep(self, now: float | None = None) -> tuple[list[str], list[str]]:
        """Remove the launchers' directories beside this one that killed pilots left (see the
        module), where this one is a launcher's: the paths removed, and what could not be
        removed and why."""
        if not self.path.name.startswith(PREFIX):
            return [], []
        now = time.time() if now is None else now
        removed: list[str] = []
        failed: list[str] = []
        try:
            entries = [entry for entry in os.scandir(self.path.parent)
                       if entry.name.startswith(PREFIX) and entry.path != str(self.path)]
        except OSError:
            return removed, failed
        host = socket.gethostname().encode()
        for entry in entries:
            if not _abandoned(entry, now, host):
                continue
            problem = _remove(entry.path)
            if problem is None:
                removed.append(entry.path)
            else:
                failed.append(f"{entry.path}: {problem}")
        return removed, failed

    def close(self) -> None:
        """Let the lock go (the launcher then removes the directory)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _abandoned(entry: os.DirEntry, now: float, host: bytes) -> bool:
    """Whether `entry` is a launcher's directory of this user, left unchanged for `MIN_AGE`,
    empty or with a `lock` of this host that nobody holds. A lock taken here is let go at once:
    its pilot is gone, and no new one takes a lock in a directory its launcher did not just
    make."""
    try:
        info = entry.stat(follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() \
                or now - info.st_mtime < MIN_AGE:
            return False
        if not os.listdir(entry.path):
            return True
        handle = os.open(os.path.join(entry.path, LOCK), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if os.read(handle, 1024) != host:
            return False
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(handle)


def _remove(path: str) -> str | None:
    """Remove the directory at `path`, its `lock` last; None once it is gone, else why not."""
    try:
        for entry in os.scandir(path):
            if entry.name == LOCK:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, LOCK))
        os.rmdir(path)
    except FileNotFoundError:
        return None  # another pilot starting beside this one removed it first
    except OSError as err:
        return str(err.strerror or err)
    return None
