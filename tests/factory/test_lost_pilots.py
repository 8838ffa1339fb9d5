"""A pilot killed outright (SIGKILL, a lost node) never signs off: the factory that sees its batch
job end tells the matchmaker, which ends the pilot as lost and requeues what it ran at once,
not after the heartbeat timeout. With the local plugin, a real matchmaker and real pilots."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import psutil

from tests.pilot.live import LiveMatchmaker

from .conftest import site_document
from .test_site_local import cycle_until, live_pilots

# The first attempt records its pid and sleeps; the retry finds the mark and ends at once.
FIRST_SLEEPS = ('if [ -e "{mark}" ]; then echo again; else touch "{mark}"; echo $$ > "{pid}"; '
                'exec sleep 120; fi')


def test_a_killed_pilots_task_is_requeued_as_soon_as_the_factory_sees_its_batch_job_end(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path, caplog):
    mark, pid_file = tmp_path / "mark", tmp_path / "task.pid"
    dataset = matchmaker.submit({"description": "killed pilot", "jobs": 1, "tasks": [{
        "name": "slow", "requirements": {"cpus": 1, "memory": "64MB", "disk": "1MB",
                                         "walltime": "10m"},
        "modules": [{"command": ["sh", "-c", FIRST_SLEEPS.format(mark=mark, pid=pid_file)]}]}]})
    site = make_runner(site_document(matchmaker, tmp_path / "factory", max_total=1,
                                     max_queued=1, max_per_cycle=1))
    try:
        cycle_until(site, pid_file.exists, 60, "the task to start")
        (batch_id,) = live_pilots(site)
        record = json.loads((site.plugin.state_dir / f"{batch_id}.json").read_text())
        wrapper = psutil.Process(record["pid"])
        (pilot,) = [p for p in wrapper.children(recursive=True)
                    if "--token-file" in p.cmdline()]  # the pilot its launcher started
        pilot.kill()

        def lost() -> bool:
            return any(a["state"] == "reset" for a in matchmaker.attempts(dataset))

        # The matchmaker's heartbeat timeout is 30 s here; a few cycles of 1 s tell it sooner,
        # and the message says who told it.
        cycle_until(site, lost, 20, "the killed pilot's attempt to be reset")
        first = matchmaker.attempts(dataset)[0]
        assert first["error_class"] == "pilot_lost"
        assert f"(local {batch_id}) ended while it ran this" in first["error_message"]
        assert site.counters.lost == 1
        assert "1 pilot ended without signing off with the matchmaker" in caplog.text
        ended = [p for p in matchmaker.get("/pilots?state=lost")["pilots"]
                 if p["batch_id"] == batch_id]
        assert ended and "batch job ended" in ended[0]["exit_reason"]

        # The factory submits another pilot for the requeued task, which now ends at once.
        cycle_until(site, lambda: matchmaker.states(dataset) == ["complete"], 60,
                    "the requeued task to complete")
        attempts = matchmaker.attempts(dataset)
        assert [a["state"] for a in attempts] == ["reset", "complete"]
        status = json.loads((tmp_path / "factory" / "site-a" / "status.json").read_text())
        assert status["counters"]["lost"] == 1
    finally:
        # The killed pilot's task, should it have outlived the pilot.
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
