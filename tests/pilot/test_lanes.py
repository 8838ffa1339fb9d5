"""Lanes between runs: a lane that ran out of work is parked with its thread and scratch
directory and runs the next attempt handed out, ends after a while unused or when the pilot
ends; and the pilot's next ask waits while lanes start the attempts just handed to them."""

from __future__ import annotations

import dataclasses
import http.server
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from floe.config.resources import GIB
from floe.pilot import lanes as lanes_module
from floe.pilot.client import Matchmaker
from floe.pilot.lanes import Attempt, Finished, attempt_of
from floe.pilot.loop import Pilot
from floe.pilot.settings import PilotSettings
from floe.pilot.slot import measure
from floe.pilot.workarea import WorkArea

from .live import LiveMatchmaker, wait_for
from .test_bulk import Recording
from .test_loop import synthetic_attempt


@pytest.fixture
def pilot(tmp_path: Path) -> Iterator[Pilot]:
    """A pilot of 2 CPUs that talks to nobody: its lanes are driven by hand."""
    slot = dataclasses.replace(measure(lifetime=3600, scratch=tmp_path, gpu_source=None),
                               cpus=2, memory=GIB, disk=GIB)
    work = WorkArea(tmp_path)
    work.open()
    pilot = Pilot(Matchmaker("http://127.0.0.1:9"), slot, work, PilotSettings())
    OTHERS.update(t for t in threading.enumerate() if t.name.startswith("lane-"))
    try:
        yield pilot
    finally:
        pilot.lanes.close()
        pilot._wake.close()
        work.close()


def attempt(number: int, command: str = "true") -> Attempt:
    answer = synthetic_attempt(number, 1)
    answer["spec"] = {"name": "null", "modules": [{"command": command}]}
    return attempt_of(answer, 0.0, {})


def run_alone(pilot: Pilot, number: int, command: str = "true") -> Finished:
    """Start an attempt in a lane of its own and collect it once its lane has given back its
    claim."""
    lanes = pilot.lanes
    assert lanes.start(lanes.hold(attempt(number, command))) is None
    done: list[Finished] = []

    def over() -> bool:
        done.extend(lanes.collect()[1])
        return bool(done) and not lanes.running
    wait_for(over, what=f"attempt {number} to end")
    assert not pilot.claims.busy
    [finished] = done
    return finished


OTHERS: set[threading.Thread] = set()
"""Lane threads of other tests' pilots, left parked."""


def lane_threads() -> list[threading.Thread]:
    """The lane threads of the test's pilot."""
    return [t for t in threading.enumerate() if t.name.startswith("lane-") and t not in OTHERS]


def test_a_lane_out_of_work_is_parked_and_runs_the_next_attempt(pilot: Pilot):
    first = run_alone(pilot, 1)
    assert first.result is not None and first.result.ok
    [parked] = lane_threads()
    scratch = Path(first.result.scratch)
    assert scratch.is_dir(), "a parked lane keeps its scratch directory"
    second = run_alone(pilot, 2)
    assert second.result is not None and second.result.ok
    assert lane_threads() == [parked] and second.result.scratch == str(scratch)


def test_what_a_process_of_an_earlier_task_writes_later_is_gone_before_the_next_starts(
        pilot: Pilot, tmp_path: Path):
    """A process that left the task's session and cleared its environment (so outlived the
    task: what keeps the task's variables is ended with it) writes into the parked lane's
    directory after the task ended: the next attempt there does not see it. The task waits
    until the writer is in its own session (it says so outside the directory, which must look
    unused when the lane parks), or its end could find it still in the task's session, a
    member of its tree, and end it with the task."""
    ready = tmp_path / "ready"
    first = run_alone(pilot, 1, f"(setsid env -i sh -c 'touch {ready}; sleep 0.3; "
                                f"echo late > LATE' &); while [ ! -e {ready} ]; do sleep 0.01; "
                                "done")
    assert first.result is not None and first.result.ok
    wait_for(lambda: (Path(first.result.scratch) / "LATE").exists(), what="the late write")
    second = run_alone(pilot, 2, "ls -A")
    assert second.result is not None and second.result.scratch == first.result.scratch
    assert second.result.stdout_tail.split() == ["floe.stderr.log", "floe.stdout.log"]


def test_two_attempts_side_by_side_take_two_lanes_and_both_are_parked(pilot: Pilot):
    lanes = pilot.lanes
    for number in (1, 2):
        assert lanes.start(lanes.hold(attempt(number, "sleep 0.3"))) is None
    assert len(lane_threads()) == 2
    done: list[Finished] = []

    def over() -> bool:
        done.extend(lanes.collect()[1])
        return len(done) == 2 and not lanes.running
    wait_for(over, what="both attempts to end")
    assert len(lane_threads()) == 2 and not pilot.claims.busy
    assert len({d.result.scratch for d in done if d.result is not None}) == 2


def test_a_parked_lane_ends_after_a_while_and_removes_its_scratch(
        pilot: Pilot, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(lanes_module, "PARKED_SECONDS", 0.2)
    first = run_alone(pilot, 1)
    assert first.result is not None
    wait_for(lambda: not lane_threads(), what="the parked lane to end")
    assert not Path(first.result.scratch).exists()
    second = run_alone(pilot, 2)  # a new lane
    assert second.result is not None and second.result.ok


def test_abandoning_keeps_the_reports_of_attempts_finished_and_not_collected(pilot: Pilot):
    lanes = pilot.lanes
    assert lanes.start(lanes.hold(attempt(1))) is None
    wait_for(lambda: lanes.finished and not lanes._threads, what="the lane to be parked")
    [kept] = lanes.abandon("the loop failed")
    assert kept.attempt.attempt_id == 1 and kept.report is not None


def test_closing_the_lanes_ends_the_parked_ones(pilot: Pilot):
    first = run_alone(pilot, 1)
    assert first.result is not None and lane_threads()
    pilot.lanes.close()
    assert not lane_threads()
    assert not Path(first.result.scratch).exists()


def test_the_next_ask_waits_until_lanes_have_started_what_they_were_handed(pilot: Pilot):
    lanes = pilot.lanes
    assert lanes.ask_after() is None
    before = pilot.clock()
    assert lanes.start(lanes.hold(attempt(1, "sleep 0.5"))) is None
    after = lanes.ask_after()
    assert after is not None
    assert before + lanes_module.STARTING_PATIENCE <= after <= \
        pilot.clock() + lanes_module.STARTING_PATIENCE
    # The lane wakes the loop once the task's process has started, long before it ends.
    ready, _, _ = select.select([pilot._wake._read], [], [], 5)
    assert ready and lanes.ask_after() is None
    assert lanes.running and not lanes.collect()[1]
    wait_for(lambda: lanes.collect()[1], what="the attempt to end")


class SlowInput(http.server.BaseHTTPRequestHandler):
    """Serves an input only once the test lets it go."""

    release = threading.Event()

    def do_GET(self) -> None:
        self.release.wait(30)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def test_the_loop_asks_again_once_its_patience_with_a_starting_task_is_spent(
        matchmaker: LiveMatchmaker, pilot: Pilot):
    """A task still fetching its input holds the next ask up for `STARTING_PATIENCE` only."""
    pilot.client = Recording(matchmaker.url, matchmaker.pilot_token())
    pilot._register(pilot.clock())
    inputs = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowInput)
    threading.Thread(target=inputs.serve_forever, daemon=True).start()
    SlowInput.release.clear()
    try:
        answer = synthetic_attempt(1, 1)
        answer["spec"] = {"name": "null", "modules": [{"command": "cat in"}], "inputs": [
            {"url": f"http://127.0.0.1:{inputs.server_port}/in", "local": "in"}]}
        lanes = pilot.lanes
        assert lanes.start(lanes.hold(attempt_of(answer, 0.0, {}))) is None
        pilot._register_or_ask(pilot.clock())
        assert pilot.client.asks == [], "asked while the task was starting"
        time.sleep(lanes_module.STARTING_PATIENCE)
        pilot._register_or_ask(pilot.clock())
        assert len(pilot.client.asks) == 1, "the ask waited past its patience"
    finally:
        SlowInput.release.set()
        inputs.shutdown()
    [done] = wait_for(lambda: lanes.collect()[1], what="the attempt to end")
    assert done.result is not None and done.result.ok and done.result.stdout_tail == "ok"


def test_an_attempt_that_fails_before_its_process_starts_does_not_hold_up_the_asks(
        pilot: Pilot):
    lanes = pilot.lanes
    answer = synthetic_attempt(1, 1)
    answer["spec"] = {"name": "null", "modules": [{"command": ["$eval(1/0)"]}]}
    assert lanes.start(lanes.hold(attempt_of(answer, 0.0, {}))) is None
    [done] = wait_for(lambda: lanes.collect()[1], what="the attempt to end")
    assert done.result is not None and not done.result.ok
    assert lanes.ask_after() is None
