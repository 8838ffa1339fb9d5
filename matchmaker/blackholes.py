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
counts for less the more often its dataset's tasks fail otherwise (`config.failures.weight`:
its attempts everywhere but the failures in any host's streak now, those on hosts kept out,
and those of the streaks that made hosts black holes, which were the hosts' doing). A black
hole's
pilots are then answered with no work and the reason (never held), it is logged, counted in
`/metrics`, listed by `floe sites` and the sites page, and the factories are told, so that a
suspect host's pilot is no proof that its site works and, where the batch system allows, new
pilots are kept off it. The state is memory only: a restarted matchmaker starts with no suspect
host.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Any

from floe.config.failures import weight
from floe.config.resources import format_duration
from floe.config.settings import ServerSettings
from floe.config.states import ErrorClass

log = logging.getLogger(__name__)

NODE_FAILURES = (ErrorClass.TASK_ERROR, ErrorClass.STAGING_ERROR)
"""Failures a node can cause (as the pilot's own streak counts them): an overuse is the task's
doing, a lost pilot nobody's failure."""
MAX_WATCHED = 100_000
"""Hosts whose recent failures are remembered, at most (the oldest are forgotten past it)."""


@dataclass
class _Failure:
    """One task's failures in a host's streak: the last one's words, its dataset, how much it
    counts, and its attempts that failed there (a task retried on the host counts once)."""

    message: str
    dataset_id: int
    weight: float
    attempts: int = 1


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
        """Each dataset's attempts that succeeded or failed as a node can make them fail, and
        of them those that failed."""
        self.suspects: dict[str, Suspect] = {}
        self._pending: collections.Counter[int] = collections.Counter()
        """Each dataset's failed attempts in some host's streak now: maybe that host's doing,
        so they are left out of how often the dataset fails."""
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
        counts = self._datasets.setdefault(dataset_id, [0, 0])  # its successes and failures
        if error is None:
            counts[0] += 1
            # It ran a task to the end: not a black hole, and its streak was the datasets'.
            for failure in (self._streaks.pop(host, None) or {}).values():
                self._pending[failure.dataset_id] -= failure.attempts
            return None
        if error not in NODE_FAILURES or self.kept_out(host, now):
            return None
        counts[0] += 1
        counts[1] += 1
        if wall > self.quick or not proven:
            return None
        streak = self._streaks.get(host)
        if streak is None:
            if len(self._streaks) >= MAX_WATCHED:
                for failure in self._streaks.popitem(last=False)[1].values():
                    self._pending[failure.dataset_id] -= failure.attempts
            streak = self._streaks[host] = {}
        self._pending[dataset_id] += 1
        here = self._pending[dataset_id]  # this one too
        counted = weight(counts[1] - here, counts[0] - here)
        failure = streak.get(task_id)
        if failure is None:
            streak[task_id] = _Failure(message, dataset_id, counted)
        else:  # the same task again: still one task, the last words
            failure.message, failure.attempts = message, failure.attempts + 1
        self._streaks.move_to_end(host)
        if sum(f.weight for f in streak.values()) < self.failures - 1e-9:
            return None
        del self._streaks[host]
        for failure in streak.values():  # the host's doing, not its dataset's: they do not
            tally = self._datasets.get(failure.dataset_id)  # make its dataset look flaky
            self._pending[failure.dataset_id] -= failure.attempts
            if tally is not None:
                tally[0] -= failure.attempts
                tally[1] -= failure.attempts
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
