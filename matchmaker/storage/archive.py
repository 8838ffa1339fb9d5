"""A dataset's archive: its attempts and full logs, out of the hot database, in one zip file that
floe still reads.

`<database>.archive/<dataset>.zip` holds:

- `dataset.json`: what the dataset was (description, config, jobs, steering versions) and what
  the archive holds (attempts, first and last attempt id);
- `attempts/<block>.json`: the attempts of jobs [block * JOBS_PER_BLOCK, ...), each as the API
  shows one (with its log tails), in task and attempt order: a task's attempts are one member
  away, however large the dataset;
- `index`: every attempt id with its block (two packed arrays), to find one attempt by id;
- `logs/<attempt>.<stream>`: the full logs its pilots uploaded.

Zip, not tar: members are compressed one by one and found through the central directory, so
reading one task's attempts decompresses a few hundred kilobytes, never the whole file. The
file is written beside its final name and renamed into place once complete and on disk.
Everything here is blocking: the matchmaker runs it in threads.
"""

from __future__ import annotations

import array
import bisect
import json
import os
import sqlite3
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .logstore import LogStore, read_file
from .queries import ATTEMPT_COLUMNS, attempt_record

FORMAT = 1
JOBS_PER_BLOCK = 1000


@dataclass
class Written:
    """What an archive holds, as its `retired` row records it."""

    path: Path
    attempts: int
    first_attempt: int | None
    last_attempt: int | None
    logs: int
    bytes: int


def archive_file(database: str | Path, dataset_id: int) -> Path:
    """Where dataset `dataset_id`'s archive is kept."""
    return Path(f"{database}.archive") / f"{dataset_id}.zip"


def write(database: str | Path, dataset_id: int, logs: LogStore) -> Written:
    """Write dataset `dataset_id`'s archive from the database file (read on a connection of its
    own, one consistent snapshot) and the log store."""
    target = archive_file(database, dataset_id)
    target.parent.mkdir(mode=0o700, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("BEGIN")  # one snapshot for everything read below
        dataset = conn.execute("SELECT * FROM datasets WHERE dataset_id = ?",
                               (dataset_id,)).fetchone()
        if dataset is None:
            raise LookupError(f"there is no dataset {dataset_id}")
        versions = [dict(r) for r in conn.execute(
            "SELECT version, first_job, steering, user_id, created FROM steering_versions"
            " WHERE dataset_id = ? ORDER BY version", (dataset_id,))]
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as out:
            ids, blocks, logged = array.array("q"), array.array("i"), 0
            for block, records in _blocks(conn, dataset):
                out.writestr(f"attempts/{block}.json",
                             json.dumps(records, separators=(",", ":")))
                for record in records:
                    ids.append(record["attempt_id"])
                    blocks.append(block)
            order = sorted(range(len(ids)), key=ids.__getitem__)
            ids = array.array("q", (ids[i] for i in order))
            blocks = array.array("i", (blocks[i] for i in order))
            out.writestr("index", len(ids).to_bytes(8, "little") + ids.tobytes()
                         + blocks.tobytes())
            for attempt_id, stream, text in _logs(conn, dataset_id, logs):
                out.writestr(f"logs/{attempt_id}.{stream}", text)
                logged += 1
            summary = {
                "format": FORMAT, "dataset_id": dataset_id,
                "description": dataset["description"], "config": json.loads(dataset["config"]),
                "jobs": dataset["jobs"], "tasks_per_job": dataset["tasks_per_job"],
                "task_id_base": dataset["task_id_base"], "status": dataset["status"],
                "created": dataset["created"], "steering_versions": versions,
                "attempts": len(ids), "first_attempt": ids[0] if ids else None,
                "last_attempt": ids[-1] if ids else None, "logs": logged}
            out.writestr("dataset.json", json.dumps(summary, indent=1))
        with open(partial, "rb") as done:
            os.fsync(done.fileno())
        os.replace(partial, target)
    finally:
        conn.close()
        partial.unlink(missing_ok=True)
    return Written(target, len(ids), ids[0] if ids else None, ids[-1] if ids else None, logged,
                   target.stat().st_size)


def _blocks(conn: sqlite3.Connection, dataset: sqlite3.Row
            ) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """The dataset's attempts with their tails, a block of jobs at a time, read straight off
    the attempts' task index (task ids are arithmetic: a job block is a range of ids)."""
    base, per_job = dataset["task_id_base"], dataset["tasks_per_job"]
    for block in range(-(-dataset["jobs"] // JOBS_PER_BLOCK)):
        low = base + block * JOBS_PER_BLOCK * per_job
        rows = conn.execute(
            f"SELECT {ATTEMPT_COLUMNS}, stdout_tail, stderr_tail FROM attempts"
            " WHERE task_id >= ? AND task_id < ? AND dataset_id = ?"
            " ORDER BY task_id, attempt_id",
            (low, low + JOBS_PER_BLOCK * per_job, dataset["dataset_id"])).fetchall()
        if rows:
            yield block, [attempt_record(row, tails=True) for row in rows]


def _logs(conn: sqlite3.Connection, dataset_id: int, logs: LogStore
          ) -> Iterator[tuple[int, str, bytes]]:
    """Every full log of the dataset: the store's, then those older builds kept in the
    database."""
    stored = set()
    for attempt_id, stream, path in sorted(logs.logs_of(dataset_id)):
        text = read_file(path)
        if text is not None:
            stored.add((attempt_id, stream))
            yield attempt_id, stream, text
    for row in conn.execute("SELECT l.attempt_id, l.stream, l.text FROM logs l JOIN attempts a"
                            " ON a.attempt_id = l.attempt_id WHERE a.dataset_id = ?",
                            (dataset_id,)):
        if (row[0], row[1]) not in stored:
            yield row[0], row[1], row[2].encode()


class Archive:
    """Reads one dataset's archive."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def summary(self) -> dict[str, Any]:
        with zipfile.ZipFile(self.path) as source:
            return json.loads(source.read("dataset.json"))

    def attempts_of_task(self, task_id: int) -> list[dict[str, Any]]:
        """A task's attempts (without tails), oldest first."""
        with zipfile.ZipFile(self.path) as source:
            summary = json.loads(source.read("dataset.json"))
            job = (task_id - summary["task_id_base"]) // summary["tasks_per_job"]
            records = self._block(source, job // JOBS_PER_BLOCK)
        found = []
        for record in records:
            if record["task_id"] == task_id:
                record.pop("stdout_tail", None)
                record.pop("stderr_tail", None)
                found.append(record)
        return found

    def attempt(self, attempt_id: int) -> dict[str, Any] | None:
        """One attempt with its tails, or None if the archive does not hold it."""
        with zipfile.ZipFile(self.path) as source:
            index = source.read("index")
            count = int.from_bytes(index[:8], "little")
            ids = array.array("q")
            ids.frombytes(index[8:8 + 8 * count])
            at = bisect.bisect_left(ids, attempt_id)
            if at == count or ids[at] != attempt_id:
                return None
            blocks = array.array("i")
            blocks.frombytes(index[8 + 8 * count:])
            for record in self._block(source, blocks[at]):
                if record["attempt_id"] == attempt_id:
                    return record
        return None

    def log(self, attempt_id: int, stream: str) -> bytes | None:
        """An attempt's full log, if its pilot uploaded one."""
        with zipfile.ZipFile(self.path) as source:
            try:
                return source.read(f"logs/{attempt_id}.{stream}")
            except KeyError:
                return None

    @staticmethod
    def _block(source: zipfile.ZipFile, block: int) -> list[dict[str, Any]]:
        try:
            return json.loads(source.read(f"attempts/{block}.json"))
        except KeyError:
            return []
