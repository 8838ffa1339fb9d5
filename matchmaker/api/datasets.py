"""API of datasets, their jobs and tasks: submit, list, inspect, and steer them."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable
from typing import Any

from floe.config.states import JOB_STATES, TaskState

from .. import actions, records, retiring, steering, submission
from ..access import Action
from ..errors import BadRequest, NotFound
from ..model import DatasetState, DatasetStatus, recency
from ..storage import queries
from ..views import summary
from ..waiting import Explainer
from . import schemas
from .framework import Context, Param, Reply, route

DATASET_ID = Param("dataset_id", int, where="path")
TASK_ID = Param("task_id", int, where="path")
LIMIT = Param("limit", int, 100, "page size", minimum=1, maximum=1000)
def find(ctx: Context) -> DatasetState:
    dataset = ctx.engine.datasets.get(ctx.params["dataset_id"])
    if dataset is None:
        wanted = ctx.params["dataset_id"]
        gone = ctx.engine.deleted.get(wanted)
        raise NotFound(f"there is no dataset {wanted}" + (f": it was {gone}" if gone else ""))
    return dataset


def changeable(ctx: Context) -> DatasetState:
    dataset = find(ctx)
    ctx.authorize(Action.CHANGE_DATASET, owner_id=dataset.user_id)
    return dataset


@route("POST", "/api/v1/datasets", summary="Submit a dataset", tag="datasets",
       action=Action.SUBMIT, body=schemas.DATASET_CONFIG, check_body=False, status=201,
       response=schemas.DATASET,
       params=[Param("dry_run", bool, False, "check the config as a submit does, limits "
                     "included, and answer (200) what it would create, storing nothing")],
       answers={200: ("with `dry_run`: what the submit would create; nothing was stored",
                      schemas.DATASET_PREVIEW)},
       description="The body is a dataset config (docs/config.md). Jobs are created in the "
                   "background; the answer comes at once with the new dataset's summary.")
async def submit(ctx: Context) -> Any:
    if ctx.params["dry_run"]:
        return Reply(submission.preview(ctx.engine, ctx.principal.user, ctx.body))
    dataset = await submission.submit(ctx.engine, ctx.principal.user, ctx.body)
    return summary(ctx.engine, dataset)


OPEN, ENDED = "open", "ended"


@route("GET", "/api/v1/datasets", summary="List datasets", tag="datasets", action=Action.READ,
       response=schemas.DATASETS,
       params=[Param("owner", str, doc="only this user's datasets"),
               Param("status", str, choices=(*DatasetStatus.ALL, OPEN, ENDED),
                     doc="only datasets in this status; open: processing or suspended; "
                         "ended: complete or failed"),
               Param("limit", int, None, "only the latest this many: those whose status "
                     "changed last (submitted, ended, reset)", minimum=1, maximum=1000)],
       description="By id. `more`: how many more match than the `limit` let through (those "
                   "whose status changed before).")
async def list_datasets(ctx: Context) -> Any:
    engine = ctx.engine
    owner, status, limit = ctx.params["owner"], ctx.params["status"], ctx.params["limit"]
    user = engine.users_by_name.get(owner) if owner else None
    if owner and user is None:
        return {"datasets": [], "more": 0}
    source = engine.open.values() if status == OPEN else engine.datasets.values()
    matching = [d for d in source
                if (user is None or d.user_id == user.user_id)
                and (status in (None, OPEN) or d.status == status
                     or (status == ENDED and d.ended()))]
    shown = matching if limit is None else heapq.nlargest(limit, matching, key=recency)
    return {"datasets": [summary(engine, d) for d in sorted(shown, key=lambda d: d.id)],
            "more": len(matching) - len(shown)}


@route("GET", "/api/v1/datasets/{dataset_id}", summary="One dataset with its config",
       tag="datasets", action=Action.READ, params=[DATASET_ID], response=schemas.DATASET_DETAIL,
       description="`waiting` lists the dataset's ready tasks by task and requirements, with "
                   "how many and why they wait.")
async def get_dataset(ctx: Context) -> Any:
    dataset = find(ctx)
    data = summary(ctx.engine, dataset)
    data["waiting"] = Explainer(ctx.engine).summary(dataset)
    data["config"] = dataset.config.raw
    data["config_versions"] = steering.versions(ctx.engine, dataset)
    data["events"] = await queries.events(ctx.engine.db, dataset.id, 50)
    return data


MAX_PROGRESS_WAIT = 60


@route("GET", "/api/v1/datasets/{dataset_id}/progress", summary="A dataset's progress, answered "
       "when it changes", tag="datasets", action=Action.READ, response=schemas.PROGRESS,
       params=[DATASET_ID,
               Param("wait", float, 0, "seconds the request may wait for the answer",
                     minimum=0, maximum=MAX_PROGRESS_WAIT),
               Param("until", str, "change", "answer at the first change after `since` (or "
                     "after the request arrived, without `since`), or only once the dataset "
                     "has ended (`end`)", choices=("change", "end")),
               Param("since", str, doc="the `version` of an earlier answer")],
       description="A long poll: the answer comes when the dataset's status or task counts "
                   "change (`until=change`) or when it ends (`until=end`), or once `wait` "
                   "seconds (at most the server's `max_progress_wait`) have passed, with its "
                   "progress as it is then. An ended dataset is answered at once.")
async def progress(ctx: Context) -> Any:
    dataset = find(ctx)
    since, until = ctx.params["since"], ctx.params["until"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(ctx.params["wait"], ctx.engine.settings.max_progress_wait)
    while True:
        version = dataset.version()
        if dataset.status in (DatasetStatus.COMPLETE, DatasetStatus.FAILED):
            break
        if until == "change":
            if since is None:
                since = version
            elif version != since:
                break
        left = deadline - loop.time()
        if left <= 0:
            break
        await dataset.watch.next_change(left)
        if dataset.watch.closed:
            break
    return {"id": dataset.id, "status": dataset.status, "jobs": dataset.jobs,
            "jobs_created": dataset.materialized, "tasks": dataset.summary(),
            "version": dataset.version()}


@route("POST", "/api/v1/datasets/{dataset_id}/suspend", summary="Suspend a dataset (voids its "
       "running attempts)", tag="datasets", action=Action.CHANGE_DATASET, params=[DATASET_ID],
       errors=(400, 401, 403, 404, 409), response=schemas.CHANGED)
async def suspend(ctx: Context) -> Any:
    return await _changed(ctx, actions.suspend)


@route("POST", "/api/v1/datasets/{dataset_id}/resume", summary="Resume a suspended dataset",
       tag="datasets", action=Action.CHANGE_DATASET, params=[DATASET_ID],
       errors=(400, 401, 403, 404, 409), response=schemas.CHANGED)
async def resume(ctx: Context) -> Any:
    return await _changed(ctx, actions.resume)


@route("POST", "/api/v1/datasets/{dataset_id}/reset", summary="Reset failed tasks, or all tasks",
       tag="datasets", action=Action.CHANGE_DATASET, body=schemas.RESET, params=[DATASET_ID],
       errors=(400, 401, 403, 404, 409), response=schemas.CHANGED,
       description="Of the whole dataset, or only of one `job`, or only one `task` (its id; "
                   "refused with 409 while a task it depends on has failed, which it would "
                   "wait for for ever: reset its `job` instead).")
async def reset(ctx: Context) -> Any:
    dataset = changeable(ctx)
    changed = await actions.reset(ctx.engine, dataset, ctx.principal.user, ctx.body["scope"],
                                  job=ctx.body.get("job"), task_id=ctx.body.get("task"))
    return {"changed": changed, "dataset": summary(ctx.engine, dataset)}


@route("POST", "/api/v1/datasets/{dataset_id}/jobs", summary="Add jobs to a dataset",
       tag="datasets", action=Action.CHANGE_DATASET, body=schemas.ADD_JOBS, params=[DATASET_ID],
       errors=(400, 401, 403, 404, 409), response=schemas.JOBS_ADDED,
       description="The new jobs run the same tasks with the next job indices, and are created "
                   "in the background as a submit's are; a dataset that had ended runs again. "
                   "Refused past the server's limits, and for a dataset submitted before "
                   "datasets kept room to grow whose task ids another dataset follows.")
async def add_jobs(ctx: Context) -> Any:
    dataset = changeable(ctx)
    jobs = await actions.add_jobs(ctx.engine, dataset, ctx.principal.user, ctx.body["jobs"])
    return {"jobs": jobs, "dataset": summary(ctx.engine, dataset)}


@route("POST", "/api/v1/datasets/{dataset_id}/abort", summary="Abort a dataset",
       tag="datasets", action=Action.CHANGE_DATASET, params=[DATASET_ID],
       errors=(400, 401, 403, 404, 409), response=schemas.CHANGED,
       description="Its jobs not yet created never will be; every task that has not ended "
                   "fails (`changed` of them), running attempts are voided and their pilots "
                   "told to kill them at their next heartbeat; every attempt and log recorded "
                   "stays. A reset brings failed tasks back; adding jobs, new jobs.")
async def abort(ctx: Context) -> Any:
    return await _changed(ctx, actions.abort)


@route("POST", "/api/v1/datasets/{dataset_id}/steering", summary="Change steering values for "
       "the jobs not yet created", tag="datasets", action=Action.CHANGE_DATASET,
       body=schemas.STEERING_CHANGE, params=[DATASET_ID], errors=(400, 401, 403, 404, 409),
       response=schemas.STEERED,
       description="Makes the dataset's next config version, for the jobs not yet created "
                   "(`first_job` on: those the server has still to create, and jobs added "
                   "later); jobs already created keep theirs, and each attempt records the "
                   "version it ran (`config_version`). The changed config is checked as a "
                   "submit's is; requirements stay as the submit resolved them.")
async def change_steering(ctx: Context) -> Any:
    dataset = changeable(ctx)
    version = await steering.change(ctx.engine, dataset, ctx.principal.user,
                                    ctx.body["steering"])
    return {**version.to_dict(), "jobs_using_it": max(dataset.jobs - version.first_job, 0),
            "dataset": summary(ctx.engine, dataset)}


@route("POST", "/api/v1/datasets/{dataset_id}/archive", summary="Archive an ended dataset",
       tag="datasets", action=Action.CHANGE_DATASET, params=[DATASET_ID], status=202,
       errors=(400, 401, 403, 404, 409), response=schemas.DATASET,
       description="Its attempts and full logs leave the database for a compressed archive "
                   "beside it, which the API, the pages and `floe` still read; the dataset, its "
                   "tasks, statistics and history stay. Only an ended dataset (complete, or "
                   "failed: abort one first); an archived dataset cannot be reset or grown. "
                   "The archive is made in the background (a million attempts take minutes): "
                   "the dataset says `archiving` meanwhile, then `archived` (where, how many "
                   "attempts, bytes) or `archive_error`.")
async def archive(ctx: Context) -> Any:
    dataset = changeable(ctx)
    retiring.begin_archive(ctx.engine, dataset, ctx.principal.user)
    return Reply(summary(ctx.engine, dataset), 202)


@route("DELETE", "/api/v1/datasets/{dataset_id}", summary="Delete an ended dataset",
       tag="datasets", action=Action.CHANGE_DATASET, params=[DATASET_ID],
       errors=(400, 401, 403, 404, 409), response=schemas.DELETED,
       description="Removes the dataset and everything recorded of it (attempts, logs, tasks, "
                   "statistics, its archive); its history keeps who deleted it, and its ids are "
                   "never given out again. Only an ended dataset (abort one first). Answered "
                   "once decided; the rows are removed in the background.")
async def delete(ctx: Context) -> Any:
    dataset = changeable(ctx)
    return {"deleted": await retiring.delete_dataset(ctx.engine, dataset, ctx.principal.user)}


async def _changed(ctx: Context, act: Callable[..., Awaitable[int]]) -> dict[str, Any]:
    """Do `act` to the dataset as the caller: how many tasks it changed, and the dataset."""
    dataset = changeable(ctx)
    changed = await act(ctx.engine, dataset, ctx.principal.user)
    return {"changed": changed, "dataset": summary(ctx.engine, dataset)}


@route("PUT", "/api/v1/datasets/{dataset_id}/priority", summary="Change a dataset's priority",
       tag="datasets", action=Action.CHANGE_DATASET, body=schemas.PRIORITY, params=[DATASET_ID],
       response=schemas.DATASET)
async def priority(ctx: Context) -> Any:
    dataset = changeable(ctx)
    await actions.set_priority(ctx.engine, dataset, ctx.principal.user,
                               float(ctx.body["priority"]))
    return summary(ctx.engine, dataset)


@route("GET", "/api/v1/datasets/{dataset_id}/jobs", summary="A page of a dataset's jobs",
       tag="datasets", action=Action.READ, response=schemas.JOBS,
       params=[DATASET_ID, Param("state", str, choices=JOB_STATES),
               Param("after", int, -1, "show jobs after this index", minimum=-1), LIMIT])
async def jobs(ctx: Context) -> Any:
    dataset = find(ctx)
    rows = await queries.jobs(ctx.engine.db, dataset.id, ctx.params["state"],
                              ctx.params["after"], ctx.params["limit"])
    return {"jobs": rows, "next": rows[-1]["job"] if len(rows) == ctx.params["limit"] else None}


@route("GET", "/api/v1/datasets/{dataset_id}/tasks", summary="A page of a dataset's tasks",
       tag="datasets", action=Action.READ, response=schemas.TASKS,
       params=[DATASET_ID, Param("state", str, choices=tuple(s.value for s in TaskState)),
               Param("task", str, doc="task name"), Param("job", int, minimum=0),
               Param("after", int, 0, "show tasks with ids above this", minimum=0), LIMIT],
       description="Each task that is not running and has not ended has `why`: a sentence "
                   "saying what it waits for (a pilot that fits it, and whether any site's "
                   "pilot shapes do; its turn in fair share; its dependencies; a suspended "
                   "dataset), with its last `reason` (a retry's) after it; null for the "
                   "others.")
async def tasks(ctx: Context) -> Any:
    dataset = find(ctx)
    task_index = None
    if ctx.params["task"] is not None:
        names = [t.name for t in dataset.config.tasks]
        if ctx.params["task"] not in names:
            raise BadRequest(f"task: dataset {dataset.id} has no task named "
                             f"{ctx.params['task']!r} (it has {', '.join(names)})")
        task_index = names.index(ctx.params["task"])
    rows = await queries.tasks(ctx.engine.db, dataset.id, state=ctx.params["state"],
                               task_index=task_index, job=ctx.params["job"],
                               after=ctx.params["after"], limit=ctx.params["limit"])
    explainer = Explainer(ctx.engine)
    for row in rows:
        row["task"] = dataset.config.tasks[row["task_index"]].name
        row["why"] = explainer.why(dataset, row["task_id"], row["reason"])
    return {"tasks": rows,
            "next": rows[-1]["task_id"] if len(rows) == ctx.params["limit"] else None}


@route("GET", "/api/v1/datasets/{dataset_id}/statistics", summary="Aggregates of user "
       "statistics and resource use: count, sum, mean, standard deviation", tag="datasets",
       action=Action.READ, params=[DATASET_ID], response=schemas.STATISTICS)
async def statistics(ctx: Context) -> Any:
    dataset = find(ctx)
    rows = await queries.statistics(ctx.engine.db, dataset.id)
    for row in rows:
        index = row.pop("task_index")
        row["task"] = dataset.config.tasks[index].name if index is not None else None
    return {"statistics": rows}


@route("GET", "/api/v1/datasets/{dataset_id}/events", summary="Who did what to a dataset, "
       "newest first", tag="datasets", action=Action.READ,
       params=[DATASET_ID, LIMIT], response=schemas.EVENTS)
async def events(ctx: Context) -> Any:
    dataset = find(ctx)
    return {"events": await queries.events(ctx.engine.db, dataset.id, ctx.params["limit"])}


@route("GET", "/api/v1/tasks/{task_id}", summary="One task with every attempt", tag="datasets",
       action=Action.READ, params=[TASK_ID], response=schemas.TASK,
       description="`why` says what the task waits for, as in the tasks list.")
async def task(ctx: Context) -> Any:
    found = await queries.task(ctx.engine.db, ctx.params["task_id"])
    if found is None:
        raise NotFound(f"there is no task {ctx.params['task_id']}: a task's id is unique across "
                       "datasets (`floe tasks DATASET` lists a dataset's)")
    dataset = ctx.engine.datasets.get(found["dataset"])
    if dataset is None:
        raise NotFound(f"there is no task {ctx.params['task_id']}: its dataset was deleted")
    found["task"] = dataset.config.tasks[found["task_index"]].name
    found["requirements"] = dataset.requirements(found["task_id"]).to_dict()
    found["why"] = Explainer(ctx.engine).why(dataset, found["task_id"], found["reason"])
    found["attempts"] = await records.attempts_of_task(ctx.engine.db, ctx.engine.archived,
                                                       dataset.id, found["task_id"])
    return Reply(found)
