"""When the pilot asks for work, and for how much: a pure policy, numbers in and a decision out,
as the factory's top-up policy is (no clock, no matchmaker, no threads: a test drives it).

While the pilot's recent tasks are short it prefetches: it asks for tasks to run one after
another ("series"), about `prefetch_horizon` seconds of them (as many as would fill it at their
recent mean wall time, and the matchmaker stops at what those it hands out are expected to
run), and asks again once the queue is down to half, in number and in expected seconds; when
the matchmaker answered that nothing more fits, only once one of its tasks has ended (the ask
rides on its report) or runs past the horizon. Otherwise it asks for tasks to start side by
side ("side") in what is free, as many as its free CPUs could hold. It stops asking when the
slot's time is too short for a task, when it has had no work for `idle_timeout`, or when the
slot offers nothing a task could use.
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
    queued_seconds: float
    """What the queued attempts are expected to run, in all (by the matchmaker's estimates)."""
    horizon: float
    """The prefetch horizon: about how many seconds of tasks to queue (infinite where the
    matchmaker's expected times are the walltimes, which cannot fill one)."""
    time_after_queue: int
    """Seconds left once the queued attempts have run their expected times."""
    can_offer_series: bool
    """The slot offers a task something beside the attempts running longer than the horizon."""
    can_offer_side: bool
    """Something is free for a task to start now."""
    free_cpus: int
    dry: bool = False
    """The last ask in series was answered that nothing more fits, no task has ended since
    and none has run past the horizon: another would find nothing."""


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
        if situation.dry or situation.queued > situation.series_size // 2 \
                or situation.queued_seconds > situation.horizon / 2 \
                or situation.time_after_queue <= 0:
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
MAX_UNLIKE_CUTS = 3
"""Failures in a row that look like cuts but not alike after which the pilot backs off (a link
that fails at random, not a timeout)."""
PROBE_EVERY = 20
"""Every this many asks under a learned limit, one asks for the whole hold again: answered after
longer than the cut, the limit is lifted (the proxy was fixed, or the pilot moved behind
another)."""


class HoldLimit:
    """How long the pilot lets the matchmaker hold its asks, learned from what cuts them.

    Something between the pilot and the matchmaker (an HTTP proxy, a load balancer) may close a
    request that has carried nothing for a while: a held ask then fails after that long, every
    time, and backing off from it as from an outage left an idle pilot asking minutes apart,
    deaf to new work. A held ask that fails with no answer (or with a proxy's 504) after
    `MIN_CUT` seconds or more, over a second before the hold it asked for was over, may have
    been cut: the pilot asks again at once. When the next one fails so too, after about as long
    (a matchmaker killed while it held the ask fails it once, and then refuses or answers), it
    was: from then on the pilot asks for holds of at most `CUT_MARGIN` of that, and every
    `PROBE_EVERY` asks for a whole one, to lift the limit once nothing cuts it any more.
    """

    def __init__(self) -> None:
        self.limit: int | None = None
        """The longest hold to ask for; None: what the matchmaker allows."""
        self._cut: float | None = None
        """How long the last held ask lasted, when it failed as a cut would."""
        self._unlike = 0
        self._cut_at = 0.0
        """How long the cuts that set the limit came after."""
        self._asks = 0
        self._probe_cut: float | None = None
        """How long the last whole hold asked for to see lasted, when it was cut otherwise."""

    def asking(self, hold: int) -> int:
        """The hold to ask for, where the pilot would ask for `hold` seconds (and now asks)."""
        if self.limit is None or hold <= self.limit:
            return hold
        self._asks += 1
        return hold if self._asks % PROBE_EVERY == 0 else self.limit

    def answered(self, asked: int, lasted: float) -> str | None:
        """An ask held up to `asked` seconds was answered after `lasted`: the last failure was
        no cut. When that lifts the limit, what to say."""
        self._cut, self._unlike = None, 0
        if self.limit is None or asked <= self.limit or lasted < self._cut_at + 1:
            return None
        self.limit = None
        return (f"a held ask was answered after {lasted:.0f}s: nothing cuts held asks after "
                f"{self._cut_at:.0f}s any more; asking for whole holds again")

    def cut(self, asked: int, lasted: float, failure: BaseException) -> str | None:
        """A held ask of `asked` seconds failed (`failure`) after `lasted` seconds: when it may
        have been cut, what to say about it (empty: nothing) and ask again at once; None: back
        off, as from any failure."""
        answered = getattr(failure, "status", None)
        if asked <= 0 or lasted < MIN_CUT or lasted > asked - 1 or answered not in (None, 504):
            self._cut, self._unlike = None, 0
            return None
        if self.limit is not None and asked > self.limit:  # a whole hold asked for, to see
            earlier, self._probe_cut = self._probe_cut, lasted
            if _alike(lasted, self._cut_at) or not _alike(lasted, earlier):
                return ""  # still cut (or cut otherwise once): the limit stands
            self._probe_cut = None
            return self._learn(f"held asks are now cut after {lasted:.0f}s ({failure}), twice",
                               lasted)
        earlier, self._cut = self._cut, lasted
        said = f"a held ask failed after {lasted:.0f}s ({failure})"
        if not _alike(lasted, earlier):
            self._unlike += 1
            if self._unlike >= MAX_UNLIKE_CUTS:
                self._cut, self._unlike = None, 0
                return None
            return f"{said}; asking again at once"
        self._unlike = 0
        return self._learn(f"{said}, as the one before it", lasted)

    def _learn(self, said: str, lasted: float) -> str:
        """Hold for less than cuts that come after `lasted` seconds from now on."""
        self.limit, self._cut_at = max(1, int(lasted * CUT_MARGIN)), lasted
        return (f"{said}: something between the pilot and the matchmaker (a proxy, a load "
                "balancer) closes requests idle that long; asking again at once, and for holds "
                f"of at most {self.limit}s from now on (raise its idle timeout above the "
                "matchmaker's hold_asks to spare the asks)")


def _alike(lasted: float, earlier: float | None) -> bool:
    """Whether two cuts came after about as long."""
    return earlier is not None and abs(lasted - earlier) <= max(1.0, earlier / 4)
