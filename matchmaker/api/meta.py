"""API routes about the API itself: health and the OpenAPI document."""

from __future__ import annotations

import functools
import time
from importlib import metadata
from typing import Any

from ..errors import NotFound
from ..notify import public_pem
from . import openapi
from .framework import Context, Reply, route


@functools.cache
def version() -> str:
    try:
        return metadata.version("floe")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@route("GET", "/api/v1/health", summary="Whether the server is up and its writes flow, and "
       "its version", tag="meta",
       description="Answers 200 with status \"ok\", or 503 with status \"stalled\" while a "
                   "database write has waited longer than the watchdog allows (`stalled_for`, "
                   "in seconds): every report, ask and change then waits behind it.")
async def health(ctx: Context) -> Any:
    engine = ctx.engine
    db = engine.db
    answer = {"status": "ok", "version": version(), "uptime": engine.clock() - engine.started,
              "datasets": len(engine.datasets), "running_attempts": len(engine.active),
              "pilots": len(engine.pilots), "held_asks": len(engine.holding.held),
              "database": {"commits": db.commits, "writes": db.batches_committed,
                           "stalls": db.stalls}}
    if db.stalled is not None:
        answer.update(status="stalled", stalled_for=round(time.monotonic() - db.stalled, 1))
        return Reply(answer, 503)
    return answer


@route("GET", "/api/v1/openapi.json", summary="This document", tag="meta")
async def openapi_json(ctx: Context) -> Any:
    return openapi.document(version())


@route("GET", "/api/v1/notifications/key", summary="The public key that signs the datasets' "
       "webhook calls", tag="meta",
       description="`key`: the matchmaker's Ed25519 public key, PEM. A webhook call carries "
                   "`X-Floe-Signature: ed25519=<base64>`, the signature of `X-Floe-Timestamp`, "
                   "a dot, and the body.")
async def notifications_key(ctx: Context) -> Any:
    notifier = ctx.engine.notifier
    if notifier is None:
        raise NotFound("this matchmaker sends no notifications")
    return {"key": public_pem(notifier.key), "algorithm": "ed25519"}
