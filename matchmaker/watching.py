"""Waiting for a dataset's progress: a client's request held until the dataset's task counts or
status change, or until it ends (the long poll behind `floe wait` and
`GET /api/v1/datasets/{id}/progress`), instead of the client asking again and again.

A dataset's `Watch` exists only while someone waits on it. The working state tells it of every
change (`DatasetState.move`, new jobs); the waiters are woken once per turn of the event loop,
after the code that made the changes has run, and each compares the dataset's `version` (its
status and counts, as an opaque string) with the one it waits to see change. A stopping server
wakes every waiter first (`close`).
"""

from __future__ import annotations

import asyncio
import contextlib


class Watch:
    """The requests waiting for one dataset to change."""

    __slots__ = ("_closed", "_scheduled", "_waiters")

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False
        self._closed = False

    def __bool__(self) -> bool:
        return bool(self._waiters)

    @property
    def closed(self) -> bool:
        return self._closed

    def changed(self) -> None:
        """The dataset changed: wake the waiters soon (once, however many changes this turn)."""
        if self._waiters and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._wake)

    def _wake(self) -> None:
        self._scheduled = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def next_change(self, timeout: float) -> None:
        """Return at the next change, after `timeout` seconds, or when the server stops."""
        if self._closed or timeout <= 0:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def close(self) -> None:
        """The server stops: every waiter returns now, and none waits from now on."""
        self._closed = True
        self._wake()
