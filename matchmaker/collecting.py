"""When the server's process looks for cyclic garbage.

A request's objects are freed by reference counting as soon as it is answered: collections of
the server under load find nothing to collect, or a handful of objects. Python's collector
still scans, at every collection, the objects that are alive and young, and at scale many are
(each idle pilot's ask is held 20 to 25 s, each bulk report waits for its group commit): with
19,100 held asks, young collections paused the event loop for up to 234 ms and middle ones for
up to 0.9 s, 12.6 s of CPU in a 4-minute run (docs/benchmarks.md), and those pauses were the
asks' 99th-percentile wait.

So once the working state is loaded, it is frozen (never scanned again: it lives as long as the
process), automatic collection is turned off, and full collections run on a timer instead,
from the event loop: the first after `FULL_EVERY` seconds, then twice as far apart after each
that freed next to nothing (up to `LONGEST`: with 19,100 held asks one pauses the loop for 1 to
2 s and frees nothing), half as far after one that freed much (down to `SHORTEST`). A
collection that pauses the loop for more than `SLOW` or frees more than `MUCH` is logged. What
cycles there are wait minutes to be freed, not forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

log = logging.getLogger("floe.matchmaker.collecting")

FULL_EVERY = 600.0
"""Seconds from the start to the first full collection."""
SHORTEST, LONGEST = 60.0, 3600.0
"""The bounds of the seconds between full collections."""
FEW = 1_000
"""A collection freeing at most this many objects doubles the time to the next."""
SLOW = 0.1
"""A collection pausing the loop for longer than this (seconds) is logged."""
MUCH = 100_000
"""A collection freeing more objects than this is logged."""


async def collect_seldom(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context, after the engine's load: freeze what is loaded, turn
    automatic collection off, collect on the timer until the server stops, and then leave the
    collector as it was."""
    enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    task = asyncio.create_task(_collect_every(FULL_EVERY), name="floe-collector")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gc.unfreeze()
        if enabled:
            gc.enable()


async def _collect_every(seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            seconds = next_interval(seconds, collect())
        except Exception:  # never the end of collecting: the memory would only grow
            log.exception("garbage collection failed; trying again in %.0f s", seconds)


def next_interval(seconds: float, freed: int) -> float:
    """The seconds to the next full collection, after one `seconds` after the last freed
    `freed` objects."""
    if freed <= FEW:
        return min(LONGEST, 2 * seconds)
    if freed > MUCH:
        return max(SHORTEST, seconds / 2)
    return seconds


def collect() -> int:
    """One full collection (not of the frozen state); returns the objects it freed."""
    started = time.perf_counter()
    freed = gc.collect()
    paused = time.perf_counter() - started
    if paused > SLOW or freed > MUCH:
        log.info("garbage collection: %d objects freed, the loop paused %.0f ms", freed,
                 1000 * paused)
    return freed
