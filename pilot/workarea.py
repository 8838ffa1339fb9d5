"""The pilot's directory inside the slot's scratch: the outbox and the tasks' scratch directories.

`<scratch>/floe-pilot-<uid>/` belongs to one user: a batch system's scratch (often plain `/tmp`)
is shared by every user of the node, and the outbox holds passkeys, so the directory is private
(mode 0700) and one that another user owns is refused, never used. Its `outbox/` is shared by
every pilot of that user that runs on the same scratch directory, one after the other or side by
side, so that a pilot delivers what a killed one left there (never what a live one beside it
kept: `alive`).
Each pilot runs its tasks under `runs/<instance>/` (a directory per lane) and holds an
exclusive lock on `runs/<instance>.lock` while it lives; a pilot starting removes the run
directories whose lock nobody holds any more (what killed pilots left), so they do not eat the
disk it offers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import socket
import stat
from pathlib import Path

from floe.pilot.outbox import Outbox


class WorkAreaError(OSError):
    """The work area cannot be used; the message names the directory and the fix."""


def directory_name() -> str:
    """The name of this user's work area in a scratch directory."""
    return f"floe-pilot-{os.getuid()}"


class WorkArea:
    """`open()` before use, `close()` when the pilot leaves."""

    def __init__(self, scratch: str | Path) -> None:
        self.root = Path(scratch).absolute() / directory_name()
        self.runs = self.root / "runs"
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.run_dir = self.runs / self.instance
        self._lock_path = self.runs / f"{self.instance}.lock"
        self._lock: int | None = None
        self.outbox: Outbox | None = None

    def open(self) -> Outbox:
        """Make the directories, take this pilot's lock, clear what dead pilots left."""
        self._make_private_root()
        self.runs.mkdir(exist_ok=True)
        self.outbox = Outbox(self.root / "outbox", self.instance, self.alive)
        self._lock = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.remove_dead()
        self.run_dir.mkdir()
        return self.outbox

    def _make_private_root(self) -> None:
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            self.root.mkdir(mode=0o700)
        info = self.root.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise WorkAreaError(
                f"{self.root} is not a directory of this user (uid {os.getuid()}): another user "
                "made it, or it is a link; remove it, or give the pilot another scratch "
                "directory")
        if stat.S_IMODE(info.st_mode) != 0o700:
            self.root.chmod(0o700)

    def alive(self, instance: str) -> bool:
        """Whether the pilot `instance` of this work area still runs: it holds its lock."""
        if instance == self.instance:
            return True
        if "/" in instance or instance.startswith("."):
            return False  # no pilot's name
        try:
            handle = os.open(self.runs / f"{instance}.lock", os.O_RDONLY)
        except OSError:
            return False  # gone, its lock removed
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(handle)
        return False

    def lane_dir(self, lane: int) -> Path:
        """The scratch directory of the tasks of one lane of this pilot."""
        return self.run_dir / f"lane{lane}"

    def remove_dead(self) -> list[str]:
        """Remove the run directories of pilots that are gone; returns their instance names."""
        removed = []
        for lock_path in sorted(self.runs.glob("*.lock")):
            if lock_path == self._lock_path:
                continue
            try:
                handle = os.open(lock_path, os.O_RDWR)
            except OSError:
                continue  # another starting pilot removed it first
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its pilot is alive
            finally:
                os.close(handle)
            instance = lock_path.name[:-len(".lock")]
            shutil.rmtree(self.runs / instance, ignore_errors=True)
            with contextlib.suppress(OSError):
                lock_path.unlink()
            removed.append(instance)
        return removed

    def close(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock_path.unlink()
            os.close(self._lock)
            self._lock = None
