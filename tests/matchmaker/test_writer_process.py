"""The group-commit writer in its own process: a killed writer costs one refused group (its
callers hear why, memory is undone) and the next write starts a fresh one; a writer never
outlives the server that started it."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from floe.matchmaker.storage.database import Batch, Database, Statement, StorageError
from floe.matchmaker.storage.writer import CHECKPOINT_INTERVAL, WAL_LIMIT, Checkpointer, configure

ROOT = Path(__file__).resolve().parents[2]
INSERT = Statement("insert", "INSERT INTO events (time, action, detail) VALUES (?, ?, ?)", 1)


def writers() -> list[psutil.Process]:
    return [child for child in psutil.Process().children()
            if "matchmaker.storage.writer" in " ".join(child.cmdline())]


async def test_group_commits_run_in_a_child_process_that_ends_with_the_database(tmp_path):
    db = await Database.open(tmp_path / "floe.sqlite")
    try:
        (writer,) = writers()
        assert writer.pid != os.getpid()
        await db.write(Batch().add(INSERT, (1, "test", "one")))
        rows = await db.fetchall("SELECT detail FROM events WHERE action = 'test'")
        assert [r["detail"] for r in rows] == ["one"]
    finally:
        await db.close()
    assert not writer.is_running() or writer.status() == psutil.STATUS_ZOMBIE


async def test_a_writer_killed_between_writes_is_replaced_without_losing_one(tmp_path):
    db = await Database.open(tmp_path / "floe.sqlite")
    try:
        await db.write(Batch().add(INSERT, (1, "test", "before")))
        (writer,) = writers()
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        await db.write(Batch().add(INSERT, (2, "test", "after")))
        (replacement,) = writers()
        assert replacement.pid != writer.pid
        rows = await db.fetchall("SELECT detail FROM events WHERE action = 'test' ORDER BY time")
        assert [r["detail"] for r in rows] == ["before", "after"]
    finally:
        await db.close()


async def test_a_writer_killed_during_a_write_refuses_that_group_with_the_reason(tmp_path):
    db = await Database.open(tmp_path / "floe.sqlite")
    undone = []
    try:
        (writer,) = writers()
        writer.send_signal(signal.SIGSTOP)  # holds the write in flight
        write = asyncio.ensure_future(db.write(Batch().add(INSERT, (1, "test", "lost"))
                                               .on_failure(lambda: undone.append("lost"))))
        await asyncio.sleep(0.3)
        assert not write.done()
        writer.send_signal(signal.SIGKILL)
        with pytest.raises(StorageError, match="writer process ended in the middle of a write "
                                               r"\(exit code -9"):
            await write
        assert undone == ["lost"]
        await db.write(Batch().add(INSERT, (2, "test", "after")))
        rows = await db.fetchall("SELECT detail FROM events WHERE action = 'test' ORDER BY time")
        assert [r["detail"] for r in rows] == ["after"]
    finally:
        await db.close()


def test_the_writer_exits_when_the_server_is_killed(tmp_path):
    script = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(ROOT)!r})
        from floe.matchmaker.storage.database import Database
        async def main():
            db = await Database.open({str(tmp_path / "floe.sqlite")!r})
            print("open", flush=True)
            await asyncio.sleep(600)
        asyncio.run(main())
    """)
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "open"
        (writer,) = [c for c in psutil.Process(server.pid).children()
                     if "matchmaker.storage.writer" in " ".join(c.cmdline())]
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        deadline = time.time() + 10
        while writer.is_running() and writer.status() != psutil.STATUS_ZOMBIE \
                and time.time() < deadline:
            time.sleep(0.05)
        assert not writer.is_running() or writer.status() == psutil.STATUS_ZOMBIE
    finally:
        server.kill()
        server.wait()


async def test_concurrent_groups_keep_their_order_through_the_process(tmp_path):
    db = await Database.open(tmp_path / "floe.sqlite")
    try:
        await asyncio.gather(*(db.write(Batch().add(INSERT, (i, "order", str(i))))
                               for i in range(300)))
        rows = await db.fetchall("SELECT time FROM events WHERE action = 'order' ORDER BY rowid")
        assert [r["time"] for r in rows] == list(range(300))
    finally:
        await db.close()


async def test_batches_sent_while_a_group_waits_in_the_writer_share_the_next_commit(tmp_path):
    """The writer process groups what reached it while it was busy: a group stuck behind
    another connection's lock does not hold back the batches sent after it, which then commit
    together, in order, in one transaction."""
    import sqlite3

    db = await Database.open(tmp_path / "floe.sqlite")
    blocker = sqlite3.connect(tmp_path / "floe.sqlite", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        first = asyncio.ensure_future(db.write(Batch().add(INSERT, (0, "group", "0"))))
        await asyncio.sleep(0.1)  # the first group is in the writer, waiting for the lock
        commits = db.commits
        later = [asyncio.ensure_future(db.write(Batch().add(INSERT, (i, "group", str(i)))))
                 for i in range(1, 51)]
        await asyncio.sleep(0.1)
        assert not first.done() and not any(w.done() for w in later)
        blocker.execute("COMMIT")
        await asyncio.gather(first, *later)
        assert db.commits == commits + 2
        rows = await db.fetchall("SELECT time FROM events WHERE action = 'group' ORDER BY rowid")
        assert [r["time"] for r in rows] == list(range(51))
    finally:
        blocker.close()
        await db.close()


async def test_the_writer_process_keeps_the_configured_cache_of_pages(tmp_path):
    import sqlite3

    from floe.matchmaker.storage.writer import configure

    conn = sqlite3.connect(tmp_path / "alone.sqlite", isolation_level=None)
    configure(conn, "full", 8 * 2**20)
    assert conn.execute("PRAGMA cache_size").fetchone()[0] == -8192  # KiB
    conn.close()
    db = await Database.open(tmp_path / "floe.sqlite", cache=300 * 2**20)
    try:
        (writer,) = writers()
        assert str(300 * 2**20) in writer.cmdline()
        await db.write(Batch().add(INSERT, (1, "test", "cached")))
    finally:
        await db.close()


async def test_the_wal_is_checkpointed_and_started_over_while_commits_never_stop(tmp_path):
    db = await Database.open(tmp_path / "floe.sqlite")
    wal = tmp_path / "floe.sqlite-wal"
    written = 0
    try:
        # Commits one after another with no pause between them, as under load: nothing between
        # two commits leaves room for SQLite's own checkpoint. The WAL's header counts the
        # times it was started over (each after a whole checkpoint); on a loaded machine the
        # checkpoints come later, so the test waits for them (a minute at most), never pausing.
        def started_over() -> int:
            with open(wal, "rb") as header:
                return int.from_bytes(header.read(16)[12:16], "big")

        deadline = time.monotonic() + max(60.0, 6 * CHECKPOINT_INTERVAL)
        while started_over() < 3 and time.monotonic() < deadline:
            await db.write(Batch().extend(INSERT, ((written + n, "load", "x" * 500)
                                                   for n in range(50))))
            written += 50
        assert started_over() >= 3, f"the WAL was started over {started_over()} times in a minute"
        assert wal.stat().st_size <= WAL_LIMIT + 8 * 2**20
        rows = await db.fetchall("SELECT count(*) AS n FROM events WHERE action = 'load'")
        assert rows[0]["n"] == written
    finally:
        await db.close()


def test_the_checkpointer_copies_the_wal_of_a_connection_that_never_checkpoints(tmp_path):
    path = tmp_path / "floe.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    configure(conn, "full")
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # as the writer process runs
    conn.execute("CREATE TABLE t (x TEXT)")
    checkpointer = Checkpointer(str(path), interval=0.05)
    checkpointer.start()
    try:
        for _ in range(100):
            conn.execute("INSERT INTO t VALUES (?)", ("x" * 3000,))
        deadline = time.monotonic() + 10
        while checkpointer.checkpoints < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        # The rows reached the database file itself, which only a checkpoint writes to.
        assert path.stat().st_size > 100 * 3000
    finally:
        checkpointer.stop()
        conn.close()
