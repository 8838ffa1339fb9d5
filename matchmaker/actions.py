"""What owners and admins do to a dataset: suspend, resume, reset (all of it, a job or a task),
change priority, add jobs, abort (archive and delete: `retiring`).

Bulk changes run a range of jobs at a time, each range its own short transaction interleaved
with the pilots' commits, so acting on a million-job dataset never stalls matching. Each range
is decided from the in-memory state at the moment it is written, which then holds exactly what
is committed (an `alone` job of the database: no report or dispatch changes memory ahead of its
commit meanwhile), and applied to memory right after it commits. Running attempts of tasks that
a change takes away are voided: their passkeys stop working at once and their pilots are told to
kill them at the next heartbeat.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from floe.config.dataset import MAX_JOBS
from floe.config.schema import counted
from floe.config.states import TaskState

from .engine import ActiveAttempt, Engine, User
from .errors import BadRequest, Conflict
from .fairshare import weight
from .model import CODE, STATES, DatasetState, DatasetStatus, job_state
from .retiring import check_open
from .storage import writes
from .storage.database import Job
from .submission import check_limits

JOBS_PER_STEP = 5000

# decide(dataset, task_id, state) -> the new state, or None to leave the task alone
Decide = Callable[[DatasetState, int, TaskState], "TaskState | None"]


@dataclass
class _Step:
    moves: list[tuple[int, TaskState, TaskState]] = field(default_factory=list)
    voided: list[ActiveAttempt] = field(default_factory=list)
    jobs: list[tuple[int, str]] = field(default_factory=list)


def ready_or_waiting(dataset: DatasetState, task_id: int) -> TaskState:
    """Where a task restarts: ready when its dependencies are complete, else waiting."""
    job_index, task_index = dataset.locate(task_id)
    if dataset.dependencies_complete(job_index, task_index):
        return TaskState.READY
    return TaskState.WAITING


async def _apply_range(engine: Engine, dataset: DatasetState, first: int, last: int,
                       decide: Decide, reason: str, clear_record: bool) -> int:
    """Apply `decide` to every task of jobs [first, last) in one transaction."""
    now = engine.clock()
    step = _Step()

    def plan() -> Job[None]:
        running = {a.task_id: a for a in engine.active.values() if a.dataset_id == dataset.id}
        codes = bytearray(dataset.states[first * dataset.ntasks:last * dataset.ntasks])
        for offset in range(len(codes)):
            task_id = dataset.base + first * dataset.ntasks + offset
            old = STATES[codes[offset]]
            new = decide(dataset, task_id, old)
            if new is None or new == old:
                continue
            step.moves.append((task_id, old, new))
            codes[offset] = CODE[new]
            if old == TaskState.PROCESSING and task_id in running:
                step.voided.append(running[task_id])
        for job in range(first, last):
            start = (job - first) * dataset.ntasks
            after = job_state(bytes(codes[start:start + dataset.ntasks]))
            if after != dataset.job_state(job):
                step.jobs.append((job, after))
        moves = [(task_id, old, new, writes.TaskRecord(
            0 if clear_record else dataset.failures.get(task_id, 0),
            0 if clear_record else dataset.lost.get(task_id, 0),
            dataset.overrides.get(task_id), reason)) for task_id, old, new in step.moves]
        voided = [a.attempt_id for a in step.voided]
        jobs = [(dataset.id, job, state) for job, state in step.jobs]
        return lambda conn: writes.change_tasks(conn, moves, voided, jobs, now, reason)

    def apply(_: None) -> None:
        if clear_record:
            for task_id, _, _ in step.moves:
                dataset.failures.pop(task_id, None)
                dataset.lost.pop(task_id, None)
                dataset.later.pop(task_id, None)  # a reset task backs off no more
        for active in step.voided:
            _forget(engine, active, reason, now)
        for task_id, _, new in step.moves:
            dataset.move(task_id, new)

    await engine.db.planned(plan, after=apply, alone=True)
    return len(step.moves)


def _forget(engine: Engine, active: ActiveAttempt, reason: str, now: float) -> None:
    """Drop a voided attempt from memory and charge what it really used."""
    engine.active.pop(active.attempt_id, None)
    engine.void(active.attempt_id, reason)
    pilot = engine.pilots.get(active.pilot_id)
    if pilot is not None:
        pilot.attempts.discard(active.attempt_id)
    rate = weight(active.requirements.cpus, active.requirements.gpus, engine.settings.gpu_weight)
    dataset = engine.datasets[active.dataset_id]
    correction = rate * max(now - active.started, 0.0) - active.charge
    engine.user_usage.charge(dataset.user_id, correction, now)
    engine.dataset_usage.charge(dataset.id, correction, now)


async def _bulk(engine: Engine, dataset: DatasetState, decide: Decide, reason: str,
                clear_record: bool = False, jobs: range | None = None) -> int:
    """Apply `decide` to the tasks of `jobs` (every created job), a step at a time."""
    jobs = jobs if jobs is not None else range(dataset.materialized)
    total = 0
    for first in range(jobs.start, min(jobs.stop, dataset.materialized), JOBS_PER_STEP):
        last = min(first + JOBS_PER_STEP, jobs.stop, dataset.materialized)
        total += await _apply_range(engine, dataset, first, last, decide, reason, clear_record)
    return total


async def _set_status(engine: Engine, dataset: DatasetState, user: User, status: str,
                      action: str, detail: str) -> None:
    now = engine.clock()

    def apply(_: None) -> None:
        changed = status != dataset.status
        dataset.status = status
        dataset.watch.changed()
        if changed and engine.notifier is not None:
            engine.notifier.ended(dataset, status)

    await engine.db.exclusive(lambda conn: writes.set_dataset_status(
        conn, dataset.id, status, dataset.priority, now, (user.user_id, action, detail)),
        after=apply)


async def _settle(engine: Engine, dataset: DatasetState, user: User, action: str,
                  detail: str) -> None:
    """Record the action and the status that the dataset's tasks now imply."""
    await _set_status(engine, dataset, user, engine.dataset_status_after(dataset), action,
                      detail)


async def suspend(engine: Engine, dataset: DatasetState, user: User) -> int:
    """Hold every unfinished task; running attempts are voided. Returns tasks changed."""
    check_open(engine, dataset, "be suspended")
    if dataset.status == DatasetStatus.SUSPENDED:
        raise Conflict(f"dataset {dataset.id} is already suspended")
    if dataset.status in (DatasetStatus.COMPLETE, DatasetStatus.FAILED):
        raise Conflict(f"dataset {dataset.id} has ended ({dataset.status}); reset it instead")
    reason = f"dataset suspended by {user.name}"
    await _set_status(engine, dataset, user, DatasetStatus.SUSPENDED, "suspend", reason)
    held = (TaskState.WAITING, TaskState.READY, TaskState.PROCESSING)
    return await _bulk(engine, dataset,
                       lambda d, t, s: TaskState.SUSPENDED if s in held else None, reason)


async def resume(engine: Engine, dataset: DatasetState, user: User) -> int:
    """Release suspended tasks (also those suspended by debug mode). Returns tasks changed."""
    check_open(engine, dataset, "be resumed")
    if dataset.status != DatasetStatus.SUSPENDED and not dataset.counts[CODE[TaskState.SUSPENDED]]:
        raise Conflict(f"dataset {dataset.id} is not suspended (it is {dataset.status})")
    reason = f"resumed by {user.name}"
    dataset.status = DatasetStatus.PROCESSING
    dataset.watch.changed()
    changed = await _bulk(engine, dataset, lambda d, t, s: ready_or_waiting(d, t)
                          if s == TaskState.SUSPENDED else None, reason)
    dataset.rebuild_queue()
    await _settle(engine, dataset, user, "resume", f"{counted(changed, 'task')} released")
    engine.materializing.set()  # its jobs not yet created are created again
    return changed


async def reset(engine: Engine, dataset: DatasetState, user: User, scope: str,
                job: int | None = None, task_id: int | None = None) -> int:
    """Start tasks over with their retries restored: only failed ones ("failed") or every task
    ("all", which voids running attempts), of the whole dataset, of one `job`, or one task
    (`task_id`). Grown requirements are kept. Returns tasks changed."""
    if scope not in ("failed", "all"):
        raise BadRequest(f'scope: expected "failed" or "all", got {scope!r}')
    check_open(engine, dataset, "be reset")
    if dataset.status == DatasetStatus.SUSPENDED:
        raise Conflict(f"dataset {dataset.id} is suspended; resume it before resetting")
    jobs, what = None, "tasks"
    if task_id is not None:
        if not dataset.base <= task_id < dataset.base + dataset.materialized * dataset.ntasks:
            raise BadRequest(f"task: dataset {dataset.id} has no task {task_id}")
        located = dataset.locate(task_id)[0]
        if scope == "all" or dataset.state(task_id) == TaskState.FAILED:
            _check_upstream(dataset, task_id)
        jobs, what = range(located, located + 1), f"task {task_id}"
    elif job is not None:
        if not 0 <= job < dataset.materialized:
            raise BadRequest(f"job: dataset {dataset.id} has jobs 0 to "
                             f"{max(dataset.materialized - 1, 0)} created, not {job}")
        jobs, what = range(job, job + 1), f"job {job}"
    reason = f"reset ({scope}{'' if jobs is None else ', ' + what}) by {user.name}"
    wanted = TaskState.FAILED if scope == "failed" else None

    def decide(d: DatasetState, tid: int, state: TaskState) -> TaskState | None:
        if task_id is not None and tid != task_id:
            return None
        return TaskState.WAITING if wanted is None or state == wanted else None

    if dataset.status in (DatasetStatus.COMPLETE, DatasetStatus.FAILED):
        # Matchable from the moment its tasks are ready (an ask woken by them finds the dataset
        # processing, and no shape is called barren); _settle records the status.
        dataset.status = DatasetStatus.PROCESSING
    # First everything chosen goes back to waiting, then each job's tasks whose dependencies
    # are complete become ready: a reset child of a reset parent must wait for it again.
    changed = await _bulk(engine, dataset, decide, reason, clear_record=True, jobs=jobs)
    await _bulk(engine, dataset, lambda d, t, s: TaskState.READY
                if s == TaskState.WAITING and ready_or_waiting(d, t) == TaskState.READY
                else None, reason, jobs=jobs)
    await _settle(engine, dataset, user, f"reset {scope}",
                  f"{counted(changed, 'task')} reset" + ("" if jobs is None else f" ({what})"))
    return changed


def _check_upstream(dataset: DatasetState, task_id: int) -> None:
    """Refuse to start one task over while it would wait for ever: a task it depends on (in
    its job, directly or through tasks that wait as well) has failed, so its dataset would
    never end. A dependency complete, ready, running or suspended (a resume releases it) lets
    it run in time."""
    job_index, task_index = dataset.locate(task_id)
    tasks = dataset.config.tasks
    pending, seen = list(tasks[task_index].depends), set()
    while pending:
        index = pending.pop()
        if index in seen:
            continue
        seen.add(index)
        upstream = dataset.task_id(job_index, index)
        state = dataset.state(upstream)
        if state == TaskState.FAILED:
            raise Conflict(f"task {task_id} depends on task {upstream} ({tasks[index].name}), "
                           f"which failed, and would wait for it for ever: start both over "
                           f"with the failed tasks of their job (`floe reset {dataset.id} --job "
                           f"{job_index}`)")
        if state == TaskState.WAITING:
            pending.extend(tasks[index].depends)


async def add_jobs(engine: Engine, dataset: DatasetState, user: User, count: int) -> int:
    """Grow the dataset by `count` jobs, created in the background like a submit's; an ended
    dataset runs again. Returns its jobs now."""
    settings = engine.settings
    check_open(engine, dataset, "grow")
    if count < 1:
        raise BadRequest(f"jobs: expected at least 1, got {count}")
    total = dataset.jobs + count
    if total > min(settings.max_jobs_per_dataset, MAX_JOBS):
        raise BadRequest(f"jobs: dataset {dataset.id} has {dataset.jobs:,} jobs, and this "
                         f"server takes at most {min(settings.max_jobs_per_dataset, MAX_JOBS):,} "
                         "per dataset (max_jobs_per_dataset); submit the rest as a new dataset")
    following = [d.base for d in engine.datasets.values() if d.base > dataset.base]
    if following and dataset.base + total * dataset.ntasks > min(following):
        raise Conflict(f"dataset {dataset.id} was submitted before datasets kept room to grow "
                       "(its task ids are followed by another dataset's); submit the new jobs "
                       "as a new dataset")
    check_limits(engine, user, count, dataset.ntasks)
    now = engine.clock()
    status = DatasetStatus.PROCESSING if dataset.status in (
        DatasetStatus.COMPLETE, DatasetStatus.FAILED) else dataset.status
    grown = {"total": total}

    def plan() -> Job[None]:  # at its turn: another addition before it is counted
        before = dataset.jobs
        after = grown["total"] = before + count
        detail = f"{count:,} jobs added by {user.name}: {before:,} -> {after:,}"
        return lambda conn: writes.set_dataset_jobs(conn, dataset.id, after, status, now,
                                                    (user.user_id, "add jobs", detail))

    def apply(_: None) -> None:
        dataset.grow(grown["total"])
        dataset.status = status
        engine.materializing.set()

    await engine.db.planned(plan, after=apply)
    return grown["total"]


async def abort(engine: Engine, dataset: DatasetState, user: User) -> int:
    """End a dataset for good: its jobs not yet created never will be, every task that has not
    ended fails (running attempts are voided, their pilots told to kill them), and what is
    recorded stays. Returns tasks changed."""
    check_open(engine, dataset, "be aborted")
    if dataset.status in (DatasetStatus.COMPLETE, DatasetStatus.FAILED) \
            and dataset.materialized == dataset.jobs:
        raise Conflict(f"dataset {dataset.id} has ended ({dataset.status}); there is nothing "
                       "to abort")
    reason = f"aborted by {user.name}"
    now = engine.clock()
    asked = dataset.jobs
    cut = {"created": dataset.materialized}

    def plan() -> Job[None]:  # at its turn: every chunk of jobs created before it is counted
        created = cut["created"] = dataset.materialized
        return lambda conn: writes.set_dataset_jobs(conn, dataset.id, created,
                                                    DatasetStatus.PROCESSING, now, None)

    def apply(_: None) -> None:
        dataset.grow(cut["created"])  # no more jobs are created
        dataset.status = DatasetStatus.PROCESSING  # until the tasks say what it ends as

    await engine.db.planned(plan, after=apply)
    created = cut["created"]
    unfinished = (TaskState.WAITING, TaskState.READY, TaskState.PROCESSING, TaskState.SUSPENDED)
    changed = await _bulk(engine, dataset, lambda d, t, s: TaskState.FAILED
                          if s in unfinished else None, reason)
    await _settle(engine, dataset, user, "abort", f"{counted(changed, 'task')} failed, "
                  f"{asked - created:,} of {asked:,} jobs never created ({reason})")
    return changed


async def set_priority(engine: Engine, dataset: DatasetState, user: User,
                       priority: float) -> None:
    if not (0 < priority <= 1000):
        raise BadRequest(f"priority: expected a number above 0 and at most 1000, got {priority}")
    old = dataset.priority
    dataset.priority = priority
    engine.dataset_usage.rerank(dataset.id)
    await _set_status(engine, dataset, user, dataset.status, "priority", f"{old} -> {priority}")
