"""API of pilots: register, ask for a task, sign off.

A pilot proves itself with its site-scoped pilot token; its site comes from the token, never
from what it says.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from config.resources import Slot

from .. import dispatch, pilots
from ..access import Action
from ..engine import Pilot
from ..errors import Forbidden, NotFound
from . import schemas
from .framework import Context, Param, route

PILOT_ID = Param("pilot_id", int, where="path", doc="the id the pilot got when it registered")


def own_pilot(ctx: Context) -> Pilot:
    pilot = ctx.engine.pilots.get(ctx.params["pilot_id"])
    if pilot is None:
        raise NotFound(f"pilot {ctx.params['pilot_id']} is not registered or has ended; "
                       "register again")
    if ctx.principal.site is None or pilot.site.site_id != ctx.principal.site.site_id:
        raise Forbidden(f"pilot {pilot.pilot_id} belongs to another site")
    return pilot


@route("POST", "/api/v1/pilots", summary="Register a pilot", tag="pilots", action=Action.PILOT,
       body=schemas.REGISTER, status=201)
async def register(ctx: Context) -> Any:
    body = ctx.body
    pilot = await pilots.register(ctx.engine, ctx.principal.site, body["host"],
                                  body.get("batch_system") or "none", body.get("batch_id") or "",
                                  body.get("resources") or {})
    settings = ctx.engine.settings
    return {"pilot_id": pilot.pilot_id, "site": pilot.site.name,
            "heartbeat_interval": settings.heartbeat_interval,
            "heartbeat_timeout": settings.heartbeat_timeout}


@route("POST", "/api/v1/pilots/{pilot_id}/ask", summary="Ask for the best task that fits",
       tag="pilots", action=Action.PILOT, body=schemas.SLOT, params=[PILOT_ID],
       description="Answers {\"attempt\": {...}} with the task, its passkey and its scope, or "
                   "{\"attempt\": null, \"wait\": seconds, \"reason\": \"...\", "
                   "\"shortest_walltime\": seconds or null} when nothing fits.")
async def ask(ctx: Context) -> Any:
    pilot = own_pilot(ctx)
    body = dict(ctx.body)
    body["site"] = pilot.site.name
    slot = Slot.from_dict(body)
    answer = await dispatch.ask(ctx.engine, pilot, slot)
    return web.Response(body=dispatch.answer_json(ctx.engine, answer),
                        content_type="application/json")


@route("POST", "/api/v1/pilots/{pilot_id}/exit", summary="Sign off a pilot", tag="pilots",
       action=Action.PILOT, body=schemas.PILOT_EXIT, params=[PILOT_ID])
async def exit_(ctx: Context) -> Any:
    pilot = own_pilot(ctx)
    await pilots.sign_off(ctx.engine, pilot, ctx.body.get("reason") or "exited",
                          ctx.body.get("message") or "", bool(ctx.body.get("suspect")))
    return {"pilot_id": pilot.pilot_id, "state": "exited"}
