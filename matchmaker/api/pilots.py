"""API of pilots: register, ask for tasks, heartbeat and report all their attempts, sign off.

A pilot registers with a site-scoped pilot token, which registers it and nothing else (its site
comes from the token, never from what it says); the registration answers the pilot's own key,
which every later request of the pilot carries and which speaks for no other pilot. Its attempts
are each proved by their passkeys, in the bodies of its bulk heartbeat and bulk reports.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from floe.config.protocol import MAX_REPORTS_BYTES

from .. import dispatch, liveness, pilots, recording
from ..access import Action
from ..auth import not_its_key
from ..engine import Pilot
from ..errors import ApiError, Forbidden
from ..holding import hold_seconds
from . import schemas
from .framework import Context, Param, route

PILOT_ID = Param("pilot_id", int, where="path", doc="the id the pilot got when it registered")


def own_pilot(ctx: Context) -> Pilot:
    """The pilot of the path, which must be the one the caller's key speaks for."""
    pilot_id = ctx.params["pilot_id"]
    speaks_for(ctx, pilot_id)
    pilot = ctx.engine.pilots.get(pilot_id)
    if pilot is None:
        raise dispatch.pilot_ended(pilot_id)
    return pilot


def speaks_for(ctx: Context, pilot_id: int) -> None:
    """Refuse a caller whose credential is not pilot `pilot_id`'s key: a pilot token (which
    only registers its pilot), or the key of another pilot."""
    refusal = not_its_key(ctx.principal.pilot_id, pilot_id)
    if refusal is not None:
        raise Forbidden(refusal)


@route("POST", "/api/v1/pilots", summary="Register a pilot", tag="pilots", action=Action.PILOT,
       body=schemas.REGISTER, response=schemas.REGISTERED, status=201)
async def register(ctx: Context) -> Any:
    body = ctx.body
    token = ctx.principal
    if token.pilot_id is not None:
        raise Forbidden(f"this is the key of pilot {token.pilot_id}, which has registered; a "
                        "new pilot registers with a pilot token of its own")
    try:
        pilot, key = await pilots.register(ctx.engine, token, body["host"],
                                           body.get("batch_system") or "none",
                                           body.get("batch_id") or "",
                                           body.get("resources") or {})
    finally:
        ctx.auth.forget(token)  # it has registered its pilot, or it had already
    settings = ctx.engine.settings
    return {"pilot_id": pilot.pilot_id, "key": key, "site": pilot.site.name,
            "heartbeat_interval": settings.heartbeat_interval,
            "heartbeat_timeout": settings.heartbeat_timeout, "tail_bytes": settings.tail_bytes,
            "hold_asks": settings.hold_asks, "series_seconds": True}


@route("POST", "/api/v1/pilots/{pilot_id}/ask", summary="Ask for the best task that fits",
       tag="pilots", action=Action.PILOT, body=schemas.ASK, response=schemas.ASKED,
       params=[PILOT_ID],
       description="Answers {\"attempt\": {...}} with the task, its passkey and its scope, or "
                   "{\"attempt\": null, \"wait\": seconds, \"reason\": \"...\", "
                   "\"shortest_walltime\": seconds or null} when nothing fits. With "
                   "`max_tasks`, the list form: {\"attempts\": [{...}, ...]} (each as "
                   "\"attempt\" above, chosen in the fair-share order as single asks would "
                   "be; and \"more\": false when fewer than `max_tasks`: nothing more "
                   "fits, or the rest is left to other pilots, or those given in series fill "
                   "`series_seconds` and no other task is ready), or {\"attempts\": [], "
                   "\"wait\": ..., \"reason\": ..., \"shortest_walltime\": ...}. With "
                   "`hold`, an ask with nothing to give is held open (at most `hold` and the "
                   "server's `hold_asks` seconds) and "
                   "answered as soon as a task it fits becomes ready; held to its end with "
                   "nothing, it is answered with none and `wait` 0: ask again. A pilot sends "
                   "`hold` only while it holds no attempt and no report: an attempt given to it "
                   "more than one heartbeat interval before never reached it and is reset, as "
                   "its heartbeat's `reporting` would have it.")
async def ask(ctx: Context) -> Any:
    pilot = own_pilot(ctx)
    offer = dispatch.Offer.from_dict(ctx.body, pilot.site.name)
    if ctx.body.get("hold") and pilot.attempts:
        # A pilot holds its ask only while it runs and delivers nothing (and then sends no
        # heartbeat): what it was handed long enough ago never reached it.
        await liveness.forget_unheld(ctx.engine, pilot, set(), ctx.engine.clock())
    answer = await dispatch.ask(ctx.engine, pilot, offer)
    longest = ctx.engine.settings.hold_asks
    if ctx.body.get("hold") and longest and dispatch.may_hold(answer):
        # Not past what the pilot said it can wait.
        hold = min(ctx.body["hold"], hold_seconds(pilot.pilot_id, longest,
                                                  asyncio.get_running_loop().time()))
        answer = await _held(ctx, pilot, offer, answer, hold)
    return web.Response(body=dispatch.answer_json(ctx.engine, answer),
                        content_type="application/json")


async def _held(ctx: Context, pilot: Pilot, offer: dispatch.Offer, answer: dispatch.Answer,
                seconds: float) -> dispatch.Answer:
    """Hold an ask that got nothing until work it fits is ready (then ask again) or `seconds`
    have passed (then the answer says to ask again at once). Not past its pilot's end, nor for
    a client that has gone."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds

    def gone() -> bool:
        transport = ctx.request.transport
        return transport is None or transport.is_closing()

    while dispatch.may_hold(answer):
        if not await ctx.engine.holding.hold(pilot.pilot_id, offer.slot, until - loop.time(),
                                             gone):
            return dispatch.ask_again(answer) if loop.time() >= until - 0.01 else answer
        if gone():
            return answer  # nobody to give a task to
        answer = await dispatch.ask(ctx.engine, pilot, offer)
    return answer


@route("POST", "/api/v1/pilots/{pilot_id}/heartbeat", summary="Report that the pilot and all "
       "its attempts are alive, with their resource use", tag="pilots", action=Action.PILOT,
       body=schemas.PILOT_HEARTBEAT, response=schemas.PILOT_HEARTBEAT_ANSWER, params=[PILOT_ID],
       description="Each attempt is checked by its passkey as the attempt heartbeat route "
                   "checks it; one that route would refuse is answered kill, with the status "
                   "and the reason (409: void, kill it; 403: wrong passkey; 404: no such "
                   "attempt), and never fails the others. With `reporting`, an attempt of the "
                   "pilot that the heartbeat does not name, handed out more than one heartbeat "
                   "interval ago, is reset at once as never received.")
async def heartbeat(ctx: Context) -> Any:
    return await liveness.heartbeats(ctx.engine, own_pilot(ctx), ctx.body["attempts"],
                                     ctx.body.get("reporting"))


@route("POST", "/api/v1/pilots/{pilot_id}/reports", summary="Report how several attempts "
       "ended (and, with `ask`, ask for the pilot's next tasks)", tag="pilots",
       action=Action.PILOT, body=schemas.REPORTS, response=schemas.REPORTED, params=[PILOT_ID],
       max_body=MAX_REPORTS_BYTES, errors=(400, 401, 403, 404, 413),
       description="Each report is decided on its own, by its passkey, exactly as the report "
                   "route decides it (a repeated one is acknowledged with duplicate=true), and "
                   "must be of an attempt given to this pilot; one that cannot be made is "
                   "answered with `error` and `status` in its place in `results`, and never "
                   "fails the others. With `ask`, `next` is what the ask route would answer, "
                   "decided once these outcomes are applied; an ask of a pilot that has ended "
                   "is `next` with `error` and `status` 404, and leaves the reports "
                   "recorded: a pilot that has ended (exited or lost) may still report. Any "
                   "credential but the pilot's own key is refused whole (403). All are "
                   "committed, in one group commit, before the answer.")
async def reports(ctx: Context) -> Any:
    engine = ctx.engine
    pilot_id = ctx.params["pilot_id"]
    speaks_for(ctx, pilot_id)  # one that has ended may still report what it ran
    ask = ctx.body.get("ask")
    results, following = await recording.report_many(engine, pilot_id, ctx.body["reports"],
                                                      ask)
    answer = json.dumps({"results": results}, separators=(",", ":")).encode()
    if following is None:
        return web.Response(body=answer, content_type="application/json")
    if isinstance(following, ApiError):
        following_json = json.dumps({"error": following.message, "status": following.status},
                                    separators=(",", ":")).encode()
    else:
        following_json = dispatch.answer_json(engine, following)
    return web.Response(body=answer[:-1] + b',"next":' + following_json + b"}",
                        content_type="application/json")


@route("POST", "/api/v1/pilots/{pilot_id}/exit", summary="Sign off a pilot", tag="pilots",
       action=Action.PILOT, body=schemas.PILOT_EXIT, response=schemas.EXITED,
       params=[PILOT_ID])
async def exit_(ctx: Context) -> Any:
    pilot = own_pilot(ctx)
    await pilots.sign_off(ctx.engine, pilot, ctx.body.get("reason") or "exited",
                          ctx.body.get("message") or "", bool(ctx.body.get("suspect")))
    return {"pilot_id": pilot.pilot_id, "state": "exited"}
