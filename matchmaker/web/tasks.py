"""One task's page, every attempt with where and how it ran and the tails of its logs, and the
full log text of an attempt."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import records
from ..bounds import record_id
from ..errors import NotFound
from ..storage import queries
from ..waiting import Explainer
from .datasets import resource_value, state_badge
from .html import Markup, duration, join, link, number, size, table, tag, when
from .page import SECURITY_HEADERS, View, href, page

routes = web.RouteTableDef()

# (what is shown, what the attempt asked for, what it used of it)
USED = (("CPUs / CPU time", "cpus", "cpu_time"), ("Memory / peak", "memory", "peak_memory"),
        ("Disk / peak", "disk", "peak_disk"), ("GPUs / GPU time", "gpus", "gpu_time"),
        ("GPU memory / peak", "gpu_memory", "peak_gpu_memory"),
        ("Walltime / wall time", "walltime", "wall_time"))
TAIL_LINES = 60


def _id(view: View, name: str, what: str) -> int:
    text = view.request.match_info[name]
    number = record_id(text)
    if number is None:
        raise NotFound(f"There is no {what} {text[:40]!r}: {what} ids are whole numbers.")
    return number


@routes.get("/tasks/{task_id}")
@page
async def task_page(view: View) -> web.StreamResponse:
    task_id = _id(view, "task_id", "task")
    found = await queries.task(view.engine.db, task_id)
    dataset = view.engine.datasets.get(found["dataset"]) if found else None
    if found is None or dataset is None:
        raise NotFound(f"There is no task {task_id}. Tasks are listed on their dataset's page.")
    name = dataset.config.tasks[found["task_index"]].name
    req = dataset.requirements(task_id)
    attempts = await records.attempts_of_task(view.engine.db, view.engine.archived, dataset.id,
                                              task_id)
    cards = [await _attempt(view, a) for a in reversed(attempts)]
    facts = [("Dataset", link(f"/datasets/{dataset.id}", f"#{dataset.id} "
                              f"{dataset.config.description}")),
             ("Job", link(href(f"/datasets/{dataset.id}", job=found["job"]) + "#tasks",
                          found["job"])),
             ("Task", name), ("State", state_badge(found["state"])),
             ("Failures", found["failures"]), ("Lost", found["lost"]),
             ("Needs", f"{req.cpus} CPU, {size(req.memory)} memory, {size(req.disk)} disk, "
                       f"{req.gpus} GPU, {duration(req.walltime)} walltime"
                       + (" (grown after an overuse)" if found["grown_requirements"] else "")),
             ("Updated", when(found["updated"])), ("Reason", found["reason"] or "–")]
    why = Explainer(view.engine).why(dataset, task_id)
    if why:
        facts.append(("Why it waits", why))
    title = f"Task {task_id}"
    return view.render(
        title,
        tag("h1", title, tag("span", f"{name} of job {found['job']}", class_="sub")),
        tag("section", tag("dl", ((tag("dt", k), tag("dd", v)) for k, v in facts),
                           class_="facts")),
        tag("section", tag("h2", f"Attempts ({len(attempts)})"),
            join(cards) if cards else tag("p", "Not dispatched yet.", class_="empty")))


async def _attempt(view: View, summary: dict[str, Any]) -> Markup:
    attempt = await records.attempt(view.engine.db, view.engine.archived,
                                    summary["attempt_id"])
    attempt_id = attempt["attempt_id"]
    ran = (attempt["ended"] or view.now) - attempt["started"]
    where = [("Site", link(href("/pilots", site=attempt["site"]), attempt["site"])),
             ("Host", attempt["host"]),
             ("Pilot", link(href("/pilots", site=attempt["site"], state="any")
                            + f"#pilot-{attempt['pilot_id']}", attempt["pilot_id"])
              if attempt["pilot_id"] else "–"),
             ("Batch job", attempt["batch_id"] or "–"),
             ("Started", when(attempt["started"])), ("Ended", when(attempt["ended"])),
             ("Ran for", duration(ran)),
             ("Exit code", "–" if attempt["exit_code"] is None else attempt["exit_code"]),
             ("Error class", tag("code", attempt["error_class"])
              if attempt["error_class"] else "–"),
             ("Error", attempt["error_message"] or "–")]
    if attempt["warnings"]:
        where.append(("Left out", tag("ul", *(tag("li", w) for w in attempt["warnings"]))))
    requested, used = attempt["requested"], attempt["used"]
    resources = table(
        ["Resource", "Requested", "Used"],
        ([label, resource_value(ask, requested.get(ask)), resource_value(use, used.get(use))]
         for label, ask, use in USED), numeric=(1, 2))
    statistics = table(["Statistic", "Value"],
                       ([k, number(v)] for k, v in sorted((attempt["statistics"] or {}).items())),
                       empty="No statistics reported.", numeric=(1,))
    logs = []
    for stream in ("stdout", "stderr"):
        lines = (attempt[f"{stream}_tail"] or "").splitlines()
        logs.append(tag("div",
                        tag("h4", f"{stream} (last {TAIL_LINES} lines) " if len(lines) >
                            TAIL_LINES else f"{stream} ",
                            link(f"/attempts/{attempt_id}/logs/{stream}", f"full {stream}",
                                 class_="full-log")),
                        tag("div", tag("pre", "\n".join(lines[-TAIL_LINES:])), class_="log")
                        if lines
                        else tag("p", "(empty)", class_="empty"), class_="tail"))
    return tag("article",
               tag("h3", f"Attempt {attempt_id} ", state_badge(attempt["state"])),
               tag("div", tag("dl", ((tag("dt", k), tag("dd", v)) for k, v in where),
                              class_="facts"),
                   tag("div", resources, statistics), class_="columns"),
               tag("div", logs, class_="logs"),
               class_="attempt", id=f"attempt-{attempt_id}")


@routes.get("/attempts/{attempt_id}/logs/{stream}")
@page
async def log_text(view: View) -> web.StreamResponse:
    attempt_id = _id(view, "attempt_id", "attempt")
    stream = view.request.match_info["stream"]
    if stream not in ("stdout", "stderr"):
        raise NotFound(f"An attempt has two logs, stdout and stderr; there is no {stream!r}.")
    found = await records.log_text(view.engine.db, view.engine.archived, view.engine.logs,
                                   attempt_id, stream, view.engine.settings.tail_bytes)
    if found is None:
        raise NotFound(f"There is no attempt {attempt_id}.")
    text, complete = found
    if not complete:
        text = (f"[the pilot did not upload the whole {stream} of attempt {attempt_id}; this "
                f"is its tail]\n{text}")
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={**SECURITY_HEADERS, "X-Floe-Log-Complete":
                                 "1" if complete else "0"})
