"""Benchmark of how lean the record is: database bytes per attempt, without logs.

The matchmaker's engine (its real database file, group commits and all) runs in this process:
one dataset of `--attempts` one-task jobs (default 1,000,000) is submitted and every job's task
is handed out and reported complete, 500 to a request, as a busy pilot's bulk asks and reports
would; a report carries its usage and five statistics, as a typical task's does, and no stdout
or stderr (full logs live in the log store beside the file, not in it). Measured: the
database's size (after a checkpoint) before the attempts and after them, per attempt; and the
same for the tasks and jobs the dataset itself adds. Then the dataset is archived
(`floe archive`): how long it takes, the archive's bytes per attempt, the database pages it
frees, how long other writes waited meanwhile (a small write every 10 ms, as pilots' reports
keep coming), and how long reading one task's attempts and one attempt back from the archive
takes. Prints one JSON object; `--small` runs 100,000.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe  # noqa: E402
from floe.config.resources import Slot  # noqa: E402
from floe.config.settings import server_settings  # noqa: E402
from floe.matchmaker import dispatch, pilots, recording, records, retiring, submission  # noqa: E402
from floe.matchmaker.auth import Auth  # noqa: E402
from floe.matchmaker.engine import Engine  # noqa: E402
from floe.matchmaker.storage import writes  # noqa: E402
from floe.matchmaker.storage.database import Batch, Database  # noqa: E402

BATCH = 500
SLOT = Slot(cpus=BATCH, memory=2**50, disk=2**50, seconds=86400, os=("linux",), arch="x86_64",
            site="bench")
REPORT = {"exit_code": 0, "usage": {"cpu_time": 312.5, "wall_time": 340.2,
                                    "peak_memory": 1_523_000_000, "peak_disk": 2_100_000_000},
          "statistics": {"events": 10000, "selected": 734, "energy_mean": 15.7,
                         "energy_max": 1e6, "livetime": 3600.0}}


def size(path: Path) -> int:
    """The database's bytes once its WAL is checkpointed into it."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


async def run(attempts: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "floe.sqlite"
        db = await Database.open(path)
        engine = Engine(db, server_settings({"database": str(path),
                                             "max_queued_tasks_per_user": 10**9}))
        await engine.load()
        auth = Auth(engine)
        user, _ = await auth.add_user("bench", False, 1.0)
        site, _ = await auth.add_site("bench")
        (token,), _ = await auth.pilot_tokens(site, 86400)
        pilot, _ = await pilots.register(engine, await auth.authenticate(token), "node1",
                                         "none", "", SLOT.to_dict())
        empty = size(path)
        dataset = await submission.submit(engine, user, {
            "description": "record benchmark", "jobs": attempts,
            "tasks": [{"name": "sim", "requirements": {"memory": "1GiB", "walltime": "1h"},
                       "modules": [{"command": ["sim", "--seed", "$args(job)"]}]}]})
        while dataset.materialized < dataset.jobs:
            await submission.materialize_chunk(engine, dataset, 20000)
        submitted = size(path)
        started = time.perf_counter()
        done = 0
        while done < attempts:
            given = dispatch.reserve_offer(engine, pilot, dispatch.Offer(SLOT, BATCH),
                                           batch := Batch())
            await engine.db.write(batch)
            reports = [dict(REPORT, attempt_id=d.attempt_id, passkey=d.passkey)
                       for d in given.attempts]
            await recording.report_many(engine, pilot.pilot_id, reports, None)
            done += len(reports)
        seconds = time.perf_counter() - started
        recorded = size(path)
        archived = await _archive(engine, dataset, user)
        await engine.stop()
        await db.close()
        with sqlite3.connect(path) as conn:
            free = conn.execute("PRAGMA freelist_count").fetchone()[0] * conn.execute(
                "PRAGMA page_size").fetchone()[0]
        archived["database_bytes_freed"] = free
    return {"benchmark": "record", "machine": describe(), "attempts": attempts,
            "settings": "server defaults; reports with usage and 5 statistics, no stdout or "
                        "stderr; one task per job",
            "database_bytes": {"empty": empty, "with_the_dataset": submitted,
                               "with_the_attempts": recorded},
            "bytes_per_task": round((submitted - empty) / attempts, 1),
            "bytes_per_attempt": round((recorded - submitted) / attempts, 1),
            "attempts_recorded_per_second": round(attempts / seconds),
            "archive": archived,
            "targets": {"bytes_per_attempt": "<= 1024"}}


async def _archive(engine: Engine, dataset: Any, user: Any) -> dict[str, Any]:
    """Archive the dataset while a small write goes in every 10 ms; what it took."""
    waits: list[float] = []
    stop = asyncio.Event()

    async def other_writes() -> None:
        while not stop.is_set():
            began = time.perf_counter()
            await engine.db.write(writes.save_usage(Batch(), "bench", 1.0, engine.clock()))
            waits.append(time.perf_counter() - began)
            await asyncio.sleep(0.01)

    writer = asyncio.create_task(other_writes())
    started = time.perf_counter()
    row = await retiring.archive_dataset(engine, dataset, user)
    seconds = time.perf_counter() - started
    stop.set()
    await writer
    waits.sort()
    began = time.perf_counter()
    task = await records.attempts_of_task(engine.db, engine.archived, dataset.id,
                                          dataset.task_id(dataset.jobs // 2, 0))
    by_task = time.perf_counter() - began
    began = time.perf_counter()
    one = await records.attempt(engine.db, engine.archived, task[0]["attempt_id"])
    by_id = time.perf_counter() - began
    assert one is not None and one["state"] == "complete"
    return {"seconds": round(seconds, 1), "bytes": row["bytes"],
            "bytes_per_attempt": round(row["bytes"] / row["attempts"], 1),
            "other_writes_ms": {"p50": round(waits[len(waits) // 2] * 1000, 1),
                                "p99": round(waits[int(len(waits) * 0.99)] * 1000, 1),
                                "max": round(waits[-1] * 1000, 1), "count": len(waits)},
            "read_ms": {"one_task_attempts": round(by_task * 1000, 1),
                        "one_attempt_by_id": round(by_id * 1000, 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--small", action="store_true", help="100,000 attempts")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(100_000 if args.small else args.attempts)), indent=1))


if __name__ == "__main__":
    main()
