"""A dataset changed while a real pilot runs it, through the command line: grown by 100,000
jobs, which are created while it runs and run after the first ones; then aborted, which stops
the pilot's running task at its next heartbeat and loses nothing already recorded."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.cli.support import as_user, run
from tests.pilot.live import LiveMatchmaker, wait_for

SLOW = {"description": "grown, then aborted", "jobs": 100, "max_retries": 0, "tasks": [{
    "name": "step", "requirements": {"walltime": "1m", "memory": "64MiB", "disk": "1MiB"},
    "modules": [{"command": ["sh", "-c", "sleep 0.05; echo done job $FLOE_JOB"]}]}]}


def test_a_running_dataset_grows_by_100000_jobs_and_is_aborted_with_nothing_lost(
        matchmaker: LiveMatchmaker, tmp_path: Path, capsys):
    dataset = matchmaker.submit(SLOW)
    (tmp_path / "pilot").mkdir()
    pilot = matchmaker.start_pilot(tmp_path / "pilot", "--idle-timeout", "2s")
    wait_for(lambda: matchmaker.get(f"/datasets/{dataset}")["tasks"]["complete"] >= 5, 60,
             "five tasks done")
    status, out, err = run(capsys, "add-jobs", str(dataset), "100000", *as_user(matchmaker))
    assert status == 0, err
    assert out == (f"dataset {dataset} now has 100,100 jobs (100,000 added, created in the "
                   "background); it is processing\n")
    wait_for(lambda: matchmaker.get(f"/datasets/{dataset}")["jobs_created"] == 100_100, 120,
             "the new jobs to be created")
    wait_for(lambda: any(t["job"] >= 100 and t["state"] == "complete" for t in matchmaker.get(
        f"/datasets/{dataset}/tasks?state=complete&limit=1000")["tasks"]), 120,
        "a new job to run")

    status, out, err = run(capsys, "abort", str(dataset), *as_user(matchmaker))
    assert status == 0, err
    assert out.startswith(f"dataset {dataset} aborted: ") and out.endswith("it is now failed\n")
    assert pilot.wait(60) == 0
    log = (tmp_path / "pilot.log").read_text()
    after = matchmaker.get(f"/datasets/{dataset}")
    assert after["status"] == "failed" and after["jobs"] == 100_100
    counts = after["tasks"]
    assert counts["complete"] + counts["failed"] == 100_100 and counts["complete"] >= 6
    # Nothing lost: every complete task has its complete attempt and its output, and the
    # attempt that was running when the dataset was aborted was voided, not failed.
    with sqlite3.connect(matchmaker.db) as conn:
        complete_tasks = conn.execute("SELECT count(*) FROM tasks WHERE dataset_id = ? AND "
                                      "state = 'complete'", (dataset,)).fetchone()[0]
        complete_attempts = conn.execute(
            "SELECT count(*) FROM attempts WHERE dataset_id = ? AND state = 'complete' AND "
            "stdout_tail LIKE 'done job %'", (dataset,)).fetchone()[0]
        voided = conn.execute("SELECT state, count(*) FROM attempts WHERE dataset_id = ? AND "
                              "error_message = 'aborted by alice' GROUP BY state",
                              (dataset,)).fetchall()
    assert complete_tasks == complete_attempts == counts["complete"]
    # The pilot's running attempt and those it held queued (short tasks go in series).
    [(state, count)] = voided
    assert state == "reset" and count >= 1
    assert "aborted by alice" in log
    events = matchmaker.get(f"/datasets/{dataset}")["events"]
    assert [e["action"] for e in events][:2] == ["abort", "add jobs"]


GREETING = {"description": "steered", "jobs": 2, "steering": {"greeting": "hello"}, "tasks": [{
    "name": "say", "requirements": {"walltime": "1m", "memory": "64MiB", "disk": "1MiB"},
    "modules": [{"command": ["echo", "$steering(greeting) from job $args(job)"]}]}]}


def test_steering_changed_after_submission_runs_in_the_jobs_added_after_it(
        matchmaker: LiveMatchmaker, tmp_path: Path, capsys):
    user = as_user(matchmaker)
    dataset = matchmaker.submit(GREETING)
    for run_index in (1, 2):
        if run_index == 2:
            status, out, err = run(capsys, "steering", str(dataset), "greeting=bye", *user)
            assert status == 0, err
            assert out == (f"dataset {dataset}: steering version 2 applies from job 2 on "
                           "(every job is created already: jobs added with floe add-jobs use "
                           "it)\n")
            assert run(capsys, "add-jobs", str(dataset), "2", *user)[0] == 0
        (tmp_path / f"pilot{run_index}").mkdir()
        pilot = matchmaker.start_pilot(tmp_path / f"pilot{run_index}", "--idle-timeout", "2s",
                                       log_name=f"pilot{run_index}.log")
        assert pilot.wait(60) == 0
    attempts = {a["task_id"]: a for a in matchmaker.attempts(dataset)}
    tasks = matchmaker.tasks(dataset)
    assert [t["state"] for t in tasks] == ["complete"] * 4
    for task in tasks:
        attempt = matchmaker.get(f"/attempts/{attempts[task['task_id']]['attempt_id']}")
        word, version = ("hello", 1) if task["job"] < 2 else ("bye", 2)
        assert attempt["stdout_tail"] == f"{word} from job {task['job']}\n"
        assert attempt["config_version"] == version
    later = next(t for t in tasks if t["job"] == 3)
    status, out, err = run(capsys, "attempts", str(later["task_id"]), *user)
    assert status == 0 and out.splitlines()[1].split()[:3] == ["ATTEMPT", "STATE", "CONFIG"]
    assert out.splitlines()[2].split()[1:3] == ["complete", "2"]
    status, out, err = run(capsys, "steering", str(dataset), *user)
    assert (status, out) == (0, 'version 1: from job 0 (as submitted)\n'
                                'version 2: from job 2, greeting="bye", by alice (current: new '
                                'jobs get it)\n'), err
    status, _, err = run(capsys, "steering", str(dataset), "greeting", *user)
    assert status == 1 and "'greeting' is not NAME=VALUE" in err
    status, _, err = run(capsys, "steering", str(dataset), "greeting=a", "greeting=b", *user)
    assert status == 1 and "greeting is given twice" in err
    status, out, _ = run(capsys, "status", str(dataset), *user)
    assert "config version 2 for new jobs" in out
