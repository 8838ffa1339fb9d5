"""What keeps many idle pilots cheap, without changing what any ask is given: a slot shape that
nothing fitted skips the queues that have had no new ready task since; empty answers share one
explanation per shape for a second; held asks are grouped by shape and woken oldest first; a
pilot's key check is trusted longer than a user's token."""

from __future__ import annotations

import asyncio
import time

from floe.config.resources import GIB, Requirements
from floe.matchmaker import dispatch, pilots
from floe.matchmaker.auth import Auth
from floe.matchmaker.holding import Holding, shape_of
from floe.matchmaker.passkeys import hash_secret

from . import support as s

SMALL = s.slot(cpus=1, memory=GIB)  # the support configs' tasks need 1 GiB: fits exactly
TINY = s.slot(cpus=1, memory=GIB // 2)  # fits none of them


async def test_a_shape_that_fit_nothing_gets_work_once_work_it_fits_is_ready(engine):
    owner, site = await s.user(engine, "alice"), await s.site(engine)
    big = await s.submit(engine, owner, s.config(jobs=3, tasks=[s.task("big", memory="8GiB")]))
    p = await s.pilot(engine, site)
    assert await s.ask(engine, p, TINY) is None
    assert engine.missed[shape_of(TINY)][(big.id, None)][0] == big.queue.epoch
    assert await s.ask(engine, p, TINY) is None  # skipped: nothing new in that queue

    small = await s.submit(engine, owner, s.config(jobs=1, tasks=[s.task("small",
                                                                         memory="256MiB")]))
    given = await s.ask(engine, p, TINY)
    assert given is not None and given.dataset is small


async def test_a_task_requeued_in_a_queue_that_had_nothing_is_found(engine):
    owner, site = await s.user(engine, "alice"), await s.site(engine)
    dataset = await s.submit(engine, owner, s.config(jobs=1, max_retries=2))
    p = await s.pilot(engine, site)
    given = await s.ask(engine, p, SMALL)
    assert await s.ask(engine, p, SMALL) is None  # the only task is taken: nothing left
    await s.finish(engine, given, s.failure())  # a retry: the task is ready again
    again = await s.ask(engine, p, SMALL)
    assert again is not None and again.task_id == given.task_id and again.dataset is dataset


async def test_more_time_left_than_was_looked_at_is_looked_at_again(engine):
    owner, site = await s.user(engine, "alice"), await s.site(engine)
    await s.submit(engine, owner, s.config(jobs=1))  # walltime 1h
    p = await s.pilot(engine, site)
    short = s.slot(cpus=1, memory=GIB, seconds=1800)
    assert await s.ask(engine, p, short) is None
    assert await s.ask(engine, p, s.slot(cpus=1, memory=GIB, seconds=7200)) is not None


async def test_empty_answers_of_one_shape_share_an_explanation_for_a_second(engine, clock):
    owner, site = await s.user(engine, "alice"), await s.site(engine)
    await s.submit(engine, owner, s.config(jobs=2, tasks=[s.task("big", memory="8GiB")]))
    p = await s.pilot(engine, site)
    first = await dispatch.ask(engine, p, SMALL)
    assert "none fits this slot" in first.reason and "8GiB" in first.reason
    assert await dispatch.ask(engine, p, SMALL) is first
    clock.advance(dispatch.EXPLAINED_FOR)
    assert await dispatch.ask(engine, p, SMALL) is not first


async def test_held_asks_are_woken_oldest_first_among_the_shapes_that_fit():
    holding = Holding(limit=10)
    needs = Requirements(cpus=1, memory=GIB, disk=0, gpus=0, walltime=600)
    small, large = s.slot(cpus=1, memory=GIB), s.slot(cpus=8, memory=32 * GIB)
    tiny = s.slot(cpus=1, memory=GIB // 2)
    waits = {}
    for pilot_id, slot in [(1, large), (2, tiny), (3, small), (4, large)]:
        waits[pilot_id] = asyncio.create_task(holding.hold(pilot_id, slot, 30))
        await asyncio.sleep(0)
    assert len(holding.held) == 4
    holding.poke(needs, 2)
    await asyncio.sleep(0.01)
    woken = sorted(pilot_id for pilot_id, wait in waits.items() if wait.done())
    assert woken == [1, 3]  # the two oldest that fit; the tiny slot is never a candidate
    assert await waits[1] and await waits[3]
    assert not waits[2].done() and not waits[4].done()
    holding.close()  # the server stops: the rest are answered at once
    await asyncio.wait_for(asyncio.gather(waits[2], waits[4]), 1)
    assert not holding.held


async def test_a_pilots_key_is_trusted_longer_than_a_users_token(engine):
    auth = Auth(engine)
    site = await s.site(engine)
    (token,), _ = await auth.pilot_tokens(site, 3600)
    _, key = await pilots.register(engine, await auth.authenticate(token), "node1")
    _, user_token = await auth.add_user("alice", False, 1.0)
    for secret, ttl in ((key, auth.PILOT_KEY_TTL), (user_token, auth.POSITIVE_TTL)):
        before = time.monotonic()
        await auth.authenticate(secret)
        trusted_until = auth._known[hash_secret(secret)][1]
        assert before + ttl <= trusted_until <= time.monotonic() + ttl
    assert 20 * engine.settings.hold_asks <= auth.PILOT_KEY_TTL  # idle asks cost no lookup
