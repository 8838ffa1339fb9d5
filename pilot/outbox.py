"""Final reports kept on disk until the matchmaker has acknowledged them.

A finished attempt's report is written here before it is sent, and removed only once the
matchmaker has recorded it (or said for certain that it never will: the attempt was voided, or
the passkey is not its own). So a result survives the matchmaker being away and the pilot being
killed: a pilot started again on the same scratch directory finds the reports the dead one left
and delivers them, even before it registers. Reporting twice does no harm, because the
matchmaker acknowledges a repeated report as a duplicate and records nothing twice.

The reports of attempts that ended together are kept together: one file per batch, written
atomically (temporary file, fdatasync, rename, fsync of the directory), so that a busy pilot
pays one sync for many tasks. A batch about to be sent may be written without the syncs
(`durable=False`) and made durable by `sync()` only if it is still here once the sending is
over: a report the matchmaker acknowledges at once then costs no sync at all (two syncs are
about 0.6 ms on a local disk, a tenth of a short task's whole round trip), and the page cache
still keeps it through a killed pilot; only a crash of the node itself in that moment can lose
it, and then the matchmaker finds the attempt lost and runs the task again. A batch's file is
removed once every report in it is settled; a pilot killed before that delivers the batch again,
and the matchmaker takes the repeats as duplicates. `deliver_many` sends a pilot's own reports
in one request, which may carry the ask for its next tasks (the ask never changes what becomes
of the reports); `deliver` sends one report by its passkey alone, for what the pilot token
cannot speak for.

Layout: `<first attempt>.json` ({"reports": [{attempt id, passkey, report body, logs}, ...]}),
with `<attempt>.stdout` / `<attempt>.stderr` beside it when a log is longer than the tail the
report carries. Reports the matchmaker refuses as malformed go to `rejected/` for a person to
read instead of being retried forever.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from floe.pilot.client import MAX_LOG_BYTES, Ask, Matchmaker, Reply, Unreachable, next_reply

log = logging.getLogger("floe.pilot")

STREAMS = ("stdout", "stderr")
ORPHAN_AGE = 86400.0
"""Log files with no report beside them are removed after this long (a pilot killed between
moving its logs in and writing the report leaves them)."""
VOID_STATUSES = (403, 404, 409)
"""Answers that say a report will never be recorded: not this attempt's passkey (or not this
pilot's attempt), no such attempt, or an attempt voided on the matchmaker."""


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

    def document(self) -> dict[str, Any]:
        return {"attempt_id": self.attempt_id, "passkey": self.passkey, "report": self.report,
                "logs": self.logs}


class Verdict(enum.Enum):
    DELIVERED = "delivered"  # recorded now, or before (a duplicate)
    VOID = "void"  # the matchmaker will never record it: the attempt was voided, or not ours
    REJECTED = "rejected"  # the matchmaker finds the report itself wrong; retrying cannot help
    RETRY = "retry"  # the matchmaker could not be reached: keep it and try later


class Outbox:
    """The directory of reports not yet acknowledged. `adopt_log` may be called from any
    thread; everything else from one.

    Pilots side by side on one scratch directory share it: each batch names the pilot that
    kept it (`owner`), and `pending()` takes up only those of pilots that `alive` says are
    gone (or that named none), leaving a live pilot's own reports to it."""

    def __init__(self, directory: str | Path, owner: str = "",
                 alive: Callable[[str], bool] | None = None) -> None:
        self.directory = Path(directory)
        self.owner = owner
        self._alive = alive or (lambda owner: False)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._unsettled: dict[Path, set[int]] = {}  # a batch file: its reports not yet settled
        self._unsynced: set[Path] = set()  # batch files written without their syncs

    def adopt_log(self, attempt_id: int, stream: str, source: str | Path) -> str:
        """Move a full log in (before its report is kept); returns its name here."""
        name = f"{attempt_id}.{stream}"
        os.replace(source, self.directory / name)
        return name

    def put(self, attempt_id: int, passkey: str, report: Mapping[str, Any],
            logs: Mapping[str, Path] | None = None) -> Delivery:
        """Keep one report (and move the given full logs in beside it) before it is sent."""
        kept = {stream: self.adopt_log(attempt_id, stream, source)
                for stream, source in (logs or {}).items()}
        delivery = Delivery(attempt_id, passkey, dict(report), kept)
        self.put_many([delivery])
        return delivery

    def put_many(self, deliveries: Sequence[Delivery], durable: bool = True) -> None:
        """Keep reports whose logs are in already, all in one file with one sync (none with
        `durable` False: `sync()` does it later); sets their `path`. Raises OSError when they
        could not be kept (their `path` stays None)."""
        if not deliveries:
            return
        first = min(delivery.attempt_id for delivery in deliveries)
        path = self.directory / f"{first}.json"
        self._write(path, {"reports": [delivery.document() for delivery in deliveries],
                           "written": time.time(), "pilot": self.owner}, durable)
        for delivery in deliveries:
            delivery.path = path
        self._unsettled[path] = {delivery.attempt_id for delivery in deliveries}

    def _write(self, path: Path, document: Mapping[str, Any], durable: bool) -> None:
        """Write a batch file whole, in place of any before it; OSError when it could not."""
        # One writer per name: no other process or thread writes this temporary file, and
        # `pending()` removes what a killed writer left (names starting with ".").
        partial = self.directory / f".{path.stem}.{os.getpid()}.{threading.get_ident()}"
        data = json.dumps(document, separators=(",", ":")).encode()
        handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(handle, view):]
                # The data must be on disk before the rename makes it the reports, or a crash
                # of the node could leave a truncated file under its final name. fdatasync
                # is enough for that: it writes the data and the metadata needed to read it
                # back (the size of this new file), skipping only the timestamps.
                if durable:
                    _datasync(handle)
            finally:
                os.close(handle)
            os.replace(partial, path)
            # And the rename itself must be on disk before the reports are called kept: a node
            # that crashes and comes back would otherwise have lost the finished results.
            if durable:
                _sync_directory(self.directory)
            else:
                self._unsynced.add(path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise

    def sync(self) -> None:
        """Make the batches written without their syncs durable, those still here (a file
        whose reports were all settled is gone). Raises OSError."""
        if not self._unsynced:
            return
        for path in sorted(self._unsynced):
            try:
                handle = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                _datasync(handle)
            finally:
                os.close(handle)
        _sync_directory(self.directory)
        self._unsynced.clear()

    def pending(self) -> list[Delivery]:
        """The reports kept here by this pilot or by pilots that are gone, oldest attempt
        first. Unreadable files are set aside."""
        found: list[Delivery] = []
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as err:
            log.warning("cannot read the outbox %s: %s", self.directory, err.strerror or err)
            return []
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = self.directory / name
            try:
                data = json.loads(path.read_text())
                owner = data.get("pilot") or ""
                if owner and owner != self.owner and self._alive(owner):
                    continue  # a live pilot beside this one delivers it
                # A pilot of the previous release kept one report per file, as the document.
                documents = data.get("reports", [data])
                batch = [Delivery(int(document["attempt_id"]), str(document["passkey"]),
                                  dict(document["report"]), dict(document.get("logs") or {}),
                                  path)
                         for document in documents]
                if owner != self.owner and self.owner:
                    self._take_over(path, documents, data.get("written"))
            except FileNotFoundError:
                continue  # another pilot on this scratch delivered it meanwhile
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                log.error("outbox entry %s is unreadable (%s); moved to %s", path, err,
                          self.directory / "rejected")
                self._move_aside(path)
                continue
            found.extend(batch)
            self._unsettled[path] = {delivery.attempt_id for delivery in batch}
        reported = {str(delivery.attempt_id) for delivery in found}
        for name in names:
            stem, _, suffix = name.rpartition(".")
            if name.startswith(".") or (suffix in STREAMS and stem not in reported):
                self._remove_orphan(self.directory / name)  # left by a killed pilot
        return sorted(found, key=lambda delivery: delivery.attempt_id)

    def _take_over(self, path: Path, documents: list[Any], written: Any) -> None:
        """Name this pilot in a batch it takes up, so that a pilot starting after it leaves
        the batch to it (should the rewrite fail, that one may send the reports again, which
        the matchmaker takes as duplicates)."""
        try:
            self._write(path, {"reports": documents, "written": written or time.time(),
                               "pilot": self.owner}, durable=True)
        except OSError as err:
            log.warning("cannot mark %s as this pilot's: %s", path, err.strerror or err)

    def remove(self, delivery: Delivery) -> None:
        """Forget a report: it was acknowledged, or will never be recorded."""
        for name in delivery.logs.values():
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()
        self._settle(delivery)

    def set_aside(self, delivery: Delivery, why: str) -> None:
        """Keep a report the matchmaker refused in `rejected/`, with the reason beside it."""
        aside = self.directory / "rejected"
        aside.mkdir(exist_ok=True)
        (aside / f"{delivery.attempt_id}.json").write_text(json.dumps(delivery.document()))
        for name in delivery.logs.values():
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.directory / name, aside / name)
        (aside / f"{delivery.attempt_id}.why").write_text(why + "\n")
        self._settle(delivery)

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

    def _settle(self, delivery: Delivery) -> None:
        """The report needs its file no more: the file goes once none of its reports does."""
        if delivery.path is None:
            return
        left = self._unsettled.get(delivery.path)
        if left is not None:
            left.discard(delivery.attempt_id)
            if left:
                return
            del self._unsettled[delivery.path]
        self._unsynced.discard(delivery.path)
        with contextlib.suppress(FileNotFoundError):
            delivery.path.unlink()

    def _move_aside(self, path: Path) -> None:
        aside = self.directory / "rejected"
        with contextlib.suppress(OSError):
            aside.mkdir(exist_ok=True)
            os.replace(path, aside / path.name)

    def _remove_orphan(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > ORPHAN_AGE:
                path.unlink()


@dataclass(frozen=True)
class Outcome:
    """What became of one report, with the matchmaker's words."""

    delivery: Delivery
    verdict: Verdict
    words: str


def deliver(client: Matchmaker, outbox: Outbox, delivery: Delivery,
            timeout: float | None = None) -> tuple[Verdict, str]:
    """Send one report by its passkey (its full logs first, when kept) and say what became of
    it, with the matchmaker's words. Does not remove it from the outbox: the caller does, by
    the verdict."""
    try:
        refused = _upload_logs(client, outbox, delivery, timeout)
        if refused is not None:
            return Verdict.VOID, refused
        reply = client.report(delivery.attempt_id, delivery.passkey, delivery.report, timeout)
    except Unreachable as err:
        return Verdict.RETRY, str(err)
    if reply.ok:
        return Verdict.DELIVERED, _recorded(reply.data)
    return _refused(reply.status, reply.error)


def deliver_many(client: Matchmaker, outbox: Outbox, pilot_id: int,
                 deliveries: Sequence[Delivery], ask: Ask | None = None,
                 timeout: float | None = None) -> tuple[list[Outcome], Reply | None]:
    """Send reports of the pilot's own attempts in one request, with `ask` riding along; what
    became of each (in order), and the answer to the ask as its own reply would be (None when
    nothing was asked). A request refused as a whole (the token, a report the matchmaker
    cannot read) sends each report by its passkey instead, so that one bad report or an
    expired token keeps no other from being recorded; the refusal is then the ask's answer."""
    outcomes: dict[int, Outcome] = {}
    items = []
    try:
        for delivery in deliveries:
            refused = _upload_logs(client, outbox, delivery, timeout)
            if refused is not None:
                outcomes[id(delivery)] = Outcome(delivery, Verdict.VOID, refused)
            else:
                items.append(delivery)
        if not items:
            return [outcomes[id(delivery)] for delivery in deliveries], None
        reply = client.reports(pilot_id, [dict(delivery.report, attempt_id=delivery.attempt_id,
                                               passkey=delivery.passkey)
                                          for delivery in items], ask, timeout)
    except Unreachable as err:
        return [outcomes.get(id(delivery)) or Outcome(delivery, Verdict.RETRY, str(err))
                for delivery in deliveries], None
    results = reply.data.get("results") if reply.ok and isinstance(reply.data, Mapping) else None
    if not isinstance(results, list) or len(results) != len(items):
        for delivery in items:
            verdict, words = deliver(client, outbox, delivery, timeout)
            outcomes[id(delivery)] = Outcome(delivery, verdict, words)
        answer = Reply(reply.status, reply.data) if ask is not None and not reply.ok else None
        return [outcomes[id(delivery)] for delivery in deliveries], answer
    for delivery, result in zip(items, results):
        if isinstance(result, Mapping) and result.get("error"):
            verdict, words = _refused(int(result.get("status") or 400), str(result["error"]))
        else:
            verdict, words = Verdict.DELIVERED, _recorded(result)
        outcomes[id(delivery)] = Outcome(delivery, verdict, words)
    return [outcomes[id(delivery)] for delivery in deliveries], next_reply(reply)


def _upload_logs(client: Matchmaker, outbox: Outbox, delivery: Delivery,
                 timeout: float | None) -> str | None:
    """Send the full logs kept with a report; the matchmaker's words when it says the report
    will never be recorded, else None. Raises Unreachable."""
    for stream in STREAMS:
        text = outbox.log_bytes(delivery, stream)
        if text is None:
            continue
        reply = client.upload_log(delivery.attempt_id, delivery.passkey, stream, text, timeout)
        if reply.status in VOID_STATUSES:
            return reply.error
        if not reply.ok:
            # The tail in the report still says what happened; the full log is a bonus.
            log.warning("attempt %s: the matchmaker refused its full %s (%s)",
                        delivery.attempt_id, stream, reply.error)
    return None


def _recorded(answer: Any) -> str:
    if not isinstance(answer, Mapping):
        return "recorded"
    return "duplicate" if answer.get("duplicate") else str(answer.get("task_state") or "recorded")


def _refused(status: int, error: str) -> tuple[Verdict, str]:
    if status in VOID_STATUSES:
        return Verdict.VOID, error
    return Verdict.REJECTED, f"HTTP {status}: {error}"
