"""API of sites as their factories see them: demand, pilot tokens, what became of their pilots'
batch jobs; and the pilots listing."""

from __future__ import annotations

from typing import Any

from floe.config.resources import Slot

from .. import demand as pilot_demand
from ..access import Action
from ..engine import Site
from ..pilots import batch_jobs_ended
from ..storage import queries
from . import schemas
from .framework import Context, Param, route

SITE = Param("name", str, where="path")


async def own_site(ctx: Context) -> Site:
    """The site the path names, which the caller's token must speak for."""
    site = await ctx.auth.site_by_name(ctx.params["name"])
    ctx.authorize(Action.SITE, site=site)
    return site


@route("GET", "/api/v1/sites", summary="Sites with their running pilots", tag="sites",
       action=Action.READ, response=schemas.SITES,
       description="`black_holes` lists the site's hosts that get no work now: where tasks of "
                   "`black_hole_failures` different tasks failed soon after their start, with "
                   "when that was found, until when, and why.")
async def sites(ctx: Context) -> Any:
    engine = ctx.engine
    now = engine.clock()
    result = []
    for site in sorted(engine.sites.values(), key=lambda s: s.name):
        pilots = [p for p in engine.pilots.values() if p.site is site]
        result.append({"name": site.name, "pilots": len(pilots),
                       "attempts": sum(len(p.attempts) for p in pilots),
                       "black_holes": [suspect.to_dict() for suspect
                                       in engine.black_holes.current(now, site.name)]})
    return {"sites": result}


@route("POST", "/api/v1/sites/{name}/pilot-tokens", summary="Pilot tokens for this site, one "
       "for each pilot", tag="sites", action=Action.SITE, params=[SITE],
       body=schemas.PILOT_TOKEN, response=schemas.PILOT_TOKENS, status=201,
       description="Each token registers one pilot (POST /api/v1/pilots), and nothing else: "
                   "the registration answers the pilot's own key, with which it speaks from "
                   "then on. `count` tokens (default 1) expire after `lifetime` seconds, and "
                   "so do their pilots' keys.")
async def pilot_tokens(ctx: Context) -> Any:
    site = await own_site(ctx)
    tokens, expires = await ctx.auth.pilot_tokens(site, float(ctx.body.get("lifetime", 86400)),
                                                  int(ctx.body.get("count", 1)))
    return {"tokens": tokens, "expires": expires, "site": site.name}


@route("POST", "/api/v1/sites/{name}/demand", summary="Ready tasks that pilots of each shape "
       "could run at this site", tag="sites", action=Action.SITE, params=[SITE],
       body=schemas.DEMAND, response=schemas.SITE_DEMAND,
       description="Each ready task is counted once, for the smallest shape it fits, after "
                   "the pilots other factories have queued are subtracted (each factory "
                   "believed up to the site's pilot tokens that have registered no pilot "
                   "yet): `tasks` (with the "
                   "cpus, memory and gpus they need, and `pilots_needed` to hold them), and "
                   "`fitting` (every shape a task fits), and `room`: how many of those pilots the "
                   "free room of the site's running pilots makes up for. `unfit` counts the "
                   "ready tasks that may run at the site but fit none of the shapes, with the "
                   "reasons shape by shape for the most numerous kinds. `pilots` counts the "
                   "site's running and idle pilots and those that ended lately without a task. "
                   "`black_holes` lists the site's hosts that get no work now, for the "
                   "factory to keep new pilots off them where its batch system can. "
                   "The factory's own `queued` counts are remembered for the other factories' "
                   "answers.")
async def demand(ctx: Context) -> Any:
    site = await own_site(ctx)
    shapes = [pilot_demand.Shape(s["name"], Slot(
        cpus=s["cpus"], memory=s["memory"], disk=s["disk"], gpus=s.get("gpus", 0),
        seconds=s["walltime"], os=tuple(s.get("os") or ()), arch=s.get("arch", ""),
        site=site.name, gpu_kinds=pilot_demand.shape_gpus(s)), s.get("queued", 0))
        for s in ctx.body["shapes"]]
    if any(shape.queued for shape in shapes):
        pilot_demand.bound_claims(shapes, await queries.unused_pilot_tokens(
            ctx.engine.db, site.site_id, ctx.engine.clock()))
    return pilot_demand.demand(ctx.engine, site.name, ctx.body.get("factory") or "default",
                               shapes)


@route("DELETE", "/api/v1/sites/{name}/demand", summary="Withdraw what this factory said it "
       "has queued", tag="sites", action=Action.SITE, response=schemas.WITHDRAWN,
       params=[SITE, Param("factory", str, "default", doc="the factory's id, as its demand "
                                                          "requests give it")],
       description="A factory that stops (or ends a `--once` cycle) says so here: the pilots "
                   "it said it had queued are no longer subtracted from other factories' "
                   "demand. `withdrawn` is how many they were.")
async def withdraw(ctx: Context) -> Any:
    site = await own_site(ctx)
    return {"withdrawn": pilot_demand.withdraw(ctx.engine, site.name, ctx.params["factory"])}


@route("POST", "/api/v1/sites/{name}/batch-jobs", summary="What a factory saw of its pilots' "
       "batch jobs: which ended, and which to ask about", tag="sites", action=Action.SITE,
       params=[SITE], body=schemas.BATCH_JOBS, response=schemas.BATCH_JOBS_ANSWER,
       description="`registered` lists those of `pilots` that a pilot registered with at this "
                   "site under `batch_system`, ever (a pilot that has ended since counts): the "
                   "factory tells by it a pilot that could not reach the matchmaker from one "
                   "that did. The site's pilots among `ended` that the matchmaker still counts "
                   "running (killed outright, their node lost) are ended as lost, their tasks "
                   "requeued at once instead of after the heartbeat timeout, and listed in "
                   "`lost`.")
async def batch_jobs(ctx: Context) -> Any:
    site = await own_site(ctx)
    system = ctx.body["batch_system"]
    registered = await queries.registered_batch_ids(ctx.engine.db, site.site_id, system,
                                                    ctx.body.get("pilots") or [])
    ended = ctx.body.get("ended") or []
    lost = await batch_jobs_ended(ctx.engine, site, system, ended,
                                  ctx.body.get("factory") or "default")
    empty = await queries.empty_batch_ids(ctx.engine.db, site.site_id, system, ended)
    now = ctx.engine.clock()
    on_black_holes = {p.batch_id for p in ctx.engine.pilots.values()
                      if p.site is site and p.batch_system == system
                      and ctx.engine.black_holes.kept_out(p.host, now)}
    return {"registered": list(registered), "lost": lost, "empty": empty,
            "short": {batch_id: short for batch_id, short in registered.items() if short},
            "suspect": [batch_id for batch_id in registered if batch_id in on_black_holes]}


@route("GET", "/api/v1/pilots", summary="Pilots, by site and state", tag="sites",
       action=Action.READ, response=schemas.PILOTS,
       description="Each pilot with what it measured, `attempts` (the ids of those it runs "
                   "now) and `attempts_run` (how many it was given in all, 0 for an empty "
                   "pilot).",
       params=[Param("site", str), Param("state", str, choices=("running", "exited", "lost")),
               Param("after", int, 0, minimum=0),
               Param("limit", int, 100, minimum=1, maximum=1000)])
async def pilots(ctx: Context) -> Any:
    site_id = None
    if ctx.params["site"]:
        site_id = (await ctx.auth.site_by_name(ctx.params["site"])).site_id
    rows = await queries.pilots(ctx.engine.db, site_id=site_id, state=ctx.params["state"],
                                after=ctx.params["after"], limit=ctx.params["limit"])
    for row in rows:
        live = ctx.engine.pilots.get(row["pilot_id"])
        row["attempts"] = sorted(live.attempts) if live else []
    return {"pilots": rows}
