"""Benchmark of one very large submission: a 1,000,000-job dataset into a real server.

It measures what the matchmaker issue asks of such a dataset: how long the submit request takes
to be answered, how soon the first task can be matched (jobs are created in chunks in the
background, so work starts long before the last job exists), how long until every job exists,
and whether other requests stay fast meanwhile: a pilot keeps asking for (and completing) tasks
and a user keeps reading the dataset list for the whole time, and their latencies are reported.
It prints one JSON object; `--jobs N` changes the size, `--small` uses 100,000 jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.httpload import Connection
from benchmarks.machine import describe
from benchmarks.matchmaker import Server, latencies

SLOT = {"cpus": 1, "memory": 2**31, "disk": 2**34, "gpus": 0, "seconds": 86400,
        "os": ["linux"], "arch": "x86_64", "site": "bench"}


def dataset(jobs: int) -> dict:
    return {"description": "one large dataset", "jobs": jobs, "tasks": [
        {"name": "sim", "requirements": {"cpus": 1, "memory": "1GiB", "walltime": "1h"},
         "modules": [{"command": ["true"]}]}]}


async def pilot_loop(server: Server, site_token: str, stop: asyncio.Event,
                     asks: list[float], first: list[float], done: list[int],
                     started: float) -> None:
    """A pilot that asks, and completes each task it gets, until `stop`."""
    conn = Connection("127.0.0.1", server.port)
    status, token = await conn.request("POST", "/api/v1/sites/bench/pilot-tokens",
                                       {"lifetime": 3600},
                                       {"Authorization": f"Bearer {site_token}"})
    assert status == 201, token
    status, pilot = await conn.request("POST", "/api/v1/pilots", {"host": "bench"},
                                       {"Authorization": f"Bearer {token['tokens'][0]}"})
    assert status == 201, pilot
    auth = {"Authorization": f"Bearer {pilot['key']}"}
    while not stop.is_set():
        t0 = time.perf_counter()
        status, answer = await conn.request(
            "POST", f"/api/v1/pilots/{pilot['pilot_id']}/ask", SLOT, auth)
        asks.append(time.perf_counter() - t0)
        assert status == 200, answer
        attempt = answer["attempt"]
        if attempt is None:
            await asyncio.sleep(min(answer["wait"], 0.1))
            continue
        if not first:
            first.append(time.perf_counter() - started)
        status, _ = await conn.request(
            "POST", f"/api/v1/attempts/{attempt['id']}/report",
            {"exit_code": 0, "usage": {"wall_time": 0.01, "cpu_time": 0.01}},
            {"X-Floe-Passkey": attempt["passkey"]})
        assert status == 200, _
        done[0] += 1
    await conn.close()


async def reader_loop(server: Server, token: str, stop: asyncio.Event,
                      reads: list[float]) -> None:
    conn = Connection("127.0.0.1", server.port)
    while not stop.is_set():
        t0 = time.perf_counter()
        status, _ = await conn.request("GET", "/api/v1/datasets", None,
                                       {"Authorization": f"Bearer {token}"})
        assert status == 200
        reads.append(time.perf_counter() - t0)
        await asyncio.sleep(0.05)
    await conn.close()


async def run(jobs: int) -> dict:
    machine = describe()
    with tempfile.TemporaryDirectory(prefix="floe-bench-") as tmp:
        server = Server(Path(tmp))
        admin = server.admin_token()
        server.start()
        try:
            conn = Connection("127.0.0.1", server.port)
            auth = {"Authorization": f"Bearer {admin}"}
            status, site = await conn.request("POST", "/api/v1/sites", {"name": "bench"}, auth)
            assert status == 201, site
            stop = asyncio.Event()
            asks: list[float] = []
            reads: list[float] = []
            first: list[float] = []
            done = [0]
            started = time.perf_counter()
            others = [asyncio.create_task(pilot_loop(server, site["token"], stop, asks, first,
                                                     done, started)),
                      asyncio.create_task(reader_loop(server, admin, stop, reads))]
            t0 = time.perf_counter()
            status, answer = await conn.request("POST", "/api/v1/datasets", dataset(jobs), auth)
            assert status == 201, answer
            accept = time.perf_counter() - t0
            while True:
                server.sample()
                status, info = await conn.request("GET", f"/api/v1/datasets/{answer['id']}",
                                                  None, auth)
                if info["jobs_created"] == jobs:
                    break
                await asyncio.sleep(0.5)
            created = time.perf_counter() - started
            stop.set()
            await asyncio.gather(*others)
            await conn.close()
            return {
                "benchmark": "large_dataset", "jobs": jobs,
                "accept_seconds": round(accept, 3),
                "first_match_seconds": round(first[0], 3) if first else None,
                "all_jobs_created_seconds": round(created, 2),
                "jobs_created_per_second": round(jobs / created),
                "tasks_completed_meanwhile": done[0],
                "ask_latency_ms_meanwhile": latencies(asks),
                "dataset_list_latency_ms_meanwhile": latencies(reads),
                "server_peak_rss_mb": round(server.peak_rss / 2**20, 1),
                "database_mb": round(server.database_bytes() / 2**20, 1),
                "machine": machine,
            }
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--small", action="store_true", help="100,000 jobs")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(100_000 if args.small else args.jobs)), indent=2))


if __name__ == "__main__":
    main()
