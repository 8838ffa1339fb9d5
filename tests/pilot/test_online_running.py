"""The online pilot running tasks from a real matchmaker: one after another in a 1-CPU slot,
side by side in a bigger one, GPUs given to exactly the task that claimed them, and leaving when
there is no work. Pilots are real subprocesses (once the bundle, on a bare python3)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from floe.pilot.bundle import build
from floe.pilot.gpus import open_nvml
from floe.pilot.workarea import directory_name

from .live import SETTINGS, LiveMatchmaker

PYTHON39 = Path("/root/.pyenv/versions/3.9.18/bin/python3")
BARE_PYTHON = str(PYTHON39) if PYTHON39.exists() else (shutil.which("python3") or "python3")
NVML, NVML_NOTE = open_nvml()
NODE_GPUS = NVML.devices() if NVML is not None else []


def dataset(command: str, jobs: int = 1, **requirements: object) -> dict:
    needs = {"memory": "64MiB", "disk": "16MiB", "walltime": "5m", **requirements}
    return {"jobs": jobs, "tasks": [{"name": "work", "requirements": needs,
                                     "modules": [{"command": command}]}]}


def probe(env: dict[str, str], scratch: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "floe.pilot.main", "--probe", "--scratch",
                           str(scratch)], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def overlap(attempts: list[dict]) -> int:
    """The most attempts that were in flight at one moment, by the matchmaker's record of when
    each was handed out and when its report came back."""
    events = sorted([(a["started"], 1) for a in attempts] + [(a["ended"], -1) for a in attempts],
                    key=lambda event: (event[0], event[1]))
    most = running = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("bundle") / "pilot.pyz")


def test_a_one_cpu_pilot_runs_tasks_one_after_another_from_the_bundle(
        matchmaker: LiveMatchmaker, tmp_path, bundle):
    token = matchmaker.pilot_token()
    # Each task holds a lock directory while it runs, so two at once would fail one of them.
    # The tasks are short: after the first, the pilot queues the rest and runs them in a row.
    dataset_id = matchmaker.submit(dataset(
        "mkdir $system(lock) || exit 9; env; echo data=$system(data); "
        "echo '{\"events\": $args(job)}' > $FLOE_STATS; rmdir $system(lock)", jobs=6))
    pilot = matchmaker.start_pilot(
        tmp_path / "scratch", "--idle-timeout", "1s", "--system", "data=/cvmfs/ice",
        "--system", f"lock={tmp_path / 'running'}",
        command=[BARE_PYTHON, "-I", "-S", str(bundle)],
        env={"SLURM_CPUS_ON_NODE": "1"}, token=token)
    assert pilot.wait(60) == 0, (tmp_path / "pilot.log").read_text()

    assert matchmaker.states(dataset_id) == ["complete"] * 6
    attempts = matchmaker.attempts(dataset_id)
    assert [a["state"] for a in attempts] == ["complete"] * 6
    assert sorted(a["statistics"]["events"] for a in attempts) == [0, 1, 2, 3, 4, 5]
    for attempt in attempts:
        tail = matchmaker.get(f"/attempts/{attempt['attempt_id']}")["stdout_tail"]
        assert "FLOE_TASK=work" in tail and "data=/cvmfs/ice" in tail
        assert token not in tail and "FLOE_PILOT_TOKEN" not in tail
    record = matchmaker.pilot_record()
    assert record["state"] == "exited"
    # Why it had no work, as the matchmaker last said: here, the dataset was done.
    assert record["exit_reason"] == ("idle: no work for 1s; the matchmaker said: no ready task "
                                     "in any dataset")
    assert record["resources"]["cpus"] == 1


def test_a_pilot_with_several_cpus_runs_one_cpu_tasks_side_by_side(
        matchmaker: LiveMatchmaker, tmp_path):
    cpus = probe({"PATH": "/usr/bin:/bin"}, tmp_path)["cpus"]
    if cpus < 2:
        pytest.skip("this machine offers a single CPU")
    dataset_id = matchmaker.submit(dataset("sleep 1", jobs=4))
    pilot = matchmaker.start_pilot(tmp_path / "scratch", "--idle-timeout", "1s")
    assert pilot.wait(60) == 0, (tmp_path / "pilot.log").read_text()

    assert matchmaker.states(dataset_id) == ["complete"] * 4
    assert overlap(matchmaker.attempts(dataset_id)) == min(cpus, 4)


def test_a_log_longer_than_the_servers_tails_goes_up_whole(tmp_path):
    (tmp_path / "server").mkdir()
    live = LiveMatchmaker(tmp_path / "server", settings=SETTINGS + 'tail_bytes = "1KiB"\n')
    live.start()
    try:
        # 3,000 bytes: longer than the 1 KiB the server keeps, far shorter than the pilot's own
        # 64 KiB tails, so only the server's word makes the pilot send the whole log.
        dataset_id = live.submit(dataset("seq 1000 1599"))
        pilot = live.start_pilot(tmp_path / "scratch", "--idle-timeout", "1s")
        assert pilot.wait(60) == 0, (tmp_path / "pilot.log").read_text()
        [attempt] = live.attempts(dataset_id)
        tail = live.get(f"/attempts/{attempt['attempt_id']}")["stdout_tail"]
        assert len(tail.encode()) <= 1024 and tail.endswith("1598\n1599\n")
        request = urllib.request.Request(
            f"{live.url}/api/v1/attempts/{attempt['attempt_id']}/logs/stdout",
            headers={"Authorization": f"Bearer {live.user_token}"})
        with urllib.request.urlopen(request) as answer:
            assert answer.headers["X-Floe-Log-Complete"] == "1"
            assert answer.read().decode() == "".join(f"{n}\n" for n in range(1000, 1600))
    finally:
        live.close()


def test_a_pilot_works_over_tls_trusting_the_matchmakers_certificate(tmp_path):
    (tmp_path / "tls").mkdir()
    live = LiveMatchmaker(tmp_path / "tls", tls=True)
    live.start()
    try:
        dataset_id = live.submit(dataset("true"))
        pilot = live.start_pilot(tmp_path / "scratch", "--idle-timeout", "1s")
        assert pilot.wait(60) == 0, (tmp_path / "pilot.log").read_text()
        assert live.states(dataset_id) == ["complete"]
    finally:
        live.close()


def test_a_pilot_with_no_work_signs_off_after_its_idle_timeout(
        matchmaker: LiveMatchmaker, tmp_path):
    pilot = matchmaker.start_pilot(tmp_path / "scratch", "--idle-timeout", "1s")
    assert pilot.wait(30) == 0, (tmp_path / "pilot.log").read_text()
    record = matchmaker.pilot_record()
    assert record["state"] == "exited"
    assert record["exit_reason"].startswith("idle")
    assert not record["suspect"]
    assert not list((tmp_path / "scratch" / directory_name() / "runs").iterdir())


@pytest.mark.gpu
@pytest.mark.skipif(not NODE_GPUS, reason=f"no NVIDIA GPU here ({NVML_NOTE})")
def test_a_gpu_task_sees_exactly_the_gpu_it_claimed_and_a_cpu_task_sees_none(
        matchmaker: LiveMatchmaker, tmp_path):
    gpu = NODE_GPUS[0]
    gpu_dataset = matchmaker.submit(dataset("echo visible=$CUDA_VISIBLE_DEVICES", gpus=1))
    cpu_dataset = matchmaker.submit(dataset("echo visible=$CUDA_VISIBLE_DEVICES"))
    pilot = matchmaker.start_pilot(tmp_path / "scratch", "--idle-timeout", "1s",
                                   env={"CUDA_VISIBLE_DEVICES": str(gpu.index)})
    assert pilot.wait(60) == 0, (tmp_path / "pilot.log").read_text()

    [gpu_attempt] = matchmaker.attempts(gpu_dataset)
    [cpu_attempt] = matchmaker.attempts(cpu_dataset)
    tail = matchmaker.get(f"/attempts/{gpu_attempt['attempt_id']}")["stdout_tail"]
    assert tail.strip() == f"visible={gpu.uuid}"
    tail = matchmaker.get(f"/attempts/{cpu_attempt['attempt_id']}")["stdout_tail"]
    assert tail.strip() == "visible="
    assert [g["uuid"] for g in matchmaker.pilot_record()["resources"]["gpus"]] == [gpu.uuid]
