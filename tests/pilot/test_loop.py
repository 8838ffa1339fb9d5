"""Pieces of the online loop that the end-to-end tests cannot time: an attempt the pilot will
not run is given back at once (the matchmaker requeues it), and the report body carries what
the matchmaker records."""

from __future__ import annotations

import dataclasses

from config.resources import GIB, MIB, Slot, Usage
from config.states import ErrorClass
from pilot.client import Matchmaker
from pilot.limits import Overuse
from pilot.loop import Pilot, PilotSettings, report_of
from pilot.runner import TaskResult
from pilot.slot import measure
from pilot.workarea import WorkArea

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


def requeued_as_lost(matchmaker: LiveMatchmaker, pilot: Pilot, attempt: dict) -> str:
    """Deliver what the pilot kept; the attempt's error message once it is recorded as lost."""
    pilot._deliver(pilot.clock())
    [task] = matchmaker.tasks(attempt["dataset"])
    assert task["state"] == "ready" and task["failures"] == 0
    [recorded] = task["attempts"]
    assert (recorded["state"], recorded["error_class"]) == ("reset", "pilot_lost")
    return recorded["error_message"]


def test_an_attempt_larger_than_the_free_slot_is_given_back_and_requeued(
        matchmaker: LiveMatchmaker, tmp_path):
    pilot, attempt = pilot_with_an_attempt(matchmaker, tmp_path, memory=16 * MIB)
    pilot._start(pilot._hold(attempt, pilot.clock()))
    assert not pilot.claims.busy
    assert "needs more than the pilot has free: 64MiB memory (16MiB free)" in \
        requeued_as_lost(matchmaker, pilot, attempt)
    pilot.work.close()


def test_an_attempt_that_arrives_as_the_pilot_drains_is_given_back_not_run(
        matchmaker: LiveMatchmaker, tmp_path):
    pilot, attempt = pilot_with_an_attempt(matchmaker, tmp_path, memory=GIB)
    pilot.drain("SIGTERM received")
    pilot._start(pilot._hold(attempt, pilot.clock()))
    assert not pilot.claims.busy
    assert "told to stop" in requeued_as_lost(matchmaker, pilot, attempt)
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
