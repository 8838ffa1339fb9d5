"""The online pilot with a queue of prefetched tasks and one heartbeat for all its attempts, as a
real subprocess against a real matchmaker: queued attempts are kept alive while they wait and
given back when the pilot is stopped, a kill for one attempt kills that one only, reports that
piled up while the matchmaker was away all arrive, once each, and tasks packed by their learned
runtime behind one that overran it are given back, not run late."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from .live import LiveMatchmaker, wait_for
from .test_online_faults import alive, outbox, sleeper
from .test_online_running import probe

SLOW_JOB = 6
"""The job that runs long in `behind_a_slow_one`: after as many that end at once as the
matchmaker needs to learn their runtime (a task whose runtime is not learned comes alone)."""


def behind_a_slow_one(slow: str, jobs: int = 14) -> dict:
    """Tasks that end at once, but for job `SLOW_JOB`'s, which runs `slow`: once the jobs
    before it have ended, the pilot and the matchmaker know that its tasks are short and more
    of them are queued, and those after the slow job wait (how many: one ask takes no more of
    a dataset than it leaves ready, and the next goes with the report of a task that
    ended)."""
    return {"jobs": jobs, "max_retries": 0, "tasks": [{
        "name": "work", "requirements": {"memory": "64MiB", "disk": "16MiB", "walltime": "5m"},
        "modules": [{"command": f"if [ $args(job) -eq {SLOW_JOB} ]; then {slow}; fi"}]}]}


def one_cpu(matchmaker: LiveMatchmaker, scratch: Path, *options: str, log_name: str = "pilot.log"):
    return matchmaker.start_pilot(scratch, *options, env={"SLURM_CPUS_ON_NODE": "1"},
                                  log_name=log_name)


def heartbeats_since_dispatch(matchmaker: LiveMatchmaker) -> list[float]:
    """For each attempt in processing, seconds from its dispatch to its last heartbeat, as the
    matchmaker has written them (heartbeats are flushed every second)."""
    with sqlite3.connect(f"file:{matchmaker.db}?mode=ro", uri=True) as db:
        return [row[0] for row in db.execute(
            "SELECT last_heartbeat - started FROM attempts WHERE state = 'processing'")]


def test_queued_attempts_are_heartbeated_and_given_back_on_sigterm(
        matchmaker: LiveMatchmaker, tmp_path):
    pid_file = tmp_path / "task.pid"
    dataset_id = matchmaker.submit(behind_a_slow_one(sleeper(pid_file)))
    # A horizon past the test's end: the queue is not given back as job 3 runs on.
    pilot = one_cpu(matchmaker, tmp_path / "scratch", "--prefetch-horizon", "300")
    task_pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30,
                            "the slow job to start"))
    # The attempts that wait behind the slow job are processing on the matchmaker, and the pilot's
    # heartbeat (every 5 s here) keeps each of them alive, not only the running one.
    held = len(wait_for(lambda: (lambda gaps: len(gaps) >= 3 and min(gaps) > 1 and gaps)(
        heartbeats_since_dispatch(matchmaker)), 20, "a heartbeat of every held attempt"))

    pilot.send_signal(signal.SIGTERM)
    assert pilot.wait(30) == 0, (tmp_path / "pilot.log").read_text()

    assert not alive(task_pid)
    tasks = matchmaker.tasks(dataset_id)
    assert sorted(task["state"] for task in tasks) == ["complete"] * SLOW_JOB + ["ready"] * 8
    requeued = [task for task in tasks if task["state"] == "ready" and task["attempts"]]
    assert [task["job"] for task in requeued] == list(range(SLOW_JOB, SLOW_JOB + held))
    assert all(task["failures"] == 0 and len(task["attempts"]) == 1 for task in requeued)
    lost = [task["attempts"][0] for task in requeued]
    # The running one was lost with its pilot; the queued ones were given back unstarted.
    said = Counter((a["state"], a["error_class"], "while running it" in a["error_message"])
                   for a in lost)
    assert said == {("reset", "pilot_lost", True): 1, ("reset", "not_run", False): held - 1}, \
        [a["error_message"] for a in lost]
    assert all("SIGTERM" in a["error_message"] for a in lost)
    assert not list(outbox(tmp_path / "scratch").glob("*.json"))


def test_a_kill_in_the_pilots_heartbeat_kills_that_attempt_only(
        matchmaker: LiveMatchmaker, tmp_path):
    if probe({"PATH": "/usr/bin:/bin"}, tmp_path)["cpus"] < 2:
        pytest.skip("this machine offers a single CPU")
    voided_pid, kept_pid = tmp_path / "voided.pid", tmp_path / "kept.pid"
    voided, kept = (matchmaker.submit({"jobs": 1, "tasks": [{
        "name": "work", "requirements": {"memory": "64MiB", "disk": "16MiB", "walltime": "5m"},
        "modules": [{"command": sleeper(pid_file)}]}]}) for pid_file in (voided_pid, kept_pid))
    pilot = matchmaker.start_pilot(tmp_path / "scratch", env={"SLURM_CPUS_ON_NODE": "2"})
    voided_task, kept_task = (int(wait_for(lambda p=p: p.exists() and p.read_text(), 30,
                                           "both tasks to start"))
                              for p in (voided_pid, kept_pid))

    status, answer = matchmaker.api("POST", f"/datasets/{voided}/reset", {"scope": "all"})
    assert status == 200, answer
    # The pilot learns it from its next heartbeat (every 5 s here).
    wait_for(lambda: not alive(voided_task), 15, "the voided task to be killed")
    log = tmp_path / "pilot.log"
    wait_for(lambda: "not reported" in log.read_text(), 10, "the pilot to drop the attempt")
    assert alive(kept_task)
    [running] = matchmaker.attempts(kept)
    assert running["state"] == "processing"

    pilot.send_signal(signal.SIGTERM)
    assert pilot.wait(30) == 0, log.read_text()
    first = matchmaker.attempts(voided)[0]  # the task, requeued, may have run again
    assert (first["state"], first["exit_code"]) == ("reset", None)
    [stopped] = matchmaker.attempts(kept)
    assert (stopped["state"], stopped["error_class"]) == ("reset", "pilot_lost")
    assert "SIGTERM" in stopped["error_message"]


def test_reports_kept_through_an_outage_arrive_once_each(matchmaker: LiveMatchmaker, tmp_path):
    dataset_id = matchmaker.submit({"jobs": 20, "tasks": [{
        "name": "work", "requirements": {"memory": "64MiB", "disk": "16MiB", "walltime": "5m"},
        "modules": [{"command": "sleep 0.1; echo '{\"events\": 1}' > $FLOE_STATS"}]}]})
    scratch = tmp_path / "scratch"
    pilot = one_cpu(matchmaker, scratch, "--idle-timeout", "5s")
    # Once five have been reported, their runtime is learned and more are queued.
    wait_for(lambda: matchmaker.states(dataset_id).count("complete") >= 6, 30,
             "the first tasks to be reported")

    # The queued tasks go on running while the matchmaker is away; their reports wait.
    matchmaker.stop()
    wait_for(lambda: kept_reports(outbox(scratch)) >= 3, 30, "reports kept in the outbox")
    assert pilot.poll() is None
    matchmaker.start()

    assert pilot.wait(60) == 0, (tmp_path / "pilot.log").read_text()
    assert matchmaker.states(dataset_id) == ["complete"] * 20
    attempts = matchmaker.attempts(dataset_id)
    assert [a["state"] for a in attempts] == ["complete"] * 20
    events = matchmaker.statistic(dataset_id, "events")
    assert (events["count"], events["sum"]) == (20, 20.0)
    assert not list(outbox(scratch).iterdir())


def kept_reports(directory: Path) -> int:
    count = 0
    for path in directory.glob("*.json"):
        try:
            count += len(json.loads(path.read_text())["reports"])
        except (OSError, ValueError, KeyError):
            continue  # removed, or being written, as we looked
    return count


def test_tasks_queued_behind_one_that_overran_its_learned_runtime_are_given_back_unharmed(
        matchmaker: LiveMatchmaker, tmp_path):
    # A walltime of 45 s, a slot of 54 s (a 1m lifetime less its safety margin): by walltime
    # one task at a time; once 5 have run in a blink, the rest are packed by that. Job 12
    # then runs 12 s, within its walltime but far past what was learned, and the tasks
    # queued behind it no longer have 45 s left.
    dataset_id = matchmaker.submit({"jobs": 30, "max_retries": 0, "tasks": [{
        "name": "work", "requirements": {"memory": "64MiB", "disk": "16MiB", "walltime": "45s"},
        "modules": [{"command": "if [ $args(job) -eq 12 ]; then sleep 12; fi"}]}]})
    # A horizon above job 12's time: its queue is not given back for running long (the next
    # test), but each queued task when its turn comes.
    first = one_cpu(matchmaker, tmp_path / "first", "--lifetime", "1m",
                    "--prefetch-horizon", "30")
    assert first.wait(90) == 0, (tmp_path / "pilot.log").read_text()
    log = (tmp_path / "pilot.log").read_text()
    assert "no longer fits" in log

    tasks = {task["job"]: task for task in matchmaker.tasks(dataset_id)}
    assert tasks[12]["state"] == "complete"  # it overran what was learned, not its walltime
    ready = [task for task in tasks.values() if task["state"] == "ready"]
    assert ready and all(task["job"] > 12 for task in ready)
    # Those queued behind job 12 were given back; the pilot had not been handed the others.
    given_back = [task for task in ready if task["attempts"]]
    assert given_back
    for task in given_back:
        [attempt] = task["attempts"]
        assert (attempt["state"], attempt["error_class"]) == ("reset", "not_run")
        assert task["failures"] == 0

    one_cpu(matchmaker, tmp_path / "second", "--idle-timeout", "2s", log_name="second.log")
    wait_for(lambda: matchmaker.states(dataset_id) == ["complete"] * 30, 60,
             "the given-back tasks to run on the next pilot")
    attempts = matchmaker.attempts(dataset_id)
    assert Counter(a["state"] for a in attempts) == {"complete": 30, "reset": len(given_back)}


def test_short_tasks_queued_behind_one_that_runs_long_are_given_back_for_another_pilot(
        matchmaker: LiveMatchmaker, tmp_path):
    # A pilot warm from short tasks is handed a dataset's job 8, which runs 30 s, with the
    # others (which end at once, as the 8 before it did) queued behind it. Once job 8 has run
    # 5 s (five prefetch horizons of 1 s) the pilot gives those back, and another pilot runs
    # them.
    warm = matchmaker.submit({"jobs": 40, "tasks": [{
        "name": "work", "requirements": {"memory": "64MiB", "disk": "16MiB", "walltime": "5m"},
        "modules": [{"command": "true"}]}]})
    first = one_cpu(matchmaker, tmp_path / "first")
    wait_for(lambda: matchmaker.states(warm) == ["complete"] * 40, 60, "the warm-up")
    dataset_id = matchmaker.submit({"jobs": 30, "max_retries": 0, "tasks": [{
        "name": "work", "requirements": {"memory": "64MiB", "disk": "16MiB", "walltime": "5m"},
        "modules": [{"command": "if [ $args(job) -eq 8 ]; then sleep 30; fi"}]}]})
    log = tmp_path / "pilot.log"
    wait_for(lambda: "gave back" in log.read_text(), 15, "the queue behind job 8 to go back")
    assert "prefetch horizons" in log.read_text()
    second = one_cpu(matchmaker, tmp_path / "second", log_name="second.log")
    short = [job for job in range(30) if job != 8]
    wait_for(lambda: [matchmaker.states(dataset_id)[job] for job in short] == ["complete"] * 29,
             20, "the short tasks to complete while job 8 runs")
    assert matchmaker.states(dataset_id)[8] == "processing"
    given_back = [a for a in matchmaker.attempts(dataset_id) if a["state"] == "reset"]
    assert given_back and all(a["error_class"] == "not_run" for a in given_back)
    assert all(task["failures"] == 0 for task in matchmaker.tasks(dataset_id))
    for pilot in (first, second):
        pilot.send_signal(signal.SIGTERM)
        assert pilot.wait(30) == 0
