"""A report that also asks for the pilot's next task: over HTTP (the combined answer, stale and
wrong passkeys refusing both parts, failed reports, no-work answers, the OpenAPI document) and
on the engine (the fair-share order is the one that a report followed by an ask gives)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import sqlite3
import time

import psutil
import pytest

from floe.config.settings import server_settings
from floe.matchmaker import dispatch, recording
from floe.matchmaker.api.framework import AUTH
from floe.matchmaker.engine import Engine
from floe.matchmaker.storage.database import Database

from . import support as s
from .support import FREE, Clock


async def report(world, attempt, body, token: str | None = ""):
    """Report on `attempt` with its passkey and (unless told otherwise) the pilot's token."""
    return await world.api.call("POST", f"/api/v1/attempts/{attempt['id']}/report",
                                world.pilot_key if token == "" else token, body,
                                passkey=attempt["passkey"])


async def attempt_row(world, attempt_id):
    return await world.engine.db.fetchone(
        "SELECT state, pilot_id, task_id FROM attempts WHERE attempt_id = ?", (attempt_id,))


async def test_a_report_with_ask_records_the_outcome_and_answers_the_next_dispatch(world):
    _, given = await world.ask()
    first = given["attempt"]
    status, answer = await report(world, first, {"exit_code": 0, "usage": {"wall_time": 2.0},
                                                 "ask": FREE})
    assert status == 200, answer
    following = answer.pop("next")
    assert answer == {"recorded": True, "duplicate": False, "task_state": "complete",
                      "reason": None}
    second = following["attempt"]
    # Exactly what the ask route hands out: the same keys, a fresh passkey, another task.
    _, plain = await world.ask()
    assert set(second) == set(plain["attempt"])
    assert second["passkey"] not in (first["passkey"], plain["attempt"]["passkey"])
    assert second["task_id"] != first["task_id"]
    # Both are committed before the answer: the outcome and the new attempt, of this pilot.
    assert (await attempt_row(world, first["id"]))["state"] == "complete"
    row = await attempt_row(world, second["id"])
    assert (row["state"], row["pilot_id"], row["task_id"]) == \
        ("processing", world.pilot, second["task_id"])
    # The new attempt's passkey is live, and its own report may ask again.
    status, _ = await world.api.call("POST", f"/api/v1/attempts/{second['id']}/heartbeat", None,
                                     {"usage": {"cpu_time": 1.0}}, passkey=second["passkey"])
    assert status == 200
    status, answer = await report(world, second, {"exit_code": 0, "ask": FREE})
    assert status == 200 and answer["next"]["attempt"]["id"] > plain["attempt"]["id"]


async def test_a_stale_or_wrong_passkey_refuses_both_the_report_and_the_ask(world):
    _, given = await world.ask()
    attempt = given["attempt"]
    matches = world.engine.metrics.matches
    status, answer = await world.api.call(
        "POST", f"/api/v1/attempts/{attempt['id']}/report", world.pilot_key,
        {"exit_code": 0, "ask": FREE}, passkey="not-the-passkey")
    assert status == 403 and "wrong passkey" in answer["error"] and "next" not in answer
    status, _ = await world.api.call("POST", f"/api/v1/datasets/{world.dataset}/reset",
                                     world.owner, {"scope": "all"})
    assert status == 200
    status, answer = await report(world, attempt, {"exit_code": 0, "ask": FREE})
    assert status == 409 and "is void" in answer["error"] and "next" not in answer
    assert world.engine.metrics.matches == matches
    assert not world.engine.pilots[world.pilot].attempts


async def test_a_failed_report_may_ask_too(world):
    _, given = await world.ask()
    attempt = given["attempt"]
    status, answer = await report(world, attempt, {"exit_code": 3, "error_message": "bad input",
                                                   "ask": FREE})
    assert status == 200, answer
    assert answer["task_state"] == "ready" and "retry 1 of" in answer["reason"]
    assert (await attempt_row(world, attempt["id"]))["state"] == "failed"
    assert answer["next"]["attempt"]["passkey"]


async def test_the_next_part_says_no_work_as_the_ask_route_does(world):
    # Take every task of the world's dataset, then report the last one asking for more.
    taken = []
    while True:
        _, given = await world.ask()
        if given["attempt"] is None:
            break
        taken.append(given["attempt"])
    for attempt in taken[:-1]:
        status, _ = await report(world, attempt, {"exit_code": 0})
        assert status == 200
    status, answer = await report(world, taken[-1], {"exit_code": 0, "ask": FREE})
    assert status == 200 and answer["task_state"] == "complete"
    _, plain = await world.ask()
    assert plain["attempt"] is None and answer["next"] == plain
    assert answer["next"]["wait"] > 0 and answer["next"]["reason"]
    # With work queued but a slot too small for it, the ask route's sentence about that.
    status, more = await world.api.call("POST", "/api/v1/datasets", world.owner,
                                        s.config(jobs=2))
    assert status == 201
    await world.wait_created(more["id"])
    _, given = await world.ask()
    status, answer = await report(world, given["attempt"],
                                  {"exit_code": 0, "ask": dict(FREE, memory=2**20)})
    assert status == 200 and answer["next"]["attempt"] is None
    assert "none fits this slot" in answer["next"]["reason"]


async def test_the_ask_part_needs_the_pilots_own_token_and_the_report_is_recorded_anyway(world):
    refusals = []
    for token in (None, "floe_p_nonsense", world.other_pilot_key, world.owner):
        _, given = await world.ask()
        status, answer = await report(world, given["attempt"], {"exit_code": 0, "ask": FREE},
                                      token)
        assert status == 200 and answer["task_state"] == "complete", answer
        assert set(answer["next"]) == {"error", "status"}
        refusals.append(answer["next"]["status"])
    assert refusals == [401, 401, 403, 403]
    # An expired token: the report is recorded, the ask refused as the ask route refuses it.
    (token,), _ = await world.app[AUTH].pilot_tokens(world.site_a, 60)
    status, pilot = await world.api.call("POST", "/api/v1/pilots", token, {"host": "n3"})
    with_expiry = pilot["key"]  # which expires with the token it registered with
    status, given = await world.ask(with_expiry, pilot["pilot_id"])
    world.engine.clock = lambda: time.time() + 120
    status, answer = await report(world, given["attempt"], {"exit_code": 0, "ask": FREE},
                                  with_expiry)
    assert status == 200 and answer["task_state"] == "complete"
    assert answer["next"]["status"] == 401 and "expired" in answer["next"]["error"]


async def test_a_signed_off_pilots_duplicate_report_says_it_has_ended(world):
    _, given = await world.ask()
    attempt = given["attempt"]
    status, answer = await report(world, attempt, {"exit_code": 0})
    assert status == 200
    status, _ = await world.api.call("POST", f"/api/v1/pilots/{world.pilot}/exit",
                                     world.pilot_key, {"reason": "idle"})
    assert status == 200
    status, answer = await report(world, attempt, {"exit_code": 0, "ask": FREE})
    assert status == 200 and answer["duplicate"] is True
    assert answer["next"]["status"] == 404
    assert f"pilot {world.pilot} has ended" in answer["next"]["error"]


async def test_the_openapi_document_describes_ask_and_next(world):
    _, document = await world.api.call("GET", "/api/v1/openapi.json")
    op = document["paths"]["/api/v1/attempts/{attempt_id}/report"]["post"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    _, ask_op = next(iter(document["paths"]["/api/v1/pilots/{pilot_id}/ask"].items()))
    slot = ask_op["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["ask"]["properties"] == slot["properties"]
    answer = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert "next" in answer["properties"] and "ask" in op["description"]


async def run_pilots(engine: Engine, clock: Clock, combined: bool, hours: float) -> list:
    """Single-CPU pilots on three users' work (shares 1:1:2) for `hours` of simulated time;
    each reports and then asks, or asks inside its report (`combined`). Returns the sequence
    of (pilot, dataset, task id) handed out."""
    site = await s.site(engine)
    users = [await s.user(engine, name, share=share)
             for name, share in (("alice", 1), ("bob", 1), ("carol", 2))]
    datasets = [await s.submit(engine, u, s.config(jobs=500)) for u in users]
    durations = dict(zip((d.id for d in datasets), (240.0, 420.0, 330.0), strict=True))
    pilots = [await s.pilot(engine, site, f"node{i}") for i in range(6)]
    handed = []
    events = [(clock.now, i, None) for i in range(len(pilots))]
    end = clock.now + hours * 3600
    while events:
        when, index, running = heapq.heappop(events)
        if when > end:
            break
        clock.now = when
        outcome = None if running is None else s.success(durations[running.dataset.id])
        if running is not None and combined:
            _, given = await recording.report_and_ask(
                engine, running.attempt_id, running.passkey, outcome, s.slot().to_dict(),
                pilots[index].pilot_id)
        else:
            if running is not None:
                await recording.report(engine, running.attempt_id, running.passkey, outcome)
            given = await s.ask(engine, pilots[index])
        if isinstance(given, dispatch.Dispatch):
            handed.append((index, given.dataset.id, given.task_id))
            heapq.heappush(events, (when + durations[given.dataset.id], index, given))
        else:
            heapq.heappush(events, (when + 60, index, None))
    return handed


async def test_asking_inside_reports_keeps_the_fair_share_order(engine, clock, tmp_path):
    separate = await run_pilots(engine, clock, combined=False, hours=3)
    settings = server_settings({"database": str(tmp_path / "second.sqlite")})
    db = await Database.open(settings.database)
    second_clock = Clock()
    other = Engine(db, settings, second_clock)
    await other.load()
    try:
        combined = await run_pilots(other, second_clock, combined=True, hours=3)
    finally:
        await other.stop()
        await db.close()
    assert len(separate) > 100
    assert combined == separate


# -- one commit for both, and undoing both when it fails ---------------------------------------

def two_steps(jobs: int = 2):
    """A job of two tasks, the second bigger than a one-CPU slot."""
    return s.config(jobs=jobs, tasks=[s.task("first"), s.task("second", ["first"], cpus=2)])


def picture(engine: Engine) -> dict:
    """What the scheduler decides from, and the bookkeeping around it, checked consistent."""
    for dataset in engine.datasets.values():
        assert dataset.counts == [dataset.states.count(c) for c in range(len(dataset.counts))]
        assert dataset.queue.ready == dataset.states.count(1)  # READY
        assert sum(c.ready for c in dataset.queue.classes.values()) == dataset.queue.ready
    for active in engine.active.values():
        assert engine.datasets[active.dataset_id].state(active.task_id).value == "processing"
    now = engine.clock()
    return {
        "datasets": {d.id: (bytes(d.states), dict(d.failures), dict(d.lost), d.status,
                            list(d.runtimes)) for d in engine.datasets.values()},
        "active": sorted(engine.active),
        "pilots": {p.pilot_id: sorted(p.attempts) for p in engine.pilots.values()},
        "metrics": (engine.metrics.matches, engine.metrics.completions,
                    dict(engine.metrics.failures)),
        "usage": [(k, pytest.approx(v)) for k, v in sorted(engine.user_usage.items(now))],
    }


@contextlib.contextmanager
def failing_writes(engine: Engine, hold: float = 0.0):
    """Until the block ends, every write that ends an attempt fails for real, as on a full disk:
    a trigger in the database file aborts it with SQLite's own message, in the writer process.
    With `hold`, the test also holds the file's write lock for `hold` seconds, so that the
    failing group waits in the writer while the test sends more."""
    conn = sqlite3.connect(engine.db.path, isolation_level=None)
    conn.execute("CREATE TRIGGER test_disk_full BEFORE UPDATE OF ended ON attempts"
                 " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    if hold:
        conn.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(hold, conn.execute, "COMMIT")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
        conn.execute("DROP TRIGGER test_disk_full")
        conn.close()


async def test_the_outcome_and_the_next_dispatch_are_one_commit(engine):
    site = await s.site(engine)
    dataset = await s.submit(engine, await s.user(engine, "alice"), s.config(jobs=3))
    p = await s.pilot(engine, site)
    given = await s.ask(engine, p)
    commits = engine.db.commits
    answer, following = await recording.report_and_ask(
        engine, given.attempt_id, given.passkey, s.success(), s.slot().to_dict(), p.pilot_id)
    assert answer["task_state"] == "complete" and isinstance(following, dispatch.Dispatch)
    assert engine.db.commits == commits + 1
    row = await engine.db.fetchone("SELECT state FROM attempts WHERE attempt_id = ?",
                                   (following.attempt_id,))
    assert row["state"] == "processing"
    assert given.attempt_id not in engine.active and following.attempt_id in engine.active
    assert p.attempts == {following.attempt_id} and engine.metrics.matches == 2
    assert s.state_of(dataset, 0) == "complete"
    assert not engine._job_locks  # dropped once nobody holds or awaits them


async def test_a_failed_commit_undoes_both_and_the_retried_report_records_once(engine):
    from floe.matchmaker.storage.database import StorageError

    site = await s.site(engine)
    dataset = await s.submit(engine, await s.user(engine, "alice"), s.config(jobs=2))
    p = await s.pilot(engine, site)
    given = await s.ask(engine, p)
    before = picture(engine)
    with failing_writes(engine), pytest.raises(StorageError, match="database or disk is full"):
        await recording.report_and_ask(engine, given.attempt_id, given.passkey,
                                      s.success(events=2.0), s.slot().to_dict(), p.pilot_id)
    assert picture(engine) == before
    # The pilot sends the same report again: recorded once, and the ask answered.
    answer, following = await recording.report_and_ask(
        engine, given.attempt_id, given.passkey, s.success(events=2.0), s.slot().to_dict(),
        p.pilot_id)
    assert answer["duplicate"] is False and isinstance(following, dispatch.Dispatch)
    answer, _ = await recording.report_and_ask(engine, given.attempt_id, given.passkey,
                                              s.success(events=2.0), s.slot().to_dict(),
                                              p.pilot_id)
    assert answer["duplicate"] is True
    from floe.matchmaker.storage import queries
    rows = await queries.statistics(engine.db, dataset.id)
    assert next(r for r in rows if r["name"] == "events")["count"] == 1
    picture(engine)


async def test_a_failed_commit_takes_back_a_task_it_made_ready_from_a_later_ask(engine):
    """The outcome made the job's second task ready; another pilot's ask reserved it in the
    next group commit. The outcome's write fails: the task is waiting again, and the other
    ask's write is refused (the task was never ready in the database)."""
    from floe.matchmaker.storage.database import StaleWrite, StorageError

    site = await s.site(engine)
    dataset = await s.submit(engine, await s.user(engine, "alice"), two_steps())
    small, big = await s.pilot(engine, site, "small"), await s.pilot(engine, site, "big")
    given = await s.ask(engine, small)
    before = picture(engine)
    with failing_writes(engine, hold=0.2):
        report = asyncio.create_task(recording.report_and_ask(
            engine, given.attempt_id, given.passkey, s.success(), s.slot().to_dict(),
            small.pilot_id))
        await asyncio.sleep(0.05)  # the report's group is being written
        assert s.state_of(dataset, 0, 1) == "ready"
        other = asyncio.create_task(dispatch.ask(engine, big, s.slot(cpus=2)))
        results = await asyncio.gather(report, other, return_exceptions=True)
    assert isinstance(results[0], StorageError) and isinstance(results[1], StaleWrite)
    assert picture(engine) == before
    assert s.state_of(dataset, 0, 1) == "waiting"
    # Everything goes on: the report again, then the big pilot gets the second task.
    answer, _ = await recording.report_and_ask(engine, given.attempt_id, given.passkey,
                                              s.success(), s.slot().to_dict(), small.pilot_id)
    assert answer["task_state"] == "complete"
    taken = await s.ask(engine, big, s.slot(cpus=2))
    assert taken.task_id == dataset.task_id(0, 1)
    picture(engine)


async def test_a_failed_group_undoes_a_later_ask_before_the_outcome_it_saw(engine):
    from floe.matchmaker.storage.database import StorageError

    site = await s.site(engine)
    dataset = await s.submit(engine, await s.user(engine, "alice"), two_steps())
    small, big = await s.pilot(engine, site, "small"), await s.pilot(engine, site, "big")
    given = await s.ask(engine, small)
    before = picture(engine)
    (writer,) = [c for c in psutil.Process().children()
                 if "matchmaker.storage.writer" in " ".join(c.cmdline())]
    with failing_writes(engine):
        writer.suspend()  # both requests' batches reach it before it reads either
        asyncio.get_running_loop().call_later(0.1, writer.resume)
        results = await asyncio.gather(
            recording.report_and_ask(engine, given.attempt_id, given.passkey, s.success(),
                                    s.slot().to_dict(), small.pilot_id),
            dispatch.ask(engine, big, s.slot(cpus=2)), return_exceptions=True)
    # The ask shared the report's group, so it failed with it (alone, its guard would have
    # found the task waiting in the file: StaleWrite).
    assert all(isinstance(r, StorageError) for r in results), results
    assert picture(engine) == before and s.state_of(dataset, 0, 1) == "waiting"


async def test_a_failed_commit_of_a_retry_keeps_the_task_with_its_attempt(engine):
    """A failure report (a retry: the task ready again) whose write fails, while another
    pilot's ask reserved that very task: the task stays processing, with the reported attempt."""
    from floe.matchmaker.storage.database import StaleWrite, StorageError

    site = await s.site(engine)
    dataset = await s.submit(engine, await s.user(engine, "alice"), s.config(jobs=1))
    first, second = await s.pilot(engine, site, "first"), await s.pilot(engine, site, "second")
    given = await s.ask(engine, first)
    before = picture(engine)
    with failing_writes(engine, hold=0.2):
        report = asyncio.create_task(recording.report_and_ask(
            engine, given.attempt_id, given.passkey, s.failure(), dict(FREE, memory=2**20),
            first.pilot_id))
        await asyncio.sleep(0.05)
        assert s.state_of(dataset, 0) == "ready"
        other = asyncio.create_task(dispatch.ask(engine, second, s.slot()))
        results = await asyncio.gather(report, other, return_exceptions=True)
    assert isinstance(results[0], StorageError) and isinstance(results[1], StaleWrite)
    assert picture(engine) == before
    assert engine.active[given.attempt_id].task_id == given.task_id
    answer, _ = await recording.report_and_ask(engine, given.attempt_id, given.passkey,
                                              s.failure(), dict(FREE, memory=2**20),
                                              first.pilot_id)
    assert answer["task_state"] == "ready" and "retry 1 of" in answer["reason"]


async def test_a_submitted_task_is_handed_out_before_the_submit_has_committed(engine):
    """A submit's rows go to the group commit like a dispatch's: a pilot's ask is given its
    task while the submit still waits for the disk, and both are recorded."""
    from floe.matchmaker import submission
    from floe.matchmaker.storage import queries

    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    p = await s.pilot(engine, site)
    conn = sqlite3.connect(engine.db.path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # the writer waits for the file's lock until COMMIT
    try:
        submitting = asyncio.create_task(submission.submit(engine, alice, s.config(jobs=1)))
        await asyncio.sleep(0.01)
        assert not submitting.done()
        asking = asyncio.create_task(s.ask(engine, p))
        await asyncio.sleep(0.01)
        assert engine.active, "the task is handed out from memory before anything committed"
    finally:
        conn.execute("COMMIT")
        conn.close()
    dataset = await submitting
    given = await asking
    assert given is not None and given.task_id == dataset.task_id(0, 0)
    assert (await queries.ended_attempt(engine.db, given.attempt_id))["state"] == "processing"
    picture(engine)


async def test_a_submit_whose_commit_fails_leaves_nothing_behind(engine):
    """The disk refuses the submit's rows: the dataset leaves memory again (a pilot that took
    one of its tasks meanwhile is refused), its user's counts are as before, and the next
    submit goes through."""
    from floe.matchmaker import submission
    from floe.matchmaker.storage.database import StaleWrite, StorageError

    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    p = await s.pilot(engine, site)
    before = picture(engine)
    conn = sqlite3.connect(engine.db.path, isolation_level=None)
    conn.execute("CREATE TRIGGER test_disk_full BEFORE INSERT ON datasets"
                 " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    conn.execute("BEGIN IMMEDIATE")
    asyncio.get_running_loop().call_later(0.1, conn.execute, "COMMIT")
    try:
        submitting = asyncio.create_task(submission.submit(engine, alice, s.config(jobs=1)))
        await asyncio.sleep(0.01)
        asking = asyncio.create_task(dispatch.ask(engine, p, s.slot()))
        results = await asyncio.gather(submitting, asking, return_exceptions=True)
    finally:
        conn.execute("DROP TRIGGER test_disk_full")
        conn.close()
    assert isinstance(results[0], StorageError) and "disk is full" in str(results[0])
    assert isinstance(results[1], (StaleWrite, StorageError))
    after = picture(engine)
    assert after.pop("usage") == [(alice.user_id, 0.0)]  # charged for the task, then not
    assert after == {k: v for k, v in before.items() if k != "usage"}
    assert engine.owners[alice.user_id].ready == 0 and not engine.active
    dataset = await s.submit(engine, alice, s.config(jobs=1))
    assert (await s.ask(engine, p)).task_id == dataset.task_id(0, 0)
    picture(engine)


async def test_a_held_ask_given_a_submitted_task_shares_the_submits_commit(engine):
    from floe.matchmaker import submission

    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    p = await s.pilot(engine, site)

    async def held_ask() -> dispatch.Dispatch | None:
        assert await engine.holding.hold(p.pilot_id, s.slot(), 5.0)
        return await s.ask(engine, p)

    asking = asyncio.create_task(held_ask())
    await asyncio.sleep(0.01)
    commits = engine.db.commits
    dataset = await submission.submit(engine, alice, s.config(jobs=1))
    given = await asking
    assert given is not None and given.task_id == dataset.task_id(0, 0)
    assert engine.db.commits == commits + 1
    picture(engine)
