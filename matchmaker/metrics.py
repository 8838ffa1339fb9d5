"""The matchmaker's counters and request-latency histograms, as the working state keeps them
(`api.metrics` renders them, with gauges read from the working state, at /metrics).

Counters only ever grow while the process lives (Prometheus handles restarts). Every metric here
is moved by a test.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """A cumulative-bucket latency histogram."""

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


class Metrics:
    """Everything /metrics exports that is not read from the working state at scrape time."""

    def __init__(self) -> None:
        self.matches = 0
        self.empty_asks = 0
        self.completions = 0
        self.heartbeats = 0
        self.failures: dict[str, int] = {}
        self.delivered: dict[int, float] = {}
        self.latency: dict[str, Histogram] = {}
        self.empty_pilots: dict[str, int] = {}
        """Pilots that signed off without ever being given a task, by site."""

    def observe(self, route: str, seconds: float) -> None:
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency[route] = Histogram()
        histogram.observe(seconds)
