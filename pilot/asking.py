"""When the pilot asks for work, and for how much: a pure policy, numbers in and a decision out,
as the factory's top-up policy is (no clock, no matchmaker, no threads: a test drives it).

While the pilot's recent tasks are short it prefetches: it asks for tasks to run one after
another ("series"), about `prefetch_horizon` seconds of them at their recent mean wall time,
and asks again once the queue is down to half. Otherwise it asks for tasks to start side by side
("side") in what is free, as many as its free CPUs could hold. It stops asking when the slot's
time is too short for a task, when it has had no work for `idle_timeout`, or when the slot
offers nothing a task could use.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MAX_ASK = 64
"""The most tasks one ask is for, side by side or in series."""
SERIES = "series"
SIDE = "side"


def series_size(durations: Sequence[float], horizon: float) -> int:
    """How many tasks to queue: about `horizon` seconds of them at their recent mean wall time
    (1 while no task has ended, when tasks are long, or with no horizon)."""
    if horizon <= 0 or not durations:
        return 1
    mean = max(statistics.fmean(durations), 1e-6)
    return max(1, min(MAX_ASK, int(horizon / mean)))


@dataclass(frozen=True)
class Situation:
    """What the pilot knows when it may ask."""

    now: float
    seconds_left: int
    """Seconds left in the slot."""
    idle: bool
    """No lane runs and no attempt is held."""
    asked_since_busy: bool
    """It has asked at least once since it was last busy (an idle pilot leaves only then)."""
    last_busy: float
    next_ask: float
    """When it may ask again (after an empty answer's wait, or a backoff)."""
    series_size: int
    queued: int
    """Attempts queued in series, not yet started."""
    time_after_queue: int
    """Seconds left once the queued attempts have run their walltimes."""
    can_offer_series: bool
    """The slot offers a task something beside the attempts running longer than the horizon."""
    can_offer_side: bool
    """Something is free for a task to start now."""
    free_cpus: int


@dataclass(frozen=True)
class Limits:
    min_seconds: float
    """Stop asking with less time left than this, whatever the tasks' walltimes."""
    idle_timeout: float


@dataclass(frozen=True)
class Decision:
    """Ask for `count` tasks of `kind` (series or side), or not now (kind None); or stop asking
    for good (`stop`: "lifetime", "idle" or "empty slot")."""

    kind: str | None = None
    count: int = 0
    stop: str | None = None


def wants(situation: Situation) -> str | None:
    """SERIES when short tasks are to be queued, SIDE when tasks are to start side by side in
    what is free, None when the pilot has all it can take now."""
    if situation.series_size > 1:
        if situation.queued > situation.series_size // 2 or situation.time_after_queue <= 0:
            return None
        return SERIES if situation.can_offer_series else None
    if situation.queued or not situation.can_offer_side:
        return None
    return SIDE


def decide(situation: Situation, limits: Limits) -> Decision:
    """Whether to ask now, and for how many tasks of which kind; or why to stop asking."""
    if situation.seconds_left < limits.min_seconds:
        return Decision(stop="lifetime")
    if situation.idle and situation.asked_since_busy \
            and situation.now - situation.last_busy >= limits.idle_timeout:
        return Decision(stop="idle")
    if situation.now < situation.next_ask:
        return Decision()
    kind = wants(situation)
    if kind is None:
        if situation.idle and not situation.can_offer_side:
            return Decision(stop="empty slot")
        return Decision()
    if kind == SERIES:
        return Decision(SERIES, situation.series_size - situation.queued)
    return Decision(SIDE, max(1, min(MAX_ASK, situation.free_cpus)))


MIN_CUT = 2.0
"""Seconds a held ask must have lasted before its failure may be a cut (sooner: a refused
connection, a matchmaker that went away, backed off from as any failure)."""
CUT_MARGIN = 0.8
"""The part of a cut ask's time that later asks are held for at most."""


class HoldLimit:
    """How long the pilot lets the matchmaker hold its asks, learned from what cuts them.

    Something between the pilot and the matchmaker (an HTTP proxy, a NAT, a load balancer) may
    end a request that has carried nothing for a while: a held ask then fails after that long,
    every time, and backing off from it as from an outage left an idle pilot asking minutes
    apart, deaf to new work. A held ask that fails after `MIN_CUT` seconds or more, over a
    second before the hold it asked for was over, may have been cut: the pilot asks again at
    once. When the next one fails so too, after about as long (a matchmaker killed while it
    held the ask fails it once, and then refuses or answers), it was: from then on the pilot
    asks for holds of at most `CUT_MARGIN` of that.
    """

    def __init__(self) -> None:
        self.limit: int | None = None
        """The longest hold to ask for; None: what the matchmaker allows."""
        self._cut: float | None = None
        """How long the last held ask lasted, when it failed as a cut would."""

    def of(self, hold: int) -> int:
        """The hold to ask for, where the pilot would ask for `hold` seconds."""
        return hold if self.limit is None else min(hold, self.limit)

    def answered(self) -> None:
        """An ask was answered: the last failure was no cut."""
        self._cut = None

    def cut(self, asked: int, lasted: float, failure: object) -> str | None:
        """A held ask of `asked` seconds failed (`failure`) after `lasted` seconds: when that
        may have been a cut, what the pilot does about it (to be logged and acted on: ask
        again at once); else None (back off)."""
        if asked <= 0 or lasted < MIN_CUT or lasted > asked - 1:
            self._cut = None
            return None
        earlier, self._cut = self._cut, lasted
        said = f"a held ask failed after {lasted:.0f}s ({failure})"
        if earlier is None or abs(lasted - earlier) > max(1.0, earlier / 4):
            return f"{said}; asking again at once"
        self.limit = max(1, int(lasted * CUT_MARGIN))
        return (f"{said}, as the one before it: something between the pilot and the "
                "matchmaker (a proxy, a NAT) seems to end requests idle that long; asking again "
                f"at once, and for holds of at most {self.limit}s from now on")
