"""The JSON API under /api/v1: route modules, their framework, and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from . import admin, attempts, datasets, meta, pilots, sites
from .framework import ROUTES, errors_as_json, wrap

__all__ = ["add_routes", "errors_as_json"]
_MODULES = (admin, attempts, datasets, meta, pilots, sites)  # imported for their routes


def add_routes(app: web.Application) -> None:
    for spec in ROUTES:
        app.router.add_route(spec.method, spec.path, wrap(spec))
