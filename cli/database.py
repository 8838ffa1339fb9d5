"""`floe db backup`: an online, consistent copy of the matchmaker's database.

The copy is made with SQLite's backup API while the server runs: a few hundred pages at a time,
so the server's writer never waits long, starting over by itself if a commit changes pages it
has copied (SQLite's own rule), into a temporary file renamed into place once it is complete
and passes SQLite's quick check. The copy is a database on its own (no WAL beside it): to
restore, stop the server, put the copy where `--db` points (removing any `-wal` and `-shm`
files of the old one) and start the server again.

The full logs (`<db>.logs/`) and the archives (`<db>.archive/`) live beside the database: they
are copied after it, beside the copy under the same suffixes. Their files are only ever
replaced whole (written aside, then renamed), so each file copied is whole; a log uploaded
after the database was copied is copied too, and is harmless (the copy does not know its
attempt).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from .server import DEFAULT_DB

PAGES_PER_STEP = 256
"""Pages copied per step of the backup; the server's writer may commit between steps."""


class BackupError(Exception):
    """The backup could not be made; the message says why and what to do."""


def backup(source: Path, target: Path, force: bool = False) -> dict[str, Any]:
    """Copy the database `source` to `target` (refused if it exists, unless `force`); what was
    copied."""
    if not source.is_file():
        raise BackupError(f"{source} does not exist: give --db the file `floe server` uses")
    if target.exists() and not force:
        raise BackupError(f"{target} exists already: choose another name, or --force to "
                          "replace it")
    if target.resolve() == source.resolve():
        raise BackupError(f"{target} is the database itself: choose another name")
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent} is not a folder: make it first, or choose another "
                          "place for the copy")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    started = time.monotonic()
    reader = writer = None
    try:
        reader = sqlite3.connect(source)
        if not reader.execute("SELECT 1 FROM sqlite_master WHERE name = 'datasets'").fetchone():
            raise BackupError(f"{source} is not a floe matchmaker database")
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))  # like the db
        writer = sqlite3.connect(partial)
        reader.backup(writer, pages=PAGES_PER_STEP, sleep=0.001)
        checked = writer.execute("PRAGMA quick_check").fetchone()[0]
        if checked != "ok":
            raise BackupError(f"the copy failed SQLite's quick check ({checked}); {source} "
                              f"itself may be damaged: run `sqlite3 {source} 'PRAGMA "
                              "integrity_check'`")
        datasets = writer.execute("SELECT count(*) FROM datasets").fetchone()[0]
        attempts = writer.execute("SELECT count(*) FROM attempts").fetchone()[0]
        writer.close()
        writer = None
        os.replace(partial, target)
    except sqlite3.Error as err:
        raise BackupError(f"copying {source} failed: {err}") from None
    finally:
        for connection in (reader, writer):
            if connection is not None:
                connection.close()
        partial.unlink(missing_ok=True)
    files = sum(_copy_beside(source, target, suffix) for suffix in SIDE_DIRECTORIES)
    return {"database": str(source), "backup": str(target), "bytes": target.stat().st_size,
            "datasets": datasets, "attempts": attempts, "log_and_archive_files": files,
            "seconds": round(time.monotonic() - started, 3)}


SIDE_DIRECTORIES = (".logs", ".archive")
"""What lives beside the database: the log store and the archives."""


def _copy_beside(source: Path, target: Path, suffix: str) -> int:
    """Copy `<source><suffix>/` to `<target><suffix>/` (files written aside and not yet
    renamed into place are left out); returns the files copied."""
    origin, copy = Path(f"{source}{suffix}"), Path(f"{target}{suffix}")
    if not origin.is_dir():
        return 0
    copied = []
    try:
        shutil.copytree(origin, copy, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.partial"),
                        copy_function=lambda a, b: copied.append(shutil.copy2(a, b)))
    except (OSError, shutil.Error) as err:
        raise BackupError(f"the database was copied to {target}, but copying {origin} to "
                          f"{copy} failed: {err}") from None
    return len(copied)


def _configure_db(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    copy = sub.add_parser("backup", help="copy the database while the server runs (consistent, "
                                         "online)")
    copy.add_argument("target", type=Path, help="the file to write the copy to")
    copy.add_argument("--db", type=Path, default=Path(DEFAULT_DB), metavar="PATH",
                      help=f"the matchmaker's SQLite file (default {DEFAULT_DB})")
    copy.add_argument("--force", action="store_true", help="replace TARGET if it exists")
    copy.add_argument("--json", action="store_true", help="print JSON")


def _run_db(args: argparse.Namespace) -> int:
    try:
        done = backup(args.db, args.target, args.force)
    except BackupError as err:
        print(f"floe db backup: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(done, indent=2))
    else:
        print(f"{done['backup']}: a copy of {done['database']} ({done['bytes']:,} bytes, "
              f"{done['datasets']:,} datasets, {done['attempts']:,} attempts; "
              f"{done['log_and_archive_files']:,} log and archive files beside it) in "
              f"{done['seconds']} s; to restore it, stop the server, put it where --db points "
              "(removing the old file's -wal and -shm) with its .logs and .archive folders "
              "beside it under the database's name, and start the server")
    return 0


SUBCOMMANDS = {
    "db": ("back up the matchmaker's database while it runs (on the server host)", _configure_db,
           _run_db),
}
