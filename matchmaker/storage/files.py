"""The database file as the server finds it: whether it is floe's, and whether a server uses it.

floe stamps its databases with SQLite's application id ("floe" in ASCII). A directory, a file
that SQLite cannot read, another program's database, or a floe database newer than this floe is
refused with one sentence before anything is written to it (SQLite would otherwise switch the
file to WAL mode and floe would add its tables beside the other program's). A floe database made
before the stamp (schema version 1 or more, with floe's tables) is stamped when it is next
migrated or opened for writing.

One server at a time: `floe server` holds an exclusive lock (flock) on `<database>.lock` for as
long as it runs, and a second one on the same file is refused, naming the first one's process.
The admin commands (`floe user`, `floe site`) do not take it: they are meant to run beside the
server.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path

from .errors import StorageError
from .schema import SCHEMA_VERSION

APPLICATION_ID = 0x666C6F65  # "floe"
FLOE_TABLES = frozenset({"users", "sites", "tokens", "datasets", "jobs", "tasks", "pilots",
                         "attempts"})
_FIX = "give --db the matchmaker's database file, or a path where a new one can be made"


def schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """The floe schema version of the database open on `conn` (0: a new, empty file); raises
    StorageError, changing nothing, if the file is not a database this floe may use."""
    try:
        application = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"{path} is not an SQLite database ({exc}); {_FIX}") from None
    ours = application == APPLICATION_ID or (application == 0 and version > 0
                                              and tables >= FLOE_TABLES)
    if not ours and (application or version or tables):
        held = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise StorageError(f"{path} is not a floe database (it holds another program's "
                           f"{'tables: ' + held if tables else 'data'}); floe leaves it as it "
                           f"is: {_FIX}")
    if version > SCHEMA_VERSION:
        raise StorageError(f"{path} has schema version {version}, newer than this floe "
                           f"understands ({SCHEMA_VERSION}); upgrade floe or point it at "
                           "another database")
    return version


def stamp(conn: sqlite3.Connection) -> None:
    """Mark the database open on `conn` as floe's (inside the caller's transaction)."""
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")


def check(path: Path) -> None:
    """Refuse, with one sentence, a `path` the server could not use as its database; a path
    that does not exist yet is fine (the database is made there)."""
    if path.is_dir():
        raise StorageError(f"{path} is a directory; give --db a file, such as "
                           f"{path / 'floe.sqlite'}")
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the database {path}: {exc}; check that it is "
                           "readable") from None
    try:
        schema_version(conn, path)
    finally:
        conn.close()


class ServerLock:
    """The lock that makes a server the only one on its database (see the module docstring)."""

    def __init__(self, database: Path) -> None:
        self.path = Path(f"{database}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise StorageError naming the server that holds it."""
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot make the lock file {self.path}: {exc.strerror}; check "
                               "that its directory is writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            database = str(self.path)[:-len(".lock")]
            raise StorageError(f"the database {database} is in use by another floe server "
                               f"({holder}); stop that one, or give this one another --db"
                               ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Let the lock go. The file stays (removing it would let a server starting meanwhile
        lock a file that the next one no longer finds)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
