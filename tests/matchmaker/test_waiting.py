"""Why a task that is not running waits, as its owner reads it: no pilot yet, no shape of any
site that fits it (shape by shape), a pilot a factory can start, its turn in fair share behind
other users and the owner's other datasets, its dependencies, a suspended dataset."""

from __future__ import annotations

import time

from floe.config.resources import GIB, Slot
from floe.matchmaker import actions, demand, pilots
from floe.matchmaker.auth import Auth
from floe.matchmaker.waiting import Explainer
from floe.pilot.slot import MeasuredSlot

from . import support as s


def shape(name: str, cpus: int, memory_gib: int = 4) -> demand.Shape:
    return demand.Shape(name, Slot(cpus=cpus, memory=memory_gib * GIB, disk=100 * GIB,
                                   seconds=4 * 3600, site="site-a"))


async def registered(engine, site, cpus: int) -> pilots.Pilot:
    """A pilot that registered its whole slot as floe's pilot does (its GPUs as a list, its
    time as `seconds_left`)."""
    auth = Auth(engine)
    (token,), _ = await auth.pilot_tokens(site, 3600)
    measured = MeasuredSlot(cpus=cpus, memory=4 * GIB, disk=20 * GIB, gpus=(),
                            deadline=time.time() + 86400, os=("debian12", "linux"),
                            arch="x86_64", python="3.11", host="node1", site="site-a",
                            batch_system="slurm", batch_job_id="17", scratch="/tmp")
    pilot, _ = await pilots.register(engine, await auth.authenticate(token), "node1", "test",
                                     "1", measured.to_dict())
    assert pilot.slot is not None and pilot.slot.cpus == cpus
    return pilot


def why(engine, dataset, job: int = 0, task: int = 0) -> str | None:
    return Explainer(engine).why(dataset, dataset.task_id(job, task))


async def test_a_ready_task_says_whether_any_pilot_or_shape_can_ever_run_it(engine):
    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    wide = await s.submit(engine, alice, s.config(jobs=2, tasks=[s.task("wide", cpus=8)]))
    assert why(engine, wide) == ("no pilot is running, and no factory has said what pilots "
                                 "it can start (start `floe factory` for a site, or `floe "
                                 "pilot`)")

    demand.demand(engine, "site-a", "f1", [shape("small", 1), shape("medium", 4)])
    assert why(engine, wide) == (
        "fits none of the pilot shapes the sites offer: site-a small: needs 8 CPUs, the "
        "shape has 1; site-a medium: needs 8 CPUs, the shape has 4")

    demand.demand(engine, "site-a", "f1", [shape("small", 1), shape("large", 16)])
    assert why(engine, wide) == ("no pilot that fits it is running yet; its site's factory "
                                 "can start one (large at site-a)")

    await registered(engine, site, cpus=16)
    assert why(engine, wide) == "next in line: 1 running pilot fits it, and it goes to the " \
                                "first that asks"


async def test_without_factories_the_running_pilots_say_why_they_do_not_fit(engine):
    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    wide = await s.submit(engine, alice, s.config(jobs=1, tasks=[s.task("wide", cpus=8)]))
    pilot = await registered(engine, site, cpus=2)
    assert why(engine, wide) == (
        "none of the 1 running pilots fits it, and no factory has said what pilots it can "
        f"start: pilot {pilot.pilot_id} at site-a: needs 8 CPUs, slot has 2")


async def test_a_task_behind_others_in_fair_share_says_who_goes_first(engine):
    site = await s.site(engine)
    alice, bob = await s.user(engine, "alice"), await s.user(engine, "bob")
    first = await s.submit(engine, alice, s.config(jobs=3))
    second = await s.submit(engine, alice, s.config(jobs=3))
    theirs = await s.submit(engine, bob, s.config(jobs=3))
    worker = await registered(engine, site, cpus=1)
    given = await s.ask(engine, worker)  # alice has used the pool now, bob not: bob goes first
    assert given is not None and given.dataset is first
    explainer = Explainer(engine)
    assert explainer.why(theirs, theirs.task_id(0, 0)) == (
        "next in line: 1 running pilot fits it, and it goes to the first that asks")
    assert explainer.why(second, second.task_id(0, 0)) == (
        "waiting its turn: 1 running pilot fits it; fair share serves 1 user with ready tasks "
        "first")
    assert explainer.why(first, first.task_id(1, 0)) == (
        "waiting its turn: 1 running pilot fits it; fair share serves 1 user with ready tasks "
        "and 1 of the owner's datasets first")
    summary = explainer.summary(theirs)
    assert summary == [{"task": "work", "tasks": 3,
                        "why": explainer.why(theirs, theirs.task_id(0, 0))}]


async def test_waiting_and_suspended_tasks_say_what_they_wait_for(engine):
    await s.site(engine)
    alice = await s.user(engine, "alice")
    dataset = await s.submit(engine, alice, s.config(jobs=2, tasks=[
        s.task("gen"), s.task("sim", depends=["gen"]), s.task("merge", depends=["gen", "sim"])]))
    assert why(engine, dataset, 0, 1) == "waiting on gen (ready)"
    assert why(engine, dataset, 0, 2) == "waiting on gen (ready), sim (waiting)"
    assert why(engine, dataset, 0, 0).startswith("no pilot is running")
    await actions.suspend(engine, dataset, alice)
    assert why(engine, dataset, 1, 0) == "suspended: its dataset is suspended (resume it to go on)"
