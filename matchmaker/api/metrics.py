"""GET /metrics: the matchmaker's counters and gauges in the Prometheus text format.

Access: any user's or admin's token (the READ rule), not an open page. The matchmaker is not on
a trusted network: pilots reach it from every site, so it faces the internet, and the metrics
name users and sites, which the read-only API also keeps behind a token. Prometheus sends a
bearer token itself (`authorization: {credentials_file: ...}` in the scrape config), so a user
made for it (`floe user add prometheus`) is all a site needs; pilot and factory tokens are refused.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import metrics
from ..access import Action
from ..storage import queries
from .framework import Context, route


@route("GET", "/metrics", summary="Counters and gauges in the Prometheus text format "
       f"({metrics.CONTENT_TYPE})", tag="meta", action=Action.READ, errors=(401, 403),
       text=metrics.CONTENT_TYPE)
async def prometheus(ctx: Context) -> Any:
    counts = await queries.pilot_counts(ctx.engine.db)
    return web.Response(body=metrics.render(ctx.engine, counts).encode(),
                        headers={"Content-Type": metrics.CONTENT_TYPE})
