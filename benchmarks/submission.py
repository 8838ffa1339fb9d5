"""Benchmark of what carrying the pilot in every job costs, and of submitting over ssh.

Since no worker node may be assumed to read the factory's workdir, each pilot's job script
carries the launcher, the one-file pilot (base64) and its own token (plugins/jobs.py). Measured
against the way a shared-filesystem site could do it, in the same run (the baseline: a script
that starts the pilot.pyz from the factory's workdir, as floe did before):

Between the two, a site's `shared_filesystem` mode: the launcher (its Python check, its private
directory and token file) starting the workdir's pilot.pyz, which the job does not carry.

- script: the bytes of one SLURM job script, carried, shared and baseline;
- start-up: seconds from starting the job's script to the pilot's own code having run (the
  pilot is started with `--help`, which it answers and leaves), median of 15 runs each: the
  launcher looks for a Python, makes its private directory, decodes and writes the pilot (when
  carried) and the token, and removes the directory afterwards;
- submit (when scripts/batch/slurm.sh runs a SLURM here): seconds per pilot for 20 pilots
  submitted through sbatch, carried, shared and baseline, from this machine; and carried over
  ssh (when scripts/net/login-node.sh runs its login node here) through one multiplexed
  connection, with
  the first command (which opens the connection) counted apart; and one squeue, here and over
  ssh. The jobs end at once (`--help`).

Prints one JSON object. `--small` runs fewer repetitions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe  # noqa: E402
from floe.pilot.bundle import build  # noqa: E402
from floe.plugins.base import BatchError, PilotShape, PluginSettings  # noqa: E402
from floe.plugins.hosts import SshSettings  # noqa: E402
from floe.plugins.jobs import CommandJob, PilotJob  # noqa: E402
from floe.plugins.slurm import SlurmPlugin  # noqa: E402

SHAPE = PilotShape("bench", memory=256 * 2**20, walltime=600)
LOGIN_NODE = Path("/var/tmp/floe-batch/login-node")
PYTHON = "/usr/bin/python3"  # what a worker (and the login node's account) runs


def jobs(bundle: Path, count: int) -> tuple[PilotJob, PilotJob, CommandJob]:
    """The carried job, the shared-filesystem one and the baseline, all starting the pilot
    with --help."""
    tokens = [f"floe_p_bench{index:04d}" for index in range(count)]
    carried = PilotJob(bundle.read_bytes(), ["--help"], tokens, python=PYTHON)
    shared = PilotJob(b"", ["--help"], tokens, python=PYTHON, bundle_path=str(bundle))
    baseline = CommandJob([PYTHON, str(bundle), "--help"], count=count)
    return carried, shared, baseline


def start_up(job: PilotJob | CommandJob, runs: int) -> float:
    """Median seconds for the job's script (pilot 0) to run to its end."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["/bin/sh", "-s"], input=job.script(0).encode(), capture_output=True,
                       check=True)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 4)


def slurm_up() -> bool:
    done = subprocess.run([str(ROOT / "scripts/batch/slurm.sh"), "status"],
                          capture_output=True, check=False)
    return done.returncode == 0


def login_node() -> SshSettings | None:
    done = subprocess.run([str(ROOT / "scripts/net/login-node.sh"), "status"],
                          capture_output=True, check=False)
    if done.returncode != 0:
        return None
    return SshSettings(host="floe-cluster@127.0.0.1", port=2222,
                       identity=str(LOGIN_NODE / "factory_ed25519"),
                       known_hosts=str(LOGIN_NODE / "known_hosts"))


def submit_rate(plugin: SlurmPlugin, job: PilotJob | CommandJob) -> dict[str, Any]:
    started = time.perf_counter()
    batch_ids = plugin.submit(SHAPE, job)
    seconds = time.perf_counter() - started
    with contextlib.suppress(BatchError):  # they ended by themselves meanwhile
        plugin.remove(batch_ids)
    return {"pilots": len(batch_ids), "seconds_per_pilot": round(seconds / len(batch_ids), 4)}


def status_seconds(plugin: SlurmPlugin) -> float:
    started = time.perf_counter()
    plugin.status()
    return round(time.perf_counter() - started, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    runs, count = (5, 5) if args.small else (15, 20)
    result: dict[str, Any] = {"benchmark": "submission", "machine": describe(),
                              "settings": {"runs": runs, "pilots": count, "python": PYTHON}}
    with tempfile.TemporaryDirectory(prefix="floe-bench-") as scratch:
        work = Path(scratch)
        bundle = build(work / "pilot.pyz")
        carried, shared, baseline = jobs(bundle, count)
        local = SlurmPlugin(PluginSettings(factory_id="benchsub", workdir=work / "factory"))
        result["script"] = {
            "bundle_bytes": bundle.stat().st_size,
            "carried_bytes": len(local.render(SHAPE, work / "logs", carried, 0)),
            "shared_bytes": len(local.render(SHAPE, work / "logs", shared, 0)),
            "baseline_bytes": len(local.render(SHAPE, work / "logs", baseline, 0))}
        result["start_up_seconds"] = {"carried": start_up(carried, runs),
                                      "shared": start_up(shared, runs),
                                      "baseline": start_up(baseline, runs)}
        if not slurm_up():
            result["submit"] = "not run: no SLURM here (scripts/batch/slurm.sh up)"
        else:
            result["submit"] = {"local_carried": submit_rate(local, carried),
                                "local_shared": submit_rate(local, shared),
                                "local_baseline": submit_rate(local, baseline),
                                "squeue_seconds_local": status_seconds(local)}
            ssh = login_node()
            if ssh is None:
                result["submit"]["ssh"] = "not run: no login node (scripts/net/login-node.sh up)"
            else:
                remote = SlurmPlugin(PluginSettings(factory_id="benchsub", workdir=work / "ssh",
                                                    ssh=ssh))
                remote.host.close()  # the first command opens the connection, counted apart
                started = time.perf_counter()
                remote.host.workdir()
                result["submit"]["ssh_connect_seconds"] = round(
                    time.perf_counter() - started, 4)
                result["submit"]["ssh_carried"] = submit_rate(remote, carried)
                result["submit"]["squeue_seconds_ssh"] = status_seconds(remote)
                remote.host.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
