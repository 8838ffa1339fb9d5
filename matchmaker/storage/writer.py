"""The group-commit writer, in a process of its own.

Group commits are the matchmaker's hot write path: every match and every report ends in one.
Run from a thread of the server, SQLite gives up Python's global lock for each row's step and
must win it back before the next row, while the event loop holds it for milliseconds at a time
under load; a commit of a few hundred rows then waits on the lock far longer than it works, and
every answer waits on that commit. In a process of its own the writer has its own lock and the
server's second core: the server pickles a group's statements and rows, hands them over a pipe
in one write, and is answered "committed", "stale" (a guarded statement touched fewer rows than
it was given; the transaction was rolled back) or the error.

The child is `python -m matchmaker.storage.writer DATABASE DURABILITY`, speaking pickle on its
standard input and output. It opens the file already migrated by the server, and exits when its
input closes, so it never outlives the server, even one that was killed.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

T = TypeVar("T")
# One group: (statement name, SQL, guarded, rows) in the order they run.
Group = list[tuple[str, str, bool, Sequence[Sequence[Any]]]]

_ROOT = Path(__file__).resolve().parents[2]


class WriterGone(RuntimeError):
    """The writer process exited or its pipe broke; the message says how."""


def configure(conn: sqlite3.Connection, durability: str) -> str:
    """The settings every writing connection of the matchmaker runs with; the journal mode
    SQLite ended up in (the caller insists on "wal")."""
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    conn.execute(f"PRAGMA synchronous = {durability.upper()}")
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA cache_size = -65536")
    return mode


def transaction(conn: sqlite3.Connection, job: Callable[[sqlite3.Connection], T]) -> T:
    """Run `job(conn)` in a write transaction and commit it; roll back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = job(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


class _Stale(Exception):
    """A guarded statement of a group found fewer rows than it was given."""


def commit_group(conn: sqlite3.Connection, group: Group) -> str | None:
    """Run `group` in one transaction; None once committed, else the name of the guarded
    statement that found fewer rows than it was given (everything rolled back)."""
    def run(conn: sqlite3.Connection) -> None:
        for name, sql, guarded, rows in group:
            cursor = conn.executemany(sql, rows)
            if guarded and cursor.rowcount != len(rows):
                raise _Stale(name)

    try:
        transaction(conn, run)
    except _Stale as stale:
        return stale.args[0]
    return None


class WriterProcess:
    """The server's side of the writer process. `commit` blocks (call it from a thread); one
    caller at a time."""

    def __init__(self, path: Path, durability: str) -> None:
        self.path = path
        self.durability = durability
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        # The path as the server resolves it: a relative one is the server's, not the child's.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "matchmaker.storage.writer", str(self.path.resolve()),
             self.durability], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        reply = self._exchange(("hello",))
        if reply != ("ready",):
            raise WriterGone(f"the writer process could not open {self.path}: {reply[1]}")

    def commit(self, group: Group) -> str | None:
        """Commit `group`; as `commit_group`. Raises WriterGone if the process is gone (it is
        started again on the next call) and sqlite3.Error for a failed write."""
        if self._process is None or self._process.poll() is not None:
            self.start()
        reply = self._exchange(("commit", group))
        if reply[0] == "committed":
            return None
        if reply[0] == "stale":
            return reply[1]
        raise sqlite3.OperationalError(reply[1])

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.stdin.close()
            process.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        process.stdout.close()

    def _exchange(self, message: tuple) -> tuple:
        process = self._process
        try:
            pickle.dump(message, process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            process.stdin.flush()
            return pickle.load(process.stdout)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            self._process = None
            with contextlib.suppress(OSError):
                process.kill()
            code = process.wait()
            raise WriterGone(f"the database writer process ended in the middle of a write "
                             f"(exit code {code}, {exc.__class__.__name__}); the write is "
                             "refused, and a new writer is started for the next one") from exc


def serve(path: str, durability: str, requests: BinaryIO, replies: BinaryIO) -> None:
    """The child's loop: answer each request until the input closes."""
    conn = None
    while True:
        try:
            message = pickle.load(requests)
        except EOFError:
            break
        try:
            if message[0] == "hello":
                conn = sqlite3.connect(path, isolation_level=None)
                if configure(conn, durability).lower() != "wal":
                    raise sqlite3.OperationalError(f"{path} could not switch to WAL mode")
                reply: tuple = ("ready",)
            else:
                stale = commit_group(conn, message[1])
                reply = ("committed",) if stale is None else ("stale", stale)
        except Exception as exc:  # sent back: the server logs it and fails the group
            reply = ("error", f"{exc.__class__.__name__}: {exc}")
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()
    if conn is not None:
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], sys.stdin.buffer, sys.stdout.buffer)
