"""What a dataset's owner or an admin does on its page: the Actions section's forms, the POST
that carries each out through the same functions as the API (`actions`, `steering`,
`retiring`), and the notice the page shows after it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from .. import actions, retiring, steering
from ..access import Action
from ..errors import BadRequest, NotFound
from ..model import DatasetState, DatasetStatus
from .html import Markup, number, tag
from .page import View, href, page, redirect

routes = web.RouteTableDef()

DONE = {
    "suspend": "Suspended: {n} tasks are held and their running attempts were stopped.",
    "resume": "Resumed: {n} tasks were released.",
    "reset-failed": "Reset {n} failed tasks; they run again with their retries restored.",
    "reset-all": "Reset all {n} tasks; they run again from the start.",
    "priority": "The priority is now {priority}.",
    "add-jobs": "The dataset now has {n} jobs; the new ones are created in the background.",
    "abort": "Aborted: {n} tasks failed, running attempts were stopped, and jobs not yet "
             "created never will be; everything recorded stays.",
    "steering": "The steering change is the dataset's next config version, for its jobs from "
                "{n} on (those not created yet, and jobs added later).",
    "archive": "Archiving: its attempts and logs leave the database for an archive that this "
               "page still reads; this page says when it is done.",
}


def action_forms(view: View, dataset: DatasetState) -> Markup:
    """The Actions section of the dataset's page: a form for each action it can take now."""
    base = f"/datasets/{dataset.id}"
    status = dataset.status
    ended = status in (DatasetStatus.COMPLETE, DatasetStatus.FAILED) \
        and dataset.materialized == dataset.jobs
    delete = view.post_form(
        f"{base}/delete", tag("input", type="checkbox", id="confirm-delete", name="confirm",
                              value="yes", required=True),
        tag("label", "Remove it and everything recorded of it", for_="confirm-delete"),
        tag("button", "Delete", class_="danger"), class_="inline") if ended else None
    if dataset.id in view.engine.archived.info:
        return tag("div", tag("h2", "Actions"), tag("div", delete, class_="buttons"),
                   class_="actions", id="actions")
    buttons = []
    if status not in (DatasetStatus.SUSPENDED, DatasetStatus.COMPLETE, DatasetStatus.FAILED):
        buttons.append(view.post_form(f"{base}/suspend", tag("button", "Suspend")))
    if status == DatasetStatus.SUSPENDED or dataset.summary()["suspended"]:
        buttons.append(view.post_form(f"{base}/resume", tag("button", "Resume")))
    if status != DatasetStatus.SUSPENDED:
        if dataset.summary()["failed"]:
            buttons.append(view.post_form(f"{base}/reset-failed",
                                          tag("button", "Reset failed tasks")))
        buttons.append(view.post_form(f"{base}/reset-all",
                                      tag("button", "Reset all tasks", class_="danger")))
    buttons.append(view.post_form(
        f"{base}/add-jobs",
        tag("label", "Jobs to add", for_="add-jobs"),
        tag("input", type="number", id="add-jobs", name="jobs", min="1", step="1",
            required=True),
        tag("button", "Add"), class_="inline"))
    if status not in (DatasetStatus.COMPLETE, DatasetStatus.FAILED) \
            or dataset.materialized < dataset.jobs:
        buttons.append(view.post_form(f"{base}/abort", tag("button", "Abort", class_="danger")))
    buttons.append(view.post_form(
        f"{base}/priority",
        tag("label", "Priority", for_="priority"),
        tag("input", type="number", id="priority", name="priority", min="0.001", max="1000",
            step="any", value=number(dataset.priority).replace(",", ""), required=True),
        tag("button", "Set"), class_="inline"))
    names = sorted(dataset.versions[-1].steering)
    if names:
        buttons.append(view.post_form(
            f"{base}/steering",
            tag("label", "Steering value", for_="steering-name"),
            tag("select", (tag("option", name, value=name) for name in names),
                id="steering-name", name="name"),
            tag("label", "New value (JSON, or text)", for_="steering-value"),
            tag("input", type="text", id="steering-value", name="value", required=True),
            tag("button", "Change for jobs not yet created"), class_="inline"))
    if ended:
        buttons += [view.post_form(f"{base}/archive", tag("button", "Archive")), delete]
    return tag("div", tag("h2", "Actions"), tag("div", buttons, class_="buttons"),
               class_="actions", id="actions")


Act = Callable[[View, DatasetState], Awaitable[int]]


async def _suspend(view: View, dataset: DatasetState) -> int:
    return await actions.suspend(view.engine, dataset, view.principal.user)


async def _resume(view: View, dataset: DatasetState) -> int:
    return await actions.resume(view.engine, dataset, view.principal.user)


async def _reset_failed(view: View, dataset: DatasetState) -> int:
    return await actions.reset(view.engine, dataset, view.principal.user, "failed")


async def _reset_all(view: View, dataset: DatasetState) -> int:
    return await actions.reset(view.engine, dataset, view.principal.user, "all")


async def _priority(view: View, dataset: DatasetState) -> int:
    text = str(view.form.get("priority") or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"priority: expected a number above 0 and at most 1000, got "
                         f"{text!r}") from None
    await actions.set_priority(view.engine, dataset, view.principal.user, value)
    return 0


async def _add_jobs(view: View, dataset: DatasetState) -> int:
    text = str(view.form.get("jobs") or "").strip()
    if not text.isdigit():
        raise BadRequest(f"jobs: expected a whole number of jobs to add, got {text!r}")
    return await actions.add_jobs(view.engine, dataset, view.principal.user, int(text))


async def _abort(view: View, dataset: DatasetState) -> int:
    return await actions.abort(view.engine, dataset, view.principal.user)


async def _steering(view: View, dataset: DatasetState) -> int:
    name, text = str(view.form.get("name") or ""), str(view.form.get("value") or "")
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    version = await steering.change(view.engine, dataset, view.principal.user, {name: value})
    return version.first_job


async def _archive(view: View, dataset: DatasetState) -> int:
    retiring.begin_archive(view.engine, dataset, view.principal.user)
    return 0


async def _delete(view: View, dataset: DatasetState) -> int:
    if view.form.get("confirm") != "yes":
        raise BadRequest("Tick the box beside Delete to say you mean it: deleting removes the "
                         "dataset and everything recorded of it for good.")
    return (await retiring.delete_dataset(view.engine, dataset, view.principal.user)
            )["attempts"]


ACTIONS: dict[str, Act] = {"suspend": _suspend, "resume": _resume,
                           "reset-failed": _reset_failed, "reset-all": _reset_all,
                           "add-jobs": _add_jobs, "abort": _abort, "priority": _priority,
                           "steering": _steering, "archive": _archive, "delete": _delete}


@routes.post("/datasets/{dataset_id}/{action}")
@page
async def act(view: View) -> web.StreamResponse:
    dataset = view.dataset(view.request.match_info["dataset_id"])
    name = view.request.match_info["action"]
    action = ACTIONS.get(name)
    if action is None:
        raise NotFound(f"There is no action {name!r}; a dataset can be "
                       f"{', '.join(ACTIONS)}.")
    view.authorize(Action.CHANGE_DATASET, owner_id=dataset.user_id)
    changed = await action(view, dataset)
    if name == "delete":
        return redirect(href("/", deleted=dataset.id))
    return redirect(href(f"/datasets/{dataset.id}", done=name, changed=changed))
