"""Asks held open while nothing fits: an idle pilot that says it can wait (`hold` in its ask) is
answered the moment work it can run becomes ready, instead of being told to ask again after
`idle_wait`.

Work becomes ready in one place: a dataset's ready queue (`queue.DatasetQueue.push`), whatever
made it ready (a submission's jobs created, a dependency released, a resume, a reset, a retry,
a voided attempt's task requeued). The queue tells `Holding.poke` the requirements and the
number of tasks; once the code that made them ready has run (`call_soon`), the held asks whose
slot fits them are woken, as many as the new tasks can use, the longest-held first. A woken ask
asks again through the normal dispatch, so fair share, not the order of waking, decides which
task each gets; one that finds nothing (another took the task) is held again for the rest of its
time. Bounded: `max_held_asks` at once (more are answered at once, as before), each at most the
server's `hold_asks` seconds. Nothing is kept anywhere but in the held requests: a restart
closes them (a stopping server answers them first), and the pilots ask again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from config.resources import Requirements, Slot, fits


@dataclass
class Held:
    """One held ask: what its pilot offers, and the future that wakes it."""

    slot: Slot
    woken: asyncio.Future[None] = field(repr=False)


class Holding:
    """The held asks of one matchmaker, by pilot id, in the order they were held."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: dict[int, Held] = {}
        self._fresh: dict[Requirements, int] = {}
        self._scheduled = False

    def poke(self, requirements: Requirements, count: int) -> None:
        """`count` tasks of these requirements became ready (called by the ready queues, so it
        costs nothing while no ask is held)."""
        if not self.held:
            return
        self._fresh[requirements] = self._fresh.get(requirements, 0) + count
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._wake)

    def _wake(self) -> None:
        self._scheduled = False
        fresh, self._fresh = self._fresh, {}
        for pilot_id, held in list(self.held.items()):
            for requirements, count in fresh.items():
                if count and fits(requirements, held.slot):
                    fresh[requirements] = count - 1
                    del self.held[pilot_id]
                    if not held.woken.done():
                        held.woken.set_result(None)
                    break
            if not any(fresh.values()):
                return

    def close(self) -> None:
        """Answer every held ask now and hold no more (the server stops: it must not wait for
        them)."""
        self.limit = 0
        for held in self.held.values():
            if not held.woken.done():
                held.woken.set_result(None)
        self.held.clear()

    async def hold(self, pilot_id: int, slot: Slot, seconds: float) -> bool:
        """Wait up to `seconds` for work that fits `slot`: True when woken, False when the time
        ran out or no more asks may be held."""
        if seconds <= 0 or (len(self.held) >= self.limit and pilot_id not in self.held):
            return False
        held = Held(slot, asyncio.get_running_loop().create_future())
        self.held[pilot_id] = held
        try:
            async with asyncio.timeout(seconds):
                await held.woken
            return True
        except TimeoutError:
            return False
        finally:
            if self.held.get(pilot_id) is held:
                del self.held[pilot_id]
