"""Learned runtimes: short tasks are packed in series by how long their task name really runs
in the dataset (a high percentile of recent successful attempts), not by the walltime users
declare, once enough attempts have been seen; the declared walltime still has to fit the time
each task will have left. What is learned survives a restart, and a task given back unstarted
is requeued at no cost."""

from __future__ import annotations

import math

import pytest

from floe.config.resources import GIB
from floe.config.states import TaskState
from floe.matchmaker import dispatch
from floe.matchmaker.runtimes import MARGIN, TRUSTED_AFTER, WINDOW, Learned

from . import support as s
from .support import FREE

HOUR_SLOT = s.slot(cpus=1, memory=4 * GIB, seconds=3900)  # a 1h walltime fits once


def test_the_declared_walltime_counts_until_enough_attempts_are_seen():
    learned = Learned()
    for _ in range(TRUSTED_AFTER - 1):
        learned.add(0.01)
    assert learned.seconds(3600) == 3600.0
    learned.add(0.01)
    assert learned.seconds(3600) == pytest.approx(0.01 * MARGIN)


def test_the_estimate_is_a_high_percentile_of_the_recent_window_never_past_the_walltime():
    learned = Learned()
    for wall in [1.0] * 95 + [50.0] * 5:  # the window keeps the last 64: 59 ones, 5 fifties
        learned.add(wall)
    assert learned.seconds(3600) == pytest.approx(50.0 * MARGIN)
    for _ in range(WINDOW):  # the slow ones leave the window
        learned.add(1.0)
    assert learned.seconds(3600) == pytest.approx(1.0 * MARGIN)
    assert learned.seconds(1) == 1.0


def test_undoing_an_addition_restores_the_estimate():
    learned = Learned()
    for _ in range(WINDOW):
        learned.add(2.0)
    before = learned.seconds(3600)
    undo = learned.add(1000.0)
    undo()
    assert learned.seconds(3600) == before and learned.seen == WINDOW
    learned.add(2.0)  # the slot the undone one took is written again, not skipped
    assert learned.seconds(3600) == before


async def finish_quickly(engine, p, count: int, wall: float = 0.02) -> None:
    for _ in range(count):
        given = await s.ask(engine, p, HOUR_SLOT)
        await s.finish(engine, given, s.success(wall_time=wall))


async def series(engine, p, most: int = 64, seconds: int = 3900,
                 series_seconds: float = math.inf) -> list[dispatch.Dispatch]:
    offer = dispatch.Offer(s.slot(cpus=1, memory=4 * GIB, seconds=seconds), most,
                           in_series=True, series_seconds=series_seconds)
    return (await dispatch.ask(engine, p, offer)).attempts


async def test_a_task_whose_runtime_is_not_learned_comes_alone_to_a_pilot_that_wants_a_second(
        engine):
    """Expected to run its walltime, it fills a pilot's prefetch horizon alone: the next pilot
    gets the next, instead of the first taking as many walltimes as its slot holds."""
    owner, site = await s.user(engine, "alice"), await s.site(engine)
    await s.submit(engine, owner, s.config(jobs=20))  # walltime 1h, as declared
    p, q = await s.pilot(engine, site), await s.pilot(engine, site)
    for pilot in (p, q):
        given = await series(engine, pilot, seconds=5 * 3600, series_seconds=1.0)
        assert [d.expected for d in given] == [3600.0]  # five walltimes would fit
    assert len(await series(engine, p, seconds=5 * 3600)) == 5  # not said: as many as fit


async def test_an_answer_that_fills_series_seconds_says_nothing_more_fits_only_when_so(engine):
    """Cut short by `series_seconds`, an answer leaves out `"more": false` while other tasks
    are ready (a pilot with a free CPU asks again for it), and says it when none is (a pilot
    would ask for nothing while its task runs, and hold up that task's report)."""
    owner, site = await s.user(engine, "alice"), await s.site(engine)
    await s.submit(engine, owner, s.config(jobs=2))
    p = await s.pilot(engine, site)
    offer = dispatch.Offer(s.slot(cpus=2, memory=4 * GIB, seconds=5 * 3600), 64,
                           in_series=True, series_seconds=1.0)
    first = await dispatch.ask(engine, p, offer)
    assert len(first.attempts) == 1 and not first.dry
    last = await dispatch.ask(engine, p, offer)
    assert len(last.attempts) == 1 and last.dry


async def test_series_seconds_bounds_an_answer_by_the_expected_runtimes(world):
    """A pilot says how much work it wants queued (its prefetch horizon): the answer ends once
    the tasks given are expected to run that long, and does not say that nothing more fits."""
    engine = world.engine
    dataset = engine.datasets[world.dataset]
    for _ in range(TRUSTED_AFTER):
        dataset.learn(0, 0.5)  # expected 0.75 s each
    status, answer = await world.api.call(
        "POST", f"/api/v1/pilots/{world.pilot}/ask", world.pilot_key,
        dict(FREE, max_tasks=64, in_series=True, series_seconds=2))
    assert status == 200 and "more" not in answer
    assert [a["expected_seconds"] for a in answer["attempts"]] == [0.75] * 3  # 0.75, 1.5, 2.25
    status, answer = await world.api.call(
        "POST", f"/api/v1/pilots/{world.pilot}/ask", world.pilot_key,
        dict(FREE, max_tasks=2, in_series=True))
    assert status == 200 and len(answer["attempts"]) == 2 and "more" not in answer
    for bad in (0, -1, 86401, "1"):
        status, answer = await world.api.call(
            "POST", f"/api/v1/pilots/{world.pilot}/ask", world.pilot_key,
            dict(FREE, max_tasks=2, in_series=True, series_seconds=bad))
        assert status == 400 and "series_seconds" in answer["error"], answer


async def test_short_tasks_are_packed_by_their_learned_runtime_within_the_time_left(engine):
    owner, site = await s.user(engine, "alice"), await s.site(engine)
    await s.submit(engine, owner, s.config(jobs=200))  # walltime 1h, as declared
    p = await s.pilot(engine, site)
    await finish_quickly(engine, p, TRUSTED_AFTER - 1)
    untrusted = await series(engine, p)
    assert len(untrusted) == 1 and untrusted[0].expected == 3600.0  # by the declared walltime
    await s.finish(engine, untrusted[0], s.success(wall_time=0.02))

    packed = await series(engine, p)
    assert len(packed) == 64
    assert all(d.expected == pytest.approx(0.02 * MARGIN) for d in packed)
    before = 0.0
    for given in packed:  # each walltime fits what those before it are expected to leave
        assert given.dataset.requirements(given.task_id).walltime <= 3900 - before
        before += given.expected

    # A slot with less time left than the declared walltime gets none: it stays the limit.
    assert await series(engine, p, seconds=3599) == []


async def test_a_datasets_last_tasks_are_shared_among_the_pilots_that_ask(engine):
    """In series a pilot takes no more of a dataset's tasks than it leaves ready there: two
    pilots asking in turn at a dataset's end get its last tasks about halved each time, not
    one of them a full queue while the other has none."""
    owner, site = await s.user(engine, "alice"), await s.site(engine)
    dataset = await s.submit(engine, owner, s.config(jobs=200))
    p, q = await s.pilot(engine, site), await s.pilot(engine, site)
    await finish_quickly(engine, p, TRUSTED_AFTER)
    assert dataset.queue.ready == 195
    sizes = [len(await series(engine, pilot)) for pilot in (p, q) * 4]
    assert sizes == [64, 64, 34, 17, 9, 4, 2, 1]
    assert dataset.queue.ready == 0


async def test_the_answer_tells_the_pilot_the_expected_runtime(world):
    status, answer = await world.ask()
    assert status == 200, answer
    attempt = answer["attempt"]
    assert attempt["expected_seconds"] == attempt["requirements"]["walltime"] == 3600


async def test_what_was_learned_survives_a_restart(engine, reopen):
    owner, site = await s.user(engine, "alice"), await s.site(engine)
    await s.submit(engine, owner, s.config(jobs=200))
    p = await s.pilot(engine, site)
    await finish_quickly(engine, p, 2 * TRUSTED_AFTER, wall=0.02)
    engine = await reopen(engine)
    packed = await series(engine, engine.pilots[p.pilot_id])
    assert len(packed) == 64
    assert all(0.02 <= d.expected <= 0.02 * MARGIN for d in packed)


async def test_a_task_given_back_unstarted_is_requeued_at_no_cost(engine, clock):
    owner, site = await s.user(engine, "alice"), await s.site(engine)
    dataset = await s.submit(engine, owner, s.config(jobs=1, max_retries=0))
    p = await s.pilot(engine, site)
    for _ in range(20):  # more often than a lost pilot may lose it, and past max_retries
        given = await s.ask(engine, p, HOUR_SLOT)
        await s.finish(engine, given, s.failure("not_run", "its walltime no longer fits",
                                                exit_code=None))
        assert s.state_of(dataset, 0) == TaskState.READY.value
        clock.advance(30)  # held a while before it was given back: still no time charged
    task_id = dataset.task_id(0, 0)
    assert task_id not in dataset.failures and task_id not in dataset.lost
    assert engine.user_usage.value(owner.user_id, clock()) == pytest.approx(0, abs=1e-9)
    given = await s.ask(engine, p, HOUR_SLOT)
    await s.finish(engine, given)
    assert s.state_of(dataset, 0) == TaskState.COMPLETE.value
