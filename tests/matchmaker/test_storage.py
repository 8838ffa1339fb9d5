"""The SQLite layer: migrations, WAL, group commit, guarded writes, and ordered apply."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from floe.matchmaker.storage import files, queries, writes
from floe.matchmaker.storage.database import Batch, Database, StaleWrite, Statement, StorageError
from floe.matchmaker.storage.logstore import LogStore
from floe.matchmaker.storage.schema import MIGRATIONS, SCHEMA_VERSION

INSERT = Statement("insert", "INSERT INTO events (time, action, detail) VALUES (?, ?, ?)", 1)
GUARDED = Statement("guarded", "UPDATE users SET share = ? WHERE name = ? AND share = ?", 2,
                    guarded=True)


async def test_a_new_file_is_migrated_to_the_current_schema_in_wal_mode(tmp_path):
    db = await Database.open(tmp_path / "floe.sqlite")
    await db.close()
    conn = sqlite3.connect(tmp_path / "floe.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"datasets", "jobs", "tasks", "attempts", "pilots", "users", "tokens"} <= tables


async def test_a_database_from_a_newer_floe_is_refused(tmp_path):
    path = tmp_path / "floe.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA application_id = {files.APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer than this floe understands"):
        await Database.open(path)


async def test_another_programs_database_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "notes.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (text)")
        conn.execute("INSERT INTO notes VALUES ('mine')")
    before = path.read_bytes()
    with pytest.raises(StorageError, match=r"is not a floe database \(it holds another "
                                           r"program's tables: notes\)"):
        await Database.open(path)
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()


@pytest.mark.parametrize("content", [b"hello, world\n" * 10, bytes(range(256)) * 20])
async def test_a_file_that_is_no_database_is_refused_in_one_sentence(tmp_path, content):
    path = tmp_path / "floe.sqlite"
    path.write_bytes(content)
    with pytest.raises(StorageError, match=r"is not an SQLite database .*give --db"):
        await Database.open(path)
    assert path.read_bytes() == content


async def test_a_directory_is_refused_naming_a_file_to_give_instead(tmp_path):
    with pytest.raises(StorageError, match=f"{tmp_path} is a directory; give --db a file, such "
                                           f"as {tmp_path}/floe.sqlite"):
        await Database.open(tmp_path)


async def test_a_floe_database_from_before_the_stamp_is_stamped_and_kept(tmp_path):
    path = tmp_path / "floe.sqlite"
    with sqlite3.connect(path) as conn:
        for statement in MIGRATIONS[0].split(";"):
            conn.execute(statement)
        conn.execute("INSERT INTO sites (site_id, name, created) VALUES (1, 'a', 0)")
        conn.execute("PRAGMA user_version = 1")
    db = await Database.open(path)
    await db.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == files.APPLICATION_ID
        assert conn.execute("SELECT name FROM sites").fetchall() == [("a",)]


@pytest.mark.parametrize("name", ["symbolic link", "hard link"])
def test_a_second_server_lock_through_another_name_of_the_file_is_refused(tmp_path, name):
    path = tmp_path / "floe.sqlite"
    first = files.ServerLock(path)
    first.acquire()
    other = tmp_path / "other.sqlite"
    if name == "symbolic link":
        other.symlink_to(path)
    else:
        os.link(path, other)
    # Through a hard link the note naming the first server is not found: it is refused all the
    # same.
    holder = rf"pid {os.getpid()} on .*" if name == "symbolic link" else "another process"
    try:
        with pytest.raises(StorageError, match=rf"in use by another floe server \({holder}\)"):
            files.ServerLock(other).acquire()
    finally:
        first.release()


async def test_another_programs_wal_database_is_refused_without_files_left_beside_it(tmp_path):
    path = tmp_path / "notes.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE notes (text)")
    conn.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(StorageError, match="is not a floe database"):
        await Database.open(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_second_server_lock_on_one_database_is_refused_naming_the_first(tmp_path):
    path = tmp_path / "floe.sqlite"
    first = files.ServerLock(path)
    first.acquire()
    try:
        with pytest.raises(StorageError, match=rf"the database {path} is in use by another floe "
                                               rf"server \(pid {os.getpid()} on .*\); stop "
                                               "that one, or give this one another --db"):
            files.ServerLock(path).acquire()
    finally:
        first.release()
    again = files.ServerLock(path)
    again.acquire()
    again.release()


async def test_a_database_of_schema_1_gains_the_index_factories_ask_registrations_by(tmp_path):
    path = tmp_path / "floe.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(MIGRATIONS[0])
        conn.execute("INSERT INTO sites (site_id, name, created) VALUES (1, 'a', 0), (2, 'b', 0)")
        conn.executemany(
            "INSERT INTO pilots (site_id, host, batch_system, batch_id, resources, state,"
            " registered, last_seen) VALUES (?, 'n', ?, ?, '{}', ?, 0, 0)",
            [(1, "slurm", "7", "exited"), (1, "slurm", "7", "lost"), (1, "sge", "8", "running"),
             (2, "slurm", "9", "running")])
        conn.execute("PRAGMA user_version = 1")
    db = await Database.open(path)
    try:
        ids = [str(n) for n in range(1200)]  # more than one statement's worth
        assert await queries.registered_batch_ids(db, 1, "slurm", ids) == {"7": []}
        assert await queries.registered_batch_ids(db, 1, "sge", ["9", "8"]) == {"8": []}
        assert await queries.registered_batch_ids(db, 2, "slurm", ["7", "9", "9"]) == {"9": []}
        sql = queries.REGISTERED_BATCH_IDS.format("?, ?")
        plan = " ".join(row["detail"] for row in await db.fetchall(
            f"EXPLAIN QUERY PLAN {sql}", (1, "slurm", "7", "8")))
        assert "USING INDEX pilots_site_batch (site_id=? AND batch_id=?)" in plan, plan
    finally:
        await db.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_a_database_of_schema_2_keeps_its_tokens_and_its_pilot_tokens_register_once(
        tmp_path):
    path = tmp_path / "floe.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(MIGRATIONS[0] + MIGRATIONS[1])
        conn.execute("INSERT INTO sites (site_id, name, created) VALUES (1, 'a', 0)")
        conn.executemany("INSERT INTO tokens (token_hash, kind, site_id, created, expires)"
                         " VALUES (?, ?, 1, 0, ?)", [("s", "site", None), ("p", "pilot", 9e9)])
        conn.execute("PRAGMA user_version = 2")
    db = await Database.open(path)
    try:
        rows = {row["token_hash"]: dict(row) for row in await db.fetchall(
            "SELECT token_hash, kind, site_id, expires, pilot_id, used FROM tokens")}
        assert rows == {
            "s": {"token_hash": "s", "kind": "site", "site_id": 1, "expires": None,
                  "pilot_id": None, "used": None},
            "p": {"token_hash": "p", "kind": "pilot", "site_id": 1, "expires": 9e9,
                  "pilot_id": None, "used": None}}
        # The pilot token now registers one pilot: its first use takes it, a second is stale.
        for attempt in range(2):
            batch = Batch()
            writes.pilot_key(batch, 7 + attempt, token_hash="p", key_hash=f"k{attempt}",
                             site_id=1, now=1.0, expires=9e9)
            if attempt == 0:
                await db.write(batch)
            else:
                with pytest.raises(StaleWrite):
                    await db.write(batch)
        row = await db.fetchone("SELECT pilot_id, used FROM tokens WHERE token_hash = 'p'")
        assert (row["pilot_id"], row["used"]) == (7, 1.0)
    finally:
        await db.close()


async def test_an_unwritable_place_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StorageError, match="cannot open the database"):
        await Database.open(blocker / "floe.sqlite")


async def test_concurrent_writes_share_commits(tmp_path):
    db = await Database.open(tmp_path / "floe.sqlite")
    try:
        await asyncio.gather(*(db.write(Batch().add(INSERT, (i, "test", str(i))))
                               for i in range(200)))
        assert db.batches_committed == 200
        assert db.commits < 20
        rows = await db.fetchall("SELECT count(*) AS n FROM events")
        assert rows[0]["n"] == 200
    finally:
        await db.close()


async def test_a_stale_guard_fails_only_its_own_batch(tmp_path):
    db = await Database.open(tmp_path / "floe.sqlite")
    try:
        await db.exclusive(lambda conn: conn.executemany(
            "INSERT INTO users (name, role, share, created) VALUES (?, 'user', 1.0, 0)",
            [("a",), ("b",)]))
        good = db.write(Batch().add(GUARDED, (2.0, "a", 1.0)).add(INSERT, (1, "ok", "")))
        stale = db.write(Batch().add(GUARDED, (3.0, "b", 7.0)).add(INSERT, (2, "bad", "")))
        results = await asyncio.gather(good, stale, return_exceptions=True)
        assert results[0] is None and isinstance(results[1], StaleWrite)
        rows = await db.fetchall("SELECT name, share FROM users ORDER BY name")
        assert [(r["name"], r["share"]) for r in rows] == [("a", 2.0), ("b", 1.0)]
        actions = [r["action"] for r in await db.fetchall("SELECT action FROM events")]
        assert actions == ["ok"]
    finally:
        await db.close()


async def test_callbacks_run_in_commit_order_before_later_writes(tmp_path):
    db = await Database.open(tmp_path / "floe.sqlite")
    seen: list[str] = []
    try:
        first = Batch().add(INSERT, (1, "first", "")).on_commit(lambda: seen.append("first"))

        def plan():
            seen.append("planned")
            return lambda conn: conn.execute("INSERT INTO events (time, action, detail)"
                                             " VALUES (2, 'second', '')")

        await asyncio.gather(db.write(first), db.planned(plan, after=lambda _: seen.append(
            "second")))
        assert seen == ["first", "planned", "second"]
    finally:
        await db.close()


async def test_writes_after_close_are_refused(tmp_path):
    db = await Database.open(tmp_path / "floe.sqlite")
    await db.close()
    with pytest.raises(StorageError, match="is closed"):
        await db.write(Batch().add(INSERT, (1, "late", "")))


async def test_statistics_folded_per_group_store_what_one_row_per_report_would(tmp_path):
    """Values of a statistic written a few per group commit, and each alone: the same count,
    sum, mean, m2, min and max, and both match the values' own."""
    import random

    from floe.matchmaker.storage.writes import ADD_STATISTIC

    rng = random.Random(3)
    values = [rng.uniform(-5, 50) for _ in range(60)] + [7.0, 7.0, 1e6]
    stored = []
    for name, groups in (("alone", [[v] for v in values]),
                         ("folded", [values[i:i + 9] for i in range(0, len(values), 9)])):
        db = await Database.open(tmp_path / f"{name}.sqlite")
        try:
            for group in groups:  # a group's batches share one commit
                await asyncio.gather(*(db.write(Batch().add(ADD_STATISTIC, (1, 0, "user", "x", v))
                                                .add(ADD_STATISTIC, (1, 0, "resource", "y", 1.0)))
                                       for v in group))
            row = await db.fetchone("SELECT count, sum, mean, m2, min, max FROM statistics"
                                    " WHERE kind = 'user'")
            other = await db.fetchone("SELECT count, m2 FROM statistics WHERE kind = 'resource'")
            assert (other["count"], other["m2"]) == (len(values), 0.0)
            stored.append(tuple(row))
            if name == "folded":
                assert db.commits < len(values) / 3
        finally:
            await db.close()
    mean = sum(values) / len(values)
    expected = (len(values), sum(values), mean, sum((v - mean) ** 2 for v in values),
                min(values), max(values))
    for row in stored:
        assert row == pytest.approx(expected, rel=1e-9)


async def test_write_each_of_empty_batches_answers_at_once_and_leaves_writes_flowing(tmp_path):
    """Regression: an all-empty bulk write handed the writer an empty frame that it never
    answered, and every planned or exclusive write after it waited forever."""
    db = await Database.open(tmp_path / "floe.sqlite")
    try:
        assert await asyncio.wait_for(db.write_each([Batch(), Batch()]), 5) == [None, None]
        assert await asyncio.wait_for(db.write_each([]), 5) == []
        await asyncio.wait_for(db.exclusive(lambda conn: conn.execute(
            "INSERT INTO events (time, action, detail) VALUES (1, 'after', '')")), 5)
        await asyncio.wait_for(db.write(Batch().add(INSERT, (2, "later", ""))), 5)
        assert db.stalls == 0
    finally:
        await db.close()


async def test_a_batch_that_cannot_reach_the_writer_is_refused_and_undone(tmp_path):
    db = await Database.open(tmp_path / "floe.sqlite")
    undone = []
    try:
        unpicklable = Batch().add(INSERT, (1, "bad", lambda: None)).on_failure(
            lambda: undone.append("bad"))
        with pytest.raises(StorageError, match="could not be sent to the writer process"):
            await asyncio.wait_for(db.write(unpicklable), 5)
        assert undone == ["bad"]
        await asyncio.wait_for(db.exclusive(lambda conn: None), 5)
        await asyncio.wait_for(db.write(Batch().add(INSERT, (2, "good", ""))), 5)
    finally:
        await db.close()


async def test_a_batch_refused_because_the_database_closed_is_undone(tmp_path):
    db = await Database.open(tmp_path / "floe.sqlite")
    await db.close()
    undone = []
    with pytest.raises(StorageError, match="is closed"):
        await db.write_each([Batch().add(INSERT, (1, "late", "")).on_failure(
            lambda: undone.append("late"))])
    assert undone == ["late"]


async def test_an_alone_job_plans_after_every_earlier_decision_and_before_any_later(tmp_path):
    """A request that decides from memory waits at the gate while an `alone` job is queued, so
    the job's plan sees what is committed and nothing decided behind it."""
    db = await Database.open(tmp_path / "floe.sqlite")
    seen: list[str] = []
    try:
        early = asyncio.ensure_future(db.write(Batch().add(INSERT, (1, "early", "")).on_commit(
            lambda: seen.append("early committed"))))

        def plan():
            seen.append("planned")
            return lambda conn: None

        job = asyncio.ensure_future(db.planned(plan, after=lambda _: seen.append("applied"),
                                               alone=True))

        async def request() -> None:
            await db.turn()
            seen.append("request decides")

        late = asyncio.ensure_future(request())
        await asyncio.gather(early, job, late)
        assert seen == ["early committed", "planned", "applied", "request decides"]
    finally:
        await db.close()


async def test_requests_that_waited_at_the_gate_go_before_the_next_alone_job(tmp_path):
    """A bulk action of many steps cannot starve the requests that wait between its steps."""
    db = await Database.open(tmp_path / "floe.sqlite")
    seen: list[str] = []
    try:
        async def steps() -> None:
            for step in range(3):
                await db.planned(lambda step=step: seen.append(f"step {step}") or (
                    lambda conn: None), alone=True)

        async def request(name: str) -> None:
            await db.turn()
            seen.append(name)

        action = asyncio.ensure_future(steps())
        await asyncio.sleep(0)  # the first step is queued: the gate is closed
        await asyncio.gather(action, request("a"), request("b"))
        assert seen.index("a") < seen.index("step 1") and seen.index("b") < seen.index("step 1")
    finally:
        await db.close()


async def test_the_watchdog_says_when_writes_stall_and_when_they_flow_again(tmp_path, caplog):
    db = await Database.open(tmp_path / "floe.sqlite", stall_after=0.2)
    try:
        release = asyncio.Event()

        def slow(conn: sqlite3.Connection) -> None:
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result()

        loop = asyncio.get_running_loop()
        job = asyncio.ensure_future(db.exclusive(slow))
        try:
            for _ in range(100):
                if db.stalled is not None:
                    break
                await asyncio.sleep(0.05)
            assert db.stalled is not None and db.stalls == 1
        finally:
            release.set()
            await job
        for _ in range(100):
            if db.stalled is None:
                break
            await asyncio.sleep(0.05)
        assert db.stalled is None
        said = [r.getMessage() for r in caplog.records
                if r.name == "floe.matchmaker.storage.database"]
        assert any(m.startswith("database writes are stalled: the oldest has waited") for m in said)
        assert any(m.startswith("database writes flow again after") for m in said)
    finally:
        await db.close()


async def test_uploads_of_one_log_at_once_leave_one_whole_log(tmp_path):
    store = LogStore(tmp_path / "floe.sqlite.logs")
    texts = [bytes([65 + n]) * (200_000 + n) for n in range(8)]
    await asyncio.gather(*(store.save(3, 42, "stdout", text) for text in texts))
    assert await store.read(3, 42, "stdout") in texts
    assert sorted(p.name for p in store.dataset_dir(3).rglob("*")) == ["0", "42.stdout.gz"]
