"""Per-site health: back off exponentially while a site keeps failing, report it, never hammer it.

Failures are a refused or broken submit, a batch system that cannot be queried, a pilot that the
batch system holds, and a pilot that ended without registering with the matchmaker (or, where the
matchmaker cannot say, one that ended sooner than `min_pilot_life` after it started). Each
failure in a row doubles the wait before the next submission (from `backoff` up to
`max_backoff`); after `failing_after` in a row the site is marked failing, which the factory
logs and writes to its status file. A failure seen while the site is waiting (the batch system
still cannot be queried, a pilot submitted before the wait ends without registering) counts in
the row but does not lengthen the wait: the wait doubles per try, not per cycle. A pilot that
registered (or, where the matchmaker cannot say, one that lived past `min_pilot_life`) proves
the site works again and clears it all; so does a change of the site's config (`clear`). Times
are given by the caller: no clock is read here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Health:
    backoff: float = 30.0
    max_backoff: float = 1800.0
    failing_after: int = 5
    failures: int = 0
    tries: int = 0  # the failures that began a wait
    wait: float = 0.0  # the length of the current wait
    until: float = 0.0
    last_error: str = ""

    @property
    def failing(self) -> bool:
        return self.failures >= self.failing_after

    def failure(self, now: float, why: str) -> bool:
        """Count one failure; True when it makes the site failing (for a report, once). One
        seen while the site waits leaves the wait as it is."""
        self.failures += 1
        self.last_error = why
        if not self.backing_off(now):
            self.tries += 1
            self.wait = min(self.backoff * 2 ** (self.tries - 1), self.max_backoff)
            self.until = now + self.wait
        return self.failures == self.failing_after

    def success(self) -> bool:
        """The site works; True when it was failing before."""
        was = self.failing
        self.failures = self.tries = 0
        self.until = 0.0
        self.last_error = ""
        return was

    def clear(self) -> bool:
        """Forget the failures (the site's config changed: try it again now); True when the
        site was failing or waiting."""
        was = self.failures > 0
        self.failures, self.tries, self.until, self.last_error = 0, 0, 0.0, ""
        return was

    def backing_off(self, now: float) -> bool:
        return now < self.until

    def to_dict(self, now: float) -> dict[str, object]:
        return {"failures": self.failures, "failing": self.failing,
                "backoff_left": max(0.0, round(self.until - now, 1)),
                "last_error": self.last_error}
