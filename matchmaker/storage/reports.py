"""Read-only aggregates behind the web pages: attempts ended per hour, completion rates, a
dataset's latest attempts for its charts, and how each site's pilots have fared (run on the
reader).

Each query reads a bounded slice through an index: a time window through `attempts_ended`, the
most recent attempts of a dataset through `attempts_dataset`, the most recent pilots through the
primary key. None of them grows with the whole history, which is kept forever.
"""

from __future__ import annotations

from typing import Any

from .database import Database

RECENT_ATTEMPTS = 20_000
RECENT_PILOTS = 10_000


async def ended_by_hour(db: Database, since: float, until: float) -> list[dict[str, Any]]:
    """Attempts that ended in [since, until), counted by hour (Unix time // 3600), dataset,
    site and state (complete, failed, reset)."""
    # INDEXED BY: a dataset of a million attempts must not be read whole for one day's chart.
    rows = await db.fetchall(
        "SELECT CAST(ended / 3600 AS INTEGER) AS hour, dataset_id, site, state, count(*) AS n"
        " FROM attempts INDEXED BY attempts_ended WHERE ended >= ? AND ended < ?"
        " GROUP BY hour, dataset_id, site, state", (since, until))
    return [dict(r) for r in rows]


async def completed_since(db: Database, since: float) -> dict[int, int]:
    """Attempts completed since `since`, per dataset."""
    rows = await db.fetchall(
        "SELECT dataset_id, count(*) AS n FROM attempts INDEXED BY attempts_ended"
        " WHERE ended >= ? AND state = 'complete' GROUP BY dataset_id", (since,))
    return {row["dataset_id"]: row["n"] for row in rows}


async def recent_attempts(db: Database, dataset_id: int,
                          recent: int = RECENT_ATTEMPTS) -> list[dict[str, Any]]:
    """The dataset's `recent` latest attempts, newest first, as the dataset page's charts need
    them: where each ran, its state and end, its wall time and peak memory, and for those that
    did not complete, the error class, message and the end of stderr (its last 400 characters:
    enough for the last line, without reading every tail whole)."""
    rows = await db.fetchall(
        "SELECT attempt_id, task_id, site, host, state, started, ended, wall_time, peak_memory,"
        " error_class, CASE WHEN error_class IS NOT NULL THEN error_message END AS error_message,"
        " CASE WHEN error_class IS NOT NULL THEN substr(stderr_tail, -400) END AS stderr_end"
        " FROM attempts WHERE dataset_id = ? ORDER BY attempt_id DESC LIMIT ?",
        (dataset_id, recent))
    return [dict(r) for r in rows]


async def empty_pilots(db: Database, recent: int = RECENT_PILOTS) -> dict[str, dict[str, int]]:
    """Per site, of the `recent` latest pilots: how many ended, and how many of those ended
    without ever being given a task."""
    rows = await db.fetchall(
        "SELECT s.name AS site, count(*) AS ended, sum(NOT EXISTS (SELECT 1 FROM attempts a"
        " WHERE a.pilot_id = p.pilot_id)) AS empty FROM pilots p"
        " JOIN sites s ON s.site_id = p.site_id"
        " WHERE p.pilot_id > (SELECT coalesce(max(pilot_id), 0) FROM pilots) - ?"
        " AND p.ended IS NOT NULL GROUP BY s.name", (recent,))
    return {row["site"]: {"ended": row["ended"], "empty": row["empty"]} for row in rows}
