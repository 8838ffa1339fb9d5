"""Benchmark of the factory: how fast real pilots appear under a backlog, whether any of them
find nothing, and how many null tasks two local pilots get through end to end.

Every part is the real thing: `floe server` as a subprocess on loopback (its own SQLite file,
durability full), `floe factory --config site.toml` as a subprocess, and pilots that the factory
starts through its batch plugin (`local`, and `slurm` when scripts/batch/slurm.sh runs one here;
skipped with a note otherwise). Facts about pilots come from the matchmaker's API (/sites,
/pilots, the dataset's task counts), from the factory's status.json (its counters and the last
demand it saw), and, for the attempts of pilots that have ended (the API lists only the attempts
a live pilot holds), from the server's database opened read-only. Four measurements:

- ramp, per plugin: a 2,000-task backlog (`sleep` tasks) appears while the factory runs;
  seconds until the site's limit (max_total) of pilots is registered, and until that many tasks
  run at once; the fraction of pilots registered while demand existed that ran no task; pilots
  submitted after the backlog was gone (every task handed out), over the pilots' idle tail;
- no matchable work: tasks that require another site, or more memory than the shape offers;
  pilots submitted over several factory cycles;
- null tasks (`true`) per second with 2 local pilots of 1 CPU, at 10,000 and at 100,000 queued
  tasks (one fresh server each; the queue is kept that deep by submitting more datasets as the
  pilots drain it), counted over a fixed window; where the CPU went in that window
  (matchmaker, factory, pilots, the tasks themselves); and, once the pilots are gone, whether
  every attempt is recorded (attempt rows against the tasks' states and the server's counts).
  For scale, the run's `machine` holds what this machine can do at best
  (`bare_spawn_per_second`: two bare loops that start `/bin/true` with posix_spawn and wait
  for it, one per core, for five seconds; see machine.py), and `of_bare_spawn_rate` the null
  task rates as fractions of it.

Prints one JSON object. `--small` runs the same shape smaller (about a minute and a half).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe  # noqa: E402
from floe.cli.main import main as floe  # noqa: E402
from floe.config.factory import to_toml  # noqa: E402

SERVER_SETTINGS = 'idle_wait = "2s"\n'
"""Server defaults but one: a pilot that finds nothing waits 2 s before it asks again, not 30 s,
so that the pilots' idle tail after a backlog fits the benchmark."""
TASK_REQUIREMENTS = {"cpus": 1, "memory": "64MiB", "disk": "16MiB", "walltime": "1m"}
SHAPE = {"name": "small", "cpus": 1, "memory": "256MiB", "disk": "1GiB", "walltime": "1h"}
TARGETS = {"empty_pilot_fraction_max": 0.02, "submitted_after_backlog_gone": 0,
           "submitted_without_matchable_work": 0, "null_tasks_per_second": 1000,
           "at_10x_depth": "matchmaker CPU per task within 10 % (+0.01 ms), rate within 5 %"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        time.sleep(every)


def null_task(command: list[str]) -> dict[str, Any]:
    return {"name": "null", "requirements": dict(TASK_REQUIREMENTS),
            "modules": [{"command": command}]}


class Server:
    """`floe server` on a fresh database, with a user and the given sites."""

    def __init__(self, workdir: Path, sites: list[str], settings_text: str = SERVER_SETTINGS
                 ) -> None:
        workdir.mkdir(parents=True)
        self.workdir = workdir
        self.db = workdir / "floe.sqlite"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.user_token = self._floe("user", "add", "bench")["token"]
        self.site_tokens = {site: self._floe("site", "add", site)["token"] for site in sites}
        settings = workdir / "server.toml"
        settings.write_text(settings_text)
        with open(workdir / "server.log", "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "floe.cli.main", "server", "--db", str(self.db), "--port",
                 str(self.port), "--settings", str(settings), "--log-level", "warning"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.psutil = psutil.Process(self.process.pid)

        def healthy() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError("the matchmaker exited: "
                                   + (workdir / "server.log").read_text()[-2000:])
            try:
                return bool(self.call("GET", "/health"))
            except OSError:
                return False
        wait_for(healthy, 30, "the matchmaker to answer", 0.05)

    def _floe(self, *args: str) -> dict[str, Any]:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            floe([*args, "--db", str(self.db), "--json"])
        return json.loads(printed.getvalue())

    def call(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            f"{self.url}/api/v1{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.user_token}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read())

    def submit(self, jobs: int, command: list[str], **requirements: Any) -> int:
        task = null_task(command)
        task["requirements"].update(requirements)
        return self.call("POST", "/datasets", {"jobs": jobs, "tasks": [task]})["id"]

    def dataset(self, dataset: int) -> dict[str, Any]:
        return self.call("GET", f"/datasets/{dataset}")

    def totals(self) -> dict[str, int]:
        """Tasks of every dataset by state; "queued" counts the waiting, the ready and those of
        jobs not created yet."""
        totals: dict[str, int] = {"queued": 0}
        for dataset in self.call("GET", "/datasets")["datasets"]:
            for state, count in dataset["tasks"].items():
                totals[state] = totals.get(state, 0) + count
            totals["queued"] += (dataset["tasks"].get("waiting", 0)
                                 + dataset["tasks"].get("ready", 0)
                                 + (dataset["jobs"] - dataset["jobs_created"])
                                 * dataset["tasks_per_job"])
        return totals

    def site(self, name: str) -> dict[str, Any]:
        """The site's running (registered) pilots and the attempts they hold now."""
        return next(s for s in self.call("GET", "/sites")["sites"] if s["name"] == name)

    def pilots(self, site: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while True:
            after = rows[-1]["pilot_id"] if rows else 0
            page = self.call("GET", f"/pilots?site={site}&limit=1000&after={after}")["pilots"]
            rows += page
            if len(page) < 1000:
                return rows

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """A read-only look at the database (the server keeps writing)."""
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True,
                                                timeout=30)) as db:
            return db.execute(sql, params).fetchall()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Factory:
    """`floe factory --config site.toml` for one site of `server`."""

    def __init__(self, workdir: Path, server: Server, site: dict[str, Any]) -> None:
        workdir.mkdir(parents=True)
        self.site = site["name"]
        token_file = workdir / f"{self.site}.token"
        token_file.write_text(server.site_tokens[self.site])
        token_file.chmod(0o600)
        self.state = workdir / "state"
        shapes = site.pop("shapes")
        document = {"matchmaker": server.url, "factory_id": "bench",
                    "workdir": str(self.state),
                    "sites": [{**site, "token_file": str(token_file), "shapes": shapes}]}
        config = workdir / "site.toml"
        config.write_text(to_toml(document))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "FLOE_", "PBS_", "SGE_"))}
        self.log = workdir / "factory.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "floe.cli.main", "factory", "--config", str(config)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.psutil = psutil.Process(self.process.pid)
        wait_for(lambda: self._alive() and self.status(), 60, "the factory's first cycle")

    def _alive(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError("the factory exited: " + self.log.read_text()[-2000:])
        return True

    def status(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.state / self.site / "status.json").read_text())
        except (OSError, ValueError):
            return None

    def pilot_processes(self) -> list[psutil.Process]:
        """The local plugin's pilots: the factory's descendants that run the bundle (`python
        pilot.pyz ...`, not the shell that waits for it)."""
        found = []
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in self.psutil.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.cmdline()[1:2] and child.cmdline()[1].endswith("pilot.pyz"):
                        found.append(child)
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def site_document(name: str, plugin: str, target: int, cycle: float, **settings: Any
                  ) -> dict[str, Any]:
    """A site whose limits all allow `target` pilots; pilots leave after two cycles idle."""
    document = {"name": name, "plugin": plugin, "python": sys.executable,
                "max_total": target, "max_queued": target, "max_per_cycle": target,
                "cycle": f"{cycle:g}s", "idle_timeout": f"{2 * cycle:g}s",
                "min_pilot_life": f"{cycle:g}s", "removal_grace": "30s",
                "on_stop": "remove-all", "walltime_overhead": "5m", "shapes": [dict(SHAPE)]}
    document.update(settings)
    return document


def slurm_running() -> bool:
    try:
        return subprocess.run([str(ROOT / "scripts/batch/slurm.sh"), "status"],
                              capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# ---------------------------------------------------------------------- ramp


def ramp(root: Path, plugin: str, tasks: int, target: int, seconds: float, cycle: float
         ) -> dict[str, Any]:
    """A backlog appears while the factory runs: how soon the pilots are there, and whether the
    factory stays sane while it drains and after."""
    site = f"bench-{plugin}"
    server = Server(root / f"ramp-{plugin}", [site])
    factory = None
    try:
        document = site_document(site, plugin, target, cycle)
        if plugin == "slurm":
            document["options"] = {"partition": os.environ.get("FLOE_SLURM_PARTITION", "batch")}
        factory = Factory(root / f"ramp-{plugin}-factory", server, document)
        appeared = time.time()
        dataset = server.submit(tasks, ["sleep", str(seconds)])
        marks: dict[str, float] = {}
        snapshots: list[dict[str, Any]] = []  # status.json each time it changes
        submitted_at_gone = None
        while True:
            now = time.time()
            factory._alive()
            status = factory.status()
            if status and (not snapshots or status["time"] != snapshots[-1]["time"]):
                snapshots.append(status)
                if status["counters"]["submitted"] and "first_submitted" not in marks:
                    marks["first_submitted"] = status["time"]
            live = server.site(site)
            if live["pilots"] >= target:
                marks.setdefault("registered", now)
            if live["attempts"] >= target:
                marks.setdefault("busy", now)
            counts = server.dataset(dataset)["tasks"]
            if "gone" not in marks and counts["ready"] + counts["waiting"] == 0:
                marks["gone"] = now
                before = [s for s in snapshots if s["time"] <= now]
                submitted_at_gone = before[-1]["counters"]["submitted"] if before else 0
            if "gone" in marks and counts["complete"] + counts["failed"] == tasks:
                marks.setdefault("done", now)
            # After the work: the pilots' idle tail, then three more cycles with none left.
            if "done" in marks and live["pilots"] == 0:
                marks.setdefault("empty", now)
                if now - marks["empty"] > 3 * cycle:
                    break
            if now - appeared > 600:
                raise RuntimeError(f"the {plugin} ramp did not finish in 10 minutes: {counts}")
            time.sleep(0.1)
        final = factory.status()
        factory.stop()
        factory = None
        pilots = server.pilots(site)
        ran = dict(server.query("SELECT pilot_id, count(*) FROM attempts GROUP BY pilot_id"))
        during = [p for p in pilots if p["registered"] <= marks["gone"]]
        empty = [p for p in during if not ran.get(p["pilot_id"])]
        counters = final["counters"]
        return {
            "tasks": tasks, "task": f"sleep {seconds}", "target_pilots": target,
            "limits": {k: document[k] for k in ("max_total", "max_queued", "max_per_cycle",
                                                 "cycle", "idle_timeout")},
            "seconds_to_target_registered": round(marks["registered"] - appeared, 2),
            "seconds_to_target_busy": round(marks["busy"] - appeared, 2),
            "seconds_first_submit_to_target_registered":
                round(marks["registered"] - marks["first_submitted"], 2),
            "seconds_to_backlog_gone": round(marks["gone"] - appeared, 2),
            "seconds_to_all_done": round(marks["done"] - appeared, 2),
            "pilots_submitted": counters["submitted"],
            "pilots_registered": len(pilots),
            "pilots_registered_while_demand": len(during),
            "empty_pilots_while_demand": len(empty),
            "empty_pilot_fraction": round(len(empty) / max(1, len(during)), 4),
            "empty_pilots_total": sum(1 for p in pilots if not ran.get(p["pilot_id"])),
            "submitted_after_backlog_gone": counters["submitted"] - (submitted_at_gone or 0),
            "factory_counters": counters,
            "pilot_exit_reasons": sorted({str(p["exit_reason"]) for p in pilots}),
        }
    finally:
        if factory is not None:
            factory.stop()
        server.stop()


# ---------------------------------------------------------------------- no matchable work


def no_work(root: Path, cycles: int) -> dict[str, Any]:
    """Queued work that the site can never run: the factory must submit nothing."""
    site = "bench-idle"
    server = Server(root / "no-work", [site])
    factory = None
    try:
        server.submit(200, ["true"], sites=["elsewhere"])
        server.submit(200, ["true"], memory="64GiB")
        wait_for(lambda: server.call("GET", "/datasets")["datasets"][-1]["jobs_created"] == 200,
                 30, "the jobs to be created")
        factory = Factory(root / "no-work-factory", server, site_document(
            site, "local", 10, 1.0))
        seen: list[dict[str, Any]] = []

        def enough() -> bool:
            status = factory.status()
            if status and (not seen or status["time"] != seen[-1]["time"]):
                seen.append(status)
            return len(seen) >= cycles
        wait_for(enough, 10 * cycles + 30, f"{cycles} factory cycles", 0.05)
        queued = sum(d["tasks"]["ready"] for d in server.call("GET", "/datasets")["datasets"])
        return {"queued_tasks": queued, "why": "tasks require another site, or 64GiB",
                "cycles": len(seen),
                "demand_tasks_seen": sum(shape["tasks"] for status in seen
                                         for shape in status.get("demand", [])),
                "pilots_submitted": seen[-1]["counters"]["submitted"],
                "pilots_registered": len(server.pilots(site))}
    finally:
        if factory is not None:
            factory.stop()
        server.stop()


# ---------------------------------------------------------------------- null tasks


def cpu_seconds(process: psutil.Process, children: bool = False) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    if children:
        return times.children_user + times.children_system
    return times.user + times.system


class DepthKeeper(threading.Thread):
    """Keeps about `depth` tasks queued while the pilots take them: whenever a tenth of the
    depth is missing, it submits a dataset of that many null jobs, as a production manager
    keeping a queue full would. It records the queue's shallowest and deepest readings."""

    def __init__(self, server: Server, depth: int) -> None:
        super().__init__(daemon=True, name="depth-keeper")
        self.server = server
        self.depth = depth
        self.stopping = threading.Event()
        self.submitted = 0
        self.readings: list[int] = []

    def run(self) -> None:
        while not self.stopping.wait(0.25):
            queued = self.server.totals()["queued"]
            self.readings.append(queued)
            missing = self.depth - queued
            if missing >= self.depth // 10:
                self.server.submit(missing, ["true"])
                self.submitted += missing

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


def null_rate(root: Path, depth: int, window: float) -> dict[str, Any]:
    """Null tasks per second through 2 local pilots, with about `depth` tasks kept queued."""
    site = "bench-null"
    server = Server(root / f"null-{depth}", [site])
    factory = None
    keeper = None
    try:
        started = time.monotonic()
        dataset = server.submit(depth, ["true"])
        wait_for(lambda: server.dataset(dataset)["jobs_created"] == depth, 600,
                 "the jobs to be created", 0.2)
        queued_in = time.monotonic() - started
        keeper = DepthKeeper(server, depth)
        keeper.start()
        factory = Factory(root / f"null-{depth}-factory", server, site_document(
            site, "local", 2, 5.0, idle_timeout="1m"))
        wait_for(lambda: server.site(site)["attempts"] >= 2, 60, "both pilots to run tasks")
        time.sleep(min(2.0, window / 5))  # the pilots' start-up is not part of the rate
        pilots = factory.pilot_processes()

        def snapshot() -> dict[str, float]:
            machine = psutil.cpu_times()
            return {"time": time.monotonic(),
                    "complete": server.totals().get("complete", 0),
                    "server": cpu_seconds(server.psutil)  # and its database writer process
                    + sum(cpu_seconds(p) for p in server.psutil.children()),
                    "factory": cpu_seconds(factory.psutil),
                    "pilots": sum(cpu_seconds(p) for p in pilots),
                    "tasks": sum(cpu_seconds(p, children=True) for p in pilots),
                    "machine_busy": machine.user + machine.system + machine.nice
                    + getattr(machine, "irq", 0) + getattr(machine, "softirq", 0),
                    "machine_all": sum(machine)}
        first = snapshot()
        readings_before = len(keeper.readings)
        time.sleep(window)
        last = snapshot()
        in_window = keeper.readings[readings_before:] or [depth]
        keeper.stop()
        done = last["complete"] - first["complete"]
        span = last["time"] - first["time"]
        factory.stop()  # on_stop remove-all: the pilots drain and leave
        factory = None
        wait_for(lambda: server.site(site)["pilots"] == 0, 60, "the pilots to leave", 0.2)
        counts = server.totals()
        states = dict(server.query("SELECT state, count(*) FROM attempts GROUP BY state"))
        complete_tasks = server.query("SELECT count(*) FROM tasks WHERE state = 'complete'")[0][0]
        unended = server.query("SELECT count(*) FROM attempts WHERE ended IS NULL")[0][0]
        recorded = (states.get("complete", 0) == complete_tasks == counts.get("complete", 0)
                    and unended == 0 and counts.get("processing", 0) == 0)
        per_task = {name: round(1000 * (last[name] - first[name]) / max(1, done), 2)
                    for name in ("server", "factory", "pilots", "tasks")}
        return {
            "queued_tasks": depth, "seconds_to_queue": round(queued_in, 1),
            "queued_in_window": {"min": min(in_window), "max": max(in_window)},
            "tasks_submitted_to_keep_the_depth": keeper.submitted,
            "window_seconds": round(span, 1), "tasks_done_in_window": done,
            "null_tasks_per_second": round(done / span, 1),
            "cpu_ms_per_task": per_task,
            "cores_used_by_floe": round(sum(last[name] - first[name] for name in per_task)
                                        / span, 2),
            "machine_busy_fraction": round((last["machine_busy"] - first["machine_busy"])
                                           / max(1e-9, last["machine_all"] - first["machine_all"]),
                                           2),
            "attempts": {"rows": sum(states.values()), "by_state": states,
                         "tasks_complete": complete_tasks,
                         "server_count_complete": counts.get("complete", 0), "unended": unended},
            "every_attempt_recorded": recorded,
        }
    finally:
        if keeper is not None:
            keeper.stop()
        if factory is not None:
            factory.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="the same shape, smaller")
    args = parser.parse_args()
    if args.small:
        backlog, task_seconds, cycle, local_target, slurm_target = 200, 0.2, 2.0, 6, 4
        cycles, depths, window = 5, (2000, 20000), 5
    else:
        backlog, task_seconds, cycle, local_target, slurm_target = 2000, 0.5, 5.0, 16, 8
        cycles, depths, window = 10, (10000, 100000), 30
    result: dict[str, Any] = {
        "benchmark": "factory",
        "small": args.small,
        "machine": describe(spawn=True),
        "setup": "floe server (durability full, idle_wait 2s) and floe factory as "
                 "subprocesses on loopback; pilots started by the factory's plugin",
    }
    with tempfile.TemporaryDirectory(prefix="floe-bench-factory-") as temporary:
        root = Path(temporary)
        result["no_matchable_work"] = no_work(root, cycles)
        result["ramp"] = {"local": ramp(root, "local", backlog, local_target, task_seconds,
                                        cycle)}
        if slurm_running():
            try:
                result["ramp"]["slurm"] = ramp(root, "slurm", backlog, slurm_target,
                                              task_seconds, cycle)
            except RuntimeError as exc:  # the shared cluster may be taken down under us
                result["ramp"]["slurm"] = {"failed": str(exc)[-500:],
                                           "slurm_still_running": slurm_running()}
        else:
            result["ramp"]["slurm"] = {"skipped": "no SLURM runs here (scripts/batch/slurm.sh "
                                                  "up starts one)"}
        rates = [null_rate(root, depth, window) for depth in depths]
    result["null_tasks"] = {
        "pilots": "2 local pilots of 1 CPU", "task": "true",
        "by_depth": rates,
        # The rate as a fraction of the bare loops': what floe keeps of what the machine gives.
        "of_bare_spawn_rate": [round(r["null_tasks_per_second"]
                                     / max(1e-9, result["machine"]["bare_spawn_per_second"]), 2)
                               for r in rates],
        # The deeper queue's rate over the shallower one's: 1.0 or more is no slowdown.
        "rate_at_10x_depth_relative": round(rates[1]["null_tasks_per_second"]
                                            / max(1e-9, rates[0]["null_tasks_per_second"]), 2),
    }
    result["targets"] = TARGETS
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
