"""An ended attempt's outcome, made real: the rows that record it, and its changes to the working
state, applied ahead of the commit with the undo that takes them back if the write fails.

`outcome` plans (`lifecycle.plan`), builds the batch of guarded rows, and applies the plan to
what the scheduler decides from: the tasks' states and records, the fair-share ledgers, the
runtimes and the dataset's status. The attempt itself stays in flight until its batch commits
(`release`), so that a report for it that arrives meanwhile waits on the job's lock and then
finds it ended; the metrics count the outcome then too (a counter is never taken back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from floe.config.protocol import utf8_tail
from floe.config.retries import retry_delay
from floe.config.states import COUNTS_AS_FAILURE, AttemptState, ErrorClass, TaskState

from .engine import ActiveAttempt, Engine
from .fairshare import weight
from .lifecycle import RESOURCE_STATISTICS, Outcome, Plan, attempt_state_of, overuse_sentence, plan
from .model import CODE, DatasetState, Later
from .storage import writes
from .storage.database import Batch

log = logging.getLogger(__name__)


def outcome(engine: Engine, active: ActiveAttempt, ended: Outcome, now: float
            ) -> tuple[Batch, Plan]:
    """Plan how `active` ended, apply it to memory, and return the batch that records it (its
    undo on failure; on commit, the attempt is released and counted) with the plan. The
    caller holds the job's lock and writes the batch before it answers."""
    dataset = engine.datasets[active.dataset_id]
    task_id = active.task_id
    decided = plan(dataset, task_id, ended, attempt_state_of(ended))
    current = dataset.requirements(task_id)
    if decided.grown is not None and decided.grown != current:
        decided.reason += overuse_sentence(current, decided.grown)
    # An attempt given back unstarted ran for no time at all (and is charged none).
    wall = 0.0 if ended.error_class == ErrorClass.NOT_RUN else \
        ended.usage.wall_time or max(now - active.started, 0.0)
    batch = Batch()
    _rows(batch, engine, dataset, active, ended, decided, wall, now)
    undo, status = _apply(engine, dataset, active, ended, decided, wall, now)
    batch.on_failure(undo)
    error = None if ended.success else ended.error_class or ErrorClass.TASK_ERROR
    suspect = engine.black_holes.ended(
        active.host, active.site, task_id, error, ended.stderr_tail or ended.error_message,
        wall, now, proven=dataset.counts[CODE[TaskState.COMPLETE]] > 0, dataset_id=dataset.id)
    if suspect is not None:
        writes.add_event(batch, None, None, "black hole", f"host {suspect.host} at "
                         f"{suspect.site}: {suspect.why}", now)
    if status is not None:
        writes.set_dataset(batch, dataset.id, status=status, priority=dataset.priority, now=now)
    batch.on_commit(partial(_committed, engine, active, decided, ended, status))
    batch.on_commit(partial(engine.metrics.attempt_ended, active.site, dataset.user_id,
                            None if error is None else error.value,
                            active.requirements.cpus * wall))
    return batch, decided


def _rows(batch: Batch, engine: Engine, dataset: DatasetState, active: ActiveAttempt,
          ended: Outcome, decided: Plan, wall: float, now: float) -> None:
    """The guarded rows that record the outcome: the attempt's end, the tasks' moves, the jobs'
    states and, for a success, the task's statistics."""
    tail = engine.settings.tail_bytes
    usage = ended.usage
    used = writes.Used(usage.cpu_time, wall, usage.peak_memory, usage.peak_disk,
                       usage.peak_gpu_memory, usage.gpu_time)
    writes.end_attempt(
        batch, active.attempt_id, state=decided.attempt_state, now=now, used=used,
        exit_code=ended.exit_code,
        error_class=ended.error_class.value if ended.error_class else None,
        error_message=ended.error_message[:4000] or None, statistics=ended.statistics,
        outputs=ended.outputs, stdout_tail=utf8_tail(ended.stdout_tail, tail) or None,
        stderr_tail=utf8_tail(ended.stderr_tail, tail) or None, warnings=ended.warnings)
    task_id = active.task_id
    task_index = dataset.locate(task_id)[1]
    for moved_id, old, new in decided.moves:
        record = None
        if moved_id == task_id:
            # Its record says why it last changed: a completed task keeps no earlier reason
            # (a reset's, a retry's) that no longer holds.
            grown = decided.grown if decided.grown is not None else dataset.overrides.get(task_id)
            record = writes.TaskRecord(decided.failures, decided.lost, grown, decided.reason)
        elif new == TaskState.FAILED:
            name = dataset.config.tasks[task_index].name
            record = writes.TaskRecord(dataset.failures.get(moved_id, 0),
                                       dataset.lost.get(moved_id, 0), None,
                                       f"dependency {name} failed")
        writes.move_task(batch, moved_id, old, new, now, record)
    for job_index, (_, after) in decided.jobs.items():
        writes.set_job(batch, dataset.id, job_index, after)
    if ended.success:
        writes.add_statistics(batch, dataset.id, task_index, "user", ended.statistics)
        writes.add_statistics(batch, dataset.id, task_index, "resource", {
            name: getattr(used, name) for name in RESOURCE_STATISTICS})


def _committed(engine: Engine, active: ActiveAttempt, decided: Plan, ended: Outcome,
               status: str | None) -> None:
    release(engine, active)
    if decided.attempt_state == AttemptState.RESET:
        engine.void(active.attempt_id, ended.error_message or "reported lost by its pilot")
    notifier = engine.notifier
    dataset = engine.datasets.get(active.dataset_id)
    if notifier is not None and dataset is not None:
        if decided.attempt_state != AttemptState.RESET:
            notifier.attempt_ended(dataset, decided.attempt_state == AttemptState.FAILED)
        if status is not None:
            notifier.ended(dataset, status)


def release(engine: Engine, active: ActiveAttempt) -> None:
    """Forget an attempt whose end is committed."""
    engine.active.pop(active.attempt_id, None)
    pilot = engine.pilots.get(active.pilot_id)
    if pilot is not None:
        pilot.attempts.discard(active.attempt_id)


_MISSING = object()


def _put(records: dict, key: Any, saved: Any) -> None:
    """Put back a value saved with `records.get(key, _MISSING)`."""
    if saved is _MISSING:
        records.pop(key, None)
    else:
        records[key] = saved


def _hold_back(engine: Engine, dataset: DatasetState, active: ActiveAttempt, decided: Plan,
               now: float) -> None:
    """A task retried after a failure of its own backs off (`retry_delay`, doubling) and
    avoids the host it failed on (`retry_elsewhere`); held asks are poked when it may run."""
    task_id = active.task_id
    if not any(moved == task_id and new == TaskState.READY for moved, _, new in decided.moves):
        return
    config = dataset.config
    delay = retry_delay(config.retry_delay, decided.failures)
    if not delay and not config.retry_elsewhere:
        return
    dataset.later[task_id] = Later(now + delay, active.host, now + config.retry_elsewhere)
    if delay:
        with contextlib.suppress(RuntimeError):  # no running loop: nothing is held to wake
            asyncio.get_running_loop().call_later(
                delay, engine.holding.poke, dataset.requirements(task_id), 1)


def _apply(engine: Engine, dataset: DatasetState, active: ActiveAttempt, ended: Outcome,
           decided: Plan, wall: float, now: float) -> tuple[Callable[[], None], str | None]:
    """Apply a planned outcome to what the scheduler decides from. Returns a function that
    undoes exactly this, for a write that fails, and the dataset's new status when it changed."""
    task_id = active.task_id
    task_index = dataset.locate(task_id)[1]
    before = (dataset.failures.get(task_id, _MISSING), dataset.lost.get(task_id, _MISSING),
              dataset.overrides.get(task_id, _MISSING), dataset.runtimes[task_index],
              dataset.status, dataset.later.get(task_id, _MISSING))
    if decided.failures:
        dataset.failures[task_id] = decided.failures
    if decided.lost:
        dataset.lost[task_id] = decided.lost
    if decided.grown is not None:
        dataset.overrides[task_id] = decided.grown
    for moved_id, _old, new in decided.moves:
        dataset.move(moved_id, new, continuing=True)
    if not ended.success and (ended.error_class or ErrorClass.TASK_ERROR) in COUNTS_AS_FAILURE:
        _hold_back(engine, dataset, active, decided, now)
    rate = weight(active.requirements.cpus, active.requirements.gpus, engine.settings.gpu_weight)
    correction = rate * wall - active.charge
    engine.user_usage.charge(dataset.user_id, correction, now)
    engine.dataset_usage.charge(dataset.id, correction, now)
    if ended.success:
        previous = dataset.runtimes[task_index]
        dataset.runtimes[task_index] = wall if previous is None else 0.8 * previous + 0.2 * wall
        unlearn = dataset.learn(task_index, wall)
    status = engine.dataset_status_after(dataset)
    changed = status if status != dataset.status else None
    dataset.status = status

    def undo() -> None:
        failures, lost, grown, runtime, old_status, later = before
        _put(dataset.later, task_id, later)
        _put(dataset.failures, task_id, failures)
        _put(dataset.lost, task_id, lost)
        _put(dataset.overrides, task_id, grown)
        for moved_id, old, new in reversed(decided.moves):
            _take_back(engine, dataset, active, moved_id, old, new)
        engine.user_usage.charge(dataset.user_id, -correction, now)
        engine.dataset_usage.charge(dataset.id, -correction, now)
        dataset.runtimes[task_index] = runtime
        if ended.success:
            unlearn()
        dataset.status = old_status

    return undo, changed


def _take_back(engine: Engine, dataset: DatasetState, active: ActiveAttempt, task_id: int,
               old: TaskState, new: TaskState) -> None:
    """Undo one task's move of an outcome whose write failed. A task the outcome made ready
    may have been reserved meanwhile by a later ask, whose write must fail too (the task was
    never ready in the database): that attempt is dropped here, so its own undo leaves the
    task's state alone."""
    current = dataset.state(task_id)
    if current != new:
        if current != TaskState.PROCESSING or new != TaskState.READY:
            # Someone else's committed change: putting the old state back would make memory
            # disagree with the database.
            log.error("undoing an unrecorded outcome: task %s is %s, expected %s; left as it is",
                      task_id, current.value, new.value)
            return
        for other in [a for a in engine.active.values()
                      if a.task_id == task_id and a is not active]:
            engine.active.pop(other.attempt_id, None)
    dataset.restore(task_id, old)
