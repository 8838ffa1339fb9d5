"""How the matchmaker holds its connections: no one client address may hold more than
`max_connections_per_address` of them, and the process may open as many files as its hard
limit allows. One client opening connections and leaving them idle (a bug, or an attack) then
has its own extra connections closed at once, and every other client goes on being served:
before, 1,124 idle connections from one address used up the default 1,024 open files and every
other client's connection was reset.

`GuardedSite` is aiohttp's socket site with each connection's protocol wrapped in a `Guard`,
which counts the connections of each address and forwards every event to aiohttp's own
protocol unchanged. The server says when its open-files limit is too low for the pilots it
serves: at start (in its log's INFO lines), when the limit is below what `max_held_asks` idle
pilots need, and with a WARNING while it runs, when its connections come near the limit.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

REFUSAL_LOG_INTERVAL = 60.0
"""Seconds between two log lines about one address's refused connections."""
SPARE_FILES = 256
"""Open files the server keeps for itself beyond its connections (database, logs, sockets)."""
NEAR_LIMIT = 0.9
"""Connections past this part of the open-files limit are logged (once a minute at most)."""


def check_open_files_limit(files: int, held_asks: int) -> str | None:
    """Why `files` open files are too few for a server that may hold `held_asks` idle pilots'
    asks (each a connection), or None."""
    needed = held_asks + SPARE_FILES
    if files >= needed:
        return None
    return (f"the open-files limit is {files}, and max_held_asks = {held_asks} idle pilots "
            f"hold a connection each: raise the hard limit to at least {needed} (ulimit -Hn in "
            "the shell that starts the server, LimitNOFILE= in a systemd unit), or lower "
            "max_held_asks")


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 2**20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d (%s): the server "
                        "holds fewer connections", soft, wanted, exc)
    return soft


class Counts:
    """Open connections by client address, and when each address was last told refused."""

    def __init__(self, per_address: int, files: int | None = None) -> None:
        self.per_address = per_address
        self.open: dict[str, int] = {}
        self.refused: dict[str, float] = {}
        self.total = 0
        self.near = None if files is None else int(NEAR_LIMIT * files)
        self.files = files
        self._warned = -REFUSAL_LOG_INTERVAL

    def admit(self, address: str) -> bool:
        if self.near is not None and self.total >= self.near:
            now = time.monotonic()
            if now - self._warned >= REFUSAL_LOG_INTERVAL:
                self._warned = now
                log.warning("%d connections are open, near the open-files limit of %d: raise "
                            "it (ulimit -Hn, LimitNOFILE=) or new pilots' connections will "
                            "fail", self.total, self.files)
        held = self.open.get(address, 0)
        if held >= self.per_address:
            now = time.monotonic()
            if now - self.refused.get(address, -REFUSAL_LOG_INTERVAL) >= REFUSAL_LOG_INTERVAL:
                self.refused[address] = now
                log.warning("%s holds %d connections, the most one address may "
                            "(max_connections_per_address): its further connections are "
                            "closed until it closes some", address, held)
            return False
        self.open[address] = held + 1
        self.total += 1
        return True

    def release(self, address: str) -> None:
        self.total -= 1
        left = self.open[address] - 1
        if left:
            self.open[address] = left
        else:
            del self.open[address]


class Guard(asyncio.Protocol):
    """aiohttp's protocol for one connection, admitted only while its address has room."""

    def __init__(self, inner: asyncio.Protocol, counts: Counts) -> None:
        self.inner = inner
        self.counts = counts
        self.address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "local"
        if not self.counts.admit(address):
            transport.abort()
            return
        self.address = address
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.address is not None:
            self.counts.release(self.address)
            self.address = None
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class GuardedSite(web.SockSite):
    """aiohttp's site on a listening socket, its connections counted by client address."""

    def __init__(self, runner: web.BaseRunner, sock: Any, counts: Counts, **kwargs: Any) -> None:
        super().__init__(runner, sock, **kwargs)
        self.counts = counts

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        counts = self.counts
        self._server = await asyncio.get_running_loop().create_server(
            lambda: Guard(server(), counts), sock=self._sock, ssl=self._ssl_context,
            backlog=self._backlog)
