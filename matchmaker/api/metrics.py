"""GET /metrics: the matchmaker's metrics in the Prometheus text format (version 0.0.4), written
by `prometheus_client`: what the server counted (`metrics.Metrics`, with the process, garbage
collector and platform collectors), then what is read from the working state at scrape time,
gauges that say how things are now (tasks of the datasets still running, live pilots, black-hole
hosts), and the floe and Python versions. A scrape reads memory only, never the database.

Access: any user's or admin's token (the READ rule), not an open page. The matchmaker is not on
a trusted network: pilots reach it from every site, so it faces the internet, and the metrics
name users and sites, which the read-only API also keeps behind a token. Prometheus sends a
bearer token itself (`authorization: {credentials_file: ...}` in the scrape config), so a user
made for it (`floe user add prometheus`) is all a site needs; pilot and factory tokens are refused.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from ..access import Action
from ..engine import Engine
from .framework import Context, route
from .meta import version

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LIVE_PILOT_STATES = ("busy", "idle")
"""What a live pilot is doing: running at least one attempt, or none."""


@route("GET", "/metrics", summary="Counters and gauges in the Prometheus text format "
       f"({CONTENT_TYPE})", tag="meta", action=Action.READ, errors=(401, 403),
       text=CONTENT_TYPE)
async def prometheus(ctx: Context) -> Any:
    return web.Response(body=exposition(ctx.engine), headers={"Content-Type": CONTENT_TYPE})


def exposition(engine: Engine) -> bytes:
    """Everything /metrics shows, in the text format."""
    for site in engine.sites.values():
        engine.metrics.add_site(site.name)
    return generate_latest(Exposed(engine))


class Exposed:
    """What one scrape exposes (a `prometheus_client` collector): the server's registry,
    then the working state's."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        yield from self.engine.metrics.registry.collect()
        yield from working_state(self.engine)


def working_state(engine: Engine) -> Iterator[Metric]:
    """The families read from the working state now, with the build."""
    build = InfoMetricFamily("floe_build", "The floe and Python versions this matchmaker runs.")
    build.add_metric([], {"version": version(), "python": platform.python_version()})
    yield build

    tasks: dict[tuple[str, ...], int] = {}
    for dataset in engine.open.values():
        name = _user_name(engine, dataset.user_id)
        for state, count in dataset.summary().items():
            tasks[name, state] = tasks.get((name, state), 0) + count
    yield _gauge("floe_tasks", "Tasks of the datasets that have not ended, by owner and state "
                 "(tasks of jobs not yet created count as waiting).", ["user", "state"], tasks)

    delivered = CounterMetricFamily("floe_delivered_core_seconds", "CPU cores times wall "
                                    "seconds of completed attempts, by owner.", labels=["user"])
    for user_id, seconds in sorted(engine.metrics.delivered.items()):
        delivered.add_metric([_user_name(engine, user_id)], seconds)
    yield delivered

    sites = sorted(site.name for site in engine.sites.values())
    pilots = {(site, state): 0 for site in sites for state in LIVE_PILOT_STATES}
    idle = {(site,): 0 for site in sites}
    for pilot in engine.pilots.values():
        site = pilot.site.name
        key = site, "busy" if pilot.attempts else "idle"
        pilots[key] = pilots.get(key, 0) + 1
        if pilot.free is not None:
            idle[site,] = idle.get((site,), 0) + 1
    yield _gauge("floe_pilots", "Live pilots by site and state (busy: running an attempt; "
                 "idle: running none).", ["site", "state"], pilots)
    yield _gauge("floe_idle_pilots", "Live pilots whose last ask got no task, by site (busy "
                 "ones with room left among them).", ["site"], idle)

    kept_out = {(site,): 0 for site in sites}
    for suspect in engine.black_holes.current(engine.clock()):
        kept_out[suspect.site,] = kept_out.get((suspect.site,), 0) + 1
    yield _gauge("floe_black_hole_hosts", "Hosts that get no work now because tasks failed "
                 "there one after another (black holes), by site.", ["site"], kept_out)
    yield CounterMetricFamily("floe_black_holes_found", "Hosts found to be black holes.",
                              value=engine.black_holes.found)


def _gauge(name: str, help_text: str, labels: list[str],
           counts: dict[tuple[str, ...], int]) -> Metric:
    family = GaugeMetricFamily(name, help_text, labels=labels)
    for values, count in sorted(counts.items()):
        family.add_metric(list(values), count)
    return family


def _user_name(engine: Engine, user_id: int) -> str:
    user = engine.users.get(user_id)
    return user.name if user else str(user_id)
