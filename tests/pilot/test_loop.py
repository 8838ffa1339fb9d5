"""Pieces of the online loop that the end-to-end tests cannot time: an attempt the pilot will
not run is given back at once (the matchmaker requeues it), the report body carries what the
matchmaker records, and a lane takes queued tasks in their order."""

from __future__ import annotations

import dataclasses

from floe.config.resources import GIB, MIB, Slot, Usage
from floe.config.states import ErrorClass
from floe.pilot.claims import Claim
from floe.pilot.client import Matchmaker
from floe.pilot.gpus import Gpu
from floe.pilot.lanes import Finished, attempt_of
from floe.pilot.limits import Overuse
from floe.pilot.loop import Pilot
from floe.pilot.reports import report_of
from floe.pilot.runner import TaskResult, run_task
from floe.pilot.scratch import Scratch
from floe.pilot.settings import PilotSettings
from floe.pilot.slot import measure
from floe.pilot.workarea import WorkArea

from .live import LiveMatchmaker


def pilot_with_an_attempt(matchmaker: LiveMatchmaker, tmp_path,
                          memory: int) -> tuple[Pilot, dict]:
    """A registered pilot with a slot of `memory` bytes, and an attempt of a 64 MiB task that
    the matchmaker handed it."""
    matchmaker.submit({"jobs": 1, "tasks": [{"name": "work", "requirements": {
        "memory": "64MiB", "disk": "1MiB"}, "modules": [{"command": "true"}]}]})
    slot = dataclasses.replace(measure(lifetime=3600, scratch=tmp_path, gpu_source=None),
                               memory=memory)
    work = WorkArea(tmp_path)
    work.open()
    pilot = Pilot(Matchmaker(matchmaker.url, matchmaker.pilot_token()), slot, work,
                  PilotSettings())
    pilot._register(pilot.clock())
    attempt = pilot.client.ask(pilot.pilot_id, Slot(cpus=1, memory=GIB, disk=GIB)).data
    return pilot, attempt["attempt"]


def requeued_as(matchmaker: LiveMatchmaker, pilot: Pilot, attempt: dict, error_class: str
                ) -> str:
    """Deliver what the pilot kept; the attempt's error message once it is recorded as ended
    with `error_class` (pilot_lost, or not_run for one given back unstarted) and its task
    requeued."""
    pilot._deliver(pilot.clock())
    [task] = matchmaker.tasks(attempt["dataset"])
    assert task["state"] == "ready" and task["failures"] == 0
    [recorded] = task["attempts"]
    assert (recorded["state"], recorded["error_class"]) == ("reset", error_class)
    return recorded["error_message"]


def test_an_attempt_larger_than_the_free_slot_is_given_back_and_requeued(
        matchmaker: LiveMatchmaker, tmp_path):
    pilot, attempt = pilot_with_an_attempt(matchmaker, tmp_path, memory=16 * MIB)
    pilot._take(attempt, pilot.clock(), in_series=False)
    assert not pilot.claims.busy
    assert "needs more than the pilot has free: 64MiB memory (16MiB free)" in \
        requeued_as(matchmaker, pilot, attempt, "pilot_lost")
    pilot.work.close()


def test_an_attempt_that_arrives_as_the_pilot_drains_is_given_back_not_run(
        matchmaker: LiveMatchmaker, tmp_path):
    pilot, attempt = pilot_with_an_attempt(matchmaker, tmp_path, memory=GIB)
    pilot.drain("SIGTERM received")
    pilot._take(attempt, pilot.clock(), in_series=False)
    assert not pilot.claims.busy
    assert "told to stop" in requeued_as(matchmaker, pilot, attempt, "not_run")
    pilot.work.close()


def test_a_report_carries_what_the_matchmaker_records():
    result = TaskResult(
        task="work", exit_code=-9, error_class=ErrorClass.RESOURCE_OVERUSE,
        error_message="x" * 30_000, usage=Usage(cpu_time=1.5, wall_time=2.0, peak_memory=5),
        overuse=Overuse("memory", 4, 5), statistics={"events": 3.0}, stdout_tail="out",
        stderr_tail="err", outputs=[{"local": "a", "url": "file:///a", "sha256": "ab",
                                     "size": 1}],
        start_time=0.0, end_time=2.0, scratch="/s", stdout_path="/s/o", stderr_path="/s/e")
    report = report_of(result)
    assert report["exit_code"] == -9
    assert report["error_class"] == "resource_overuse"
    assert len(report["error_message"]) == 20_000
    assert report["overuse"] == {"resource": "memory", "requested": 4, "peak": 5}
    assert report["usage"]["peak_memory"] == 5
    assert (report["statistics"], report["stdout_tail"], report["stderr_tail"]) == (
        {"events": 3.0}, "out", "err")
    assert report["outputs"] == result.outputs
    result.overuse = None
    assert "overuse" not in report_of(result)


def synthetic_attempt(attempt_id: int, cpus: int, gpus: int = 0) -> dict:
    """An attempt as the matchmaker hands it out, of a null task needing `cpus` CPUs."""
    requirements = {"cpus": cpus, "memory": 64 * MIB, "disk": MIB, "gpus": gpus,
                    "walltime": 60}
    return {"id": attempt_id, "passkey": f"pk-{attempt_id}", "task_id": attempt_id,
            "dataset": 1, "job": attempt_id, "task": "null", "jobs_submitted": 10,
            "requirements": requirements, "steering": {},
            "spec": {"name": "null", "modules": [{"command": "true"}]}}


def test_a_lane_takes_the_next_queued_task_only_if_its_claim_holds_it(tmp_path):
    slot = dataclasses.replace(measure(lifetime=3600, scratch=tmp_path, gpu_source=None),
                               cpus=2, memory=GIB, disk=GIB)
    work = WorkArea(tmp_path)
    work.open()
    pilot = Pilot(Matchmaker("http://127.0.0.1:9"), slot, work, PilotSettings())
    try:
        lanes = pilot.lanes
        big, small = (lanes.hold(attempt_of(synthetic_attempt(n, cpus), 0.0, {}))
                      for n, cpus in ((1, 2), (2, 1)))
        lanes.queue.extend([big, small])
        lane = Claim(cpus=1, memory=GIB // 2, disk=GIB // 2)
        succeeded = Finished(small, run_task({"task": {"name": "null", "modules": [
            {"command": "true"}]}}, tmp_path / "done"), {}, {}, 0.0)
        scratch = Scratch(tmp_path / "lane")
        # The two-CPU task at the head waits for the lane to end, not for every small one
        # behind it to have run.
        assert lanes.next_in_lane(succeeded, lane, scratch) is None
        lanes.queue.rotate(-1)
        assert lanes.next_in_lane(succeeded, lane, scratch) is small
        assert list(lanes.queue) == [big]
        failed = dataclasses.replace(succeeded, result=dataclasses.replace(
            succeeded.result, error_class=ErrorClass.TASK_ERROR))
        lanes.queue.appendleft(lanes.hold(attempt_of(synthetic_attempt(3, 1), 0.0, {})))
        assert lanes.next_in_lane(failed, lane, scratch) is None
    finally:
        work.close()


def test_a_task_in_a_lane_sees_only_as_many_of_its_gpus_as_it_asked_for(tmp_path):
    gpus = (Gpu(0, "GPU-aaaa", "A100", 40 * GIB), Gpu(1, "GPU-bbbb", "A100", 40 * GIB))
    slot = dataclasses.replace(measure(lifetime=3600, scratch=tmp_path, gpu_source=None),
                               cpus=2, memory=GIB, disk=GIB, gpus=gpus)
    work = WorkArea(tmp_path)
    work.open()
    pilot = Pilot(Matchmaker("http://127.0.0.1:9"), slot, work, PilotSettings())
    try:
        lanes = pilot.lanes
        both = pilot.claims.claim(attempt_of(synthetic_attempt(1, 1, gpus=2), 0.0,
                                             {}).requirements)
        later = attempt_of(synthetic_attempt(2, 1, gpus=1), 0.0, {})
        assert [gpu.uuid for gpu in lanes.task_run(later, both, Scratch(tmp_path)).gpus] == \
            ["GPU-aaaa"]
        none = attempt_of(synthetic_attempt(3, 1), 0.0, {})
        assert lanes.task_run(none, both, Scratch(tmp_path)).gpus == ()
    finally:
        work.close()
