"""The in-memory ready queue of one dataset, indexed by resource class.

Tasks with the same task definition and the same requirements form a *class*; a pilot's slot is
checked against each class once, never against each task, so an ask stays cheap with a million
ready tasks. Each class keeps two FIFO queues of task ids: *continuing* (tasks of jobs that have
already started: downstream DAG tasks and retries) and *fresh* (the first tasks of new jobs), and
continuing tasks go first so that started jobs finish before new ones begin.

Entries are removed lazily: a task that leaves the ready state by another path (suspended, reset)
stays in its deque and is skipped when popped, while the per-class `ready` count stays exact.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from floe.config.resources import Requirements, Slot, fits, why_not

ClassKey = tuple[int, Requirements]


class TaskClass:
    """Ready tasks of one task definition that share the same requirements."""

    __slots__ = ("continuing", "fresh", "ready", "requirements", "task_index")

    def __init__(self, task_index: int, requirements: Requirements) -> None:
        self.task_index = task_index
        self.requirements = requirements
        self.continuing: deque[int] = deque()
        self.fresh: deque[int] = deque()
        self.ready = 0


class Owner:
    """The ready counts and epoch of all the queues of one user together: a slot that none of
    a user's datasets had anything for skips the user at once until one of them changes (see
    dispatch.choose)."""

    __slots__ = ("epoch", "gpu_ready", "ready")

    def __init__(self) -> None:
        self.ready = 0
        self.gpu_ready = 0
        self.epoch = 0


class DatasetQueue:
    """Ready tasks of one dataset by class."""

    def __init__(self) -> None:
        self.classes: dict[ClassKey, TaskClass] = {}
        self.ready = 0
        self.gpu_ready = 0  # of `ready`, tasks that need GPUs: lets a GPU phase skip us fast
        self.on_ready: Callable[[Requirements, int], None] | None = None
        """Told of every task that becomes ready (holding.Holding.poke wakes held asks)."""
        self.epoch = 0
        """Counts the times tasks became ready here: a slot this queue had nothing for has
        nothing here until it changes (see dispatch.choose)."""
        self.owner = Owner()
        """The counts of all the queues of this dataset's user (`adopt`); its own until then."""

    def adopt(self, owner: Owner) -> None:
        """Count this queue in `owner` (its user's), from now on."""
        owner.ready += self.ready
        owner.gpu_ready += self.gpu_ready
        owner.epoch += 1
        self.owner = owner

    def push(self, task_id: int, task_index: int, requirements: Requirements,
             continuing: bool) -> None:
        key = (task_index, requirements)
        task_class = self.classes.get(key)
        if task_class is None:
            task_class = self.classes[key] = TaskClass(task_index, requirements)
        (task_class.continuing if continuing else task_class.fresh).append(task_id)
        task_class.ready += 1
        self.ready += 1
        owner = self.owner
        owner.ready += 1
        if requirements.gpus:
            self.gpu_ready += 1
            owner.gpu_ready += 1
        self.epoch += 1
        owner.epoch += 1
        if self.on_ready is not None:
            self.on_ready(requirements, 1)

    def push_many(self, task_ids: list[int], task_index: int, requirements: Requirements,
                  continuing: bool = False) -> None:
        """Append tasks of one class in bulk: fresh ones (a newly materialized chunk of jobs),
        or continuing ones (the queue rebuilt)."""
        key = (task_index, requirements)
        task_class = self.classes.get(key)
        if task_class is None:
            task_class = self.classes[key] = TaskClass(task_index, requirements)
        (task_class.continuing if continuing else task_class.fresh).extend(task_ids)
        count = len(task_ids)
        task_class.ready += count
        self.ready += count
        owner = self.owner
        owner.ready += count
        if requirements.gpus:
            self.gpu_ready += count
            owner.gpu_ready += count
        self.epoch += 1
        owner.epoch += 1
        if self.on_ready is not None:
            self.on_ready(requirements, count)

    def left_ready(self, task_index: int, requirements: Requirements) -> None:
        """Count a task of this class that stopped being ready without being taken."""
        task_class = self.classes[(task_index, requirements)]
        task_class.ready -= 1
        self.ready -= 1
        self.owner.ready -= 1
        if requirements.gpus:
            self.gpu_ready -= 1
            self.owner.gpu_ready -= 1

    def take(self, slot: Slot, gpu_tasks: bool | None, is_ready: Callable[[int], bool],
             held: Callable[[int], bool] | None = None) -> tuple[int, TaskClass] | None:
        """Pop the best ready task that fits `slot`: continuing before fresh. The caller must
        move the task out of the ready state at once (which updates the counts).

        `gpu_tasks` True/False restricts to classes that do/don't need GPUs; None allows both.
        A task `held` says may not go to this slot now stays where it is in the queue; `held`
        is only asked of retried tasks that wait or avoid a host (continuing ones).
        """
        if (gpu_tasks and not self.gpu_ready) or (gpu_tasks is False
                                                  and self.ready == self.gpu_ready):
            return None
        candidates = []
        for task_class in self.classes.values():
            if not task_class.ready:
                continue
            req = task_class.requirements
            if gpu_tasks is not None and (req.gpus > 0) != gpu_tasks:
                continue
            # The numeric checks inline (the common case); patterns through fits().
            if (req.cpus > slot.cpus or req.memory > slot.memory or req.gpus > slot.gpus
                    or req.walltime > slot.seconds or req.disk > slot.disk):
                continue
            if req.patterned and not fits(req, slot):
                continue
            candidates.append(task_class)
        if not candidates:
            return None
        candidates.sort(key=lambda c: -c.task_index)  # later DAG stages finish jobs sooner
        for attr in ("continuing", "fresh"):
            for task_class in candidates:
                queue = getattr(task_class, attr)
                kept: list[int] = []
                try:
                    while queue:
                        task_id = queue.popleft()
                        if not is_ready(task_id):
                            continue
                        if held is not None and attr == "continuing" and held(task_id):
                            kept.append(task_id)
                            continue
                        return task_id, task_class  # the caller moves it on, counting it out
                finally:
                    queue.extendleft(reversed(kept))
        return None

    def count_fitting(self, slot: Slot) -> int:
        """How many ready tasks would fit `slot` (for the factories' demand)."""
        return sum(c.ready for c in self._live() if fits(c.requirements, slot))

    def reasons(self, slot: Slot) -> Iterator[tuple[int, str]]:
        """(ready count, why it does not fit) for each class that does not fit `slot`."""
        for task_class in self._live():
            reason = why_not(task_class.requirements, slot)
            if reason:
                yield task_class.ready, reason

    def clear(self) -> None:
        self.classes.clear()
        self.owner.ready -= self.ready
        self.owner.gpu_ready -= self.gpu_ready
        self.ready = 0
        self.gpu_ready = 0

    def _live(self) -> Iterator[TaskClass]:
        return (c for c in self.classes.values() if c.ready > 0)
