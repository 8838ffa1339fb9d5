"""The bulk pilot protocol: asking for several tasks at once (side by side or in series), one
heartbeat for all of a pilot's attempts, and many reports in one request that carries the next
ask; over HTTP against a real server and SQLite file, and on the engine."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from config.states import ErrorClass
from matchmaker import dispatch, outcomes

from . import support as s
from .test_api import World

FREE = {"cpus": 1, "memory": 4 * 2**30, "disk": 10 * 2**30, "seconds": 86400}


@pytest.fixture
async def world(tmp_path):
    started = await World().start(tmp_path)
    yield started
    await started.stop()


async def ask_many(world, count, token=None, pilot=None, **free):
    status, answer = await world.api.call(
        "POST", f"/api/v1/pilots/{pilot or world.pilot}/ask", token or world.pilot_token,
        dict(FREE, max_tasks=count, **free))
    assert status == 200, answer
    return answer["attempts"]


async def send_reports(world, reports, ask=None, token: str | None = "", pilot=None):
    """Bulk reports with the pilot's token unless told otherwise (None: no token)."""
    body = {"reports": reports}
    if ask is not None:
        body["ask"] = ask
    return await world.api.call("POST", f"/api/v1/pilots/{pilot or world.pilot}/reports",
                                world.pilot_token if token == "" else token, body)


async def send_heartbeat(world, attempts, token: str | None = "", pilot=None):
    return await world.api.call("POST", f"/api/v1/pilots/{pilot or world.pilot}/heartbeat",
                                world.pilot_token if token == "" else token,
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
        "POST", f"/api/v1/pilots/{world.pilot}/ask", world.pilot_token,
        dict(FREE, memory=2**20, max_tasks=4))
    assert status == 200 and answer["attempts"] == [] and answer["wait"] > 0
    assert "none fits this slot" in answer["reason"] and "shortest_walltime" in answer


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
            "POST", f"/api/v1/pilots/{world.pilot}/ask", world.pilot_token,
            dict(FREE, max_tasks=bad))
        assert status == 400 and "body.max_tasks" in answer["error"], answer


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
    first, second, failed, stale = await ask_many(world, 4, cpus=4)
    _, elsewhere = await world.ask(world.other_pilot_token, world.other_pilot)
    elsewhere = elsewhere["attempt"]
    # `stale` is voided behind the pilot's back (its task reset and handed out again).
    await outcomes.lose(engine, engine.active[stale["id"]], ErrorClass.PILOT_LOST,
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
    assert elsewhere["id"] in engine.active


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
                            (world.site_token, 403), (world.other_pilot_token, 403)):
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
    assert answer["next"] == {"error": f"pilot {world.pilot} is not registered or has ended; "
                                       "register again", "status": 404}


async def test_an_empty_or_oversized_list_of_reports_is_refused_with_the_limit(world):
    status, answer = await send_reports(world, [])
    assert (status, answer["error"]) == (400, "body.reports: at least 1 items, got 0")
    many = [done({"id": i, "passkey": "x"}) for i in range(1001)]
    status, answer = await send_reports(world, many)
    assert (status, answer["error"]) == (400, "body.reports: at most 1000 items, got 1001")
