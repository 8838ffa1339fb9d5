"""The pilot's work area: each pilot's run directory lives as long as its lock, and a pilot
starting on the same scratch clears what killed pilots left, never what live ones use."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from floe.pilot.workarea import WorkArea, WorkAreaError, directory_name

from .live import ROOT

HOLD = """
import sys, time
from floe.pilot.workarea import WorkArea, WorkAreaError, directory_name
work = WorkArea(sys.argv[1])
work.open()
work.lane_dir(1).mkdir()
if len(sys.argv) > 2:  # a report it keeps, as if it were being delivered
    work.outbox.put(int(sys.argv[2]), "pk", {"exit_code": 0})
print(work.instance, flush=True)
time.sleep(60)
"""


def start_pilot_like(scratch: Path, report: int | None = None) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(scratch),
                                *([] if report is None else [str(report)])], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def test_a_killed_pilots_run_directory_is_cleared_and_a_live_ones_kept(tmp_path):
    dead, dead_name = start_pilot_like(tmp_path)
    live, live_name = start_pilot_like(tmp_path)
    try:
        dead.kill()
        dead.wait()
        work = WorkArea(tmp_path)
        work.open()
        runs = tmp_path / directory_name() / "runs"
        assert not (runs / dead_name).exists() and not (runs / f"{dead_name}.lock").exists()
        assert (runs / live_name / "lane1").is_dir()
        assert work.run_dir.is_dir()
        work.close()
        assert sorted(p.name for p in runs.iterdir()) == [live_name, f"{live_name}.lock"]
    finally:
        live.kill()
        live.wait()


def test_the_shared_outbox_gives_a_pilot_what_killed_ones_kept_not_what_live_ones_did(
        tmp_path):
    live, _ = start_pilot_like(tmp_path, report=7)
    killed, _ = start_pilot_like(tmp_path, report=8)
    try:
        killed.kill()
        killed.wait()
        first = WorkArea(tmp_path)
        assert [d.attempt_id for d in first.open().pending()] == [8]
        first.outbox.put(5, "pk", {"exit_code": 0})
        second = WorkArea(tmp_path)
        # 5 is the first's, and so is 8 now: it took it up (else every pilot starting there
        # while it delivers would send it again)
        assert [d.attempt_id for d in second.open().pending()] == []
        assert first.lane_dir(5) != second.lane_dir(5)
        first.close()  # it left 5 undelivered
        assert [d.attempt_id for d in second.outbox.pending()] == [5, 8]
        second.close()
    finally:
        live.kill()
        live.wait()
    third = WorkArea(tmp_path)
    assert [d.attempt_id for d in third.open().pending()] == [5, 7, 8]
    third.close()


def test_the_work_area_is_private_to_its_user(tmp_path):
    (tmp_path / directory_name()).mkdir(mode=0o755)  # left by an older pilot, readable by all
    work = WorkArea(tmp_path)
    work.open()
    assert work.root == tmp_path / f"floe-pilot-{os.getuid()}"
    assert stat.S_IMODE(work.root.stat().st_mode) == 0o700  # the outbox holds passkeys
    work.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_another_users_work_area_on_the_same_scratch_is_neither_used_nor_in_the_way(tmp_path):
    theirs = tmp_path / "floe-pilot-65534"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    work = WorkArea(tmp_path)
    work.open()
    assert work.root != theirs and work.run_dir.is_dir()
    work.close()
    assert os.listdir(theirs) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_work_area_made_by_another_user_is_refused_with_the_fix(tmp_path):
    planted = tmp_path / directory_name()
    planted.mkdir(mode=0o777)
    os.chown(planted, 65534, 65534)
    with pytest.raises(WorkAreaError, match=rf"{planted} is not a directory of this user .*"
                                            "remove it, or give the pilot another scratch"):
        WorkArea(tmp_path).open()
    assert os.listdir(planted) == []


def test_a_link_in_place_of_the_work_area_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / directory_name()).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(WorkAreaError, match="is a link"):
        WorkArea(tmp_path).open()
    assert os.listdir(tmp_path / "elsewhere") == []
