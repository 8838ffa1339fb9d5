"""What happens when an attempt ends: reports, lost pilots, timeouts, retries, escalation, DAGs.

An outcome is planned from the in-memory state under the job's lock (`plan`), written as one
batch of guarded updates, and applied to memory by the writer right after that batch commits
(or, for a report that asks, ahead of the commit with an undo for a failed write).

- success: the task completes, and each dependent whose dependencies are now all complete
  becomes ready (as a continuing task, ahead of new jobs);
- task error, staging error, resource overuse: one retry is used; past the dataset's
  `max_retries` the task fails and every task downstream of it in the job fails with a reason
  naming it; in debug mode the task is suspended instead, for its owner to inspect;
- resource overuse also grows the task's requirement to 1.5x the measured peak (never shrinks);
- pilot lost (drain, heartbeat timeout): the task is requeued without using a retry, up to
  `LOST_LIMIT` times so that a task that kills its node cannot loop forever.

A report may also ask for the pilot's next task (`report_and_ask`): the outcome is applied to
memory first, so the match sees the attempt's usage accounted and its job's next tasks ready, just
as a separate ask right after the report would; then the outcome's rows and the dispatch's go in
one batch, one group commit, before either is answered. A failed write undoes both in memory.
The passkey authorizes the report; the ask needs what a separate ask needs, the pilot's token,
and the attempt must be that pilot's.

A pilot may also report many attempts in one request (`report_many`), each decided on its own
as a single report is, all applied to memory under their jobs' locks and written, with the
ask's dispatches, in one group commit (a batch each, so that a stale one is refused alone and
retried one by one); and send one heartbeat for all its attempts (`heartbeats`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from config.resources import Requirements, Usage, format_duration, format_size
from config.states import COUNTS_AS_FAILURE, LOST_LIMIT, AttemptState, ErrorClass, TaskState

from . import dispatch
from .engine import ActiveAttempt, Engine, Pilot, Site, hash_secret
from .errors import ApiError, BadRequest, Conflict, Forbidden, NotFound
from .fairshare import weight
from .model import CODE, COMPLETE, STATES, WAITING, DatasetState, job_state
from .storage import queries
from .storage.database import Batch, StaleWrite
from .storage.writes import (
    ADD_STATISTIC,
    END_ATTEMPT,
    END_PILOT,
    MOVE_TASK,
    MOVE_TASK_WITH_RECORD,
    SET_DATASET,
    SET_JOB,
)

log = logging.getLogger(__name__)

MAX_STATISTICS = 1000
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
        numbers = {}
        for name, value in statistics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise BadRequest(f"statistics.{name}: expected a finite number, got {value!r}")
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


def check_passkey(active: ActiveAttempt, passkey: str) -> None:
    if not hmac.compare_digest(active.passkey_hash, hash_secret(passkey)):
        raise Forbidden(f"wrong passkey for attempt {active.attempt_id}: only the pilot that "
                        "was given this attempt may speak for it")


async def stale_answer(engine: Engine, attempt_id: int, passkey: str) -> dict[str, Any]:
    """Answer a report or heartbeat for an attempt that is no longer in flight: a repeated
    report of a recorded result is acknowledged again (so a pilot that lost the first answer
    never reports twice); anything else is refused with the reason."""
    return (await _stale(engine, attempt_id, passkey))[0]


async def _stale(engine: Engine, attempt_id: int, passkey: str) -> tuple[dict[str, Any], int]:
    """`stale_answer`, with the id of the pilot the attempt was given to."""
    row = await queries.ended_attempt(engine.db, attempt_id)
    if row is None:
        raise NotFound(f"there is no attempt {attempt_id}")
    if not hmac.compare_digest(row["passkey_hash"], hash_secret(passkey)):
        raise Forbidden(f"wrong passkey for attempt {attempt_id}: only the pilot that was given "
                        "this attempt may speak for it")
    if row["state"] in (AttemptState.COMPLETE.value, AttemptState.FAILED.value):
        return {"recorded": True, "duplicate": True, "state": row["state"]}, row["pilot_id"]
    reason = engine.voided.get(attempt_id) or row["error_message"] or "reset"
    raise Conflict(f"attempt {attempt_id} is void ({reason}); its passkey is no longer valid "
                   "and its result will not be recorded")


def plan(dataset: DatasetState, active: ActiveAttempt, outcome: Outcome,
         attempt_state: AttemptState) -> Plan:
    """Decide what an ended attempt changes (no I/O, no mutation)."""
    task_id = active.task_id
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
            retries = dataset.config.max_retries
            if dataset.config.debug:
                result.reason = f"suspended for debugging after {error.value}: " \
                                f"{outcome.error_message}"
                move(task_index, TaskState.SUSPENDED)
            elif result.failures > retries:
                times = "once" if result.failures == 1 else f"{result.failures} times"
                result.reason = (f"failed {times} (max_retries {retries}); "
                                 f"last: {error.value}: {outcome.error_message}")
                move(task_index, TaskState.FAILED)
                cascade(dataset, task_index, name, codes, move)
            else:
                result.reason = f"retry {result.failures} of {retries} after {error.value}: " \
                                f"{outcome.error_message}"
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


def cascade(dataset: DatasetState, task_index: int, name: str, codes: bytearray, move) -> None:
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


def grown_requirements(current: Requirements, outcome: Outcome) -> Requirements:
    """Requirements after an overuse: the overused resource becomes 1.5x its measured peak."""
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


def utf8_tail(text: str, limit: int) -> str:
    """The end of `text` that takes at most `limit` bytes in UTF-8, cut between characters."""
    if len(text) * 4 <= limit:  # no character takes more than 4 bytes
        return text
    end = text[-limit:]  # every character takes at least one byte
    # The API refuses text with a lone surrogate ("\ud800"); surrogatepass keeps this total
    # for any other caller.
    data = end.encode(errors="surrogatepass")
    if len(data) <= limit:
        return end
    start = len(data) - limit
    while data[start] & 0xC0 == 0x80:  # a continuation byte: the cut split a character
        start += 1
    return data[start:].decode(errors="surrogatepass")


def outcome_batch(engine: Engine, dataset: DatasetState, active: ActiveAttempt,
                  outcome: Outcome, attempt_state: AttemptState, now: float
                  ) -> tuple[Batch, Plan, float]:
    """Decide what an ended attempt changes and the guarded rows that record it: the batch, the
    plan, and the wall time charged. Nothing is changed in memory."""
    tail = engine.settings.tail_bytes
    decided = plan(dataset, active, outcome, attempt_state)
    if decided.grown is not None and decided.grown != dataset.requirements(active.task_id):
        decided.reason += overuse_sentence(dataset.requirements(active.task_id), decided.grown)
    usage = outcome.usage
    wall = usage.wall_time or max(now - active.started, 0.0)
    batch = Batch()
    batch.add(END_ATTEMPT, (
        attempt_state.value, now, now, usage.cpu_time, wall, usage.peak_memory,
        usage.peak_disk, usage.peak_gpu_memory, usage.gpu_time, outcome.exit_code,
        outcome.error_class.value if outcome.error_class else None,
        outcome.error_message[:4000] or None,
        json.dumps(outcome.statistics) if outcome.statistics else None,
        json.dumps(outcome.outputs) if outcome.outputs else None,
        utf8_tail(outcome.stdout_tail, tail) or None, utf8_tail(outcome.stderr_tail, tail) or None,
        active.attempt_id))
    task_id = active.task_id
    for moved_id, old, new in decided.moves:
        if moved_id == task_id and not outcome.success:
            grown = decided.grown if decided.grown is not None else dataset.overrides.get(task_id)
            batch.add(MOVE_TASK_WITH_RECORD, (
                new.value, decided.failures, decided.lost,
                json.dumps(grown.to_dict()) if grown is not None else None,
                decided.reason[:4000], now, moved_id, old.value))
        elif new == TaskState.FAILED:
            name = dataset.config.tasks[dataset.locate(task_id)[1]].name
            batch.add(MOVE_TASK_WITH_RECORD, (
                new.value, dataset.failures.get(moved_id, 0), dataset.lost.get(moved_id, 0),
                None, f"dependency {name} failed", now, moved_id, old.value))
        else:
            batch.add(MOVE_TASK, (new.value, now, moved_id, old.value))
    for job_index, (_, after) in decided.jobs.items():
        batch.add(SET_JOB, (after, dataset.id, job_index))
    if outcome.success:
        dataset_id, task_index = dataset.id, dataset.locate(task_id)[1]
        batch.extend(ADD_STATISTIC, [(dataset_id, task_index, "user", name, value)
                                     for name, value in outcome.statistics.items()])
        measured = (usage.cpu_time, wall, usage.peak_memory, usage.peak_disk,
                    usage.peak_gpu_memory, usage.gpu_time)  # in RESOURCE_STATISTICS' order
        batch.extend(ADD_STATISTIC, [
            (dataset_id, task_index, "resource", name, float(value))
            for name, value in zip(RESOURCE_STATISTICS, measured, strict=True)])
    return batch, decided, wall


async def finish(engine: Engine, active: ActiveAttempt, outcome: Outcome,
                 attempt_state: AttemptState) -> Plan:
    """Record how an attempt ended and apply what follows. The caller holds the job lock."""
    dataset = engine.datasets[active.dataset_id]
    batch, decided, wall = outcome_batch(engine, dataset, active, outcome, attempt_state,
                                         engine.clock())
    batch.on_commit(lambda: apply(engine, dataset, active, outcome, decided, wall))
    await engine.db.write(batch)
    return decided


def apply(engine: Engine, dataset: DatasetState, active: ActiveAttempt, outcome: Outcome,
          decided: Plan, wall: float) -> None:
    """Bring memory in step with a committed outcome (runs in the writer, right after commit)."""
    _, status = apply_outcome(engine, dataset, active, outcome, decided, wall)
    release(engine, active)
    if status is not None:
        engine.db.write_later(Batch().add(SET_DATASET, status))


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


def apply_outcome(engine: Engine, dataset: DatasetState, active: ActiveAttempt,
                  outcome: Outcome, decided: Plan, wall: float
                  ) -> tuple[Callable[[], None], tuple | None]:
    """Apply a planned outcome to what the scheduler decides from: the tasks' states and
    records, the fair-share ledgers, runtimes, metrics and the dataset's status (the attempt
    itself stays in flight until `release`). Returns a function that undoes exactly this, for
    a write that fails, and the SET_DATASET row when the dataset's status changed."""
    now = engine.clock()
    task_id = active.task_id
    task_index = dataset.locate(task_id)[1]
    before = (dataset.failures.get(task_id, _MISSING), dataset.lost.get(task_id, _MISSING),
              dataset.overrides.get(task_id, _MISSING), dataset.runtimes[task_index],
              dataset.status)
    if decided.failures:
        dataset.failures[task_id] = decided.failures
    if decided.lost:
        dataset.lost[task_id] = decided.lost
    if decided.grown is not None:
        dataset.overrides[task_id] = decided.grown
    for moved_id, _old, new in decided.moves:
        dataset.move(moved_id, new, continuing=True)
    settings = engine.settings
    rate = weight(active.requirements.cpus, active.requirements.gpus, settings.gpu_weight)
    correction = rate * wall - active.charge
    engine.user_usage.charge(dataset.user_id, correction, now)
    engine.dataset_usage.charge(dataset.id, correction, now)
    metrics = engine.metrics
    error = None
    delivered = active.requirements.cpus * wall
    if outcome.success:
        counted = metrics.delivered.get(dataset.user_id, _MISSING)
        previous = dataset.runtimes[task_index]
        dataset.runtimes[task_index] = wall if previous is None else 0.8 * previous + 0.2 * wall
        metrics.completions += 1
        metrics.delivered[dataset.user_id] = metrics.delivered.get(dataset.user_id, 0.0) + \
            delivered
    else:
        error = (outcome.error_class or ErrorClass.TASK_ERROR).value
        counted = metrics.failures.get(error, _MISSING)
        metrics.failures[error] = metrics.failures.get(error, 0) + 1
    status = engine.dataset_status_after(dataset)
    row = None
    if status != dataset.status:
        dataset.status = status
        row = (status, dataset.priority, now, dataset.id)

    def undo() -> None:
        failures, lost, grown, runtime, old_status = before
        _put(dataset.failures, task_id, failures)
        _put(dataset.lost, task_id, lost)
        _put(dataset.overrides, task_id, grown)
        for moved_id, old, new in reversed(decided.moves):
            _take_back(engine, dataset, active, moved_id, old, new)
        engine.user_usage.charge(dataset.user_id, -correction, now)
        engine.dataset_usage.charge(dataset.id, -correction, now)
        dataset.runtimes[task_index] = runtime
        if error is None:
            metrics.completions -= 1
            _put(metrics.delivered, dataset.user_id, counted)
        else:
            _put(metrics.failures, error, counted)
        dataset.status = old_status

    return undo, row


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


def attempt_state_of(outcome: Outcome) -> AttemptState:
    if outcome.error_class in (ErrorClass.PILOT_LOST, ErrorClass.RESET):
        return AttemptState.RESET
    return AttemptState.COMPLETE if outcome.success else AttemptState.FAILED


def recorded(decided: Plan) -> dict[str, Any]:
    """A report's answer once its outcome is committed."""
    return {"recorded": True, "duplicate": False, "task_state": decided.moves[0][2].value,
            "reason": decided.reason or None}


async def report(engine: Engine, attempt_id: int, passkey: str,
                 outcome: Outcome) -> dict[str, Any]:
    """A pilot's final report on one of its attempts."""
    return (await _record(engine, attempt_id, passkey, outcome))[0]


Next = dispatch.Answer | ApiError


async def report_and_ask(engine: Engine, attempt_id: int, passkey: str, outcome: Outcome,
                         free: Mapping[str, Any], site: Site | None
                         ) -> tuple[dict[str, Any], Next]:
    """A final report that also asks, with `free` (the ask route's fields), for the next task of
    the pilot the attempt was given to, which a pilot token of `site` speaks for: the report's
    answer, and the ask's, or why that pilot may not ask. A report the passkey cannot make is
    refused (raised) before anything is asked.

    Both are one commit: the outcome is applied to memory, the next task chosen from what that
    leaves, and the outcome's rows and the dispatch's committed in the same group commit, before
    either is answered. If that write fails, both are undone in memory (the batch's
    `on_failure`); a refused write (the attempt was ended meanwhile) falls back to the report on
    its own, answered as any repeated report is, and a separate ask."""
    active = engine.active.get(attempt_id)
    if active is not None:
        check_passkey(active, passkey)
        both = await _record_and_ask(engine, active, outcome, free, site)
        if both is not None:
            return both
    answer, pilot_id = await _record(engine, attempt_id, passkey, outcome)
    return answer, await _ask_for(engine, pilot_id, free, site)


def _asker(engine: Engine, pilot_id: int, site: Site | None) -> Pilot | ApiError:
    """The pilot that an ask inside a report asks for, or why it may not."""
    pilot = engine.pilots.get(pilot_id)
    if pilot is None:
        return NotFound(f"pilot {pilot_id} is not registered or has ended; register again")
    if site is None or pilot.site.site_id != site.site_id:
        return Forbidden(f"pilot {pilot_id} belongs to another site")
    return pilot


async def _ask_for(engine: Engine, pilot_id: int, free: Mapping[str, Any],
                   site: Site | None) -> Next:
    pilot = _asker(engine, pilot_id, site)
    if isinstance(pilot, ApiError):
        return pilot
    try:
        return await dispatch.ask(engine, pilot, dispatch.Offer.from_dict(free, pilot.site.name))
    except ApiError as refused:  # the pilot ended while the ask waited
        return refused


async def _record_and_ask(engine: Engine, active: ActiveAttempt, outcome: Outcome,
                          free: Mapping[str, Any], site: Site | None
                          ) -> tuple[dict[str, Any], Next] | None:
    """The report and the ask in one batch; None where it must be done the two-step way (the
    attempt ended meanwhile, the write was refused, or the ask is refused or malformed)."""
    pilot = _asker(engine, active.pilot_id, site)
    if isinstance(pilot, ApiError):
        return None
    try:
        offer = dispatch.Offer.from_dict(free, pilot.site.name)
    except (KeyError, TypeError, ValueError):  # answered by the two-step way's ask
        return None
    dataset = engine.datasets[active.dataset_id]
    job_index = dataset.locate(active.task_id)[0]
    state = attempt_state_of(outcome)
    async with engine.job_lock(dataset.id, job_index):
        if engine.active.get(active.attempt_id) is not active \
                or engine.pilots.get(pilot.pilot_id) is not pilot:  # changed while we waited
            return None
        batch, decided, wall = outcome_batch(engine, dataset, active, outcome, state,
                                             engine.clock())
        undo, status = apply_outcome(engine, dataset, active, outcome, decided, wall)
        batch.on_failure(undo)
        if status is not None:
            batch.add(SET_DATASET, status)
        batch.on_commit(lambda: release(engine, active))
        following = dispatch.reserve_offer(engine, pilot, offer, batch)
        try:
            await engine.db.write(batch)
        except StaleWrite:
            return None
    if state == AttemptState.RESET:
        engine.void(active.attempt_id, outcome.error_message or "reported lost by its pilot")
    return recorded(decided), following


async def _record(engine: Engine, attempt_id: int, passkey: str,
                  outcome: Outcome) -> tuple[dict[str, Any], int]:
    """`report`, with the id of the pilot the attempt was given to."""
    active = engine.active.get(attempt_id)
    if active is None:
        return await _stale(engine, attempt_id, passkey)
    check_passkey(active, passkey)
    dataset = engine.datasets[active.dataset_id]
    job_index = dataset.locate(active.task_id)[0]
    async with engine.job_lock(dataset.id, job_index):
        if engine.active.get(attempt_id) is not active:  # recorded while we waited
            return await _stale(engine, attempt_id, passkey)
        state = attempt_state_of(outcome)
        try:
            decided = await finish(engine, active, outcome, state)
        except StaleWrite:
            return await _stale(engine, attempt_id, passkey)
    if state == AttemptState.RESET:
        engine.void(attempt_id, outcome.error_message or "reported lost by its pilot")
    return recorded(decided), active.pilot_id


def _refusal(attempt_id: int, refused: ApiError) -> dict[str, Any]:
    return {"attempt_id": attempt_id, "error": refused.message, "status": refused.status}


def _check_owner(attempt_id: int, owner: int, pilot_id: int) -> None:
    if owner != pilot_id:
        raise Forbidden(f"attempt {attempt_id} was given to pilot {owner}, not to pilot "
                        f"{pilot_id}: report it in that pilot's reports")


async def report_many(engine: Engine, pilot_id: int, site: Site | None,
                      reports: Sequence[Mapping[str, Any]], free: Mapping[str, Any] | None
                      ) -> tuple[list[dict[str, Any]], Next | None]:
    """Reports of `pilot_id`'s attempts (each a report body with "attempt_id" and "passkey"),
    and, with `free`, the ask of that pilot, which a pilot token of `site` speaks for: what
    each report is answered (as the single report route answers it, or why it cannot be made:
    {"attempt_id", "error", "status"}), in order, and the ask's answer (None without `free`).

    Each report is decided on its own, by its passkey, and must be of an attempt given to that
    pilot. The outcomes are applied to memory under their jobs' locks (taken together, in
    order), the ask is decided from what they leave, and everything is written in one group
    commit, a batch per report and one for the ask, before this returns. A report whose batch
    is refused (the attempt was ended meanwhile), or that repeats one before it, is then made
    the one-by-one way; a refused dispatch is asked again on its own."""
    results: list[dict[str, Any] | None] = [None] * len(reports)
    later: list[tuple[int, int, str, Outcome]] = []  # made one by one, after the commit
    fresh: list[tuple[int, ActiveAttempt, str, Outcome]] = []
    taken: set[int] = set()
    active_of = engine.active
    for index, body in enumerate(reports):
        attempt_id, passkey = body["attempt_id"], body["passkey"]
        active = active_of.get(attempt_id)
        try:
            outcome = Outcome.from_dict(body)
            if active is not None:
                check_passkey(active, passkey)
                _check_owner(attempt_id, active.pilot_id, pilot_id)
        except ApiError as refused:
            results[index] = _refusal(attempt_id, refused)
            continue
        if active is None or attempt_id in taken:
            later.append((index, attempt_id, passkey, outcome))
        else:
            taken.add(attempt_id)
            fresh.append((index, active, passkey, outcome))
    datasets = engine.datasets
    locks = engine.job_locks(
        (a.dataset_id, datasets[a.dataset_id].locate(a.task_id)[0]) for _, a, _, _ in fresh)
    asker: Pilot | ApiError | None = None
    offer = None
    following: Next | None = None
    async with locks:
        if free is not None:  # the pilot may have ended while the locks were taken
            asker = _asker(engine, pilot_id, site)
            if isinstance(asker, Pilot):
                offer = dispatch.Offer.from_dict(free, asker.site.name)
            else:
                following = asker
        now = engine.clock()
        batches: list[Batch] = []
        applied: list[tuple[int, ActiveAttempt, str, Outcome, Plan]] = []
        for index, active, passkey, outcome in fresh:
            if active_of.get(active.attempt_id) is not active:  # recorded while we waited
                later.append((index, active.attempt_id, passkey, outcome))
                continue
            dataset = datasets[active.dataset_id]
            batch, decided, wall = outcome_batch(engine, dataset, active, outcome,
                                                 attempt_state_of(outcome), now)
            undo, status = apply_outcome(engine, dataset, active, outcome, decided, wall)
            batch.on_failure(undo)
            if status is not None:
                batch.add(SET_DATASET, status)
            batch.on_commit(partial(release, engine, active))
            batches.append(batch)
            applied.append((index, active, passkey, outcome, decided))
        asking = Batch()
        if offer is not None:
            following = dispatch.reserve_offer(engine, asker, offer, asking)
        refusals = await engine.db.write_each([*batches, asking])
    for refused in refusals:
        if refused is not None and not isinstance(refused, StaleWrite):
            raise refused
    ask_refused = refusals.pop()
    for (index, active, passkey, outcome, decided), refused in zip(applied, refusals,
                                                                    strict=True):
        if refused is not None:
            later.append((index, active.attempt_id, passkey, outcome))
            continue
        results[index] = {"attempt_id": active.attempt_id, **recorded(decided)}
        if decided.attempt_state == AttemptState.RESET:
            engine.void(active.attempt_id, outcome.error_message or "reported lost by its pilot")
    for index, attempt_id, passkey, outcome in sorted(later, key=lambda item: item[0]):
        try:
            answer, owner = await _record(engine, attempt_id, passkey, outcome)
            _check_owner(attempt_id, owner, pilot_id)
        except ApiError as refused:
            results[index] = _refusal(attempt_id, refused)
            continue
        results[index] = {"attempt_id": attempt_id, **answer}
    if offer is not None and ask_refused is not None:
        following = await _ask_for(engine, pilot_id, free, site)
    return results, following


async def lose(engine: Engine, active: ActiveAttempt, error: ErrorClass, reason: str) -> None:
    """End an attempt on the server's side (heartbeat timeout): void it and requeue its task."""
    dataset = engine.datasets[active.dataset_id]
    job_index = dataset.locate(active.task_id)[0]
    async with engine.job_lock(dataset.id, job_index):
        if engine.active.get(active.attempt_id) is not active:
            return
        outcome = Outcome(error_class=error, error_message=reason,
                          usage=Usage.from_dict(active.usage))
        engine.void(active.attempt_id, reason)
        try:
            await finish(engine, active, outcome, AttemptState.RESET)
        except StaleWrite:
            log.info("attempt %s ended meanwhile; not voided", active.attempt_id)


async def heartbeat(engine: Engine, attempt_id: int, passkey: str,
                    usage: dict[str, float]) -> dict[str, Any]:
    """Note that an attempt is alive and what it uses now; tells the pilot to go on."""
    active = engine.active.get(attempt_id)
    if active is None:
        raise await _ended(engine, attempt_id, passkey)
    check_passkey(active, passkey)
    _beat(engine, active, usage, engine.clock())
    return {"action": "continue", "heartbeat_interval": engine.settings.heartbeat_interval}


async def _ended(engine: Engine, attempt_id: int, passkey: str) -> ApiError:
    """Why a heartbeat for an attempt that is no longer in flight is refused."""
    try:
        answer = await stale_answer(engine, attempt_id, passkey)
    except ApiError as refused:
        return refused
    return Conflict(f"attempt {attempt_id} has already ended ({answer['state']}); "
                    "stop sending heartbeats for it")


def _beat(engine: Engine, active: ActiveAttempt, usage: Mapping[str, float], now: float) -> None:
    """Note a heartbeat whose passkey was checked (kept in memory; `Engine.flush` stores it)."""
    active.last_heartbeat = now
    active.usage = {k: float(v) for k, v in usage.items() if k in RESOURCE_STATISTICS}
    active.usage_dirty = True
    pilot = engine.pilots.get(active.pilot_id)
    if pilot is not None:
        pilot.last_seen = now
    engine.metrics.heartbeats += 1


_CONTINUE = {"action": "continue"}


async def heartbeats(engine: Engine, pilot: Pilot, attempts: Sequence[Mapping[str, Any]],
                     reporting: Sequence[int] | None = None) -> dict[str, Any]:
    """One heartbeat of `pilot` for all the attempts it holds (each {"attempt_id", "passkey",
    "usage"}): each checked by its passkey as a single heartbeat is, and answered continue, or
    kill with the status and sentence the single heartbeat route would refuse it with. Also a
    keep-alive of the pilot itself. Nothing waits on a commit, unless `reporting` (the ids of
    the pilot's ended attempts whose reports wait) is given: then the two lists name all the
    pilot holds, and an attempt of the pilot that neither names, handed out longer than a
    heartbeat interval ago, never reached it and is reset (`forget_unheld`)."""
    now = engine.clock()
    pilot.last_seen = now
    answers: dict[str, Any] = {}
    active_of = engine.active
    for item in attempts:
        attempt_id = item["attempt_id"]
        active = active_of.get(attempt_id)
        try:
            if active is None:
                raise await _ended(engine, attempt_id, item["passkey"])
            check_passkey(active, item["passkey"])
        except ApiError as refusal:
            answers[str(attempt_id)] = {"action": "kill", "status": refusal.status,
                                        "error": refusal.message}
            continue
        _beat(engine, active, item.get("usage") or {}, now)
        answers[str(attempt_id)] = _CONTINUE
    if reporting is not None:
        held = {item["attempt_id"] for item in attempts}
        held.update(reporting)
        await forget_unheld(engine, pilot, held, now)
    return {"heartbeat_interval": engine.settings.heartbeat_interval, "attempts": answers}


async def forget_unheld(engine: Engine, pilot: Pilot, held: set[int], now: float) -> int:
    """Reset the attempts given to `pilot` that it does not hold although they were handed out
    more than a heartbeat interval before `now`: the answer that carried them was lost (a
    dropped connection, a proxy's timeout), and the pilot will never run or report them.
    Returns how many; their tasks are requeued as after a lost pilot, at once, instead of after
    `heartbeat_timeout`."""
    grace = engine.settings.heartbeat_interval
    unheld = [active for attempt_id in list(pilot.attempts) if attempt_id not in held
              and (active := engine.active.get(attempt_id)) is not None
              and now - active.started > grace]
    for active in unheld:
        reason = (f"never reached pilot {pilot.pilot_id} on {pilot.host} at {pilot.site.name}: "
                  f"its heartbeat does not hold it {format_duration(now - active.started)} "
                  "after it was handed out (the answer was lost on the way)")
        log.warning("attempt %s: %s; its task is requeued", active.attempt_id, reason)
        await lose(engine, active, ErrorClass.PILOT_LOST, reason)
    return len(unheld)


PAUSE_TOLERANCE = 1.0
"""Seconds the sweep may come late before the time is taken as a pause of the matchmaker."""


def forgive_pause(engine: Engine, now: float) -> float:
    """Time the matchmaker did not run counts against no attempt and no pilot: when the sweep
    comes later than its interval allows (the process was stopped, frozen, or its loop
    blocked), every attempt's last heartbeat and every pilot's last contact move on by the
    pause, and each attempt gets at least one heartbeat interval to be heard from again.
    Returns the pause in seconds (0 when there was none)."""
    settings = engine.settings
    last, engine.last_sweep = engine.last_sweep, now
    pause = now - last - settings.sweep_interval if last is not None else 0.0
    if pause <= PAUSE_TOLERANCE:
        return 0.0
    earliest = now - settings.heartbeat_timeout + settings.heartbeat_interval
    for active in engine.active.values():
        active.last_heartbeat = max(active.last_heartbeat + pause, earliest)
    for pilot in engine.pilots.values():
        pilot.last_seen += pause
    log.warning("the matchmaker did not run for %s (stopped, frozen or blocked); that time "
                "counts against no attempt or pilot", format_duration(pause))
    return pause


async def sweep(engine: Engine) -> int:
    """Void attempts whose pilot stopped sending heartbeats; returns how many."""
    now = engine.clock()
    timeout = engine.settings.heartbeat_timeout
    overdue = [a for a in list(engine.active.values()) if now - a.last_heartbeat > timeout]
    for active in overdue:
        await lose(engine, active, ErrorClass.PILOT_LOST,
                   f"no heartbeat for {format_duration(now - active.last_heartbeat)} from pilot "
                   f"{active.pilot_id} on {active.host} at {active.site}")
    return len(overdue)


async def sweep_pilots(engine: Engine) -> int:
    """Mark pilots silent for longer than `pilot_lost_after` (and running nothing) as lost."""
    now = engine.clock()
    limit = engine.settings.pilot_lost_after
    silent = [p for p in engine.pilots.values()
              if now - p.last_seen > limit and not p.attempts]
    if silent:
        batch = Batch()
        for pilot in silent:
            batch.add(END_PILOT, ("lost", now, f"not heard from for {format_duration(limit)}", 0,
                                  pilot.pilot_id))
        await engine.db.write(batch)
        for pilot in silent:
            engine.pilots.pop(pilot.pilot_id, None)
    return len(silent)


async def sweep_loop(engine: Engine) -> None:
    engine.last_sweep = engine.clock()
    while True:
        await asyncio.sleep(engine.settings.sweep_interval)
        try:
            forgive_pause(engine, engine.clock())
            await sweep(engine)
            await sweep_pilots(engine)
        except Exception:
            log.exception("the heartbeat sweep failed; will retry")
        engine.last_sweep = engine.clock()  # the next pause is counted from the sweep's end
