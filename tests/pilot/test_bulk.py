"""The bulk protocol from the pilot's side, against a real matchmaker: several tasks per ask, many
reports in one request with the next ask riding on it (each report decided on its own, a whole
refusal falling back to one report at a time), and the loop asking in series only while its
tasks are short, with far fewer requests than tasks and every result recorded once."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from floe.config.resources import GIB, Slot
from floe.pilot.client import Ask, Matchmaker, Reply, Unreachable, next_reply
from floe.pilot.loop import Pilot
from floe.pilot.outbox import Delivery, Outbox, Verdict, deliver_many
from floe.pilot.settings import PilotSettings
from floe.pilot.slot import measure
from floe.pilot.workarea import WorkArea

from .live import LiveMatchmaker, wait_for

FREE = Slot(cpus=1, memory=GIB, disk=GIB)
NULL = {"name": "null", "requirements": {"memory": "64MiB", "disk": "1MiB", "walltime": "1m"},
        "modules": [{"command": "true"}]}


class Recording(Matchmaker):
    """A client that counts its requests by route and keeps every ask it made (alone or riding
    on reports)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: Counter[str] = Counter()
        self.asks: list[Ask] = []
        self.reported = 0
        self.answered: list[tuple[str, Ask | None, int]] = []
        """Each ask and report request in order: the route, the ask made, attempts handed."""
        self.dry: list[int] = []
        """The indexes in `answered` of the answers that said `"more": false`."""

    def ask(self, pilot_id: int, offer: Slot | Ask) -> Reply:
        self.sent["ask"] += 1
        if isinstance(offer, Ask):
            self.asks.append(offer)
        return self._answered("ask", offer, super().ask(pilot_id, offer))

    def reports(self, pilot_id: int, reports: Any, ask: Ask | None = None,
                timeout: float | None = None) -> Reply:
        self.sent["reports"] += 1
        self.reported += len(reports)
        if ask is not None:
            self.asks.append(ask)
        return self._answered("reports", ask, super().reports(pilot_id, reports, ask, timeout))

    def _answered(self, route: str, ask: Any, reply: Reply) -> Reply:
        answer = next_reply(reply) if route == "reports" else reply
        handed = len(answer.data.get("attempts") or []) if answer and answer.ok else 0
        if answer and answer.ok and answer.data.get("more") is False:
            self.dry.append(len(self.answered))
        self.answered.append((route, ask if isinstance(ask, Ask) else None, handed))
        return reply

    def calls(self) -> list[str]:
        """`answered` in short: route, in series or not, tasks asked for and handed."""
        return [f"{route} {'-' if ask is None else ('series' if ask.in_series else 'side')} "
                f"{ask.max_tasks if ask else 0} {handed}" for route, ask, handed in self.answered]

    def report(self, *args: Any, **kwargs: Any) -> Reply:
        self.sent["report"] += 1
        return super().report(*args, **kwargs)

    def heartbeats(self, *args: Any, **kwargs: Any) -> Reply:
        self.sent["heartbeats"] += 1
        return super().heartbeats(*args, **kwargs)


def registered(matchmaker: LiveMatchmaker) -> tuple[Matchmaker, int]:
    client = Matchmaker(matchmaker.url, matchmaker.pilot_token())
    reply = client.register(host="node1", batch_system="none", batch_id="", version="test",
                            resources={})
    return client, reply.data["pilot_id"]


def one_cpu_pilot(matchmaker: LiveMatchmaker, tmp_path, client: Recording | None = None,
                  **settings: Any) -> tuple[Pilot, Recording, WorkArea]:
    slot = dataclasses.replace(measure(lifetime=7200, scratch=tmp_path, gpu_source=None),
                               cpus=1)
    work = WorkArea(tmp_path)
    work.open()
    client = client or Recording(matchmaker.url, matchmaker.pilot_token())
    settings.setdefault("idle_timeout", 0.5)
    return Pilot(client, slot, work, PilotSettings(**settings)), client, work


@contextlib.contextmanager
def warm_two_cpu_pilot(matchmaker: LiveMatchmaker, tmp_path, short_jobs: int
                       ) -> Iterator[Recording]:
    """A 2-CPU pilot that runs for the block's time, warm from `short_jobs` tasks that ended at
    once (it knows its tasks are short); then drained, and waited for."""
    short = matchmaker.submit({"jobs": short_jobs, "tasks": [NULL]})
    slot = dataclasses.replace(measure(lifetime=7200, scratch=tmp_path, gpu_source=None),
                               cpus=2)
    work = WorkArea(tmp_path)
    work.open()
    client = Recording(matchmaker.url, matchmaker.pilot_token())
    pilot = Pilot(client, slot, work, PilotSettings(idle_timeout=60))
    thread = threading.Thread(target=pilot.run)
    thread.start()
    try:
        wait_for(lambda: matchmaker.states(short) == ["complete"] * short_jobs, 20,
                 "the short tasks")
        yield client
    finally:
        pilot.drain()
        thread.join(30)
        work.close()


def run_to_the_end(pilot: Pilot, work: WorkArea) -> None:
    """Run the pilot until it leaves; it leaves no lane behind."""
    before = set(threading.enumerate())
    try:
        assert pilot.run() == 0
    finally:
        work.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("lane-")
                and t not in before]


def test_reports_in_one_request_are_each_decided_and_the_ask_riding_on_them_is_answered(
        matchmaker: LiveMatchmaker, tmp_path):
    dataset = matchmaker.submit({"jobs": 5, "tasks": [NULL]})
    client, pilot_id = registered(matchmaker)
    first = client.ask(pilot_id, Ask(FREE, max_tasks=3, in_series=True)).data["attempts"]
    assert len(first) == 3
    outbox = Outbox(tmp_path / "outbox")
    good, stolen, again = (Delivery(a["id"], a["passkey"], {"exit_code": 0}) for a in first)
    stolen.passkey = "not-its-passkey"
    outbox.put_many([good, stolen, again])

    outcomes, answer = deliver_many(client, outbox, pilot_id, [good, stolen, again],
                                    Ask(FREE, max_tasks=5, in_series=True))
    assert [o.verdict for o in outcomes] == [Verdict.DELIVERED, Verdict.VOID, Verdict.DELIVERED]
    assert outcomes[1].words.startswith(f"wrong passkey for attempt {stolen.attempt_id}")
    assert answer is not None and answer.ok
    # Two tasks were left: the stolen one is still out, so only they come.
    assert len(answer.data["attempts"]) == 2

    repeated, nothing = deliver_many(client, outbox, pilot_id, [good])
    assert [(o.verdict, o.words) for o in repeated] == [(Verdict.DELIVERED, "duplicate")]
    assert nothing is None
    assert sorted(matchmaker.states(dataset)) == ["complete"] * 2 + ["processing"] * 3


def test_a_malformed_report_among_good_ones_is_set_apart_and_the_others_are_recorded(
        matchmaker: LiveMatchmaker, tmp_path):
    dataset = matchmaker.submit({"jobs": 2, "tasks": [NULL]})
    client, pilot_id = registered(matchmaker)
    attempts = client.ask(pilot_id, Ask(FREE, max_tasks=2, in_series=True)).data["attempts"]
    outbox = Outbox(tmp_path / "outbox")
    good = Delivery(attempts[0]["id"], attempts[0]["passkey"], {"exit_code": 0})
    bad = Delivery(attempts[1]["id"], attempts[1]["passkey"], {"exit_code": "zero"})
    outbox.put_many([good, bad])

    # The matchmaker refuses the request as a whole; each report then goes on its own.
    outcomes, answer = deliver_many(client, outbox, pilot_id, [good, bad], Ask(FREE))
    assert [o.verdict for o in outcomes] == [Verdict.DELIVERED, Verdict.REJECTED]
    assert outcomes[1].words.startswith("HTTP 400")
    assert answer is not None and answer.status == 400
    assert sorted(matchmaker.states(dataset)) == ["complete", "processing"]


def test_a_busy_pilot_sends_many_reports_per_request_and_records_each_once(
        matchmaker: LiveMatchmaker, tmp_path):
    dataset = matchmaker.submit({"jobs": 120, "tasks": [NULL]})
    pilot, client, work = one_cpu_pilot(matchmaker, tmp_path)
    run_to_the_end(pilot, work)

    assert matchmaker.states(dataset) == ["complete"] * 120
    assert len(matchmaker.attempts(dataset)) == 120
    assert len(pilot.timings) == 120 and client.reported == 120
    assert client.sent["report"] == 0
    # One report request per batch of tasks that ended together, and the asks mostly ride
    # on them: far fewer requests than tasks (the first five come one at a time, until the
    # matchmaker has learned how long they run).
    assert client.sent["reports"] + client.sent["ask"] <= 40, client.sent


def test_a_pilot_asks_in_series_only_once_its_tasks_are_known_to_be_short(
        matchmaker: LiveMatchmaker, tmp_path):
    matchmaker.submit({"jobs": 12, "tasks": [NULL]})
    pilot, client, work = one_cpu_pilot(matchmaker, tmp_path)
    run_to_the_end(pilot, work)
    first, *later = client.asks
    # Nothing is known of the tasks at first: one, side by side in the free CPU.
    assert (first.in_series, first.max_tasks) == (False, 1)
    assert later and all(ask.in_series and ask.max_tasks > 1 for ask in later), client.asks
    # ... about a prefetch horizon of them, by the runtimes the matchmaker learned.
    assert {ask.series_seconds for ask in later} == {pilot.settings.prefetch_horizon}


def test_a_pilot_given_fewer_tasks_than_it_asked_for_asks_again_only_with_their_report(
        matchmaker: LiveMatchmaker, tmp_path):
    # The second ask is in series, for more than the 11 tasks left, and is answered with about
    # half of them and "more": false (the rest is left to other pilots); an ask of its own
    # while they run would find nothing (and, for a single task, hold up its report until
    # answered). The pilot's next ask rides on the report of one that ended.
    matchmaker.submit({"jobs": 12, "tasks": [NULL]})
    pilot, client, work = one_cpu_pilot(matchmaker, tmp_path)
    run_to_the_end(pilot, work)
    assert len(pilot.timings) == 12
    short = [i for i in client.dry if client.answered[i][1].in_series]
    assert short, client.calls()
    for i in short:
        assert client.answered[i + 1][0] == "reports", client.calls()


def test_a_pilot_told_nothing_more_fits_asks_for_its_free_cpus_once_a_task_runs_long(
        matchmaker: LiveMatchmaker, tmp_path):
    # A 2-CPU pilot that knows its tasks are short is handed a long one, with "more": false.
    # Once that task has run past the prefetch horizon (1 s) the pilot asks for its free CPU
    # again, every `wait` (1 s here), so work that comes later runs beside the long task.
    with warm_two_cpu_pilot(matchmaker, tmp_path, 2):
        long = matchmaker.submit({"jobs": 1, "tasks": [
            dict(NULL, modules=[{"command": "sleep 10"}])]})
        wait_for(lambda: matchmaker.states(long) == ["processing"], 10, "the long task")
        time.sleep(1.5)
        later = matchmaker.submit({"jobs": 3, "tasks": [NULL]})
        wait_for(lambda: matchmaker.states(later) == ["complete"] * 3, 6,
                 "the later tasks to run beside the long one")
        assert matchmaker.states(long) == ["processing"]


def test_a_pilot_warm_from_short_tasks_starts_a_new_datasets_tasks_on_all_its_cpus(
        matchmaker: LiveMatchmaker, tmp_path):
    # Its series ask gets one task of the new dataset (expected to run its walltime, it fills
    # the prefetch horizon alone), which starts on a free CPU; the answer does not say that
    # nothing more fits, so the pilot asks again for its other CPU at once.
    with warm_two_cpu_pilot(matchmaker, tmp_path, 6) as client:
        slow = matchmaker.submit({"jobs": 4, "tasks": [
            dict(NULL, modules=[{"command": "sleep 1"}])]})
        wait_for(lambda: matchmaker.states(slow) == ["complete"] * 4, 20, "the slow tasks")
    spans = [(a["started"], a["ended"]) for a in matchmaker.attempts(slow)]
    assert len(spans) == 4
    assert any(start < other_end and other_start < end
               for i, (start, end) in enumerate(spans)
               for other_start, other_end in spans[i + 1:]), (spans, client.calls())


def test_a_pilot_answered_nothing_in_series_while_its_task_runs_waits_for_its_report(
        matchmaker: LiveMatchmaker, tmp_path):
    # Handed the only task that fits it, beside one ready that no slot here fits, the pilot
    # is not told that nothing more fits (a task is ready) and asks once more; answered
    # nothing, it asks next with the report of its task, not every `wait` (1 s here) while it
    # runs.
    short = matchmaker.submit({"jobs": 6, "tasks": [NULL]})
    pilot, client, work = one_cpu_pilot(matchmaker, tmp_path, idle_timeout=2)
    thread = threading.Thread(target=run_to_the_end, args=(pilot, work))
    thread.start()
    try:
        wait_for(lambda: matchmaker.states(short) == ["complete"] * 6, 20, "the short tasks")
        matchmaker.submit({"jobs": 1, "tasks": [dict(NULL, requirements={"memory": "900GiB"})]})
        before = len(client.answered)
        slow = matchmaker.submit({"jobs": 1, "tasks": [
            dict(NULL, modules=[{"command": "sleep 8"}])]})
        wait_for(lambda: matchmaker.states(slow) == ["complete"], 30, "the slow task")
    finally:
        thread.join(30)
    calls = client.calls()[before:]
    handed = next(i for i, call in enumerate(calls) if call.endswith(" 1"))
    reported = next(i for i, call in enumerate(calls) if call.startswith("reports"))
    assert handed < reported and reported - handed <= 2, calls  # one empty ask at most


def test_a_pilot_that_gave_back_its_queue_behind_a_long_task_stops_queueing(
        matchmaker: LiveMatchmaker, tmp_path):
    # Warm from short tasks, the pilot queues tasks of a dataset whose first six end at once
    # and the rest turn out to run 2 s each; once the first of those has run five horizons
    # (0.3 s each) the queue is given back, and from then on it asks for one task at a time:
    # nothing is given back twice.
    matchmaker.submit({"jobs": 3, "tasks": [NULL]})
    pilot, client, work = one_cpu_pilot(matchmaker, tmp_path, idle_timeout=3,
                                        prefetch_horizon=0.3)
    unqueue, gave_back_at = pilot.lanes.unqueue, []

    def unqueue_marked() -> list:
        gave_back_at.append(len(client.answered))
        return unqueue()

    pilot.lanes.unqueue = unqueue_marked
    thread = threading.Thread(target=run_to_the_end, args=(pilot, work))
    thread.start()
    try:
        wait_for(lambda: pilot.counts["ok"] == 3, 20, "the short tasks")
        before = len(client.answered)
        slow = matchmaker.submit({"jobs": 10, "tasks": [
            dict(NULL, modules=[{"command": "if [ $args(job) -ge 6 ]; then sleep 2; fi"}])]})
        wait_for(lambda: matchmaker.states(slow) == ["complete"] * 10, 40, "the slow tasks")
    finally:
        thread.join(30)
    given_back = [a for a in matchmaker.attempts(slow) if a["state"] == "reset"]
    assert given_back and all(a["error_class"] == "not_run" for a in given_back)
    assert len({a["task_id"] for a in given_back}) == len(given_back), given_back
    calls = client.calls()
    assert len(gave_back_at) == 1, (gave_back_at, calls)
    # The slow tasks were queued (learned as short from the six before them) ...
    assert any(call.split()[1] == "series" and int(call.split()[3]) > 1
               for call in calls[before:gave_back_at[0]]), calls
    # ... and once given back, the pilot asked for one task at a time, side by side.
    later = [call for call in calls[gave_back_at[0]:] if call.split()[1] != "-"]
    assert later and all(call.split()[1] == "side" for call in later), calls


def test_a_pilot_with_long_tasks_never_queues_any(matchmaker: LiveMatchmaker, tmp_path):
    matchmaker.submit({"jobs": 3, "tasks": [dict(NULL, modules=[{"command": "sleep 0.6"}])]})
    pilot, client, work = one_cpu_pilot(matchmaker, tmp_path)
    run_to_the_end(pilot, work)
    assert len(pilot.timings) == 3
    assert all(not ask.in_series and ask.max_tasks == 1 for ask in client.asks), client.asks


def test_a_pilot_told_not_to_prefetch_never_queues(matchmaker: LiveMatchmaker, tmp_path):
    matchmaker.submit({"jobs": 5, "tasks": [NULL]})
    pilot, client, work = one_cpu_pilot(matchmaker, tmp_path, prefetch_horizon=0)
    run_to_the_end(pilot, work)
    assert len(pilot.timings) == 5
    assert all(not ask.in_series for ask in client.asks), client.asks


def test_a_kill_for_a_queued_attempt_drops_it_and_the_others_go_on_waiting(
        matchmaker: LiveMatchmaker, tmp_path):
    voided = matchmaker.submit({"jobs": 1, "tasks": [NULL]})
    kept = matchmaker.submit({"jobs": 2, "tasks": [NULL]})
    pilot, client, work = one_cpu_pilot(matchmaker, tmp_path)
    try:
        pilot._register(pilot.clock())
        answer = client.ask(pilot.pilot_id, Ask(FREE, max_tasks=3, in_series=True))
        pilot._answered(answer, pilot.clock(), pilot.clock(), Ask(FREE, 3, True), 3600)
        assert len(pilot.lanes.queue) == 3
        status, _ = matchmaker.api("POST", f"/datasets/{voided}/reset", {"scope": "all"})
        assert status == 200

        pilot.heartbeat.due = 0.0
        pilot._send_heartbeats(pilot.clock())
        assert client.sent["heartbeats"] == 1
        assert sorted(held.label.split()[1] for held in pilot.lanes.queue) == [str(kept)] * 2
        assert pilot.counts["void"] == 1
    finally:
        work.close()


def test_an_idle_registered_pilot_keeps_itself_alive_with_an_empty_heartbeat(
        matchmaker: LiveMatchmaker, tmp_path):
    pilot, client, work = one_cpu_pilot(matchmaker, tmp_path)
    try:
        pilot._register(pilot.clock())
        assert pilot.heartbeat.due > pilot.clock()
        pilot._send_heartbeats(pilot.clock())
        assert client.sent["heartbeats"] == 0  # not yet due
        pilot.heartbeat.due = 0.0
        pilot._send_heartbeats(pilot.clock())
        assert client.sent["heartbeats"] == 1
        assert pilot.heartbeat.due > pilot.clock()
    finally:
        work.close()


def test_an_idle_pilot_that_has_asked_within_the_interval_sends_no_heartbeat(
        matchmaker: LiveMatchmaker, tmp_path):
    """Its held asks keep it alive (the matchmaker hears an ask as a heartbeat, and `hold` says
    that the pilot holds no attempt): the empty heartbeat goes out only when no held ask came
    for a whole interval, and not at all after an ask that was not held."""
    pilot, client, work = one_cpu_pilot(matchmaker, tmp_path, idle_timeout=60)
    try:
        pilot._register(pilot.clock())
        pilot._hold_asks = 1  # held for a second at most
        pilot.heartbeat.due = 0.0  # overdue: but for the held ask, a heartbeat would go now
        pilot._register_or_ask(pilot.clock())
        assert client.asks[-1].hold == 1 and not pilot.lanes.busy  # nothing queued
        pilot._send_heartbeats(pilot.clock())
        assert client.sent["heartbeats"] == 0 and pilot.heartbeat.due > pilot.clock()
        pilot._send_heartbeats(pilot.heartbeat.due)  # no held ask for a whole interval
        assert client.sent["heartbeats"] == 1

        pilot._hold_asks = 0  # asks that are not held: the heartbeat is what says it
        pilot._next_ask = 0.0
        due = pilot.heartbeat.due
        pilot._register_or_ask(pilot.clock())
        assert client.sent["ask"] == 2 and client.asks[-1].hold == 0
        assert pilot.heartbeat.due == due  # not put off by that ask
        pilot._send_heartbeats(due)
        assert client.sent["heartbeats"] == 2
    finally:
        work.close()


def test_work_that_a_held_ask_brings_gets_its_first_heartbeat_an_interval_after_that_ask(
        matchmaker: LiveMatchmaker, tmp_path):
    """The held ask was heard as the pilot's heartbeat and said that it held nothing: the
    attempts it brings need no heartbeat at once (one request fewer each time an idle pilot
    gets work), only an interval after the ask."""
    pilot, client, work = one_cpu_pilot(matchmaker, tmp_path, idle_timeout=60)
    try:
        pilot._register(pilot.clock())
        pilot._hold_asks = 1
        matchmaker.submit({"jobs": 1, "tasks": [NULL]})
        pilot.heartbeat.due = 0.0  # overdue: but for the held ask, a heartbeat would go now
        pilot._register_or_ask(pilot.clock())
        assert client.asks[-1].hold == 1 and pilot.lanes.held  # it brought the task
        pilot._send_heartbeats(pilot.clock())
        assert client.sent["heartbeats"] == 0
        assert pilot.clock() < pilot.heartbeat.due <= pilot.clock() + pilot.heartbeat.interval
        pilot._send_heartbeats(pilot.heartbeat.due)
        assert client.sent["heartbeats"] == 1
    finally:
        work.close()


class ReportsLostForAWhile(Recording):
    """A client whose bulk reports do not get through until `until` (a proxy that drops them),
    while its heartbeats do; it keeps what each heartbeat said the pilot was reporting."""

    def __init__(self, *args: Any, until: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.until = until
        self.reporting: list[list[int]] = []

    def reports(self, *args: Any, **kwargs: Any) -> Reply:
        if time.monotonic() < self.until:
            raise Unreachable("the proxy dropped it")
        return super().reports(*args, **kwargs)

    def heartbeats(self, pilot_id: int, attempts: Any, reporting: Any = None,
                   timeout: float | None = None) -> Reply:
        self.reporting.append(list(reporting or []))
        return super().heartbeats(pilot_id, attempts, reporting, timeout)


def test_an_attempt_whose_report_waits_is_held_in_the_heartbeat_and_its_result_kept(
        matchmaker: LiveMatchmaker, tmp_path):
    """The matchmaker resets an attempt that the pilot's heartbeat does not hold: one that has
    ended and whose report cannot get through yet is held, in `reporting`."""
    dataset = matchmaker.submit({"jobs": 1, "tasks": [NULL]})
    interval = 5  # tests.pilot.live.SETTINGS
    client = ReportsLostForAWhile(matchmaker.url, matchmaker.pilot_token(),
                                  until=time.monotonic() + 2.5 * interval)
    pilot, _, work = one_cpu_pilot(matchmaker, tmp_path, client=client)
    run_to_the_end(pilot, work)
    (attempt,) = matchmaker.attempts(dataset)
    assert attempt["state"] == "complete"
    assert [attempt["attempt_id"]] in client.reporting
    assert matchmaker.states(dataset) == ["complete"]


def test_reports_acknowledged_at_once_cost_no_sync_and_those_that_wait_are_synced(
        matchmaker: LiveMatchmaker, tmp_path, monkeypatch):
    from .test_outbox import Syncs
    syncs = Syncs(monkeypatch)
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    dataset = matchmaker.submit({"jobs": 3, "tasks": [NULL]})
    pilot, client, work = one_cpu_pilot(matchmaker, tmp_path / "first")
    run_to_the_end(pilot, work)
    assert matchmaker.states(dataset) == ["complete"] * 3
    assert (syncs.files, syncs.directories) == ([], 0)

    dataset = matchmaker.submit({"jobs": 1, "tasks": [NULL]})
    client = ReportsLostForAWhile(matchmaker.url, matchmaker.pilot_token(),
                                  until=time.monotonic() + 1.0)
    pilot, _, work = one_cpu_pilot(matchmaker, tmp_path / "second", client=client)
    run_to_the_end(pilot, work)
    assert matchmaker.states(dataset) == ["complete"]
    assert len(syncs.files) == 1 and syncs.files[0].endswith(".json") and syncs.directories == 1
