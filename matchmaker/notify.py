"""Delivering the webhooks datasets ask for (`config.notify`): when a dataset completes, fails,
or the fraction of its ended attempts that failed crosses a hook's threshold.

Each notification is a POST of a JSON body signed with the matchmaker's Ed25519 key (kept beside
the database as `<database>.notify-key`, made on first start; its public half is served at
`GET /api/v1/notifications/key`), sent by a task of its own: tried again after 1 s, 10 s, 1 min
and 10 min while the receiver does not answer 2xx, and recorded in the dataset's history either
way. A notification is sent after the change it tells of is committed; one still being retried
when the server stops is not sent again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from floe.config.notify import MIN_ENDED, Hook

from .storage import writes
from .storage.database import Batch

if TYPE_CHECKING:
    from .engine import Engine
    from .model import DatasetState

log = logging.getLogger(__name__)

RETRY_AFTER = (1.0, 10.0, 60.0, 600.0)
"""Seconds before each try after the first."""
TIMEOUT = 10.0
"""Seconds one try may take."""


def load_key(database: str | Path) -> Ed25519PrivateKey:
    """The matchmaker's signing key, made (readable by its user only) if there is none."""
    path = Path(f"{database}.notify-key")
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 key; remove it to make a new one")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(handle, "wb") as out:
        out.write(pem)
    return key


def public_pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo
                                         ).decode()


class Notifier:
    """Sends a dataset's notifications as its status and failures change."""

    def __init__(self, engine: Engine, key: Ed25519PrivateKey) -> None:
        self.engine = engine
        self.key = key
        self._tasks: set[asyncio.Task] = set()
        self._ended: dict[int, list[int]] = {}  # by dataset: [attempts ended, of them failed]
        self._rate_sent: set[tuple[int, str]] = set()  # (dataset, url) told of its rate

    def ended(self, dataset: DatasetState, status: str) -> None:
        """The dataset's status is now `status` (committed): tell the hooks that want it."""
        if status in ("complete", "failed"):
            self._send(dataset, status, [h for h in dataset.config.notify if status in h.on])

    def attempt_ended(self, dataset: DatasetState, failed: bool) -> None:
        """An attempt of the dataset ended (committed): judge its failure rate."""
        hooks = [h for h in dataset.config.notify if "failure_rate" in h.on]
        if not hooks:
            return
        counts = self._ended.setdefault(dataset.id, [0, 0])
        counts[0] += 1
        counts[1] += failed
        if counts[0] < MIN_ENDED:
            return
        rate = counts[1] / counts[0]
        due = [h for h in hooks if rate > h.failure_rate
               and (dataset.id, h.url) not in self._rate_sent]
        for hook in due:
            self._rate_sent.add((dataset.id, hook.url))
        self._send(dataset, "failure_rate", due, rate)

    def _send(self, dataset: DatasetState, event: str, hooks: list[Hook],
              rate: float | None = None) -> None:
        if not hooks:
            return
        owner = self.engine.users.get(dataset.user_id)
        counts = self._ended.get(dataset.id)
        body = json.dumps({
            "event": event, "dataset": dataset.id, "description": dataset.config.description,
            "owner": owner.name if owner else None, "status": dataset.status,
            "tasks": dataset.summary(),
            "failure_rate": rate if rate is not None else (
                counts[1] / counts[0] if counts and counts[0] else None),
            "time": time.time()}, separators=(",", ":")).encode()
        for hook in hooks:
            task = asyncio.get_running_loop().create_task(
                self._deliver(dataset.id, dataset.user_id, hook.url, event, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def signed_headers(self, event: str, body: bytes) -> dict[str, str]:
        stamp = str(int(time.time()))
        signature = self.key.sign(stamp.encode() + b"." + body)
        return {"Content-Type": "application/json", "X-Floe-Event": event,
                "X-Floe-Timestamp": stamp,
                "X-Floe-Signature": "ed25519=" + base64.b64encode(signature).decode()}

    async def _deliver(self, dataset_id: int, user_id: int, url: str, event: str,
                       body: bytes) -> None:
        problem = ""
        tries = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            for wait in (0.0, *RETRY_AFTER):
                await asyncio.sleep(wait)
                tries += 1
                try:
                    async with http.post(url, data=body,
                                         headers=self.signed_headers(event, body)) as answer:
                        if 200 <= answer.status < 300:
                            await self._record(dataset_id, user_id, f"{event} sent to {url} "
                                               f"(HTTP {answer.status}, try {tries})")
                            return
                        problem = f"HTTP {answer.status}"
                except (TimeoutError, aiohttp.ClientError, OSError) as err:
                    problem = str(err) or type(err).__name__
                log.info("notification %s of dataset %s to %s: try %d failed: %s", event,
                         dataset_id, url, tries, problem)
        log.warning("notification %s of dataset %s to %s: gave up after %d tries: %s", event,
                    dataset_id, url, tries, problem)
        await self._record(dataset_id, user_id, f"{event} NOT sent to {url}: gave up after "
                                                f"{tries} tries ({problem})")

    async def _record(self, dataset_id: int, user_id: int, detail: str) -> None:
        batch = writes.add_event(Batch(), dataset_id, user_id, "notify", detail,
                                 self.engine.clock())
        try:
            await self.engine.db.write(batch)
        except Exception:  # the server is stopping: the log line above says it
            log.exception("recording a notification of dataset %s failed", dataset_id)

    async def close(self) -> None:
        """Stop the deliveries still being tried."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
