"""Benchmark of the matchmaker: a real server process (real SQLite file) under many pilots.

It fills the server with 1,000,000 queued tasks across 200 datasets of 50 users (mixed CPU, GPU,
multi-core, high-memory and two-step DAG jobs), then drives it over loopback HTTP with 500
concurrent simulated pilots (slots of 4, 8 and 16 CPUs, some with a GPU) that ask, heartbeat
and complete null tasks. By default they speak as floe's pilot does: each asks for as many
tasks as its slot holds side by side, heartbeats them all in one request once per heartbeat
interval (the server's `heartbeat_interval`, 60 s, which its registration answers; each pilot
from a random phase) and reports them all in one request that carries the next ask;
`--protocol single` uses the per-task routes instead (one heartbeat per task, at the same
cadence, and one report+ask per task). Two phases: saturation (each pilot as fast as it
is answered: the most matches per second the server can give) and a paced phase where the
pilots together offer 2,000 matches per second (latency at that load; with every pilot always
waiting on the server, latency would only measure the queue). Every match and report is
committed before it is answered. It prints one JSON object: matches per second, latency
percentiles of asking (a plain ask or a report that asks), the server's peak RSS and CPU (its
database writer process included), the database size, and the time to accept and make
matchable the whole load. `--small` runs the same shape, smaller, in under a minute. Run it
with `make bench` (or `make bench-small`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from httpload import Connection
from machine import describe

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30

KINDS = [  # (tasks per job, task definitions)
    ("cpu", [{"name": "sim", "requirements": {"cpus": 1, "memory": "2GiB", "walltime": "2h"}}]),
    ("dag", [{"name": "gen", "requirements": {"cpus": 1, "memory": "2GiB", "walltime": "1h"}},
             {"name": "reco", "depends": ["gen"],
              "requirements": {"cpus": 4, "memory": "8GiB", "walltime": "2h"}}]),
    ("gpu", [{"name": "photons", "requirements": {"cpus": 2, "gpus": 1, "memory": "8GiB",
                                                  "walltime": "1h"}}]),
    ("himem", [{"name": "filter", "requirements": {"cpus": 1, "memory": "24GiB",
                                                   "walltime": "3h"}}]),
]
SHAPES = [  # (fraction of pilots, slot)
    (0.6, {"cpus": 8, "memory": 32 * GIB, "disk": 100 * GIB, "gpus": 0}),
    (0.2, {"cpus": 4, "memory": 16 * GIB, "disk": 50 * GIB, "gpus": 1}),
    (0.2, {"cpus": 16, "memory": 64 * GIB, "disk": 200 * GIB, "gpus": 0}),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def dataset_config(index: int, tasks: int) -> dict:
    kind, definitions = KINDS[index % len(KINDS)]
    jobs = max(1, tasks // len(definitions))
    return {"description": f"benchmark {kind} dataset {index}", "jobs": jobs,
            "priority": 1 + index % 3,
            "tasks": [dict(d, modules=[{"command": ["true"]}]) for d in definitions]}


class Server:
    """`floe server` in its own process, as production runs it."""

    def __init__(self, workdir: Path, open_files: int | None = None) -> None:
        self.workdir = workdir
        self.db = workdir / "floe.sqlite"
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.peak_rss = 0
        self.open_files = open_files
        """The hard open-files limit to start the server with (as root), as a site would set
        it with `ulimit -Hn` or systemd's LimitNOFILE=; None keeps this process's."""

    def admin_token(self) -> str:
        out = subprocess.run([sys.executable, "-m", "floe.cli.main", "user", "add", "root",
                              "--admin", "--db", str(self.db), "--json"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out)["token"]

    def start(self, timeout: float = 30.0) -> None:
        files = self.open_files
        self.process = subprocess.Popen(
            [sys.executable, "-m", "floe.cli.main", "server", "--db", str(self.db), "--port",
             str(self.port), "--log-level", "warning"], cwd=ROOT, stdout=subprocess.DEVNULL,
            preexec_fn=None if files is None else
            lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (files, files)))
        deadline = time.time() + timeout
        while time.time() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("the server did not start")

    def sample(self) -> None:
        if self.process is not None:
            try:
                rss = sum(p.memory_info().rss for p in self.processes())
            except psutil.Error:
                return
            self.peak_rss = max(self.peak_rss, rss)

    def processes(self) -> list[psutil.Process]:
        """The server and its database writer process."""
        server = psutil.Process(self.process.pid)
        return [server, *server.children(recursive=True)]

    def cpu_seconds(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.processes())

    def kill(self) -> None:
        """kill -9 the server and its database writer, as a crash of the machine would."""
        for process in reversed(self.processes()):
            with contextlib.suppress(psutil.Error):
                process.kill()
        self.process.wait()

    def open_fds(self) -> int:
        return sum(p.num_fds() for p in self.processes())

    def rss(self) -> int:
        return sum(p.memory_info().rss for p in self.processes())

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def database_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.workdir.glob("floe.sqlite*"))


async def sampler(server: Server, stop: asyncio.Event) -> None:
    while not stop.is_set():
        server.sample()
        await asyncio.sleep(0.2)


async def fill(server: Server, admin: str, users: int, datasets: int, tasks: int) -> dict:
    conn = Connection("127.0.0.1", server.port)
    auth = {"Authorization": f"Bearer {admin}"}
    tokens = []
    for i in range(users):
        status, answer = await conn.request("POST", "/api/v1/users",
                                            {"name": f"user{i:03d}", "share": 1 + i % 3}, auth)
        assert status == 201, answer
        tokens.append(answer["token"])
    status, site = await conn.request("POST", "/api/v1/sites", {"name": "bench"}, auth)
    assert status == 201, site
    submit_seconds = []
    started = time.perf_counter()
    per_dataset = tasks // datasets
    for i in range(datasets):
        t0 = time.perf_counter()
        status, answer = await conn.request(
            "POST", "/api/v1/datasets", dataset_config(i, per_dataset),
            {"Authorization": f"Bearer {tokens[i % users]}"})
        assert status == 201, answer
        submit_seconds.append(time.perf_counter() - t0)
    accepted = time.perf_counter() - started
    total = 0
    while True:
        status, answer = await conn.request("GET", "/api/v1/datasets", None, auth)
        created = sum(d["jobs_created"] == d["jobs"] for d in answer["datasets"])
        total = sum(d["jobs"] * d["tasks_per_job"] for d in answer["datasets"])
        if created == len(answer["datasets"]):
            break
        await asyncio.sleep(0.2)
    matchable = time.perf_counter() - started
    await conn.close()
    return {"site_token": site["token"], "admin": admin, "tasks": total,
            "accept_seconds": round(accepted, 3),
            "submit_p99_ms": round(1000 * percentile(submit_seconds, 0.99), 2),
            "matchable_seconds": round(matchable, 3)}


class Pilot:
    """A simulated pilot running null tasks, in one of two protocols.

    "bulk" (what floe's pilot does): it asks for as many tasks as its slot holds side by side
    (`max_tasks`), heartbeats all of them in one pilot heartbeat, and reports them together in
    one bulk report that carries the next ask. "single" (the per-task routes, which older
    pilots use): one heartbeat and one report+ask per task, one task at a time. Either
    heartbeats what it holds once per heartbeat interval, as floe's pilot does.

    With `period` None it loops as fast as it is answered (saturation); with a period it
    paces its asking requests so that it is handed one task per `period` seconds on average
    (from a random phase): many pilots together then offer a fixed rate of matches, as real
    pilots whose tasks take time do.
    """

    def __init__(self, port: int, token: str, slot: dict, period: float | None,
                 rng: random.Random, protocol: str) -> None:
        self.conn = Connection("127.0.0.1", port)
        self.auth = {"Authorization": f"Bearer {token}"}
        self.slot = dict(slot, seconds=86400, os=["debian12", "linux"], arch="x86_64")
        if protocol == "bulk":
            self.slot["max_tasks"] = slot["cpus"]
        self.protocol = protocol
        self.period = period
        self.phase = rng.random() * (period or 0.0)
        self.beat_phase = rng.random()
        self.beat_interval = 60.0

    async def register(self) -> None:
        status, me = await self.conn.request("POST", "/api/v1/pilots", {"host": "bench"},
                                             self.auth)
        assert status == 201, me
        self.auth = {"Authorization": f"Bearer {me['key']}"}  # the pilot token is used up
        self.beat_interval = float(me["heartbeat_interval"])
        self.base = f"/api/v1/pilots/{me['pilot_id']}"

    async def run(self, stats: dict, measuring: asyncio.Event, stop: asyncio.Event) -> None:
        next_start = time.perf_counter() + self.phase
        next_beat = time.perf_counter() + self.beat_phase * self.beat_interval
        attempts: list[dict] = []
        while not stop.is_set():
            now = time.perf_counter()
            if attempts and now >= next_beat:  # the beats missed while idle are not made up
                next_beat += self.beat_interval * (1 + (now - next_beat) // self.beat_interval)
                t0 = time.perf_counter()
                ok = await self.heartbeat(attempts)
                if measuring.is_set():
                    stats["requests"] += 1
                    stats["heartbeat"].append(time.perf_counter() - t0)
                if not ok:
                    stats["errors"] += 1
            if self.period is not None:
                delay = next_start - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_start = max(next_start + self.period * max(1, len(attempts)),
                                 time.perf_counter())
            t0 = time.perf_counter()
            status, answer, recorded = await self.ask(attempts)
            elapsed = time.perf_counter() - t0
            if measuring.is_set():
                stats["requests"] += 1
                stats["completed"] += recorded
            if status != 200:
                stats["errors"] += 1
                attempts = []
                await asyncio.sleep(0.1)
                continue
            attempts = answer.get("attempts") if "attempts" in answer else \
                [answer["attempt"]] if answer["attempt"] else []
            if measuring.is_set():
                stats["ask"].append(elapsed)
                stats["matches"] += len(attempts)
                if not attempts:
                    stats["empty"] += 1
            if not attempts:
                await asyncio.sleep(min(answer["wait"], 1.0))

    async def heartbeat(self, attempts: list[dict]) -> bool:
        if self.protocol == "single":
            attempt = attempts[0]
            status, _ = await self.conn.request(
                "POST", f"/api/v1/attempts/{attempt['id']}/heartbeat",
                {"usage": {"cpu_time": 0.0}}, {"X-Floe-Passkey": attempt["passkey"]})
            return status == 200
        status, answer = await self.conn.request(
            "POST", f"{self.base}/heartbeat",
            {"attempts": [{"attempt_id": a["id"], "passkey": a["passkey"],
                           "usage": {"cpu_time": 0.0}} for a in attempts]}, self.auth)
        return status == 200 and all(item["action"] == "continue"
                                     for item in answer["attempts"].values())

    async def ask(self, attempts: list[dict]) -> tuple[int, dict, int]:
        """Report `attempts` done (if any) and ask for more: the status, the ask's answer and
        how many reports were recorded."""
        report = {"exit_code": 0, "usage": {"wall_time": 0.01, "cpu_time": 0.01},
                  "statistics": {"events": 1.0}}
        if not attempts:
            status, answer = await self.conn.request("POST", f"{self.base}/ask", self.slot,
                                                     self.auth)
            return status, answer, 0
        if self.protocol == "single":
            attempt = attempts[0]
            status, reply = await self.conn.request(
                "POST", f"/api/v1/attempts/{attempt['id']}/report", dict(report, ask=self.slot),
                {"X-Floe-Passkey": attempt["passkey"], **self.auth})
            return status, reply.get("next") if status == 200 else None, int(status == 200)
        status, reply = await self.conn.request(
            "POST", f"{self.base}/reports",
            {"reports": [dict(report, attempt_id=a["id"], passkey=a["passkey"])
                         for a in attempts], "ask": self.slot}, self.auth)
        if status != 200:
            return status, None, 0
        recorded = sum(bool(r.get("recorded")) for r in reply["results"])
        if recorded != len(attempts):
            return 500, None, recorded
        return status, reply["next"], recorded


def latencies(values: list[float]) -> dict:
    return {"p50": round(1000 * percentile(values, 0.5), 2),
            "p99": round(1000 * percentile(values, 0.99), 2)}


async def phase(server: Server, pilots: list[Pilot], warmup: float, seconds: float) -> dict:
    """Run the pilots for warmup + seconds; measure the last `seconds`."""
    stats = {"ask": [], "heartbeat": [], "matches": 0, "completed": 0, "empty": 0, "errors": 0,
             "requests": 0}
    measuring, stop = asyncio.Event(), asyncio.Event()
    runners = [asyncio.create_task(p.run(stats, measuring, stop)) for p in pilots]
    await asyncio.sleep(warmup)
    probe = Connection("127.0.0.1", server.port)
    _, health = await probe.request("GET", "/api/v1/health")
    measuring.set()
    server_cpu = server.cpu_seconds()
    client_cpu = sum(psutil.Process().cpu_times()[:2])
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    measured = time.perf_counter() - started
    server_cpu = server.cpu_seconds() - server_cpu
    client_cpu = sum(psutil.Process().cpu_times()[:2]) - client_cpu
    measuring.clear()
    _, after = await probe.request("GET", "/api/v1/health")
    await probe.close()
    stop.set()
    await asyncio.gather(*runners, return_exceptions=True)
    commits = after["database"]["commits"] - health["database"]["commits"]
    writes = after["database"]["writes"] - health["database"]["writes"]
    return {
        "measured_seconds": round(measured, 2),
        "matches": stats["matches"],
        "matches_per_second": round(stats["matches"] / measured, 1),
        "reports_recorded_per_second": round(stats["completed"] / measured, 1),
        "matches_per_asking_request": round(stats["matches"] / max(1, len(stats["ask"])), 2),
        "requests_per_second": round(stats["requests"] / measured, 1),
        "empty_asks": stats["empty"],
        "errors": stats["errors"],
        "ask_latency_ms": latencies(stats["ask"]),
        "heartbeat_latency_ms": latencies(stats["heartbeat"]),
        "server_cpu_cores": round(server_cpu / measured, 2),
        "load_generator_cpu_cores": round(client_cpu / measured, 2),
        "server_cpu_ms_per_match": round(1000 * server_cpu / max(stats["matches"], 1), 3),
        "commits_per_second": round(commits / measured, 1),
        "writes_per_commit": round(writes / max(commits, 1), 1),
    }


async def drive(server: Server, site_token: str, args: argparse.Namespace) -> dict:
    """Saturation (every pilot as fast as it is answered), then the same pilots offering
    `args.rate` matches per second together, to read latency at that load."""
    conn = Connection("127.0.0.1", server.port)
    rng = random.Random(7)
    slots = [s for fraction, s in SHAPES for _ in range(round(fraction * args.pilots))]
    rng.shuffle(slots)
    slots = slots[:args.pilots]
    status, answer = await conn.request("POST", "/api/v1/sites/bench/pilot-tokens",
                                        {"lifetime": 86400, "count": 2 * len(slots)},
                                        {"Authorization": f"Bearer {site_token}"})
    assert status == 201, answer
    await conn.close()
    tokens = iter(answer["tokens"])  # one for each pilot registered below
    saturating = [Pilot(server.port, next(tokens), slot, None, rng, args.protocol)
                  for slot in slots]
    await asyncio.gather(*(p.register() for p in saturating))
    saturation = await phase(server, saturating, args.warmup, args.seconds)
    period = len(slots) / args.rate
    paced = [Pilot(server.port, next(tokens), slot, period, rng, args.protocol)
             for slot in slots]
    await asyncio.gather(*(p.register() for p in paced))
    at_rate = await phase(server, paced, args.warmup, args.seconds)
    for pilot in saturating + paced:
        await pilot.conn.close()
    return {"pilots": len(slots), "saturation": saturation,
            "at_target_rate": {"offered_matches_per_second": args.rate, **at_rate}}


async def main_async(args: argparse.Namespace) -> dict:
    machine = describe()
    with tempfile.TemporaryDirectory(prefix="floe-bench-") as tmp:
        server = Server(Path(tmp))
        admin = server.admin_token()
        server.start()
        stop = asyncio.Event()
        sampling = asyncio.create_task(sampler(server, stop))
        try:
            filled = await fill(server, admin, args.users, args.datasets, args.tasks)
            driven = await drive(server, filled.pop("site_token"), args)
        finally:
            stop.set()
            await sampling
            server.sample()
            server.stop()
        filled.pop("admin")
        return {
            "benchmark": "matchmaker",
            "small": args.small,
            "protocol": args.protocol,
            "users": args.users,
            "datasets": args.datasets,
            **filled,
            **driven,
            "server_peak_rss_mb": round(server.peak_rss / 2**20, 1),
            "database_mb": round(server.database_bytes() / 2**20, 1),
            "machine": machine,
            "targets": {"saturation.matches_per_second": ">= 2000",
                        "at_target_rate.ask_latency_ms.p99": "<= 50",
                        "server_peak_rss_mb": "<= 1536"},
        }


def load_options(description: str, small: str) -> argparse.ArgumentParser:
    """The options of a benchmark that fills a server and drives pilots at it (`small`: what
    --small does)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--small", action="store_true", help=small)
    parser.add_argument("--tasks", type=int)
    parser.add_argument("--datasets", type=int)
    parser.add_argument("--users", type=int)
    parser.add_argument("--pilots", type=int)
    parser.add_argument("--seconds", type=float, help="measured time of each phase")
    parser.add_argument("--rate", type=float, default=2000.0,
                        help="matches per second offered in the paced phase (default 2000)")
    parser.add_argument("--warmup", type=float)
    return parser


def main() -> None:
    parser = load_options(__doc__.split("\n\n")[0], "a smaller run, under a minute")
    parser.add_argument("--protocol", choices=("bulk", "single"), default="bulk",
                        help="bulk: pilots ask for, heartbeat and report all the tasks their "
                             "slots hold at once, as floe's pilot does (default); single: the "
                             "per-task routes, one task at a time")
    args = parser.parse_args()
    defaults = ({"tasks": 150_000, "datasets": 20, "users": 10, "pilots": 100, "seconds": 10.0,
                 "warmup": 2.0} if args.small else
                {"tasks": 1_000_000, "datasets": 200, "users": 50, "pilots": 500,
                 "seconds": 60.0, "warmup": 5.0})
    run_and_print(main_async, args, defaults)


def run_and_print(main_async: Any, args: argparse.Namespace, defaults: dict[str, Any]) -> None:
    """Fill the options left unset from `defaults`, run `main_async(args)` (on uvloop where it
    is installed) and print its result as JSON."""
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(main_async(args))
    else:
        result = uvloop.run(main_async(args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
