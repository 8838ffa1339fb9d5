"""The online pilot's limits end to end: a task that grows past what the slot can spare, or past
its walltime, is killed and reported as resource overuse, and the matchmaker grows its
requirement so that its next attempt asks for what it really needs."""

from __future__ import annotations

import sys

from .live import LiveMatchmaker

MIB = 2**20
HOG = f"{sys.executable} -c \"import time; hog = b'x' * (400 << 20); time.sleep(2)\""


def dataset(command: str, max_retries: int = 3, **requirements: object) -> dict:
    needs = {"memory": "64MiB", "disk": "16MiB", "walltime": "5m", **requirements}
    return {"jobs": 1, "max_retries": max_retries,
            "tasks": [{"name": "work", "requirements": needs, "modules": [{"command": command}]}]}


def test_a_memory_hog_is_killed_and_its_next_attempt_asks_for_more(
        matchmaker: LiveMatchmaker, tmp_path):
    dataset_id = matchmaker.submit(dataset(HOG))
    small = matchmaker.start_pilot(tmp_path / "scratch", "--idle-timeout", "1s",
                                   env={"SLURM_MEM_PER_NODE": "256"})
    assert small.wait(60) == 0, (tmp_path / "pilot.log").read_text()

    [task] = matchmaker.tasks(dataset_id)
    [killed] = task["attempts"]
    assert killed["error_class"] == "resource_overuse"
    assert "memory" in killed["error_message"]
    assert killed["used"]["peak_memory"] > 256 * MIB
    assert task["state"] == "ready"
    grown = task["requirements"]["memory"]
    assert grown >= 1.5 * killed["used"]["peak_memory"] - 1

    # A pilot with room for the grown request runs the task to the end within it.
    big = matchmaker.start_pilot(tmp_path / "scratch", "--idle-timeout", "1s",
                                 env={"SLURM_MEM_PER_NODE": "2048"}, log_name="big.log")
    assert big.wait(60) == 0, (tmp_path / "big.log").read_text()
    [task] = matchmaker.tasks(dataset_id)
    assert task["state"] == "complete"
    assert task["attempts"][1]["requested"]["memory"] == grown


def test_a_task_past_its_walltime_is_killed_as_overuse(matchmaker: LiveMatchmaker, tmp_path):
    dataset_id = matchmaker.submit(dataset("sleep 30", max_retries=0, walltime="1s"))
    pilot = matchmaker.start_pilot(tmp_path / "scratch", "--idle-timeout", "1s",
                                   "--walltime-grace", "1s")
    assert pilot.wait(60) == 0, (tmp_path / "pilot.log").read_text()

    [task] = matchmaker.tasks(dataset_id)
    [killed] = task["attempts"]
    assert killed["error_class"] == "resource_overuse"
    assert "past its walltime of 1s" in killed["error_message"]
    assert 2 <= killed["used"]["wall_time"] < 30
    assert task["state"] == "failed"
    assert task["requirements"]["walltime"] >= 3
