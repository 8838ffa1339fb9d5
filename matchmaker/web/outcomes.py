"""What a dataset's latest attempts say, shaped for its page: when they ended (the progress over
time and the finish that the recent rate points to), what went wrong grouped by the last line
that stderr said, where failures happen (by site and by host), and the spread of runtime and
peak memory per task. Pure functions over the rows of `reports.recent_attempts`; no I/O."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Row = Mapping[str, Any]

# Collapsed so that the same failure on other files, events or addresses is one group; the
# order matters: hex and paths first, or their digits would become numbers.
_MASKS = (
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I),
     "<id>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.I), "<hex>"),
    (re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.I), "<hex>"),
    (re.compile(r"(?:[a-z]+://\S+|[A-Za-z]:\\\S+|(?<![\w.])(?:\.{0,2}/[\w.@%+~-]+)+/?)"),
     "<path>"),
    (re.compile(r"(?<![\w.])[-+]?\d+(?:[.,:]\d+)*(?:e[-+]?\d+)?(?![\w])", re.I), "<n>"),
)
LONGEST = 200  # characters of a normalized line kept: the rest rarely tells groups apart


def last_line(text: str | None) -> str | None:
    """The last line of `text` that holds more than white space, stripped; None if none."""
    for line in reversed((text or "").splitlines()):
        if line.strip():
            return line.strip()
    return None


def normalized(line: str) -> str:
    """`line` with ids, hex values, paths and numbers collapsed to <id>, <hex>, <path>, <n>."""
    for pattern, mask in _MASKS:
        line = pattern.sub(mask, line)
    line = re.sub(r"\s+", " ", line).strip()
    return line if len(line) <= LONGEST else line[:LONGEST - 1] + "…"


@dataclass
class ErrorGroup:
    """Attempts that failed alike: the same error class and the same normalized last line of
    stderr (of the message, where stderr said nothing)."""

    error_class: str
    said: str
    example: str
    attempt_id: int
    task_id: int
    count: int = 0
    tasks: set[int] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)


def error_groups(rows: Iterable[Row], limit: int = 15) -> tuple[list[ErrorGroup], int]:
    """The most common groups of attempts that did not complete, most attempts first, each with
    its latest attempt as the example (rows come newest first); and how many groups there were."""
    groups: dict[tuple[str, str], ErrorGroup] = {}
    for row in rows:
        if row["error_class"] is None:
            continue
        line = last_line(row["stderr_end"]) or last_line(row["error_message"]) or "(nothing said)"
        key = (row["error_class"], normalized(line))
        group = groups.get(key)
        if group is None:
            group = groups[key] = ErrorGroup(row["error_class"], key[1], line,
                                             row["attempt_id"], row["task_id"])
        group.count += 1
        group.tasks.add(row["task_id"])
        group.hosts.add(row["host"])
    ranked = sorted(groups.values(), key=lambda g: (-g.count, -g.attempt_id))
    return ranked[:limit], len(ranked)


@dataclass
class Place:
    """Attempts that ended at one site or host, and how many of them failed."""

    name: str
    ended: int = 0
    failed: int = 0


def failures_by(rows: Iterable[Row], where: Callable[[Row], str]) -> list[Place]:
    """Ended attempts and failures per place (`where` of a row: its site, its host), the most
    failures first."""
    places: dict[str, Place] = {}
    for row in rows:
        if row["ended"] is None or row["state"] not in ("complete", "failed"):
            continue
        place = places.setdefault(where(row), Place(where(row)))
        place.ended += 1
        place.failed += row["state"] == "failed"
    return sorted(places.values(), key=lambda p: (-p.failed, -p.ended, p.name))


def ends(rows: Iterable[Row]) -> dict[str, list[float]]:
    """When attempts completed and failed, each list in time order."""
    found: dict[str, list[float]] = {"complete": [], "failed": []}
    for row in rows:
        if row["ended"] is not None and row["state"] in found:
            found[row["state"]].append(row["ended"])
    for times in found.values():
        times.sort()
    return found


@dataclass
class Estimate:
    """When the remaining tasks would be done at the recent completion rate; `seconds` is None
    where there is no estimate, and `why` says why."""

    seconds: float | None
    per_hour: float
    window: float
    why: str = ""


def estimate(completed: Sequence[float], remaining: int, now: float, start: float,
             window: float = 3600.0) -> Estimate:
    """The time left for `remaining` tasks at the rate of the completions (times in
    `completed`) of the last `window` seconds, or of the dataset's life where it is younger."""
    window = min(window, now - start)
    if window <= 0:
        return Estimate(None, 0.0, 0.0, "no task has completed yet")
    recent = sum(1 for t in completed if t > now - window)
    per_hour = 3600 * recent / window
    if recent < 2:
        return Estimate(None, per_hour, window,
                        "too few tasks completed in the last hour to tell a rate"
                        if recent else "no task completed in the last hour")
    return Estimate(remaining * window / recent, per_hour, window)


def spread(rows: Iterable[Row], task_index: Callable[[int], int],
           value: Callable[[Row], float | None]) -> dict[int, dict[str, list[float]]]:
    """`value` of each completed or failed attempt, per task index and state."""
    found: dict[int, dict[str, list[float]]] = {}
    for row in rows:
        if row["ended"] is None or row["state"] not in ("complete", "failed"):
            continue
        measured = value(row)
        if measured is not None:
            found.setdefault(task_index(row["task_id"]), {}).setdefault(
                row["state"], []).append(measured)
    return found


def runtime(row: Row) -> float | None:
    """An attempt's wall time as its pilot measured it, else from its start to its end."""
    if row["wall_time"] is not None:
        return row["wall_time"]
    return max(row["ended"] - row["started"], 0.0) if row["ended"] is not None else None


def peak_memory(row: Row) -> float | None:
    return row["peak_memory"]
