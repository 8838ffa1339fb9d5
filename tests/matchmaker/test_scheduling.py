"""Fair share, priorities, GPU-first and walltime rules of matching, on a real engine and SQLite
file, with simulated pilots and a simulated clock."""

from __future__ import annotations

import heapq

import pytest

from floe.config.resources import GIB
from floe.matchmaker import actions, dispatch
from floe.matchmaker.fairshare import Ledger
from floe.matchmaker.model import DatasetStatus

from . import support as s


async def simulate(engine, clock, pilots, hours: float, durations: dict[int, float]) -> dict:
    """Run single-CPU pilots for `hours` of simulated time; each task of dataset d takes
    durations[d] seconds. Returns delivered core-seconds per dataset id."""
    delivered: dict[int, float] = {}
    events = [(clock.now, i, None) for i in range(len(pilots))]
    end = clock.now + hours * 3600
    heapq.heapify(events)
    while events:
        when, index, running = heapq.heappop(events)
        if when > end:
            break
        clock.now = when
        if running is not None:
            seconds = durations[running.dataset.id]
            await s.finish(engine, running, s.success(wall_time=seconds))
            delivered[running.dataset.id] = delivered.get(running.dataset.id, 0.0) + seconds
        given = await s.ask(engine, pilots[index])
        if given is None:
            heapq.heappush(events, (when + 60, index, None))
        else:
            heapq.heappush(events, (when + durations[given.dataset.id], index, given))
    return delivered


def fractions(delivered: dict[int, float], groups: dict[str, list[int]]) -> dict[str, float]:
    total = sum(delivered.values())
    return {name: sum(delivered.get(d, 0.0) for d in ids) / total
            for name, ids in groups.items()}


async def test_users_with_shares_1_1_2_receive_core_time_25_25_50_under_contention(engine, clock):
    site = await s.site(engine)
    alice = await s.user(engine, "alice", share=1)
    bob = await s.user(engine, "bob", share=1)
    carol = await s.user(engine, "carol", share=2)
    # Different task lengths: fairness is about core-time, not task counts.
    a = await s.submit(engine, alice, s.config(jobs=3000))
    b = await s.submit(engine, bob, s.config(jobs=3000))
    c = await s.submit(engine, carol, s.config(jobs=3000))
    pilots = [await s.pilot(engine, site, f"node{i}") for i in range(12)]
    delivered = await simulate(engine, clock, pilots, hours=12,
                               durations={a.id: 240.0, b.id: 420.0, c.id: 330.0})
    share = fractions(delivered, {"alice": [a.id], "bob": [b.id], "carol": [c.id]})
    for name, target in (("alice", 0.25), ("bob", 0.25), ("carol", 0.50)):
        assert abs(share[name] - target) <= 0.05 * target, share
    # Every user still had queued work at the end: the split was decided under contention.
    assert all(d.queue.ready > 0 for d in (a, b, c))


async def test_dataset_priority_splits_an_owners_share(engine, clock):
    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    low = await s.submit(engine, alice, s.config(jobs=2000, priority=1))
    high = await s.submit(engine, alice, s.config(jobs=2000, priority=3))
    pilots = [await s.pilot(engine, site, f"node{i}") for i in range(8)]
    delivered = await simulate(engine, clock, pilots, hours=8,
                               durations={low.id: 300.0, high.id: 300.0})
    share = fractions(delivered, {"low": [low.id], "high": [high.id]})
    assert abs(share["high"] - 0.75) <= 0.05 * 0.75, share


async def test_no_user_or_dataset_starves_against_a_heavy_share(engine, clock):
    site = await s.site(engine)
    big = await s.user(engine, "big", share=50)
    small = await s.user(engine, "small", share=1)
    heavy = await s.submit(engine, big, s.config(jobs=3000, priority=1000))
    tiny_priority = await s.submit(engine, big, s.config(jobs=3000, priority=0.01))
    minor = await s.submit(engine, small, s.config(jobs=3000))
    pilots = [await s.pilot(engine, site, f"node{i}") for i in range(8)]
    delivered = await simulate(engine, clock, pilots, hours=12,
                               durations={d.id: 300.0 for d in (heavy, tiny_priority, minor)})
    assert delivered.get(minor.id, 0) > 0
    assert delivered.get(tiny_priority.id, 0) > 0
    share = fractions(delivered, {"small": [minor.id]})
    assert 0.5 / 51 < share["small"] < 2.0 / 51


async def test_usage_decays_so_old_consumption_is_forgiven(engine, clock):
    site = await s.site(engine)
    old = await s.user(engine, "old")
    new = await s.user(engine, "new")
    engine.user_usage.charge(old.user_id, 1_000_000.0, clock.now)
    clock.advance(30 * engine.settings.fair_share_half_life)
    engine.user_usage.charge(new.user_id, 10.0, clock.now)
    await s.submit(engine, old, s.config(jobs=1))
    await s.submit(engine, new, s.config(jobs=1))
    given = await s.ask(engine, await s.pilot(engine, site))
    assert given.dataset.user_id == old.user_id


@pytest.mark.parametrize(("gpu_weight", "served_next"), [(8.0, "bob"), (1.0, "alice")])
async def test_gpu_time_is_charged_at_the_gpu_weight_and_decides_who_is_served_next(
        engine, clock, gpu_weight: float, served_next: str):
    """An attempt is charged (cores + GPUs x gpu_weight) x its wall time: alice's 100 s on one
    core and one GPU outweighs bob's 500 s on one core when a GPU counts as 8 cores, and not
    when it counts as 1."""
    engine.settings.gpu_weight = gpu_weight
    site = await s.site(engine)
    users = {name: await s.user(engine, name) for name in ("alice", "bob")}
    await s.submit(engine, users["alice"], s.config(jobs=1, tasks=[s.task("train", gpus=1)]))
    await s.submit(engine, users["alice"], s.config(jobs=2))
    await s.submit(engine, users["bob"], s.config(jobs=2))
    p = await s.pilot(engine, site)

    trained = await s.ask(engine, p, s.slot(cpus=1, gpus=1))
    assert trained.dataset.user_id == users["alice"].user_id
    await s.finish(engine, trained, s.success(wall_time=100.0))
    first_cpu = await s.ask(engine, p)
    assert first_cpu.dataset.user_id == users["bob"].user_id
    await s.finish(engine, first_cpu, s.success(wall_time=500.0))

    usage = engine.user_usage
    assert usage.value(users["alice"].user_id, clock.now) == \
        pytest.approx((1 + 1 * gpu_weight) * 100.0)
    assert usage.value(users["bob"].user_id, clock.now) == pytest.approx(1 * 500.0)
    given = await s.ask(engine, p)
    assert given.dataset.user_id == users[served_next].user_id


async def test_gpu_slot_takes_gpu_tasks_first_even_from_a_less_deserving_user(engine, clock):
    site = await s.site(engine)
    favoured = await s.user(engine, "favoured", share=10)
    other = await s.user(engine, "other", share=1)
    cpu = await s.submit(engine, favoured, s.config(jobs=5))
    gpu = await s.submit(engine, other, s.config(jobs=5, tasks=[s.task("train", gpus=1)]))
    p = await s.pilot(engine, site)
    given = await s.ask(engine, p, s.slot(cpus=8, gpus=1, memory=32 * GIB))
    assert given.dataset is gpu
    # The GPU is taken; the same slot's spare CPUs then go to CPU work.
    given = await s.ask(engine, p, s.slot(cpus=7, gpus=0, memory=30 * GIB))
    assert given.dataset is cpu


async def test_cpu_tasks_use_a_gpu_slot_when_no_gpu_task_fits(engine, clock):
    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    cpu = await s.submit(engine, alice, s.config(jobs=2))
    await s.submit(engine, alice, s.config(jobs=2, tasks=[s.task("big", gpus=4)]))
    given = await s.ask(engine, await s.pilot(engine, site), s.slot(cpus=4, gpus=1))
    assert given.dataset is cpu


async def test_task_never_lands_on_a_slot_without_time_for_its_walltime(engine, clock):
    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    await s.submit(engine, alice, s.config(jobs=3, tasks=[s.task("long", walltime="2h")]))
    p = await s.pilot(engine, site)
    answer = await dispatch.ask(engine, p, s.slot(seconds=2 * 3600 - 1))
    assert isinstance(answer, dispatch.NoWork)
    assert "walltime" in answer.reason and answer.wait > 0
    assert await s.ask(engine, p, s.slot(seconds=2 * 3600)) is not None


async def test_no_work_answer_says_why_and_suggests_a_wait(engine, clock):
    site = await s.site(engine)
    p = await s.pilot(engine, site)
    empty = await dispatch.ask(engine, p, s.slot())
    assert isinstance(empty, dispatch.NoWork)
    assert empty.reason == "no ready task in any dataset"
    alice = await s.user(engine, "alice")
    await s.submit(engine, alice, s.config(jobs=2, tasks=[s.task("fat", memory="64GiB")]))
    answer = await dispatch.ask(engine, p, s.slot(memory=8 * GIB))
    assert isinstance(answer, dispatch.NoWork)
    assert "2 ready tasks" in answer.reason and "64GiB memory" in answer.reason


async def test_started_jobs_finish_before_new_jobs_start(engine, clock):
    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    dataset = await s.submit(engine, alice, s.config(
        jobs=5, tasks=[s.task("first"), s.task("second", depends=["first"])]))
    p = await s.pilot(engine, site)
    given = await s.ask(engine, p)
    assert dataset.locate(given.task_id) == (0, 0)
    await s.finish(engine, given)
    given = await s.ask(engine, p)
    assert dataset.locate(given.task_id) == (0, 1)


async def test_site_restrictions_are_honoured(engine, clock):
    site_a = await s.site(engine, "site-a")
    site_b = await s.site(engine, "site-b")
    alice = await s.user(engine, "alice")
    dataset = await s.submit(engine, alice, s.config(
        jobs=2, tasks=[s.task("here", sites=["site-b"])]))
    assert await s.ask(engine, await s.pilot(engine, site_a), s.slot(site="site-a")) is None
    given = await s.ask(engine, await s.pilot(engine, site_b), s.slot(site="site-b"))
    assert given.dataset is dataset


async def test_a_dataset_that_had_nothing_for_a_slot_is_skipped_for_the_rest_of_it(engine, clock):
    """Filling one slot task by task, a dataset found to have nothing that fits is not looked
    at again for the (smaller) slot that is left: the next most deserving one is chosen."""
    site = await s.site(engine)
    alice, bob = await s.user(engine, "alice"), await s.user(engine, "bob")
    big = await s.submit(engine, alice, s.config(jobs=2, tasks=[s.task("big", cpus=4)]))
    small = await s.submit(engine, bob, s.config(jobs=4, tasks=[s.task("small", cpus=1)]))
    await s.pilot(engine, site)
    engine.user_usage.charge(bob.user_id, 1000.0, clock.now)  # alice is served first
    misses: set = set()
    assert dispatch.choose(engine, s.slot(cpus=1), misses)[0] is small
    assert misses == {(big.id, None)}
    # Her 4-CPU tasks would fit this slot, but she was already found to have nothing for it.
    assert dispatch.choose(engine, s.slot(cpus=4), misses)[0] is small
    assert dispatch.choose(engine, s.slot(cpus=4))[0] is big


async def test_a_user_with_nothing_for_a_slot_is_skipped_until_a_queue_of_theirs_changes(
        engine, clock):
    """A user none of whose datasets had anything for a slot is passed over in one step by the
    next asks of that shape, until a task of theirs becomes ready: a dependency released, or a
    new dataset. The counts behind the step stay those of the user's queues."""
    site = await s.site(engine)
    alice, bob = await s.user(engine, "alice"), await s.user(engine, "bob")
    dag = await s.submit(engine, alice, s.config(jobs=2, tasks=[
        s.task("gen", cpus=4), s.task("reco", depends=["gen"])]))
    await s.submit(engine, alice, s.config(jobs=2, tasks=[s.task("wide", cpus=4)]))
    mine = await s.submit(engine, bob, s.config(jobs=9, tasks=[s.task("small")]))
    small, wide = await s.pilot(engine, site), await s.pilot(engine, site, "node2")
    engine.user_usage.charge(bob.user_id, 1000.0, clock.now)  # alice is served first

    def counted() -> tuple[int, int]:
        owner = engine.owners[alice.user_id]
        return owner.ready, sum(d.queue.ready for d in engine.by_user[alice.user_id])

    assert (await s.ask(engine, small)).dataset is mine
    shape = dispatch.shape_of(s.slot())
    assert (alice.user_id, None) in engine.missed_users[shape]
    assert (await s.ask(engine, small)).dataset is mine  # alice passed over in one step
    assert counted() == (4, 4)

    gen = await s.ask(engine, wide, s.slot(cpus=4))
    assert gen.dataset is dag and counted() == (3, 3)
    await s.finish(engine, gen)  # releases its reco: a 1-CPU task of alice's
    released = await s.ask(engine, small)
    assert released.dataset is dag and dag.locate(released.task_id)[1] == 1
    assert counted() == (3, 3)

    assert (await s.ask(engine, small)).dataset is mine
    later = await s.submit(engine, alice, s.config(jobs=1, tasks=[s.task("late")]))
    assert (await s.ask(engine, small)).dataset is later
    assert counted() == (3, 3)


def test_a_parked_entity_leaves_the_order_and_keeps_its_usage():
    ledger = Ledger(3600.0, 0.0, group=lambda key: "alice")
    for key, usage in (("old", 10.0), ("new", 20.0), ("next", 30.0)):
        ledger.charge(key, usage, 0.0)
    ledger.park("old")
    ledger.charge("old", 100.0, 0.0)  # an ended dataset's last attempt trued up
    assert list(ledger.ranked("alice")) == ["new", "next"]
    assert ledger.value("old", 0.0) == 110.0
    ledger.unpark("old")
    ledger.unpark("old")
    assert list(ledger.ranked("alice")) == ["new", "next", "old"]
    ledger.park("next")
    ledger.forget("next")
    ledger.unpark("next")
    assert list(ledger.ranked("alice")) == ["new", "old"] and ledger.value("next", 0.0) == 0.0


async def test_ended_datasets_are_passed_over_and_a_reset_one_is_matched_again(engine, clock):
    """What a submission and an ask look through is the datasets that have not ended, however
    many a user ran before; a dataset that ends and is reset is matched again at once, even
    after an ask found nothing of its user's for that shape."""
    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    done = [await s.submit(engine, alice, s.config(jobs=1)) for _ in range(3)]
    node = await s.pilot(engine, site)
    for dataset in done:
        await s.finish(engine, await s.ask(engine, node))
        assert dataset.status == DatasetStatus.COMPLETE
    wide = await s.submit(engine, alice, s.config(jobs=2, tasks=[s.task("wide", cpus=4)]))
    assert set(engine.open) == {wide.id}
    assert list(engine.dataset_usage.ranked(alice.user_id)) == [wide.id]
    assert await s.ask(engine, node) is None  # her only open dataset needs 4 CPUs
    assert (alice.user_id, None) in engine.missed_users[dispatch.shape_of(s.slot())]

    await actions.reset(engine, done[1], alice, "all")
    assert set(engine.open) == {wide.id, done[1].id}
    again = await s.ask(engine, node)
    assert again is not None and again.dataset is done[1]
    await s.finish(engine, again)
    assert set(engine.open) == {wide.id}
