"""Task DAGs, retries, debug mode, overuse escalation, timeouts and dataset actions, on a real
engine and SQLite file."""

from __future__ import annotations

import pytest

from floe.config.resources import GIB
from floe.config.states import TaskState, TransitionError, check_task
from floe.matchmaker import actions, liveness, recording
from floe.matchmaker.errors import ApiError
from floe.matchmaker.lifecycle import Outcome

from . import support as s


async def setup(engine, document):
    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    dataset = await s.submit(engine, alice, document)
    return alice, dataset, await s.pilot(engine, site)


def diamond(jobs: int = 1, **options):
    return s.config(jobs=jobs, tasks=[
        s.task("gen"), s.task("left", ["gen"]), s.task("right", ["gen"]),
        s.task("merge", ["left", "right"])], **options)


async def db_state(engine, task_id: int) -> str:
    row = await engine.db.fetchone("SELECT state FROM tasks WHERE task_id = ?", (task_id,))
    return row["state"]


async def test_task_is_ready_only_when_all_its_dependencies_are_complete(engine):
    _, dataset, p = await setup(engine, diamond())
    assert [s.state_of(dataset, 0, i) for i in range(4)] == \
        ["ready", "waiting", "waiting", "waiting"]
    await s.finish(engine, await s.ask(engine, p))
    left, right = await s.ask(engine, p), await s.ask(engine, p)
    assert {dataset.locate(g.task_id)[1] for g in (left, right)} == {1, 2}
    await s.finish(engine, left)
    assert s.state_of(dataset, 0, 3) == "waiting"
    await s.finish(engine, right)
    assert s.state_of(dataset, 0, 3) == "ready"
    assert await db_state(engine, dataset.task_id(0, 3)) == "ready"


async def test_parents_finishing_together_make_their_child_ready_exactly_once(engine):
    import asyncio

    _, dataset, p = await setup(engine, diamond())
    await s.finish(engine, await s.ask(engine, p))
    left, right = await s.ask(engine, p), await s.ask(engine, p)
    await asyncio.gather(s.finish(engine, left), s.finish(engine, right))
    assert s.state_of(dataset, 0, 3) == "ready"
    assert dataset.queue.ready == 1
    merge = await s.ask(engine, p)
    assert dataset.locate(merge.task_id) == (0, 3)
    assert await s.ask(engine, p) is None


async def test_failed_dependency_fails_every_dependent_with_a_reason(engine):
    _, dataset, p = await setup(engine, diamond(max_retries=0))
    answer = await s.finish(engine, await s.ask(engine, p), s.failure(message="segfault"))
    assert answer["task_state"] == "failed"
    assert [s.state_of(dataset, 0, i) for i in range(4)] == ["failed"] * 4
    row = await engine.db.fetchone("SELECT reason FROM tasks WHERE task_id = ?",
                                   (dataset.task_id(0, 3),))
    assert row["reason"] == "dependency gen failed"
    job = await engine.db.fetchone("SELECT state FROM jobs WHERE dataset_id = ?", (dataset.id,))
    assert job["state"] == "failed"
    assert dataset.status == "failed"


async def test_failures_are_retried_up_to_max_retries_then_the_task_fails(engine):
    _, _dataset, p = await setup(engine, s.config(jobs=1, max_retries=2))
    for attempt in range(1, 4):
        answer = await s.finish(engine, await s.ask(engine, p), s.failure())
        expected = "ready" if attempt <= 2 else "failed"
        assert answer["task_state"] == expected, answer
    assert "failed 3 times (max_retries 2)" in answer["reason"]
    assert await s.ask(engine, p) is None


async def test_debug_mode_suspends_a_failing_task_instead_of_retrying(engine):
    _, _dataset, p = await setup(engine, s.config(jobs=2, debug=True))
    answer = await s.finish(engine, await s.ask(engine, p), s.failure(message="bad input"))
    assert answer["task_state"] == "suspended"
    assert "suspended for debugging" in answer["reason"]
    # The other job goes on.
    assert (await s.ask(engine, p)) is not None


async def test_overuse_grows_the_requirement_to_one_and_a_half_times_the_peak(engine):
    _, dataset, p = await setup(engine, s.config(jobs=1, tasks=[s.task("hog", memory="1GiB")]))
    given = await s.ask(engine, p)
    peak = 3 * GIB
    outcome = Outcome.from_dict({
        "exit_code": -9, "error_class": "resource_overuse", "error_message": "memory",
        "usage": {"peak_memory": peak},
        "overuse": {"resource": "memory", "requested": GIB, "peak": peak}})
    answer = await s.finish(engine, given, outcome)
    assert "memory 1GiB -> 4.5GiB" in answer["reason"]
    task_id = given.task_id
    assert dataset.requirements(task_id).memory == int(peak * 1.5)
    # A later, smaller peak never shrinks it.
    outcome.usage.peak_memory = GIB
    outcome.overuse = {"resource": "memory", "requested": int(peak * 1.5), "peak": GIB}
    given = await s.ask(engine, p, s.slot(memory=8 * GIB))
    await s.finish(engine, given, outcome)
    assert dataset.requirements(task_id).memory == int(peak * 1.5)
    # The grown requirement decides matching: a 4 GiB slot no longer fits.
    assert await s.ask(engine, p, s.slot(memory=4 * GIB)) is None
    row = await engine.db.fetchone("SELECT requirements FROM tasks WHERE task_id = ?",
                                   (task_id,))
    assert '"memory": 4831838208' in row["requirements"]


async def test_walltime_overuse_grows_the_walltime(engine):
    _, dataset, p = await setup(engine, s.config(jobs=1, tasks=[s.task("slow", walltime="1h")]))
    given = await s.ask(engine, p)
    await s.finish(engine, given, s.failure("resource_overuse", "walltime", exit_code=-9,
                                            wall_time=3700.0))
    assert dataset.requirements(given.task_id).walltime == int(3700 * 1.5)


async def test_silent_attempt_is_reset_and_requeued_without_using_a_retry(engine, clock):
    _, dataset, p = await setup(engine, s.config(jobs=1, max_retries=0))
    given = await s.ask(engine, p)
    clock.advance(engine.settings.heartbeat_timeout - 1)
    assert await liveness.sweep(engine) == 0
    clock.advance(2)
    assert await liveness.sweep(engine) == 1
    assert s.state_of(dataset, 0) == "ready"
    row = await engine.db.fetchone("SELECT state, error_class, error_message FROM attempts"
                                   " WHERE attempt_id = ?", (given.attempt_id,))
    assert (row["state"], row["error_class"]) == ("reset", "pilot_lost")
    assert "no heartbeat" in row["error_message"]
    assert await s.ask(engine, p) is not None


async def test_heartbeats_keep_an_attempt_alive(engine, clock):
    _, dataset, p = await setup(engine, s.config(jobs=1))
    given = await s.ask(engine, p)
    for _ in range(5):
        clock.advance(engine.settings.heartbeat_timeout - 10)
        await liveness.heartbeat(engine, given.attempt_id, given.passkey, {"cpu_time": 1.0})
        assert await liveness.sweep(engine) == 0
    assert s.state_of(dataset, 0) == "processing"


async def test_time_the_matchmaker_did_not_run_counts_against_no_attempt(engine, clock):
    """Frozen past the heartbeat timeout with an attempt 30s from it: the pause counts against
    nothing, and the attempt gets a heartbeat interval to be heard from again."""
    _, dataset, p = await setup(engine, s.config(jobs=1))
    given = await s.ask(engine, p)
    settings = engine.settings
    liveness.forgive_pause(engine, clock())
    for _ in range((settings.heartbeat_timeout - 30) // settings.sweep_interval):
        clock.advance(settings.sweep_interval)  # running as usual: no pause
        assert liveness.forgive_pause(engine, clock()) == 0
        assert await liveness.sweep(engine) == 0
    clock.advance(3 * settings.heartbeat_timeout)  # frozen
    assert liveness.forgive_pause(engine, clock()) == pytest.approx(
        3 * settings.heartbeat_timeout - settings.sweep_interval)
    clock.advance(settings.heartbeat_interval - 1)
    assert await liveness.sweep(engine) == 0
    clock.advance(2)
    assert await liveness.sweep(engine) == 1
    assert s.state_of(dataset, dataset.locate(given.task_id)[0]) == "ready"


async def test_an_attempt_its_pilots_heartbeat_does_not_hold_is_reset_after_an_interval(
        engine, clock):
    _, dataset, p = await setup(engine, s.config(jobs=3, max_retries=0))
    running, reporting, lost = [await s.ask(engine, p) for _ in range(3)]
    held = [{"attempt_id": running.attempt_id, "passkey": running.passkey}]
    await liveness.heartbeats(engine, p, held, [reporting.attempt_id])
    assert len(engine.active) == 3  # within the grace: the answer may still be on its way
    clock.advance(engine.settings.heartbeat_interval + 1)
    await liveness.heartbeats(engine, p, held)  # without `reporting`: nothing is judged
    assert len(engine.active) == 3
    await liveness.heartbeats(engine, p, held, [reporting.attempt_id])
    assert engine.active.keys() == {running.attempt_id, reporting.attempt_id}
    assert s.state_of(dataset, dataset.locate(lost.task_id)[0]) == "ready"
    row = await engine.db.fetchone("SELECT state, error_class, error_message FROM attempts"
                                   " WHERE attempt_id = ?", (lost.attempt_id,))
    assert (row["state"], row["error_class"]) == ("reset", "pilot_lost")
    assert row["error_message"].startswith(f"never reached pilot {p.pilot_id} on node1 at site-a")
    with pytest.raises(ApiError, match=r"is void \(never reached pilot"):
        await recording.report(engine, lost.attempt_id, lost.passkey, s.success())


async def test_a_task_that_keeps_losing_its_pilot_eventually_fails(engine):
    _, dataset, p = await setup(engine, s.config(jobs=1))
    for _ in range(11):
        await s.finish(engine, await s.ask(engine, p), s.failure("pilot_lost", "drained"))
    assert s.state_of(dataset, 0) == "failed"


async def test_suspend_voids_running_attempts_and_resume_requeues(engine):
    alice, dataset, p = await setup(engine, s.config(jobs=3))
    running = await s.ask(engine, p)
    assert await actions.suspend(engine, dataset, alice) == 3
    assert dataset.status == "suspended"
    assert all(s.state_of(dataset, j) == "suspended" for j in range(3))
    assert await s.ask(engine, p) is None
    assert running.attempt_id not in engine.active
    assert await actions.resume(engine, dataset, alice) == 3
    assert dataset.status == "processing"
    assert all(s.state_of(dataset, j) == "ready" for j in range(3))
    assert await db_state(engine, dataset.task_id(2, 0)) == "ready"


async def test_reset_failed_restores_retries_and_reset_all_starts_over(engine):
    alice, dataset, p = await setup(engine, s.config(jobs=2, max_retries=0, tasks=[
        s.task("a"), s.task("b", ["a"])]))
    await s.finish(engine, await s.ask(engine, p), s.failure())
    assert dataset.status == "processing"
    await s.finish(engine, await s.ask(engine, p))
    await s.finish(engine, await s.ask(engine, p))
    assert dataset.status == "failed"
    assert await actions.reset(engine, dataset, alice, "failed") == 2
    assert dataset.status == "processing"
    assert [s.state_of(dataset, 0, i) for i in range(2)] == ["ready", "waiting"]
    assert dataset.failures.get(dataset.task_id(0, 0)) is None
    assert await actions.reset(engine, dataset, alice, "all") == 4 - 1  # job 0 task a is ready
    assert [s.state_of(dataset, 1, i) for i in range(2)] == ["ready", "waiting"]
    rows = await engine.db.fetchall("SELECT state, count(*) AS n FROM tasks GROUP BY state")
    assert {r["state"]: r["n"] for r in rows} == {"ready": 2, "waiting": 2}


async def test_dataset_completes_when_every_task_is_complete(engine):
    _, dataset, p = await setup(engine, s.config(jobs=2))
    for _ in range(2):
        await s.finish(engine, await s.ask(engine, p), s.success(events=10))
    assert dataset.status == "complete"
    rows = await engine.db.fetchall("SELECT state FROM jobs WHERE dataset_id = ?", (dataset.id,))
    assert [r["state"] for r in rows] == ["complete", "complete"]


def test_transition_table_refuses_moves_it_does_not_list():
    assert check_task(TaskState.READY, TaskState.PROCESSING)
    with pytest.raises(TransitionError, match="from complete to processing"):
        check_task(TaskState.COMPLETE, TaskState.PROCESSING)
    with pytest.raises(TransitionError):
        check_task(TaskState.WAITING, TaskState.COMPLETE)


async def test_a_restarted_server_rebuilds_the_same_state(engine, reopen, clock):
    _alice, dataset, p = await setup(engine, diamond(jobs=3))
    running = await s.ask(engine, p)
    await s.finish(engine, await s.ask(engine, p))
    summary = dataset.summary()
    restarted = await reopen(engine)
    again = restarted.datasets[dataset.id]
    assert again.summary() == summary
    assert running.attempt_id in restarted.active
    # The running attempt can still report with its passkey after the restart.
    answer = await recording.report(restarted, running.attempt_id, running.passkey, s.success())
    assert answer["recorded"] and not answer["duplicate"]
    assert restarted.next_attempt_id > running.attempt_id


def ready_queue(dataset) -> dict:
    """The ready tasks of each class of a dataset's queue, continuing and fresh apart."""
    return {key: ({t for t in c.continuing if dataset.is_ready(t)},
                  {t for t in c.fresh if dataset.is_ready(t)})
            for key, c in dataset.queue.classes.items() if c.ready}


async def test_a_restarted_server_queues_each_ready_task_in_its_class_and_in_id_order(
        engine, reopen):
    """After a restart the queue is rebuilt in bulk: retries of first tasks and downstream
    tasks continue their jobs, a grown requirement is its own class, the rest are fresh."""
    _, dataset, p = await setup(engine, diamond(jobs=6, max_retries=2))
    done, retried, grown = [await s.ask(engine, p) for _ in range(3)]  # jobs 0-2's gen
    await s.finish(engine, done)  # job 0's left and right are ready
    await s.finish(engine, retried, s.failure())  # a retry, continuing its job
    await s.finish(engine, grown, Outcome.from_dict({  # a class of its own
        "exit_code": -9, "error_class": "resource_overuse", "error_message": "memory",
        "usage": {"peak_memory": 3 * GIB},
        "overuse": {"resource": "memory", "requested": GIB, "peak": 3 * GIB}}))
    before = ready_queue(dataset)
    again = (await reopen(engine)).datasets[dataset.id]
    assert ready_queue(again) == before
    gen = dataset.config.tasks[0].requirements
    continuing, fresh = before[(0, gen)]
    assert retried.task_id in continuing and grown.task_id not in continuing | fresh
    assert before[(0, dataset.requirements(grown.task_id))] == ({grown.task_id}, set())
    assert {dataset.locate(t) for t in before[(1, dataset.config.tasks[1].requirements)][0]} \
        == {(0, 1)}
    for task_class in again.queue.classes.values():
        for ids in (task_class.continuing, task_class.fresh):
            assert list(ids) == sorted(ids)
    assert again.queue.ready == dataset.queue.ready == sum(
        len(c) + len(f) for c, f in before.values())


async def test_a_requirement_grown_back_to_the_definitions_keeps_its_place_in_the_queue(
        engine):
    _, dataset, _p = await setup(engine, s.config(jobs=5))
    middle = dataset.task_id(2, 0)
    dataset.overrides[middle] = dataset.config.tasks[0].requirements
    dataset.rebuild_queue()
    [task_class] = dataset.queue.classes.values()
    assert list(task_class.fresh) == [dataset.task_id(job, 0) for job in range(5)]


async def test_task_states_out_of_id_order_are_refused_at_load(engine):
    from floe.matchmaker.storage import queries

    _, dataset, p = await setup(engine, s.config(jobs=4))
    await s.finish(engine, await s.ask(engine, p))  # the first task complete, the rest ready
    states = [state.value for state in TaskState]
    first, end = dataset.base, dataset.base + 4
    assert list(await queries.task_state_codes(engine.db, first, end, states)) == [3, 1, 1, 1]
    await engine.db.reader.execute("PRAGMA reverse_unordered_selects = 1")
    with pytest.raises(RuntimeError, match="did not come in id order"):
        await queries.task_state_codes(engine.db, first, end, states)


async def test_statistics_aggregate_sum_mean_and_standard_deviation(engine):
    from floe.matchmaker.storage import queries

    _, dataset, p = await setup(engine, s.config(jobs=4))
    for value in (1.0, 2.0, 3.0, 6.0):
        await s.finish(engine, await s.ask(engine, p), s.success(events=value))
    rows = await queries.statistics(engine.db, dataset.id)
    events = next(r for r in rows if r["name"] == "events" and r["task_index"] is None)
    assert events["count"] == 4 and events["sum"] == 12.0 and events["mean"] == 3.0
    assert events["stddev"] == pytest.approx((((1 - 3) ** 2 + 1 + 0 + 9) / 4) ** 0.5)
    assert any(r["name"] == "wall_time" and r["kind"] == "resource" for r in rows)


async def test_a_completed_task_keeps_no_reason_of_an_earlier_retry_or_reset(engine):
    _, dataset, p = await setup(engine, s.config(jobs=1, max_retries=2))
    await s.finish(engine, await s.ask(engine, p), s.failure())
    row = await engine.db.fetchone("SELECT reason FROM tasks WHERE dataset_id = ?",
                                   (dataset.id,))
    assert row["reason"].startswith("retry 1 of 2 after task_error")
    await s.finish(engine, await s.ask(engine, p), s.success())
    row = await engine.db.fetchone("SELECT state, reason, failures FROM tasks"
                                   " WHERE dataset_id = ?", (dataset.id,))
    assert (row["state"], row["reason"], row["failures"]) == ("complete", "", 1)
