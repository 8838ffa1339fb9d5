"""Final reports kept on disk until the matchmaker has acknowledged them.

A finished attempt's report is written here before it is sent, and removed only once the
matchmaker has recorded it (or said for certain that it never will: the attempt was voided, or
the passkey is not its own). So a result survives the matchmaker being away and the pilot being
killed: a pilot started again on the same scratch directory finds the reports the dead one left
and delivers them, even before it registers. Reporting twice does no harm, because the
matchmaker acknowledges a repeated report as a duplicate and records nothing twice. A report
may carry the pilot's ask for its next task (`deliver_asking`); the ask never changes what becomes
of the report.

Layout: `<attempt>.json` (attempt id, passkey, report body) written atomically (temporary file,
fdatasync, rename, fsync of the directory), with `<attempt>.stdout` / `<attempt>.stderr` beside
it when a log is longer than the tail the report carries. Reports the matchmaker refuses as
malformed go to `rejected/` for a person to read instead of being retried forever.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.resources import Slot
from pilot.client import MAX_LOG_BYTES, Matchmaker, Reply, Unreachable, next_reply

log = logging.getLogger("floe.pilot")

STREAMS = ("stdout", "stderr")
ORPHAN_AGE = 86400.0
"""Log files with no report beside them are removed after this long (a pilot killed between
moving its logs in and writing the report leaves them)."""


_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


def _sync_directory(directory: Path) -> None:
    """fsync a directory, so that the names just made or renamed in it survive a crash."""
    handle = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@dataclass
class Delivery:
    """One report to deliver: where it is kept (`path` None: only in memory, the disk failed)."""

    attempt_id: int
    passkey: str
    report: dict[str, Any]
    logs: dict[str, str] = field(default_factory=dict)
    path: Path | None = None


class Verdict(enum.Enum):
    DELIVERED = "delivered"  # recorded now, or before (a duplicate)
    VOID = "void"  # the matchmaker will never record it: the attempt was voided, or not ours
    REJECTED = "rejected"  # the matchmaker finds the report itself wrong; retrying cannot help
    RETRY = "retry"  # the matchmaker could not be reached: keep it and try later


class Outbox:
    """The directory of reports not yet acknowledged."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def put(self, attempt_id: int, passkey: str, report: Mapping[str, Any],
            logs: Mapping[str, Path] | None = None) -> Delivery:
        """Keep a report (and move the given full logs in beside it) before it is sent."""
        kept: dict[str, str] = {}
        for stream, source in (logs or {}).items():
            name = f"{attempt_id}.{stream}"
            os.replace(source, self.directory / name)
            kept[stream] = name
        delivery = Delivery(attempt_id, passkey, dict(report), kept)
        document = {"attempt_id": attempt_id, "passkey": passkey, "report": delivery.report,
                    "logs": kept, "written": time.time()}
        path = self.directory / f"{attempt_id}.json"
        # One writer per name: no other process or thread writes this temporary file, and
        # `pending()` removes what a killed writer left (names starting with ".").
        partial = self.directory / f".{attempt_id}.{os.getpid()}.{threading.get_ident()}"
        data = json.dumps(document, separators=(",", ":")).encode()
        handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(handle, view):]
                # The data must be on disk before the rename makes it the report, or a crash
                # of the node could leave a truncated report under its final name. fdatasync
                # is enough for that: it writes the data and the metadata needed to read it
                # back (the size of this new file), skipping only the timestamps.
                _datasync(handle)
            finally:
                os.close(handle)
            os.replace(partial, path)
            # And the rename itself must be on disk before the report is called kept: a node
            # that crashes and comes back would otherwise have lost the finished result.
            _sync_directory(self.directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        delivery.path = path
        return delivery

    def pending(self) -> list[Delivery]:
        """The reports kept here, oldest attempt first. Unreadable ones are set aside."""
        found = []
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as err:
            log.warning("cannot read the outbox %s: %s", self.directory, err.strerror or err)
            return []
        reports = {name[:-len(".json")] for name in names if name.endswith(".json")}
        for name in names:
            path = self.directory / name
            stem, _, suffix = name.rpartition(".")
            if name.startswith(".") or (suffix in STREAMS and stem not in reports):
                self._remove_orphan(path)  # left by a pilot killed while writing here
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                document = json.loads(path.read_text())
                found.append(Delivery(int(document["attempt_id"]), str(document["passkey"]),
                                      dict(document["report"]), dict(document.get("logs") or {}),
                                      path))
            except FileNotFoundError:
                continue  # another pilot on this scratch delivered it meanwhile
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.error("outbox entry %s is unreadable (%s); moved to %s", path, err,
                          self.directory / "rejected")
                self._move_aside(path)
        return sorted(found, key=lambda delivery: delivery.attempt_id)

    def remove(self, delivery: Delivery) -> None:
        """Forget a report: it was acknowledged, or will never be recorded."""
        for path in self._files(delivery):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def set_aside(self, delivery: Delivery, why: str) -> None:
        """Keep a report the matchmaker refused in `rejected/`, with the reason beside it."""
        aside = self.directory / "rejected"
        aside.mkdir(exist_ok=True)
        if delivery.path is None:
            document = {"attempt_id": delivery.attempt_id, "report": delivery.report}
            (aside / f"{delivery.attempt_id}.json").write_text(json.dumps(document))
        for path in self._files(delivery):
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, aside / path.name)
        (aside / f"{delivery.attempt_id}.why").write_text(why + "\n")

    def log_bytes(self, delivery: Delivery, stream: str) -> bytes | None:
        """The last part of a full log kept with a report (None when none was kept)."""
        name = delivery.logs.get(stream)
        if not name:
            return None
        try:
            with open(self.directory / name, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - MAX_LOG_BYTES))
                return handle.read()
        except OSError:
            return None

    def _files(self, delivery: Delivery) -> list[Path]:
        files = [self.directory / name for name in delivery.logs.values()]
        if delivery.path is not None:
            files.insert(0, delivery.path)
        return files

    def _move_aside(self, path: Path) -> None:
        aside = self.directory / "rejected"
        with contextlib.suppress(OSError):
            aside.mkdir(exist_ok=True)
            os.replace(path, aside / path.name)

    def _remove_orphan(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > ORPHAN_AGE:
                path.unlink()


def deliver(client: Matchmaker, outbox: Outbox, delivery: Delivery,
            timeout: float | None = None) -> tuple[Verdict, str]:
    """Send one report (its full logs first, when kept) and say what became of it, with the
    matchmaker's words. Does not remove it from the outbox: the caller does, by the verdict."""
    verdict, words, _ = _send(client, outbox, delivery, timeout, None)
    return verdict, words


def deliver_asking(client: Matchmaker, outbox: Outbox, delivery: Delivery,
                   offer: Slot) -> tuple[Verdict, str, Reply | None]:
    """`deliver`, asking in the same request for a task that fits `offer`; also returns the
    answer to that ask, as the ask's own reply (None when the report was not accepted: then
    nothing was asked)."""
    return _send(client, outbox, delivery, None, offer)


def _send(client: Matchmaker, outbox: Outbox, delivery: Delivery, timeout: float | None,
          offer: Slot | None) -> tuple[Verdict, str, Reply | None]:
    attempt_id, passkey = delivery.attempt_id, delivery.passkey
    try:
        for stream in STREAMS:
            text = outbox.log_bytes(delivery, stream)
            if text is None:
                continue
            reply = client.upload_log(attempt_id, passkey, stream, text, timeout)
            if reply.status in (403, 404, 409):
                return Verdict.VOID, reply.error, None
            if not reply.ok:
                # The tail in the report still says what happened; the full log is a bonus.
                log.warning("attempt %s: the matchmaker refused its full %s (%s)", attempt_id,
                            stream, reply.error)
        reply = client.report(attempt_id, passkey, delivery.report, timeout, offer)
    except Unreachable as err:
        return Verdict.RETRY, str(err), None
    if reply.ok:
        return Verdict.DELIVERED, "duplicate" if reply.data.get("duplicate") else \
            str(reply.data.get("task_state") or "recorded"), next_reply(reply)
    if reply.status in (403, 404, 409):
        return Verdict.VOID, reply.error, None
    return Verdict.REJECTED, f"HTTP {reply.status}: {reply.error}", None
