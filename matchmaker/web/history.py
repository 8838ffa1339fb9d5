"""Attempts ended per hour over the last day: the charts of the overview and of each dataset,
and the sites' failure rates.

An attempt's end and final state are written once, so the counts of an hour that is over never
change: they are read once and kept, and a page reads only the current hour (and the one before,
for a minute into the new hour, while its last commits land). A pool that ends ten attempts a
second reads a day of them once, not on every page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..storage import reports
from ..storage.database import Database

SPAN = 24
SETTLE = 60.0

Hours = Mapping[int, list[dict[str, Any]]]


class History:
    """The per-hour counts of one matchmaker process."""

    def __init__(self) -> None:
        self._kept: dict[int, list[dict[str, Any]]] = {}

    async def last_day(self, db: Database, now: float) -> Hours:
        """Rows of reports.ended_by_hour for each of the last `SPAN` hours, by hour."""
        current = int(now // 3600)
        first = current - SPAN + 1
        settled = int((now - SETTLE) // 3600)  # hours before this one are over for good
        self._kept = {h: rows for h, rows in self._kept.items() if h >= first}
        start = next(h for h in range(first, current + 1)
                     if h not in self._kept or h >= settled)
        fresh: dict[int, list[dict[str, Any]]] = {h: [] for h in range(start, current + 1)}
        for row in await reports.ended_by_hour(db, start * 3600, (current + 1) * 3600):
            fresh[row["hour"]].append(row)
        self._kept.update((h, rows) for h, rows in fresh.items() if h < settled)
        return {**self._kept, **fresh}


HISTORY = web.AppKey("web history", History)


def by_state(hours: Hours, dataset_id: int | None = None) -> dict[int, dict[str, int]]:
    """Attempts ended per hour and state, of every dataset or of one."""
    result: dict[int, dict[str, int]] = {}
    for hour, rows in hours.items():
        counts = result.setdefault(hour, {})
        for row in rows:
            if dataset_id is None or row["dataset_id"] == dataset_id:
                counts[row["state"]] = counts.get(row["state"], 0) + row["n"]
    return result


def by_site(hours: Hours) -> dict[str, dict[str, int]]:
    """Attempts ended over the whole span, per site and state."""
    result: dict[str, dict[str, int]] = {}
    for rows in hours.values():
        for row in rows:
            counts = result.setdefault(row["site"], {})
            counts[row["state"]] = counts.get(row["state"], 0) + row["n"]
    return result
