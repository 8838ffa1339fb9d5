"""Read-only queries (run on the reader): what the engine rebuilds its memory from at start,
which of a factory's pilots registered, and what the API's listings and detail views show.

Listings page by keyset ("after" the last id seen), never by offset, so that page 10,000 of a
million-job dataset costs the same as page 1.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .database import Database

ATTEMPT_COLUMNS = (
    "attempt_id, task_id, dataset_id, pilot_id, site, host, batch_id, state, started,"
    " last_heartbeat, ended, req_cpus, req_memory, req_disk, req_gpus, req_walltime, gpus,"
    " cpu_time, wall_time, peak_memory, peak_disk, peak_gpu_memory, gpu_time, exit_code,"
    " error_class, error_message, statistics, outputs, warnings, config_version")


# -- what the engine loads at start ------------------------------------------------------------

async def datasets_to_load(db: Database) -> list[Any]:
    return await db.fetchall(
        "SELECT dataset_id, user_id, config, task_id_base, tasks_per_job, jobs,"
        " jobs_materialized, priority, status, created, updated FROM datasets")


async def steering_versions(db: Database) -> list[Any]:
    """Every steering change made after submission, by dataset and version."""
    return await db.fetchall("SELECT dataset_id, version, first_job, steering, user_id, created"
                             " FROM steering_versions ORDER BY dataset_id, version")


async def task_state_codes(db: Database, first: int, end: int, states: Sequence[str]
                           ) -> bytes:
    """The state of every task with an id in [first, end) (one dataset's: ids are arithmetic),
    in id order, one byte each: a state's position in `states`, 255 for any other. SQLite
    makes them in one pass over the rows in id order (a table scan of that range of the
    primary key), 10 million in about a second, instead of a Python object per row."""
    if end <= first:
        return b""
    codes = " ".join(f"WHEN '{state}' THEN '{chr(_FIRST_CODE + code)}'"
                     for code, state in enumerate(states))
    row = await db.reader.execute_fetchall(
        f"SELECT group_concat(CASE state {codes} ELSE '{chr(_UNKNOWN_CODE)}' END, '')"
        " FROM tasks NOT INDEXED WHERE task_id >= ? AND task_id < ?", (first, end))
    codes_in_order = (row[0][0] or "").encode("ascii").translate(_DECODE)
    # The order is that of the scan (SQLite before 3.44 names none for group_concat): a few
    # tasks looked up by id confirm it.
    probes = sorted({first, (first + end) // 2, end - 1})
    found = await db.reader.execute_fetchall(
        "SELECT task_id, state FROM tasks WHERE task_id IN (?, ?, ?)", (probes * 3)[:3])
    for task_id, state in found:
        offset = task_id - first
        if offset < len(codes_in_order) and (
                state not in states or codes_in_order[offset] != states.index(state)):
            raise RuntimeError(f"the states of tasks {first} to {end - 1} did not come in id "
                               "order from the database")
    return codes_in_order


_FIRST_CODE = ord("A")
_UNKNOWN_CODE = ord("~")
_DECODE = bytes((byte - _FIRST_CODE) % 256 if byte != _UNKNOWN_CODE else 255
                for byte in range(256))


async def task_records(db: Database, first: int, end: int) -> list[Any]:
    """The tasks with an id in [first, end) that carry retry records or grown requirements."""
    return await db.fetchall(
        "SELECT task_id, failures, lost, requirements FROM tasks NOT INDEXED"
        " WHERE task_id >= ? AND task_id < ?"
        " AND (failures > 0 OR lost > 0 OR requirements IS NOT NULL)", (first, end))


async def running_pilots(db: Database) -> list[Any]:
    return await db.fetchall(
        "SELECT pilot_id, site_id, host, batch_system, batch_id, resources, registered,"
        " last_seen FROM pilots"
        " WHERE state = 'running'")


async def processing_attempts(db: Database) -> list[Any]:
    return await db.fetchall(
        "SELECT attempt_id, dataset_id, task_id, pilot_id, passkey_hash, started,"
        " last_heartbeat, site, host, req_cpus, req_gpus FROM attempts"
        " WHERE state = 'processing'")


async def usage(db: Database) -> list[Any]:
    """Stored fair-share usage: (entity, value, updated), entity "user:ID" or "dataset:ID"."""
    return await db.fetchall("SELECT entity, value, updated FROM usage")


async def wall_times(db: Database) -> list[Any]:
    """(dataset_id, task_index, count, mean, m2, max) of each task name's recorded wall time."""
    return await db.fetchall(
        "SELECT dataset_id, task_index, count, mean, m2, max FROM statistics"
        " WHERE kind = 'resource' AND name = 'wall_time'")


async def next_ids(db: Database) -> tuple[int, int, int]:
    """The next free attempt id, pilot id and dataset id."""
    attempts = await db.fetchone("SELECT max(a) AS a FROM (SELECT max(attempt_id) AS a FROM"
                                 " attempts UNION ALL SELECT max(last_attempt) FROM retired)")
    pilots = await db.fetchone("SELECT max(pilot_id) AS p FROM pilots")
    datasets = await db.fetchone("SELECT max(dataset_id) AS d FROM datasets")
    return (attempts["a"] or 0) + 1, (pilots["p"] or 0) + 1, (datasets["d"] or 0) + 1


async def ended_attempt(db: Database, attempt_id: int) -> Any:
    """What a late report or heartbeat of an attempt no longer in flight is answered from."""
    return await db.fetchone(
        "SELECT state, passkey_hash, error_message, pilot_id, dataset_id FROM attempts"
        " WHERE attempt_id = ?", (attempt_id,))


async def pilot_registered(db: Database, pilot_id: int) -> bool:
    """Whether a pilot of this id ever registered, whatever its state now (a pilot that has
    ended is no longer in memory, but may still report what it ran)."""
    return await db.fetchone("SELECT 1 FROM pilots WHERE pilot_id = ?", (pilot_id,)) is not None


# -- what factories ask ---------------------------------------------------------------------------

REGISTERED_BATCH_IDS = (
    "SELECT batch_id, json_extract(resources, '$.short') AS short FROM pilots"
    " WHERE site_id = ? AND batch_system = ? AND batch_id IN ({})")
_IDS_PER_QUERY = 500  # bound parameters per statement: older SQLite takes at most 999


async def registered_batch_ids(db: Database, site_id: int, batch_system: str,
                               batch_ids: Sequence[str]) -> dict[str, list[Any]]:
    """Those of `batch_ids` that a pilot registered with at this site under this batch system,
    ever (whatever its state now), in the order given, each once: with what each pilot found
    short of its shape's promise (`short` of what it measured; empty when nothing)."""
    wanted = list(dict.fromkeys(batch_ids))
    found: dict[str, list[Any]] = {}
    for start in range(0, len(wanted), _IDS_PER_QUERY):
        chunk = wanted[start:start + _IDS_PER_QUERY]
        rows = await db.fetchall(REGISTERED_BATCH_IDS.format(", ".join("?" * len(chunk))),
                                 (site_id, batch_system, *chunk))
        for row in rows:
            short = json.loads(row["short"]) if row["short"] else []
            found[row["batch_id"]] = found.get(row["batch_id"], []) + (
                short if isinstance(short, list) else [])
    return {batch_id: found[batch_id] for batch_id in wanted if batch_id in found}


EMPTY_BATCH_IDS = (
    "SELECT batch_id, EXISTS (SELECT 1 FROM attempts a WHERE a.pilot_id = p.pilot_id) AS ran"
    " FROM pilots p WHERE site_id = ? AND batch_system = ? AND batch_id IN ({})")


async def empty_batch_ids(db: Database, site_id: int, batch_system: str,
                          batch_ids: Sequence[str]) -> list[str]:
    """Those of `batch_ids` whose pilots registered at this site and were never handed a
    task, in the order given, each once."""
    wanted = list(dict.fromkeys(batch_ids))
    ran: dict[str, bool] = {}
    for start in range(0, len(wanted), _IDS_PER_QUERY):
        chunk = wanted[start:start + _IDS_PER_QUERY]
        for row in await db.fetchall(EMPTY_BATCH_IDS.format(", ".join("?" * len(chunk))),
                                     (site_id, batch_system, *chunk)):
            ran[row["batch_id"]] = ran.get(row["batch_id"], False) or bool(row["ran"])
    return [batch_id for batch_id in wanted if batch_id in ran and not ran[batch_id]]


async def unused_pilot_tokens(db: Database, site_id: int, now: float) -> int:
    """How many of the site's pilot tokens have not expired and registered no pilot yet."""
    row = await db.fetchone("SELECT count(*) AS n FROM tokens WHERE site_id = ? AND expires > ?"
                            " AND kind = 'pilot' AND used IS NULL", (site_id, now))
    return row["n"] if row else 0


# -- what the API shows ---------------------------------------------------------------------------

def attempt_record(row: Any, tails: bool) -> dict[str, Any]:
    """An attempt's row as the API shows it (with its log tails if `tails`)."""
    data = dict(row)
    data.pop("stdout_tail", None)
    data.pop("stderr_tail", None)
    for key in ("statistics", "outputs", "gpus"):
        if data.get(key):
            data[key] = json.loads(data[key])
    data["warnings"] = json.loads(data["warnings"]) if data.get("warnings") else []
    data["config_version"] = data.get("config_version") or 1
    data["requested"] = {k[4:]: data.pop(k) for k in list(data) if k.startswith("req_")}
    data["used"] = {k: data.pop(k) for k in ("cpu_time", "wall_time", "peak_memory", "peak_disk",
                                             "peak_gpu_memory", "gpu_time")}
    if tails:
        data["stdout_tail"] = row["stdout_tail"]
        data["stderr_tail"] = row["stderr_tail"]
    return data


async def jobs(db: Database, dataset_id: int, state: str | None, after: int,
               limit: int) -> list[dict[str, Any]]:
    if state:
        rows = await db.fetchall(
            "SELECT job_index, state FROM jobs WHERE dataset_id = ? AND state = ?"
            " AND job_index > ? ORDER BY job_index LIMIT ?", (dataset_id, state, after, limit))
    else:
        rows = await db.fetchall(
            "SELECT job_index, state FROM jobs WHERE dataset_id = ? AND job_index > ?"
            " ORDER BY job_index LIMIT ?", (dataset_id, after, limit))
    return [{"job": r["job_index"], "state": r["state"]} for r in rows]


async def tasks(db: Database, dataset_id: int, *, state: str | None, task_index: int | None,
                job: int | None, after: int, limit: int) -> list[dict[str, Any]]:
    """A page of a dataset's tasks in id order. Task ids are arithmetic (schema.py), so the
    dataset's tasks, or one job's, are a range of ids: without a state filter the page is read
    straight off that range of the primary key, with one through the (dataset, state, id) index;
    neither ever sorts, so page 10,000 of a million jobs costs what page 1 does."""
    bounds = await db.fetchone("SELECT task_id_base AS base, jobs, tasks_per_job AS n"
                               " FROM datasets WHERE dataset_id = ?", (dataset_id,))
    if bounds is None:
        return []
    low, high = bounds["base"], bounds["base"] + bounds["jobs"] * bounds["n"]
    if job is not None:
        low, high = bounds["base"] + job * bounds["n"], bounds["base"] + (job + 1) * bounds["n"]
    # One lower bound: given two, SQLite may seek by the looser one and filter its way up.
    where = ["task_id > ?", "task_id < ?"]
    params: list[Any] = [max(after, low - 1), high]
    if state:
        where += ["dataset_id = ?", "state = ?"]
        params += [dataset_id, state]
    else:  # the unary + keeps SQLite on the id range rather than the state index
        where.append("+dataset_id = ?")
        params.append(dataset_id)
    if task_index is not None:
        where.append("task_index = ?")
        params.append(task_index)
    rows = await db.fetchall(
        "SELECT task_id, job_index, task_index, state, failures, lost, requirements, reason,"
        f" updated FROM tasks WHERE {' AND '.join(where)} ORDER BY task_id LIMIT ?",
        (*params, limit))
    return [_task(r) for r in rows]


def _task(row: Any) -> dict[str, Any]:
    return {"task_id": row["task_id"], "job": row["job_index"], "task_index": row["task_index"],
            "state": row["state"], "failures": row["failures"], "lost": row["lost"],
            "grown_requirements": json.loads(row["requirements"]) if row["requirements"]
            else None, "reason": row["reason"], "updated": row["updated"]}


async def task(db: Database, task_id: int) -> dict[str, Any] | None:
    row = await db.fetchone(
        "SELECT task_id, dataset_id, job_index, task_index, state, failures, lost, requirements,"
        " reason, updated FROM tasks WHERE task_id = ?", (task_id,))
    if row is None:
        return None
    data = _task(row)
    data["dataset"] = row["dataset_id"]
    return data


async def attempts_of_task(db: Database, task_id: int) -> list[dict[str, Any]]:
    rows = await db.fetchall(f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE task_id = ?"
                             " ORDER BY attempt_id", (task_id,))
    return [attempt_record(r, tails=False) for r in rows]


async def attempt(db: Database, attempt_id: int) -> dict[str, Any] | None:
    row = await db.fetchone(f"SELECT {ATTEMPT_COLUMNS}, stdout_tail, stderr_tail FROM attempts"
                            " WHERE attempt_id = ?", (attempt_id,))
    return attempt_record(row, tails=True) if row else None


async def attempt_log(db: Database, attempt_id: int, stream: str) -> Any:
    """An attempt's dataset and the tail of one of its logs, with the full log that builds
    before the log store kept in the database (null since)."""
    return await db.fetchone(
        f"SELECT a.dataset_id, a.{stream}_tail AS tail, l.text AS text FROM attempts a"
        " LEFT JOIN logs l ON l.attempt_id = a.attempt_id AND l.stream = ?"
        " WHERE a.attempt_id = ?", (stream, attempt_id))


async def attempt_span(db: Database, dataset_id: int) -> tuple[int, int | None, int | None]:
    """(count, first id, last id) of a dataset's attempts."""
    row = await db.fetchone("SELECT count(*) AS n, min(attempt_id) AS first, max(attempt_id)"
                            " AS last FROM attempts WHERE dataset_id = ?", (dataset_id,))
    return row["n"], row["first"], row["last"]


async def retired(db: Database) -> list[Any]:
    """The datasets archived or deleted, with where their attempts went."""
    return await db.fetchall("SELECT * FROM retired ORDER BY dataset_id")


async def statistics(db: Database, dataset_id: int) -> list[dict[str, Any]]:
    """Per statistic and task: count, sum, mean, standard deviation, min, max; plus each
    statistic over all tasks of the dataset (task null), combined with Chan's formula."""
    rows = await db.fetchall(
        "SELECT task_index, kind, name, count, sum, mean, m2, min, max FROM statistics"
        " WHERE dataset_id = ? ORDER BY kind, name, task_index", (dataset_id,))
    result: list[dict[str, Any]] = []
    totals: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        result.append(_stat(r["kind"], r["name"], r["task_index"], r["count"], r["sum"],
                            r["mean"], r["m2"], r["min"], r["max"]))
        total = totals.setdefault((r["kind"], r["name"]), [0, 0.0, 0.0, 0.0, r["min"], r["max"]])
        n_a, mean_a, m2_a = total[0], total[2], total[3]
        n_b, mean_b, m2_b = r["count"], r["mean"], r["m2"]
        n = n_a + n_b
        delta = mean_b - mean_a
        total[0] = n
        total[1] += r["sum"]
        total[2] = mean_a + delta * n_b / n
        total[3] = m2_a + m2_b + delta * delta * n_a * n_b / n
        total[4] = min(total[4], r["min"])
        total[5] = max(total[5], r["max"])
    for (kind, name), (n, total_sum, mean, m2, low, high) in totals.items():
        result.append(_stat(kind, name, None, n, total_sum, mean, m2, low, high))
    return result


def _stat(kind: str, name: str, task_index: int | None, count: int, total: float, mean: float,
          m2: float, low: float, high: float) -> dict[str, Any]:
    return {"kind": kind, "name": name, "task_index": task_index, "count": count, "sum": total,
            "mean": mean, "stddev": (m2 / count) ** 0.5 if count else 0.0, "min": low,
            "max": high}


async def events(db: Database, dataset_id: int, limit: int = 100) -> list[dict[str, Any]]:
    rows = await db.fetchall(
        "SELECT e.time, e.action, e.detail, u.name AS user FROM events e"
        " LEFT JOIN users u ON u.user_id = e.user_id WHERE e.dataset_id = ?"
        " ORDER BY e.event_id DESC LIMIT ?", (dataset_id, limit))
    return [dict(r) for r in rows]


PILOT_STATES = ("running", "exited", "lost")


async def pilots(db: Database, *, site_id: int | None, state: str | None, after: int,
                 limit: int) -> list[dict[str, Any]]:
    if site_id is not None and not state:
        # The (site, state) index gives one state's pilots in id order; all of a site's are the
        # merge of one page per state, so a site's long history is never read whole and sorted.
        pages = [await pilots(db, site_id=site_id, state=one, after=after, limit=limit)
                 for one in PILOT_STATES]
        return sorted((p for page in pages for p in page), key=lambda p: p["pilot_id"])[:limit]
    where = ["p.pilot_id > ?"]
    params: list[Any] = [after]
    if site_id is not None:
        where.append("p.site_id = ?")
        params.append(site_id)
    if state:
        where.append("p.state = ?")
        params.append(state)
    rows = await db.fetchall(
        "SELECT p.pilot_id, s.name AS site, p.host, p.batch_system, p.batch_id, p.resources,"
        " p.state, p.registered, p.last_seen, p.ended, p.exit_reason, p.suspect,"
        " (SELECT count(*) FROM attempts a WHERE a.pilot_id = p.pilot_id) AS attempts_run"
        f" FROM pilots p JOIN sites s ON s.site_id = p.site_id WHERE {' AND '.join(where)}"
        " ORDER BY p.pilot_id LIMIT ?", (*params, limit))
    result = []
    for r in rows:
        data = dict(r)
        data["resources"] = json.loads(data["resources"])
        data["suspect"] = bool(data["suspect"])
        result.append(data)
    return result


async def token(db: Database, token_hash: str) -> dict[str, Any] | None:
    """The stored facts of a token: kind, user_id or site_id, pilot_id, expires, revoked, and
    when a pilot token was used to register its pilot."""
    row = await db.fetchone(
        "SELECT kind, user_id, site_id, pilot_id, expires, revoked, used FROM tokens"
        " WHERE token_hash = ?", (token_hash,))
    return dict(row) if row else None


async def accounts(db: Database) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every user (user_id, name, role, share) and every site (site_id, name)."""
    users = await db.fetchall("SELECT user_id, name, role, share FROM users")
    sites = await db.fetchall("SELECT site_id, name FROM sites")
    return [dict(r) for r in users], [dict(r) for r in sites]


async def user(db: Database, user_id: int) -> dict[str, Any] | None:
    row = await db.fetchone(
        "SELECT user_id, name, role, share FROM users WHERE user_id = ?", (user_id,))
    return dict(row) if row else None


async def user_id_by_name(db: Database, name: str) -> int | None:
    row = await db.fetchone("SELECT user_id FROM users WHERE name = ?", (name,))
    return row["user_id"] if row else None


async def site(db: Database, site_id: int) -> dict[str, Any] | None:
    row = await db.fetchone("SELECT site_id, name FROM sites WHERE site_id = ?", (site_id,))
    return dict(row) if row else None


async def site_id_by_name(db: Database, name: str) -> int | None:
    row = await db.fetchone("SELECT site_id FROM sites WHERE name = ?", (name,))
    return row["site_id"] if row else None


async def pilot_counts(db: Database) -> list[dict[str, Any]]:
    """How many pilots each site has in each state (from the (site_id, state) index)."""
    rows = await db.fetchall(
        "SELECT s.name AS site, p.state, count(*) AS count FROM pilots p"
        " JOIN sites s ON s.site_id = p.site_id GROUP BY s.name, p.state ORDER BY s.name, p.state")
    return [dict(r) for r in rows]
