"""The online pilot when things go wrong: a SIGTERM from the batch system, a SIGKILL (whose
orphans its guardian ends), a matchmaker that goes away and comes back, a pilot killed with a
report still undelivered, an attempt voided on the server while it runs, a node on which
every task fails, and a proxy that cuts held asks short."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from floe.pilot.proctree import read_stat
from floe.pilot.workarea import directory_name

from .live import LiveMatchmaker, free_port, wait_for

STATISTICS = "sleep 1.5; echo '{\"events\": 7}' > $FLOE_STATS"


def dataset(command: str, jobs: int = 1, max_retries: int = 3) -> dict:
    return {"jobs": jobs, "max_retries": max_retries,
            "tasks": [{"name": "work", "requirements": {"memory": "64MiB", "disk": "16MiB",
                                                        "walltime": "5m"},
                       "modules": [{"command": command}]}]}


def sleeper(pid_file: Path) -> str:
    """A task that writes its process id where the test can read it, then sleeps a minute
    (`$$$$` is the shell's `$$`: a dataset config writes a literal `$` as `$$`)."""
    return f"echo $$$$ > {pid_file}.part && mv {pid_file}.part {pid_file} && exec sleep 60"


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever adopted it)."""
    info = read_stat(pid)
    return info is not None and not info.zombie


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def outbox(scratch: Path) -> Path:
    return scratch / directory_name() / "outbox"


def test_sigterm_drains_the_pilot_and_requeues_its_running_task(
        matchmaker: LiveMatchmaker, tmp_path):
    pid_file = tmp_path / "task.pid"
    dataset_id = matchmaker.submit(dataset(sleeper(pid_file)))
    pilot = matchmaker.start_pilot(tmp_path / "scratch")
    task_pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30,
                            "the task to start"))
    # Heartbeats carry the usage so far, which the matchmaker shows while the task runs.
    running = wait_for(lambda: [a for a in matchmaker.attempts(dataset_id)
                                if (a["used"]["wall_time"] or 0) > 0], 30, "a heartbeat")
    assert running[0]["state"] == "processing"

    pilot.send_signal(signal.SIGTERM)
    assert pilot.wait(30) == 0, (tmp_path / "pilot.log").read_text()

    assert not alive(task_pid)
    [task] = matchmaker.tasks(dataset_id)
    assert task["state"] == "ready"
    assert task["failures"] == 0
    [attempt] = task["attempts"]
    assert (attempt["state"], attempt["error_class"]) == ("reset", "pilot_lost")
    assert "SIGTERM" in attempt["error_message"]
    assert matchmaker.pilot_record()["exit_reason"].startswith("drained: SIGTERM")
    assert not list(outbox(tmp_path / "scratch").glob("*.json"))


def test_a_task_signalled_with_its_pilot_by_the_batch_system_is_requeued_not_failed(
        matchmaker: LiveMatchmaker, tmp_path):
    pid_file = tmp_path / "task.pid"
    dataset_id = matchmaker.submit(dataset(sleeper(pid_file), max_retries=0))
    pilot = matchmaker.start_pilot(tmp_path / "scratch")
    task_pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30,
                            "the task to start"))

    # As SLURM ends a job: every process of it gets SIGTERM, the task first here, and the
    # pilot's a moment later (as on a busy node).
    os.kill(task_pid, signal.SIGTERM)
    time.sleep(0.5)
    pilot.send_signal(signal.SIGTERM)
    assert pilot.wait(30) == 0, (tmp_path / "pilot.log").read_text()

    [task] = matchmaker.tasks(dataset_id)
    assert (task["state"], task["failures"]) == ("ready", 0)
    assert task["attempts"][0]["error_class"] == "pilot_lost"


def test_a_pilot_killed_with_sigkill_takes_its_task_and_all_it_started_along(
        matchmaker: LiveMatchmaker, tmp_path):
    # The task starts a grandchild and a child in a session of its own, then waits; its pids go
    # into files (the leader's last, once the others are written).
    pids = {name: tmp_path / f"{name}.pid" for name in ("grandchild", "escaped", "leader")}
    command = (f"sleep 45 & echo $$! > {pids['grandchild']}; "
               f"setsid sleep 45 & echo $$! > {pids['escaped']}; "
               f"{sleeper(pids['leader']).replace('exec sleep 60', 'wait')}")
    matchmaker.submit(dataset(command))
    pilot = matchmaker.start_pilot(tmp_path / "scratch")
    wait_for(lambda: pids["leader"].exists(), 30, "the task to start")
    task = [int(path.read_text()) for path in pids.values()]
    log = tmp_path / "pilot.log"
    guardian = int(re.search(r"guardian started \(pid (\d+)\)", log.read_text()).group(1))
    assert all(map(running, task))

    pilot.kill()
    pilot.wait()

    try:
        wait_for(lambda: not any(map(running, task)), 10, "the task's processes to end")
    finally:
        for pid in filter(running, task):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not running(guardian), 10, "the guardian to exit")
    assert f"the pilot (pid {pilot.pid}) died; ended 3 processes of its tasks" in \
        log.read_text()


def test_a_result_is_kept_through_a_matchmaker_outage_and_delivered_once(
        matchmaker: LiveMatchmaker, tmp_path):
    dataset_id = matchmaker.submit(dataset(STATISTICS))
    pilot = matchmaker.start_pilot(tmp_path / "scratch", "--idle-timeout", "1s")
    wait_for(lambda: matchmaker.states(dataset_id) == ["processing"], 30, "the task to start")

    matchmaker.stop()
    kept = outbox(tmp_path / "scratch") / "1.json"
    wait_for(kept.exists, 30, "the finished task's report in the outbox")
    assert pilot.poll() is None
    matchmaker.start()

    assert pilot.wait(60) == 0, (tmp_path / "pilot.log").read_text()
    assert not kept.exists()
    [task] = matchmaker.tasks(dataset_id)
    assert task["state"] == "complete"
    [attempt] = task["attempts"]
    assert (attempt["state"], attempt["statistics"]) == ("complete", {"events": 7.0})
    events = matchmaker.statistic(dataset_id, "events")
    assert (events["count"], events["sum"]) == (1, 7.0)


def test_a_pilot_started_on_the_same_scratch_delivers_what_a_killed_one_left(
        matchmaker: LiveMatchmaker, tmp_path):
    scratch = tmp_path / "scratch"
    dataset_id = matchmaker.submit(dataset(STATISTICS))
    first = matchmaker.start_pilot(scratch)
    wait_for(lambda: matchmaker.states(dataset_id) == ["processing"], 30, "the task to start")
    matchmaker.stop()
    wait_for((outbox(scratch) / "1.json").exists, 30, "the report in the outbox")
    first.kill()
    first.wait()
    assert len(list((scratch / directory_name() / "runs").glob("*.lock"))) == 1
    matchmaker.start()

    # Its token is refused, so it cannot even register: the report goes out all the same,
    # since an attempt's passkey is all that a report needs.
    second = matchmaker.start_pilot(scratch, token="floe_p_not-a-valid-token",
                                    log_name="second.log")
    assert second.wait(60) == 1, (tmp_path / "second.log").read_text()

    assert not list(outbox(scratch).iterdir())
    assert not list((scratch / directory_name() / "runs").iterdir())
    [task] = matchmaker.tasks(dataset_id)
    assert task["state"] == "complete"
    assert [a["state"] for a in task["attempts"]] == ["complete"]
    assert matchmaker.statistic(dataset_id, "events")["count"] == 1


def test_an_attempt_voided_on_the_matchmaker_is_killed_and_not_reported(
        matchmaker: LiveMatchmaker, tmp_path):
    pid_file = tmp_path / "task.pid"
    dataset_id = matchmaker.submit(dataset(sleeper(pid_file)))
    pilot = matchmaker.start_pilot(tmp_path / "scratch", env={"SLURM_CPUS_ON_NODE": "1"})
    task_pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30,
                            "the task to start"))

    status, answer = matchmaker.api("POST", f"/datasets/{dataset_id}/reset", {"scope": "all"})
    assert status == 200, answer
    # The pilot learns it from the attempt's next heartbeat.
    wait_for(lambda: not alive(task_pid), 30, "the voided task to be killed")
    log = tmp_path / "pilot.log"
    wait_for(lambda: "not reported" in log.read_text(), 30, "the pilot to drop the attempt")

    first = matchmaker.attempts(dataset_id)[0]
    assert first["state"] == "reset"
    assert first["exit_code"] is None
    assert "attempt 1: reported" not in log.read_text()
    assert not (outbox(tmp_path / "scratch") / "1.json").exists()
    pilot.send_signal(signal.SIGTERM)
    assert pilot.wait(30) == 0, log.read_text()


def test_a_node_that_fails_task_after_task_is_reported_suspect(
        matchmaker: LiveMatchmaker, tmp_path):
    dataset_id = matchmaker.submit(dataset("echo the node is broken >&2; exit 3", jobs=5,
                                           max_retries=0))
    pilot = matchmaker.start_pilot(tmp_path / "scratch", "--max-failures", "3",
                                   env={"SLURM_CPUS_ON_NODE": "1"})
    assert pilot.wait(60) == 3, (tmp_path / "pilot.log").read_text()

    assert sorted(matchmaker.states(dataset_id)) == ["failed"] * 3 + ["ready"] * 2
    record = matchmaker.pilot_record()
    assert record["suspect"]
    assert record["exit_reason"].startswith("suspect node: 3 different tasks failed in a row")


def test_a_pilot_whose_token_expired_reports_what_it_ran_and_stops_asking(
        matchmaker: LiveMatchmaker, tmp_path):
    dataset_id = matchmaker.submit(dataset(STATISTICS, jobs=3))
    pilot = matchmaker.start_pilot(tmp_path / "scratch", env={"SLURM_CPUS_ON_NODE": "1"})
    wait_for(lambda: "processing" in matchmaker.states(dataset_id), 30, "a task to start")
    # Time passes for the token while the matchmaker is down.
    matchmaker.stop()
    with sqlite3.connect(matchmaker.db) as db:
        db.execute("UPDATE tokens SET expires = 1 WHERE kind IN ('pilot', 'pilot-key')")
    matchmaker.start()

    assert pilot.wait(60) == 0, (tmp_path / "pilot.log").read_text()
    assert sorted(matchmaker.states(dataset_id)) == ["complete", "ready", "ready"]
    assert "token expired: this pilot token has expired" in (tmp_path / "pilot.log").read_text()


def test_a_pilot_with_less_time_left_than_any_task_needs_leaves_at_once(
        matchmaker: LiveMatchmaker, tmp_path):
    dataset_id = matchmaker.submit(dataset("true"))
    pilot = matchmaker.start_pilot(tmp_path / "scratch", "--lifetime", "60s",
                                   "--idle-timeout", "1h")
    assert pilot.wait(30) == 0, (tmp_path / "pilot.log").read_text()
    assert matchmaker.states(dataset_id) == ["ready"]
    reason = matchmaker.pilot_record()["exit_reason"]
    assert reason.startswith("lifetime: ")
    assert reason.endswith("left, and the shortest ready task needs 5m")


@pytest.fixture
def cutting_proxy(proxied_worker: str, tmp_path: Path) -> Iterator[str]:
    """An HTTP proxy on loopback that ends any request idle for 3 seconds, as some sites' proxies
    and load balancers do: tinyproxy (installed by the proxied worker's script) with
    `Timeout 3`. Yields its URL."""
    port = free_port()
    config = tmp_path / "tinyproxy.conf"
    config.write_text(f"Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 3\n"
                      "MaxClients 20\nDisableViaHeader Yes\n")
    with open(tmp_path / "tinyproxy.log", "wb") as log:
        proxy = subprocess.Popen(["tinyproxy", "-d", "-c", str(config)], stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 10,
                 "tinyproxy to listen")
        yield f"http://127.0.0.1:{port}"
    finally:
        proxy.kill()
        proxy.wait()


def test_a_pilot_whose_held_asks_a_proxy_cuts_holds_them_shorter_instead_of_backing_off(
        matchmaker: LiveMatchmaker, cutting_proxy: str, tmp_path):
    """The matchmaker holds idle asks up to 25 s; the proxy ends them after 3. The pilot takes
    the second such cut for what it is (the first may have been a matchmaker that went away),
    asks again at once each time and from then on for holds of 2 s, so it neither backs off
    (minutes apart, deaf to new work) nor is cut again."""
    scratch = tmp_path / "scratch"
    matchmaker.start_pilot(scratch, env={"http_proxy": cutting_proxy, "no_proxy": ""})
    log = scratch.parent / "pilot.log"
    learned = "for holds of at most 2s from now on"
    wait_for(lambda: learned in log.read_text(), 60, "the pilot to notice the cuts")
    time.sleep(8)  # four holds of 2 s
    dataset_id = matchmaker.submit(dataset("true"))
    wait_for(lambda: matchmaker.tasks(dataset_id)[0]["state"] == "complete", 30,
             "the task to run")
    text = log.read_text()
    assert len(re.findall(r"a held ask failed after \d+s", text)) == 2  # never cut again
    assert re.search(r"asking again in [0-9]", text) is None  # never backed off
    after = text[text.index(learned):]
    assert after.count("no work: ") >= 3  # holds the matchmaker ended, answering
