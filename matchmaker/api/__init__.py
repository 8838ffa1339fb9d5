"""The JSON API under /api/v1: route modules, their framework, and the OpenAPI document."""

from __future__ import annotations

import asyncio

from aiohttp import web

from . import admin, attempts, datasets, meta, metrics, pilots, sites
from .framework import LARGE_BODIES, LARGE_TURNS, ROUTES, unknown_route, wrap

__all__ = ["add_routes"]
_MODULES = (admin, attempts, datasets, meta, metrics, pilots, sites)  # imported for their routes


def add_routes(app: web.Application) -> None:
    # aiohttp tries routes that share a prefix in the order they were added: pilots' routes,
    # thousands of times a second, go first.
    app[LARGE_TURNS] = asyncio.Semaphore(LARGE_BODIES)
    hot = ("pilots", "attempts")
    for spec in sorted(ROUTES, key=lambda r: (r.tag not in hot, r.method == "GET")):
        app.router.add_route(spec.method, spec.path, wrap(spec))
    app.router.add_route("*", "/api/{tail:.*}", unknown_route)
