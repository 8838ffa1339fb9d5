"""Black-hole protection: notice a node that fails every task it is given.

A broken node (a full disk, a missing library, a bad mount) makes every task that lands on it
fail within seconds, and a pilot there would drain the whole queue into failures. Counting
consecutive failures of *different* tasks tells such a node from a task that is itself broken:
one bad task failing again and again on its retries says nothing about the node. Only failures
that the node can cause count (task errors and staging errors); a task killed for using more
than it requested is the task's doing, and a requeued attempt is nobody's failure, so neither
counts nor breaks the streak. A success ends it.

A failure counts less the more often its dataset's tasks failed on this node before the streak
(`config.failures.weight`): five failures in a row of a dataset that fails one time in five
happen by chance every few thousand tasks, so such a dataset takes about ten, while a node that
breaks after running a healthy dataset well is still suspect at the fifth. Until the node has
run `LEARNING` attempts of a dataset that it has run to the end, that dataset's failures do not
count at all: a few attempts tell too little of how often it fails (five in a row soon after
its first success are no news for a dataset that fails half the time), and the node evidently
runs it.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from floe.config.failures import weight
from floe.config.states import ErrorClass

NODE_FAILURES = (ErrorClass.TASK_ERROR, ErrorClass.STAGING_ERROR)
LEARNING = 50
"""Attempts of a dataset on this node before its failures there are weighed (see above)."""


@dataclass
class _Failure:
    words: str
    dataset: Hashable
    weight: float
    attempts: int = 1


class FailureStreak:
    """Consecutive failures of different tasks; suspect once they count `limit` (0: never)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tasks: dict[int, _Failure] = {}
        self._datasets: dict[Hashable, list[int]] = {}  # successes and failures, each

    def record(self, task_id: int, error_class: ErrorClass | None, message: str = "",
               dataset: Hashable = None) -> None:
        """Count how a task (of `dataset`, None: not known) ended on this node."""
        counts = self._datasets.setdefault(dataset, [0, 0])
        if error_class is None:
            counts[0] += 1
            self._tasks.clear()
            return
        if error_class not in NODE_FAILURES:
            return
        counts[0] += 1
        counts[1] += 1
        words = f"{error_class.value}: {message}"
        failure = self._tasks.get(task_id)
        if failure is not None:  # the same task again: still one
            failure.words, failure.attempts = words, failure.attempts + 1
            return
        here = sum(f.attempts for f in self._tasks.values() if f.dataset == dataset) + 1
        ended, failed = counts[0] - here, counts[1] - here  # before the streak
        learning = ended > failed and counts[0] < LEARNING  # it ran here, not long ago
        self._tasks[task_id] = _Failure(words, dataset,
                                        0.0 if learning else weight(failed, ended))

    @property
    def length(self) -> int:
        return len(self._tasks)

    @property
    def suspect(self) -> bool:
        return self.limit > 0 and sum(f.weight for f in self._tasks.values()) >= \
            self.limit - 1e-9

    def describe(self) -> str:
        """One sentence for the matchmaker's record of the pilot."""
        last = list(self._tasks.items())[-1] if self._tasks else (None, None)
        words = last[1].words if last[1] is not None else ""
        return (f"{len(self._tasks)} different tasks failed in a row on this node "
                f"(tasks {', '.join(str(t) for t in self._tasks)}); the last: task {last[0]}, "
                f"{words[:300]}")
