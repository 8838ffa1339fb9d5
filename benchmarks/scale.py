"""Benchmark of one matchmaker at scale: 10,000,000 queued tasks and 20,000 pilots.

The queue is the matchmaker benchmark's mix (CPU, GPU, multi-core, high-memory and two-step DAG
jobs) over 1,000 datasets of 200 users. Of the 20,000 pilots, 19,500 are idle: their slots (1
CPU, 1 GiB) fit none of the queued tasks, as a site's small nodes would, so each holds an ask
open and asks again when the hold ends, as floe's pilot does. The other 500 ask, heartbeat and
report null tasks as in the matchmaker benchmark (slots of 4 to 16 CPUs, some with a GPU).
The server runs at its defaults (hold_asks 25 s, max_held_asks 20,000; its first timed garbage
collection comes 10 minutes after its start, after the run's end), started with a hard
limit of 65,536 open files as a site serving this many pilots would set it (`ulimit -Hn`,
systemd's `LimitNOFILE=`); the pilots connect from 17 loopback addresses, as from many hosts.
Each pilot holds a connection of the server and one of this process, so where the hard limit
cannot be raised (a container without CAP_SYS_RESOURCE: 20,000 on the development machine),
the pilots are that limit less 400, and the JSON says so.

Measured, in order:
- fill: seconds to accept the datasets and to make all their tasks matchable;
- idle pilots: seconds to register them and have them all holding asks, the memory they add to
  the server and its writer, and the server's open files then;
- saturation (the 500 active pilots as fast as they are answered) and a paced phase (the 500
  together offering 2,000 matches per second): matches per second, ask latency p50/p99;
- submission to first match: during the paced phase, 5 times a one-task dataset that any
  pilot fits is submitted, and the time until a pilot has it is read (median and max);
- peak memory of server plus writer, database size;
- restart: server and writer killed with SIGKILL and started again, with every pilot asking
  again as its connection fails: seconds until the server listens, until a pilot is handed a
  task, and until the idle pilots hold their asks again.

Prints one JSON object. The full run takes about 5 minutes on the 2-core machine
(`make bench-scale`); `--small` (1,000,000 tasks, 100 datasets, 50 users, 2,000 pilots of which
200 active, 10-second phases) under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.httpload import Connection
from benchmarks.machine import describe
from benchmarks.matchmaker import (
    SHAPES,
    Pilot,
    Server,
    fill,
    load_options,
    phase,
    run_and_print,
    sampler,
)

GIB = 2**30
OPEN_FILES = 65536
HOLD = 25
IDLE_SLOT = {"cpus": 1, "memory": GIB, "disk": 10 * GIB, "gpus": 0, "seconds": 86400,
             "os": ["debian12", "linux"], "arch": "x86_64", "hold": HOLD}
PROBE = {"description": "a new submission", "jobs": 1, "tasks": [{
    "name": "probe", "requirements": {"cpus": 1, "memory": "512MiB", "walltime": "10m"},
    "modules": [{"command": ["true"]}]}]}
ADDRESSES = [f"127.0.0.{n}" for n in range(2, 18)]


SPARE_FILES = 400
"""Open files of the server and of this process that are not pilots' connections."""


def raise_own_open_files() -> int:
    """As many open files for this process as the benchmark needs (as root with
    CAP_SYS_RESOURCE), or its hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in ((OPEN_FILES, max(hard, OPEN_FILES)), (hard, hard)):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, wanted)
            return wanted[0]
    return soft


class IdlePilot:
    """A pilot whose slot fits no queued task: it holds its ask, and asks again when the hold
    ends or its connection fails (after a random backoff, as pilots do)."""

    def __init__(self, port: int, token: str, address: str) -> None:
        self.port, self.address = port, address
        self.conn = Connection("127.0.0.1", port, local=address)
        self.auth = {"Authorization": f"Bearer {token}"}
        self.base = ""

    async def register(self) -> None:
        status, me = await self.conn.request("POST", "/api/v1/pilots", {"host": "small-node"},
                                             self.auth)
        assert status == 201, me
        self.auth = {"Authorization": f"Bearer {me['key']}"}
        self.base = f"/api/v1/pilots/{me['pilot_id']}"

    async def run(self, stats: dict[str, int], rng: random.Random) -> None:
        while True:
            try:
                status, answer = await self.conn.request("POST", f"{self.base}/ask", IDLE_SLOT,
                                                         self.auth)
            except (OSError, ConnectionError, asyncio.IncompleteReadError):
                stats["reconnects"] += 1
                await self.conn.close()
                self.conn = Connection("127.0.0.1", self.port, local=self.address)
                await asyncio.sleep(rng.uniform(0.5, 5.0))
                continue
            if status != 200:
                stats["errors"] += 1
                await asyncio.sleep(rng.uniform(0.5, 5.0))
                continue
            attempt = answer.get("attempt")
            if attempt:  # a probe: run it at once
                stats["tasks"] += 1
                await self.conn.request("POST", f"/api/v1/attempts/{attempt['id']}/report",
                                        {"exit_code": 0, "usage": {"wall_time": 0.01}},
                                        {"X-Floe-Passkey": attempt["passkey"]})
            elif answer.get("wait"):
                stats["not_held"] += 1
                await asyncio.sleep(min(float(answer["wait"]), 5.0))


async def health(port: int) -> dict[str, Any]:
    conn = Connection("127.0.0.1", port)
    try:
        return (await conn.request("GET", "/api/v1/health"))[1]
    finally:
        await conn.close()


async def until_held(port: int, count: int, timeout: float) -> float:
    """Seconds until the server holds at least `count` asks (or `timeout`)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        with contextlib.suppress(OSError, ConnectionError, asyncio.IncompleteReadError):
            if (await health(port))["held_asks"] >= count:
                break
        await asyncio.sleep(0.2)
    return time.perf_counter() - started


async def pilot_tokens(port: int, site_token: str, count: int) -> list[str]:
    conn = Connection("127.0.0.1", port)
    tokens: list[str] = []
    while len(tokens) < count:
        status, answer = await conn.request(
            "POST", "/api/v1/sites/bench/pilot-tokens",
            {"lifetime": 86400, "count": min(1000, count - len(tokens))},
            {"Authorization": f"Bearer {site_token}"})
        assert status == 201, answer
        tokens += answer["tokens"]
    await conn.close()
    return tokens


async def in_chunks(coroutines: list, size: int = 500) -> None:
    for start in range(0, len(coroutines), size):
        await asyncio.gather(*coroutines[start:start + size])


async def first_matches(port: int, admin: str, times: int, every: float
                        ) -> tuple[list[float], list[float]]:
    """Seconds from submitting a one-task dataset to a pilot having its task, `times` times
    (read by a request that the server answers when the dataset changes), and seconds to the
    submission's answer."""
    conn = Connection("127.0.0.1", port)
    auth = {"Authorization": f"Bearer {admin}"}
    seconds, answered = [], []
    for _ in range(times):
        await asyncio.sleep(every)
        started = time.perf_counter()
        status, made = await conn.request("POST", "/api/v1/datasets", PROBE, auth)
        assert status == 201, made
        answered.append(time.perf_counter() - started)
        version = "none"  # answered at once, then at each change
        while True:
            status, seen = await conn.request(
                "GET", f"/api/v1/datasets/{made['id']}/progress?wait=30&since={version}",
                None, auth)
            assert status == 200, seen
            if seen["tasks"]["processing"] + seen["tasks"]["complete"]:
                break
            version = seen["version"]
        seconds.append(time.perf_counter() - started)
    await conn.close()
    return seconds, answered


async def restart(server: Server, pilot: Pilot, idle: int) -> dict[str, float]:
    """kill -9, start again, and time the way back: listening, a first match, the idle pilots'
    asks held again."""
    server.kill()
    killed = time.perf_counter()
    server.start(timeout=300)
    listening = time.perf_counter() - killed
    pilot.conn = Connection("127.0.0.1", server.port)
    while True:
        with contextlib.suppress(OSError, ConnectionError, asyncio.IncompleteReadError):
            status, answer, _ = await pilot.ask([])
            if status == 200 and answer.get("attempts"):
                break
            pilot.conn = Connection("127.0.0.1", server.port)
        await asyncio.sleep(0.02)
    matched = time.perf_counter() - killed
    held = matched + await until_held(server.port, int(0.95 * idle), 120)
    return {"listening_seconds": round(listening, 1), "first_match_seconds": round(matched, 1),
            "idle_pilots_holding_again_seconds": round(held, 1)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    machine = describe()
    own_files = raise_own_open_files()
    rng = random.Random(16)
    if own_files - SPARE_FILES < args.pilots:
        print(f"scale: {own_files} open files at most here (the hard limit cannot be raised): "
              f"{own_files - SPARE_FILES} pilots instead of {args.pilots}", file=sys.stderr)
        args.pilots = own_files - SPARE_FILES
    with tempfile.TemporaryDirectory(prefix="floe-scale-") as tmp:
        server = Server(Path(tmp), open_files=OPEN_FILES if own_files >= OPEN_FILES else None)
        admin = server.admin_token()
        server.start()
        stop = asyncio.Event()
        sampling = asyncio.create_task(sampler(server, stop))
        holders: list[asyncio.Task] = []
        try:
            filled = await fill(server, admin, args.users, args.datasets, args.tasks)
            site_token = filled.pop("site_token")
            filled.pop("admin")
            await asyncio.sleep(2)
            before_idle = server.rss()

            idle_count = args.pilots - args.active
            started = time.perf_counter()
            tokens = await pilot_tokens(server.port, site_token, idle_count + 2 * args.active)
            idle = [IdlePilot(server.port, tokens.pop(), ADDRESSES[i % len(ADDRESSES)])
                    for i in range(idle_count)]
            await in_chunks([p.register() for p in idle])
            registered = time.perf_counter() - started
            idle_stats = {"tasks": 0, "not_held": 0, "errors": 0, "reconnects": 0}
            holders = [asyncio.create_task(p.run(idle_stats, rng)) for p in idle]
            holding = registered + await until_held(server.port, int(0.95 * idle_count), 120)
            await asyncio.sleep(2)
            idle_added = server.rss() - before_idle
            open_files = server.open_fds()
            held_now = (await health(server.port))["held_asks"]

            slots = [s for fraction, s in SHAPES for _ in range(round(fraction * args.active))]
            rng.shuffle(slots)
            saturating = [Pilot(server.port, tokens.pop(), slot, None, rng, "bulk")
                          for slot in slots]
            await in_chunks([p.register() for p in saturating])
            saturation = await phase(server, saturating, args.warmup, args.seconds)
            for p in saturating:
                await p.conn.close()
            paced = [Pilot(server.port, tokens.pop(), slot, len(slots) / args.rate, rng, "bulk")
                     for slot in slots]
            await in_chunks([p.register() for p in paced])
            at_rate, (probes, answered) = await asyncio.gather(
                phase(server, paced, args.warmup, args.seconds),
                first_matches(server.port, admin, 5, (args.warmup + args.seconds) / 6))
            for p in paced[1:]:
                await p.conn.close()
            database = server.database_bytes()
            restarted = await restart(server, paced[0], idle_count)
        finally:
            for task in holders:
                task.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
            stop.set()
            await sampling
            server.stop()
    return {
        "benchmark": "scale",
        "small": args.small,
        "settings": "server defaults (hold_asks 25 s, max_held_asks 20,000; its first timed "
                    "garbage collection 10 minutes after the start, after the run); hard "
                    f"open-files limit {own_files}; pilots from {len(ADDRESSES) + 1} loopback "
                    "addresses",
        "users": args.users, "datasets": args.datasets, **filled,
        "pilots": args.pilots, "active_pilots": args.active, "idle_pilots": idle_count,
        "idle_pilots_registered_seconds": round(registered, 1),
        "idle_pilots_holding_seconds": round(holding, 1),
        "held_asks": held_now,
        "idle_pilots_add_mb": round(idle_added / 2**20, 1),
        "server_open_files": open_files,
        "idle_pilot_outcomes": idle_stats,
        "saturation": saturation,
        "at_target_rate": {"offered_matches_per_second": args.rate, **at_rate},
        "submission_to_first_match_ms": {
            "median": round(1000 * statistics.median(probes), 1),
            "max": round(1000 * max(probes), 1), "runs": len(probes),
            "submission_answered_median": round(1000 * statistics.median(answered), 1)},
        "server_peak_rss_mb": round(server.peak_rss / 2**20, 1),
        "database_mb": round(database / 2**20, 1),
        "restart": restarted,
        "open_files_limit": own_files,
        "machine": machine,
        "targets": {"saturation.matches_per_second": ">= 2000",
                    "at_target_rate.ask_latency_ms.p99": "<= 50",
                    "server_peak_rss_mb": "<= 4096", "idle_pilots_add_mb": "<= 1024",
                    "restart.first_match_seconds": "<= 30"},
    }


def main() -> None:
    parser = load_options(__doc__.split("\n\n")[0], "1M tasks, 2,000 pilots")
    parser.add_argument("--active", type=int, help="pilots that run tasks (--pilots: all)")
    args = parser.parse_args()
    defaults = ({"tasks": 1_000_000, "datasets": 100, "users": 50, "pilots": 2_000,
                 "active": 200, "seconds": 10.0, "warmup": 2.0} if args.small else
                {"tasks": 10_000_000, "datasets": 1_000, "users": 200, "pilots": 20_000,
                 "active": 500, "seconds": 30.0, "warmup": 5.0})
    run_and_print(main_async, args, defaults)


if __name__ == "__main__":
    main()
