"""The web pages of the matchmaker: server-rendered HTML, one small stylesheet, charts as inline
SVG, no script and nothing fetched from anywhere else.

Pages: the overview (/), a dataset (/datasets/N) with its actions, a task (/tasks/N) with its
attempts and logs, pilots and sites (/pilots), users and fair share (/shares); signing in with a
user token at /signin. They read through the same storage queries and the same access rules as
the JSON API under /api/v1.
"""

from __future__ import annotations

from aiohttp import web

from . import dataset_actions, datasets, pilots, shares, signin, tasks
from .history import HISTORY, History
from .page import HERE, SESSIONS, View, page
from .sessions import Sessions

__all__ = ["add_routes"]

STYLESHEET = (HERE / "floe.css").read_bytes()


async def stylesheet(request: web.Request) -> web.StreamResponse:
    return web.Response(body=STYLESHEET, content_type="text/css",
                        headers={"Cache-Control": "max-age=3600"})


@page
async def not_found(view: View) -> web.StreamResponse:
    raise web.HTTPNotFound(text=f"There is no page {view.request.path}.")


async def _add_fallback(app: web.Application) -> None:
    # Added at startup, after every route that create_app and others register, so that it
    # answers only what nothing else takes; the API answers its own unknown paths in JSON.
    app.router.add_get("/{tail:(?!api/).*}", not_found)


def add_routes(app: web.Application) -> None:
    """Serve the pages from `app` (the matchmaker's application); its startup opens
    `app[SESSIONS]` on the database."""
    app[SESSIONS] = Sessions()
    app[HISTORY] = History()
    for module in (signin, datasets, dataset_actions, tasks, pilots, shares):
        app.router.add_routes(module.routes)
    app.router.add_get("/static/floe.css", stylesheet)
    app.on_startup.append(_add_fallback)
