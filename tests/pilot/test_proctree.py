"""A module's process tree found through psutil, through /proc and through its window of pids,
measured, and killed with no survivors: grandchildren, orphans, a child in a session of its own,
and one ignoring SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from floe.pilot import proctree
from floe.pilot.proctree import ProcessTable, ProcessTree, last_pid, proc_table, psutil_table

try:
    import psutil
except ImportError:
    psutil = None

SCANS = [pytest.param(proc_table, id="proc"),
         pytest.param(psutil_table, id="psutil",
                      marks=pytest.mark.skipif(psutil is None, reason="psutil not installed")),
         pytest.param("window", id="window",
                      marks=pytest.mark.skipif(last_pid() is None, reason="no /proc/loadavg"))]


@pytest.fixture
def young(monkeypatch):
    """Trees count as young for a minute, so that slow machines still test the window."""
    monkeypatch.setattr(proctree, "WINDOW_SECONDS", 60.0)


def tree_of(root: subprocess.Popen, scan, started: float, max_age: float = 0) -> ProcessTree:
    if scan == "window":
        tree = ProcessTree(root.pid, ProcessTable(proc_table, max_age=max_age), started=started)
        assert tree.table.window(root.pid, started) is not None
        return tree
    return ProcessTree(root.pid, ProcessTable(scan, max_age=max_age))

# A root that starts: a child, which starts a grandchild that ignores SIGTERM; an orphan (its
# parent exits at once); and a child that moves to a session of its own. Each writes its pid.
FAMILY = textwrap.dedent("""
    import os, signal, sys, time
    pids = open(sys.argv[1], "a")
    def note():
        pids.write(f"{os.getpid()}\\n"); pids.flush()
    note()
    if os.fork() == 0:
        note()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            note(); time.sleep(600)
        time.sleep(600)
    if os.fork() == 0:
        if os.fork() == 0:
            note(); time.sleep(600)
        os._exit(0)
    if os.fork() == 0:
        os.setsid(); note(); time.sleep(600)
    ballast = bytearray(50 * 2**20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    time.sleep(600)
""")


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def start_family(tmp_path: Path) -> tuple[subprocess.Popen, Path, float]:
    pid_file = tmp_path / "pids"
    started = time.monotonic()
    root = subprocess.Popen([sys.executable, "-c", FAMILY, str(pid_file)],
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if pid_file.exists() and len(pid_file.read_text().split()) == 5:
            break
        time.sleep(0.05)
    return root, pid_file, started


@pytest.mark.parametrize("scan", SCANS)
def test_the_tree_holds_grandchildren_orphans_and_escaped_sessions(tmp_path, scan, young):
    root, pid_file, started = start_family(tmp_path)
    try:
        tree = tree_of(root, scan, started)
        pids = {int(p) for p in pid_file.read_text().split()}
        assert len(pids) == 5
        assert pids <= tree.alive()
        deadline = time.monotonic() + 30
        while tree.sample().rss < 50 * 2**20 and time.monotonic() < deadline:
            time.sleep(0.05)
        sample = tree.sample()
        assert pids <= sample.pids
        assert sample.rss >= 50 * 2**20
        assert sample.cpu_time > 0
    finally:
        tree_of(root, scan, started, max_age=0.2).kill(grace=0.2)
        root.wait()


@pytest.mark.parametrize("scan", SCANS)
def test_killing_the_tree_leaves_no_survivors(tmp_path, scan, young):
    root, pid_file, started = start_family(tmp_path)
    pids = {int(p) for p in pid_file.read_text().split()}
    tree = tree_of(root, scan, started)
    tree.kill(grace=0.3)
    root.wait(timeout=10)
    assert root.returncode == -15
    assert not any(running(pid) for pid in pids)
    assert tree.alive() == set()
    assert not tree.any_alive()


@pytest.mark.parametrize("scan", SCANS)
def test_what_a_leader_leaves_behind_in_its_session_is_found_once_it_is_gone(
        tmp_path, scan, young):
    # A child in a process group of its own (as a job-control shell puts its background jobs):
    # the leader's group is empty once it exits, its session is not.
    started = time.monotonic()
    leave = ("import os\n"
             "pid = os.fork()\n"
             "if pid == 0:\n"
             "    os.setpgid(0, 0)\n"
             "    os.execvp('sleep', ['sleep', '300'])\n"
             "while os.getpgid(pid) != pid:\n"
             "    pass\n"
             "open('bg.pid', 'w').write(str(pid))\n")
    root = subprocess.Popen([sys.executable, "-c", leave], cwd=tmp_path, start_new_session=True)
    root.wait()
    background = int((tmp_path / "bg.pid").read_text())
    tree = tree_of(root, scan, started)
    try:
        assert os.getpgid(background) != root.pid
        assert tree.alive() == {background}
        assert tree.any_alive()
    finally:
        tree.kill(grace=0.2)
    assert not running(background)
    assert not tree.any_alive()


def test_the_window_is_only_for_young_trees_of_proc():
    started = time.monotonic()
    root = subprocess.Popen(["true"], start_new_session=True)
    root.wait()
    table = ProcessTable(proc_table)
    window = table.window(root.pid, started)
    assert window is not None and all(root.pid not in part for part in window)
    assert table.window(root.pid, None) is None
    assert table.window(root.pid, started - proctree.WINDOW_SECONDS) is None
    if psutil is not None:
        assert ProcessTable(psutil_table).window(root.pid, started) is None
    assert not ProcessTree(root.pid, table, started=started).any_alive()


def test_cpu_time_of_reaped_children_counts_for_their_parent(tmp_path):
    done = tmp_path / "done"
    burn = ("import pathlib, subprocess, sys, time\n"
            "subprocess.run([sys.executable, '-c', 'x = 0\\nfor i in range(5_000_000): x += i'])\n"
            f"pathlib.Path({str(done)!r}).touch()\n"
            "time.sleep(600)\n")
    root = subprocess.Popen([sys.executable, "-c", burn], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not done.exists():
            assert time.monotonic() < deadline, "the child never finished its loop"
            time.sleep(0.05)
        # A tree that never saw the child alive: its CPU time is in the parent's account.
        tree = ProcessTree(root.pid, ProcessTable(proc_table, max_age=0))
        assert tree.alive() == {root.pid}
        assert tree.sample().cpu_time >= 0.2
    finally:
        ProcessTree(root.pid).kill(grace=0.1)
        root.wait()


NEXT_PID = Path("/proc/sys/kernel/ns_last_pid")
"""The pid the kernel handed out last: set just below an ended process's pid, the next process
gets that pid, as when the pids wrap around on a busy node (checkpoint-restore tools do this)."""
reusing_pids = pytest.mark.skipif(not os.access(NEXT_PID, os.W_OK),
                                  reason="cannot set the next pid here (not root in this pid "
                                         "namespace)")


def start_with_pid(pid: int, session: bool = False) -> subprocess.Popen:
    """`sleep` given `pid`, which an ended and reaped process had (another process may take it
    first on a busy machine: tried again), in a session of its own with `session`."""
    for _ in range(100):
        NEXT_PID.write_text(str(pid - 1))
        process = subprocess.Popen(["sleep", "60"], start_new_session=session)
        if process.pid == pid:
            return process
        process.kill()
        process.wait()
    pytest.fail(f"pid {pid} could not be had again")


@reusing_pids
def test_a_target_whose_pid_went_to_a_new_process_is_not_killed():
    # The target is stopped, so that its SIGTERM waits and it is alive when first looked at
    # again; then it ends and a new process gets its pid, which must be left alone.
    ended = subprocess.Popen(["sleep", "60"])
    os.kill(ended.pid, signal.SIGSTOP)
    time.sleep(0.05)  # a start one clock tick later at least: the new one is told apart
    newcomer = None

    def find() -> set[int]:
        nonlocal newcomer
        if newcomer is None:
            os.kill(ended.pid, signal.SIGCONT)  # the SIGTERM kill_all sent now ends it
            ended.wait(timeout=10)
            newcomer = start_with_pid(ended.pid)
        return set()

    try:
        signalled = proctree.kill_all(find, 0.3, ProcessTable(proc_table, max_age=0),
                                      first={ended.pid})
        assert ended.returncode == -signal.SIGTERM
        assert newcomer is not None and newcomer.poll() is None, "the new process was killed"
        assert signalled == {ended.pid}
    finally:
        if newcomer is not None:
            newcomer.kill()
            newcomer.wait()


@reusing_pids
def test_a_pid_named_once_is_the_same_process_only_while_its_start_is():
    first = subprocess.Popen(["sleep", "60"])
    time.sleep(0.05)
    born = {first.pid: proctree.read_stat(first.pid).started}
    assert proctree.same(born, proc_table()) == {first.pid}
    first.kill()
    first.wait()
    assert proctree.same(born, proc_table()) == set()
    newcomer = start_with_pid(first.pid)
    try:
        assert proctree.same(born, proc_table()) == set()
        assert proctree.same({first.pid: 0}, proc_table()) == {first.pid}  # start not known
    finally:
        newcomer.kill()
        newcomer.wait()


@reusing_pids
@pytest.mark.parametrize("young", [True, False], ids=["window", "table"])
def test_a_new_session_given_an_ended_leaders_pid_is_not_its_tree(young):
    # As another lane's module would be: it leads a session named by that pid.
    started = time.monotonic()
    leader = subprocess.Popen(["true"], start_new_session=True)
    leader.wait()
    newcomer = start_with_pid(leader.pid, session=True)
    try:
        tree = ProcessTree(leader.pid, ProcessTable(proc_table, max_age=0),
                           started=started if young else None)
        assert tree.end([b"FLOE_ATTEMPT=no-such-attempt"], grace=0.3) == {}
        assert newcomer.poll() is None, "the new session was killed as the ended tree's"
    finally:
        newcomer.kill()
        newcomer.wait()
