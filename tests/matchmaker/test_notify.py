"""Webhooks, delivered by a real matchmaker to a real HTTP receiver: when a dataset completes,
when it fails, when its failure rate crosses a threshold; signed with the key the API serves,
retried when the receiver fails, and recorded in the dataset's history."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from tests.pilot.live import LiveMatchmaker, wait_for
from tests.pilot.scripted import ScriptedPilot


class Receiver(http.server.ThreadingHTTPServer):
    """Records each POST (headers and body); answers 500 to the first `failing` of them."""

    def __init__(self, failing: int = 0) -> None:
        self.calls: list[dict[str, Any]] = []
        self.failing = failing
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append({"headers": dict(self.headers), "body": body})
                status = 500 if len(outer.calls) <= outer.failing else 204
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(failing=1)
    yield server
    server.shutdown()


def verified(matchmaker: LiveMatchmaker, call: dict[str, Any]) -> dict[str, Any]:
    """The call's body, once its signature is checked with the key the API serves."""
    key = serialization.load_pem_public_key(matchmaker.get("/notifications/key")["key"].encode())
    headers = call["headers"]
    scheme, _, signature = headers["X-Floe-Signature"].partition("=")
    assert scheme == "ed25519"
    key.verify(base64.b64decode(signature),
               headers["X-Floe-Timestamp"].encode() + b"." + call["body"])
    with pytest.raises(InvalidSignature):  # a body changed on the way is caught
        key.verify(base64.b64decode(signature),
                   headers["X-Floe-Timestamp"].encode() + b"." + call["body"] + b" ")
    return json.loads(call["body"])


def test_a_completed_dataset_is_told_once_signed_after_a_failed_try(
        matchmaker: LiveMatchmaker, receiver: Receiver):
    dataset = matchmaker.submit({"jobs": 2, "notify": [{"url": receiver.url}],
                                 "tasks": [{"name": "t", "modules": [{"command": "true"}]}]})
    pilot = ScriptedPilot(matchmaker)
    pilot.run_one()
    pilot.run_one()
    wait_for(lambda: len(receiver.calls) == 2, 30, "the second try")  # the first got a 500
    first, second = receiver.calls
    assert first["body"] == second["body"]
    told = verified(matchmaker, second)
    assert (told["event"], told["dataset"], told["status"], told["owner"]) == (
        "complete", dataset, "complete", "alice")
    assert told["tasks"]["complete"] == 2
    wait_for(lambda: any(e["action"] == "notify" for e in matchmaker.get(
        f"/datasets/{dataset}")["events"]), 30, "the delivery to be recorded")
    [event] = [e for e in matchmaker.get(f"/datasets/{dataset}")["events"]
               if e["action"] == "notify"]
    assert event["detail"] == f"complete sent to {receiver.url} (HTTP 204, try 2)"


def test_a_failure_rate_past_the_threshold_and_a_failed_dataset_are_told(
        matchmaker: LiveMatchmaker):
    receiver = Receiver()
    try:
        dataset = matchmaker.submit({
            "jobs": 30, "max_retries": 0,
            "notify": [{"url": receiver.url, "on": ["failed", "failure_rate"],
                        "failure_rate": 0.25}],
            "tasks": [{"name": "t", "modules": [{"command": "true"}]}]})
        pilot = ScriptedPilot(matchmaker)
        for number in range(30):  # every third fails: a rate of 1/3 from the 20th attempt
            pilot.run_one(exit_code=1 if number % 3 == 0 else 0,
                          error_class="task_error" if number % 3 == 0 else None)
        wait_for(lambda: len(receiver.calls) == 2, 30, "two notifications")
        told = [verified(matchmaker, call) for call in receiver.calls]
        assert [t["event"] for t in told] == ["failure_rate", "failed"]
        assert told[0]["failure_rate"] == pytest.approx(7 / 20)
        assert told[1]["status"] == "failed" and told[1]["tasks"]["failed"] == 10
    finally:
        receiver.shutdown()
    assert matchmaker.get(f"/datasets/{dataset}")["status"] == "failed"
