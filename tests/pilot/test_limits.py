"""The limits policy as a table: slot sizes, requests and usage in, the tasks to kill out."""

from __future__ import annotations

import pytest

from floe.pilot.limits import Overuse, TaskLoad, overused

MB = 10**6


def load(key, request, using, *, disk_request=1000 * MB, disk=0, walltime=3600, elapsed=10,
         peak=0):
    return TaskLoad(key=key, memory_request=request * MB, disk_request=disk_request,
                    walltime=walltime, memory=using * MB, disk=disk, elapsed=elapsed,
                    peak_memory=peak * MB)


CASES = [
    # (case, slot memory in MB, [(task, requested MB, using MB)], {task: killed for memory})
    ("everyone within their request", 1000, [("a", 500, 400), ("b", 500, 500)], set()),
    ("over its request while the slot has room", 1000, [("a", 100, 300), ("b", 500, 200)], set()),
    ("over its request into room another task requested", 1000,
     [("a", 100, 600), ("b", 500, 100)], {"a"}),
    ("alone and beyond the whole slot", 100, [("a", 100, 300)], {"a"}),
    ("the task furthest above its request goes first", 1000,
     [("a", 200, 450), ("b", 200, 500), ("c", 100, 100)], {"b"}),
    ("killing one is not enough, so the next goes too", 700,
     [("a", 100, 400), ("b", 100, 450), ("c", 400, 300)], {"a", "b"}),
    ("an overcommitted slot kills no task within its request", 500,
     [("a", 400, 400), ("b", 400, 100)], set()),
    ("a task exactly filling the room left is allowed", 1000, [("a", 100, 500), ("b", 500, 10)],
     set()),
]


@pytest.mark.parametrize(("slot", "tasks", "killed"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_memory_policy(slot, tasks, killed):
    loads = [load(key, request, using) for key, request, using in tasks]
    verdicts = overused(loads, memory=slot * MB, disk=10**12, walltime_grace=60)
    assert set(verdicts) == killed
    assert all(v.resource == "memory" for v in verdicts.values())


def test_a_verdict_reports_the_request_and_the_peak_not_the_current_use():
    verdicts = overused([load("a", 100, 300, peak=350)], memory=100 * MB, disk=10**12,
                        walltime_grace=60)
    assert verdicts == {"a": Overuse("memory", 100 * MB, 350 * MB)}


def test_disk_follows_the_same_policy():
    loads = [load("a", 10, 10, disk_request=100 * MB, disk=700 * MB),
             load("b", 10, 10, disk_request=500 * MB, disk=0)]
    assert overused(loads, memory=10**12, disk=1000 * MB, walltime_grace=60) == {
        "a": Overuse("disk", 100 * MB, 700 * MB)}
    assert overused(loads, memory=10**12, disk=2000 * MB, walltime_grace=60) == {}


@pytest.mark.parametrize(("elapsed", "grace", "killed"), [
    (100, 60, False), (160, 60, False), (161, 60, True), (101, 0, True)])
def test_walltime_is_the_request_plus_a_grace(elapsed, grace, killed):
    verdicts = overused([load("a", 10, 10, walltime=100, elapsed=elapsed)], memory=10**12,
                        disk=10**12, walltime_grace=grace)
    assert verdicts == ({"a": Overuse("walltime", 100, elapsed)} if killed else {})


def test_a_task_killed_for_walltime_frees_its_memory_for_the_others():
    loads = [load("a", 100, 100, walltime=10, elapsed=100), load("b", 100, 850)]
    verdicts = overused(loads, memory=900 * MB, disk=10**12, walltime_grace=0)
    assert {key: v.resource for key, v in verdicts.items()} == {"a": "walltime"}


def test_overuse_messages_name_the_resource_and_the_numbers():
    assert Overuse("memory", 100 * 2**20, 300 * 2**20).message() == (
        "used 300MiB memory (requested 100MiB) when the slot had no more to spare")
    assert Overuse("walltime", 60, 75).message() == "ran 1m15s, past its walltime of 1m"
