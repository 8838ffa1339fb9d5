"""The log store: attempts' full logs as compressed files beside the database, not in it.

A pilot uploads a log only when it is longer than the tail its report carries (which the
database keeps, in the attempt's row), so the store holds the long logs of the few attempts
that had them, and the SQLite file stays small and quick to back up. Each log is one gzip file,
`<database>.logs/<dataset>/<attempt // 10000>/<attempt>.<stream>.gz`: a dataset's logs are one
directory (moved into its archive, or removed with it, at once), and no directory holds more
than ten thousand files. A file is written beside its final name and renamed into place after
it reached the disk, so a reader sees a whole log or none. Logs uploaded by builds before the
store lived in the database's `logs` table; readers look there when the store has none.

Blocking file work runs in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

STREAMS = ("stdout", "stderr")
PER_DIRECTORY = 10_000
LEVEL = 6
"""gzip's default level: logs shrink 5-10x at about 50 MB/s of one core."""


class LogStore:
    """Full logs under one root directory (`<database>.logs`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def beside(cls, database: str | Path) -> LogStore:
        return cls(Path(f"{database}.logs"))

    def dataset_dir(self, dataset_id: int) -> Path:
        return self.root / str(dataset_id)

    def path(self, dataset_id: int, attempt_id: int, stream: str) -> Path:
        if stream not in STREAMS:
            raise ValueError(f"an attempt has two logs, stdout and stderr; not {stream!r}")
        return (self.dataset_dir(dataset_id) / str(attempt_id // PER_DIRECTORY)
                / f"{attempt_id}.{stream}.gz")

    async def save(self, dataset_id: int, attempt_id: int, stream: str, data: bytes) -> int:
        """Store `data` as the attempt's whole `stream`, replacing an earlier upload; returns
        the bytes it takes on disk."""
        return await asyncio.to_thread(self._save, self.path(dataset_id, attempt_id, stream),
                                       data)

    async def read(self, dataset_id: int, attempt_id: int, stream: str) -> bytes | None:
        """The attempt's whole `stream`, or None if none was stored."""
        return await asyncio.to_thread(read_file, self.path(dataset_id, attempt_id, stream))

    async def remove(self, dataset_id: int) -> None:
        """Remove every log of a dataset (it was deleted, or its logs are in its archive)."""
        await asyncio.to_thread(shutil.rmtree, self.dataset_dir(dataset_id), True)

    def logs_of(self, dataset_id: int) -> Iterator[tuple[int, str, Path]]:
        """(attempt id, stream, file) of every log of a dataset, in no particular order."""
        top = self.dataset_dir(dataset_id)
        if not top.is_dir():
            return
        for directory in top.iterdir():
            for file in directory.glob("*.gz"):
                attempt, _, rest = file.name.partition(".")
                stream = rest.removesuffix(".gz")
                if attempt.isdigit() and stream in STREAMS:
                    yield int(attempt), stream, file

    @staticmethod
    def _save(path: Path, data: bytes) -> int:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # A name of its own: two uploads of one log (a pilot's retry beside an outbox's
        # delivery) each write theirs, and the last renamed in place wins, whole.
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial",
                                        dir=path.parent)
        partial = Path(name)
        try:
            with os.fdopen(handle, "wb") as raw:
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=LEVEL, mtime=0) as out:
                    out.write(data)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return path.stat().st_size


def read_file(path: Path) -> bytes | None:
    """A stored log's text as bytes, or None if there is no such file."""
    try:
        with gzip.open(path, "rb") as source:
            return source.read()
    except FileNotFoundError:
        return None
