"""`floe wait` against a real matchmaker process: it follows a real pilot's work to the end
(exit status 0), redraws its bar in place on a terminal and writes a line for each change
elsewhere, and fails with one sentence when tasks failed, when it gives up, or when the dataset
is not there."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import time
import tty

import pytest

from tests.cli.support import as_user, run, run_json, start_process
from tests.pilot.live import wait_for
from tests.pilot.scripted import ScriptedPilot


def config(command: str, jobs: int = 3) -> dict:
    needs = {"memory": "64MiB", "disk": "16MiB", "walltime": "5m"}  # within a pilot's hour
    return {"jobs": jobs, "max_retries": 0,
            "tasks": [{"name": "step", "requirements": needs, "modules": [{"command": command}]}]}


def test_wait_follows_a_real_pilot_until_every_task_is_complete(matchmaker, tmp_path):
    dataset = matchmaker.submit(config("echo done"))
    waiting = start_process(tmp_path, "wait", str(dataset), "--interval", "0.2",
                            *as_user(matchmaker), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = waiting.stdout.readline()  # the pilot starts once floe wait is watching
    assert first == f"dataset {dataset} processing: 0.0% done (3 ready)\n"
    pilot = matchmaker.start_pilot(tmp_path / "scratch", "--idle-timeout", "1s")
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, (out, err, (tmp_path / "pilot.log").read_text())
    assert err == ""
    lines = out.splitlines()  # one line per change (stdout is no terminal here)
    assert len(lines) == len(set(lines))
    assert lines[-1] == f"dataset {dataset} complete: 100.0% done (3 complete)"
    assert pilot.wait(60) == 0
    assert matchmaker.states(dataset) == ["complete"] * 3


def test_wait_not_on_a_terminal_writes_a_line_for_each_change_without_a_bar(matchmaker,
                                                                              tmp_path):
    dataset = matchmaker.submit(config("true", jobs=2))
    waiting = start_process(tmp_path, "wait", str(dataset), "--interval", "0.2",
                            *as_user(matchmaker), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    said = f"dataset {dataset} processing: "
    assert waiting.stdout.readline() == f"{said}0.0% done (2 ready)\n"
    pilot = ScriptedPilot(matchmaker)
    attempt = pilot.take()
    assert waiting.stdout.readline() == f"{said}0.0% done (1 ready, 1 processing)\n"
    pilot.report(attempt)
    assert waiting.stdout.readline() == f"{said}50.0% done (1 ready, 1 complete)\n"
    time.sleep(1)  # nothing changes: nothing is written
    pilot.run_one()
    out, err = waiting.communicate(timeout=60)
    assert (waiting.returncode, err) == (0, "")
    assert out.splitlines()[-1] == f"dataset {dataset} complete: 100.0% done (2 complete)"
    assert len(out.splitlines()) <= 2  # the last task's take, maybe, and its end


def test_wait_shows_the_few_tasks_ended_of_a_large_dataset_as_more_than_none(capsys, matchmaker):
    dataset = matchmaker.submit(config("true", jobs=10_000))
    ScriptedPilot(matchmaker).run_one()
    status, out, _ = run(capsys, "wait", str(dataset), "--timeout", "0", *as_user(matchmaker))
    assert status == 1
    assert out.splitlines()[0] == (f"dataset {dataset} processing: 0.01% done (9999 ready, "
                                   "1 complete)")


def test_wait_redraws_one_line_in_place_on_a_terminal(matchmaker, tmp_path):
    dataset = matchmaker.submit(config("echo done", jobs=2))
    primary, secondary = pty.openpty()
    tty.setraw(secondary)  # no newline translation: what floe writes is what is read
    waiting = start_process(tmp_path, "wait", str(dataset), "--interval", "0.2",
                            *as_user(matchmaker), stdout=secondary, stderr=subprocess.PIPE)
    os.close(secondary)
    screen = b""

    def read_some() -> bytes:
        nonlocal screen
        screen += os.read(primary, 65536)
        return screen
    wait_for(lambda: b"0.0% done" in read_some(), 30, "the first progress line")
    pilot = ScriptedPilot(matchmaker)
    pilot.run_one()
    wait_for(lambda: b"50.0% done" in read_some(), 30, "the bar to move")
    pilot.run_one()
    assert waiting.wait(30) == 0, waiting.stderr.read()
    try:
        while chunk := os.read(primary, 65536):
            screen += chunk
    except OSError:  # the terminal's other end closed: all was read
        pass
    os.close(primary)
    text = screen.decode()
    assert text.count("\r") >= 3 and text.count("\x1b[K") == text.count("\r")
    assert text.endswith(f"[{'#' * 30}] 100.0% done (2 complete)\x1b[K\n")
    assert text.count("\n") == 1  # every look redrew the same line


@pytest.mark.parametrize(("jobs", "failed"), [(2, "2 failed tasks"), (1, "1 failed task")])
def test_wait_fails_with_one_sentence_when_tasks_failed(capsys, matchmaker, jobs, failed):
    dataset = matchmaker.submit(config("false", jobs=jobs))
    pilot = ScriptedPilot(matchmaker)
    for _ in range(jobs):
        pilot.run_one(exit_code=1)
    status, out, err = run(capsys, "wait", str(dataset), *as_user(matchmaker))
    assert status == 1
    assert out.splitlines()[-1] == f"dataset {dataset} failed: 100.0% done ({jobs} failed)"
    assert err == (f"floe wait: dataset {dataset} ended with {failed}; see "
                   f"`floe tasks {dataset} --state failed`\n")


def test_wait_gives_up_after_its_timeout(capsys, matchmaker):
    dataset = matchmaker.submit(config("true"))
    status, out, err = run(capsys, "wait", str(dataset), "--timeout", "0.5", "--interval",
                           "0.2", *as_user(matchmaker))
    assert status == 1
    assert len(out.splitlines()) == 1  # not on a terminal: a line when something changed
    assert err == (f"floe wait: dataset {dataset} is still processing after 0.5 s; gave up "
                   "waiting (--timeout)\n")


def test_wait_json_prints_only_the_ended_dataset(capsys, matchmaker):
    dataset = matchmaker.submit(config("true", jobs=1))
    ScriptedPilot(matchmaker).run_one()
    printed = run_json(capsys, "wait", str(dataset), *as_user(matchmaker))
    assert printed["status"] == "complete" and printed["tasks"]["complete"] == 1
    assert printed["id"] == dataset and "config" in printed
    json.dumps(printed)


def test_wait_for_a_dataset_that_does_not_exist_is_one_sentence(capsys, matchmaker):
    status, out, err = run(capsys, "wait", "42", *as_user(matchmaker))
    assert (status, out, err) == (1, "", "floe wait: there is no dataset 42\n")
