"""Black-hole protection: notice a node that fails every task it is given.

A broken node (a full disk, a missing library, a bad mount) makes every task that lands on it
fail within seconds, and a pilot there would drain the whole queue into failures. Counting
consecutive failures of *different* tasks tells such a node from a task that is itself broken:
one bad task failing again and again on its retries says nothing about the node. Only failures
that the node can cause count (task errors and staging errors); a task killed for using more
than it requested is the task's doing, and a requeued attempt is nobody's failure, so neither
counts nor breaks the streak. A success ends it, and from then on the failures of its dataset
count no more: a node that has run a dataset's task to the end can run that dataset, and its
failures there are the dataset's own (five in a row of a dataset that fails one time in five
happen by chance every few thousand tasks; the matchmaker, which sees every host, still tells a
node that breaks later by how seldom the dataset fails elsewhere).
"""

from __future__ import annotations

from floe.config.states import ErrorClass

NODE_FAILURES = (ErrorClass.TASK_ERROR, ErrorClass.STAGING_ERROR)


class FailureStreak:
    """Consecutive failures of different tasks; suspect at `limit` of them (0: never)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tasks: dict[int, str] = {}
        self._ran: set[object] = set()  # datasets with a task run to the end on this node

    def record(self, task_id: int, error_class: ErrorClass | None, message: str = "",
               dataset: object = None) -> None:
        """Count how a task (of `dataset`, None: not known) ended on this node."""
        if error_class is None:
            self._tasks.clear()
            if dataset is not None:
                self._ran.add(dataset)
        elif error_class in NODE_FAILURES and (dataset is None or dataset not in self._ran):
            self._tasks[task_id] = f"{error_class.value}: {message}"

    @property
    def length(self) -> int:
        return len(self._tasks)

    @property
    def suspect(self) -> bool:
        return self.limit > 0 and len(self._tasks) >= self.limit

    def describe(self) -> str:
        """One sentence for the matchmaker's record of the pilot."""
        last = list(self._tasks.items())[-1] if self._tasks else (None, "")
        return (f"{len(self._tasks)} different tasks failed in a row on this node "
                f"(tasks {', '.join(str(t) for t in self._tasks)}); the last: task {last[0]}, "
                f"{last[1][:300]}")
