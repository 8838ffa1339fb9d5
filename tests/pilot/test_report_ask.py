"""A busy pilot asks for its next task inside the report of the last one, against a real
matchmaker: the client's combined call, and the loop needing one request per task (no separate
ask while tasks keep coming), every result still recorded once."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from config.resources import GIB, Slot
from pilot.client import Matchmaker, Reply, next_reply
from pilot.loop import Pilot, PilotSettings
from pilot.slot import measure
from pilot.workarea import WorkArea

from .live import LiveMatchmaker

FREE = Slot(cpus=1, memory=GIB, disk=GIB)
NULL = {"name": "null", "requirements": {"memory": "64MiB", "disk": "1MiB"},
        "modules": [{"command": "true"}]}


class Counting(Matchmaker):
    """A client that counts its requests: plain asks, and reports with and without an ask."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: Counter[str] = Counter()

    def ask(self, pilot_id: int, offer: Slot) -> Reply:
        self.sent["ask"] += 1
        return super().ask(pilot_id, offer)

    def report(self, attempt_id: int, passkey: str, report: Any,
               timeout: float | None = None, ask: Slot | None = None) -> Reply:
        self.sent["report+ask" if ask is not None else "report"] += 1
        return super().report(attempt_id, passkey, report, timeout, ask)


def test_a_report_with_ask_answers_the_next_task_and_a_refused_one_asks_nothing(
        matchmaker: LiveMatchmaker):
    matchmaker.submit({"jobs": 2, "tasks": [NULL]})
    client = Matchmaker(matchmaker.url, matchmaker.pilot_token())
    me = client.register(host="node1", batch_system="none", batch_id="", version="test",
                         resources={}).data
    first = client.ask(me["pilot_id"], FREE).data["attempt"]
    reply = client.report(first["id"], first["passkey"], {"exit_code": 0}, ask=FREE)
    assert reply.ok and reply.data["task_state"] == "complete"
    following = next_reply(reply)
    assert following is not None and following.ok
    second = following.data["attempt"]
    assert second["id"] != first["id"] and second["passkey"]
    refused = client.report(second["id"], "not-its-passkey", {"exit_code": 0}, ask=FREE)
    assert refused.status == 403 and next_reply(refused) is None
    last = client.report(second["id"], second["passkey"], {"exit_code": 0}, ask=FREE)
    nothing = next_reply(last)
    assert nothing.ok and nothing.data["attempt"] is None and nothing.data["wait"] > 0


def test_a_busy_pilot_needs_one_request_per_task(matchmaker: LiveMatchmaker, tmp_path):
    dataset = matchmaker.submit({"jobs": 8, "tasks": [NULL]})
    slot = dataclasses.replace(measure(lifetime=7200, scratch=tmp_path, gpu_source=None),
                               cpus=1)
    work = WorkArea(tmp_path)
    work.open()
    client = Counting(matchmaker.url, matchmaker.pilot_token())
    pilot = Pilot(client, slot, work, PilotSettings(idle_timeout=0.5))
    try:
        assert pilot.run() == 0
    finally:
        work.close()
    assert matchmaker.states(dataset) == ["complete"] * 8
    assert len(matchmaker.attempts(dataset)) == 8
    assert len(pilot.timings) == 8
    # Each report asked for the next task; only the first task was asked for on its own (and
    # perhaps once more after the last report's "no work", before the idle timeout).
    assert client.sent["report+ask"] == 8 and client.sent["report"] == 0
    assert client.sent["ask"] in (1, 2), client.sent
