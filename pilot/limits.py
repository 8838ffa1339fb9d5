"""The limits policy: which running tasks to kill for using more than their share of the slot.

A pure function of numbers, so that a table of cases can pin it. A task may use more memory or
disk than it requested while the slot has room that the other tasks' requests do not claim:
every task is entitled to its full request at any moment, whether it uses it yet or not. When
the slot no longer holds every task's max(use, request), the task furthest above its request is
killed, then the next, until it does. Walltime is per task: past its request plus a grace.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from floe.config.resources import format_duration, format_size

RESOURCES = ("memory", "disk")


@dataclass(frozen=True)
class TaskLoad:
    """One running task as the policy sees it: what it requested and what it uses now."""

    key: Hashable
    memory_request: int
    disk_request: int
    walltime: float
    memory: int = 0
    disk: int = 0
    elapsed: float = 0.0
    peak_memory: int = 0
    peak_disk: int = 0

    def requested(self, resource: str) -> int:
        return getattr(self, f"{resource}_request")

    def using(self, resource: str) -> int:
        return getattr(self, resource)

    def peak(self, resource: str) -> int:
        return max(getattr(self, f"peak_{resource}"), self.using(resource))


@dataclass(frozen=True)
class Overuse:
    """Why a task was killed: the resource ("memory", "disk" or "walltime"), what it requested
    and the peak it reached (bytes, or seconds for walltime)."""

    resource: str
    requested: float
    peak: float

    def message(self) -> str:
        if self.resource == "walltime":
            return (f"ran {format_duration(self.peak)}, past its walltime of "
                    f"{format_duration(self.requested)}")
        return (f"used {format_size(self.peak)} {self.resource} (requested "
                f"{format_size(self.requested)}) when the slot had no more to spare")

    def to_dict(self) -> dict[str, Any]:
        return {"resource": self.resource, "requested": self.requested, "peak": self.peak}


def overused(loads: Sequence[TaskLoad], *, memory: int, disk: int,
             walltime_grace: float) -> dict[Hashable, Overuse]:
    """The tasks to kill, by key, for a slot of `memory` and `disk` bytes shared by `loads`."""
    verdicts: dict[Hashable, Overuse] = {}
    for load in loads:
        if load.elapsed > load.walltime + walltime_grace:
            verdicts[load.key] = Overuse("walltime", load.walltime, load.elapsed)
    for resource, total in zip(RESOURCES, (memory, disk)):
        alive = [load for load in loads if load.key not in verdicts]
        while sum(max(load.using(resource), load.requested(resource)) for load in alive) > total:
            over = [load for load in alive if load.using(resource) > load.requested(resource)]
            if not over:
                break  # every task is within its request: the slot was overcommitted, not them
            victim = max(over, key=lambda load: _excess(load, resource))
            verdicts[victim.key] = Overuse(resource, victim.requested(resource),
                                           victim.peak(resource))
            alive.remove(victim)
    return verdicts


def _excess(load: TaskLoad, resource: str) -> tuple[int, float]:
    """Bytes above the request, then the ratio to it, so the biggest offender goes first."""
    using, requested = load.using(resource), load.requested(resource)
    return using - requested, using / max(requested, 1)
