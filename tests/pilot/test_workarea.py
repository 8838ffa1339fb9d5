"""The pilot's work area: each pilot's run directory lives as long as its lock, and a pilot
starting on the same scratch clears what killed pilots left, never what live ones use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pilot.workarea import WorkArea

from .live import ROOT

HOLD = """
import sys, time
from pilot.workarea import WorkArea
work = WorkArea(sys.argv[1])
work.open()
work.lane_dir(1).mkdir()
print(work.instance, flush=True)
time.sleep(60)
"""


def start_pilot_like(scratch: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(scratch)], cwd=ROOT,
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
        runs = tmp_path / "floe-pilot" / "runs"
        assert not (runs / dead_name).exists() and not (runs / f"{dead_name}.lock").exists()
        assert (runs / live_name / "lane1").is_dir()
        assert work.run_dir.is_dir()
        work.close()
        assert sorted(p.name for p in runs.iterdir()) == [live_name, f"{live_name}.lock"]
    finally:
        live.kill()
        live.wait()


def test_the_work_area_holds_the_shared_outbox(tmp_path):
    first, second = WorkArea(tmp_path), WorkArea(tmp_path)
    first.open().put(5, "pk", {"exit_code": 0})
    assert [d.attempt_id for d in second.open().pending()] == [5]
    assert first.lane_dir(5) != second.lane_dir(5)
    first.close()
    second.close()
