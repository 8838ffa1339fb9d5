"""What factories are told about demand: each ready task counted once, for the smallest shape
it fits, minus what other factories' queued pilots will hold; and which of a factory's pilots
registered, answered from the database (ended pilots, a restarted matchmaker)."""

from __future__ import annotations

from floe.config.resources import GIB, Slot
from floe.matchmaker import demand
from tests.pilot.live import LiveMatchmaker

from . import support as s


def shape(name: str, cpus: int, memory_gib: int, gpus: int = 0, queued: int = 0,
          walltime: int = 4 * 3600) -> demand.Shape:
    return demand.Shape(name, Slot(cpus=cpus, memory=memory_gib * GIB, disk=100 * GIB,
                                   gpus=gpus, seconds=walltime, site="site-a"), queued)


async def filled(engine):
    alice = await s.user(engine, "alice")
    await s.submit(engine, alice, s.config(jobs=10))                                 # 1 CPU
    await s.submit(engine, alice, s.config(jobs=4, tasks=[s.task("big", cpus=4,
                                                                  memory="12GiB")]))
    await s.submit(engine, alice, s.config(jobs=3, tasks=[s.task("gpu", gpus=1)]))
    return alice


async def test_each_task_counts_once_for_the_smallest_shape_it_fits(engine):
    await filled(engine)
    answer = demand.demand(engine, "site-a", "f1", [shape("large", 8, 32),
                                                    shape("small", 1, 4),
                                                    shape("gpu", 4, 16, gpus=1)])
    by_name = {s["name"]: s for s in answer["shapes"]}
    assert by_name["small"]["tasks"] == 10 and by_name["small"]["pilots_needed"] == 10
    assert by_name["large"]["tasks"] == 4 and by_name["large"]["cpus"] == 16
    assert by_name["large"]["pilots_needed"] == 2       # two 4-CPU, 12 GiB tasks per 8/32 pilot
    assert by_name["large"]["fitting"] == 14
    assert by_name["gpu"]["tasks"] == 3 and by_name["gpu"]["gpus"] == 3


async def test_walltime_beyond_a_shape_leaves_it_without_demand(engine):
    alice = await s.user(engine, "alice")
    await s.submit(engine, alice, s.config(jobs=2, tasks=[s.task("long", walltime="10h")]))
    answer = demand.demand(engine, "site-a", "f1", [shape("short", 1, 4, walltime=3600)])
    assert answer["shapes"][0]["tasks"] == 0


async def test_tasks_that_may_run_here_but_fit_no_shape_are_reported_with_the_reason(engine):
    alice = await s.user(engine, "alice")
    await s.submit(engine, alice, s.config(jobs=3, tasks=[s.task("long", walltime="10h")]))
    await s.submit(engine, alice, s.config(jobs=2, tasks=[s.task("wide", cpus=16)]))
    await s.submit(engine, alice, s.config(jobs=1, tasks=[s.task("fine")]))
    # Tasks meant for other sites are no concern of this one's, however large.
    await s.submit(engine, alice, s.config(jobs=4, tasks=[s.task("elsewhere", cpus=64,
                                                                 sites=["site-z"])]))
    await s.submit(engine, alice, s.config(jobs=4, tasks=[s.task("not-here", cpus=64,
                                                                 exclude_sites=["site-a"])]))
    answer = demand.demand(engine, "site-a", "f1", [shape("small", 1, 4, walltime=3600),
                                                    shape("big", 8, 32, walltime=7200)])
    assert answer["unfit"] == {"tasks": 5, "kinds": [
        {"tasks": 3, "why": "shape small: needs 10h walltime, the shape has 1h; "
                            "shape big: needs 10h walltime, the shape has 2h"},
        {"tasks": 2, "why": "shape small: needs 16 CPUs, the shape has 1; "
                            "shape big: needs 16 CPUs, the shape has 8"}]}
    assert [entry["tasks"] for entry in answer["shapes"]] == [1, 0]
    fitting = demand.demand(engine, "site-a", "f1", [shape("huge", 16, 64, walltime=86400)])
    assert fitting["unfit"] == {"tasks": 0, "kinds": []}


async def test_another_factorys_queued_pilots_are_not_counted_twice(engine):
    await filled(engine)
    first = demand.demand(engine, "site-a", "f1", [shape("small", 1, 4, queued=6)])
    assert first["shapes"][0]["tasks"] == 10  # its own queue is not subtracted
    second = demand.demand(engine, "site-b", "f2", [shape("small", 1, 4)])
    assert second["shapes"][0]["tasks"] == 4
    again = demand.demand(engine, "site-a", "f1", [shape("small", 1, 4, queued=6)])
    assert again["shapes"][0]["tasks"] == 10


async def test_what_a_silent_factory_said_it_queued_lapses(engine, clock):
    await filled(engine)
    demand.demand(engine, "site-a", "f1", [shape("small", 1, 4, queued=10)])
    assert demand.demand(engine, "site-b", "f2", [shape("small", 1, 4)])["shapes"][0][
        "tasks"] == 0
    clock.advance(demand.QUEUED_TTL + 1)
    assert demand.demand(engine, "site-b", "f2", [shape("small", 1, 4)])["shapes"][0][
        "tasks"] == 10


async def test_no_demand_when_nothing_can_run_at_the_site(engine):
    alice = await s.user(engine, "alice")
    await s.submit(engine, alice, s.config(jobs=5, tasks=[s.task("elsewhere",
                                                                 sites=["site-z"])]))
    answer = demand.demand(engine, "site-a", "f1", [shape("small", 1, 4)])
    assert answer["shapes"][0]["tasks"] == 0


async def test_the_free_room_of_idle_running_pilots_is_counted_as_room_not_new_pilots(engine):
    alice = await s.user(engine, "alice")
    site_a = await s.site(engine, "site-a")
    idle = [await s.pilot(engine, site_a, host=f"node{i}") for i in range(2)]
    for p in idle:
        assert await s.ask(engine, p, s.slot(cpus=4, site="site-a")) is None
    await s.submit(engine, alice, s.config(jobs=10))
    answer = demand.demand(engine, "site-a", "f1", [shape("small", 1, 4)])
    small = answer["shapes"][0]
    assert small["tasks"] == 10 and small["pilots_needed"] == 10
    assert small["room"] == 8            # two idle 4-CPU pilots take 8 of the 1-CPU tasks
    assert answer["pilots"]["idle"] == 2
    elsewhere = demand.demand(engine, "site-b", "f2", [shape("small", 1, 4)])
    assert elsewhere["shapes"][0]["room"] == 0


async def test_a_pilot_that_got_a_task_no_longer_counts_as_free_room(engine, clock):
    alice = await s.user(engine, "alice")
    site_a = await s.site(engine, "site-a")
    p = await s.pilot(engine, site_a)
    assert await s.ask(engine, p, s.slot(site="site-a")) is None
    await s.submit(engine, alice, s.config(jobs=3))
    assert await s.ask(engine, p, s.slot(site="site-a")) is not None
    assert demand.demand(engine, "site-a", "f1", [shape("small", 1, 4)])["shapes"][0][
        "room"] == 0
    other = await s.pilot(engine, site_a, host="node2")
    assert await s.ask(engine, other, s.slot(cpus=0, site="site-a")) is None
    clock.advance(3 * engine.settings.idle_wait + 1)   # a pilot silent this long has no room
    assert demand.demand(engine, "site-a", "f1", [shape("small", 1, 4)])["shapes"][0][
        "room"] == 0


async def test_pilots_that_ended_without_a_task_are_reported_for_a_while(engine, clock):
    from floe.matchmaker import pilots

    site_a = await s.site(engine, "site-a")
    empty = await s.pilot(engine, site_a)
    await pilots.sign_off(engine, empty, "idle")
    answer = demand.demand(engine, "site-a", "f1", [shape("small", 1, 4)])
    assert answer["pilots"]["ended_empty"] == 1
    assert demand.demand(engine, "site-b", "f1", [shape("small", 1, 4)])["pilots"][
        "ended_empty"] == 0
    clock.advance(demand.EMPTY_WINDOW + 1)
    assert demand.demand(engine, "site-a", "f1", [shape("small", 1, 4)])["pilots"][
        "ended_empty"] == 0


async def test_an_idle_pilot_too_small_for_the_ready_tasks_is_no_room(engine):
    alice = await s.user(engine, "alice")
    site_a = await s.site(engine, "site-a")
    small = await s.pilot(engine, site_a)
    assert await s.ask(engine, small, s.slot(cpus=1, memory=GIB, site="site-a")) is None
    await s.submit(engine, alice, s.config(jobs=3, tasks=[s.task("big", cpus=4,
                                                                  memory="12GiB")]))
    answer = demand.demand(engine, "site-a", "f1", [shape("large", 8, 32)])
    assert answer["shapes"][0]["pilots_needed"] == 2 and answer["shapes"][0]["room"] == 0


def test_registered_pilots_are_answered_after_they_ended_and_after_a_restart(
        matchmaker: LiveMatchmaker):
    keys = {}

    def register(batch_id: str) -> int:
        status, pilot = matchmaker.api("POST", "/pilots", {
            "host": "node1", "batch_system": "local", "batch_id": batch_id},
            token=matchmaker.pilot_token())
        assert status == 201, pilot
        keys[pilot["pilot_id"]] = pilot["key"]
        return pilot["pilot_id"]

    def registered(pilots: list[str]) -> list[str]:
        status, answer = matchmaker.api("POST", "/sites/site-a/batch-jobs", {
            "batch_system": "local", "pilots": pilots}, token=matchmaker.site_token)
        assert status == 200, answer
        return answer["registered"]

    ended = register("a1")
    status, answer = matchmaker.api("POST", f"/pilots/{ended}/exit", {"reason": "idle"},
                                    token=keys[ended])
    assert status == 200 and answer["state"] == "exited"
    register("a2")
    asked = ["a0", "a1", "a2", "a3"]
    assert registered(asked) == ["a1", "a2"]       # a1 registered and ended between two asks
    matchmaker.stop()
    matchmaker.start()
    register("a3")                                 # after the restart
    assert registered(asked) == ["a1", "a2", "a3"]
