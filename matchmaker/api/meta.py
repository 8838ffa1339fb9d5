"""API routes about the API itself: health and the OpenAPI document."""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

from . import openapi
from .framework import Context, route


@functools.cache
def version() -> str:
    try:
        return metadata.version("floe")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@route("GET", "/api/v1/health", summary="Whether the server is up, and its version",
       tag="meta")
async def health(ctx: Context) -> Any:
    engine = ctx.engine
    return {"status": "ok", "version": version(), "uptime": engine.clock() - engine.started,
            "datasets": len(engine.datasets), "running_attempts": len(engine.active),
            "pilots": len(engine.pilots),
            "database": {"commits": engine.db.commits, "writes": engine.db.batches_committed}}


@route("GET", "/api/v1/openapi.json", summary="This document", tag="meta")
async def openapi_json(ctx: Context) -> Any:
    return openapi.document(version())
