"""A lean HTTP/1.1 keep-alive JSON client for load generation.

The benchmarks drive the matchmaker from the same 2-core machine it runs on, so the load
generator must spend as little CPU per request as possible: one persistent connection per
simulated pilot, requests written as bytes, responses parsed by Content-Length. It is not a
general HTTP client (no chunked bodies, no redirects) and is used only against floe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any


class Connection:
    """One keep-alive connection, from the address `local` when given (a loopback address
    other than 127.0.0.1 stands for another host: the server counts connections by address)."""

    def __init__(self, host: str, port: int, local: str | None = None) -> None:
        self.host = host
        self.port = port
        self.local = local
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, local_addr=None if self.local is None else (self.local, 0))

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()

    async def request(self, method: str, path: str, body: Any = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any]:
        if self.writer is None:
            await self.open()
        payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                f"Content-Length: {len(payload)}"]
        if body is not None:
            head.append("Content-Type: application/json")
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        data = await self.reader.readexactly(length) if length else b""
        return status, json.loads(data) if data else None
