"""A task's scratch directory with its two logs open.

The tasks that one lane of the pilot runs one after another share one while each leaves nothing
in it but its logs: making and removing a directory and two files would cost a short task more
than its own run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

STDOUT_NAME = "floe.stdout.log"
STDERR_NAME = "floe.stderr.log"
_LOG_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


class Scratch:
    """A task's scratch directory and its stdout and stderr files, open for appending (and
    reading, for their tails) from `prepare()` until `close()` or `remove()`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        self.stdout_path = self.path / STDOUT_NAME
        self.stderr_path = self.path / STDERR_NAME
        self.logs: tuple[int, int] | None = None
        self._made: tuple[int, int, int, int] = (0, 0, 0, 0)

    def prepare(self) -> tuple[int, int]:
        """The log descriptors for the next task: the logs emptied when they are open already
        and the directory holds nothing else (`reusable()`: checked here, just before the task,
        so that what a process of an earlier task wrote after that task ended is not seen),
        else the directory made anew and the logs created. Raises OSError."""
        if self.logs is not None:
            if self.reusable():
                for fd in self.logs:
                    os.ftruncate(fd, 0)
                return self.logs
            self.remove()
        self.path.mkdir(parents=True, exist_ok=True)
        opened: list[int] = []
        try:
            for path in (self.stdout_path, self.stderr_path):
                opened.append(os.open(path, _LOG_FLAGS, 0o666))
            made = os.stat(self.path)
            self._made = (made.st_ino, made.st_mode, os.fstat(opened[0]).st_ino,
                          os.fstat(opened[1]).st_ino)
        except OSError:
            for fd in opened:
                os.close(fd)
            raise
        self.logs = (opened[0], opened[1])
        return self.logs

    def reusable(self) -> bool:
        """Whether the next task may have this directory as it is: it holds the two logs this
        object opened and nothing else, with the mode it was made with."""
        if self.logs is None:
            return False
        try:
            now = os.stat(self.path)
            with os.scandir(self.path) as entries:
                found = {entry.name: entry.inode() for entry in entries}
        except OSError:
            return False
        directory, mode, stdout, stderr = self._made
        return (now.st_ino, now.st_mode) == (directory, mode) and \
            found == {STDOUT_NAME: stdout, STDERR_NAME: stderr}

    def close(self) -> None:
        """Close the logs; the directory stays as it is."""
        if self.logs is not None:
            for fd in self.logs:
                os.close(fd)
            self.logs = None

    def remove(self) -> None:
        """Close the logs and remove the directory with whatever is in it."""
        self.close()
        for path in (self.stdout_path, self.stderr_path):
            with contextlib.suppress(OSError):
                os.unlink(path)
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(self.path, ignore_errors=True)
