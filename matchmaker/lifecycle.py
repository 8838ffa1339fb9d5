"""The lifecycle of an ended attempt, as pure decisions: what a pilot's report (or the server,
for a lost pilot) says, and what it changes. No I/O and no change to memory here: `plan` reads the
working state and returns a `Plan`, which `recording` writes and applies.

- success: the task completes, and each dependent whose dependencies are now all complete
  becomes ready (as a continuing task, ahead of new jobs);
- task error, staging error, resource overuse: one retry is used; past the dataset's
  `max_retries` (or the `retries` of the first of its `retry_rules` that matches the failure,
  which may also grow the task's memory and walltime) the task fails and every task downstream
  of it in the job fails with a reason naming it (`cascade`); in debug mode the task is
  suspended instead, for its owner to inspect;
- resource overuse also grows the task's requirement: the overused resource becomes
  `config.resources.GROWTH` times its measured peak, never shrinking (`grown_requirements`);
- pilot lost (drain, heartbeat timeout, an answer that never reached it): the task is requeued
  without using a retry, up to `LOST_LIMIT` times so that a task that kills its node cannot
  loop forever;
- not run (its pilot gave it back before starting it): the task is requeued, nothing counted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from floe.config.dataset import MAX_TASK_BYTES, MAX_WALLTIME
from floe.config.protocol import MAX_STATISTIC, MAX_STATISTICS, MAX_WARNING_LENGTH, MAX_WARNINGS
from floe.config.resources import Requirements, Usage, format_duration, format_size
from floe.config.retries import RetryRule, first_match
from floe.config.states import COUNTS_AS_FAILURE, LOST_LIMIT, AttemptState, ErrorClass, TaskState

from .errors import BadRequest
from .model import CODE, COMPLETE, STATES, WAITING, DatasetState, job_state

RESOURCE_STATISTICS = ("cpu_time", "wall_time", "peak_memory", "peak_disk", "peak_gpu_memory",
                       "gpu_time")
OVERUSE_RESOURCES = ("memory", "disk", "walltime")


@dataclass
class Outcome:
    """What a pilot (or the server, for a lost pilot) says about an ended attempt."""

    exit_code: int | None = None
    error_class: ErrorClass | None = None
    error_message: str = ""
    usage: Usage = field(default_factory=Usage)
    statistics: dict[str, float] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    stdout_tail: str = ""
    stderr_tail: str = ""
    overuse: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    """What was left out of the report and why: recorded on the attempt, no failure."""

    @property
    def success(self) -> bool:
        return self.error_class is None and self.exit_code == 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        """Parse a report body (already checked against its schema)."""
        error = data.get("error_class")
        statistics = data.get("statistics") or {}
        if len(statistics) > MAX_STATISTICS:
            raise BadRequest(f"statistics: at most {MAX_STATISTICS} entries, got "
                             f"{len(statistics)}")
        warnings = [str(w)[:MAX_WARNING_LENGTH] for w in data.get("warnings") or ()]
        numbers = {}
        for name, value in statistics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or abs(value) > MAX_STATISTIC:
                warnings.append(f"statistics: {str(name)[:40]!r} is {json.dumps(value)[:40]}, "
                                "not a number in range: left out")
            else:
                numbers[str(name)] = float(value)
        outcome = cls(
            exit_code=data.get("exit_code"),
            error_class=ErrorClass(error) if error else None,
            error_message=str(data.get("error_message") or ""),
            usage=Usage.from_dict(data.get("usage") or {}),
            statistics=numbers,
            outputs=list(data.get("outputs") or []),
            stdout_tail=str(data.get("stdout_tail") or ""),
            stderr_tail=str(data.get("stderr_tail") or ""),
            overuse=data.get("overuse"),
            warnings=warnings[:MAX_WARNINGS],
        )
        if outcome.error_class is None and outcome.exit_code != 0:
            outcome.error_class = ErrorClass.TASK_ERROR
            if not outcome.error_message:
                outcome.error_message = f"exit code {outcome.exit_code}"
        return outcome


@dataclass
class Plan:
    """The changes one outcome makes, decided before anything is written."""

    attempt_state: AttemptState
    moves: list[tuple[int, TaskState, TaskState]] = field(default_factory=list)
    failures: int = 0
    lost: int = 0
    grown: Requirements | None = None
    reason: str = ""
    jobs: dict[int, tuple[str, str]] = field(default_factory=dict)


def plan(dataset: DatasetState, task_id: int, outcome: Outcome,
         attempt_state: AttemptState) -> Plan:
    """Decide what an ended attempt of task `task_id` changes (no I/O, no mutation)."""
    job_index, task_index = dataset.locate(task_id)
    name = dataset.config.tasks[task_index].name
    result = Plan(attempt_state, failures=dataset.failures.get(task_id, 0),
                  lost=dataset.lost.get(task_id, 0))
    codes = bytearray(dataset.states[job_index * dataset.ntasks:
                                     (job_index + 1) * dataset.ntasks])
    before = job_state(codes, bool(result.failures or result.lost))

    def move(index: int, new: TaskState) -> None:
        old = STATES[codes[index]]
        result.moves.append((dataset.task_id(job_index, index), old, new))
        codes[index] = CODE[new]

    if outcome.success:
        move(task_index, TaskState.COMPLETE)
        for dependent in dataset.config.tasks[task_index].dependents:
            depends = dataset.config.tasks[dependent].depends
            if codes[dependent] == WAITING and all(codes[d] == COMPLETE for d in depends):
                move(dependent, TaskState.READY)
    else:
        error = outcome.error_class or ErrorClass.TASK_ERROR
        if error == ErrorClass.RESOURCE_OVERUSE:
            result.grown = grown_requirements(dataset.requirements(task_id), outcome)
        if error in COUNTS_AS_FAILURE:
            result.failures += 1
            rule = first_match(dataset.config.retry_rules, error, outcome.exit_code,
                               outcome.stderr_tail, outcome.error_message)
            retries = rule.retries if rule is not None else dataset.config.max_retries
            limit = rule.describe() if rule is not None else f"max_retries {retries}"
            if dataset.config.debug:
                result.reason = f"suspended for debugging after {error.value}: " \
                                f"{outcome.error_message}"
                move(task_index, TaskState.SUSPENDED)
            elif result.failures > retries:
                times = "once" if result.failures == 1 else f"{result.failures} times"
                allows = f"; it allows {retries} failures" if rule is not None else ""
                result.reason = (f"failed {times} ({limit}{allows}); "
                                 f"last: {error.value}: {outcome.error_message}")
                move(task_index, TaskState.FAILED)
                cascade(dataset, task_index, name, codes, move)
            else:
                by = f" ({limit})" if rule is not None else ""
                result.reason = f"retry {result.failures} of {retries}{by} after " \
                                f"{error.value}: {outcome.error_message}"
                if rule is not None and (rule.grow_memory > 1 or rule.grow_walltime > 1):
                    result.grown = grown_by_rule(
                        result.grown or dataset.requirements(task_id), rule)
                move(task_index, TaskState.READY)
        else:
            if error == ErrorClass.PILOT_LOST:
                result.lost += 1
            if result.lost > LOST_LIMIT:
                result.reason = f"its pilot was lost {result.lost} times; last: " \
                                f"{outcome.error_message}"
                move(task_index, TaskState.FAILED)
                cascade(dataset, task_index, name, codes, move)
            else:
                result.reason = f"requeued: {outcome.error_message or error.value}"
                move(task_index, TaskState.READY)
    after = job_state(codes, bool(result.failures or result.lost))
    if after != before:
        result.jobs[job_index] = (before, after)
    return result


def cascade(dataset: DatasetState, task_index: int, name: str, codes: bytearray,
            move: Callable[[int, TaskState], None]) -> None:
    """Fail every task downstream of a failed one in the same job."""
    pending = list(dataset.config.tasks[task_index].dependents)
    seen = set()
    while pending:
        index = pending.pop()
        if index in seen:
            continue
        seen.add(index)
        if codes[index] in (CODE[TaskState.WAITING], CODE[TaskState.READY],
                            CODE[TaskState.SUSPENDED]):
            move(index, TaskState.FAILED)
        pending.extend(dataset.config.tasks[index].dependents)


def grown_by_rule(current: Requirements, rule: RetryRule) -> Requirements:
    """Requirements after a failure a retry rule grows: memory and walltime times its factors,
    up to the most a task may ask for."""
    return replace(current,
                   memory=min(MAX_TASK_BYTES, math.ceil(current.memory * rule.grow_memory)),
                   walltime=min(MAX_WALLTIME, math.ceil(current.walltime * rule.grow_walltime)))


def grown_requirements(current: Requirements, outcome: Outcome) -> Requirements:
    """Requirements after an overuse: the overused resource becomes `GROWTH` times its measured
    peak (`Requirements.grown`); which one it was, the pilot says, or its usage shows."""
    usage = outcome.usage
    peaks = {"memory": usage.peak_memory, "disk": usage.peak_disk, "walltime": usage.wall_time}
    resource = (outcome.overuse or {}).get("resource")
    if resource in OVERUSE_RESOURCES:
        peak = (outcome.overuse or {}).get("peak") or peaks[resource]
        return current.grown(**{resource: float(peak)})
    # The pilot did not say which: grow whatever went beyond its request.
    over = {name: float(peaks[name]) for name in OVERUSE_RESOURCES
            if peaks[name] and peaks[name] > getattr(current, name)}
    return current.grown(**over) if over else current


def overuse_sentence(old: Requirements, new: Requirements) -> str:
    changes = []
    if new.memory != old.memory:
        changes.append(f"memory {format_size(old.memory)} -> {format_size(new.memory)}")
    if new.disk != old.disk:
        changes.append(f"disk {format_size(old.disk)} -> {format_size(new.disk)}")
    if new.walltime != old.walltime:
        changes.append(f"walltime {format_duration(old.walltime)} -> "
                       f"{format_duration(new.walltime)}")
    return "; requirement grown: " + ", ".join(changes) if changes else ""


def attempt_state_of(outcome: Outcome) -> AttemptState:
    if outcome.error_class in (ErrorClass.PILOT_LOST, ErrorClass.RESET, ErrorClass.NOT_RUN):
        return AttemptState.RESET
    return AttemptState.COMPLETE if outcome.success else AttemptState.FAILED
