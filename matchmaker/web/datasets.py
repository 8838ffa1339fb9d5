"""The overview of every dataset, and one dataset's page (its actions: `dataset_actions`). A
dataset's page opens with its state, its progress over time and when it would be done,
then what went wrong (grouped by what stderr said, by site and by host) and how long its tasks
ran and how much memory they used against what they asked for; its tables (tasks, statistics,
jobs, config, history) follow, paged."""

from __future__ import annotations

import heapq
import json
import time
from typing import Any

from aiohttp import web

from floe.config.states import JOB_STATES, TaskState

from .. import steering
from ..api.schemas import RESOURCES
from ..api.validation import conforming
from ..bounds import record_id, whole
from ..errors import BadRequest
from ..model import DatasetState, DatasetStatus, recency
from ..storage import queries, reports
from ..views import summary
from ..waiting import Explainer
from . import charts, history, outcomes
from .dataset_actions import DONE, action_forms
from .history import HISTORY
from .html import Child, Markup, ago, duration, join, link, number, percent, size, table, tag, when
from .page import View, href, page

routes = web.RouteTableDef()

PAGE = 50
TASK_STATES = tuple(s.value for s in TaskState)


def state_badge(state: str) -> Markup:
    return tag("span", state, class_=f"badge s-{state}")


def owner_name(view: View, dataset: DatasetState) -> str:
    owner = view.engine.users.get(dataset.user_id)
    return owner.name if owner else f"user {dataset.user_id}"


# -- the overview -----------------------------------------------------------------------------

@routes.get("/")
@page
async def overview(view: View) -> web.StreamResponse:
    engine, now = view.engine, view.now
    rates = await reports.completed_since(engine.db, now - 3600)
    hours = history.by_state(await view.request.app[HISTORY].last_day(engine.db, now))
    skip = _whole(view.query("ended_skip") or "0", "ended_skip", None)
    ended = [d for d in engine.datasets.values() if d.id not in engine.open]
    shown = heapq.nlargest(skip + PAGE, ended, key=recency)[skip:]
    rows = [_overview_row(dataset, rates, now, view)
            for dataset in [*sorted(engine.open.values(), key=lambda d: -d.id), *shown]]
    paging = tag(
        "p", f"{len(ended):,} datasets have ended: they are listed {PAGE} at a time after "
        "those that have not, the latest to end first. ",
        link("/", "Latest ended") if skip else None, " ",
        link(href("/", ended_skip=skip + PAGE), "Older ended", rel="next")
        if len(ended) > skip + PAGE else None, class_="paging") \
        if len(ended) > PAGE or skip else None
    sites = []
    for site in sorted(engine.sites.values(), key=lambda s: s.name):
        measured = [conforming(p.resources, RESOURCES) for p in engine.pilots.values()
                    if p.site is site]
        pilots = [p for p in engine.pilots.values() if p.site is site]
        sites.append([
            link(href("/pilots", site=site.name), site.name, class_="nowrap"), len(pilots),
            sum(1 for p in pilots if p.attempts),
            sum(m.get("cpus", 0) for m in measured),
            size(sum(m.get("memory", 0) for m in measured)),
            sum(len(m.get("gpus", ())) for m in measured),
            sum(len(p.attempts) for p in pilots)])
    deleted = record_id(view.query("deleted") or "")
    return view.render(
        "Overview",
        tag("h1", "Overview"),
        tag("p", f"Dataset {deleted} was deleted, with everything recorded of it.",
            class_="notice", role="status") if deleted is not None else None,
        tag("section",
            tag("h2", "Datasets"), charts.legend(),
            table(["", "Description", "Status", "Progress", "Owner", "Priority", "Age",
                   "Rate"], rows, empty="No datasets yet: submit one with floe submit.",
                  numeric=(5, 7), class_="datasets"),
            paging, tag("p", "Rate: tasks completed in the last hour.", class_="hint")),
        tag("section",
            tag("h2", "Running pilots"),
            table(["Site", "Pilots", "Busy", "CPUs", "Memory", "GPUs", "Attempts"], sites,
                  empty="No sites yet: an admin adds one with floe site add.",
                  numeric=range(1, 7))),
        tag("section",
            tag("h2", "Attempts ended per hour (UTC), all datasets"),
            charts.per_hour(hours, now)))


def _overview_row(dataset: DatasetState, rates: dict[int, int], now: float,
                  view: View) -> list[Child]:
    counts = dataset.summary()
    total = dataset.total_tasks
    return [
        link(f"/datasets/{dataset.id}", f"#{dataset.id}"),
        tag("span", dataset.config.description or "(no description)", class_="desc"),
        state_badge(dataset.status),
        join([charts.progress(counts),
              tag("small", f"{counts['complete']:,} of {total:,} complete"
                  + (f", {counts['failed']:,} failed" if counts["failed"] else ""))]),
        owner_name(view, dataset), number(dataset.priority),
        ago(now - dataset.dataset.created), f"{rates.get(dataset.id, 0):,}/h"]


# -- one dataset ------------------------------------------------------------------------------

@routes.get("/datasets/{dataset_id}")
@page
async def dataset_page(view: View) -> web.StreamResponse:
    dataset = view.dataset(view.request.match_info["dataset_id"])
    engine, now = view.engine, view.now
    info = summary(engine, dataset)
    counts = info["tasks"]
    done = DONE.get(view.query("done"))
    notice = done.format(n=view.query("changed") or "0", priority=number(dataset.priority)) \
        if done else None
    facts = [("Owner", owner_name(view, dataset)), ("Status", state_badge(dataset.status)),
             ("Priority", number(dataset.priority)),
             ("Jobs", f"{dataset.jobs:,} ({dataset.materialized:,} created)"),
             ("Tasks per job", ", ".join(info["task_names"])),
             ("Submitted", join([when(dataset.dataset.created),
                                 f" ({ago(now - dataset.dataset.created)} ago)"])),
             ("Retries allowed per task", dataset.config.max_retries),
             ("Debug mode", "on" if dataset.config.debug else "off")]
    if len(dataset.versions) > 1:
        facts.append(("Config versions", join(
            tag("div", f"{v['version']}: from job {v['first_job']:,}" + (
                ", " + ", ".join(f"{k}={json.dumps(x)}" for k, x in v["changed"].items())
                if v["changed"] else " (as submitted)") + (f", by {v['by']}" if v["by"] and
                                                           v["version"] > 1 else ""))
            for v in steering.versions(engine, dataset))))
    if info["archived"]:
        archived = info["archived"]
        facts.append(("Archived", join([when(archived["time"]), f": {archived['attempts']:,} "
                                        f"attempts in {archived['path']} "
                                        f"({size(archived['bytes'])})"])))
    elif info["archiving"]:
        facts.append(("Archive", "being made: its attempts are read from the database until "
                                 "it is done"))
    elif info["archive_error"]:
        facts.append(("Archive", f"failed: {info['archive_error']}"))
    state_rows = [[state_badge(s), f"{counts[s]:,}", percent(counts[s], dataset.total_tasks)]
                  for s in TASK_STATES]
    # An archived dataset's attempts are in its zip: its charts are not drawn from there.
    rows = [] if info["archived"] else await reports.recent_attempts(engine.db, dataset.id)
    title = f"Dataset {dataset.id}"
    return view.render(
        title,
        tag("h1", title, tag("span", dataset.config.description, class_="sub")),
        tag("p", notice, class_="notice", role="status") if notice else None,
        tag("section",
            _headline(view, dataset, counts, rows),
            charts.progress(counts), charts.legend(),
            tag("div", _over_time(view, dataset, counts, rows, info["archived"]),
                tag("div", tag("dl", ((tag("dt", k), tag("dd", v)) for k, v in facts),
                               class_="facts"),
                    table(["State", "Tasks", "Share"], state_rows, numeric=(1, 2))),
                class_="columns"),
            action_forms(view, dataset) if view.may_change(dataset) else None,
            class_="summary"),
        _waiting(view, dataset),
        _errors(dataset, rows, info["archived"]),
        _resources(dataset, rows, info["archived"]),
        await _tasks(view, dataset),
        await _statistics(view, dataset),
        await _jobs(view, dataset),
        _config(dataset),
        await _events(view, dataset))


# -- what the latest attempts say -------------------------------------------------------------

def _ended(dataset: DatasetState) -> bool:
    return dataset.status in (DatasetStatus.COMPLETE, DatasetStatus.FAILED) \
        and dataset.materialized == dataset.jobs


def _remaining(counts: dict[str, int]) -> int:
    return sum(counts[s] for s in ("waiting", "ready", "processing", "suspended"))


def _estimate(view: View, dataset: DatasetState, counts: dict[str, int],
              rows: list[dict[str, Any]]) -> outcomes.Estimate:
    return outcomes.estimate(outcomes.ends(rows)["complete"], _remaining(counts), view.now,
                             dataset.dataset.created)


def _headline(view: View, dataset: DatasetState, counts: dict[str, int],
              rows: list[dict[str, Any]]) -> Markup:
    """The state, the share done, and when the rest would be done."""
    total = dataset.total_tasks
    complete = counts["complete"]
    done = f"{complete:,} of {total:,} tasks complete ({percent(complete, total)})"
    if counts["failed"]:
        done += f", {counts['failed']:,} failed"
    if _ended(dataset):
        last = max((r["ended"] for r in rows if r["ended"] is not None), default=None)
        finish: Child = join(["Ended", [" ", when(last)] if last else None, "."])
    elif dataset.status == DatasetStatus.SUSPENDED:
        finish = "No estimate: the dataset is suspended."
    elif not _remaining(counts):
        finish = "Nothing is left to run."
    else:
        guess = _estimate(view, dataset, counts, rows)
        finish = f"No estimate: {guess.why}." if guess.seconds is None else join([
            f"About {duration(guess.seconds)} to go (done around ",
            when(view.now + guess.seconds), f" UTC), at {number(guess.per_hour)} tasks an "
            f"hour, the rate of the last {duration(guess.window)}."])
    return tag("div", state_badge(dataset.status), tag("strong", done),
               tag("span", finish, class_="eta"), class_="headline")


def _archived_note(archived: dict[str, Any]) -> Markup:
    return tag("p", f"Its {archived['attempts']:,} attempts are archived in {archived['path']}, "
                    "where this page does not read them for its charts; each task's page reads "
                    "its attempts from there.", class_="hint archived")


def _from_rows(rows: list[dict[str, Any]]) -> str:
    """Which attempts a chart is drawn from."""
    if len(rows) >= reports.RECENT_ATTEMPTS:
        return (f"From the dataset's latest {len(rows):,} attempts, since "
                f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(rows[-1]['started']))} UTC; "
                "older ones are left out.")
    return f"From all {len(rows):,} attempts of the dataset."


def _over_time(view: View, dataset: DatasetState, counts: dict[str, int],
               rows: list[dict[str, Any]], archived: dict[str, Any] | None) -> Markup:
    heading = tag("h2", "Progress over time")
    if archived:
        return tag("div", heading, _archived_note(archived), id="progress")
    ended = outcomes.ends(rows)
    if not ended["complete"] and not ended["failed"]:
        return tag("div", heading, tag("p", "No attempt has ended yet.", class_="empty"),
                   id="progress")
    now = view.now
    start = dataset.dataset.created if len(rows) < reports.RECENT_ATTEMPTS \
        else rows[-1]["started"]
    if _ended(dataset):
        last = max(ended["complete"][-1:] + ended["failed"][-1:])
        chart = charts.over_time(ended, start, last + (last - start) / 50, dataset.total_tasks)
    else:
        guess = _estimate(view, dataset, counts, rows)
        finish, end = None, now
        if guess.seconds is not None and dataset.status != DatasetStatus.SUSPENDED:
            finish = (now + guess.seconds, len(ended["complete"]) + _remaining(counts))
            end = now + min(guess.seconds, (now - start) / 2)
        chart = charts.over_time(ended, start, end, dataset.total_tasks, now, finish)
    return tag("div", heading, chart, tag("p", _from_rows(rows), class_="hint"), id="progress")


def _errors(dataset: DatasetState, rows: list[dict[str, Any]],
            archived: dict[str, Any] | None) -> Markup:
    heading = tag("h2", "Errors")
    if archived:
        return tag("section", heading, _archived_note(archived), id="errors")
    groups, found = outcomes.error_groups(rows)
    listing = table(
        ["What it said", "Error class", "Attempts", "Tasks", "Hosts", "Example"],
        ([join([tag("code", g.said, class_="said"),
                tag("small", "e.g. ", g.example) if g.example != g.said else None]),
          tag("code", g.error_class), f"{g.count:,}", f"{len(g.tasks):,}", f"{len(g.hosts):,}",
          link(f"/tasks/{g.task_id}#attempt-{g.attempt_id}", f"attempt {g.attempt_id}",
               class_="nowrap")] for g in groups),
        empty="No attempt of this dataset has failed.", numeric=(2, 3, 4), class_="cards errors")
    more = f" The {len(groups)} most common of {found} are shown." if found > len(groups) else ""
    sites = outcomes.failures_by(rows, lambda r: r["site"])
    hosts = outcomes.failures_by(rows, lambda r: r["host"])
    failing = [h for h in hosts if h.failed]
    shown = failing[:10]
    note = _other_hosts(len(failing) - len(shown), len(hosts) - len(failing))
    return tag(
        "section", heading, listing,
        tag("p", "Grouped by the last line that stderr said (the error message where it said "
                 "nothing), with numbers, paths and hex values written as <n>, <path> and "
                 f"<hex>. {_from_rows(rows)}{more}", class_="hint") if groups else None,
        tag("div",
            tag("div", tag("h3", "Failures by site"), _places("Site", sites)),
            tag("div", tag("h3", "Failures by host"), _places("Host", shown, "No host has "
                                                             "had a failure."),
                tag("p", note, class_="hint") if note else None),
            class_="columns places"),
        id="errors")


def _other_hosts(failing: int, fine: int) -> str | None:
    """What the hosts table leaves out: hosts with fewer failures, and hosts with none."""
    said = [f"{failing:,} more {'host' if failing == 1 else 'hosts'} with fewer failures"
            if failing else "",
            f"{fine:,} {'host' if fine == 1 else 'hosts'} with none" if fine else ""]
    return "Not shown: " + " and ".join(s for s in said if s) + "." if any(said) else None


def _places(what: str, places: list[outcomes.Place], empty: str = "No attempt has ended yet."
            ) -> Markup:
    return table(
        [what, "Ended", "Failed", "Share failed"],
        ([tag("span", p.name, class_="nowrap"), f"{p.ended:,}", f"{p.failed:,}",
          join([charts.fraction(p.failed / p.ended if p.ended else 0.0),
                percent(p.failed, p.ended)])] for p in places),
        empty=empty, numeric=(1, 2, 3))


def _resources(dataset: DatasetState, rows: list[dict[str, Any]],
               archived: dict[str, Any] | None) -> Markup:
    heading = tag("h2", "Runtime and memory per task")
    if archived:
        return tag("section", heading, _archived_note(archived), id="resources")

    def task_index(task_id: int) -> int:
        return dataset.locate(task_id)[1]
    runtimes = outcomes.spread(rows, task_index, outcomes.runtime)
    memory = outcomes.spread(rows, task_index, outcomes.peak_memory)
    if not runtimes and not memory:
        return tag("section", heading, tag("p", "No attempt has ended yet.", class_="empty"),
                   id="resources")
    parts: list[Child] = [heading]
    for index, spec in enumerate(dataset.config.tasks):
        req = spec.requirements
        figures = [_figure("Runtime", runtimes.get(index), req.walltime, "seconds", spec.name),
                   _figure("Peak memory", memory.get(index), req.memory, "bytes", spec.name)]
        parts.append(tag("h3", spec.name))
        parts.append(tag("div", figures, class_="columns"))
    parts.append(tag("p", "Attempts that completed (green) and failed (red, stacked above); the "
                          "dashed line is what the task asked for. " + _from_rows(rows),
                     class_="hint"))
    return tag("section", parts, id="resources")


def _figure(what: str, values: dict[str, list[float]] | None, requested: float, unit: str,
            task: str) -> Markup:
    fmt = size if unit == "bytes" else duration
    if not values:
        return tag("figure", tag("figcaption", what),
                   tag("p", f"No attempt of {task} has measured it yet.", class_="empty"))
    every = sorted(v for found in values.values() for v in found)
    largest = every[-1]
    summary = (f"{len(every):,} attempts; median {fmt(every[len(every) // 2])}, 95% at most "
               f"{fmt(every[min(len(every) - 1, int(0.95 * len(every)))])}, largest "
               f"{fmt(largest)}: {percent(largest, requested)} of the {fmt(requested)} asked")
    return tag("figure", tag("figcaption", what),
               charts.histogram(values, requested, unit, f"{what.lower()} of {task}"),
               tag("p", summary, class_="hint"))


def _waiting(view: View, dataset: DatasetState) -> Markup | None:
    """Why the dataset's ready tasks wait, by task and requirements (none: no section)."""
    kinds = Explainer(view.engine).summary(dataset)
    if not kinds:
        return None
    return tag("section", tag("h2", "Why ready tasks wait"), table(
        ["Task", "Ready", "Why"],
        ([k["task"], f"{k['tasks']:,}", tag("span", k["why"], class_="reason")] for k in kinds),
        numeric=(1,), class_="cards waiting"), id="waiting")


async def _tasks(view: View, dataset: DatasetState) -> Markup:
    names = [t.name for t in dataset.config.tasks]
    state = view.query("state") or None
    name = view.query("task") or None
    job_text = view.query("job")
    after_text = view.query("after") or "0"
    if state and state not in TASK_STATES:
        raise BadRequest(f"state: {state!r} is not a task state; use one of "
                         f"{', '.join(TASK_STATES)}")
    if name and name not in names:
        raise BadRequest(f"task: dataset {dataset.id} has no task named {name!r} (it has "
                         f"{', '.join(names)})")
    job = _whole(job_text, "job", dataset.jobs - 1) if job_text else None
    after = _whole(after_text, "after", None)
    rows = await queries.tasks(view.engine.db, dataset.id, state=state,
                               task_index=names.index(name) if name else None, job=job,
                               after=after, limit=PAGE)
    filters = tag(
        "form",
        _select("state", "State", TASK_STATES, state),
        _select("task", "Task", names, name),
        tag("label", "Job", tag("input", type="number", name="job", min=0,
                                max=max(dataset.jobs - 1, 0), value=job_text or None)),
        tag("button", "Filter"),
        link(f"/datasets/{dataset.id}#tasks", "Clear") if state or name or job_text else None,
        method="get", action=f"/datasets/{dataset.id}#tasks", class_="filters")
    explainer = Explainer(view.engine)
    body = table(
        ["Task", "Job", "Name", "State", "Failures", "Lost", "Updated", "Why"],
        ([link(f"/tasks/{r['task_id']}", r["task_id"]), r["job"], names[r["task_index"]],
          state_badge(r["state"]), r["failures"], r["lost"], when(r["updated"]),
          tag("span", explainer.why(dataset, r["task_id"], r["reason"]) or r["reason"] or "",
              class_="reason")] for r in rows),
        empty="No tasks match these filters" + ("" if dataset.materialized
                                                 else " (jobs are still being created)") + ".",
        numeric=(1, 4, 5), class_="cards tasks")
    more = {"state": state, "task": name, "job": job_text}
    paging = tag("p",
                 link(href(f"/datasets/{dataset.id}", **more) + "#tasks", "First page")
                 if after else None,
                 link(href(f"/datasets/{dataset.id}", **more, after=rows[-1]["task_id"])
                      + "#tasks", "Next page", rel="next") if len(rows) == PAGE else None,
                 class_="paging")
    return tag("section", tag("h2", "Tasks"), filters, body, paging, id="tasks")


async def _jobs(view: View, dataset: DatasetState) -> Markup:
    state = view.query("jobs_state") or None
    if state and state not in JOB_STATES:
        raise BadRequest(f"jobs_state: {state!r} is not a job state; use one of "
                         f"{', '.join(JOB_STATES)}")
    after = _whole(view.query("jobs_after") or "-1", "jobs_after", None, minimum=-1)
    rows = await queries.jobs(view.engine.db, dataset.id, state, after, PAGE)
    filters = tag("form", _select("jobs_state", "State", JOB_STATES, state),
                  tag("button", "Filter"), method="get",
                  action=f"/datasets/{dataset.id}#jobs", class_="filters")
    body = table(["Job", "State", ""],
                 ([r["job"], state_badge(r["state"]),
                   link(href(f"/datasets/{dataset.id}", job=r["job"]) + "#tasks", "its tasks")]
                  for r in rows), empty="No jobs match.", numeric=(0,))
    paging = tag("p",
                 link(href(f"/datasets/{dataset.id}", jobs_state=state) + "#jobs", "First page")
                 if after >= 0 else None,
                 link(href(f"/datasets/{dataset.id}", jobs_state=state,
                           jobs_after=rows[-1]["job"]) + "#jobs", "Next page")
                 if len(rows) == PAGE else None, class_="paging")
    return tag("section", tag("h2", "Jobs"), filters, body, paging, id="jobs")


def resource_value(name: str, value: float | None) -> str:
    """A resource statistic in its unit: sizes for memory and disk, durations for times."""
    if "memory" in name or "disk" in name:
        return size(value)
    if name.endswith("time"):
        return duration(value)
    return number(value)


async def _statistics(view: View, dataset: DatasetState) -> Markup:
    rows = await queries.statistics(view.engine.db, dataset.id)
    names = [t.name for t in dataset.config.tasks]
    parts: list[Child] = [tag("h2", "Statistics")]
    used = {r["name"] for r in rows if r["kind"] == "resource" and r["max"]}
    for kind, title in (("user", "Reported by the tasks"), ("resource", "Resources used")):
        # Resources no attempt used at all (GPU time without GPUs) would only be rows of zeros.
        shown = [r for r in rows if r["kind"] == kind and (kind == "user" or r["name"] in used)]
        fmt = resource_value if kind == "resource" else (lambda _n, v: number(v))
        parts.append(tag("h3", title))
        parts.append(table(
            ["Name", "Task", "Count", "Sum", "Mean", "Std dev", "Min", "Max"],
            ([r["name"], names[r["task_index"]] if r["task_index"] is not None
              else tag("em", "all tasks"), f"{r['count']:,}",
              *(fmt(r["name"], r[k]) for k in ("sum", "mean", "stddev", "min", "max"))]
             for r in sorted(shown, key=lambda r: (r["name"], r["task_index"] is None,
                                                   r["task_index"] or 0))),
            empty="Nothing yet: statistics come with completed attempts.",
            numeric=range(2, 8), class_="cards"))
    return tag("section", parts, id="statistics")


def _config(dataset: DatasetState) -> Markup:
    config = dataset.config
    names = [t.name for t in config.tasks]
    steering = table(["Name", "Value"],
                     ([tag("code", k), tag("code", json.dumps(v))]
                      for k, v in sorted(config.steering.items())),
                     empty="No steering values.")
    tasks = []
    for spec in config.tasks:
        req = spec.requirements
        needs = [f"{req.cpus} CPU", size(req.memory) + " memory", size(req.disk) + " disk",
                 f"{req.gpus} GPU" if req.gpus else None, duration(req.walltime) + " walltime",
                 "os " + "/".join(req.os) if req.os else None,
                 "arch " + "/".join(req.arch) if req.arch else None,
                 "sites " + ", ".join(req.sites) if req.sites else None]
        commands = [tag("li", tag("code", _command(m.get("command"))))
                    for m in spec.raw.get("modules", [])]
        tasks.append([tag("strong", spec.name),
                      ", ".join(names[d] for d in spec.depends) or "–",
                      ", ".join(n for n in needs if n), tag("ol", commands, class_="commands")])
    raw = json.dumps(config.raw, indent=2, sort_keys=True)
    return tag("section", tag("h2", "Config"),
               tag("h3", "Steering"), steering,
               tag("h3", "Tasks"), table(["Task", "Depends on", "Needs", "Commands"], tasks),
               tag("details", tag("summary", "The whole config (JSON)"),
                   tag("pre", raw, class_="config")), id="config")


def _command(command: Any) -> str:
    if isinstance(command, list):
        return " ".join(json.dumps(part) if " " in str(part) or "\n" in str(part) else str(part)
                        for part in command)
    return str(command)


async def _events(view: View, dataset: DatasetState) -> Markup:
    rows = await queries.events(view.engine.db, dataset.id, 20)
    return tag("section", tag("h2", "History"), table(
        ["When", "Who", "Action", "Detail"],
        ([when(r["time"]), r["user"] or "", r["action"], r["detail"]] for r in rows),
        empty="Nothing has been done to this dataset."), id="history")


def _select(name: str, label: str, choices: Any, chosen: str | None) -> Markup:
    options = [tag("option", "any", value="")]
    options += [tag("option", c, value=c, selected=c == chosen) for c in choices]
    return tag("label", label, tag("select", options, name=name))


def _whole(text: str, name: str, maximum: int | None, minimum: int = 0) -> int:
    value = whole(text)
    if value is None:
        raise BadRequest(f"{name}: expected a whole number, got {text[:40]!r}")
    if value < minimum or (maximum is not None and value > maximum):
        limit = f" and at most {maximum}" if maximum is not None else ""
        raise BadRequest(f"{name}: expected a number of at least {minimum}{limit}, got {value}")
    return value
