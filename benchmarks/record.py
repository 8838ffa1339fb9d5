"""Benchmark of how lean the record is: database bytes per attempt, without logs.

The matchmaker's engine (its real database file, group commits and all) runs in this process:
one dataset of `--attempts` one-task jobs (default 1,000,000) is submitted and every job's task
is handed out and reported complete, 500 to a request, as a busy pilot's bulk asks and reports
would; a report carries its usage and five statistics, as a typical task's does, and no stdout
or stderr (logs are what part 6 of issue 18 moves out of the file). Measured: the database's
size (after a checkpoint) before the attempts and after them, per attempt; and the same for the
tasks and jobs the dataset itself adds. Prints one JSON object; `--small` runs 100,000.
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
from config.resources import Slot  # noqa: E402
from config.settings import server_settings  # noqa: E402
from matchmaker import dispatch, pilots, recording, submission  # noqa: E402
from matchmaker.auth import Auth  # noqa: E402
from matchmaker.engine import Engine  # noqa: E402
from matchmaker.storage.database import Batch, Database  # noqa: E402

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
        await engine.stop()
        await db.close()
        recorded = size(path)
    return {"benchmark": "record", "machine": describe(), "attempts": attempts,
            "settings": "server defaults; reports with usage and 5 statistics, no stdout or "
                        "stderr; one task per job",
            "database_bytes": {"empty": empty, "with_the_dataset": submitted,
                               "with_the_attempts": recorded},
            "bytes_per_task": round((submitted - empty) / attempts, 1),
            "bytes_per_attempt": round((recorded - submitted) / attempts, 1),
            "attempts_recorded_per_second": round(attempts / seconds),
            "targets": {"bytes_per_attempt": "<= 1024"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--small", action="store_true", help="100,000 attempts")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(100_000 if args.small else args.attempts)), indent=1))


if __name__ == "__main__":
    main()
