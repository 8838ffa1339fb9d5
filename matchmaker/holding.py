"""Asks held open while nothing fits: an idle pilot that says it can wait (`hold` in its ask) is
answered the moment work it can run becomes ready, instead of being told to ask again after
`idle_wait`.

Work becomes ready in one place: a dataset's ready queue (`queue.DatasetQueue.push`), whatever
made it ready (a submission's jobs created, a dependency released, a resume, a reset, a retry,
a voided attempt's task requeued). The queue tells `Holding.poke` the requirements and the
number of tasks; once the code that made them ready has run (`call_soon`), the held asks whose
slot fits them are woken, as many as the new tasks can use, the longest-held first (passing
over those whose pilot has gone: a stopped or killed pilot's ask stays held until it ends, and
would take the wake from a live pilot). A woken ask asks again through the normal dispatch, so
fair share, not the order of waking, decides which task each gets; one that finds nothing
(another took the task) is held again for the rest of its time. Bounded: `max_held_asks` at
once (more are answered at once, as before), each at most the server's `hold_asks` seconds.

A held ask that nothing wakes ends at its pilot's own moment of a cycle (`hold_seconds`), the
pilots' moments spread evenly over it: the asks again of many idle pilots come at an even rate
however they began (together after a restart or a burst of registrations: with a random end
they still came in waves, a third of them within a few seconds, for minutes).

Waking costs as many checks as there are distinct shapes held (slots alike but for their time
left), not as many as held asks: 19,100 idle pilots of one shape are one check per kind of new
task (with every held ask looked at for each, 5,000 matches a second froze the event loop for
seconds at a time). Nothing is kept anywhere but in the held requests: a restart
closes them (a stopping server answers them first), and the pilots ask again.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from floe.config.resources import Requirements, Slot, fits

SHORTEST_HOLD = 0.1
"""The shortest hold, as a fraction of the longest: the cycle is the rest."""
GOLDEN = 0.6180339887498949
"""Pilot ids times this, modulo 1, spread the pilots' moments evenly over the cycle, whatever
the ids' range."""
MAX_REMEMBERED_FITS = 100_000
"""(requirements, shape) verdicts kept before they are forgotten and checked afresh."""


def hold_seconds(pilot_id: int, longest: float, now: float) -> float:
    """How long to hold an ask of `pilot_id` on a server that holds asks up to `longest`
    seconds, at `now` (any steady clock): until its pilot's moment of a cycle of 90 % of
    `longest`, at least 10 % of `longest` away. A pilot that asks again as its hold ends is next
    held one whole cycle."""
    if longest <= 0:
        return 0.0
    cycle = longest * (1 - SHORTEST_HOLD)
    earliest = now + longest * SHORTEST_HOLD
    moment = (pilot_id * GOLDEN) % 1.0 * cycle
    return earliest + (moment - earliest) % cycle - now


def _still_there() -> bool:
    return False


@dataclass
class Held:
    """One held ask: what its pilot offers, the order it was held in, and the future that wakes
    it."""

    slot: Slot
    order: int
    woken: asyncio.Future[None] = field(repr=False)
    gone: Callable[[], bool] = field(repr=False, default=_still_there)
    """Whether the client that asked has gone (its connection closed)."""


def shape_of(slot: Slot) -> Slot:
    """The slot but for its time left: what held asks are grouped by."""
    return Slot(slot.cpus, slot.memory, slot.disk, slot.gpus, 2**31, slot.os, slot.arch,
                slot.site, slot.gpu_kinds)  # not dataclasses.replace: it runs for every task


class Holding:
    """The held asks of one matchmaker, by pilot id, and grouped by shape in the order they were
    held."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: dict[int, Held] = {}
        self._shapes: dict[Slot, dict[int, Held]] = {}
        self._fits: dict[tuple[Requirements, Slot], bool] = {}
        self._fresh: dict[Requirements, int] = {}
        self._scheduled = False
        self._orders = itertools.count()
        self.barren: dict[Slot, int] = {}
        """Shapes that nothing ready fitted, with the most time left that was looked at: they
        fit nothing until a task that fits them becomes ready (tasks only become fit by
        becoming ready), and an ask of theirs need not look (see dispatch)."""

    def poke(self, requirements: Requirements, count: int) -> None:
        """`count` tasks of these requirements became ready (called by the ready queues, so it
        costs next to nothing while no ask is held and no shape is barren)."""
        if self.barren:
            for shape in [s for s in self.barren if self._shape_fits(requirements, s)]:
                del self.barren[shape]
        if not self.held:
            return
        self._fresh[requirements] = self._fresh.get(requirements, 0) + count
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._wake)

    def _shape_fits(self, requirements: Requirements, shape: Slot) -> bool:
        key = (requirements, shape)
        verdict = self._fits.get(key)
        if verdict is None:
            if len(self._fits) >= MAX_REMEMBERED_FITS:
                self._fits.clear()
            verdict = self._fits[key] = fits(requirements, shape)
        return verdict

    def _wake(self) -> None:
        self._scheduled = False
        fresh, self._fresh = self._fresh, {}
        for requirements, count in fresh.items():
            groups = [group for shape, group in self._shapes.items()
                      if self._shape_fits(requirements, shape)]
            while count and groups:
                oldest = None
                for group in groups:  # each in the order held: its first with time enough
                    for pilot_id, held in group.items():
                        if held.slot.seconds >= requirements.walltime:
                            if oldest is None or held.order < oldest[1].order:
                                oldest = (pilot_id, held)
                            break
                if oldest is None:
                    break
                self._forget(*oldest)
                if not oldest[1].woken.done():
                    oldest[1].woken.set_result(None)
                if not oldest[1].gone():  # a pilot that has gone leaves the task to another
                    count -= 1
                groups = [group for group in groups if group]

    def _forget(self, pilot_id: int, held: Held) -> None:
        if self.held.get(pilot_id) is held:
            del self.held[pilot_id]
            shape = shape_of(held.slot)
            group = self._shapes[shape]
            del group[pilot_id]
            if not group:
                del self._shapes[shape]

    def close(self) -> None:
        """Answer every held ask now and hold no more (the server stops: it must not wait for
        them)."""
        self.limit = 0
        for held in self.held.values():
            if not held.woken.done():
                held.woken.set_result(None)
        self.held.clear()
        self._shapes.clear()

    async def hold(self, pilot_id: int, slot: Slot, seconds: float,
                   gone: Callable[[], bool] | None = None) -> bool:
        """Wait up to `seconds` for work that fits `slot`: True when woken, False when the time
        ran out or no more asks may be held. `gone` tells whether the asking client has gone
        (then a wake passes over it to the next held ask)."""
        if seconds <= 0 or (len(self.held) >= self.limit and pilot_id not in self.held):
            return False
        earlier = self.held.get(pilot_id)
        if earlier is not None:
            self._forget(pilot_id, earlier)
        held = Held(slot, next(self._orders), asyncio.get_running_loop().create_future(),
                    gone or _still_there)
        self.held[pilot_id] = held
        self._shapes.setdefault(shape_of(slot), {})[pilot_id] = held
        try:
            async with asyncio.timeout(seconds):
                await held.woken
            return True
        except TimeoutError:
            return False
        finally:
            self._forget(pilot_id, held)
