"""The lifecycle of tasks and attempts as tables of allowed transitions, and the error classes.

Every state change in the matchmaker is checked against these tables and applied as a guarded
update ("compare and set" on the state it expects to leave), so that a late report from a stale
attempt can never overwrite a newer outcome. The pilot uses the same error classes when it reports.
"""

from __future__ import annotations

import enum


class TaskState(str, enum.Enum):
    WAITING = "waiting"        # some dependency is not complete yet
    READY = "ready"            # can be dispatched to a pilot
    PROCESSING = "processing"  # an attempt is running
    COMPLETE = "complete"
    FAILED = "failed"          # out of retries, or a dependency failed
    SUSPENDED = "suspended"    # held by its owner, an admin, or debug mode


JOB_STATES = ("waiting", "processing", "complete", "failed", "suspended")
"""A job's state, derived from its tasks' (see matchmaker.model.job_state)."""


class AttemptState(str, enum.Enum):
    PROCESSING = "processing"
    COMPLETE = "complete"
    FAILED = "failed"
    RESET = "reset"            # voided: timed out, pilot lost, or reset/suspended on the server


class ErrorClass(str, enum.Enum):
    """Why an attempt did not complete. Values, not prose: match on these, never on messages."""

    TASK_ERROR = "task_error"              # the task's own command failed
    RESOURCE_OVERUSE = "resource_overuse"  # killed for memory, disk or walltime beyond its share
    PILOT_LOST = "pilot_lost"              # the pilot went away (drain, heartbeat timeout)
    STAGING_ERROR = "staging_error"        # an input could not be fetched or an output stored
    RESET = "reset"                        # voided on purpose by an owner or admin
    NOT_RUN = "not_run"                    # given back unstarted by its pilot (drain, time short)


# Which error classes use up one of the dataset's retries. A lost pilot is not the task's fault:
# the task is requeued, up to LOST_LIMIT times so that a task that kills its node cannot loop.
# A task given back unstarted (NOT_RUN) is requeued at no cost at all.
COUNTS_AS_FAILURE = frozenset(
    {ErrorClass.TASK_ERROR, ErrorClass.RESOURCE_OVERUSE, ErrorClass.STAGING_ERROR}
)
LOST_LIMIT = 10

W, R, P, C, F, S = (TaskState.WAITING, TaskState.READY, TaskState.PROCESSING,
                    TaskState.COMPLETE, TaskState.FAILED, TaskState.SUSPENDED)

# (from, to) -> the event that makes it; anything not listed is refused.
TASK_TRANSITIONS: dict[tuple[TaskState, TaskState], str] = {
    (W, R): "dependencies complete",
    (W, F): "a dependency failed",
    (W, S): "suspended",
    (R, P): "dispatched to a pilot",
    (R, W): "reset while a dependency is pending",
    (R, S): "suspended",
    (R, F): "a dependency failed",
    (P, C): "attempt completed",
    (P, R): "attempt failed or was lost, retrying",
    (P, W): "reset while a dependency is pending",
    (P, F): "attempt failed, no retries left",
    (P, S): "suspended (debug mode or by request)",
    (C, R): "reset",
    (C, W): "reset while a dependency is pending",
    (F, R): "reset",
    (F, W): "reset while a dependency is pending",
    (S, R): "resumed",
    (S, W): "resumed while a dependency is pending",
    (S, F): "a dependency failed",
}

ATTEMPT_TRANSITIONS: dict[tuple[AttemptState, AttemptState], str] = {
    (AttemptState.PROCESSING, AttemptState.COMPLETE): "reported complete",
    (AttemptState.PROCESSING, AttemptState.FAILED): "reported failed",
    (AttemptState.PROCESSING, AttemptState.RESET): "voided",
}


class TransitionError(ValueError):
    """A state change that the lifecycle does not allow."""


def check_task(old: TaskState, new: TaskState) -> str:
    """The event name of an allowed task transition; raises TransitionError otherwise."""
    try:
        return TASK_TRANSITIONS[(TaskState(old), TaskState(new))]
    except KeyError:
        raise TransitionError(f"a task cannot go from {old.value} to {new.value}") from None


def check_attempt(old: AttemptState, new: AttemptState) -> str:
    """The event name of an allowed attempt transition; raises TransitionError otherwise."""
    try:
        return ATTEMPT_TRANSITIONS[(AttemptState(old), AttemptState(new))]
    except KeyError:
        raise TransitionError(f"an attempt cannot go from {old.value} to {new.value}") from None


def sources(new: TaskState) -> tuple[TaskState, ...]:
    """Every state from which a task may move to `new` (for guarded bulk updates)."""
    return tuple(old for (old, to) in TASK_TRANSITIONS if to == new)
