"""A pilot that a test scripts step by step through `pilot.client.Matchmaker` (register, ask,
heartbeat, report, sign off), for tests that need real pilot traffic at a real matchmaker
without running any task."""

from __future__ import annotations

from typing import Any

from floe.config.resources import GIB, Slot
from floe.pilot.client import Matchmaker
from tests.pilot.live import LiveMatchmaker

SLOT = Slot(cpus=1, memory=4 * GIB, disk=4 * GIB)


class ScriptedPilot:
    """One registered pilot of site-a."""

    def __init__(self, matchmaker: LiveMatchmaker, host: str = "node1",
                 resources: dict[str, Any] | None = None) -> None:
        self.client = Matchmaker(matchmaker.url, matchmaker.pilot_token())
        reply = self.client.register(host=host, batch_system="none", batch_id="",
                                     version="test", resources=resources or {})
        assert reply.status == 201, reply.data
        self.pilot_id: int = reply.data["pilot_id"]

    def ask(self) -> dict[str, Any] | None:
        """The attempt the pilot was given, or None when the matchmaker had nothing."""
        reply = self.client.ask(self.pilot_id, SLOT)
        assert reply.status == 200, reply.data
        return reply.data["attempt"]

    def take(self) -> dict[str, Any]:
        attempt = self.ask()
        assert attempt is not None, "the matchmaker had no task for the pilot"
        return attempt

    def heartbeat(self, attempt: dict[str, Any]) -> None:
        reply = self.client.heartbeat(attempt["id"], attempt["passkey"], {"cpu_time": 1.0})
        assert reply.status == 200, reply.data

    def report(self, attempt: dict[str, Any], exit_code: int = 0, **fields: Any) -> None:
        reply = self.client.report(attempt["id"], attempt["passkey"],
                                   {"exit_code": exit_code, **fields})
        assert reply.status == 200 and reply.data["recorded"], reply.data

    def run_one(self, exit_code: int = 0, **fields: Any) -> dict[str, Any]:
        """Take a task and report it ended with `exit_code`; the attempt it was given."""
        attempt = self.take()
        self.report(attempt, exit_code, **fields)
        return attempt

    def upload_log(self, attempt: dict[str, Any], stream: str, text: str) -> None:
        reply = self.client.upload_log(attempt["id"], attempt["passkey"], stream, text.encode())
        assert reply.status == 200, reply.data

    def sign_off(self, reason: str = "no work") -> None:
        reply = self.client.sign_off(self.pilot_id, reason)
        assert reply.status == 200, reply.data
        self.client.close()
