"""Benchmark of one pilot: what it adds to each task, and how many null tasks it gets through.

A real matchmaker runs as a subprocess on loopback (its own SQLite file, default settings, so
every match and every report is committed with a full sync before it is answered). Datasets of
null tasks (`true`) are submitted, and one pilot runs in this process against it, three times:

- serial: a 1-CPU slot; once the pilot knows its tasks are short it queues about a second of
  them and reports them in batches (the bulk protocol);
- packed: the machine's whole slot (2 CPUs here), tasks side by side, queued the same way;
- one at a time: a 1-CPU slot with prefetching off, so each task is asked for only as the
  previous one is reported (the ask riding on the report); the per-task overhead is the time
  from asking to the report being acknowledged, less the task's own runtime as the runner
  measured it (median and p99). With prefetching, that time also holds the task's wait in the
  queue and its report's wait for others, so it is given for this run only.

For each: null tasks per second from the first ask to the last acknowledgement, and CPU
milliseconds per task of the pilot (this process, all its threads, the fork and exec of each
task included) and of the tasks themselves. Prints one JSON object. `--small` runs fewer tasks.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe  # noqa: E402
from floe.cli.main import main as floe  # noqa: E402
from floe.pilot.client import Matchmaker  # noqa: E402
from floe.pilot.loop import Pilot  # noqa: E402
from floe.pilot.settings import PilotSettings  # noqa: E402
from floe.pilot.slot import measure  # noqa: E402
from floe.pilot.workarea import WorkArea  # noqa: E402

NULL_TASK = {"name": "null", "requirements": {"cpus": 1, "memory": "64MiB", "disk": "16MiB",
                                              "walltime": "1m"},
             "modules": [{"command": ["true"]}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Server:
    """`floe server` on a fresh database, with a site and a user."""

    def __init__(self, workdir: Path) -> None:
        self.db = workdir / "floe.sqlite"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.site_token = self._floe("site", "add", "bench")["token"]
        self.user_token = self._floe("user", "add", "bench")["token"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "floe.cli.main", "server", "--db", str(self.db), "--port",
             str(self.port), "--log-level", "warning"], cwd=ROOT, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.call("GET", "/health")
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("the matchmaker did not start") from None
                time.sleep(0.05)

    def _floe(self, *args: str) -> dict:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            floe([*args, "--db", str(self.db), "--json"])
        return json.loads(printed.getvalue())

    def call(self, method: str, path: str, body: dict | None = None,
             token: str | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.url}/api/v1{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token or self.user_token}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def submit_null_tasks(self, jobs: int) -> int:
        dataset = self.call("POST", "/datasets", {"jobs": jobs, "tasks": [NULL_TASK]})["id"]
        while self.call("GET", f"/datasets/{dataset}")["jobs_created"] < jobs:
            time.sleep(0.05)
        return dataset

    def pilot_token(self) -> str:
        return self.call("POST", "/sites/bench/pilot-tokens", {"lifetime": 3600},
                         token=self.site_token)["tokens"][0]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


@dataclasses.dataclass
class Run:
    """One pilot's run and the CPU it took: its own (this process, every thread) and its
    tasks' (the children it reaped)."""

    pilot: Pilot
    pilot_cpu: float
    task_cpu: float

    def per_task_ms(self, seconds: float) -> float:
        return round(1000 * seconds / max(1, len(self.pilot.timings)), 3)


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_pilot(server: Server, scratch: Path, cpus: int | None, prefetch: bool = True) -> Run:
    """One pilot until it has run out of work; `cpus` narrows the measured slot."""
    slot = measure(lifetime=3600, scratch=scratch, gpu_source=None)
    if cpus is not None:
        slot = dataclasses.replace(slot, cpus=cpus)
    work = WorkArea(scratch)
    work.open()
    pilot = Pilot(Matchmaker(server.url, server.pilot_token()), slot, work,
                  PilotSettings(idle_timeout=0.5, prefetch_horizon=1.0 if prefetch else 0.0))
    own, children = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    try:
        pilot.run()
    finally:
        work.close()
    return Run(pilot, _cpu(resource.RUSAGE_SELF) - own, _cpu(resource.RUSAGE_CHILDREN) - children)


def figures(run: Run) -> dict[str, float]:
    timings = list(run.pilot.timings)
    span = max(t.acknowledged for t in timings) - min(t.asked for t in timings)
    return {"slot_cpus": run.pilot.slot.cpus, "tasks": len(timings),
            "tasks_per_second": round(len(timings) / span, 1),
            "pilot_cpu_ms_per_task": run.per_task_ms(run.pilot_cpu),
            "task_cpu_ms_per_task": run.per_task_ms(run.task_cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="fewer tasks, a quick look")
    args = parser.parse_args()
    serial_tasks, packed_tasks, single_tasks = (400, 400, 200) if args.small else \
        (4000, 4000, 1000)
    machine = describe()
    with tempfile.TemporaryDirectory(prefix="floe-bench-pilot-") as temporary:
        workdir = Path(temporary)
        (workdir / "scratch").mkdir()
        server = Server(workdir)
        try:
            server.submit_null_tasks(serial_tasks)
            serial = run_pilot(server, workdir / "scratch", cpus=1)
            server.submit_null_tasks(packed_tasks)
            packed = run_pilot(server, workdir / "scratch", cpus=None)
            server.submit_null_tasks(single_tasks)
            single = run_pilot(server, workdir / "scratch", cpus=1, prefetch=False)
        finally:
            server.stop()
    overheads = [timing.overhead * 1000 for timing in single.pilot.timings]
    runtimes = [timing.runtime * 1000 for timing in single.pilot.timings]
    result = {
        "benchmark": "pilot",
        "small": args.small,
        "machine": machine,
        "matchmaker": "a subprocess on loopback, default settings (durability full)",
        "serial": figures(serial),
        "packed": figures(packed),
        "one_at_a_time": dict(
            figures(single), overhead_ms_median=round(statistics.median(overheads), 2),
            overhead_ms_p99=round(percentile(overheads, 99), 2),
            task_runtime_ms_median=round(statistics.median(runtimes), 2)),
        "targets": {"overhead_ms_median": 10, "tasks_per_second": 100,
                    "pilot_cpu_ms_per_task": 1.0},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
