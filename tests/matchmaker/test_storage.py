"""The SQLite layer: migrations, WAL, group commit, guarded writes, and ordered apply."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from matchmaker.storage import queries
from matchmaker.storage.database import Batch, Database, StaleWrite, Statement, StorageError
from matchmaker.storage.schema import MIGRATIONS, SCHEMA_VERSION

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
    sqlite3.connect(path).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer than this floe understands"):
        await Database.open(path)


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
        assert await queries.registered_batch_ids(db, 1, "slurm", ids) == ["7"]
        assert await queries.registered_batch_ids(db, 1, "sge", ["9", "8"]) == ["8"]
        assert await queries.registered_batch_ids(db, 2, "slurm", ["7", "9", "9"]) == ["9"]
        sql = queries.REGISTERED_BATCH_IDS.format("?, ?")
        plan = " ".join(row["detail"] for row in await db.fetchall(
            f"EXPLAIN QUERY PLAN {sql}", (1, "slurm", "7", "8")))
        assert "USING INDEX pilots_site_batch (site_id=? AND batch_id=?)" in plan, plan
    finally:
        await db.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


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

    from matchmaker.storage.writes import ADD_STATISTIC

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
