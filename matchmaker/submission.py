"""Submitting a dataset, and creating its jobs and tasks a chunk at a time in the background.

A submit stores the dataset row (with its validated config) and its first jobs (at most
INLINE_TASKS tasks) in one batch of the group commit and reserves a block of task ids, so it
answers at once however many jobs the dataset has. The materializer then inserts the rest in
chunks of a few thousand rows, each its own short transaction interleaved with the pilots'
commits, and makes each chunk's first tasks matchable as soon as it commits: a million-job
dataset starts running within a second and never blocks other requests.

A dry run (`preview`) validates and checks the limits exactly as a submit does, and says what
the submit would create without storing anything.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from floe.config import expressions
from floe.config.dataset import ConfigError, DatasetConfig, check_sample_jobs, job_args, validate
from floe.config.schema import counted

from .engine import Engine, User
from .errors import BadRequest
from .model import Dataset, DatasetState, DatasetStatus
from .storage import writes
from .storage.database import Batch

log = logging.getLogger(__name__)

INLINE_TASKS = 1000
"""Tasks stored with the dataset itself, at most (the first jobs'): a submit's transaction stays
short however large the dataset, and a small one needs no second commit to start."""


def checked(document: Any) -> DatasetConfig:
    """The validated dataset config in `document`; BadRequest listing every problem."""
    try:
        config = validate(document)
        check_sample_jobs(config)
    except ConfigError as exc:
        raise BadRequest("the dataset config is not valid:\n" + str(exc)) from exc
    return config


async def submit(engine: Engine, user: User, document: Any) -> DatasetState:
    """Validate and store a dataset config; its jobs are created in the background."""
    config = checked(document)
    if engine.db.gated:
        await engine.db.turn()
    check_limits(engine, user, config.jobs, len(config.tasks))
    now = engine.clock()
    base = engine.next_task_id  # add_dataset moves it past the room the dataset may grow into
    dataset_id = engine.next_dataset_id
    engine.next_dataset_id += 1

    # The first jobs are stored with the dataset, in its batch, and are matchable at once: a
    # held ask of an idle pilot is answered with one of them in the same group commit as the
    # submit (its attempt's rows come after the dataset's), not one commit after it; the rest
    # are created in the background. Should the commit fail, the dataset leaves memory again.
    first = min(config.jobs, max(1, INLINE_TASKS // len(config.tasks)))
    state = DatasetState(Dataset(dataset_id, user.user_id, config, base, now),
                         DatasetStatus.PROCESSING, config.priority)
    rows = state.add_jobs(0, first, False)
    batch = writes.add_dataset(
        Batch(), dataset_id, user_id=user.user_id, description=config.description,
        config=json.dumps(config.raw), jobs=config.jobs, tasks_per_job=len(config.tasks),
        task_id_base=base, priority=config.priority, status=DatasetStatus.PROCESSING, now=now,
        detail=f"{counted(config.jobs, 'job')} of {counted(len(config.tasks), 'task')}",
        first_jobs=first, tasks=rows)
    engine.add_dataset(state)
    state.commit_jobs(0, first, False)
    batch.on_failure(lambda: engine.forget_dataset(state))
    held = bool(engine.holding.held)
    await engine.db.write(batch, gather=held)
    if held:
        # The held asks that its tasks woke are answered in the same commit: their pilots hear
        # first (a turn of the event loop), since the tasks start there; the submitter after.
        await asyncio.sleep(0)
    if first < config.jobs:
        engine.materializing.set()
    return state


def check_limits(engine: Engine, user: User, jobs: int, tasks_per_job: int) -> None:
    """Refuse (400) a dataset larger than the server's settings allow one dataset, or one
    that would take its user past their unfinished tasks."""
    settings = engine.settings
    if jobs > settings.max_jobs_per_dataset:
        raise BadRequest(f"jobs: this server takes at most {settings.max_jobs_per_dataset:,} "
                         f"jobs per dataset (max_jobs_per_dataset), got {jobs:,}; submit the "
                         "production as several datasets")
    unfinished = sum(d.unfinished() for d in engine.open.values() if d.user_id == user.user_id)
    limit = settings.max_queued_tasks_per_user
    if unfinished + jobs * tasks_per_job > limit:
        raise BadRequest(
            f"this dataset has {jobs * tasks_per_job:,} tasks ({jobs:,} jobs of "
            f"{tasks_per_job}), and {user.name} has {unfinished:,} unfinished already: this "
            f"server holds at most {limit:,} unfinished tasks per user "
            "(max_queued_tasks_per_user); submit it when more have finished, or in parts")


def preview(engine: Engine, user: User, document: Any) -> dict[str, Any]:
    """What a submit of `document` by `user` would create, refused as that submit would be
    (an invalid config, a limit of the server), storing nothing: the dataset's shape, and the
    first job's tasks with their requirements and every expression evaluated that needs
    nothing known only where the job runs (the site's `$system` values, the dataset's id, the
    attempt, and so what `$choice` picks), which stay as written."""
    config = checked(document)
    check_limits(engine, user, config.jobs, len(config.tasks))
    tasks = []
    for spec in config.tasks:
        scope = {"steering": config.steering, "system": expressions.UNKNOWN,
                 "args": job_args(0, expressions.UNKNOWN, config.jobs, spec.name,
                                  expressions.UNKNOWN)}
        task = {"task": spec.name, "depends": [config.tasks[i].name for i in spec.depends],
                "requirements": spec.requirements.to_dict()}
        # The parts of a task that its pilot evaluates (pilot.runner), as check_sample_jobs
        # has evaluated them for job 0 already: none fails here.
        for part in ("env", "inputs", "outputs", "modules"):
            task[part] = _as_far_as_known(spec.raw[part], scope)
        tasks.append(task)
    return {"dry_run": True, "owner": user.name, "description": config.description,
            "priority": config.priority, "max_retries": config.max_retries,
            "debug": config.debug, "jobs": config.jobs, "tasks_per_job": len(config.tasks),
            "total_tasks": config.jobs * len(config.tasks),
            "task_names": [spec.name for spec in config.tasks], "first_job": tasks}


def _as_far_as_known(value: Any, scope: dict[str, Any]) -> Any:
    """`value` with each string evaluated in `scope`; in a string that needs a value not known
    yet, each call that needs none is evaluated and the others are left as written."""
    if isinstance(value, list):
        return [_as_far_as_known(item, scope) for item in value]
    if isinstance(value, dict):
        return {key: _as_far_as_known(item, scope) for key, item in value.items()}
    if not isinstance(value, str):
        return value
    try:
        return expressions.evaluate(value, **scope)
    except expressions.NotKnownYet:
        pass
    pieces = []
    for part in expressions.parse(value).parts:
        if isinstance(part, expressions.Text):
            pieces.append(part.value)
            continue
        try:
            # After a character of text, the call's value is written as the pilot writes it
            # inside a longer string (a number as JSON); the character is then dropped.
            pieces.append(expressions.evaluate("_" + part.text, **scope)[1:])
        except expressions.NotKnownYet:
            pieces.append(part.text)
    return "".join(pieces)


async def materialize_chunk(engine: Engine, dataset: DatasetState, jobs: int) -> int:
    """Create the next `jobs` jobs of `dataset` (fewer at its end); returns how many."""
    now = engine.clock()
    done = {"first": 0, "count": 0, "suspended": False}

    def plan():
        first = dataset.materialized
        count = min(jobs, dataset.jobs - first)
        # Memory takes the jobs in the states the rows get, whatever the status is by then.
        suspended = dataset.status == DatasetStatus.SUSPENDED
        done.update(first=first, count=count, suspended=suspended)
        if count <= 0:
            return lambda conn: None
        rows = dataset.add_jobs(first, count, suspended)
        return lambda conn: writes.add_jobs(conn, dataset.id, first, count, rows, now)

    def apply(_: None) -> None:
        if done["count"] > 0:
            dataset.commit_jobs(done["first"], done["count"], done["suspended"])

    await engine.db.planned(plan, after=apply)
    return done["count"]


async def materialize_loop(engine: Engine) -> None:
    """Create pending jobs of every dataset, a chunk of each in turn, forever. A suspended
    dataset's jobs wait: suspending stops the creation of a dataset submitted by mistake."""
    while True:
        pending = [d for d in engine.open.values()
                   if d.materialized < d.jobs and d.status != DatasetStatus.SUSPENDED]
        if not pending:
            engine.materializing.clear()
            await engine.materializing.wait()
            continue
        for dataset in pending:
            chunk = max(1, engine.settings.materialize_chunk // dataset.ntasks)
            try:
                await materialize_chunk(engine, dataset, chunk)
            except Exception:
                log.exception("creating jobs of dataset %s failed; will retry", dataset.id)
                await asyncio.sleep(1.0)
            await asyncio.sleep(0)  # let waiting requests run between chunks
