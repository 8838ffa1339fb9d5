"""The SQLite file behind the matchmaker: connections, migrations, and group commit.

Two aiosqlite connections share one WAL-mode file: a *writer* through which every change goes,
and a *reader* for queries, so that web pages and listings never wait behind commits.

Changes reach the writer as `Batch`es of rows for known `Statement`s. The writer merges every
batch that arrived while it was busy into one transaction, runs each statement once with
`executemany` (in the statements' fixed order), commits, and only then resolves the waiting
callers: every match is committed before its answer, yet concurrent requests share one commit.
A guarded statement is a compare-and-set ("... WHERE state = ?"); when a guard touches fewer rows
than it was given, the whole group is rolled back and its batches are replayed one at a time, so
only the stale one fails (with `StaleWrite`) and the others still commit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from .schema import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger(__name__)
T = TypeVar("T")


class StorageError(RuntimeError):
    """The database could not be opened or written; the message says what to do."""


class StaleWrite(StorageError):
    """A guarded update found its row in another state than expected (a late or duplicate write)."""


@dataclass(frozen=True, eq=False)
class Statement:
    """One SQL statement that batches may contribute rows to.

    `order` fixes when it runs within a group commit (lower first); `guarded` statements must
    touch exactly one row per parameter row, or the batch that gave the row is refused.
    """

    name: str
    sql: str
    order: int
    guarded: bool = False


@dataclass
class Batch:
    """The rows one request wants committed together, all or nothing."""

    rows: dict[Statement, list[Sequence[Any]]] = field(default_factory=dict)
    after: list[Callable[[], None]] = field(default_factory=list)

    def on_commit(self, callback: Callable[[], None]) -> Batch:
        """Run `callback` in the writer right after this batch commits, before any later write
        begins: in-memory state follows the database in exactly the order of its commits."""
        self.after.append(callback)
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
    batch: Batch | None
    job: Callable[[aiosqlite.Connection], Awaitable[Any]] | None
    future: asyncio.Future
    after: Callable[[Any], None] | None = None


class Database:
    """The matchmaker's SQLite file, opened for group-committed writes and concurrent reads."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection,
                 max_group: int) -> None:
        self.path = path
        self.reader = reader
        self._writer = writer
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
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the database {path}: {exc}; check that the "
                               "directory exists and is writable") from exc
        try:
            await _configure(writer, durability)
            await _migrate(writer, path)
            reader = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True,
                                             isolation_level=None)
            await reader.execute("PRAGMA busy_timeout = 10000")
            reader.row_factory = aiosqlite.Row
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, reader, max_group)

    async def close(self) -> None:
        if self._task.done() or self._closing:
            return
        self._closing = True
        self._pending.append(_Pending(None, None, asyncio.get_running_loop().create_future()))
        self._wakeup.set()
        await self._task
        await self.reader.close()
        await self._writer.close()

    async def write(self, batch: Batch) -> None:
        """Commit `batch` (shared with concurrent batches); raises StaleWrite if a guard failed."""
        if not batch:
            return
        self._check_open()
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(batch, None, future))
        self._wakeup.set()
        await future

    def write_later(self, batch: Batch) -> None:
        """Queue `batch` for the next group commit without waiting for it (for derived facts,
        such as a dataset's status, that the next start recomputes anyway); failures are logged."""
        if not batch:
            return
        self._check_open()
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(_log_failure)
        self._pending.append(_Pending(batch, None, future))
        self._wakeup.set()

    async def exclusive(self, job: Callable[[aiosqlite.Connection], Awaitable[T]],
                        after: Callable[[T], None] | None = None) -> T:
        """Run `job(connection)` alone in its own transaction on the writer and commit it; then
        `after(result)`, still in the writer, before any later write begins."""
        self._check_open()
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(None, job, future, after))
        self._wakeup.set()
        return await future

    def _check_open(self) -> None:
        if self._task.done() or self._closing:
            raise StorageError(f"the database {self.path} is closed")

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        """Rows of a read-only query, from the reader connection."""
        return list(await self.reader.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                head = self._pending[0]
                if head.batch is None and head.job is None:
                    self._pending.popleft()
                    head.future.set_result(None)
                    return
                if head.job is not None:
                    self._pending.popleft()
                    await self._run_exclusive(head)
                    continue
                group = []
                while (self._pending and self._pending[0].batch is not None
                       and len(group) < self._max_group):
                    group.append(self._pending.popleft())
                await self._commit_group(group)

    async def _run_exclusive(self, item: _Pending) -> None:
        try:
            await self._writer.execute("BEGIN IMMEDIATE")
            result = await item.job(self._writer)
            await self._writer.execute("COMMIT")
        except BaseException as exc:
            await self._rollback()
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
            await self._apply(merged)
        except StaleWrite:
            if len(group) == 1:
                _fail(group[0].future, StaleWrite(_stale_message(group[0].batch)))
                return
            for item in group:  # replay one by one so that only the stale batch fails
                await self._commit_group([item])
            return
        except BaseException as exc:
            log.exception("database write failed")
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

    async def _apply(self, merged: dict[Statement, list[Sequence[Any]]]) -> None:
        await self._writer.execute("BEGIN IMMEDIATE")
        try:
            for statement in sorted(merged, key=lambda s: s.order):
                rows = merged[statement]
                cursor = await self._writer.executemany(statement.sql, rows)
                if statement.guarded and cursor.rowcount != len(rows):
                    raise StaleWrite(statement.name)
            await self._writer.execute("COMMIT")
        except BaseException:
            await self._rollback()
            raise

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.OperationalError):  # no transaction was open
            await self._writer.execute("ROLLBACK")


def _stale_message(batch: Batch) -> str:
    names = ", ".join(s.name for s in batch.rows if s.guarded)
    return f"a guarded update found its row changed meanwhile ({names})"


def _log_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a background write failed: %s", future.exception())


def _succeed(future: asyncio.Future, result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


async def _configure(conn: aiosqlite.Connection, durability: str) -> None:
    if durability not in ("full", "normal"):
        raise StorageError(f'durability must be "full" or "normal", got {durability!r}')
    mode = await (await conn.execute("PRAGMA journal_mode = WAL")).fetchone()
    if mode[0].lower() != "wal":
        raise StorageError("the database could not switch to WAL mode (is it on a network "
                           "file system?); put it on a local disk")
    await conn.execute(f"PRAGMA synchronous = {durability.upper()}")
    await conn.execute("PRAGMA busy_timeout = 10000")
    await conn.execute("PRAGMA foreign_keys = ON")
    await conn.execute("PRAGMA cache_size = -65536")


async def _migrate(conn: aiosqlite.Connection, path: Path) -> None:
    version = (await (await conn.execute("PRAGMA user_version")).fetchone())[0]
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"{path} has schema version {version}, newer than this floe understands "
            f"({SCHEMA_VERSION}); upgrade floe or point it at another database")
    for number in range(version + 1, SCHEMA_VERSION + 1):
        log.info("migrating %s to schema version %d", path, number)
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for sql in _split(MIGRATIONS[number - 1]):
                await conn.execute(sql)
            await conn.execute(f"PRAGMA user_version = {number}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise


def _split(script: str) -> list[str]:
    """The statements of a migration script (none of ours has ';' inside a literal)."""
    return [s.strip() for s in script.split(";") if s.strip()]
