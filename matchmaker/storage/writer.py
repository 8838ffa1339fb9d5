"""The group-commit writer, in a process of its own, fed as a stream.

Group commits are the matchmaker's hot write path: every match and every report ends in one.
Run from a thread of the server, SQLite gives up Python's global lock for each row's step and
must win it back before the next row, while the event loop holds it for milliseconds at a time
under load; a commit of a few hundred rows then waits on the lock far longer than it works, and
every answer waits on that commit. In a process of its own the writer has its own lock and the
server's second core.

The server streams batches to it as they come: the event loop pickles a request's batches into
one frame and writes it to the child's pipe without waiting, and reads the answers when they
arrive, so no thread and no lock hand-over lies on the path. The child does
the grouping: it takes every frame that arrived while it was committing the last group, merges
their batches into one transaction (each statement once, with `executemany`, in the statements'
fixed order) and answers, for each batch in order, "committed", "stale" (a guarded statement
touched fewer rows than it was given) or the error. A group with a stale batch is rolled back
and its batches replayed one at a time, so that only the stale one fails.

The child is `python -m floe.matchmaker.storage.writer DATABASE DURABILITY CACHE MAX_GROUP`. It
opens the file already migrated by the server, says "ready", and exits when its input closes,
so it never outlives the server, even one that was killed; it ignores SIGTERM and SIGINT, which
reach it with the server's (a service stopped, Ctrl-C), so that the server closes it last.
Frames are a 4-byte length and a pickle.

SQLite copies the WAL back into the database (a checkpoint) inside whichever commit crosses its
threshold, so one commit in fifty took 10 to 20 ms instead of one, and every answer waiting on
it did too. The child turns that off and checkpoints from a thread of its own, on its own
connection, every `CHECKPOINT_INTERVAL`, beside the commits (PASSIVE: it never blocks one).
Commits go on meanwhile, so such a checkpoint never catches up with the end of the WAL, and
SQLite only starts the WAL over from its beginning once all of it is copied: after each one,
the main loop copies the few frames written since, between two groups, and the next commit
starts the WAL over, which keeps the file a few megabytes long.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import floe

T = TypeVar("T")
# What the child answers for one batch: None once committed, ("stale", statement name) or
# ("error", text).
Result = tuple[str, str] | None
# A batch as it crosses the pipe: (statement id, rows) for each statement it gives rows to.
WireBatch = list[tuple[int, Sequence[Sequence[Any]]]]

_ROOT = Path(floe.__file__).resolve().parents[1]
"""Where the `floe` package is, for the child's path: a checkout, or site-packages."""
CHECKPOINT_INTERVAL = 0.5
"""Seconds between the child's checkpoints of the WAL into the database."""
WAL_LIMIT = 32 * 2**20
"""Bytes the WAL file is cut back to when it starts over."""
_HEADER = struct.Struct("!I")
_PIPE_BYTES = 1 << 20


@dataclass(frozen=True, eq=False)
class Statement:
    """One SQL statement that batches may contribute rows to.

    `order` fixes when it runs within a group commit (lower first); `guarded` statements must
    touch exactly one row per parameter row, or the batch that gave the row is refused. `fold`,
    when given, turns the rows that a whole group gave into the rows the SQL runs with (say,
    one accumulated row per key instead of one per request); it is never guarded, and it must
    be a module-level function, since the writer process runs it.
    """

    name: str
    sql: str
    order: int
    guarded: bool = False
    fold: Callable[[list[Sequence[Any]]], list[Sequence[Any]]] | None = None


class WriterGone(RuntimeError):
    """The writer process exited or its pipe broke; the message says how."""


def configure(conn: sqlite3.Connection, durability: str, cache: int = 64 * 2**20) -> str:
    """The settings every writing connection of the matchmaker runs with, with a page cache
    of `cache` bytes; the journal mode SQLite ended up in (the caller insists on "wal")."""
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    conn.execute(f"PRAGMA synchronous = {durability.upper()}")
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA cache_size = -{max(1, cache // 1024)}")  # negative: in KiB
    # A WAL started over is cut back to this, whatever a burst (a large submit) made it.
    conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
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


def commit_batches(conn: sqlite3.Connection, statements: dict[int, Statement],
                   batches: Sequence[WireBatch]) -> tuple[list[Result], int]:
    """Commit `batches` as one group; what each is answered, in order, and how many
    transactions were committed. A group that a stale batch spoils is replayed batch by batch;
    a failed write fails the whole group."""
    try:
        stale = _commit(conn, statements, batches)
    except sqlite3.Error as exc:
        return [("error", f"{exc.__class__.__name__}: {exc}")] * len(batches), 0
    if stale is None:
        return [None] * len(batches), 1
    if len(batches) == 1:
        return [("stale", stale)], 0
    results: list[Result] = []
    commits = 0
    for batch in batches:
        try:
            stale = _commit(conn, statements, [batch])
        except sqlite3.Error as exc:
            results.append(("error", f"{exc.__class__.__name__}: {exc}"))
            continue
        commits += stale is None
        results.append(None if stale is None else ("stale", stale))
    return results, commits


def _commit(conn: sqlite3.Connection, statements: dict[int, Statement],
            batches: Sequence[WireBatch]) -> str | None:
    """One transaction of `batches`; None once committed, else the name of the guarded
    statement that found fewer rows than it was given (everything rolled back)."""
    merged: dict[int, list[Sequence[Any]]] = {}
    for batch in batches:
        for key, rows in batch:
            merged.setdefault(key, []).extend(rows)

    def run(conn: sqlite3.Connection) -> None:
        for key in sorted(merged, key=lambda k: statements[k].order):
            statement, rows = statements[key], merged[key]
            if statement.fold is not None:
                rows = statement.fold(rows)
            cursor = conn.executemany(statement.sql, rows)
            if statement.guarded and cursor.rowcount != len(rows):
                raise _Stale(statement.name)

    try:
        transaction(conn, run)
    except _Stale as stale:
        return stale.args[0]
    return None


class _Frames:
    """Bytes in, whole frames out."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._chunk = memoryview(bytearray(_PIPE_BYTES))

    def read_from(self, fd: int) -> int:
        """Append what the pipe `fd` holds; the bytes read (0: it closed). Read into a buffer
        kept for it: `os.read` of a megabyte maps and unmaps that much each time (25 us a read
        here, against 2)."""
        count = os.readv(fd, [self._chunk])
        self._buffer += self._chunk[:count]
        return count

    def __iter__(self) -> Iterator[bytes]:
        start, buffer = 0, self._buffer
        while len(buffer) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, start)
            end = start + _HEADER.size + size
            if len(buffer) < end:
                break
            yield bytes(buffer[start + _HEADER.size:end])
            start = end
        del buffer[:start]


def _frame(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def _widen(fd: int) -> None:
    """A pipe of 1 MiB instead of 64 KiB, where Linux allows it: fewer partial writes."""
    with contextlib.suppress(AttributeError, OSError):
        import fcntl
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)


class WriterProcess:
    """The server's end of the writer process.

    `start` and `close` block (call them from a thread); everything else runs on the event
    loop that `attach` names. `send` queues batches without waiting; each answer calls
    `on_results(results, commits)` with as many results as the batches it covers, in the order
    they were sent; when the process dies or garbles its answer, `on_gone(why)` (its exit code
    and how it was noticed) is called once, and the batches still unanswered will never be.
    """

    def __init__(self, path: Path, durability: str, cache: int, max_group: int) -> None:
        self.path = path
        self.durability = durability
        self.cache = cache
        self.max_group = max_group
        self._on_results: Callable[[list[Result], int], None] | None = None
        self._on_gone: Callable[[str], None] | None = None
        self._process: subprocess.Popen | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids: dict[Statement, int] = {}
        self._known: set[int] = set()  # statements the running child has been told about
        self._out = bytearray()
        self._waiting_to_write = False
        self._frames = _Frames()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the child and wait for it to open the database; raises WriterGone if it
        cannot."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        # The path as the server resolves it: a relative one is the server's, not the child's.
        process = subprocess.Popen(
            [sys.executable, "-m", "floe.matchmaker.storage.writer", str(self.path.resolve()),
             self.durability, str(self.cache), str(self.max_group)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)
        header = process.stdout.read(_HEADER.size)
        reply = pickle.loads(process.stdout.read(_HEADER.unpack(header)[0])) \
            if len(header) == _HEADER.size else ("error", f"it exited with {process.wait()}")
        if reply != ("ready",):
            process.kill()
            process.wait()
            raise WriterGone(f"the writer process could not open {self.path}: {reply[1]}")
        for pipe in (process.stdin, process.stdout):
            _widen(pipe.fileno())
            os.set_blocking(pipe.fileno(), False)
        self._process = process
        self._known = set()
        self._out.clear()
        self._frames = _Frames()

    def attach(self, loop: asyncio.AbstractEventLoop,
               on_results: Callable[[list[Result], int], None],
               on_gone: Callable[[str], None]) -> None:
        """Read the started child's answers on `loop`, handing them to the callbacks."""
        self._loop, self._on_results, self._on_gone = loop, on_results, on_gone
        loop.add_reader(self._process.stdout.fileno(), self._readable)

    def send(self, batches: Sequence[dict[Statement, list[Sequence[Any]]]]) -> None:
        """Queue `batches` (each statement → its rows) for the child, in order."""
        definitions = {}
        wire: list[WireBatch] = []
        for rows in batches:
            items = []
            for statement, params in rows.items():
                key = self._ids.setdefault(statement, len(self._ids))
                if key not in self._known:
                    definitions[key] = statement
                items.append((key, params))
            wire.append(items)
        # Known to the child only once a frame that defines them is on its way: rows that do
        # not pickle leave nothing behind.
        self._out += _frame(("commit", list(definitions.items()), wire))
        self._known.update(definitions)
        if not self._waiting_to_write:
            self._flush()

    def _flush(self) -> None:
        process = self._process
        if process is None:
            return
        try:
            written = os.write(process.stdin.fileno(), self._out)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._gone(f"its pipe broke ({exc.__class__.__name__})")
            return
        del self._out[:written]
        if self._out and not self._waiting_to_write:
            self._waiting_to_write = True
            self._loop.add_writer(process.stdin.fileno(), self._flush)
        elif not self._out and self._waiting_to_write:
            self._waiting_to_write = False
            self._loop.remove_writer(process.stdin.fileno())

    def _readable(self) -> None:
        process = self._process
        try:
            count = self._frames.read_from(process.stdout.fileno())
        except BlockingIOError:
            return
        except OSError as exc:
            self._gone(f"reading its answer failed ({exc.__class__.__name__})")
            return
        if not count:
            self._gone("it closed its output")
            return
        for frame in self._frames:
            try:
                _, results, commits = pickle.loads(frame)
            except (pickle.UnpicklingError, ValueError, TypeError, EOFError) as exc:
                self._gone(f"its answer could not be read ({exc.__class__.__name__})")
                return
            self._on_results(results, commits)
            if self._process is not process:  # a write made meanwhile found it gone
                return

    def _gone(self, why: str) -> None:
        process = self.detach()
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        code = process.wait()
        self.close(process)
        self._on_gone(f"exit code {code}: {why}")

    def detach(self) -> subprocess.Popen | None:
        """Stop watching the child (on the loop); the process, for `close`."""
        process, self._process = self._process, None
        if process is not None and self._loop is not None:
            self._loop.remove_reader(process.stdout.fileno())
            if self._waiting_to_write:
                self._loop.remove_writer(process.stdin.fileno())
        self._waiting_to_write = False
        self._out.clear()
        return process

    @staticmethod
    def close(process: subprocess.Popen | None) -> None:
        """Close a detached child's input and wait for it to exit."""
        if process is None:
            return
        try:
            process.stdin.close()
            process.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        process.stdout.close()


class Checkpointer(threading.Thread):
    """Checkpoints the WAL of `path` every `interval` seconds on a connection of its own until
    `stop()`; SQLite's step gives up the global lock, so the copying runs beside the commits."""

    def __init__(self, path: str, interval: float = CHECKPOINT_INTERVAL) -> None:
        super().__init__(name="checkpointer", daemon=True)
        self.path = path
        self.interval = interval
        self.checkpoints = 0
        self.catch_up = threading.Event()
        """Set after each checkpoint: the main loop copies what was written meanwhile."""
        self._stopping = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            while not self._stopping.wait(self.interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # tried again at the next interval
                    print(f"floe writer: checkpoint failed: {exc}", file=sys.stderr, flush=True)
                    continue
                self.checkpoints += 1
                self.catch_up.set()
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def _read_frames(fd: int, frames: _Frames) -> list[bytes] | None:
    """Every whole frame available, waiting for at least one; None once the input closed."""
    while True:
        ready = list(frames)
        if ready:
            return ready
        if not frames.read_from(fd):
            return None


def serve(path: str, durability: str, cache: int, max_group: int, requests: int,
          replies: int) -> None:
    """The child's loop: commit what arrived, answer, until the input closes."""
    def answer(message: Any) -> None:
        data = _frame(message)
        while data:
            data = data[os.write(replies, data):]

    try:
        conn = sqlite3.connect(path, isolation_level=None)
        if configure(conn, durability, cache).lower() != "wal":
            raise sqlite3.OperationalError(f"{path} could not switch to WAL mode")
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the Checkpointer's work
    except Exception as exc:  # sent back: the server refuses to start with it
        answer(("error", f"{exc.__class__.__name__}: {exc}"))
        return
    checkpointer = Checkpointer(path)
    checkpointer.start()
    answer(("ready",))
    _widen(requests)
    statements: dict[int, Statement] = {}
    frames = _Frames()
    while (ready := _read_frames(requests, frames)) is not None:
        batches: list[WireBatch] = []
        for frame in ready:
            _, definitions, wire = pickle.loads(frame)
            statements.update(definitions)
            batches.extend(wire)
        if not batches:  # every frame is answered, an empty one too
            answer(("done", [], 0))
        for start in range(0, len(batches), max_group):
            results, commits = commit_batches(conn, statements, batches[start:start + max_group])
            answer(("done", results, commits))
        if checkpointer.catch_up.is_set():
            checkpointer.catch_up.clear()
            with contextlib.suppress(sqlite3.Error):  # the next one tries again
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    checkpointer.stop()
    conn.close()


def _ignore_stop_signals() -> None:
    """The child ends when the server closes its input, never on a signal of its own: systemd
    stops a service by sending SIGTERM to every process of it, and a terminal's Ctrl-C sends
    SIGINT to the whole foreground group, and a writer that died then would refuse the writes
    the server is finishing as it stops. A server killed outright closes the pipe all the same."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


if __name__ == "__main__":
    _ignore_stop_signals()
    serve(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.stdin.fileno(),
          sys.stdout.fileno())
