"""What owners and admins do to a dataset: suspend, resume, reset, change priority.

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

from config.states import TaskState

from .engine import ActiveAttempt, Engine, User
from .errors import BadRequest, Conflict
from .fairshare import weight
from .model import CODE, STATES, DatasetState, DatasetStatus, job_state
from .storage import writes
from .storage.database import Job

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
                clear_record: bool = False) -> int:
    total = 0
    for first in range(0, dataset.materialized, JOBS_PER_STEP):
        last = min(first + JOBS_PER_STEP, dataset.materialized)
        total += await _apply_range(engine, dataset, first, last, decide, reason, clear_record)
    return total


async def _set_status(engine: Engine, dataset: DatasetState, user: User, status: str,
                      action: str, detail: str) -> None:
    now = engine.clock()

    def apply(_: None) -> None:
        dataset.status = status
        dataset.watch.changed()

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
    if dataset.status != DatasetStatus.SUSPENDED and not dataset.counts[CODE[TaskState.SUSPENDED]]:
        raise Conflict(f"dataset {dataset.id} is not suspended (it is {dataset.status})")
    reason = f"resumed by {user.name}"
    dataset.status = DatasetStatus.PROCESSING
    dataset.watch.changed()
    changed = await _bulk(engine, dataset, lambda d, t, s: ready_or_waiting(d, t)
                          if s == TaskState.SUSPENDED else None, reason)
    dataset.rebuild_queue()
    await _settle(engine, dataset, user, "resume", f"{changed} tasks released")
    engine.materializing.set()  # its jobs not yet created are created again
    return changed


async def reset(engine: Engine, dataset: DatasetState, user: User, scope: str) -> int:
    """Start tasks over with their retries restored: only failed ones ("failed") or every task
    ("all", which voids running attempts). Grown requirements are kept. Returns tasks changed."""
    if scope not in ("failed", "all"):
        raise BadRequest(f'scope: expected "failed" or "all", got {scope!r}')
    reason = f"reset ({scope}) by {user.name}"
    if scope == "failed":
        def decide(d: DatasetState, task_id: int, state: TaskState) -> TaskState | None:
            return TaskState.WAITING if state == TaskState.FAILED else None
    else:
        def decide(d: DatasetState, task_id: int, state: TaskState) -> TaskState | None:
            return TaskState.WAITING
    if dataset.status == DatasetStatus.SUSPENDED:
        raise Conflict(f"dataset {dataset.id} is suspended; resume it before resetting")
    # First everything chosen goes back to waiting, then each job's tasks whose dependencies
    # are complete become ready: a reset child of a reset parent must wait for it again.
    changed = await _bulk(engine, dataset, decide, reason, clear_record=True)
    await _bulk(engine, dataset, lambda d, t, s: TaskState.READY
                if s == TaskState.WAITING and ready_or_waiting(d, t) == TaskState.READY
                else None, reason)
    await _settle(engine, dataset, user, f"reset {scope}", f"{changed} tasks reset")
    return changed


async def set_priority(engine: Engine, dataset: DatasetState, user: User,
                       priority: float) -> None:
    if not (0 < priority <= 1000):
        raise BadRequest(f"priority: expected a number above 0 and at most 1000, got {priority}")
    old = dataset.priority
    dataset.priority = priority
    engine.dataset_usage.rerank(dataset.id)
    await _set_status(engine, dataset, user, dataset.status, "priority", f"{old} -> {priority}")
