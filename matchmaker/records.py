"""Where an attempt's record is read from: the hot database (with full logs in the log store), or,
once its dataset is archived, the dataset's archive. The API, the pages and `floe` read
attempts through here and see the same answers either way."""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .storage import queries
from .storage.archive import Archive
from .storage.database import Database
from .storage.logstore import STREAMS, LogStore


@dataclass
class Archived:
    """Where the datasets archived so far keep their attempts."""

    info: dict[int, dict[str, Any]] = field(default_factory=dict)
    """By dataset: its `retired` row (path, attempts, bytes, time)."""
    ranges: list[tuple[int, int, int]] = field(default_factory=list)
    """(first attempt id, last attempt id, dataset id), by first id."""

    def add(self, row: dict[str, Any]) -> None:
        dataset_id = row["dataset_id"]
        self.info[dataset_id] = row
        if row["first_attempt"] is not None and row["last_attempt"] is not None:
            self.ranges.append((row["first_attempt"], row["last_attempt"], dataset_id))
            self.ranges.sort()

    def path(self, dataset_id: int) -> Path | None:
        row = self.info.get(dataset_id)
        return Path(row["path"]) if row else None

    def drop(self, dataset_id: int) -> None:
        self.info.pop(dataset_id, None)
        self.ranges = [r for r in self.ranges if r[2] != dataset_id]

    def candidates(self, attempt_id: int) -> list[Path]:
        """The archives whose attempt ids span `attempt_id` (datasets ran side by side, so
        their spans overlap)."""
        upto = bisect_right(self.ranges, (attempt_id, float("inf"), 0))
        return [Path(self.info[d]["path"]) for first, last, d in self.ranges[:upto]
                if last >= attempt_id]


async def attempts_of_task(db: Database, archived: Archived, dataset_id: int,
                           task_id: int) -> list[dict[str, Any]]:
    path = archived.path(dataset_id)
    if path is not None:
        return await asyncio.to_thread(Archive(path).attempts_of_task, task_id)
    return await queries.attempts_of_task(db, task_id)


async def attempt(db: Database, archived: Archived, attempt_id: int) -> dict[str, Any] | None:
    """One attempt with its log tails, wherever it is kept."""
    found = await queries.attempt(db, attempt_id)
    if found is not None:
        return found
    for path in archived.candidates(attempt_id):
        found = await asyncio.to_thread(Archive(path).attempt, attempt_id)
        if found is not None:
            return found
    return None


async def log_text(db: Database, archived: Archived, logs: LogStore, attempt_id: int,
                   stream: str, tail_limit: int) -> tuple[str, bool] | None:
    """An attempt's full log if its pilot uploaded it, else its tail: (text, complete). Pilots
    upload only logs longer than a tail, so a tail shorter than `tail_limit` (the server's
    tail_bytes) is the whole log. None if there is no such attempt."""
    if stream not in STREAMS:
        raise ValueError(f"an attempt has two logs, stdout and stderr; not {stream!r}")
    row = await queries.attempt_log(db, attempt_id, stream)
    if row is not None:
        full = await logs.read(row["dataset_id"], attempt_id, stream)
        if full is not None:
            return full.decode("utf-8", errors="replace"), True
        if row["text"] is not None:
            return row["text"], True
        return _tail(row["tail"], tail_limit)
    for path in archived.candidates(attempt_id):
        archive = Archive(path)
        record = await asyncio.to_thread(archive.attempt, attempt_id)
        if record is None:
            continue
        full = await asyncio.to_thread(archive.log, attempt_id, stream)
        if full is not None:
            return full.decode("utf-8", errors="replace"), True
        return _tail(record[f"{stream}_tail"], tail_limit)
    return None


def _tail(tail: str | None, tail_limit: int) -> tuple[str, bool]:
    tail = tail or ""
    # A few bytes short of the limit: a cut may have split a character.
    return tail, len(tail.encode()) < tail_limit - 4
