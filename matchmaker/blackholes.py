"""Black-hole hosts: worker nodes where every task fails at once, kept out of matching for a
while.

A broken node (a missing library, a full scratch disk, a dead GPU, a stale CVMFS mount) fails
whatever it is given within seconds, and a pilot there asks again at once: left alone it eats
the retries of task after task. The matchmaker watches each host's ended attempts, across its
pilots and their factories: `black_hole_failures` attempts of as many different tasks that
failed (task or staging errors: what a node can cause) within `black_hole_quick` of
their start, with no success on the host in between, make it a black hole for
`black_hole_cooldown`. Only tasks of datasets that have completed tasks count: a dataset broken
everywhere fails fast on every host, and must not make every host a black hole. And a failure
counts for less the more often its dataset's tasks fail on other hosts (`weight`): five
failures in a row of a dataset that fails one time in five happen by chance every few thousand
attempts, on healthy hosts, so that one needs about ten; the chance that a healthy host is
blamed stays about that of five failures in a row of a dataset failing one time in twenty
(`RARE`), about 3 in 10 million. A black hole's
pilots are then answered with no work and the reason (never held), it is logged, counted in
`/metrics`, listed by `floe sites` and the sites page, and the factories are told, so that a
suspect host's pilot is no proof that its site works and, where the batch system allows, new
pilots are kept off it. The state is memory only: a restarted matchmaker starts with no suspect
host.
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass
from typing import Any

from floe.config.resources import format_duration
from floe.config.settings import ServerSettings
from floe.config.states import ErrorClass

log = logging.getLogger(__name__)

NODE_FAILURES = (ErrorClass.TASK_ERROR, ErrorClass.STAGING_ERROR)
"""Failures a node can cause (as the pilot's own streak counts them): an overuse is the task's
doing, a lost pilot nobody's failure."""
MAX_WATCHED = 100_000
"""Hosts whose recent failures are remembered, at most (the oldest are forgotten past it)."""
RARE = 0.05
"""A dataset whose tasks fail this seldom (or less) on other hosts: each failure of it counts
whole."""
PRIOR = (0.5, 20)
"""Failures and attempts a dataset is taken to have had before any were seen (its failure rate
taken to be 2.5 % until its own attempts say otherwise)."""


def weight(failed: int, ended: int) -> float:
    """How much one failure counts when the dataset's tasks failed `failed` times in `ended`
    attempts elsewhere: 1 for a dataset that fails at most `RARE` of the time, less the more
    often it fails (its failure rate's logarithm against RARE's)."""
    rate = (failed + PRIOR[0]) / (ended + PRIOR[1])
    if rate <= RARE:
        return 1.0
    if rate >= 1.0:
        return 0.0
    return math.log(rate) / math.log(RARE)


@dataclass(frozen=True)
class _Failure:
    """One failure in a host's streak: its words, its dataset, and how much it counts."""

    message: str
    dataset_id: int
    weight: float


@dataclass(frozen=True)
class Suspect:
    """A host kept out of matching until `until`, and why."""

    host: str
    site: str
    since: float
    until: float
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "site": self.site, "since": self.since, "until": self.until,
                "why": self.why}


class BlackHoles:
    """The quick failures of each host since its last success, and the hosts kept out."""

    def __init__(self, settings: ServerSettings) -> None:
        self.failures = settings.black_hole_failures
        self.quick = settings.black_hole_quick
        self.cooldown = settings.black_hole_cooldown
        self._streaks: collections.OrderedDict[str, dict[int, _Failure]] = \
            collections.OrderedDict()
        self._datasets: dict[int, list[int]] = {}
        """Each dataset's attempts ended, and of them the failures a node can cause."""
        self.suspects: dict[str, Suspect] = {}
        self.found = 0
        """Hosts found to be black holes since the server started (for /metrics)."""

    def ended(self, host: str, site: str, task_id: int, error: ErrorClass | None,
              message: str, wall: float, now: float, proven: bool,
              dataset_id: int = 0) -> Suspect | None:
        """Count an ended attempt of `task_id` (of `dataset_id`) on `host` (`proven`: its
        dataset has completed tasks somewhere); the host's new Suspect when this attempt made
        it one."""
        if not host or self.failures <= 0:
            return None
        counts = self._datasets.setdefault(dataset_id, [0, 0])
        counts[0] += 1
        if error is None:
            self._streaks.pop(host, None)  # it ran a task to the end: not a black hole
            return None
        if error in NODE_FAILURES:
            counts[1] += 1
        if (error not in NODE_FAILURES or wall > self.quick or not proven
                or self.kept_out(host, now)):
            return None
        streak = self._streaks.get(host)
        if streak is None:
            if len(self._streaks) >= MAX_WATCHED:
                self._streaks.popitem(last=False)
            streak = self._streaks[host] = {}
        here = sum(1 for failure in streak.values() if failure.dataset_id == dataset_id)
        ended, failed = counts[0] - here - 1, counts[1] - here - 1  # on other hosts
        streak[task_id] = _Failure(message, dataset_id, weight(failed, ended))
        self._streaks.move_to_end(host)
        if sum(failure.weight for failure in streak.values()) < self.failures - 1e-9:
            return None
        del self._streaks[host]
        last = message.strip().splitlines()[-1][:200] if message.strip() else error.value
        suspect = Suspect(host, site, now, now + self.cooldown,
                          f"{len(streak)} different tasks failed here within "
                          f"{format_duration(self.quick)} of their start, none succeeded "
                          f"(last: {last})")
        self.suspects[host] = suspect
        self.found += 1
        log.warning("host %s at %s is a black hole: %s; no work for it for %s", host, site,
                    suspect.why, format_duration(self.cooldown))
        return suspect

    def kept_out(self, host: str, now: float) -> Suspect | None:
        """The host's Suspect while its cool-down lasts, else None."""
        suspect = self.suspects.get(host)
        if suspect is None:
            return None
        if now >= suspect.until:
            del self.suspects[host]
            log.info("host %s at %s is given work again: its cool-down is over", host,
                     suspect.site)
            return None
        return suspect

    def current(self, now: float, site: str | None = None) -> list[Suspect]:
        """The hosts kept out now (of one site), longest kept out first."""
        return sorted((s for s in list(self.suspects.values())
                       if self.kept_out(s.host, now) and (site is None or s.site == site)),
                      key=lambda s: s.since)
