"""Learned runtimes: how long a task of a dataset really runs, for packing short tasks in series.

Users declare walltimes generously (the default is an hour), and the matchmaker would fit one
such task into an hour's slot. So it learns, per dataset and task name, the wall times of the
recent successful attempts, and once it has seen `TRUSTED_AFTER` of them it packs tasks in series
by a high percentile of those (`PERCENTILE` of the last `WINDOW`, times `MARGIN`) instead of by
the declared walltime. The declared walltime stays the limit the pilot enforces, and each task's
walltime must still fit the time the slot will have left when the tasks ahead of it have run
their learned times; a task that starts later than that (because one ahead overran) and whose
walltime no longer fits is given back unstarted by the pilot and requeued at no cost to it.

After a restart the estimate starts from the recorded statistics (mean plus two standard
deviations, at most the maximum seen) and learns on from there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

WINDOW = 64
"""How many recent wall times of one task name are kept."""
TRUSTED_AFTER = 5
"""Successful attempts seen before packing trusts the learned time over the declared walltime."""
PERCENTILE = 0.95
MARGIN = 1.5
"""The learned time is this many times the percentile (short tasks vary a lot, relatively)."""
FLOOR = 0.001
"""The least time a task is expected to take, in seconds."""


class Learned:
    """The recent wall times of one task name of one dataset, and the time to pack it by."""

    __slots__ = ("_estimate", "_next", "_walls", "seen")

    def __init__(self) -> None:
        self._walls: list[float] = []
        self._next = 0  # where the next wall time goes once the window is full
        self.seen = 0
        self._estimate: float | None = None

    def add(self, wall: float) -> Callable[[], None]:
        """Learn one successful attempt's wall time; returns what undoes it (for a failed
        write)."""
        walls, index = self._walls, self._next
        if len(walls) < WINDOW:
            walls.append(wall)
            replaced = None
        else:
            replaced = walls[index]
            walls[index] = wall
            self._next = (index + 1) % WINDOW
        self.seen += 1
        self._estimate = None

        def undo() -> None:
            if replaced is None:
                walls.pop()
            else:
                walls[index] = replaced
                self._next = index
            self.seen -= 1
            self._estimate = None

        return undo

    def seed(self, mean: float, sd: float, most: float, count: int) -> None:
        """Start from recorded statistics (after a restart)."""
        self._walls = [min(most, mean + 2 * sd)]
        self._next = 0
        self.seen = count
        self._estimate = None

    def seconds(self, walltime: int) -> float:
        """The time to pack this task by: the learned one once trusted, at most `walltime`."""
        if self.seen < TRUSTED_AFTER or not self._walls:
            return float(walltime)
        if self._estimate is None:
            ordered = sorted(self._walls)
            high = ordered[min(len(ordered) - 1, math.ceil(PERCENTILE * len(ordered)) - 1)]
            self._estimate = max(FLOOR, high * MARGIN)
        return min(float(walltime), self._estimate)


def expected_seconds(learned: Learned | None, walltime: int) -> float:
    """The time to pack a task by (its declared walltime until its runtime is learned)."""
    return float(walltime) if learned is None else learned.seconds(walltime)
