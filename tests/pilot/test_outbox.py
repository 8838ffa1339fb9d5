"""The outbox: reports kept on disk (atomically) until a real matchmaker acknowledges them, full
logs beside them, and what each answer of the matchmaker makes of a kept report."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from floe.config.resources import GIB, Slot
from floe.pilot.client import Matchmaker
from floe.pilot.outbox import Delivery, Outbox, Verdict, deliver

from .live import LiveMatchmaker

REPORT = {"exit_code": 0, "error_class": None, "statistics": {"events": 5},
          "stdout_tail": "done\n"}


def handed_out(matchmaker: LiveMatchmaker) -> tuple[Matchmaker, dict]:
    """A client of a registered pilot, and an attempt the matchmaker handed it."""
    matchmaker.submit({"jobs": 1, "tasks": [{"name": "work", "modules": [{"command": "true"}]}]})
    client = Matchmaker(matchmaker.url, matchmaker.pilot_token())
    pilot_id = client.register(host="node1", batch_system="none", batch_id="", version="test",
                               resources={}).data["pilot_id"]
    attempt = client.ask(pilot_id, Slot(cpus=1, memory=4 * GIB, disk=4 * GIB)).data["attempt"]
    assert attempt is not None
    return client, attempt


def test_a_kept_report_is_found_by_the_next_outbox_on_the_directory(tmp_path):
    Outbox(tmp_path / "outbox").put(12, "passkey-12", REPORT)
    [kept] = Outbox(tmp_path / "outbox").pending()
    assert (kept.attempt_id, kept.passkey, kept.report) == (12, "passkey-12", REPORT)
    assert os.listdir(tmp_path / "outbox") == ["12.json"]
    assert (tmp_path / "outbox").stat().st_mode & 0o777 == 0o700


def test_reports_kept_together_share_one_file_until_every_one_is_settled(tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    batch = [Delivery(n, f"pk-{n}", dict(REPORT, exit_code=n)) for n in (7, 5, 6)]
    outbox.put_many(batch)
    assert os.listdir(tmp_path / "outbox") == ["5.json"]
    kept = Outbox(tmp_path / "outbox").pending()
    assert [(k.attempt_id, k.passkey, k.report["exit_code"]) for k in kept] == [
        (5, "pk-5", 5), (6, "pk-6", 6), (7, "pk-7", 7)]

    outbox.remove(batch[0])
    outbox.set_aside(batch[1], "HTTP 400: no")
    assert sorted(os.listdir(tmp_path / "outbox")) == ["5.json", "rejected"]
    # A pilot killed now delivers the batch again: the settled ones come back as duplicates.
    assert len(Outbox(tmp_path / "outbox").pending()) == 3
    outbox.remove(batch[2])
    assert os.listdir(tmp_path / "outbox") == ["rejected"]


def test_a_report_kept_by_a_pilot_of_the_previous_release_is_still_delivered(tmp_path):
    (tmp_path / "outbox").mkdir()
    (tmp_path / "outbox" / "4.json").write_text(json.dumps(
        {"attempt_id": 4, "passkey": "pk", "report": REPORT, "logs": {}, "written": 1.0}))
    outbox = Outbox(tmp_path / "outbox")
    [kept] = outbox.pending()
    assert (kept.attempt_id, kept.passkey, kept.report) == (4, "pk", REPORT)
    outbox.remove(kept)
    assert os.listdir(tmp_path / "outbox") == []


def test_long_logs_move_in_beside_their_report_and_go_with_it(tmp_path):
    log = tmp_path / "floe.stdout.log"
    log.write_text("line\n" * 100_000)
    outbox = Outbox(tmp_path / "outbox")
    delivery = outbox.put(3, "pk", REPORT, {"stdout": log})
    assert not log.exists()
    assert outbox.log_bytes(delivery, "stdout") == b"line\n" * 100_000
    assert outbox.log_bytes(delivery, "stderr") is None
    outbox.remove(delivery)
    assert os.listdir(tmp_path / "outbox") == []


def test_an_unreadable_entry_is_set_aside_not_retried(tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    (tmp_path / "outbox" / "9.json").write_text("{trunc")
    assert outbox.pending() == []
    assert os.listdir(tmp_path / "outbox" / "rejected") == ["9.json"]


def test_a_report_is_recorded_once_and_a_repeat_is_acknowledged_as_a_duplicate(
        matchmaker: LiveMatchmaker, tmp_path):
    client, attempt = handed_out(matchmaker)
    outbox = Outbox(tmp_path / "outbox")
    delivery = outbox.put(attempt["id"], attempt["passkey"], REPORT)
    assert deliver(client, outbox, delivery) == (Verdict.DELIVERED, "complete")
    assert deliver(client, outbox, delivery) == (Verdict.DELIVERED, "duplicate")
    assert matchmaker.statistic(attempt["dataset"], "events")["count"] == 1


def test_a_report_with_another_attempts_passkey_is_void(matchmaker: LiveMatchmaker, tmp_path):
    client, attempt = handed_out(matchmaker)
    outbox = Outbox(tmp_path / "outbox")
    verdict, words = deliver(client, outbox, outbox.put(attempt["id"], "stolen", REPORT))
    assert verdict is Verdict.VOID
    assert words.startswith(f"wrong passkey for attempt {attempt['id']}")


def test_a_report_waits_while_the_matchmaker_is_down(matchmaker: LiveMatchmaker, tmp_path):
    client, attempt = handed_out(matchmaker)
    outbox = Outbox(tmp_path / "outbox")
    delivery = outbox.put(attempt["id"], attempt["passkey"], REPORT)
    matchmaker.stop()
    verdict, words = deliver(client, outbox, delivery)
    assert verdict is Verdict.RETRY and "Connection refused" in words
    matchmaker.start()
    assert deliver(client, outbox, delivery)[0] is Verdict.DELIVERED


def test_a_report_the_matchmaker_finds_malformed_is_set_aside_with_the_reason(
        matchmaker: LiveMatchmaker, tmp_path):
    client, attempt = handed_out(matchmaker)
    outbox = Outbox(tmp_path / "outbox")
    delivery = outbox.put(attempt["id"], attempt["passkey"], {"exit_code": "zero"})
    verdict, words = deliver(client, outbox, delivery)
    assert verdict is Verdict.REJECTED and words.startswith("HTTP 400")
    outbox.set_aside(delivery, words)
    assert outbox.pending() == []
    aside = tmp_path / "outbox" / "rejected"
    assert json.loads((aside / f"{attempt['id']}.json").read_text())["report"] == \
        {"exit_code": "zero"}
    assert (aside / f"{attempt['id']}.why").read_text() == words + "\n"


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_full_log_goes_up_before_the_report(matchmaker: LiveMatchmaker, tmp_path, stream):
    client, attempt = handed_out(matchmaker)
    log = tmp_path / "task.log"
    log.write_text("".join(f"event {n}\n" for n in range(50_000)))
    outbox = Outbox(tmp_path / "outbox")
    delivery = outbox.put(attempt["id"], attempt["passkey"], REPORT, {stream: log})
    assert deliver(client, outbox, delivery)[0] is Verdict.DELIVERED
    request = urllib.request.Request(
        f"{matchmaker.url}/api/v1/attempts/{attempt['id']}/logs/{stream}",
        headers={"Authorization": f"Bearer {matchmaker.user_token}"})
    with urllib.request.urlopen(request) as answer:
        assert answer.headers["X-Floe-Log-Complete"] == "1"
        assert answer.read().decode() == "".join(f"event {n}\n" for n in range(50_000))


class Syncs:
    """Counts the outbox's file and directory syncs (and still makes them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import floe.pilot.outbox as outbox_module
        self.files: list[str] = []
        self.directories = 0
        datasync, sync_directory = outbox_module._datasync, outbox_module._sync_directory

        def counted_datasync(handle: int) -> None:
            self.files.append(os.path.basename(os.readlink(f"/proc/self/fd/{handle}")))
            datasync(handle)

        def counted_sync_directory(directory) -> None:
            self.directories += 1
            sync_directory(directory)

        monkeypatch.setattr(outbox_module, "_datasync", counted_datasync)
        monkeypatch.setattr(outbox_module, "_sync_directory", counted_sync_directory)


def test_a_batch_written_for_sending_is_synced_only_if_it_is_still_kept(tmp_path, monkeypatch):
    syncs = Syncs(monkeypatch)
    outbox = Outbox(tmp_path / "outbox")
    sent = [Delivery(n, f"pk-{n}", REPORT) for n in (1, 2)]
    outbox.put_many(sent, durable=False)
    assert [d.attempt_id for d in Outbox(tmp_path / "outbox").pending()] == [1, 2]
    for delivery in sent:
        outbox.remove(delivery)
    outbox.sync()
    assert (syncs.files, syncs.directories) == ([], 0)

    waiting = [Delivery(n, f"pk-{n}", REPORT) for n in (3, 4)]
    outbox.put_many(waiting, durable=False)
    outbox.remove(waiting[0])  # one of the two is acknowledged, the other waits
    outbox.sync()
    assert (syncs.files, syncs.directories) == (["3.json"], 1)
    outbox.sync()  # nothing new to sync
    assert (syncs.files, syncs.directories) == (["3.json"], 1)
    assert [d.attempt_id for d in Outbox(tmp_path / "outbox").pending()] == [3, 4]

    outbox.put_many([Delivery(5, "pk-5", REPORT)])  # durable: synced before it is called kept
    assert syncs.files[-1].startswith(".5.") and syncs.directories == 2  # the temporary file
