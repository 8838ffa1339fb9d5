"""Pilots and sites: each site's pilots by state with its empty-pilot and failure rates, and the
pilots themselves, with what each measured and what it is running."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..api.schemas import RESOURCES
from ..api.validation import conforming
from ..bounds import record_id
from ..errors import BadRequest
from ..storage import queries, reports
from . import history
from .datasets import PAGE, state_badge
from .history import HISTORY
from .html import Markup, join, link, percent, size, table, tag, when
from .page import View, href, page

routes = web.RouteTableDef()

PILOT_STATES = ("running", "exited", "lost")


@routes.get("/pilots")
@page
async def pilots_page(view: View) -> web.StreamResponse:
    engine = view.engine
    site_name = view.query("site") or None
    state = view.query("state") or "running"
    if state not in (*PILOT_STATES, "any"):
        raise BadRequest(f"state: {state!r} is not a pilot state; use one of "
                         f"{', '.join(PILOT_STATES)} or any")
    site_id = (await view.auth.site_by_name(site_name)).site_id if site_name else None
    after_text = view.query("after") or "0"
    after = record_id(after_text)
    if after is None:
        raise BadRequest(f"after: expected a pilot id, got {after_text[:40]!r}")
    rows = await queries.pilots(engine.db, site_id=site_id,
                                state=None if state == "any" else state, after=after, limit=PAGE)
    counts: dict[str, dict[str, int]] = {}
    for row in await queries.pilot_counts(engine.db):
        counts.setdefault(row["site"], {})[row["state"]] = row["count"]
    empty = await reports.empty_pilots(engine.db)
    ended = history.by_site(await view.request.app[HISTORY].last_day(engine.db, view.now))
    sites = []
    for site in sorted(engine.sites.values(), key=lambda s: s.name):
        by_state = counts.get(site.name, {})
        pilots = empty.get(site.name, {"ended": 0, "empty": 0})
        attempts = ended.get(site.name, {})
        total = sum(attempts.values())
        sites.append([link(href("/pilots", site=site.name, state=state), site.name,
                           class_="nowrap"),
                      *(by_state.get(s, 0) for s in PILOT_STATES),
                      f"{percent(pilots['empty'], pilots['ended'])} of {pilots['ended']:,}",
                      f"{percent(attempts.get('failed', 0), total)} of {total:,}",
                      f"{percent(attempts.get('reset', 0), total)}"])
    filters = tag(
        "form",
        tag("label", "Site", tag("select", tag("option", "any", value=""),
                                 (tag("option", s.name, selected=s.name == site_name)
                                  for s in sorted(engine.sites.values(), key=lambda s: s.name)),
                                 name="site")),
        tag("label", "State", tag("select", (tag("option", s, selected=s == state)
                                             for s in (*PILOT_STATES, "any")), name="state")),
        tag("button", "Filter"), method="get", action="/pilots#pilots", class_="filters")
    listing = table(
        ["Pilot", "Site", "Host", "Batch job", "State", "Measured", "Running", "Registered",
         "Last seen", "Exit"],
        (_pilot_row(view, r) for r in rows),
        empty=f"No {'' if state == 'any' else state + ' '}pilots"
              + (f" at {site_name}" if site_name else "") + ".", class_="cards pilots")
    paging = tag("p", link(href("/pilots", site=site_name, state=state, after=rows[-1]["pilot_id"])
                           + "#pilots", "Next page") if len(rows) == PAGE else None,
                 class_="paging")
    return view.render(
        "Pilots and sites",
        tag("h1", "Pilots and sites"),
        tag("section", tag("h2", "Sites"),
            table(["Site", "Running", "Exited", "Lost", "Empty pilots", "Failed attempts",
                   "Lost attempts"], sites, empty="No sites yet.", numeric=range(1, 7),
                  class_="cards"),
            tag("p", f"Empty pilots: of the last {reports.RECENT_PILOTS:,} pilots, those that "
                     "ended without being given a task. Failed and lost attempts: of those "
                     "that ended in the last 24 hours.", class_="hint")),
        _black_holes(view),
        tag("section", tag("h2", "Pilots"), filters, listing, paging, id="pilots"))


def _black_holes(view: View) -> Markup | None:
    """The hosts that get no work now (none: no section)."""
    holes = view.engine.black_holes.current(view.now)
    if not holes:
        return None
    return tag("section", tag("h2", "Hosts that get no work (black holes)"), table(
        ["Site", "Host", "Since", "Until", "Why"],
        ([h.site, h.host, when(h.since), when(h.until), tag("span", h.why, class_="reason")]
         for h in holes)), id="black-holes")


def _pilot_row(view: View, row: dict[str, Any]) -> list[Any]:
    resources = conforming(row["resources"], RESOURCES)
    gpus = resources.get("gpus") or []
    measured = [f"{resources.get('cpus', '?')} CPU", size(resources.get("memory")) + " memory",
                size(resources.get("disk")) + " disk"]
    measured += [f"GPU {g.get('name') or '?'} ({size(g.get('memory'))})" for g in gpus]
    live = view.engine.pilots.get(row["pilot_id"])
    running: list[Markup] = []
    for attempt_id in sorted(live.attempts) if live else ():
        active = view.engine.active.get(attempt_id)
        dataset = view.engine.datasets.get(active.dataset_id) if active else None
        if active is None or dataset is None:
            continue
        name = dataset.config.tasks[dataset.locate(active.task_id)[1]].name
        running.append(tag("li", link(f"/tasks/{active.task_id}#attempt-{attempt_id}",
                                      f"{name} #{active.task_id}"), f" of dataset {dataset.id}"))
    return [tag("span", row["pilot_id"], id=f"pilot-{row['pilot_id']}"),
            tag("span", row["site"], class_="nowrap"), row["host"],
            f"{row['batch_system']} {row['batch_id']}".strip(),
            join([state_badge(row["state"]), tag("span", " suspect", class_="warn")
                  if row["suspect"] else None]),
            tag("ul", (tag("li", m) for m in measured), class_="plain"),
            tag("ul", running, class_="plain") if running else "idle"
            if row["state"] == "running" else "–",
            when(row["registered"]), when(row["last_seen"]),
            tag("span", row["exit_reason"] or "", class_="reason")]
