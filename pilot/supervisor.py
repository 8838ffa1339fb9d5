"""Apply the limits policy to the tasks that share one slot.

Every running task registers here; whenever one of them has measured itself it calls `check()`,
which asks `pilot.limits` who is over its share and stops those runs. There is no thread of its
own: the tasks' sampling drives it, so one task alone and many side by side work the same way.
"""

from __future__ import annotations

import threading
from typing import Protocol

from floe.config.resources import Requirements
from floe.config.states import ErrorClass
from floe.pilot.limits import Overuse, TaskLoad, overused

WALLTIME_GRACE = 60.0
"""Seconds a task may run past its requested walltime before it is killed."""


class Supervised(Protocol):
    def load(self) -> TaskLoad:
        ...

    def stop(self, error_class: ErrorClass, message: str,
             overuse: Overuse | None = None) -> None:
        ...


class Supervisor:
    """The memory and disk of one slot, shared by the runs registered with it."""

    def __init__(self, *, memory: int, disk: int, walltime_grace: float = WALLTIME_GRACE) -> None:
        self.memory = memory
        self.disk = disk
        self.walltime_grace = walltime_grace
        self._runs: list[Supervised] = []
        self._lock = threading.Lock()

    @classmethod
    def alone(cls, requirements: Requirements) -> Supervisor:
        """For a task that runs by itself in exactly what it requested."""
        return cls(memory=requirements.memory, disk=requirements.disk)

    def add(self, run: Supervised) -> None:
        with self._lock:
            self._runs.append(run)

    def remove(self, run: Supervised) -> None:
        with self._lock:
            if run in self._runs:
                self._runs.remove(run)

    def check(self) -> None:
        """Stop every registered run that the limits policy finds over its share now."""
        with self._lock:
            runs = {id(run): run for run in self._runs}
            loads = [run.load() for run in runs.values()]
            verdicts = overused(loads, memory=self.memory, disk=self.disk,
                                walltime_grace=self.walltime_grace)
            for key, overuse in verdicts.items():
                runs[key].stop(ErrorClass.RESOURCE_OVERUSE, overuse.message(), overuse)
