"""API of running attempts (heartbeat, report, log upload), proved by per-attempt passkeys, and
the read-only views of attempts and their logs. A report may carry its pilot's next ask."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .. import dispatch, liveness, logs, recording, records
from ..access import Action
from ..errors import ApiError, NotFound
from ..lifecycle import Outcome
from . import schemas
from .framework import Context, Param, route

ATTEMPT_ID = Param("attempt_id", int, where="path")
STREAM = Param("stream", str, where="path", choices=("stdout", "stderr"))


@route("POST", "/api/v1/attempts/{attempt_id}/heartbeat", summary="Report that an attempt is "
       "alive, with its current resource use", tag="attempts", passkey=True,
       body=schemas.HEARTBEAT, params=[ATTEMPT_ID], errors=(400, 401, 403, 404, 409),
       response=schemas.ATTEMPT_ALIVE,
       description="409 means the attempt was voided (reset, suspended, timed out): kill it.")
async def heartbeat(ctx: Context) -> Any:
    return await liveness.heartbeat(ctx.engine, ctx.params["attempt_id"], ctx.passkey,
                                    ctx.body.get("usage") or {})


@route("POST", "/api/v1/attempts/{attempt_id}/report", summary="Report how an attempt ended "
       "(and, with `ask`, ask for the pilot's next task)", tag="attempts", passkey=True,
       body=schemas.REPORT, response=schemas.RECORDED, params=[ATTEMPT_ID],
       max_body=4 * 2**20, errors=(400, 401, 403, 404, 409),
       description="Idempotent: sending the same report again is acknowledged with "
                   "duplicate=true and records nothing twice. With `ask` (the ask route's "
                   "body) and the pilot's token beside the passkey, the answer's `next` is what "
                   "the ask route would answer for the attempt's pilot, decided once this "
                   "outcome is recorded and applied: one request per task for a busy pilot. "
                   "The passkey alone decides the report: a report it cannot make is refused "
                   "whole (nothing is asked), and a refused ask (`next` with `error` and "
                   "`status`) leaves the report recorded.")
async def report(ctx: Context) -> Any:
    engine = ctx.engine
    attempt_id = ctx.params["attempt_id"]
    outcome = Outcome.from_dict(ctx.body)
    ask = ctx.body.get("ask")
    if ask is None:
        return await recording.report(engine, attempt_id, ctx.passkey, outcome)
    try:
        ctx.authorize(Action.PILOT)
    except ApiError as refusal:
        answer = await recording.report(engine, attempt_id, ctx.passkey, outcome)
        return dict(answer, next={"error": refusal.message, "status": refusal.status})
    answer, following = await recording.report_and_ask(engine, attempt_id, ctx.passkey, outcome,
                                                      ask, ctx.principal.pilot_id)
    if isinstance(following, ApiError):
        return dict(answer, next={"error": following.message, "status": following.status})
    recorded = json.dumps(answer, separators=(",", ":")).encode()
    return web.Response(body=recorded[:-1] + b',"next":' +
                        dispatch.answer_json(engine, following) + b"}",
                        content_type="application/json")


@route("PUT", "/api/v1/attempts/{attempt_id}/logs/{stream}", summary="Upload an attempt's full "
       "stdout or stderr (plain text)", tag="attempts", passkey=True, params=[ATTEMPT_ID, STREAM],
       raw_body=True, max_body="max_log_bytes", errors=(400, 401, 403, 404, 409, 413),
       response=schemas.LOG_STORED)
async def upload_log(ctx: Context) -> Any:
    stored = await logs.save(ctx.engine, ctx.params["attempt_id"], ctx.passkey,
                             ctx.params["stream"], ctx.body)
    return {"stored": stored}


@route("GET", "/api/v1/attempts/{attempt_id}", summary="One attempt with its log tails",
       tag="attempts", action=Action.READ, params=[ATTEMPT_ID], response=schemas.ATTEMPT)
async def attempt(ctx: Context) -> Any:
    found = await records.attempt(ctx.engine.db, ctx.engine.archived, ctx.params["attempt_id"])
    if found is None:
        raise NotFound(f"there is no attempt {ctx.params['attempt_id']}")
    return found


@route("GET", "/api/v1/attempts/{attempt_id}/logs/{stream}", summary="An attempt's full log as "
       "text (its tail if the pilot did not upload it)", tag="attempts", action=Action.READ,
       params=[ATTEMPT_ID, STREAM], text="text/plain")
async def log_text(ctx: Context) -> Any:
    found = await records.log_text(ctx.engine.db, ctx.engine.archived, ctx.engine.logs,
                                   ctx.params["attempt_id"], ctx.params["stream"],
                                   ctx.engine.settings.tail_bytes)
    if found is None:
        raise NotFound(f"there is no attempt {ctx.params['attempt_id']}")
    text, complete = found
    return web.Response(text=text, content_type="text/plain",
                        headers={"X-Floe-Log-Complete": "1" if complete else "0"})
