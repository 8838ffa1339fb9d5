"""`floe demo` as a real subprocess with the local site, and with the single-node SLURM (what
`make demo SITE=slurm` runs once the cluster is up): a small demo dataset runs to the end and its
summary says what happened (every task done, the flaky task retried, statistics, pilots per
site); Ctrl-C in the middle stops everything. None leaves a process or a pilot behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.pilot.live import ROOT, wait_for

pytestmark = pytest.mark.slow

# Seven jobs: the demo's `process` task fails once on purpose in every seventh job (job 6).
JOBS = 7
VENV_BIN = Path(sys.executable).parent
# A shell as `make demo` leaves it: floe's virtual environment is not on its PATH.
BARE_ENV = {**os.environ, "PATH": os.pathsep.join(
    p for p in os.environ.get("PATH", "").split(os.pathsep)
    if p and Path(p).resolve() != VENV_BIN.resolve())}


def demo(workdir: Path | None, site: str = "local", **env: str) -> subprocess.Popen:
    """`floe demo` in `workdir` (None: where it puts its files by default)."""
    return subprocess.Popen(
        [sys.executable, "-m", "floe.cli.main", "demo", "--site", site, "--dataset",
         str(ROOT / "examples/demo.json"), *(["--workdir", str(workdir)] if workdir else []),
         "--jobs", str(JOBS), "--pilots", "2"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**BARE_ENV, **env},
        # Ctrl-C must work even where the test runner was started with SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def processes_in(workdir: Path) -> list[str]:
    """Processes started from, or running in, `workdir` (the server, factory, pilots, tasks)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(workdir) in command or cwd.startswith(str(workdir)):
            found.append(f"{entry.name}: {command}")
    return found


def check_summary(out: str, site: str, venv_bin: Path = VENV_BIN, cwd: Path = ROOT) -> None:
    """The demo's output says that every task of the dataset was done at `site`, by pilots that
    all exited, with the flaky task of job 6 retried, and the dataset's statistics (floe being
    the one in `venv_bin`, the demo run from `cwd`)."""
    tasks = JOBS * 4
    assert f"{JOBS} jobs of 4 tasks" in out
    assert re.search(rf"^  tasks\s+{tasks} done, 0 failed, of {tasks}$", out, re.M), out
    retries = re.search(r"^  retries\s+(\d+) attempts? w", out, re.M)
    assert retries and int(retries[1]) >= 1, out
    assert re.search(r"process of job 6: 2 attempts; the first: task_error", out), out
    pilots = re.search(rf"^  pilots\s+site {site}: (\d+) \((\d+) exited\)$", out, re.M)
    assert pilots and int(pilots[1]) >= 1 and pilots[1] == pilots[2], out
    # The dataset's own statistics, aggregated over its tasks: n, sum, mean, stddev.
    events = re.search(r"^\s+user\s+events\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)$", out, re.M)
    assert events and int(events[1]) == 3 * JOBS, out  # generate and process of each job
    assert float(events[3]) == pytest.approx(float(events[2]) / int(events[1]), rel=1e-3)
    assert re.search(r"^\s+resource\s+wall_time\s+" + str(tasks) + " ", out, re.M), out
    assert re.search(r"export FLOE_URL=http://127\.0\.0\.1:\d+ FLOE_TOKEN=floe_u_\S+$", out,
                     re.M), out
    assert "floe status 1" in out
    check_closing_hint_works_as_printed(out, venv_bin, cwd)


def check_closing_hint_works_as_printed(out: str, venv_bin: Path = VENV_BIN,
                                        cwd: Path = ROOT) -> None:
    """The commands of the closing hint run in the shell the demo ran from, where `floe` was
    not on the PATH: what comes before `floe server` makes `floe` this floe."""
    hint = out.split("to look again", 1)[1].splitlines()[1:]
    commands = [line.strip() for line in hint if line.startswith("    ")]
    setup = commands[:next(i for i, c in enumerate(commands) if c.startswith("floe server "))]
    assert setup, "floe is not on the PATH, yet the hint says nothing of it"
    shell = subprocess.run(["bash", "-c", "\n".join([*setup, "command -v floe",
                                                     "floe status --help >/dev/null"])],
                           cwd=cwd, env=BARE_ENV, capture_output=True, text=True, timeout=60)
    assert shell.returncode == 0, (setup, shell.stderr)
    assert Path(shell.stdout.strip()).resolve() == (venv_bin / "floe").resolve()


def test_the_demo_runs_the_dataset_and_summarizes_it(tmp_path):
    # By default in the user's own cache directory, said at the start; and a FLOE_URL left
    # exported by an earlier demo (its closing lines say to) does not lead its factory astray.
    process = demo(None, XDG_CACHE_HOME=str(tmp_path / "cache"), FLOE_URL="http://127.0.0.1:9")
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out
    workdir = tmp_path / "cache" / "floe" / "demo"
    assert f"\n  files       {workdir}/: this run's database, configs and logs" in out
    check_summary(out, "local")
    assert processes_in(workdir) == []
    # The record stays: a second run starts afresh in the same workdir.
    assert (workdir / "floe.sqlite").exists()


def test_the_gpu_demo_gives_each_gpu_pilot_its_own_device(tmp_path):
    """`floe demo --gpu` as scripts/gpu-check.sh runs it on a GPU node, here with two declared
    devices: the GPU tasks run on the pilots given them, each CPU task sees none."""
    devices = tmp_path / "gpus.json"
    devices.write_text(json.dumps([
        {"uuid": f"GPU-5e1f0c2a-0000-4000-8000-00000000000{i}", "name": "Test GPU",
         "memory": 16 * 2**30, "compute_capability": [8, 0]} for i in (1, 2)]))
    workdir = tmp_path / "demo"
    process = subprocess.Popen(
        [sys.executable, "-m", "floe.cli.main", "demo", "--gpu", "--gpu-devices", str(devices),
         "--workdir", str(workdir), "--jobs", "3", "--pilots", "1"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=BARE_ENV)
    out, _ = process.communicate(timeout=180)
    assert process.returncode == 0, out
    assert "3 jobs of 2 tasks (compute, check)" in out
    assert re.search(r"^  tasks\s+6 done, 0 failed, of 6$", out, re.M), out
    given = re.search(r"^\s+user\s+devices_given\s+3\s+3\s", out, re.M)
    assert given, out  # each of the 3 GPU tasks was given one device
    assert re.search(r"^\s+user\s+cpu_task_gpus\s+3\s+0\s", out, re.M), out
    site = tomllib.loads((workdir / "site.toml").read_text())["sites"][0]
    assert [s["name"] for s in site["shapes"]] == ["small", "gpu"]
    assert site["options"]["gpus"] == [d["uuid"] for d in json.loads(devices.read_text())]
    assert processes_in(workdir) == []


def slurm_jobs_named(part: str) -> list[str]:
    """SLURM jobs not yet ended whose name holds `part`."""
    listed = subprocess.run(["squeue", "--noheader", "--states=PENDING,RUNNING,COMPLETING,"
                             "SUSPENDED", "--format=%i %T %j"], capture_output=True, text=True,
                            check=True)
    return [line for line in listed.stdout.splitlines() if part in line]


@pytest.mark.slurm
def test_the_demo_runs_the_dataset_through_slurm_and_leaves_no_job_behind(slurm_cluster,
                                                                           tmp_path):
    workdir = tmp_path / "demo"
    process = demo(workdir, "slurm")
    out, _ = process.communicate(timeout=180)
    assert process.returncode == 0, out
    assert "as jobs in the local SLURM cluster" in out
    check_summary(out, "slurm")
    assert processes_in(workdir) == []
    factory_id = tomllib.loads((workdir / "site.toml").read_text())["factory_id"]
    assert slurm_jobs_named(factory_id) == []


def test_ctrl_c_stops_the_factory_its_pilots_and_the_matchmaker(tmp_path):
    workdir = tmp_path / "demo"
    process = demo(workdir)
    try:
        wait_for(lambda: list((workdir / "factory" / "local" / "local").glob("*.json")), 60,
                 "the first pilot")
        time.sleep(1)  # the pilot is at work
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, out
    assert "interrupted; stopping the factory, its pilots and the matchmaker" in out
    assert processes_in(workdir) == []
