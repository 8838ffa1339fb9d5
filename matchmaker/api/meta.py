"""API routes about the API itself: health and the OpenAPI document."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from importlib import metadata
from typing import Any

from ..errors import NotFound
from ..notify import public_pem
from ..storage.database import Database, StorageError
from . import openapi, schemas
from .framework import Context, Reply, route

QUICK_READ = 2.0
"""Seconds the health check's read of the database may take."""


@functools.cache
def version() -> str:
    try:
        return metadata.version("floe")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@route("GET", "/api/v1/health", summary="Whether the server, its database and its writer "
       "process work, and its version", tag="meta", response=schemas.HEALTH,
       answers={503: ("while the database does not work: stalled, its writer down, or "
                      "unreadable", schemas.HEALTH)},
       description="Open to everyone. Answers 200 with status \"ok\" while a quick read of "
                   "the database works, its writer process runs and no write has waited "
                   "longer than the watchdog allows; otherwise 503 with `reason` and status "
                   "\"stalled\" (a write has waited `stalled_for` seconds: every report, ask "
                   "and change waits behind it), \"writer_down\" (the writer process is not "
                   "running; the next write starts a new one) or \"unreadable\" (the quick "
                   "read failed or took longer than 2 s). `database.last_write_age`: seconds "
                   "since the writer last answered a write (null before the first).")
async def health(ctx: Context) -> Any:
    engine = ctx.engine
    db = engine.db
    now = time.monotonic()
    answer = {"status": "ok", "version": version(), "uptime": engine.clock() - engine.started,
              "datasets": len(engine.datasets), "running_attempts": len(engine.active),
              "pilots": len(engine.pilots), "held_asks": len(engine.holding.held),
              "database": {"commits": db.commits, "writes": db.batches_committed,
                           "stalls": db.stalls, "writer_alive": db.writer_alive,
                           "writer_pid": db.writer_pid,
                           "last_write_age": None if db.last_answer is None
                           else round(now - db.last_answer, 1)}}
    problem = await _database_problem(db)
    if problem is not None:
        answer.update(status=problem[0], reason=problem[1])
        if db.stalled is not None:
            answer["stalled_for"] = round(now - db.stalled, 1)
        return Reply(answer, 503)
    return answer


async def _database_problem(db: Database) -> tuple[str, str] | None:
    """What keeps the database from working, as (status, sentence); None when it works."""
    if db.stalled is not None:
        return "stalled", (f"a database write has waited {time.monotonic() - db.stalled:.0f}s "
                           "for the writer process; every report, ask and change waits "
                           "behind it (the server log says more)")
    if not db.writer_alive:
        return "writer_down", ("the database writer process is not running (it ended; the "
                               "server log says why); the next write starts a new one")
    try:
        await asyncio.wait_for(db.fetchone("SELECT count(*) FROM sqlite_master"), QUICK_READ)
    except TimeoutError:
        return "unreadable", f"a quick read of the database took longer than {QUICK_READ:.0f}s"
    except (StorageError, sqlite3.Error) as exc:
        return "unreadable", f"a quick read of the database failed: {exc}"
    return None


@route("GET", "/api/v1/openapi.json", summary="This document", tag="meta",
       response=schemas.OPENAPI)
async def openapi_json(ctx: Context) -> Any:
    return openapi.document(version())


@route("GET", "/api/v1/notifications/key", summary="The public key that signs the datasets' "
       "webhook calls", tag="meta", response=schemas.NOTIFICATIONS_KEY,
       description="`key`: the matchmaker's Ed25519 public key, PEM. A webhook call carries "
                   "`X-Floe-Signature: ed25519=<base64>`, the signature of `X-Floe-Timestamp`, "
                   "a dot, and the body.")
async def notifications_key(ctx: Context) -> Any:
    notifier = ctx.engine.notifier
    if notifier is None:
        raise NotFound("this matchmaker sends no notifications")
    return {"key": public_pem(notifier.key), "algorithm": "ed25519"}
