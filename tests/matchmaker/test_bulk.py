"""The bulk pilot protocol: asking for several tasks at once (side by side or in series), one
heartbeat for all of a pilot's attempts, and many reports in one request that carries the next
ask; over HTTP against a real server and SQLite file, and on the engine."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time

import pytest

from floe.config.resources import GIB, Slot, fits
from floe.config.settings import server_settings
from floe.config.states import ErrorClass
from floe.matchmaker import dispatch, recording
from floe.matchmaker.engine import Engine, Pilot
from floe.matchmaker.storage.database import Database

from . import support as s
from .support import FREE, Clock
from .test_api import declared_answer, exactly_declared


async def ask_many(world, count, token=None, pilot=None, **free):
    status, answer = await world.api.call(
        "POST", f"/api/v1/pilots/{pilot or world.pilot}/ask", token or world.pilot_key,
        dict(FREE, max_tasks=count, **free))
    assert status == 200, answer
    return answer["attempts"]


async def send_reports(world, reports, ask=None, token: str | None = "", pilot=None):
    """Bulk reports with the pilot's token unless told otherwise (None: no token)."""
    body = {"reports": reports}
    if ask is not None:
        body["ask"] = ask
    return await world.api.call("POST", f"/api/v1/pilots/{pilot or world.pilot}/reports",
                                world.pilot_key if token == "" else token, body)


async def send_heartbeat(world, attempts, token: str | None = "", pilot=None):
    return await world.api.call("POST", f"/api/v1/pilots/{pilot or world.pilot}/heartbeat",
                                world.pilot_key if token == "" else token,
                                {"attempts": attempts})


def done(attempt, **fields):
    return dict({"attempt_id": attempt["id"], "passkey": attempt["passkey"], "exit_code": 0,
                 "usage": {"wall_time": 1.0}}, **fields)


def rows_in_the_file(world, attempt_ids):
    """The attempts' states as the SQLite file holds them (a connection of its own)."""
    conn = sqlite3.connect(world.settings.database)
    try:
        marks = ",".join("?" * len(attempt_ids))
        return dict(conn.execute(f"SELECT attempt_id, state FROM attempts WHERE attempt_id IN "
                                 f"({marks})", list(attempt_ids)).fetchall())
    finally:
        conn.close()


# -- asking for several tasks -------------------------------------------------------------------

async def test_an_ask_with_max_tasks_answers_the_list_form_each_as_the_single_form(world):
    _, single = await world.ask()
    given = await ask_many(world, 3, cpus=3)
    assert len(given) == 3 and all(set(a) == set(single["attempt"]) for a in given)
    assert len({a["passkey"] for a in given}) == 3
    assert rows_in_the_file(world, [a["id"] for a in given]) == \
        {a["id"]: "processing" for a in given}
    # One CPU: side by side, one task fits, however many are allowed.
    assert len(await ask_many(world, 5)) == 1
    # Nothing fits: the list form says why, as the single form does.
    status, answer = await world.api.call(
        "POST", f"/api/v1/pilots/{world.pilot}/ask", world.pilot_key,
        dict(FREE, memory=2**20, max_tasks=4))
    assert status == 200 and answer["attempts"] == [] and answer["wait"] > 0
    assert "none fits this slot" in answer["reason"] and "shortest_walltime" in answer


async def test_an_answer_with_fewer_tasks_than_asked_says_whether_more_would_fit(world):
    _, document = await world.api.call("GET", "/api/v1/openapi.json")
    asked = declared_answer(document, "POST", "/api/v1/pilots/{pilot_id}/ask", 200)

    async def in_series(count):
        status, answer = await world.api.call(
            "POST", f"/api/v1/pilots/{world.pilot}/ask", world.pilot_key,
            dict(FREE, max_tasks=count, in_series=True))
        assert status == 200 and exactly_declared(answer, asked) == [], answer
        return answer

    # As many as asked for: nothing said (more may be ready).
    assert "more" not in await in_series(2)
    # Of the 18 ready, one ask takes about half: nothing more fits it now.
    answer = await in_series(64)
    assert 0 < len(answer["attempts"]) < 18 and answer["more"] is False
    # The time left after the first task holds no other (walltime 1h, a little more offered).
    status, answer = await world.api.call(
        "POST", f"/api/v1/pilots/{world.pilot}/ask", world.pilot_key,
        dict(FREE, seconds=3700, max_tasks=5, in_series=True))
    assert status == 200 and len(answer["attempts"]) == 1 and answer["more"] is False, answer


async def test_the_single_form_is_unchanged_and_the_list_form_repeats_it_byte_for_byte(engine):
    site = await s.site(engine)
    await s.submit(engine, await s.user(engine, "alice"), s.config(jobs=3))
    p = await s.pilot(engine, site)
    given = await dispatch.ask(engine, p, dispatch.Offer(s.slot(cpus=2), max_tasks=2))
    assert isinstance(given, dispatch.Given) and len(given.attempts) == 2
    singles = [d.to_json(engine) for d in given.attempts]
    assert all(one.startswith(b'{"attempt":{"id":') for one in singles)
    assert dispatch.answer_json(engine, given) == \
        b'{"attempts":[' + b",".join(one[len(b'{"attempt":'):-1] for one in singles) + b"]}"
    for one in singles:  # compact JSON, as json.dumps writes it
        assert one == json.dumps(json.loads(one), separators=(",", ":")).encode()


async def test_max_tasks_is_checked_against_its_limits(world):
    for bad in (0, 1001, "2"):
        status, answer = await world.api.call(
            "POST", f"/api/v1/pilots/{world.pilot}/ask", world.pilot_key,
            dict(FREE, max_tasks=bad))
        assert status == 400 and "max_tasks" in answer["error"], answer


# -- one heartbeat for all of a pilot's attempts ------------------------------------------------

async def test_a_pilot_heartbeat_answers_each_attempt_on_its_own(world):
    alive, void, wrong = await ask_many(world, 3, cpus=3)
    engine = world.engine
    status, _ = await world.api.call("POST", f"/api/v1/datasets/{world.dataset}/reset",
                                     world.owner, {"scope": "all"})
    assert status == 200
    alive, = await ask_many(world, 1)  # the reset voided all three; a fresh one
    commits = engine.db.commits
    later = time.time() + 30
    engine.clock = lambda: later
    status, answer = await send_heartbeat(world, [
        {"attempt_id": alive["id"], "passkey": alive["passkey"],
         "usage": {"cpu_time": 3.0, "peak_memory": 1000}},
        {"attempt_id": void["id"], "passkey": void["passkey"]},
        {"attempt_id": wrong["id"], "passkey": "not-its-passkey"},
        {"attempt_id": 10**9, "passkey": "whatever"},
    ])
    assert status == 200, answer
    assert answer["heartbeat_interval"] == world.settings.heartbeat_interval
    items = answer["attempts"]
    assert items[str(alive["id"])] == {"action": "continue"}
    assert items[str(void["id"])]["action"] == "kill"
    assert items[str(void["id"])]["status"] == 409
    assert "is void (reset (all) by alice)" in items[str(void["id"])]["error"]
    assert (items[str(wrong["id"])]["status"], items[str(wrong["id"])]["error"]) == (
        403, f"wrong passkey for attempt {wrong['id']}: only the pilot that was given this "
             "attempt may speak for it")
    assert items[str(10**9)] == {"action": "kill", "status": 404,
                                 "error": f"there is no attempt {10**9}"}
    active = engine.active[alive["id"]]
    assert active.last_heartbeat == later and active.usage["cpu_time"] == 3.0
    assert engine.pilots[world.pilot].last_seen == later
    assert engine.db.commits == commits  # kept in memory, flushed later


async def test_an_idle_pilots_empty_heartbeat_keeps_it_alive(world):
    later = time.time() + 30
    world.engine.clock = lambda: later
    status, answer = await send_heartbeat(world, [])
    assert status == 200 and answer["attempts"] == {}
    assert world.engine.pilots[world.pilot].last_seen == later


# -- reports in bulk, with the next ask -----------------------------------------------------------

async def test_bulk_reports_decide_each_report_and_commit_all_before_the_answer(world):
    engine = world.engine
    # `untouched` is given out with the others and not reported: it stays in flight.
    first, second, failed, stale, untouched = await ask_many(world, 5, cpus=5, memory=8 * GIB)
    _, elsewhere = await world.ask(world.other_pilot_key, world.other_pilot)
    elsewhere = elsewhere["attempt"]
    # `stale` is voided behind the pilot's back (its task reset and handed out again).
    await recording.lose(engine, engine.active[stale["id"]], ErrorClass.PILOT_LOST,
                        "reset by the test")
    status, answer = await send_reports(world, [done(first)])
    assert status == 200 and answer["results"][0]["recorded"]
    commits = engine.db.commits
    status, answer = await send_reports(world, [
        done(second, statistics={"events": 2}),
        done(first),                                          # reported before
        done(failed, exit_code=3, error_message="bad input"),
        done(stale),
        done(elsewhere),                                      # another pilot's attempt
        dict(done(second), passkey="not-its-passkey"),
        done({"id": 10**9, "passkey": "x"}),
    ], ask=dict(FREE, max_tasks=2, cpus=2))
    assert status == 200, answer
    results = answer["results"]
    assert [r["attempt_id"] for r in results] == [second["id"], first["id"], failed["id"],
                                                  stale["id"], elsewhere["id"], second["id"],
                                                  10**9]
    assert results[0] == {"attempt_id": second["id"], "recorded": True, "duplicate": False,
                          "task_state": "complete", "reason": None}
    assert results[1] == {"attempt_id": first["id"], "recorded": True, "duplicate": True,
                          "state": "complete"}
    assert results[2]["task_state"] == "ready" and "retry 1 of" in results[2]["reason"]
    assert results[3]["status"] == 409 and "is void (reset by the test)" in results[3]["error"]
    assert results[4] == {
        "attempt_id": elsewhere["id"], "status": 403,
        "error": f"attempt {elsewhere['id']} was given to pilot {world.other_pilot}, not to "
                 f"pilot {world.pilot}: report it in that pilot's reports"}
    assert results[5]["status"] == 403 and "wrong passkey" in results[5]["error"]
    assert results[6] == {"attempt_id": 10**9, "status": 404,
                          "error": f"there is no attempt {10**9}"}
    following = answer["next"]["attempts"]
    assert len(following) == 2
    # Everything is in the file before the answer, in one group commit.
    assert engine.db.commits == commits + 1
    assert rows_in_the_file(world, [second["id"], failed["id"], elsewhere["id"],
                                    *(a["id"] for a in following)]) == {
        second["id"]: "complete", failed["id"]: "failed", elsewhere["id"]: "processing",
        **{a["id"]: "processing" for a in following}}
    assert elsewhere["id"] in engine.active and untouched["id"] in engine.active


async def test_a_report_repeated_in_the_same_request_is_recorded_once(world):
    attempt, = await ask_many(world, 1)
    report = done(attempt, statistics={"events": 5})
    status, answer = await send_reports(world, [report, report])
    assert status == 200
    assert [r["duplicate"] for r in answer["results"]] == [False, True]
    _, stats = await world.api.call("GET", f"/api/v1/datasets/{world.dataset}/statistics",
                                    world.owner)
    events = [r for r in stats["statistics"] if r["name"] == "events" and r["task"] is None]
    assert events[0]["count"] == 1


async def test_the_bulk_routes_refuse_user_tokens_and_other_sites_pilots(world):
    attempt, = await ask_many(world, 1)
    for token, expected in ((None, 401), (world.owner, 403), (world.admin, 403),
                            (world.site_token, 403), (world.other_pilot_key, 403)):
        status, answer = await send_heartbeat(
            world, [{"attempt_id": attempt["id"], "passkey": attempt["passkey"]}], token)
        assert status == expected, (token, answer)
        status, answer = await send_reports(world, [done(attempt)], token=token)
        assert status == expected, (token, answer)
        assert answer["error"]
    assert attempt["id"] in world.engine.active  # nothing was recorded


async def test_reports_of_a_pilot_that_has_ended_are_recorded_and_its_ask_refused(world):
    attempt, = await ask_many(world, 1)
    pilot = world.engine.pilots[world.pilot]
    world.engine.pilots.pop(world.pilot)  # as if it had ended, keeping the attempt
    try:
        status, answer = await send_reports(world, [done(attempt)], ask=FREE)
    finally:
        world.engine.pilots[world.pilot] = pilot
    assert status == 200 and answer["results"][0]["task_state"] == "complete"
    assert answer["next"] == {"error": f"pilot {world.pilot} has ended (the matchmaker counted "
                                       "it lost, or it signed off); a new pilot registers with "
                                       "a pilot token of its own", "status": 404}


async def test_reports_for_a_pilot_id_that_never_registered_are_refused_whole_with_403(world):
    attempt, = await ask_many(world, 1)
    unknown = world.other_pilot + 100
    status, answer = await send_reports(world, [done(attempt)], ask=FREE, pilot=unknown)
    assert (status, answer) == (403, {"error": f"this key speaks for pilot {world.pilot}, not "
                                               f"for pilot {unknown}"})
    status, _ = await send_heartbeat(world, [], pilot=unknown)
    assert status == 403  # as the heartbeat route answers it
    assert world.engine.active[attempt["id"]]  # nothing of it was recorded
    assert attempt["id"] in world.engine.active  # nothing was recorded


async def test_a_pilot_that_exited_may_still_report_what_it_ran(world):
    reported, held = await ask_many(world, 2, cpus=2)
    status, answer = await send_reports(world, [done(reported)])
    assert status == 200 and answer["results"][0]["task_state"] == "complete"
    status, _ = await world.api.call("POST", f"/api/v1/pilots/{world.pilot}/exit",
                                     world.pilot_key, {"reason": "idle"})
    assert status == 200 and world.pilot not in world.engine.pilots
    status, answer = await send_reports(world, [done(reported), done(held)])
    assert status == 200, answer
    repeated, lost = answer["results"]
    assert repeated["duplicate"] is True
    assert lost["status"] == 409 and "is void" in lost["error"], lost


async def test_an_empty_or_oversized_list_of_reports_is_refused_with_the_limit(world):
    status, answer = await send_reports(world, [])
    assert (status, answer["error"]) == (400, "reports: at least 1 item, got 0")
    many = [done({"id": i, "passkey": "x"}) for i in range(1001)]
    status, answer = await send_reports(world, many)
    assert (status, answer["error"]) == (400, "reports: at most 1000 items, got 1001")


async def test_reports_after_a_reset_and_a_pilot_that_gives_back_its_queued_attempts(world):
    kept, given_back = await ask_many(world, 2, cpus=2)
    status, answer = await send_reports(world, [
        done(kept),
        done(given_back, exit_code=None, error_class="pilot_lost",
             error_message="pilot 1 drained before starting it")])
    assert status == 200, answer
    assert [r["task_state"] for r in answer["results"]] == ["complete", "ready"]
    assert rows_in_the_file(world, [kept["id"], given_back["id"]]) == {
        kept["id"]: "complete", given_back["id"]: "reset"}
    status, answer = await send_heartbeat(world, [{"attempt_id": given_back["id"],
                                                   "passkey": given_back["passkey"]}])
    item = answer["attempts"][str(given_back["id"])]
    assert item["status"] == 409 and "drained before starting it" in item["error"]


async def test_dependents_made_ready_by_the_reports_are_given_by_their_ask(world):
    status, created = await world.api.call("POST", "/api/v1/datasets", world.owner, two_steps(5))
    assert status == 201
    await world.wait_created(created["id"])
    status, _ = await world.api.call("POST", f"/api/v1/datasets/{world.dataset}/suspend",
                                     world.owner)
    assert status == 200
    firsts = await ask_many(world, 2, cpus=2)
    assert [(a["task"], a["job"]) for a in firsts] == [("first", 0), ("first", 1)]
    status, answer = await send_reports(world, [done(a) for a in firsts],
                                        ask=dict(FREE, max_tasks=2, cpus=2))
    assert status == 200, answer
    following = answer["next"]["attempts"]
    # The jobs that started finish first: their second tasks, ready only through these reports.
    assert [(a["task"], a["job"]) for a in following] == [("second", 0), ("second", 1)]
    assert rows_in_the_file(world, [a["id"] for a in firsts + following]) == {
        **{a["id"]: "complete" for a in firsts}, **{a["id"]: "processing" for a in following}}


async def test_a_stale_write_of_one_report_falls_back_alone(world):
    engine = world.engine
    tampered, good, also = await ask_many(world, 3, cpus=3)

    def reset_behind_its_back(conn):
        conn.execute("UPDATE attempts SET state = 'reset' WHERE attempt_id = ?",
                     (tampered["id"],))

    await engine.db.exclusive(reset_behind_its_back)
    status, answer = await send_reports(world, [done(tampered), done(good), done(also)],
                                        ask=dict(FREE, max_tasks=3, cpus=3))
    assert status == 200, answer
    first, *others = answer["results"]
    assert first["status"] == 409 and "is void" in first["error"], first
    assert [r["task_state"] for r in others] == ["complete", "complete"]
    assert tampered["task_id"] not in {a["task_id"] for a in answer["next"]["attempts"]}
    assert rows_in_the_file(world, [good["id"], also["id"]]) == {
        good["id"]: "complete", also["id"]: "complete"}
    picture(engine)


async def test_a_single_reports_ask_may_take_the_list_form(world):
    attempt, = await ask_many(world, 1)
    status, answer = await world.api.call(
        "POST", f"/api/v1/attempts/{attempt['id']}/report", world.pilot_key,
        {"exit_code": 0, "ask": dict(FREE, cpus=2, max_tasks=2)}, passkey=attempt["passkey"])
    assert status == 200 and answer["task_state"] == "complete"
    assert len(answer["next"]["attempts"]) == 2


async def test_the_bulk_report_items_are_the_report_routes_body(world):
    _, document = await world.api.call("GET", "/api/v1/openapi.json")

    def body(path):
        return document["paths"][path]["post"]["requestBody"]["content"][
            "application/json"]["schema"]

    single = body("/api/v1/attempts/{attempt_id}/report")
    bulk = body("/api/v1/pilots/{pilot_id}/reports")
    item = bulk["properties"]["reports"]["items"]
    assert set(item["properties"]) == set(single["properties"]) - {"ask"} | \
        {"attempt_id", "passkey"}
    assert bulk["properties"]["ask"]["properties"] == \
        body("/api/v1/pilots/{pilot_id}/ask")["properties"]
    assert "max_tasks" in bulk["properties"]["ask"]["properties"]


async def test_the_next_of_bulk_reports_is_exactly_the_declared_ask_answer(world):
    _, document = await world.api.call("GET", "/api/v1/openapi.json")
    asked = declared_answer(document, "POST", "/api/v1/pilots/{pilot_id}/ask", 200)
    first, second = await ask_many(world, 2, cpus=2)
    for attempt, ask in ((first, FREE), (second, dict(FREE, cpus=2, max_tasks=2))):
        status, answer = await send_reports(world, [done(attempt)], ask=ask)
        assert status == 200, answer
        assert exactly_declared(answer["next"], asked) == [], answer["next"]


# -- on the engine: packing, fair share, locks --------------------------------------------------

MIXED = [s.task("small"), s.task("wide", cpus=4, memory="6GiB"),
         s.task("long", cpus=2, memory="3GiB", walltime="3h"),
         s.task("gpu", cpus=1, gpus=1, memory="2GiB")]


def two_steps(jobs: int = 2):
    return s.config(jobs=jobs, tasks=[s.task("first"), s.task("second", ["first"])])


def picture(engine: Engine) -> None:
    """Check that what the scheduler decides from is consistent."""
    for dataset in engine.datasets.values():
        assert dataset.counts == [dataset.states.count(c) for c in range(len(dataset.counts))]
        assert dataset.queue.ready == dataset.states.count(1)  # READY
    for active in engine.active.values():
        assert engine.datasets[active.dataset_id].state(active.task_id).value == "processing"


def nothing_else_fits(engine: Engine, left: Slot) -> bool:
    return not any(d.queue.count_fitting(left) for d in engine.datasets.values())


async def mixed_work(engine: Engine) -> Pilot:
    """300 jobs of MIXED tasks for one user, and a pilot to ask for them."""
    site = await s.site(engine)
    await s.submit(engine, await s.user(engine, "alice"), s.config(jobs=300, tasks=MIXED))
    return await s.pilot(engine, site)


async def test_side_by_side_tasks_together_fit_the_offer(engine):
    p = await mixed_work(engine)
    rng = random.Random(4)
    handed = 0
    for _ in range(60):
        offer = s.slot(cpus=rng.randint(1, 16), memory=rng.randint(1, 32) * GIB,
                       disk=rng.randint(1, 40) * GIB, gpus=rng.choice((0, 0, 1, 2)),
                       seconds=rng.choice((1800, 3600, 4 * 3600)))
        most = rng.randint(1, 12)
        given = await dispatch.ask(engine, p, dispatch.Offer(offer, max_tasks=most))
        needs = [d.dataset.requirements(d.task_id) for d in given.attempts]
        assert len(needs) <= most
        assert sum(n.cpus for n in needs) <= offer.cpus
        assert sum(n.memory for n in needs) <= offer.memory
        assert sum(n.disk for n in needs) <= offer.disk
        assert sum(n.gpus for n in needs) <= offer.gpus
        assert all(n.walltime <= offer.seconds for n in needs)
        if len(needs) < most:  # it stopped because nothing else fits what is left
            left = Slot(offer.cpus - sum(n.cpus for n in needs),
                        offer.memory - sum(n.memory for n in needs),
                        offer.disk - sum(n.disk for n in needs),
                        offer.gpus - sum(n.gpus for n in needs), offer.seconds, offer.os,
                        offer.arch, offer.site)
            assert nothing_else_fits(engine, left), (offer, needs)
        if offer.gpus and not any(n.gpus for n in needs):  # GPU tasks go first, if any fits
            assert not any(c.ready and c.requirements.gpus and fits(c.requirements, offer)
                           for d in engine.datasets.values() for c in d.queue.classes.values())
        handed += len(needs)
        for d in given.attempts:
            await s.finish(engine, d)
    assert handed > 100
    assert engine.metrics.matches == handed
    picture(engine)


async def test_tasks_in_series_each_fit_the_time_the_ones_before_them_are_expected_to_leave(
        engine):
    p = await mixed_work(engine)
    rng = random.Random(7)
    handed = 0
    for _ in range(40):
        offer = s.slot(cpus=rng.randint(1, 8), memory=rng.randint(1, 16) * GIB,
                       gpus=rng.choice((0, 1)), seconds=rng.randint(1, 12) * 3600)
        most = rng.randint(1, 20)
        given = await dispatch.ask(engine, p, dispatch.Offer(offer, most, in_series=True))
        needs = [d.dataset.requirements(d.task_id) for d in given.attempts]
        assert len(needs) <= most
        before = 0.0
        for given_one, n in zip(given.attempts, needs, strict=True):
            assert n.walltime <= offer.seconds - before
            assert given_one.expected <= n.walltime
            before += given_one.expected
        assert all(n.cpus <= offer.cpus and n.memory <= offer.memory and n.gpus <= offer.gpus
                   for n in needs)
        if len(needs) < most:
            left = s.slot(cpus=offer.cpus, memory=offer.memory, gpus=offer.gpus,
                          seconds=int(offer.seconds - before))
            assert nothing_else_fits(engine, left)
        handed += len(needs)
        for d in given.attempts:
            await s.finish(engine, d)
    assert handed > 100
    picture(engine)


async def contention(engine: Engine, clock: Clock, batch: bool) -> list[str]:
    """alice (share 1) and bob (share 3) each queue the same work; one 40-CPU pilot takes 40
    tasks in one ask (`batch`) or in 40 one-CPU asks: whose tasks it got, in order."""
    site = await s.site(engine)
    users = [await s.user(engine, "alice", share=1), await s.user(engine, "bob", share=3)]
    owner = {}
    for user in users:
        owner[(await s.submit(engine, user, s.config(jobs=100))).id] = user.name
    p = await s.pilot(engine, site)
    if batch:
        slot = s.slot(cpus=40, memory=64 * GIB, disk=64 * GIB)
        given = await dispatch.ask(engine, p, dispatch.Offer(slot, max_tasks=40))
        return [owner[d.dataset.id] for d in given.attempts]
    return [owner[(await s.ask(engine, p)).dataset.id] for _ in range(40)]


async def test_a_batch_is_shared_between_users_as_single_asks_would_be(engine, clock, tmp_path):
    batched = await contention(engine, clock, batch=True)
    settings = server_settings({"database": str(tmp_path / "second.sqlite")})
    db = await Database.open(settings.database)
    other = Engine(db, settings, Clock())
    await other.load()
    try:
        singles = await contention(other, Clock(), batch=False)
    finally:
        await other.stop()
        await db.close()
    assert batched == singles
    assert batched.count("bob") == 30 and batched.count("alice") == 10
    assert "alice" in batched[:4]  # spread over the batch, not one user's tasks then the other's


async def test_a_failed_report_that_asks_may_be_given_its_own_retry_in_the_same_commit(engine):
    site = await s.site(engine)
    dataset = await s.submit(engine, await s.user(engine, "alice"), s.config(jobs=1))
    p = await s.pilot(engine, site)
    given = await s.ask(engine, p)
    commits = engine.db.commits
    answer, following = await recording.report_and_ask(
        engine, given.attempt_id, given.passkey, s.failure(), s.slot().to_dict(), p.pilot_id)
    assert answer["task_state"] == "ready"
    assert isinstance(following, dispatch.Dispatch) and following.task_id == given.task_id
    assert engine.db.commits == commits + 1
    assert s.state_of(dataset, 0) == "processing"


async def test_bulk_reports_needing_the_same_jobs_in_opposite_orders_do_not_deadlock(engine):
    site = await s.site(engine)
    dataset = await s.submit(engine, await s.user(engine, "alice"),
                             s.config(jobs=2, tasks=[s.task("a"), s.task("b")]))
    p = await s.pilot(engine, site)
    given = await dispatch.ask(engine, p, dispatch.Offer(s.slot(cpus=4), max_tasks=4))
    by_task = {d.task_id: d for d in given.attempts}

    def report(job, task_index):
        d = by_task[dataset.task_id(job, task_index)]
        return {"attempt_id": d.attempt_id, "passkey": d.passkey, "exit_code": 0}

    holders = [engine.job_lock(dataset.id, job) for job in (0, 1)]
    for holder in holders:  # other reports hold both jobs while the bulk reports arrive
        await holder.__aenter__()
    first = asyncio.create_task(recording.report_many(
        engine, p.pilot_id, [report(0, 0), report(1, 0)], None))
    second = asyncio.create_task(recording.report_many(
        engine, p.pilot_id, [report(1, 1), report(0, 1)], None))
    await asyncio.sleep(0.01)
    for holder in holders:
        await holder.__aexit__(None, None, None)
        await asyncio.sleep(0.01)
    results = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert all(r["task_state"] == "complete" for answer, _ in results for r in answer)
    assert not engine._job_locks


async def test_a_job_lock_waiter_that_is_cancelled_leaves_nothing_held(engine):
    holder = engine.job_lock(1, 0)
    await holder.__aenter__()
    waiter = asyncio.create_task(engine.job_lock(1, 0).__aenter__())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.sleep(0)
    await holder.__aexit__(None, None, None)
    assert not engine._job_locks
    # Cancelled just as the lock was handed to it: it passes the lock on.
    await holder.__aenter__()
    waiter = asyncio.create_task(engine.job_lock(1, 0).__aenter__())
    await asyncio.sleep(0)
    await holder.__aexit__(None, None, None)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not engine._job_locks
