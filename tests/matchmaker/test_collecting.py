"""The server's process collects cyclic garbage on a timer, not as it allocates."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref

from aiohttp import web

from floe.matchmaker import collecting


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref:
    """A reference cycle nothing else holds, which only the collector can free."""
    first, second = Node(), Node()
    first.other, second.other = second, first
    return weakref.ref(first)


async def test_the_loaded_state_is_frozen_and_cycles_are_freed_on_the_timer_only(monkeypatch):
    monkeypatch.setattr(collecting, "FULL_EVERY", 0.3)
    app = web.Application()
    app.cleanup_ctx.append(collecting.collect_seldom)
    app.freeze()
    assert gc.isenabled()
    await app.startup()
    try:
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        garbage = cycle()
        kept = [[] for _ in range(100_000)]  # allocations that would start collections
        await asyncio.sleep(0.05)
        assert garbage() is not None and len(kept) == 100_000
        await asyncio.sleep(0.5)
        assert garbage() is None
    finally:
        await app.cleanup()
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_collection_that_frees_much_or_pauses_long_is_logged(monkeypatch, caplog):
    monkeypatch.setattr(collecting, "MUCH", 10)
    garbage = [cycle() for _ in range(20)]
    with caplog.at_level(logging.INFO, logger="floe.matchmaker.collecting"):
        assert collecting.collect() >= 40
    assert all(ref() is None for ref in garbage)
    assert "objects freed, the loop paused" in caplog.text


def test_collections_that_free_nothing_come_seldom_and_those_that_free_much_often():
    seconds = collecting.FULL_EVERY
    for _ in range(10):
        seconds = collecting.next_interval(seconds, 0)
    assert seconds == collecting.LONGEST
    assert collecting.next_interval(seconds, collecting.MUCH) == seconds
    for _ in range(10):
        seconds = collecting.next_interval(seconds, collecting.MUCH + 1)
    assert seconds == collecting.SHORTEST
