"""Every change to the database, and the only place that knows its columns.

Three parts, in the order of this file:

- the `Statement`s that requests contribute rows to in group commits, in the order they run.
  Guarded ones are compare-and-set on the state the change expects to leave, so that a late or
  duplicate write is refused instead of overwriting newer facts;
- the row writers that scheduling code calls to add a change to a `Batch`, by name
  (`end_attempt(batch, attempt_id, state=..., ...)`): nothing outside `storage/` builds a row;
- the bodies of `Database.exclusive` and `Database.planned` jobs, which take the writer's
  connection inside its open transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from floe.config.resources import Requirements
from floe.config.states import AttemptState, TaskState

from .database import Batch, StaleWrite, Statement

# A submit's rows run first in their group commit: a dispatch of one of its tasks may share it.
ADD_DATASET = Statement(
    "submit dataset",
    "INSERT INTO datasets (dataset_id, user_id, description, config, jobs, tasks_per_job,"
    " task_id_base, jobs_materialized, priority, status, created, updated)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    order=1)

ADD_JOB = Statement(
    "add job",
    "INSERT INTO jobs (dataset_id, job_index, state) VALUES (?, ?, 'waiting')",
    order=2)

ADD_TASK = Statement(
    "add task",
    "INSERT INTO tasks (task_id, dataset_id, job_index, task_index, state, updated)"
    " VALUES (?, ?, ?, ?, ?, ?)",
    order=3)

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

# A pilot token registers one pilot: used (guarded) in the registration's own batch, which
# also stores the key the pilot speaks with from then on.
USE_PILOT_TOKEN = Statement(
    "use pilot token",
    "UPDATE tokens SET used = ?, pilot_id = ? WHERE token_hash = ? AND kind = 'pilot'"
    " AND used IS NULL AND revoked IS NULL",
    order=13, guarded=True)

INSERT_PILOT_KEY = Statement(
    "pilot key",
    "INSERT INTO tokens (token_hash, kind, site_id, pilot_id, created, expires)"
    " VALUES (?, 'pilot-key', ?, ?, ?, ?)",
    order=14)

INSERT_ATTEMPT = Statement(
    "dispatch attempt",
    "INSERT INTO attempts (attempt_id, task_id, dataset_id, pilot_id, site, host, batch_id,"
    " passkey_hash, state, started, last_heartbeat, req_cpus, req_memory, req_disk, req_gpus,"
    " req_walltime, gpus, config_version)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'processing', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    order=20)

END_ATTEMPT = Statement(
    "record attempt result",
    "UPDATE attempts SET state = ?, ended = ?, last_heartbeat = ?, cpu_time = ?, wall_time = ?,"
    " peak_memory = ?, peak_disk = ?, peak_gpu_memory = ?, gpu_time = ?, exit_code = ?,"
    " error_class = ?, error_message = ?, statistics = ?, outputs = ?, stdout_tail = ?,"
    " stderr_tail = ?, warnings = ? WHERE attempt_id = ? AND state = 'processing'",
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


# -- row writers: a change added to a batch, by name ------------------------------------------

def add_event(batch: Batch, dataset_id: int | None, user_id: int | None, action: str,
              detail: str, now: float) -> Batch:
    """Something that happened, for the history (a dataset's, or the server's with no
    dataset)."""
    return batch.add(ADD_EVENT, (now, dataset_id, user_id, action, detail))


def insert_pilot(batch: Batch, pilot_id: int, *, site_id: int, host: str, batch_system: str,
                 batch_id: str, resources: Mapping[str, Any], now: float) -> Batch:
    return batch.add(INSERT_PILOT, (pilot_id, site_id, host, batch_system, batch_id,
                                    json.dumps(resources), now, now))


def pilot_key(batch: Batch, pilot_id: int, *, token_hash: str, key_hash: str, site_id: int,
              now: float, expires: float | None) -> Batch:
    """The registration of `pilot_id` uses its pilot token (refused, StaleWrite, if it was
    used already) and gives it its key."""
    batch.add(USE_PILOT_TOKEN, (now, pilot_id, token_hash))
    return batch.add(INSERT_PILOT_KEY, (key_hash, site_id, pilot_id, now, expires))


def pilot_seen(batch: Batch, pilot_id: int, now: float) -> Batch:
    return batch.add(PILOT_SEEN, (now, pilot_id))


def end_pilot(batch: Batch, pilot_id: int, *, state: str, now: float, reason: str,
              suspect: bool) -> Batch:
    """A running pilot ended (`state` exited or lost); a pilot already ended is left alone."""
    return batch.add(END_PILOT, (state, now, reason, int(suspect), pilot_id))


def insert_attempt(batch: Batch, attempt_id: int, *, task_id: int, dataset_id: int,
                   pilot_id: int, site: str, host: str, batch_id: str, passkey_hash: str,
                   now: float, requirements: Requirements, config_version: int) -> Batch:
    return batch.add(INSERT_ATTEMPT, (
        attempt_id, task_id, dataset_id, pilot_id, site, host, batch_id, passkey_hash, now, now,
        requirements.cpus, requirements.memory, requirements.disk, requirements.gpus,
        requirements.walltime, None, config_version))


@dataclass(frozen=True)
class Used:
    """What an attempt used, as its record keeps it."""

    cpu_time: float | None = None
    wall_time: float | None = None
    peak_memory: float | None = None
    peak_disk: float | None = None
    peak_gpu_memory: float | None = None
    gpu_time: float | None = None


def end_attempt(batch: Batch, attempt_id: int, *, state: AttemptState, now: float, used: Used,
                exit_code: int | None, error_class: str | None, error_message: str | None,
                statistics: Mapping[str, float], outputs: Sequence[Any],
                stdout_tail: str | None, stderr_tail: str | None,
                warnings: Sequence[str] = ()) -> Batch:
    """An attempt in flight ended (guarded: refused if it had already ended)."""
    return batch.add(END_ATTEMPT, (
        state.value, now, now, used.cpu_time, used.wall_time, used.peak_memory, used.peak_disk,
        used.peak_gpu_memory, used.gpu_time, exit_code, error_class, error_message,
        json.dumps(dict(statistics)) if statistics else None,
        json.dumps(list(outputs)) if outputs else None, stdout_tail, stderr_tail,
        json.dumps(list(warnings)) if warnings else None, attempt_id))


def attempt_heartbeat(batch: Batch, attempt_id: int, *, now: float, used: Used) -> Batch:
    return batch.add(HEARTBEAT, (now, used.cpu_time, used.wall_time, used.peak_memory,
                                 used.peak_disk, used.peak_gpu_memory, attempt_id))


@dataclass(frozen=True)
class TaskRecord:
    """What a task's row keeps besides its state: its retries and losses so far, its grown
    requirements (None: as its definition says), and why it last changed."""

    failures: int
    lost: int
    requirements: Requirements | None
    reason: str


def move_task(batch: Batch, task_id: int, old: TaskState, new: TaskState, now: float,
              record: TaskRecord | None = None) -> Batch:
    """A task's state change (guarded on `old`), with its record when one is given."""
    if record is None:
        return batch.add(MOVE_TASK, (new.value, now, task_id, old.value))
    return batch.add(MOVE_TASK_WITH_RECORD, _record_row(task_id, old, new, now, record))


def _record_row(task_id: int, old: TaskState, new: TaskState, now: float,
                record: TaskRecord) -> tuple[Any, ...]:
    grown = record.requirements
    return (new.value, record.failures, record.lost,
            json.dumps(grown.to_dict()) if grown is not None else None, record.reason[:4000],
            now, task_id, old.value)


def set_job(batch: Batch, dataset_id: int, job_index: int, state: str) -> Batch:
    return batch.add(SET_JOB, (state, dataset_id, job_index))


def add_statistics(batch: Batch, dataset_id: int, task_index: int, kind: str,
                   values: Mapping[str, float]) -> Batch:
    """Values of a task's statistics (`kind` user or resource), merged into their aggregates."""
    return batch.extend(ADD_STATISTIC, [(dataset_id, task_index, kind, name, float(value))
                                        for name, value in values.items()])


def set_dataset(batch: Batch, dataset_id: int, *, status: str, priority: float,
                now: float) -> Batch:
    return batch.add(SET_DATASET, (status, priority, now, dataset_id))


def save_usage(batch: Batch, entity: str, value: float, now: float) -> Batch:
    """A fair-share ledger's value for `entity` ("user:N" or "dataset:N")."""
    return batch.add(SAVE_USAGE, (entity, value, now))


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


def add_pilot_tokens(conn: sqlite3.Connection, site_id: int, token_hashes: Iterable[str],
                     now: float, expires: float) -> None:
    """Insert pilot tokens (each registers one pilot), and drop the pilot tokens and keys that
    have expired."""
    conn.executemany("INSERT INTO tokens (token_hash, kind, site_id, created, expires)"
                     " VALUES (?, 'pilot', ?, ?, ?)",
                     ((token_hash, site_id, now, expires) for token_hash in token_hashes))
    conn.execute("DELETE FROM tokens WHERE kind IN ('pilot', 'pilot-key') AND expires < ?",
                 (now,))


def add_dataset(batch: Batch, dataset_id: int, *, user_id: int, description: str, config: str,
                jobs: int, tasks_per_job: int, task_id_base: int, priority: float, status: str,
                now: float, detail: str, first_jobs: int,
                tasks: Iterable[tuple[int, int, int, str]]) -> Batch:
    """A new dataset (`config` is its JSON text) with its "submit" event and its first
    `first_jobs` jobs, waiting, with their tasks given as (task_id, job_index, task_index,
    state)."""
    batch.add(ADD_DATASET, (dataset_id, user_id, description, config, jobs, tasks_per_job,
                            task_id_base, first_jobs, priority, status, now, now))
    batch.add(ADD_EVENT, (now, dataset_id, user_id, "submit", detail))
    batch.extend(ADD_JOB, ((dataset_id, job) for job in range(first_jobs)))
    return batch.extend(ADD_TASK, ((task_id, dataset_id, job, index, state, now)
                                   for task_id, job, index, state in tasks))


def add_jobs(conn: sqlite3.Connection, dataset_id: int, first: int, count: int,
             tasks: Iterable[tuple[int, int, int, str]], now: float) -> None:
    """Insert jobs [first, first + count) of a dataset, waiting, with their tasks given as
    (task_id, job_index, task_index, state)."""
    conn.executemany(ADD_JOB.sql, ((dataset_id, j) for j in range(first, first + count)))
    conn.executemany(ADD_TASK.sql, ((task_id, dataset_id, job, index, state, now)
                                    for task_id, job, index, state in tasks))
    conn.execute("UPDATE datasets SET jobs_materialized = ? WHERE dataset_id = ?",
                 (first + count, dataset_id))


def change_tasks(conn: sqlite3.Connection, moves: Sequence[tuple[int, TaskState, TaskState,
                                                                 TaskRecord]],
                 voided: Iterable[int], jobs: Iterable[tuple[int, int, str]], now: float,
                 reason: str) -> None:
    """Apply an owner's or admin's change to a range of jobs: the tasks' moves (task id, old
    state, new state, record; all of them must apply, or StaleWrite), the attempts it voids
    with `reason`, and the jobs' new states (dataset id, job index, state)."""
    cursor = conn.executemany(MOVE_TASK_WITH_RECORD.sql, [
        _record_row(task_id, old, new, now, record) for task_id, old, new, record in moves])
    if cursor.rowcount != len(moves):
        raise StaleWrite("task states changed while the action ran; try again")
    conn.executemany("UPDATE attempts SET state = 'reset', ended = ?, error_class = 'reset',"
                     " error_message = ? WHERE attempt_id = ? AND state = 'processing'",
                     ((now, reason, attempt_id) for attempt_id in voided))
    conn.executemany(SET_JOB.sql, ((state, dataset_id, job) for dataset_id, job, state in jobs))


def set_dataset_jobs(conn: sqlite3.Connection, dataset_id: int, jobs: int, status: str,
                     now: float, event: tuple[int, str, str] | None) -> None:
    """Store how many jobs a dataset has (grown, or cut to those created) and its status, with
    the event (user_id, action, detail) that changed them, if any."""
    conn.execute("UPDATE datasets SET jobs = ?, status = ?, updated = ? WHERE dataset_id = ?",
                 (jobs, status, now, dataset_id))
    if event is not None:
        conn.execute(ADD_EVENT.sql, (now, dataset_id, *event))


def set_dataset_status(conn: sqlite3.Connection, dataset_id: int, status: str, priority: float,
                       now: float, event: tuple[int, str, str]) -> None:
    """Store a dataset's status and priority with the event (user_id, action, detail) that
    changed them."""
    conn.execute(SET_DATASET.sql, (status, priority, now, dataset_id))
    conn.execute(ADD_EVENT.sql, (now, dataset_id, *event))


def last_attempt(conn: sqlite3.Connection, dataset_id: int) -> int | None:
    """The highest attempt id of a dataset (read off the attempts' dataset index at once,
    however many it has)."""
    return conn.execute("SELECT max(attempt_id) FROM attempts WHERE dataset_id = ?",
                        (dataset_id,)).fetchone()[0]


def retire_dataset(conn: sqlite3.Connection, dataset_id: int, *, kind: str, now: float,
                   user_id: int, attempts: int, first: int | None, last: int | None,
                   path: str | None, size: int | None, detail: str) -> dict[str, Any]:
    """Record that a dataset was archived or deleted (a deleted one's row stays as a tombstone,
    so its id is never given out again); returns the `retired` row."""
    row = {"dataset_id": dataset_id, "kind": kind, "time": now, "user_id": user_id,
           "attempts": attempts, "first_attempt": first, "last_attempt": last, "path": path,
           "bytes": size, "purged": None}
    conn.execute("INSERT OR REPLACE INTO retired (dataset_id, kind, time, user_id, attempts,"
                 " first_attempt, last_attempt, path, bytes, purged) VALUES (:dataset_id, :kind,"
                 " :time, :user_id, :attempts, :first_attempt, :last_attempt, :path, :bytes,"
                 " :purged)", row)
    if kind == "deleted":
        conn.execute("UPDATE datasets SET status = 'deleted', updated = ? WHERE dataset_id = ?",
                     (now, dataset_id))
    conn.execute(ADD_EVENT.sql, (now, dataset_id, user_id, kind.removesuffix("d"), detail))
    return row


def purge_tasks(conn: sqlite3.Connection, low: int, high: int, everything: bool) -> int:
    """Remove the attempts and full logs of the tasks with ids in [low, high), and with
    `everything` the tasks and their jobs too; returns the attempts removed."""
    conn.execute("DELETE FROM logs WHERE attempt_id IN (SELECT attempt_id FROM attempts"
                 " WHERE task_id >= ? AND task_id < ?)", (low, high))
    removed = conn.execute("DELETE FROM attempts WHERE task_id >= ? AND task_id < ?",
                           (low, high)).rowcount
    if everything:
        rows = conn.execute("DELETE FROM tasks WHERE task_id >= ? AND task_id < ?"
                            " RETURNING dataset_id, job_index", (low, high)).fetchall()
        conn.executemany("DELETE FROM jobs WHERE dataset_id = ? AND job_index = ?",
                         set(rows))
    return removed


def purged(conn: sqlite3.Connection, dataset_id: int, now: float, everything: bool) -> None:
    """A dataset's rows are gone: with `everything` (deleted), its statistics, fair-share usage
    and steering versions too."""
    if everything:
        conn.execute("DELETE FROM statistics WHERE dataset_id = ?", (dataset_id,))
        conn.execute("DELETE FROM usage WHERE entity = ?", (f"dataset:{dataset_id}",))
        conn.execute("DELETE FROM steering_versions WHERE dataset_id = ?", (dataset_id,))
    conn.execute("UPDATE retired SET purged = ? WHERE dataset_id = ?", (now, dataset_id))


def add_steering_version(conn: sqlite3.Connection, dataset_id: int, *, version: int,
                         first_job: int, steering: Mapping[str, Any], user_id: int, now: float,
                         detail: str) -> None:
    """A dataset's steering values from job `first_job` on, with the event that says who
    changed what."""
    conn.execute("INSERT INTO steering_versions (dataset_id, version, first_job, steering,"
                 " user_id, created) VALUES (?, ?, ?, ?, ?, ?)",
                 (dataset_id, version, first_job, json.dumps(steering), user_id, now))
    conn.execute(ADD_EVENT.sql, (now, dataset_id, user_id, "steering", detail))
