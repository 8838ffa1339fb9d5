"""The SQLite file behind the matchmaker: its connections, and group commit (opening and migrating
the file is `files`).

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

Keeping memory in step with the database, which to use when:

- a request that decides from memory and answers after its commit (a dispatch, an outcome):
  it waits its `turn` (job locks do), changes memory at once, and gives its batch the undo
  (`on_failure`); what may only follow the commit (forgetting an ended attempt, counting a
  match) goes in `on_commit`. Both run on the event loop as the answer arrives, in the order
  the batches were sent, before the waiting caller resumes; failure callbacks of a failed group
  run newest batch first, so that a change built on another one's uncommitted state is undone
  before the state it was built on;
- a change that decides nothing from memory (a registration, the flush of heartbeats, a log):
  a plain `write`, and memory changed once it returns;
- work that is not rows of known statements (a user, a token, a dataset and its jobs, a dataset
  action): `exclusive`, a function of the connection run in the writer thread inside its own
  transaction, once every batch queued before it is answered and before any queued after it is
  sent; or `planned`, whose function is made by its plan on the event loop at that turn, from
  memory that reflects every earlier commit (nothing touches memory from the writer thread),
  with `after` bringing memory in step once it commits; `alone` when the plan decides from
  task states.

Requests change memory ahead of their commit, so memory may hold changes whose batches wait
behind a planned job. A planned job that decides from task states (`alone`) must not see those:
while one is queued or running, the gate is closed, and a request waits at `turn()` before it
decides anything from memory; every decision made before the gate closed was queued ahead of the
job and is answered before its plan runs. Requests that waited go through before the next such
job closes the gate again, so a bulk action of many steps interleaves with them.

A watchdog notices a write that waits longer than `stall_after` seconds (a writer that stopped
answering, a batch that was never answered): it says so in the log once, and `stalled` tells the
health route until the writes flow again.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from . import files
from .errors import StaleWrite, StorageError
from .writer import Result, Statement, WriterGone, WriterProcess, transaction

log = logging.getLogger(__name__)
T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]

STALL_AFTER = 5.0
"""Seconds a write may wait for the writer before the watchdog says that writes are stalled."""
CLOSE_GRACE = 10.0
"""Seconds `close` waits for the writer to answer what is in flight before it gives up on it."""


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
    alone: bool = False
    gather: bool = False
    since: float = field(default_factory=time.monotonic)


class Database:
    """The matchmaker's SQLite file, opened for group-committed writes and concurrent reads."""

    def __init__(self, path: Path, writer: sqlite3.Connection, process: WriterProcess,
                 thread: concurrent.futures.ThreadPoolExecutor, reader: aiosqlite.Connection,
                 max_group: int, stall_after: float = STALL_AFTER) -> None:
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
        self._running: _Pending | None = None  # the planned job at work
        self._gate: asyncio.Future | None = None  # closed (a future) while `alone` jobs wait
        self._alone = 0  # `alone` jobs queued or running
        self._at_gate = 0  # requests waiting at the gate
        self._attach()
        self._task = asyncio.create_task(self._run(), name="floe-db-writer")
        self.commits = 0
        self.batches_committed = 0
        self._closing = False
        self.stall_after = stall_after
        self.stalled: float | None = None
        """Since when (time.monotonic) the oldest write has waited beyond `stall_after`."""
        self.stalls = 0
        self.last_answer: float | None = None
        """When (time.monotonic) the writer process last answered a write; None: not yet."""
        self._watchdog = asyncio.create_task(self._watch(), name="floe-db-watchdog")

    @property
    def writer_alive(self) -> bool:
        """Whether the writer process runs (one that died is started again by the next
        write)."""
        return self._process.alive

    @property
    def writer_pid(self) -> int | None:
        return self._process.pid

    @classmethod
    async def open(cls, path: str | Path, *, durability: str = "full", cache: int = 64 * 2**20,
                   max_group: int = 1000, stall_after: float = STALL_AFTER) -> Database:
        """Open (creating and migrating when needed) the database at `path`; the writer
        process keeps up to `cache` bytes of it in memory."""
        path = Path(path)
        if durability not in ("full", "normal"):
            raise StorageError(f'durability must be "full" or "normal", got {durability!r}')
        thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="floe-db-writer")
        loop = asyncio.get_running_loop()
        try:
            writer = await loop.run_in_executor(thread, files.connect, path, durability)
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
        return cls(path, writer, process, thread, reader, max_group, stall_after)

    async def close(self) -> None:
        if self._task.done() or self._closing:
            return
        self._closing = True
        self._pending.append(_Pending(asyncio.get_running_loop().create_future(), stop=True))
        self._wakeup.set()
        try:
            await self._task
        finally:  # whatever happened, nothing is left open to keep the process from exiting
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            await self.reader.close()
            await self._in_thread(WriterProcess.close, self._process.detach())
            await asyncio.get_running_loop().run_in_executor(self._thread, self._writer.close)
            self._thread.shutdown()

    async def write(self, batch: Batch, gather: bool = False) -> None:
        """Commit `batch` (shared with concurrent batches); raises StaleWrite if a guard failed.
        A batch that cannot be queued (the database is closing) is undone and refused. With
        `gather`, it goes to the writer a turn of the event loop later, in one group with the
        batches of the requests it has just woken (a held ask given a task it made ready)."""
        if not batch:
            return
        await self._enqueue(_Pending(asyncio.get_running_loop().create_future(), batch=batch,
                                     gather=gather))

    async def write_each(self, batches: Sequence[Batch]) -> list[Exception | None]:
        """Commit several batches, each all or nothing on its own but queued together, so that
        they share a group commit: for each, None once it is committed, or the exception that
        refused it (StaleWrite for a failed guard, StorageError when the write failed). Empty
        batches are committed at once; none of them is sent."""
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

    async def exclusive(self, job: Job[T], after: Callable[[T], None] | None = None) -> T:
        """Run `job(connection)` in the writer thread in a transaction of its own and commit it;
        then `after(result)` on the event loop, before any later write is sent. `job` must use
        only the connection and what it was given, never the matchmaker's memory."""
        return await self.planned(lambda: job, after)

    async def planned(self, plan: Callable[[], Job[T]],
                      after: Callable[[T], None] | None = None, *, alone: bool = False) -> T:
        """Like `exclusive`, but the job is made by `plan()` on the event loop at its turn in
        the writer's queue, so it can decide from memory that reflects every earlier commit.

        With `alone`, memory holds nothing but what is committed when `plan()` runs, and
        nothing decided from memory is queued behind the job until `after` has run: the gate
        is closed from now until then (see `turn`). Requests already waiting at the gate go
        first."""
        if alone:
            while self._at_gate:  # those that waited on the last job go through first
                await asyncio.sleep(0)
            self._check_open()
            self._alone += 1
            if self._gate is None:
                self._gate = asyncio.get_running_loop().create_future()
        item = _Pending(asyncio.get_running_loop().create_future(), plan=plan, after=after,
                        alone=alone)
        try:
            self._queue([item])
        except BaseException:
            if alone:
                self._leave_gate()
            raise
        return await item.future

    @property
    def gated(self) -> bool:
        """Whether a request must wait its `turn` (the check costs no coroutine)."""
        return self._gate is not None

    async def turn(self) -> None:
        """Wait until no `alone` job is queued or running; at once when none is. A request
        calls this (when `gated`) right before it decides anything from memory that it then
        writes (a dispatch, an outcome), and decides and queues its batch without awaiting in
        between."""
        while self._gate is not None:
            self._at_gate += 1
            try:
                await asyncio.shield(self._gate)
            finally:
                self._at_gate -= 1

    def _leave_gate(self) -> None:
        """An `alone` job is done: open the gate once none is left."""
        self._alone -= 1
        if not self._alone and self._gate is not None:
            gate, self._gate = self._gate, None
            gate.set_result(None)

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
        self._queue([item])
        return await item.future

    def _queue(self, items: list[_Pending]) -> None:
        """Batches go straight to the writer process when nothing waits ahead of them (a trip
        through the writer task would cost each answer a turn of the event loop, and under load
        a turn is milliseconds); anything else waits its turn in the writer task's queue. When
        the database is closing, the batches' changes to memory are undone and StorageError
        raised."""
        if not items:
            return
        try:
            self._check_open()
        except StorageError:
            self._refuse(items, f"the database {self.path} is closed")
            raise
        if (not self._pending and not self._holding and self._process.alive
                and all(item.batch is not None and not item.gather for item in items)):
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
                taken = [head]
                try:
                    if head.stop:
                        await self._settle_before_close()
                        self._pending.popleft()
                        head.future.set_result(None)
                        return
                    if head.plan is not None:
                        await self._answered.wait()  # a planned job sees every earlier commit
                        self._pending.popleft()
                        await self._run_planned(head)
                        continue
                    if head.gather:
                        # Those it woke are a turn away from queueing theirs (see write).
                        head.gather = False
                        await asyncio.sleep(0)
                    taken = []
                    while (self._pending and self._pending[0].batch is not None
                           and len(taken) < self._max_group):
                        taken.append(self._pending.popleft())
                    await self._send(taken)
                except Exception as exc:  # a fault of ours must not stop every later write
                    log.exception("the database writer task failed")
                    self._give_up(taken, f"the database write failed: {exc}")
                finally:
                    self._holding = False

    def _give_up(self, taken: list[_Pending], reason: str) -> None:
        """Refuse what the writer task had taken when it failed, unless it was answered."""
        for item in taken:
            if item in self._pending:
                self._pending.remove(item)
        unanswered = [item for item in taken
                      if not item.future.done() and item not in self._inflight]
        self._refuse([item for item in unanswered if item.batch is not None], reason)
        for item in unanswered:
            _fail(item.future, StorageError(reason))
            if item.alone:
                self._leave_gate()

    async def _settle_before_close(self) -> None:
        """Wait for the writer's answers to what is in flight, for `CLOSE_GRACE` seconds at
        most; then the writer is given up on and what it did not answer is refused."""
        try:
            await asyncio.wait_for(self._answered.wait(), CLOSE_GRACE)
        except TimeoutError:
            process = self._process.detach()
            self._refuse_inflight(f"the database writer process did not answer "
                                  f"{len(self._inflight)} writes within {CLOSE_GRACE:.0f}s of "
                                  "closing; they are refused")
            if process is not None:
                process.kill()
                await self._in_thread(WriterProcess.close, process)

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    async def _run_planned(self, item: _Pending) -> None:
        """Plan, run and commit a planned job, then bring memory in step (`after`); the gate
        opens (for an `alone` job) before its caller hears the answer, so that the requests
        that waited at it go first."""
        outcome: tuple[bool, Any]
        self._running = item
        try:
            job = item.plan()
            result = await self._in_thread(transaction, self._writer, job)
        except BaseException as exc:
            outcome = (False, exc)
        else:
            self.commits += 1
            try:
                if item.after is not None:
                    item.after(result)
                outcome = (True, result)
            except BaseException as exc:
                log.exception("in-memory update after a commit failed")
                outcome = (False, exc)
        self._running = None
        if item.alone:
            self._leave_gate()
        if outcome[0]:
            _succeed(item.future, outcome[1])
        else:
            _fail(item.future, outcome[1])

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
        """Send `group` to the writer process; its answer comes to `_on_results`. A group that
        cannot be sent (a value that does not pickle) is refused; a pipe that breaks meanwhile
        refuses it with everything else in flight (`_on_gone`)."""
        if not group:
            return
        self._inflight.extend(group)
        self._answered.clear()
        try:
            self._process.send([item.batch.rows for item in group])
        except Exception as exc:
            for _ in group:
                self._inflight.pop()
            if not self._inflight:
                self._answered.set()
            log.exception("a write could not be sent to the writer process")
            self._refuse(group, f"the write could not be sent to the writer process: {exc}")

    def _on_results(self, results: list[Result], commits: int) -> None:
        """The writer's answer for the oldest `len(results)` batches in flight."""
        group = [self._inflight.popleft() for _ in results]
        self.commits += commits
        self.last_answer = time.monotonic()
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

    def _on_gone(self, why: str) -> None:
        """The writer process died (`why`: its exit code and how it was noticed): every batch
        in flight is refused; a new one is started for the next write."""
        if not self._inflight:
            log.error("the database writer process ended (%s) with no write in flight, so "
                      "nothing was refused; a new writer starts with the next write", why)
            self._answered.set()
            return
        self._refuse_inflight(f"the database writer process ended in the middle of a write "
                              f"({why}); the write is refused, and a new writer is started for "
                              "the next one")

    def _refuse_inflight(self, reason: str) -> None:
        """Refuse every batch in flight with `reason`, said in the log."""
        log.error("%s", reason)
        group = list(self._inflight)
        self._inflight.clear()
        self._refuse(group, reason)
        self._answered.set()

    @staticmethod
    def _refuse(group: list[_Pending], reason: str) -> None:
        """Fail `group` with `reason`, undoing its batches' changes to memory newest first."""
        for item in reversed(group):
            if item.batch is not None:
                _undo(item.batch)
        for item in group:
            _fail(item.future, StorageError(reason))

    async def _watch(self) -> None:
        """Say once when the oldest write has waited longer than `stall_after`, and again when
        the writes flow."""
        interval = min(1.0, self.stall_after / 2)
        while True:
            slept_from = time.monotonic()
            await asyncio.sleep(interval)
            now = time.monotonic()
            if now - slept_from > interval + self.stall_after:
                # This process itself did not run (frozen, stopped, starved): the writer's
                # answers wait unread in the pipe, and are no stall of its; judge next time.
                continue
            waiting = [queue[0].since for queue in (self._inflight, self._pending) if queue]
            if self._running is not None:
                waiting.append(self._running.since)
            oldest = min(waiting, default=now)
            if now - oldest > self.stall_after:
                if self.stalled is None:
                    self.stalled = oldest
                    self.stalls += 1
                    log.warning(
                        "database writes are stalled: the oldest has waited %.1fs (%d sent to "
                        "the writer process, %d queued behind, writer process %s); every "
                        "report, ask and change waits behind it", now - oldest,
                        len(self._inflight), len(self._pending),
                        "running" if self._process.alive else "not running")
            elif self.stalled is not None:
                log.warning("database writes flow again after %.1fs", now - self.stalled)
                self.stalled = None


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


def _succeed(future: asyncio.Future, result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
