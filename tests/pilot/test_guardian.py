"""The guardian ends the trees of a killed pilot's modules: the watched ones (grandchildren and a
child in a session of its own included), one the pilot was starting as it died (found by its
FLOE_SCRATCH), but not a released one; it outlives a SIGTERM meant for the batch job, and a
pilot that leaves normally has it end what is still watched and exit at once. A stand-in pilot
(a subprocess using `Guardian` as the pilot does) is killed with SIGKILL for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from floe.pilot.guardian import Guardian
from floe.pilot.proctree import read_stat

from .live import ROOT, wait_for

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")

# A module that starts a grandchild and a child in a session of its own, and says their pids.
MODULE = "sleep 60 & echo $!; setsid sleep 60 & echo $!; echo $$; wait"

STAND_IN = textwrap.dedent("""
    import json, os, subprocess, sys, time
    from floe.pilot.guardian import Guardian
    tasks, how = sys.argv[1], sys.argv[2].split(",")
    guardian = Guardian.start(tasks, grace=1.0)
    env = dict(os.environ)
    if "mark" in how:
        env["FLOE_SCRATCH"] = os.path.join(tasks, "lane0")
    module = subprocess.Popen(["/bin/sh", "-c", sys.argv[3]], env=env,
                              stdout=subprocess.PIPE, start_new_session=True, text=True)
    pids = [int(module.stdout.readline()) for _ in range(3)]
    if "watch" in how:
        guardian.watch(module.pid)
    if "release" in how:
        guardian.release(module.pid)
    print(json.dumps({"guardian": guardian.process.pid, "module": pids}), flush=True)
    time.sleep(600)
""")


def running(pid: int) -> bool:
    info = read_stat(pid)
    return info is not None and not info.zombie


def stand_in(tmp_path: Path, how: str, leftovers: list[int]
             ) -> tuple[subprocess.Popen, int, list[int]]:
    """A stand-in pilot, its guardian's pid, and the pids of its module's processes. `how`:
    whether the module's environment has FLOE_SCRATCH under the pilot's tasks' directory
    ("mark"), whether the pilot watches it ("watch"), and releases it ("release")."""
    pilot = subprocess.Popen([sys.executable, "-c", STAND_IN, str(tmp_path / "run"), how, MODULE],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    leftovers.append(pilot.pid)
    said = json.loads(pilot.stdout.readline())
    leftovers.extend(said["module"])
    return pilot, said["guardian"], said["module"]


@pytest.fixture
def leftovers():
    """Pids a test may leave running (on purpose, or when it fails), killed after it."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", [
    pytest.param("watch,mark", id="watched"),
    pytest.param("watch", id="watched-without-floe-scratch"),
    pytest.param("mark", id="being-started"),  # found by its FLOE_SCRATCH alone
])
def test_the_module_tree_of_a_pilot_killed_with_sigkill_is_ended(tmp_path, how, leftovers):
    pilot, guardian, module = stand_in(tmp_path, how, leftovers)
    assert all(map(running, module))
    # As a batch system ending the job: SIGTERM to everything, then SIGKILL to the pilot.
    os.kill(guardian, signal.SIGTERM)
    time.sleep(0.2)
    assert running(guardian)

    pilot.kill()
    pilot.wait()

    wait_for(lambda: not any(map(running, module)), 5, "the module's processes to end")
    wait_for(lambda: not running(guardian), 5, "the guardian to exit")


def test_a_released_module_is_left_alone(tmp_path, leftovers):
    pilot, guardian, module = stand_in(tmp_path, "watch,release", leftovers)
    pilot.kill()
    pilot.wait()
    wait_for(lambda: not running(guardian), 5, "the guardian to exit")
    assert all(map(running, module))


def test_a_pilot_that_leaves_has_its_guardian_end_what_is_still_watched_and_exit(tmp_path,
                                                                                  leftovers):
    guardian = Guardian.start(tmp_path / "run", grace=1.0)
    module = subprocess.Popen(["/bin/sh", "-c", MODULE], stdout=subprocess.PIPE,
                              start_new_session=True, text=True)
    pids = [int(module.stdout.readline()) for _ in range(3)]
    leftovers.extend(pids)
    guardian.watch(module.pid)
    guardian.close()
    assert module.wait(5) != 0
    wait_for(lambda: not any(map(running, pids)), 5, "the module's processes to end")

    started = time.monotonic()
    Guardian.start(tmp_path / "run", grace=1.0).close()
    assert time.monotonic() - started < 2.0


def test_a_pilot_that_leaves_has_its_guardian_end_what_its_tasks_left_outside_their_trees(
        tmp_path, leftovers):
    """A process that a task started in a session of its own and that outlived the task (no
    longer in a watched tree) is found by its FLOE_SCRATCH when the pilot leaves."""
    guardian = Guardian.start(tmp_path / "run", grace=1.0)
    escaped = subprocess.Popen(["sleep", "60"], start_new_session=True,
                               env=dict(os.environ, FLOE_SCRATCH=str(tmp_path / "run" / "lane0")))
    elsewhere = subprocess.Popen(["sleep", "60"], start_new_session=True,
                                 env=dict(os.environ, FLOE_SCRATCH=str(tmp_path / "other")))
    leftovers.extend([escaped.pid, elsewhere.pid])
    wait_for(lambda: b"FLOE_SCRATCH" in Path(f"/proc/{escaped.pid}/environ").read_bytes(), 5,
             "the process to run with its environment")
    guardian.close()
    assert escaped.wait(5) == -signal.SIGTERM
    assert elsewhere.poll() is None


@pytest.mark.skipif(not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK),
                    reason="cannot set the next pid here (not root in this pid namespace)")
def test_a_new_session_given_an_ended_modules_pid_is_left_alone():
    from floe.pilot.guardian import end_tasks

    from .test_proctree import start_with_pid

    ending = subprocess.Popen(["sleep", "60"], start_new_session=True)
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal("
                                 "signal.SIGTERM, signal.SIG_IGN); print(flush=True); "
                                 "time.sleep(60)"], start_new_session=True,
                                stdout=subprocess.PIPE, text=True)
    stubborn.stdout.readline()  # it ignores SIGTERM now: the grace is waited out
    time.sleep(0.05)
    newcomer = []

    def reuse() -> None:  # the first module ends, and a new session gets its pid
        ending.wait(timeout=30)
        newcomer.append(start_with_pid(ending.pid, session=True))

    thread = threading.Thread(target=reuse)
    thread.start()
    try:
        end_tasks({ending.pid, stubborn.pid}, grace=1.0)
        thread.join(timeout=30)
        assert stubborn.wait(timeout=10) == -signal.SIGKILL
        assert newcomer and newcomer[0].poll() is None, "the new session was killed"
    finally:
        for process in [*newcomer, stubborn, ending]:
            process.kill()
            process.wait()
