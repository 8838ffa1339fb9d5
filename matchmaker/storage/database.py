"""The SQLite file behind the matchmaker: connections, migrations, and group commit.

One WAL-mode file, two ways in:

- a *reader*, an aiosqlite connection for queries, so that web pages and listings never wait
  behind commits;
- a *writer* through which every change goes, one transaction at a time. Group commits (below)
  run in a process of their own (`writer`), so that SQLite never waits on the event loop for
  Python's global lock; `exclusive` and `planned` jobs run on a connection owned by one thread.

Changes reach the writer as `Batch`es of rows for known `Statement`s. A request's batches are
sent to the writer process as one message, without waiting for the group before it (those
queued behind a `planned` job or a restarting writer go together once it is done); the process
merges every batch that arrived while it was busy into one transaction, runs each statement
once with `executemany` (in the statements' fixed order), commits, and answers; only then are
the waiting callers resolved: every match is committed before its answer, yet concurrent
requests share one commit. A guarded statement is a compare-and-set ("... WHERE state = ?");
when a guard touches fewer rows than it was given, the whole group is rolled back and its
batches are replayed one at a time, so only the stale one fails (with `StaleWrite`) and the
others still commit.

A batch may carry `on_commit` callbacks (bring memory in step with what was just committed) and
`on_failure` callbacks (undo what a request changed in memory ahead of its commit). Both run on
the event loop as the answer arrives, in the order the batches were sent, before the waiting
caller resumes; failure callbacks of a failed group run newest batch first, so that a change
built on another one's uncommitted state is undone before the state it was built on.

Work that is not a batch of rows goes through `exclusive`: a plain function run in the writer
thread inside its own transaction, once every batch queued before it is answered and before any
queued after it is sent. Anything it needs from the matchmaker's memory is decided by `planned`
jobs on the event loop at that turn, so that the decision sees every earlier commit and nothing
else touches memory from the writer thread.
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
from .writer import Result, Statement, WriterGone, WriterProcess, configure, transaction

log = logging.getLogger(__name__)
T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]


class StorageError(RuntimeError):
    """The database could not be opened or written; the message says what to do."""


class StaleWrite(StorageError):
    """A guarded update found its row in another state than expected (a late or duplicate write)."""


@dataclass
class Batch:
    """The rows one request wants committed together, all or nothing."""

    rows: dict[Statement, list[Sequence[Any]]] = field(default_factory=dict)
    after: list[Callable[[], None]] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)

    def on_commit(self, callback: Callable[[], None]) -> Batch:
        """Run `callback` on the event loop right after this batch commits, before the answer of
        any later batch is handled: in-memory state follows the database in exactly the order
        of its commits."""
        self.after.append(callback)
        return self

    def on_failure(self, callback: Callable[[], None]) -> Batch:
        """Run `callback` if this batch is refused (StaleWrite) or its write fails, before its
        caller hears of it and before the answer of any later batch is handled; a batch's
        callbacks run newest first. It is for undoing in memory what the request changed ahead
        of the commit. A caller that is cancelled while waiting does not undo anything: its
        batch still commits."""
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
        self._inflight: collections.deque[_Pending] = collections.deque()  # sent, unanswered
        self._answered = asyncio.Event()  # set whenever nothing is in flight
        self._answered.set()
        self._wakeup = asyncio.Event()
        self._holding = False  # the writer task is at work that later batches must wait for
        self._attach()
        self._task = asyncio.create_task(self._run(), name="floe-db-writer")
        self.commits = 0
        self.batches_committed = 0
        self._closing = False

    @classmethod
    async def open(cls, path: str | Path, *, durability: str = "full", cache: int = 64 * 2**20,
                   max_group: int = 1000) -> Database:
        """Open (creating and migrating when needed) the database at `path`; the writer
        process keeps up to `cache` bytes of it in memory."""
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
        process = WriterProcess(path, durability, cache, max_group)
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
            await loop.run_in_executor(thread, WriterProcess.close, process.detach())
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
        await self._in_thread(WriterProcess.close, self._process.detach())
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
        queued = [_Pending(loop.create_future(), batch=batch) if batch else None
                  for batch in batches]
        self._queue([item for item in queued if item is not None])
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
        self._queue([_Pending(future, batch=batch)])

    async def exclusive(self, job: Job[T], after: Callable[[T], None] | None = None) -> T:
        """Run `job(connection)` in the writer thread in a transaction of its own and commit it;
        then `after(result)` on the event loop, before any later write is sent. `job` must use
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
        self._queue([item])
        return await item.future

    def _queue(self, items: list[_Pending]) -> None:
        """Batches go straight to the writer process when nothing waits ahead of them (a trip
        through the writer task would cost each answer a turn of the event loop, and under load
        a turn is milliseconds); anything else waits its turn in the writer task's queue."""
        if (not self._pending and not self._holding and self._process.alive
                and all(item.batch is not None for item in items)):
            self._hand_over(items)
            return
        self._pending.extend(items)
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                head = self._pending[0]
                self._holding = True  # batches queued meanwhile wait behind this work
                try:
                    if head.stop or head.plan is not None:
                        await self._answered.wait()  # a planned job sees every earlier commit
                        self._pending.popleft()
                        if head.stop:
                            head.future.set_result(None)
                            return
                        await self._run_planned(head)
                        continue
                    group = []
                    while (self._pending and self._pending[0].batch is not None
                           and len(group) < self._max_group):
                        group.append(self._pending.popleft())
                    await self._send(group)
                finally:
                    self._holding = False

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

    async def _send(self, group: list[_Pending]) -> None:
        """Hand `group` to the writer process (started again first if it died)."""
        process = self._process
        if not process.alive:
            await self._answered.wait()  # a dead writer's unanswered batches are failed first
            WriterProcess.close(process.detach())
            try:
                await self._in_thread(process.start)
            except WriterGone as exc:
                self._refuse(group, str(exc))
                return
            self._attach()
        self._hand_over(group)

    def _attach(self) -> None:
        self._process.attach(asyncio.get_running_loop(), self._on_results, self._on_gone)

    def _hand_over(self, group: list[_Pending]) -> None:
        self._inflight.extend(group)
        self._answered.clear()
        self._process.send([item.batch.rows for item in group])

    def _on_results(self, results: list[Result], commits: int) -> None:
        """The writer's answer for the oldest `len(results)` batches in flight."""
        group = [self._inflight.popleft() for _ in results]
        self.commits += commits
        if results and all(r is not None and r[0] == "error" for r in results):
            log.error("database write failed: %s", results[0][1])
            self._refuse(group, f"the database write failed: {results[0][1]}")
        else:
            for item, result in zip(group, results, strict=True):
                if result is None:
                    self.batches_committed += 1
                    _commit_callbacks(item)
                elif result[0] == "stale":
                    _undo(item.batch)
                    _fail(item.future, StaleWrite(_stale_message(item.batch)))
                else:
                    log.error("database write failed: %s", result[1])
                    self._refuse([item], f"the database write failed: {result[1]}")
        if not self._inflight:
            self._answered.set()

    def _on_gone(self, reason: str) -> None:
        """The writer died: every batch in flight is refused."""
        log.error("%s", reason)
        group = list(self._inflight)
        self._inflight.clear()
        self._refuse(group, reason)
        self._answered.set()

    @staticmethod
    def _refuse(group: list[_Pending], reason: str) -> None:
        """Fail `group` with `reason`, undoing its changes to memory newest first."""
        for item in reversed(group):
            _undo(item.batch)
        for item in group:
            _fail(item.future, StorageError(reason))


# -- in the writer thread ---------------------------------------------------------------------

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


def _commit_callbacks(item: _Pending) -> None:
    try:
        for callback in item.batch.after:
            callback()
    except BaseException as exc:
        log.exception("in-memory update after a commit failed")
        _fail(item.future, exc)
        return
    _succeed(item.future, None)


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
