"""A module's process tree found through psutil and through /proc, measured, and killed with no
survivors: grandchildren, orphans, a child in a session of its own, and one ignoring SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pilot.proctree import ProcessTable, ProcessTree, proc_table, psutil_table

try:
    import psutil
except ImportError:
    psutil = None

SCANS = [pytest.param(proc_table, id="proc"),
         pytest.param(psutil_table, id="psutil",
                      marks=pytest.mark.skipif(psutil is None, reason="psutil not installed"))]

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


def start_family(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    pid_file = tmp_path / "pids"
    root = subprocess.Popen([sys.executable, "-c", FAMILY, str(pid_file)],
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if pid_file.exists() and len(pid_file.read_text().split()) == 5:
            break
        time.sleep(0.05)
    return root, pid_file


@pytest.mark.parametrize("scan", SCANS)
def test_the_tree_holds_grandchildren_orphans_and_escaped_sessions(tmp_path, scan):
    root, pid_file = start_family(tmp_path)
    try:
        tree = ProcessTree(root.pid, ProcessTable(scan, max_age=0))
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
        ProcessTree(root.pid, ProcessTable(scan)).kill(grace=0.2)
        root.wait()


@pytest.mark.parametrize("scan", SCANS)
def test_killing_the_tree_leaves_no_survivors(tmp_path, scan):
    root, pid_file = start_family(tmp_path)
    pids = {int(p) for p in pid_file.read_text().split()}
    tree = ProcessTree(root.pid, ProcessTable(scan, max_age=0))
    tree.kill(grace=0.3)
    root.wait(timeout=10)
    assert root.returncode == -15
    assert not any(running(pid) for pid in pids)
    assert tree.alive() == set()


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
