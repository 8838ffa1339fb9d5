"""The matchmaker as a real process under the faults of a long production: repeated and void bulk
reports, answers lost on the way, a SIGTERM while pilots work, bulk actions under load, and a
matchmaker frozen longer than the heartbeat timeout. Real HTTP, real pilots, the real SQLite
file; every test ends with the database and the server's memory in agreement."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from floe.matchmaker.server import SHUTDOWN_GRACE
from floe.matchmaker.storage.database import CLOSE_GRACE
from tests.pilot.live import SETTINGS, LiveMatchmaker, wait_for

FREE = {"cpus": 1, "memory": 2**30, "disk": 2**30, "seconds": 3600, "max_tasks": 1}
QUICK = 1.0  # seconds: what an idle server takes milliseconds to answer


def dataset(jobs: int, command: list[str] | str, walltime: str = "1m") -> dict[str, Any]:
    return {"description": "faults", "jobs": jobs,
            "tasks": [{"name": "work", "requirements": {"memory": "64MiB", "disk": "16MiB",
                                                        "walltime": walltime},
                       "modules": [{"command": command}]}]}


def ask(live: LiveMatchmaker, token: str, pilot: int) -> dict[str, Any]:
    status, answer = live.api("POST", f"/pilots/{pilot}/ask", FREE, token=token)
    assert status == 200 and answer["attempts"], answer
    return answer["attempts"][0]


def report(attempt: dict[str, Any]) -> dict[str, Any]:
    return {"attempt_id": attempt["id"], "passkey": attempt["passkey"], "exit_code": 0}


def answered_at_once(live: LiveMatchmaker) -> None:
    """A submit, a pilot token, a registration, an ask and a report, each answered within
    `QUICK` (urllib gives up after it: a stalled write path fails here, not later)."""
    status, made = live.api("POST", "/datasets", dataset(1, ["true"]), timeout=QUICK)
    assert status == 201, made
    status, issued = live.api("POST", "/sites/site-a/pilot-tokens", {"lifetime": 600},
                              token=live.site_token, timeout=QUICK)
    assert status == 201, issued
    status, pilot = live.api("POST", "/pilots", {"host": "node1"}, token=issued["tokens"][0],
                             timeout=QUICK)
    assert status == 201, pilot
    pilot, key = pilot["pilot_id"], pilot["key"]
    attempt = wait_for(lambda: live.api("POST", f"/pilots/{pilot}/ask", FREE,
                                        token=key, timeout=QUICK)[1]["attempts"],
                       10, "a task of the new dataset")[0]
    status, done = live.api("POST", f"/pilots/{pilot}/reports", {"reports": [report(attempt)]},
                            token=key, timeout=QUICK)
    assert status == 200 and done["results"][0]["recorded"], done


def stop_within_grace(live: LiveMatchmaker) -> None:
    """SIGTERM, as systemd sends it, to the server and its writer process: it exits cleanly
    within its grace."""
    server = live.process
    for process in [psutil.Process(server.pid), *psutil.Process(server.pid).children()]:
        process.send_signal(signal.SIGTERM)
    assert server.wait(SHUTDOWN_GRACE + CLOSE_GRACE + 5) == 0
    live.process = None


def completions(live: LiveMatchmaker, dataset_id: int) -> Counter[int]:
    """How many complete attempts each task of the dataset has, from the database file."""
    with sqlite3.connect(f"file:{live.db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT task_id, count(*) FROM attempts WHERE dataset_id = ? AND"
                            " state = 'complete' GROUP BY task_id", (dataset_id,)).fetchall()
    return Counter(dict(rows))


def counts(live: LiveMatchmaker, dataset_id: int) -> dict[str, int]:
    """The dataset's tasks by state, as the server holds them in memory."""
    return live.get(f"/datasets/{dataset_id}")["tasks"]


def agree(live: LiveMatchmaker, dataset_id: int) -> dict[str, int]:
    """The task counts the server holds in memory, checked against the database's (when
    nothing changes them: a dataset that is done, suspended, or that nobody works on)."""
    held = live.get(f"/datasets/{dataset_id}")["tasks"]
    with sqlite3.connect(f"file:{live.db}?mode=ro", uri=True) as conn:
        stored = dict(conn.execute("SELECT state, count(*) FROM tasks WHERE dataset_id = ?"
                                   " GROUP BY state", (dataset_id,)).fetchall())
    assert {k: v for k, v in held.items() if v} == stored
    return held


def server_log(live: LiveMatchmaker) -> str:
    return (live.directory / "server.log").read_text()


def test_a_repeated_bulk_report_leaves_every_write_answered_at_once(matchmaker):
    """Regression: the repeat of a recorded bulk report (what a pilot sends when the first
    answer was lost) handed the writer an empty batch that it never answered; every later
    submit, token, ask and report waited forever, and SIGTERM no longer stopped the server."""
    matchmaker.submit(dataset(1, ["true"]))
    pilot, token = matchmaker.register_pilot()
    body = {"reports": [report(ask(matchmaker, token, pilot))]}
    first = matchmaker.api("POST", f"/pilots/{pilot}/reports", body, token=token)
    again = matchmaker.api("POST", f"/pilots/{pilot}/reports", body, token=token)
    assert first[1]["results"][0]["duplicate"] is False
    assert again[1]["results"][0]["duplicate"] is True
    answered_at_once(matchmaker)
    stop_within_grace(matchmaker)


def test_an_all_void_bulk_report_leaves_every_write_answered_at_once(matchmaker):
    dataset_id = matchmaker.submit(dataset(1, ["true"]))
    pilot, token = matchmaker.register_pilot()
    attempt = ask(matchmaker, token, pilot)
    status, _ = matchmaker.api("POST", f"/datasets/{dataset_id}/reset", {"scope": "all"})
    assert status == 200
    status, void = matchmaker.api("POST", f"/pilots/{pilot}/reports",
                                  {"reports": [report(attempt)]}, token=token)
    assert status == 200 and void["results"][0]["status"] == 409, void
    answered_at_once(matchmaker)
    stop_within_grace(matchmaker)


def test_a_dropped_ask_answer_frees_its_task_within_a_heartbeat_interval(matchmaker, tmp_path):
    """The ask is answered with an attempt, but the answer never reaches the pilot: its next
    heartbeats do not name the attempt, and it is reset after one heartbeat interval instead
    of the heartbeat timeout; its late report is refused as void, and a real pilot runs it."""
    dataset_id = matchmaker.submit(dataset(1, ["true"]))
    pilot, token = matchmaker.register_pilot()
    body = json.dumps(FREE).encode()
    with socket.create_connection(("127.0.0.1", matchmaker.port)) as connection:
        connection.sendall(
            f"POST /api/v1/pilots/{pilot}/ask HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{token}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode() + body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    # What the pilot should have got; it never did: it holds nothing, and says so once per
    # heartbeat interval.
    (attempt,) = json.loads(answer.partition(b"\r\n\r\n")[2])["attempts"]
    interval = 5  # tests.pilot.live.SETTINGS; the timeout there is 30s

    def requeued() -> bool:
        status, _ = matchmaker.api("POST", f"/pilots/{pilot}/heartbeat",
                                   {"attempts": [], "reporting": []}, token=token)
        assert status == 200
        return agree(matchmaker, dataset_id)["ready"] == 1

    wait_for(requeued, 3 * interval, "the attempt to be reset")
    (lost,) = matchmaker.tasks(dataset_id)[0]["attempts"]
    assert lost["attempt_id"] == attempt["id"] and lost["state"] == "reset"
    assert f"never reached pilot {pilot} on node1 at site-a" in lost["error_message"]
    status, late = matchmaker.api("POST", f"/pilots/{pilot}/reports",
                                  {"reports": [report(attempt)]}, token=token)
    assert status == 200 and late["results"][0]["status"] == 409, late
    assert "is void (never reached pilot" in late["results"][0]["error"]
    matchmaker.start_pilot(tmp_path / "scratch", "--idle-timeout", "2s")
    wait_for(lambda: completions(matchmaker, dataset_id).total() == 1, 30, "the task to run")
    assert agree(matchmaker, dataset_id)["complete"] == 1


def test_a_pilot_holding_a_finished_attempts_report_keeps_it(matchmaker):
    """An attempt whose report waits in the pilot's outbox is held, not lost: named in
    `reporting`, it stays processing and its report is taken."""
    dataset_id = matchmaker.submit(dataset(1, ["true"]))
    pilot, token = matchmaker.register_pilot()
    attempt = ask(matchmaker, token, pilot)
    time.sleep(5.5)  # past one heartbeat interval (tests.pilot.live.SETTINGS)
    status, _ = matchmaker.api("POST", f"/pilots/{pilot}/heartbeat",
                               {"attempts": [], "reporting": [attempt["id"]]}, token=token)
    assert status == 200 and agree(matchmaker, dataset_id)["processing"] == 1
    status, done = matchmaker.api("POST", f"/pilots/{pilot}/reports",
                                  {"reports": [report(attempt)]}, token=token)
    assert done["results"][0]["recorded"] and not done["results"][0]["duplicate"], done


def start_pilots(live: LiveMatchmaker, tmp_path: Path, count: int) -> None:
    for number in range(count):
        scratch = tmp_path / f"pilot{number}"
        scratch.mkdir()
        live.start_pilot(scratch, "--idle-timeout", "10m", log_name=f"pilot{number}.log",
                         env={"FLOE_SHAPE_CPUS": "1", "FLOE_SHAPE_MEMORY": "1GiB"})


@pytest.mark.slow
def test_sigterm_stops_a_busy_server_within_its_grace_and_loses_nothing(matchmaker, tmp_path):
    dataset_id = matchmaker.submit(dataset(2000, ["true"]))
    start_pilots(matchmaker, tmp_path, 4)
    wait_for(lambda: counts(matchmaker, dataset_id)["complete"] >= 200, 60, "tasks to complete")
    stop_within_grace(matchmaker)
    matchmaker.start()
    wait_for(lambda: matchmaker.get(f"/datasets/{dataset_id}")["status"] == "complete", 120,
             "every task to complete")
    assert set(completions(matchmaker, dataset_id).values()) == {1}
    assert completions(matchmaker, dataset_id).total() == 2000
    agree(matchmaker, dataset_id)
    assert "unhandled error" not in server_log(matchmaker)


@pytest.mark.slow
def test_resets_suspends_and_resumes_under_ten_pilots_complete_every_task_exactly_once(
        matchmaker, tmp_path):
    """Regression: a bulk action decided from memory that already held reports and dispatches
    queued behind it: tasks stayed waiting for ever, resets answered 500 (StaleWrite), and a
    suspend left memory and database apart so that the dataset never moved again."""
    jobs = 1500
    dataset_id = matchmaker.submit(dataset(jobs, ["sleep", "0.02"]))
    start_pilots(matchmaker, tmp_path, 10)
    path = f"/datasets/{dataset_id}"
    for action, body in [("reset", {"scope": "all"}), ("suspend", {}), ("resume", {}),
                         ("reset", {"scope": "all"})] * 3:
        if action != "resume":
            wait_for(lambda: counts(matchmaker, dataset_id)["complete"] >= 50, 60,
                     "some progress")
        status, answer = matchmaker.api("POST", f"{path}/{action}", body)
        assert status == 200, (action, answer)
        if action == "suspend":  # nothing moves in a suspended dataset
            assert agree(matchmaker, dataset_id)["suspended"] > 0
    wait_for(lambda: matchmaker.get(path)["status"] == "complete", 180,
             "every task to complete")
    held = agree(matchmaker, dataset_id)
    assert held["complete"] == jobs
    # Exactly once since the last reset: every task has one complete attempt after it.
    with sqlite3.connect(f"file:{matchmaker.db}?mode=ro", uri=True) as conn:
        (reset_at,) = conn.execute("SELECT max(time) FROM events WHERE action = 'reset all'"
                                   ).fetchone()
        after = dict(conn.execute(
            "SELECT task_id, count(*) FROM attempts WHERE dataset_id = ? AND state ="
            " 'complete' AND ended > ? GROUP BY task_id", (dataset_id, reset_at)).fetchall())
    assert len(after) == jobs and set(after.values()) == {1}
    said = server_log(matchmaker)
    assert "undoing an unrecorded outcome" not in said and " ERROR " not in said, said[-3000:]


@pytest.mark.slow
def test_a_frozen_matchmaker_takes_the_results_finished_meanwhile(tmp_path):
    """Frozen (SIGSTOP) for longer than the heartbeat timeout while pilots ran tasks: the
    time it did not run counts against no attempt, and what finished meanwhile is taken."""
    directory = tmp_path / "matchmaker"
    directory.mkdir()
    live = LiveMatchmaker(directory, settings=SETTINGS)  # heartbeat timeout 30s
    live.start()
    try:
        dataset_id = live.submit(dataset(6, ["sleep", "4"]))
        start_pilots(live, tmp_path, 2)
        wait_for(lambda: counts(live, dataset_id)["processing"] == 2, 30, "tasks to start")
        os.kill(live.process.pid, signal.SIGSTOP)
        time.sleep(40)
        os.kill(live.process.pid, signal.SIGCONT)
        wait_for(lambda: live.get(f"/datasets/{dataset_id}")["status"] == "complete", 90,
                 "every task to complete")
        assert set(completions(live, dataset_id).values()) == {1}
        assert completions(live, dataset_id).total() == 6
        # No result was thrown away: the only attempts reset are those handed out in answers
        # the pilots had given up waiting for during the freeze, which they never ran.
        with sqlite3.connect(f"file:{live.db}?mode=ro", uri=True) as conn:
            reset = [why for (why,) in conn.execute(
                "SELECT error_message FROM attempts WHERE state != 'complete'")]
        assert all(why.startswith("never reached pilot") for why in reset), reset
        assert "did not run for" in server_log(live)
    finally:
        live.close()


def test_a_client_that_gives_up_in_the_middle_of_its_body_costs_no_traceback(matchmaker):
    with socket.create_connection(("127.0.0.1", matchmaker.port)) as connection:
        connection.sendall(
            f"POST /api/v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{matchmaker.user_token}\r\nContent-Type: application/json\r\nContent-Length: "
            f"1000\r\n\r\n{{\"descr".encode())
        time.sleep(0.3)
    answered_at_once(matchmaker)
    said = server_log(matchmaker)
    assert "Traceback" not in said and " ERROR " not in said, said


def kill_outright(live: LiveMatchmaker) -> None:
    """SIGKILL, as the kernel's OOM killer or a lost node ends it, to the server and its writer
    process at once: nothing is flushed, closed or answered."""
    server = psutil.Process(live.process.pid)
    for process in [*server.children(), server]:
        process.kill()
    live.process.wait(10)
    live.process = None


@pytest.mark.slow
def test_a_matchmaker_killed_outright_three_times_completes_every_task_exactly_once(
        matchmaker, tmp_path):
    """kill -9 in the middle of a run of thousands of short tasks with real pilots, three times;
    started again each time on the same file. The record has every task complete, each by
    exactly one attempt: no result lost (the pilots hold what the server had not taken) and
    none doubled (a report taken but not answered is acknowledged again as a duplicate)."""
    tasks = 4000
    dataset_id = matchmaker.submit(dataset(tasks, ["true"]))
    start_pilots(matchmaker, tmp_path, 4)
    for done in (500, 1500, 3000):
        wait_for(lambda done=done: counts(matchmaker, dataset_id)["complete"] >= done, 120,
                 f"{done} tasks to complete")
        kill_outright(matchmaker)
        time.sleep(1.0)  # the pilots meet a closed port meanwhile
        matchmaker.start()
    wait_for(lambda: matchmaker.get(f"/datasets/{dataset_id}")["status"] == "complete", 240,
             "every task to complete")
    # Memory runs a group commit ahead of the file: the last reports are in it a moment later.
    completed = wait_for(lambda: (found := completions(matchmaker, dataset_id)).total() == tasks
                         and found, 10, "the last completions in the database file")
    assert set(completed.values()) == {1}
    assert agree(matchmaker, dataset_id)["complete"] == tasks
    said = server_log(matchmaker)
    assert "unhandled error" not in said and "Traceback" not in said, said[-3000:]
