"""Users and fair share: each user's share of the pool against what they used lately."""

from __future__ import annotations

from aiohttp import web

from ..views import share_table
from . import charts
from .html import duration, join, number, table, tag
from .page import View, page

routes = web.RouteTableDef()


def core_hours(core_seconds: float) -> str:
    hours = core_seconds / 3600
    return "< 0.01" if 0 < hours < 0.01 else number(round(hours, 2))


@routes.get("/shares")
@page
async def shares_page(view: View) -> web.StreamResponse:
    engine = view.engine
    found = share_table(engine)
    roles = {u.name: u.role for u in engine.users.values()}
    datasets = {u.name: len(engine.by_user.get(u.user_id, ())) for u in engine.users.values()}
    rows = [[tag("strong", s["user"]), roles.get(s["user"], ""), number(s["share"]),
             join([charts.share_bars(s["share_fraction"], s["usage_fraction"]),
                   tag("small", f"share {100 * s['share_fraction']:.0f}% · usage "
                                f"{100 * s['usage_fraction']:.0f}%")]),
             core_hours(s["usage"]), core_hours(s["delivered_core_seconds"]),
             datasets.get(s["user"], 0)] for s in found["shares"]]
    return view.render(
        "Users and shares",
        tag("h1", "Users and fair share"),
        tag("section",
            tag("ul", tag("li", tag("span", class_="swatch share"), "share of the pool"),
                tag("li", tag("span", class_="swatch usage"), "share of recent usage"),
                class_="legend"),
            table(["User", "Role", "Share", "Share against usage", "Recent usage (core-h)",
                   "Delivered (core-h)", "Datasets"], rows, numeric=(2, 4, 5, 6),
                  class_="shares"),
            tag("p", "Recent usage is weighted core-hours that decay with a half-life of ",
                duration(found["half_life"]), "; a user whose usage is below their share is "
                "served first. Delivered: core-hours run since the server started.",
                class_="hint")))
