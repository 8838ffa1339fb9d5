"""What the matchmaker counts as it happens, for /metrics: matches, completions, failures, empty
asks, heartbeats and ended pilots by site, the core-seconds delivered to each owner, and how long
API requests take, kept with `prometheus_client` in a registry of each server's own (tests run
several in one process) beside the process, garbage-collector and platform collectors.
`api.metrics` adds what is read from the working state at scrape time and serves it all.

Counters only ever grow while the process lives (Prometheus handles restarts): what an outcome
counts is counted once its write commits, never undone. Every metric here is moved by a test.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from floe.config.states import ErrorClass

# The text format has no place for a counter's creation time: prometheus_client would add a
# `_created` gauge beside every counter and histogram, doubling the series for nothing. (A
# switch of the whole process: the matchmaker's is the only registry that it serves.)
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PILOT_ENDINGS = ("exited", "lost")


def status_class(status: int) -> str:
    """An HTTP status as its class: 404 is "4xx"."""
    return f"{status // 100}xx"


class Metrics:
    """The counters and the latency histogram of one matchmaker process, in `registry`; the
    totals over sites can be read back (`matches`, `completions`, `failures`)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        PlatformCollector(registry=registry)
        self._matches = Counter("floe_matches", "Tasks handed to pilots, by site.", ["site"],
                                registry=registry)
        self._completions = Counter("floe_completions", "Attempts that ended in success, by "
                                    "site.", ["site"], registry=registry)
        self._failures = Counter("floe_failures", "Attempts that did not complete, by site and "
                                 "error class.", ["site", "error_class"], registry=registry)
        self._heartbeats = Counter("floe_heartbeats", "Heartbeats of running attempts, by site.",
                                   ["site"], registry=registry)
        self._empty_asks = Counter("floe_empty_asks", "Asks of pilots answered with no task, by "
                                   "site.", ["site"], registry=registry)
        self._empty_pilots = Counter("floe_empty_pilots", "Pilots that signed off without ever "
                                     "being given a task, by site.", ["site"], registry=registry)
        self._pilots_ended = Counter("floe_pilots_ended", "Pilots that ended, by site and how "
                                     "(exited: signed off; lost: silent, or their batch job "
                                     "ended without them).", ["site", "state"], registry=registry)
        self._latency = Histogram("floe_request_duration_seconds", "Time to answer API "
                                  "requests, by route, method and status class.",
                                  ["route", "method", "status_class"], buckets=LATENCY_BUCKETS,
                                  registry=registry)
        self.delivered: dict[int, float] = {}
        """CPU cores times wall seconds of completed attempts, by owner's user id (the users
        page shows it; `api.metrics` exports it by owner's name)."""

    def add_site(self, name: str) -> None:
        """Give site `name` its series of every counter at 0, so that rates work from the first
        scrape that knows the site."""
        for counter in (self._matches, self._completions, self._heartbeats, self._empty_asks,
                        self._empty_pilots):
            counter.labels(name)
        for error in ErrorClass:
            self._failures.labels(name, error.value)
        for state in PILOT_ENDINGS:
            self._pilots_ended.labels(name, state)

    def matched(self, site: str, tasks: int) -> None:
        self._matches.labels(site).inc(tasks)

    def attempt_ended(self, site: str, user_id: int, error_class: str | None,
                      core_seconds: float) -> None:
        """Count a committed outcome: a completion delivering `core_seconds` to the owner, or a
        failure of `error_class`."""
        if error_class is None:
            self._completions.labels(site).inc()
            self.delivered[user_id] = self.delivered.get(user_id, 0.0) + core_seconds
        else:
            self._failures.labels(site, error_class).inc()

    def heartbeat(self, site: str) -> None:
        self._heartbeats.labels(site).inc()

    def asked_empty(self, site: str) -> None:
        self._empty_asks.labels(site).inc()

    def pilot_ended(self, site: str, state: str) -> None:
        self._pilots_ended.labels(site, state).inc()

    def empty_pilot(self, site: str) -> None:
        """Count a pilot that signed off without ever being given a task."""
        self._empty_pilots.labels(site).inc()

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Time one answered API request."""
        self._latency.labels(route, method, status_class(status)).observe(seconds)

    @property
    def matches(self) -> float:
        """Tasks handed to pilots, all sites together."""
        return sum(_values(self._matches).values())

    @property
    def completions(self) -> float:
        """Attempts that ended in success, all sites together."""
        return sum(_values(self._completions).values())

    @property
    def failures(self) -> dict[str, float]:
        """Attempts that did not complete, by error class, all sites together."""
        by_class: dict[str, float] = {}
        for labels, value in _values(self._failures).items():
            error = dict(labels)["error_class"]
            by_class[error] = by_class.get(error, 0.0) + value
        return by_class


def _values(counter: Counter) -> dict[frozenset[tuple[str, str]], float]:
    """A counter's value by its label set."""
    return {frozenset(sample.labels.items()): sample.value
            for family in counter.collect() for sample in family.samples
            if sample.name.endswith("_total")}
