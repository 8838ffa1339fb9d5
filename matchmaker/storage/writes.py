"""Every change to the database: the statements that requests contribute to group commits, in
the order they run, and the transactions that run on their own.

Each statement is a `Statement` that many concurrent `Batch`es add rows to; the writer runs each
once per group with `executemany`. Guarded ones are compare-and-set on the state the change
expects to leave, so that a late or duplicate write is refused instead of overwriting newer facts.
The functions after them are the bodies of `Database.exclusive` and `Database.planned` jobs:
they take the writer's connection inside its open transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from .database import StaleWrite, Statement

INSERT_PILOT = Statement(
    "register pilot",
    "INSERT INTO pilots (pilot_id, site_id, host, batch_system, batch_id, resources, state,"
    " registered, last_seen) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
    order=10)

PILOT_SEEN = Statement(
    "pilot last seen",
    "UPDATE pilots SET last_seen = ? WHERE pilot_id = ?",
    order=11)

END_PILOT = Statement(
    "pilot ended",
    "UPDATE pilots SET state = ?, ended = ?, exit_reason = ?, suspect = ?"
    " WHERE pilot_id = ? AND state = 'running'",
    order=12)

INSERT_ATTEMPT = Statement(
    "dispatch attempt",
    "INSERT INTO attempts (attempt_id, task_id, dataset_id, pilot_id, site, host, batch_id,"
    " passkey_hash, state, started, last_heartbeat, req_cpus, req_memory, req_disk, req_gpus,"
    " req_walltime, gpus) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'processing', ?, ?, ?, ?, ?, ?, ?, ?)",
    order=20)

SAVE_LOG = Statement(
    "upload log",
    "INSERT OR REPLACE INTO logs (attempt_id, stream, text) VALUES (?, ?, ?)",
    order=25)

END_ATTEMPT = Statement(
    "record attempt result",
    "UPDATE attempts SET state = ?, ended = ?, last_heartbeat = ?, cpu_time = ?, wall_time = ?,"
    " peak_memory = ?, peak_disk = ?, peak_gpu_memory = ?, gpu_time = ?, exit_code = ?,"
    " error_class = ?, error_message = ?, statistics = ?, outputs = ?, stdout_tail = ?,"
    " stderr_tail = ? WHERE attempt_id = ? AND state = 'processing'",
    order=30, guarded=True)

HEARTBEAT = Statement(
    "attempt heartbeat",
    "UPDATE attempts SET last_heartbeat = ?, cpu_time = ?, wall_time = ?, peak_memory = ?,"
    " peak_disk = ?, peak_gpu_memory = ? WHERE attempt_id = ? AND state = 'processing'",
    order=35)

# An outcome's retry or requeue (processing -> ready, with its record) runs before the plain
# transitions, among them the dispatches: a report that asks may be given back the very task it
# made ready, in the same group commit.
MOVE_TASK_WITH_RECORD = Statement(
    "task transition with retry record",
    "UPDATE tasks SET state = ?, failures = ?, lost = ?, requirements = ?, reason = ?,"
    " updated = ? WHERE task_id = ? AND state = ?",
    order=40, guarded=True)

MOVE_TASK = Statement(
    "task transition",
    "UPDATE tasks SET state = ?, updated = ? WHERE task_id = ? AND state = ?",
    order=41, guarded=True)

SET_JOB = Statement(
    "job state",
    "UPDATE jobs SET state = ? WHERE dataset_id = ? AND job_index = ?",
    order=50)

def fold_statistics(rows: list[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """One row per (dataset, task, kind, name) out of a group's (dataset_id, task_index, kind,
    name, value) rows: count, sum, mean, m2 (Welford's running sum of squared deviations), min
    and max of its values, for ADD_STATISTIC to merge into the stored row."""
    folded: dict[tuple[Any, ...], list[Any]] = {}
    for dataset_id, task_index, kind, name, value in rows:
        key = (dataset_id, task_index, kind, name)
        acc = folded.get(key)
        if acc is None:
            folded[key] = [1, value, value, 0.0, value, value]
            continue
        count = acc[0] + 1
        delta = value - acc[2]
        mean = acc[2] + delta / count
        acc[0] = count
        acc[1] += value
        acc[2] = mean
        acc[3] += delta * (value - mean)
        if value < acc[4]:
            acc[4] = value
        if value > acc[5]:
            acc[5] = value
    return [key + tuple(acc) for key, acc in folded.items()]


ADD_STATISTIC = Statement(
    "aggregate statistic",
    # Rows are (dataset_id, task_index, kind, name, value), folded per group commit into one
    # row per statistic and merged into the stored one with Chan's formula for combining
    # counts, means and m2. SET expressions read the row's values before the update.
    "INSERT INTO statistics (dataset_id, task_index, kind, name, count, sum, mean, m2, min, max)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    " ON CONFLICT (dataset_id, task_index, kind, name) DO UPDATE SET"
    " count = count + excluded.count,"
    " sum = sum + excluded.sum,"
    " mean = mean + (excluded.mean - mean) * excluded.count / (count + excluded.count),"
    " m2 = m2 + excluded.m2 + (excluded.mean - mean) * (excluded.mean - mean) * count"
    " * excluded.count / (count + excluded.count),"
    " min = min(min, excluded.min),"
    " max = max(max, excluded.max)",
    order=60, fold=fold_statistics)

SET_DATASET = Statement(
    "dataset status",
    "UPDATE datasets SET status = ?, priority = ?, updated = ? WHERE dataset_id = ?",
    order=70)

ADD_EVENT = Statement(
    "record event",
    "INSERT INTO events (time, dataset_id, user_id, action, detail) VALUES (?, ?, ?, ?, ?)",
    order=80)

SAVE_USAGE = Statement(
    "save fair-share usage",
    "INSERT INTO usage (entity, value, updated) VALUES (?, ?, ?)"
    " ON CONFLICT (entity) DO UPDATE SET value = excluded.value, updated = excluded.updated",
    order=90)


# -- transactions of their own ----------------------------------------------------------------

def add_user(conn: sqlite3.Connection, name: str, role: str, share: float, token_hash: str,
             now: float) -> int | None:
    """Insert a user with its first token; its id, or None (nothing written) if the name is
    taken."""
    if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
        return None
    cursor = conn.execute("INSERT INTO users (name, role, share, created) VALUES (?, ?, ?, ?)",
                          (name, role, share, now))
    conn.execute("INSERT INTO tokens (token_hash, kind, user_id, created) VALUES (?, 'user', ?, ?)",
                 (token_hash, cursor.lastrowid, now))
    return cursor.lastrowid


def new_user_token(conn: sqlite3.Connection, user_id: int, token_hash: str, now: float,
                   revoke_old: bool) -> None:
    """Insert a user token, revoking the user's others when `revoke_old`."""
    if revoke_old:
        conn.execute("UPDATE tokens SET revoked = ? WHERE user_id = ? AND revoked IS NULL",
                     (now, user_id))
    conn.execute("INSERT INTO tokens (token_hash, kind, user_id, created) VALUES (?, 'user', ?, ?)",
                 (token_hash, user_id, now))


def set_share(conn: sqlite3.Connection, user_id: int, share: float) -> None:
    conn.execute("UPDATE users SET share = ? WHERE user_id = ?", (share, user_id))


def add_site(conn: sqlite3.Connection, name: str, token_hash: str, now: float) -> int | None:
    """Insert a site with its factory token; its id, or None (nothing written) if the name is
    taken."""
    if conn.execute("SELECT 1 FROM sites WHERE name = ?", (name,)).fetchone():
        return None
    cursor = conn.execute("INSERT INTO sites (name, created) VALUES (?, ?)", (name, now))
    conn.execute("INSERT INTO tokens (token_hash, kind, site_id, created) VALUES (?, 'site', ?, ?)",
                 (token_hash, cursor.lastrowid, now))
    return cursor.lastrowid


def new_site_token(conn: sqlite3.Connection, site_id: int, token_hash: str, now: float) -> None:
    """Insert a site's factory token in place of its current one."""
    conn.execute("UPDATE tokens SET revoked = ? WHERE site_id = ? AND kind = 'site'"
                 " AND revoked IS NULL", (now, site_id))
    conn.execute("INSERT INTO tokens (token_hash, kind, site_id, created) VALUES (?, 'site', ?, ?)",
                 (token_hash, site_id, now))


def add_pilot_token(conn: sqlite3.Connection, site_id: int, token_hash: str, now: float,
                    expires: float) -> None:
    """Insert a pilot token, and drop those that have expired."""
    conn.execute("INSERT INTO tokens (token_hash, kind, site_id, created, expires)"
                 " VALUES (?, 'pilot', ?, ?, ?)", (token_hash, site_id, now, expires))
    conn.execute("DELETE FROM tokens WHERE kind = 'pilot' AND expires < ?", (now,))


def add_dataset(conn: sqlite3.Connection, *, user_id: int, description: str, config: str,
                jobs: int, tasks_per_job: int, task_id_base: int, priority: float, status: str,
                now: float, detail: str) -> int:
    """Insert a dataset (`config` is its JSON text) with its "submit" event; returns its id."""
    cursor = conn.execute(
        "INSERT INTO datasets (user_id, description, config, jobs, tasks_per_job,"
        " task_id_base, priority, status, created, updated)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (user_id, description, config, jobs, tasks_per_job, task_id_base, priority, status,
         now, now))
    conn.execute(ADD_EVENT.sql, (now, cursor.lastrowid, user_id, "submit", detail))
    return cursor.lastrowid


def add_jobs(conn: sqlite3.Connection, dataset_id: int, first: int, count: int,
             tasks: Iterable[Sequence[Any]]) -> None:
    """Insert jobs [first, first + count) of a dataset, waiting, with their `tasks` rows
    (task_id, dataset_id, job_index, task_index, state, updated)."""
    conn.executemany("INSERT INTO jobs (dataset_id, job_index, state) VALUES (?, ?, 'waiting')",
                     ((dataset_id, j) for j in range(first, first + count)))
    conn.executemany("INSERT INTO tasks (task_id, dataset_id, job_index, task_index, state,"
                     " updated) VALUES (?, ?, ?, ?, ?, ?)", tasks)
    conn.execute("UPDATE datasets SET jobs_materialized = ? WHERE dataset_id = ?",
                 (first + count, dataset_id))


def change_tasks(conn: sqlite3.Connection, moves: Sequence[Sequence[Any]],
                 voided: Iterable[Sequence[Any]], jobs: Iterable[Sequence[Any]]) -> None:
    """Apply an owner's or admin's change to a range of jobs: `moves` rows for
    MOVE_TASK_WITH_RECORD (all of them must apply, or StaleWrite), the attempts it voids
    (ended, reason, attempt_id), and the jobs' new states (rows for SET_JOB)."""
    cursor = conn.executemany(MOVE_TASK_WITH_RECORD.sql, moves)
    if cursor.rowcount != len(moves):
        raise StaleWrite("task states changed while the action ran; try again")
    conn.executemany("UPDATE attempts SET state = 'reset', ended = ?, error_class = 'reset',"
                     " error_message = ? WHERE attempt_id = ? AND state = 'processing'", voided)
    conn.executemany(SET_JOB.sql, jobs)


def set_dataset_status(conn: sqlite3.Connection, dataset_id: int, status: str, priority: float,
                       now: float, event: tuple[int, str, str]) -> None:
    """Store a dataset's status and priority with the event (user_id, action, detail) that
    changed them."""
    conn.execute(SET_DATASET.sql, (status, priority, now, dataset_id))
    conn.execute(ADD_EVENT.sql, (now, dataset_id, *event))
