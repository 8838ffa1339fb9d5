"""The database file: whether it is floe's, whether a server uses it, and opening it for writing
(migrated to this floe's schema).

floe stamps its databases with SQLite's application id ("floe" in ASCII). A directory, a file
that SQLite cannot read, another program's database, or a floe database newer than this floe is
refused with one sentence before anything is written to it (SQLite would otherwise switch the
file to WAL mode and floe would add its tables beside the other program's). A floe database made
before the stamp (schema version 1 or more, with floe's tables) is stamped when it is next
migrated or opened for writing.

One server at a time: `floe server` holds an exclusive lock (flock) on the database file for as
long as it runs, and a second one on the same file (by whatever path) is refused, naming the
first one's process.
The admin commands (`floe user`, `floe site`) do not take it: they are meant to run beside the
server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
from pathlib import Path

from .errors import StorageError
from .schema import MIGRATIONS, SCHEMA_VERSION
from .writer import configure, transaction

PRIVATE = 0o600
"""The mode a new database file is made with: it holds every token's hash, readable by this
account alone whatever the umask (SQLite gives its -wal and -shm files the same mode)."""

log = logging.getLogger(__name__)

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


def check(path: Path, integrity: bool = False) -> int | None:
    """Refuse, with one sentence, a `path` the server could not use as its database; a path
    that does not exist yet is fine (the database is made there). A refused file is left as it
    was: the `-wal` and `-shm` files that SQLite makes beside it to read it go again. With
    `integrity`, SQLite's quick check of the file must pass too (`floe server --check`). The
    file's schema version; None where there is no file yet."""
    if path.is_dir():
        raise StorageError(f"{path} is a directory; give --db a file, such as "
                           f"{path / 'floe.sqlite'}")
    if not path.exists():
        return None
    sidecars = [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm")]
    made = [sidecar for sidecar in sidecars if not sidecar.exists()]
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the database {path}: {exc}; check that it is "
                           "readable") from None
    try:
        version = schema_version(conn, path)
        if integrity:
            _quick_check(conn, path)
    except StorageError:
        conn.close()
        for sidecar in made:
            sidecar.unlink(missing_ok=True)
        raise
    conn.close()
    return version


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    try:
        found = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as exc:
        found = [str(exc)]
    if found != ["ok"]:
        raise StorageError(f"{path} fails SQLite's quick check ({'; '.join(found)}); stop "
                           "the server and restore the database from a copy made with `floe "
                           "db backup`")


class ServerLock:
    """The lock that makes a server the only one on its database (see the module docstring).

    The lock is taken on the database file itself (flock, which SQLite's own locks do not
    touch), so that a second server is refused however it names the file: through a symbolic
    link, or another hard link. Who holds it is written to `<database>.lock` beside the file the
    links lead to, for the refusal to name it."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.note = Path(f"{os.path.realpath(database)}.lock")
        self._fd: int | None = None

    def in_use(self) -> str | None:
        """The refusal a server starting now would meet (another one holds the lock), or None;
        the file is only opened to read and let go at once (`floe server --check`)."""
        import fcntl

        try:
            fd = os.open(self.database, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return self._in_use()
        finally:
            os.close(fd)  # which lets go of the lock, had it been taken
        return None

    def _in_use(self) -> str:
        try:
            holder = self.note.read_text().strip()
        except OSError:
            holder = ""
        return (f"the database {self.database} is in use by another floe server "
                f"({holder or 'another process'}); stop that one, or give this one another --db")

    def acquire(self) -> None:
        """Take the lock (making the database file when it does not exist yet), or raise
        StorageError naming the server that holds it."""
        import fcntl

        try:
            self.database.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.database, os.O_RDWR | os.O_CREAT, PRIVATE)
        except OSError as exc:
            raise StorageError(f"cannot open the database {self.database}: {exc.strerror}; "
                               "check that its directory is writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StorageError(self._in_use()) from None
        self._fd = fd
        try:
            self.note.write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")
        except OSError as exc:  # only the refusal's words depend on it
            log.warning("cannot write %s: %s", self.note, exc.strerror)

    def release(self) -> None:
        """Let the lock go (at the server's end: closing the file drops this process's SQLite
        locks on it too). The note stays: removing it would race with a server starting."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def connect(path: Path, durability: str) -> sqlite3.Connection:
    """The writer thread's connection, to a database checked to be floe's (nothing is written
    to one that is not) and migrated to this floe's schema."""
    check(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE))
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"cannot open the database {path}: {exc}; check that the "
                           "directory exists and is writable") from exc
    try:
        version = schema_version(conn, path)
        if configure(conn, durability).lower() != "wal":
            raise StorageError("the database could not switch to WAL mode (is it on a network "
                               "file system?); put it on a local disk")
        _migrate(conn, path, version)
    except sqlite3.Error as exc:
        conn.close()
        raise StorageError(f"cannot use the database {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path, version: int) -> None:
    """Bring the database from schema `version` to this floe's, stamped as floe's."""
    for number in range(version + 1, SCHEMA_VERSION + 1):
        log.info("migrating %s to schema version %d", path, number)

        def migrate(conn: sqlite3.Connection, number: int = number) -> None:
            for sql in _split(MIGRATIONS[number - 1]):
                conn.execute(sql)
            conn.execute(f"PRAGMA user_version = {number}")
            stamp(conn)

        transaction(conn, migrate)
    if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        transaction(conn, stamp)  # made before floe stamped its databases


def _split(script: str) -> list[str]:
    """The statements of a migration script (none of ours has ';' inside a literal)."""
    return [s.strip() for s in script.split(";") if s.strip()]
