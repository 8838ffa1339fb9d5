"""GET /metrics: the matchmaker's counters and gauges in the Prometheus text format (version
0.0.4), rendered here from `metrics.Metrics` and the working state.

Access: any user's or admin's token (the READ rule), not an open page. The matchmaker is not on
a trusted network: pilots reach it from every site, so it faces the internet, and the metrics
name users and sites, which the read-only API also keeps behind a token. Prometheus sends a
bearer token itself (`authorization: {credentials_file: ...}` in the scrape config), so a user
made for it (`floe user add prometheus`) is all a site needs; pilot and factory tokens are refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from config.states import ErrorClass

from ..access import Action
from ..engine import Engine
from ..metrics import Histogram
from ..storage import queries
from .framework import Context, route

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@route("GET", "/metrics", summary="Counters and gauges in the Prometheus text format "
       f"({CONTENT_TYPE})", tag="meta", action=Action.READ, errors=(401, 403),
       text=CONTENT_TYPE)
async def prometheus(ctx: Context) -> Any:
    counts = await queries.pilot_counts(ctx.engine.db)
    return web.Response(body=render(ctx.engine, counts).encode(),
                        headers={"Content-Type": CONTENT_TYPE})


def escape_label(value: str) -> str:
    """A label value as the text format quotes it: backslash, double quote and newline escaped."""
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


Labels = Mapping[str, str]


class Exposition:
    """Metric families written one after another in the Prometheus text format (version 0.0.4):
    a HELP and a TYPE line per family, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[Labels, float]]) -> None:
        self._header(name, kind, help_text)
        for labels, value in samples:
            self._sample(name, labels, value)

    def histogram(self, name: str, help_text: str, label: str,
                  histograms: Mapping[str, Histogram]) -> None:
        """One histogram per value of `label`: cumulative _bucket lines up to le="+Inf", then
        _sum and _count."""
        self._header(name, "histogram", help_text)
        for key in sorted(histograms):
            histogram = histograms[key]
            cumulative = 0
            for bound, count in zip((*histogram.buckets, math.inf), histogram.counts, strict=True):
                cumulative += count
                self._sample(f"{name}_bucket", {label: key, "le": format_value(float(bound))},
                             cumulative)
            self._sample(f"{name}_sum", {label: key}, histogram.total)
            self._sample(f"{name}_count", {label: key}, histogram.count)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def _header(self, name: str, kind: str, help_text: str) -> None:
        help_text = help_text.replace("\\", r"\\").replace("\n", r"\n")
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def _sample(self, name: str, labels: Labels, value: float) -> None:
        inside = ",".join(f'{key}="{escape_label(str(text))}"' for key, text in labels.items())
        self.lines.append(f"{name}{{{inside}}} {format_value(value)}" if inside
                          else f"{name} {format_value(value)}")


def render(engine: Engine, pilot_counts: Iterable[Mapping[str, Any]]) -> str:
    """Everything /metrics shows; `pilot_counts` are rows of (site, state, count) from the
    database, the only figures that outlive the pilots the engine holds."""
    metrics = engine.metrics
    out = Exposition()

    tasks: dict[tuple[str, str], int] = {}
    for dataset in engine.datasets.values():
        name = _user_name(engine, dataset.user_id)
        for state, count in dataset.summary().items():
            tasks[name, state] = tasks.get((name, state), 0) + count
    out.family("floe_tasks", "gauge", "Tasks by owner and state (tasks of jobs not yet created "
               "count as waiting).",
               (({"user": user, "state": state}, count)
                for (user, state), count in sorted(tasks.items())))
    out.family("floe_matches_total", "counter", "Tasks handed to pilots.",
               [({}, metrics.matches)])
    out.family("floe_completions_total", "counter", "Attempts that ended in success.",
               [({}, metrics.completions)])
    failures = {error.value: 0 for error in ErrorClass} | metrics.failures
    out.family("floe_failures_total", "counter", "Attempts that did not complete, by error "
               "class.", (({"error_class": error}, count)
                          for error, count in sorted(failures.items())))
    out.family("floe_heartbeats_total", "counter", "Heartbeats of running attempts.",
               [({}, metrics.heartbeats)])
    out.family("floe_delivered_core_seconds_total", "counter", "CPU cores times wall seconds "
               "of completed attempts, by owner.",
               (({"user": _user_name(engine, user_id)}, seconds)
                for user_id, seconds in sorted(metrics.delivered.items())))

    out.family("floe_pilots", "gauge", "Pilots by site and state (running, exited, lost), "
               "as recorded.", (({"site": row["site"], "state": row["state"]}, row["count"])
                                for row in pilot_counts))
    idle: dict[str, int] = {site.name: 0 for site in engine.sites.values()}
    for pilot in engine.pilots.values():
        if pilot.free is not None:
            idle[pilot.site.name] = idle.get(pilot.site.name, 0) + 1
    out.family("floe_idle_pilots", "gauge", "Running pilots whose last ask got no task, by "
               "site.", (({"site": site}, count) for site, count in sorted(idle.items())))
    out.family("floe_empty_asks_total", "counter", "Asks of pilots answered with no task.",
               [({}, metrics.empty_asks)])
    out.family("floe_empty_pilots_total", "counter", "Pilots that signed off without ever "
               "being given a task, by site.",
               (({"site": site}, count) for site, count in sorted(metrics.empty_pilots.items())))
    kept_out: dict[str, int] = {}
    for suspect in engine.black_holes.current(engine.clock()):
        kept_out[suspect.site] = kept_out.get(suspect.site, 0) + 1
    out.family("floe_black_hole_hosts", "gauge", "Hosts that get no work now because tasks "
               "failed there one after another (black holes), by site.",
               (({"site": site}, count) for site, count in sorted(kept_out.items())))
    out.family("floe_black_holes_found_total", "counter", "Hosts found to be black holes.",
               [({}, engine.black_holes.found)])

    out.histogram("floe_request_duration_seconds", "Time to answer API requests, by route.",
                  "route", metrics.latency)
    return out.text()


def _user_name(engine: Engine, user_id: int) -> str:
    user = engine.users.get(user_id)
    return user.name if user else str(user_id)
