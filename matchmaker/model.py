"""The matchmaker's in-memory picture of each dataset: the state of every task, one byte each.

SQLite is the durable record; this is the working copy the scheduler decides from, rebuilt from
SQLite at start. Task ids are arithmetic (see storage/schema.py), so a task's job and definition
follow from its id and a dataset of a million tasks costs about a megabyte here.

Every change of a task's state goes through `DatasetState.move`, which checks the transition
table, keeps the per-state counts exact, and keeps the ready queue in step.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import compress
from typing import Any

from floe.config.dataset import DatasetConfig
from floe.config.resources import Requirements
from floe.config.states import TASK_TRANSITIONS, TaskState, check_task

from .queue import DatasetQueue
from .runtimes import Learned, expected_seconds
from .watching import Watch

STATES = tuple(TaskState)
CODE = {state: code for code, state in enumerate(STATES)}
WAITING, READY, PROCESSING, COMPLETE, FAILED, SUSPENDED = (CODE[s] for s in STATES)
# The transition table by state codes: `move` runs for every task handed out and every outcome,
# and a set lookup of two ints costs a fraction of `check_task`'s enum conversions.
ALLOWED = frozenset((CODE[old], CODE[new]) for old, new in TASK_TRANSITIONS)


class DatasetStatus:
    PROCESSING = "processing"
    SUSPENDED = "suspended"
    COMPLETE = "complete"
    FAILED = "failed"      # every task ended, some failed

    ALL = (PROCESSING, SUSPENDED, COMPLETE, FAILED)
    ENDED = (COMPLETE, FAILED)


@dataclass
class Dataset:
    """The fixed facts of a dataset, as stored."""

    dataset_id: int
    user_id: int
    config: DatasetConfig
    task_id_base: int
    created: float


@dataclass(frozen=True)
class SteeringVersion:
    """A dataset's steering values from job `first_job` on: version 1 is the submitted config's;
    each change after submission makes the next, for the jobs not yet created."""

    version: int
    first_job: int
    steering: dict[str, Any]
    created: float
    user_id: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "first_job": self.first_job,
                "steering": self.steering, "created": self.created}


@dataclass(frozen=True)
class Later:
    """When a retried task may run, and where not: it is not handed out before `not_before`,
    nor to a pilot on `host` (where it failed) before `elsewhere_until` while pilots run on
    more than one host. Memory only: a restarted matchmaker retries at once, anywhere."""

    not_before: float
    host: str
    elsewhere_until: float

    def holds(self, host: str, now: float, hosts: int) -> bool:
        """Whether the task must not go to a pilot on `host` now (`hosts`: how many hosts run
        pilots)."""
        return now < self.not_before or (
            host == self.host and now < self.elsewhere_until and hosts > 1)


class DatasetState:
    """One dataset's tasks, their states and its ready queue."""

    def __init__(self, dataset: Dataset, status: str, priority: float,
                 materialized: int = 0) -> None:
        self.dataset = dataset
        self.id = dataset.dataset_id
        self.user_id = dataset.user_id
        self.config = dataset.config
        self.base = dataset.task_id_base
        self.ntasks = len(dataset.config.tasks)
        self.jobs = dataset.config.jobs
        self.on_status: Callable[[DatasetState], None] | None = None
        """Called when the status changes (the engine keeps its datasets that have not ended)."""
        self._status = status
        self.changed = dataset.created
        """When its status last changed (for an ended dataset, about when it ended): the
        engine keeps it, and listings show the latest first."""
        self.priority = priority
        self.materialized = materialized
        self.states = bytearray()
        self.counts = [0] * len(STATES)
        self.failures: dict[int, int] = {}
        self.lost: dict[int, int] = {}
        self.overrides: dict[int, Requirements] = {}
        self.later: dict[int, Later] = {}  # retried tasks that back off or avoid a host
        self.queue = DatasetQueue()
        self.runtimes: list[float | None] = [None] * self.ntasks  # mean wall, for fair share
        self.learned: list[Learned | None] = [None] * self.ntasks  # for packing in series
        self.fragments: dict[object, str] = {}  # cached JSON of what every ask answer repeats
        self.watch = Watch()  # requests waiting for this dataset's progress to change
        self.versions = [SteeringVersion(1, 0, dataset.config.steering, dataset.created,
                                         dataset.user_id)]
        self._version_starts = [0]
        self._roots = [not t.depends for t in dataset.config.tasks]

    @property
    def status(self) -> str:
        return self._status

    @status.setter
    def status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            if self.on_status is not None:
                self.on_status(self)

    def ended(self) -> bool:
        """Complete or failed: every task has ended (until jobs are added or tasks reset)."""
        return self._status in DatasetStatus.ENDED

    # -- addressing ---------------------------------------------------------------------------
    def task_id(self, job_index: int, task_index: int) -> int:
        return self.base + job_index * self.ntasks + task_index

    def locate(self, task_id: int) -> tuple[int, int]:
        """(job index, task index) of a task id of this dataset."""
        return divmod(task_id - self.base, self.ntasks)

    def owns(self, task_id: int) -> bool:
        return 0 <= task_id - self.base < len(self.states)

    def state(self, task_id: int) -> TaskState:
        return STATES[self.states[task_id - self.base]]

    def version_of(self, job_index: int) -> SteeringVersion:
        """The steering version that job `job_index` runs with."""
        if len(self.versions) == 1:
            return self.versions[0]
        return self.versions[bisect_right(self._version_starts, job_index) - 1]

    def add_version(self, version: SteeringVersion) -> None:
        self.versions.append(version)
        self._version_starts.append(version.first_job)

    def is_ready(self, task_id: int) -> bool:
        return self.states[task_id - self.base] == READY

    def requirements(self, task_id: int) -> Requirements:
        grown = self.overrides.get(task_id)
        if grown is not None:
            return grown
        return self.config.tasks[(task_id - self.base) % self.ntasks].requirements

    def expected_seconds(self, task_id: int, requirements: Requirements) -> float:
        """How long the task is expected to run: its task name's learned runtime, at most its
        walltime (see `runtimes`)."""
        return expected_seconds(self.learned[(task_id - self.base) % self.ntasks],
                                requirements.walltime)

    def learn(self, task_index: int, wall: float) -> Callable[[], None]:
        """Learn a successful attempt's wall time; returns what undoes it."""
        learned = self.learned[task_index]
        if learned is None:
            learned = self.learned[task_index] = Learned()
        return learned.add(wall)

    @property
    def total_tasks(self) -> int:
        return self.jobs * self.ntasks

    # -- changes ------------------------------------------------------------------------------
    def add_jobs(self, first_job: int, count: int, suspended: bool
                 ) -> list[tuple[int, int, int, str]]:
        """The (task id, job, task index, state) rows of `count` new jobs starting at
        `first_job`: root tasks start ready (suspended, in a dataset that is), others
        waiting."""
        if first_job != self.materialized:
            raise ValueError(f"jobs must be added in order: expected {self.materialized}, "
                             f"got {first_job}")
        rows = []
        for job in range(first_job, first_job + count):
            for task_index, root in enumerate(self._roots):
                code = (SUSPENDED if suspended else READY) if root else WAITING
                rows.append((self.task_id(job, task_index), job, task_index, STATES[code].value))
        return rows

    def commit_jobs(self, first_job: int, count: int, suspended: bool) -> None:
        """Make jobs added by `add_jobs` part of the working copy once their rows are stored,
        in the states they were stored with."""
        for task_index, root in enumerate(self._roots):
            code = (SUSPENDED if suspended else READY) if root else WAITING
            self.counts[code] += count
            if root and not suspended:
                ids = [self.task_id(j, task_index) for j in range(first_job, first_job + count)]
                self.queue.push_many(ids, task_index, self.config.tasks[task_index].requirements)
        pattern = bytes(
            (SUSPENDED if suspended else READY) if root else WAITING for root in self._roots)
        self.states.extend(pattern * count)
        self.materialized = first_job + count
        if self.watch:
            self.watch.changed()

    def move(self, task_id: int, new: TaskState, *, continuing: bool = True) -> TaskState:
        """Change one task's state (checked against the transition table); returns the old one."""
        offset = task_id - self.base
        old_code = self.states[offset]
        new_code = CODE[new]
        if old_code == new_code:
            return new
        old = STATES[old_code]
        if (old_code, new_code) not in ALLOWED:
            check_task(old, new)  # raises, naming both states
        self.states[offset] = new_code
        self.counts[old_code] -= 1
        self.counts[new_code] += 1
        if self.watch:
            self.watch.changed()
        task_index = offset % self.ntasks
        if old_code == READY:
            self.queue.left_ready(task_index, self.requirements(task_id))
        if new_code == READY:
            self.queue.push(task_id, task_index, self.requirements(task_id), continuing)
        return old

    def restore(self, task_id: int, old: TaskState) -> None:
        """Put a task back in the state it had before a change whose write failed: an undo,
        not a transition (the table checked the change being undone), keeping counts and the
        ready queue exact as `move` does."""
        offset = task_id - self.base
        current = self.states[offset]
        code = CODE[old]
        if current == code:
            return
        self.states[offset] = code
        self.counts[current] -= 1
        self.counts[code] += 1
        task_index = offset % self.ntasks
        if current == READY:
            self.queue.left_ready(task_index, self.requirements(task_id))
        if code == READY:
            self.queue.push(task_id, task_index, self.requirements(task_id), True)

    def rebuild_queue(self) -> None:
        """Refill the ready queue from the task states (after a bulk change, and at start):
        each task definition's ready tasks in id order, in bulk; one by one only the few with
        grown requirements or, of first tasks, retries (which continue their job). Classes
        are made in the order of their first ready task, as pushing task by task would."""
        self.queue.clear()
        states, ntasks, base = self.states, self.ntasks, self.base
        end = base + len(states)
        retried = set(self.failures) | set(self.lost)
        special: list[list[int]] = [[] for _ in range(ntasks)]
        for task_id in retried | set(self.overrides):
            if not base <= task_id < end or states[task_id - base] != READY:
                continue
            task_index = (task_id - base) % ntasks
            grown = self.overrides.get(task_id)
            if (grown is not None and grown != self.config.tasks[task_index].requirements) \
                    or (self._roots[task_index] and task_id in retried):
                special[task_index].append(task_id)
        pushes: list[tuple[int, Callable[[], None]]] = []
        for task_index in range(ntasks):
            ready = list(compress(range(base + task_index, end, ntasks),
                                  map(READY.__eq__, states[task_index::ntasks])))
            root = self._roots[task_index]
            if special[task_index]:
                chosen = set(special[task_index])
                ready = [task_id for task_id in ready if task_id not in chosen]
            if ready:
                pushes.append((ready[0], partial(
                    self.queue.push_many, ready, task_index,
                    self.config.tasks[task_index].requirements, continuing=not root)))
            pushes.extend((task_id, partial(
                self.queue.push, task_id, task_index, self.requirements(task_id),
                not root or task_id in retried)) for task_id in special[task_index])
        for _, push in sorted(pushes, key=lambda pending: pending[0]):
            push()

    # -- derived facts ------------------------------------------------------------------------
    def dependencies_complete(self, job_index: int, task_index: int) -> bool:
        base = self.task_id(job_index, 0) - self.base
        return all(self.states[base + d] == COMPLETE
                   for d in self.config.tasks[task_index].depends)

    def job_state(self, job_index: int) -> str:
        start = job_index * self.ntasks
        codes = self.states[start:start + self.ntasks]
        return job_state(codes, any(self.base + start + i in self.failures
                                    or self.base + start + i in self.lost
                                    for i in range(self.ntasks)))

    def summary(self) -> dict[str, int]:
        """Tasks per state; tasks of jobs not yet materialized count as waiting."""
        counts = {state.value: self.counts[CODE[state]] for state in STATES}
        counts[TaskState.WAITING.value] += (self.jobs - self.materialized) * self.ntasks
        return counts

    def grow(self, jobs: int) -> None:
        """Make the dataset `jobs` jobs long (more, or down to those created); what every ask
        answer repeats (`jobs_submitted`) is made again."""
        self.jobs = jobs
        self.fragments.clear()
        if self.watch:
            self.watch.changed()

    def version(self) -> str:
        """The dataset's progress as an opaque string that changes whenever its status or its
        tasks' states do (what a client waiting for a change compares)."""
        return f"{self.status}:{self.materialized}:{':'.join(map(str, self.counts))}"

    def unfinished(self) -> int:
        """Tasks that have not ended (complete or failed), created or not."""
        return self.total_tasks - self.counts[COMPLETE] - self.counts[FAILED]

    def finished(self) -> bool:
        """Every task of every job has ended (complete or failed)."""
        return (self.materialized == self.jobs
                and self.counts[COMPLETE] + self.counts[FAILED] == self.total_tasks)


def recency(dataset: DatasetState) -> tuple[float, int]:
    """What "the latest datasets" are ordered by: when their status last changed (submitted,
    ended, reset), then their ids."""
    return dataset.changed, dataset.id


def job_state(codes: bytes | bytearray, retried: bool = False) -> str:
    """A job's state from its tasks' state codes."""
    present = set(codes)
    if present == {COMPLETE}:
        return "complete"
    if PROCESSING in present:
        return "processing"
    if SUSPENDED in present:
        return "suspended"
    if FAILED in present and READY not in present:
        return "failed"
    if COMPLETE in present or FAILED in present or retried:
        return "processing"
    return "waiting"
