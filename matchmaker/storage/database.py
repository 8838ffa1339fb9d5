"""The SQLite file behind the matchmaker: connections, migrations, and group commit.

One WAL-mode file, two ways in:

- a *reader*, an aiosqlite connection for queries, so that web pages and listings never wait
  behind commits;
- a *writer* through which every change goes, one transaction at a time. Group commits (below)
  run in a process of their own (`writer`), so that SQLite never waits on the event loop for
  Python's global lock; `exclusive` and `planned` jobs run on a connection owned by one thread.
  Each transaction is handed over in a single call, whatever its size, because every hand-over
  costs a trip through the event loop, and under load that trip is the bottleneck.

Changes reach the writer as `Batch`es of rows for known `Statement`s. The writer merges every
batch that arrived while it was busy into one transaction, runs each statement once with
`executemany` (in the statements' fixed order), commits, and only then resolves the waiting
callers: every match is committed before its answer, yet concurrent requests share one commit.
A guarded statement is a compare-and-set ("... WHERE state = ?"); when a guard touches fewer rows
than it was given, the whole group is rolled back and its batches are replayed one at a time, so
only the stale one fails (with `StaleWrite`) and the others still commit.

A batch may carry `on_commit` callbacks (bring memory in step with what was just committed) and
`on_failure` callbacks (undo what a request changed in memory ahead of its commit). Both run on
the event loop in the writer, before the waiting caller resumes and before any later write
begins; failure callbacks of a failed group run newest batch first, so that a change built on
another one's uncommitted state is undone before the state it was built on.

Work that is not a batch of rows goes through `exclusive`: a plain function run in the writer
thread inside its own transaction. Anything it needs from the matchmaker's memory is decided
by `planned` jobs on the event loop, at their turn in the writer's queue, so that the decision
sees every earlier commit and nothing else touches memory from the writer thread.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from .schema import MIGRATIONS, SCHEMA_VERSION
from .writer import Group, WriterGone, WriterProcess, configure, transaction

log = logging.getLogger(__name__)
T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]


class StorageError(RuntimeError):
    """The database could not be opened or written; the message says what to do."""


class StaleWrite(StorageError):
    """A guarded update found its row in another state than expected (a late or duplicate write)."""


@dataclass(frozen=True, eq=False)
class Statement:
    """One SQL statement that batches may contribute rows to.

    `order` fixes when it runs within a group commit (lower first); `guarded` statements must
    touch exactly one row per parameter row, or the batch that gave the row is refused. `fold`,
    when given, turns the rows that a whole group gave into the rows the SQL runs with (say,
    one accumulated row per key instead of one per request); it is never guarded.
    """

    name: str
    sql: str
    order: int
    guarded: bool = False
    fold: Callable[[list[Sequence[Any]]], list[Sequence[Any]]] | None = None


@dataclass
class Batch:
    """The rows one request wants committed together, all or nothing."""

    rows: dict[Statement, list[Sequence[Any]]] = field(default_factory=dict)
    after: list[Callable[[], None]] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)

    def on_commit(self, callback: Callable[[], None]) -> Batch:
        """Run `callback` on the event loop right after this batch commits, before any later
        write begins: in-memory state follows the database in exactly the order of its commits."""
        self.after.append(callback)
        return self

    def on_failure(self, callback: Callable[[], None]) -> Batch:
        """Run `callback` if this batch is refused (StaleWrite) or its write fails, before its
        caller hears of it and before any later write begins; a batch's callbacks run newest
        first. It is for undoing in memory what the request changed ahead of the commit. A
        caller that is cancelled while waiting does not undo anything: its batch still
        commits."""
        self.undo.append(callback)
        return self

    def add(self, statement: Statement, params: Sequence[Any]) -> Batch:
        self.rows.setdefault(statement, []).append(params)
        return self

    def extend(self, statement: Statement, params: Iterable[Sequence[Any]]) -> Batch:
        self.rows.setdefault(statement, []).extend(params)
        return self

    def __bool__(self) -> bool:
        return any(self.rows.values()) or bool(self.after)


@dataclass
class _Pending:
    future: asyncio.Future
    batch: Batch | None = None
    plan: Callable[[], Job] | None = None
    after: Callable[[Any], None] | None = None
    stop: bool = False


class Database:
    """The matchmaker's SQLite file, opened for group-committed writes and concurrent reads."""

    def __init__(self, path: Path, writer: sqlite3.Connection, process: WriterProcess,
                 thread: concurrent.futures.ThreadPoolExecutor, reader: aiosqlite.Connection,
                 max_group: int) -> None:
        self.path = path
        self.reader = reader
        self._writer = writer
        self._process = process
        self._thread = thread
        self._max_group = max_group
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="floe-db-writer")
        self.commits = 0
        self.batches_committed = 0
        self._closing = False

    @classmethod
    async def open(cls, path: str | Path, *, durability: str = "full",
                   max_group: int = 1000) -> Database:
        """Open (creating and migrating when needed) the database at `path`."""
        path = Path(path)
        if durability not in ("full", "normal"):
            raise StorageError(f'durability must be "full" or "normal", got {durability!r}')
        thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="floe-db-writer")
        loop = asyncio.get_running_loop()
        try:
            writer = await loop.run_in_executor(thread, _connect, path, durability)
        except BaseException:
            thread.shutdown()
            raise
        process = WriterProcess(path, durability)
        try:
            await loop.run_in_executor(thread, process.start)
        except BaseException as exc:
            await loop.run_in_executor(thread, writer.close)
            thread.shutdown()
            if isinstance(exc, WriterGone):
                raise StorageError(str(exc)) from exc
            raise
        try:
            reader = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True,
                                             isolation_level=None)
            await reader.execute("PRAGMA busy_timeout = 10000")
            reader.row_factory = aiosqlite.Row
        except BaseException:
            await loop.run_in_executor(thread, process.close)
            await loop.run_in_executor(thread, writer.close)
            thread.shutdown()
            raise
        return cls(path, writer, process, thread, reader, max_group)

    async def close(self) -> None:
        if self._task.done() or self._closing:
            return
        self._closing = True
        self._pending.append(_Pending(asyncio.get_running_loop().create_future(), stop=True))
        self._wakeup.set()
        await self._task
        await self.reader.close()
        await asyncio.get_running_loop().run_in_executor(self._thread, self._process.close)
        await asyncio.get_running_loop().run_in_executor(self._thread, self._writer.close)
        self._thread.shutdown()

    async def write(self, batch: Batch) -> None:
        """Commit `batch` (shared with concurrent batches); raises StaleWrite if a guard failed."""
        if not batch:
            return
        await self._enqueue(_Pending(asyncio.get_running_loop().create_future(), batch=batch))

    async def write_each(self, batches: Sequence[Batch]) -> list[Exception | None]:
        """Commit several batches, each all or nothing on its own but queued together, so that
        they share a group commit: for each, None once it is committed, or the exception that
        refused it (StaleWrite for a failed guard, StorageError when the write failed)."""
        self._check_open()
        loop = asyncio.get_running_loop()
        queued = []
        for batch in batches:
            item = None
            if batch:
                item = _Pending(loop.create_future(), batch=batch)
                self._pending.append(item)
            queued.append(item)
        self._wakeup.set()
        results: list[Exception | None] = []
        for item in queued:
            try:
                if item is not None:
                    await item.future
                results.append(None)
            except Exception as exc:
                results.append(exc)
        return results

    def write_later(self, batch: Batch) -> None:
        """Queue `batch` for the next group commit without waiting for it (for derived facts,
        such as a dataset's status, that the next start recomputes anyway); failures are logged."""
        if not batch:
            return
        self._check_open()
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(_log_failure)
        self._pending.append(_Pending(future, batch=batch))
        self._wakeup.set()

    async def exclusive(self, job: Job[T], after: Callable[[T], None] | None = None) -> T:
        """Run `job(connection)` in the writer thread in a transaction of its own and commit it;
        then `after(result)` on the event loop, before any later write begins. `job` must use
        only the connection and what it was given, never the matchmaker's memory."""
        return await self.planned(lambda: job, after)

    async def planned(self, plan: Callable[[], Job[T]],
                      after: Callable[[T], None] | None = None) -> T:
        """Like `exclusive`, but the job is made by `plan()` on the event loop at its turn in
        the writer's queue, so it can decide from memory that reflects every earlier commit."""
        return await self._enqueue(_Pending(asyncio.get_running_loop().create_future(),
                                            plan=plan, after=after))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        """Rows of a read-only query, from the reader connection."""
        return list(await self.reader.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    def _check_open(self) -> None:
        if self._task.done() or self._closing:
            raise StorageError(f"the database {self.path} is closed")

    async def _enqueue(self, item: _Pending) -> Any:
        self._check_open()
        self._pending.append(item)
        self._wakeup.set()
        return await item.future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                head = self._pending[0]
                if head.stop:
                    self._pending.popleft()
                    head.future.set_result(None)
                    return
                if head.plan is not None:
                    self._pending.popleft()
                    await self._run_planned(head)
                    continue
                group = []
                while (self._pending and self._pending[0].batch is not None
                       and len(group) < self._max_group):
                    group.append(self._pending.popleft())
                await self._commit_group(group)

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    async def _run_planned(self, item: _Pending) -> None:
        try:
            job = item.plan()
            result = await self._in_thread(transaction, self._writer, job)
        except BaseException as exc:
            _fail(item.future, exc)
            return
        self.commits += 1
        try:
            if item.after is not None:
                item.after(result)
        except BaseException as exc:
            log.exception("in-memory update after a commit failed")
            _fail(item.future, exc)
            return
        _succeed(item.future, result)

    async def _commit_group(self, group: list[_Pending]) -> None:
        merged: dict[Statement, list[Sequence[Any]]] = {}
        for item in group:
            for statement, rows in item.batch.rows.items():
                merged.setdefault(statement, []).extend(rows)
        try:
            await self._in_thread(_apply, self._process, merged)
        except StaleWrite:
            if len(group) == 1:
                _undo(group[0].batch)
                _fail(group[0].future, StaleWrite(_stale_message(group[0].batch)))
                return
            for item in group:  # replay one by one so that only the stale batch fails
                await self._commit_group([item])
            return
        except BaseException as exc:
            log.exception("database write failed")
            for item in reversed(group):
                _undo(item.batch)
            for item in group:
                _fail(item.future, StorageError(f"the database write failed: {exc}"))
            return
        self.commits += 1
        self.batches_committed += len(group)
        for item in group:
            try:
                for callback in item.batch.after:
                    callback()
            except BaseException as exc:
                log.exception("in-memory update after a commit failed")
                _fail(item.future, exc)
                continue
            _succeed(item.future, None)


# -- in the writer thread ---------------------------------------------------------------------

def _apply(process: WriterProcess, merged: dict[Statement, list[Sequence[Any]]]) -> None:
    """Commit a group through the writer process (see `writer`)."""
    group: Group = []
    for statement in sorted(merged, key=lambda s: s.order):
        rows = merged[statement]
        if statement.fold is not None:
            rows = statement.fold(rows)
        group.append((statement.name, statement.sql, statement.guarded, rows))
    try:
        stale = process.commit(group)
    except WriterGone as exc:
        raise StorageError(str(exc)) from exc
    if stale is not None:
        raise StaleWrite(stale)


def _connect(path: Path, durability: str) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"cannot open the database {path}: {exc}; check that the "
                           "directory exists and is writable") from exc
    try:
        if configure(conn, durability).lower() != "wal":
            raise StorageError("the database could not switch to WAL mode (is it on a network "
                               "file system?); put it on a local disk")
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"{path} has schema version {version}, newer than this floe understands "
            f"({SCHEMA_VERSION}); upgrade floe or point it at another database")
    for number in range(version + 1, SCHEMA_VERSION + 1):
        log.info("migrating %s to schema version %d", path, number)

        def migrate(conn: sqlite3.Connection, number: int = number) -> None:
            for sql in _split(MIGRATIONS[number - 1]):
                conn.execute(sql)
            conn.execute(f"PRAGMA user_version = {number}")

        transaction(conn, migrate)


def _split(script: str) -> list[str]:
    """The statements of a migration script (none of ours has ';' inside a literal)."""
    return [s.strip() for s in script.split(";") if s.strip()]


# -- on the event loop ------------------------------------------------------------------------

def _stale_message(batch: Batch) -> str:
    names = ", ".join(s.name for s in batch.rows if s.guarded)
    return f"a guarded update found its row changed meanwhile ({names})"


def _undo(batch: Batch) -> None:
    for callback in reversed(batch.undo):
        try:
            callback()
        except Exception:
            log.exception("undoing a failed write in memory failed")


def _log_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a background write failed: %s", future.exception())


def _succeed(future: asyncio.Future, result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
