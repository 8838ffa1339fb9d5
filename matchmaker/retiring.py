"""Datasets that leave the hot database: archived (attempts and full logs into a compressed
archive that floe still reads; the dataset, its tasks and statistics stay) or deleted
(everything, but a tombstone row so that its ids are never given out again).

Only an ended dataset leaves (complete, or failed: `floe abort` ends one), so nothing runs or is
created for it meanwhile; while it leaves, every other action on it is refused. The decision is
one small transaction; the rows then go a range of tasks at a time, each range its own short
transaction between the pilots' commits, so removing a million attempts never stalls matching.
A server stopped halfway finishes the removal at its next start (`resume`).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from floe.config.dataset import MAX_JOBS

from .engine import Engine, User, deleted_by
from .errors import Conflict
from .model import DatasetState, DatasetStatus
from .storage import archive, queries, writes

log = logging.getLogger(__name__)

TASKS_PER_STEP = 5_000
"""Tasks whose rows one removal transaction takes."""


def check_open(engine: Engine, dataset: DatasetState, action: str) -> None:
    """Refuse `action` on a dataset that is archived or leaving."""
    if dataset.id in engine.retired:
        raise Conflict(f"dataset {dataset.id} is being archived or deleted; it cannot "
                       f"{action} now")
    if dataset.id in engine.archived.info:
        raise Conflict(f"dataset {dataset.id} is archived (its attempts are in "
                       f"{engine.archived.info[dataset.id]['path']}); it cannot {action}: "
                       "submit its config again as a new dataset")


def _check_ended(engine: Engine, dataset: DatasetState, action: str) -> None:
    if dataset.id in engine.retired:
        raise Conflict(f"dataset {dataset.id} is being archived or deleted already")
    if dataset.status not in (DatasetStatus.COMPLETE, DatasetStatus.FAILED) \
            or dataset.materialized < dataset.jobs:
        raise Conflict(f"dataset {dataset.id} is {dataset.status}: only an ended dataset can "
                       f"be {action}; abort it first (floe abort {dataset.id})")


def _span(dataset: DatasetState) -> tuple[int, int]:
    """The ids its tasks may have, including the room it kept to grow into."""
    return dataset.base, dataset.base + MAX_JOBS * dataset.ntasks


def _claim(engine: Engine, dataset: DatasetState, action: str) -> None:
    """Refuse a dataset that cannot leave now, else mark it leaving (every other action on it
    is refused until `_release`)."""
    if action == "archived" and dataset.id in engine.archived.info:
        raise Conflict(f"dataset {dataset.id} is archived already, in "
                       f"{engine.archived.info[dataset.id]['path']}")
    _check_ended(engine, dataset, action)
    engine.retired.add(dataset.id)
    engine.retire_errors.pop(dataset.id, None)


def _release(engine: Engine, dataset_id: int) -> None:
    engine.retired.discard(dataset_id)


async def archive_dataset(engine: Engine, dataset: DatasetState, user: User) -> dict[str, Any]:
    """Move a dataset's attempts and full logs into its archive and wait until its rows are
    gone; returns its `retired` row."""
    _claim(engine, dataset, "archived")
    return await _archive(engine, dataset, user)


def begin_archive(engine: Engine, dataset: DatasetState, user: User) -> None:
    """`archive_dataset` in the background (a million attempts take minutes): refused at once
    if the dataset cannot be archived; how it went is the dataset's `archived` or
    `archive_error` (views.summary)."""
    _claim(engine, dataset, "archived")
    engine.start_background((f"archive-{dataset.id}", _recorded(
        engine, dataset.id, _archive(engine, dataset, user))))


async def _recorded(engine: Engine, dataset_id: int, work: Any) -> None:
    try:
        await work
    except Exception as exc:
        engine.retire_errors[dataset_id] = str(exc)
        log.exception("archiving or deleting dataset %d failed", dataset_id)


async def _archive(engine: Engine, dataset: DatasetState, user: User) -> dict[str, Any]:
    try:
        written = await asyncio.to_thread(archive.write, engine.settings.database, dataset.id,
                                          engine.logs)
        low, high = _span(dataset)
        detail = (f"{written.attempts:,} attempts and {written.logs:,} full logs moved into "
                  f"{written.path} ({written.bytes:,} bytes)")

        def job(conn: Any) -> dict[str, Any]:
            # Attempts come only by dispatch, which an ended dataset has none of: the highest
            # id proves that none came after the archive's snapshot.
            if writes.last_attempt(conn, dataset.id) != written.last_attempt:
                raise Conflict(f"dataset {dataset.id} gained attempts while it was archived; "
                               "try again")
            return writes.retire_dataset(
                conn, dataset.id, kind="archived", now=engine.clock(), user_id=user.user_id,
                attempts=written.attempts, first=written.first_attempt,
                last=written.last_attempt, path=str(written.path), size=written.bytes,
                detail=detail)

        try:
            row = await engine.db.exclusive(job, after=engine.archived.add)
        except BaseException:
            written.path.unlink(missing_ok=True)
            raise
        log.info("dataset %d archived by %s: %s", dataset.id, user.name, detail)
        dataset.watch.changed()
        await _purge(engine, dataset.id, low, high, everything=False)
        return row
    finally:
        _release(engine, dataset.id)


async def delete_dataset(engine: Engine, dataset: DatasetState, user: User,
                         wait: bool = False) -> dict[str, Any]:
    """Remove a dataset and everything recorded of it (its archive too, if it has one); returns
    its `retired` row once the decision is committed (the dataset is gone from then on), its
    rows being removed in the background (or, with `wait`, once they are)."""
    _claim(engine, dataset, "deleted")
    low, high = _span(dataset)
    was = engine.archived.info.get(dataset.id)
    try:  # counted on the reader: an ended dataset gains no attempts
        count, first, last = await queries.attempt_span(engine.db, dataset.id)
    except BaseException:
        _release(engine, dataset.id)
        raise

    def plan() -> Any:  # at its turn, from what memory then says
        _check_still_ended(dataset)

        def job(conn: Any) -> dict[str, Any]:
            nonlocal count, first, last
            if was is not None:  # its archived attempts count, and keep their ids taken
                count += was["attempts"]
                firsts = [x for x in (first, was["first_attempt"]) if x is not None]
                lasts = [x for x in (last, was["last_attempt"]) if x is not None]
                first, last = min(firsts, default=None), max(lasts, default=None)
            return writes.retire_dataset(
                conn, dataset.id, kind="deleted", now=engine.clock(), user_id=user.user_id,
                attempts=count, first=first, last=last, path=None, size=None,
                detail=f"with its {count:,} attempts")
        return job

    def forget(row: dict[str, Any]) -> None:
        engine.deleted[dataset.id] = deleted_by(engine, row)
        engine.forget_dataset(dataset)
        engine.archived.drop(dataset.id)
        dataset.watch.changed()

    try:
        row = await engine.db.planned(plan, after=forget, alone=True)
    except BaseException:
        _release(engine, dataset.id)
        raise
    log.info("dataset %d deleted by %s (%d attempts)", dataset.id, user.name, row["attempts"])

    async def remove() -> None:
        try:
            await _purge(engine, dataset.id, low, high, everything=True)
            if was is not None:
                await asyncio.to_thread(Path(was["path"]).unlink, True)
        finally:
            _release(engine, dataset.id)

    if wait:
        await remove()
    else:
        engine.start_background((f"delete-{dataset.id}", _recorded(engine, dataset.id,
                                                                    remove())))
    return row


def _check_still_ended(dataset: DatasetState) -> None:
    if dataset.status not in (DatasetStatus.COMPLETE, DatasetStatus.FAILED):
        raise Conflict(f"dataset {dataset.id} started again ({dataset.status}) before it "
                       "could be deleted; abort it first")


async def _purge(engine: Engine, dataset_id: int, low: int, high: int, everything: bool) -> int:
    """Remove a retired dataset's rows a range of tasks at a time, then its full logs."""
    removed = 0
    # Its tasks end where its last one is; the reserved room beyond holds nothing.
    top = await engine.db.fetchone("SELECT max(task_id) AS t FROM tasks WHERE task_id >= ?"
                                   " AND task_id < ?", (low, high))
    end = (top["t"] + 1) if top and top["t"] is not None else low
    for first in range(low, end, TASKS_PER_STEP):
        last = min(first + TASKS_PER_STEP, end)
        removed += await engine.db.exclusive(
            lambda conn, a=first, b=last: writes.purge_tasks(conn, a, b, everything))
    await engine.db.exclusive(
        lambda conn: writes.purged(conn, dataset_id, engine.clock(), everything))
    await engine.logs.remove(dataset_id)
    log.info("dataset %d: %d attempts removed from the database", dataset_id, removed)
    return removed


async def resume(engine: Engine) -> None:
    """Finish the removals a stopped server left halfway (run beside the server's work)."""
    try:
        for row in await queries.retired(engine.db):
            if row["purged"] is not None:
                continue
            base = await engine.db.fetchone("SELECT task_id_base AS b, tasks_per_job AS n FROM"
                                            " datasets WHERE dataset_id = ?",
                                            (row["dataset_id"],))
            if base is not None:
                await _purge(engine, row["dataset_id"], base["b"],
                             base["b"] + MAX_JOBS * base["n"],
                             everything=row["kind"] == "deleted")
    except Exception:  # the next start tries again; nothing is lost meanwhile
        log.exception("finishing the removal of archived or deleted datasets failed")
