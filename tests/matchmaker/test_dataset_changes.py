"""Changing a dataset after it was submitted: adding jobs (to a running or an ended dataset),
aborting it, resetting one job or one task; each decided on the engine with its real database."""

from __future__ import annotations

import pytest

from floe.matchmaker import actions, submission
from floe.matchmaker.errors import BadRequest, Conflict
from floe.matchmaker.storage import queries

from . import support as s


async def run_all(engine, pilot, dataset, outcome=None) -> int:
    ran = 0
    while (given := await s.ask(engine, pilot)) is not None:
        await s.finish(engine, given, outcome)
        ran += 1
    return ran


async def test_jobs_added_to_an_ended_dataset_run_with_the_next_indices(engine):
    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    dataset = await s.submit(engine, alice, s.config(jobs=3))
    pilot = await s.pilot(engine, site)
    assert await run_all(engine, pilot, dataset) == 3
    assert dataset.status == "complete"
    assert await actions.add_jobs(engine, dataset, alice, 2) == 5
    assert dataset.status == "processing" and dataset.jobs == 5
    while dataset.materialized < dataset.jobs:  # the background materializer, by hand
        await submission.materialize_chunk(engine, dataset, 1000)
    given = await s.ask(engine, pilot)
    assert dataset.locate(given.task_id) == (3, 0)
    await s.finish(engine, given)
    await run_all(engine, pilot, dataset)
    assert dataset.status == "complete" and dataset.summary()["complete"] == 5
    rows = await queries.tasks(engine.db, dataset.id, state=None, task_index=None, job=None,
                               after=0, limit=100)
    assert [r["job"] for r in rows] == [0, 1, 2, 3, 4]
    events = await queries.events(engine.db, dataset.id, 10)
    assert any(e["action"] == "add jobs" and "2 jobs added by alice: 3 -> 5" in e["detail"]
               for e in events)


async def test_adding_jobs_is_refused_past_the_limits_and_where_there_is_no_room(engine):
    alice = await s.user(engine, "alice")
    dataset = await s.submit(engine, alice, s.config(jobs=2))
    with pytest.raises(BadRequest, match=r"has 2 jobs, and this server takes at most "
                                         r"1,000,000 per dataset \(max_jobs_per_dataset\)"):
        await actions.add_jobs(engine, dataset, alice, 999_999)
    with pytest.raises(BadRequest, match="jobs: expected at least 1, got 0"):
        await actions.add_jobs(engine, dataset, alice, 0)
    # A dataset submitted by an earlier build, packed tight against the next one's task ids.
    engine.next_task_id = dataset.base + dataset.total_tasks
    after = await s.submit(engine, alice, s.config(jobs=1))
    assert after.base == dataset.base + dataset.total_tasks
    with pytest.raises(Conflict, match="submitted before datasets kept room to grow"):
        await actions.add_jobs(engine, dataset, alice, 1)


async def test_an_abort_fails_what_has_not_ended_voids_what_runs_and_keeps_the_record(engine):
    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    dataset = await submission.submit(engine, alice, s.config(jobs=3000))  # 1,000 created now
    pilot = await s.pilot(engine, site)
    done = await s.ask(engine, pilot)
    await s.finish(engine, done)
    running = await s.ask(engine, pilot)
    changed = await actions.abort(engine, dataset, alice)
    assert changed == 999 and dataset.jobs == 1000 and dataset.status == "failed"
    assert dataset.summary() == {"waiting": 0, "ready": 0, "processing": 0, "complete": 1,
                                 "failed": 999, "suspended": 0}
    assert running.attempt_id in engine.voided and running.attempt_id not in engine.active
    attempt = await queries.ended_attempt(engine.db, running.attempt_id)
    assert attempt["state"] == "reset" and attempt["error_message"] == "aborted by alice"
    assert (await queries.ended_attempt(engine.db, done.attempt_id))["state"] == "complete"
    task = await queries.task(engine.db, running.task_id)
    assert (task["state"], task["reason"]) == ("failed", "aborted by alice")
    await submission.materialize_chunk(engine, dataset, 1000)
    assert dataset.materialized == 1000  # no job is created after the abort
    with pytest.raises(Conflict, match="has ended \\(failed\\); there is nothing to abort"):
        await actions.abort(engine, dataset, alice)


async def test_one_job_or_one_task_is_reset_alone(engine):
    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    dataset = await s.submit(engine, alice, s.config(jobs=3, max_retries=0))
    pilot = await s.pilot(engine, site)
    await run_all(engine, pilot, dataset, s.failure())
    assert dataset.summary()["failed"] == 3
    assert await actions.reset(engine, dataset, alice, "failed", job=1) == 1
    assert [s.state_of(dataset, j) for j in range(3)] == ["failed", "ready", "failed"]
    assert await actions.reset(engine, dataset, alice, "failed",
                               task_id=dataset.task_id(2, 0)) == 1
    assert [s.state_of(dataset, j) for j in range(3)] == ["failed", "ready", "ready"]
    with pytest.raises(BadRequest, match=r"job: dataset \d+ has jobs 0 to 2 created, not 7"):
        await actions.reset(engine, dataset, alice, "failed", job=7)
    with pytest.raises(BadRequest, match=r"task: dataset \d+ has no task 99999999999"):
        await actions.reset(engine, dataset, alice, "failed", task_id=99_999_999_999)


async def test_one_task_is_not_reset_to_wait_for_ever_on_a_failed_dependency(engine):
    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    chain = [{"name": "a", "modules": [{"command": "true"}]},
             {"name": "b", "modules": [{"command": "true"}], "depends": ["a"]},
             {"name": "c", "modules": [{"command": "true"}], "depends": ["b"]}]
    dataset = await s.submit(engine, alice, s.config(jobs=1, tasks=chain, max_retries=0))
    pilot = await s.pilot(engine, site)
    await s.finish(engine, await s.ask(engine, pilot), s.failure())
    assert [s.state_of(dataset, 0, i) for i in range(3)] == ["failed"] * 3
    for task in (1, 2):  # b would wait on a, c on b: both failed
        upstream = dataset.task_id(0, task - 1)
        with pytest.raises(Conflict, match=rf"task \d+ depends on task {upstream} "
                                           rf"\({'ab'[task - 1]}\), which failed, and would wait "
                                           rf"for it for ever: start both over with the failed "
                                           rf"tasks of their job \(`floe reset {dataset.id} "
                                           rf"--job 0`\)"):
            await actions.reset(engine, dataset, alice, "failed", task_id=dataset.task_id(0, task))
    assert await actions.reset(engine, dataset, alice, "failed", job=0) == 3
    assert await run_all(engine, pilot, dataset) == 3
    # a started over alone and failed again leaves b and c complete: c may start over alone,
    # since b, which it waits on, is complete; and a reset of failed tasks leaves it be.
    assert await actions.reset(engine, dataset, alice, "all", task_id=dataset.task_id(0, 0)) == 1
    await s.finish(engine, await s.ask(engine, pilot), s.failure())
    assert [s.state_of(dataset, 0, i) for i in range(3)] == ["failed", "complete", "complete"]
    assert await actions.reset(engine, dataset, alice, "failed",
                               task_id=dataset.task_id(0, 2)) == 0
    assert await actions.reset(engine, dataset, alice, "all", task_id=dataset.task_id(0, 2)) == 1
    assert s.state_of(dataset, 0, 2) == "ready"
    details = [e["detail"] for e in await queries.events(engine.db, dataset.id, 10)
               if e["action"].startswith("reset")]
    assert details[0] == f"1 task reset (task {dataset.task_id(0, 2)})"
    assert details[-1] == "3 tasks reset (job 0)"


async def test_a_held_ask_is_given_a_task_that_a_reset_of_an_ended_dataset_makes_ready(engine):
    import asyncio

    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    dataset = await s.submit(engine, alice, s.config(jobs=1))
    pilot = await s.pilot(engine, site)
    await run_all(engine, pilot, dataset)
    assert dataset.status == "complete" and await s.ask(engine, pilot) is None

    async def held_ask():
        assert await engine.holding.hold(pilot.pilot_id, s.slot(), 5.0)
        return await s.ask(engine, pilot)

    asking = asyncio.create_task(held_ask())
    await asyncio.sleep(0.01)
    assert await actions.reset(engine, dataset, alice, "all") == 1
    given = await asking
    assert given is not None and given.task_id == dataset.task_id(0, 0)
