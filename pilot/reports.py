"""The reports of a pilot's finished attempts, from the moment a lane hands them over until the
matchmaker acknowledges them.

Finished tasks' reports are kept in the outbox as one batch (one file) before they are sent,
made durable on disk (its syncs) only if they are still there when the sending is over, in one
bulk report per request that carries the pilot's next ask when asking is due; the reports of
short tasks may wait up to `report_linger` for others to go with them. A report the matchmaker
cannot be reached for waits (on disk) with a backoff; one it refuses is set aside in the outbox;
reports an earlier pilot left on the same scratch go one by one, by their passkeys. Until it is
acknowledged, a report's attempt is still held: the heartbeat names it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from floe.config.protocol import MAX_ERROR_MESSAGE, MAX_REPORTS_BYTES
from floe.config.states import ErrorClass
from floe.pilot.backoff import Backoff
from floe.pilot.client import Ask, Matchmaker, Reply
from floe.pilot.outbox import Delivery, Outbox, Verdict, deliver, deliver_many
from floe.pilot.runner import TaskResult

if TYPE_CHECKING:
    from floe.pilot.lanes import Finished

log = logging.getLogger("floe.pilot")

MAX_BATCH = 500
"""The most reports one request carries."""
MAX_BATCH_BYTES = MAX_REPORTS_BYTES // 2
"""About the most bytes of reports one request carries: well below what the matchmaker takes."""

AskPlan = tuple[Ask, int]
"""An ask to make, with the seconds left in the slot when it was planned."""


@dataclass
class Pending:
    """A report waiting in the outbox, with what the overhead figure needs; `asked_at` None: a
    report an earlier pilot left, which only its attempt's passkey speaks for."""

    delivery: Delivery
    asked_at: float | None = None
    runtime: float = 0.0


@dataclass(frozen=True)
class Timing:
    """One delivered attempt, on the pilot's clock: when it was asked for, when its report was
    acknowledged, and how long the task itself ran (as the runner measured it)."""

    attempt_id: int
    asked: float
    acknowledged: float
    runtime: float

    @property
    def overhead(self) -> float:
        """What the pilot and the matchmaker added to the task's own runtime."""
        return self.acknowledged - self.asked - self.runtime


@dataclass(frozen=True)
class Answered:
    """The answer to an ask that rode on reports, with the plan it was asked by and when."""

    reply: Reply
    plan: AskPlan
    asked: float


class Reports:
    """The reports a pilot has not delivered yet: `unkept` (collected, not yet in the outbox)
    and `pending` (in the outbox, by attempt id)."""

    def __init__(self, outbox: Outbox, client: Matchmaker, clock: Callable[[], float],
                 max_backoff: float) -> None:
        self.outbox = outbox
        self.client = client
        self.clock = clock
        self.unkept: list[Finished] = []
        self.pending: dict[int, Pending] = {}
        self.timings: deque[Timing] = deque(maxlen=100_000)
        self._deliver_after = 0.0
        self._backoff = Backoff(cap=max_backoff)

    @property
    def waiting(self) -> bool:
        return bool(self.unkept or self.pending)

    @property
    def deliver_after(self) -> float:
        return self._deliver_after

    def load_earlier(self) -> None:
        """Take up the reports an earlier pilot left in the outbox."""
        for delivery in self.outbox.pending():
            log.info("attempt %s: a report left by an earlier pilot is in the outbox; "
                     "delivering it", delivery.attempt_id)
            self.pending[delivery.attempt_id] = Pending(delivery)

    def holding(self) -> list[int]:
        """The ids of this pilot's attempts whose reports wait (they are still its own)."""
        return [done.attempt.attempt_id for done in self.unkept] + [
            attempt_id for attempt_id, pending in self.pending.items()
            if pending.asked_at is not None]

    def add(self, done: Finished) -> None:
        """A finished attempt's report (or the lost report of one the pilot will not run)."""
        self.unkept.append(done)

    def due(self, now: float, linger: float | None) -> bool:
        """Whether the collected reports are to go now; with `linger`, they may wait that long
        after the first of them for more to go with them."""
        if not self.unkept:
            return False
        if linger is None or len(self.unkept) >= MAX_BATCH:
            return True
        return now >= self.unkept[0].at + linger

    def keep(self, sending: bool = False) -> None:
        """Keep the collected reports in the outbox, as one batch; `sending`: `deliver` is
        called next, and makes them durable if they are still there after it (while a backoff
        holds the sending back, they are made durable now)."""
        if not self.unkept:
            return
        deliveries = [Delivery(done.attempt.attempt_id, done.attempt.passkey, done.report,
                               done.logs) for done in self.unkept]
        try:
            self.outbox.put_many(deliveries,
                                 durable=not sending or self.clock() < self._deliver_after)
        except OSError as err:
            log.error("attempts %s: cannot keep their reports in %s (%s); they will be sent "
                      "from memory only", ", ".join(str(d.attempt_id) for d in deliveries),
                      self.outbox.directory, err.strerror or err)
        for done, delivery in zip(self.unkept, deliveries):
            wall = done.result.usage.wall_time if done.result is not None else 0.0
            self.pending[delivery.attempt_id] = Pending(delivery, done.attempt.asked_at, wall)
        self.unkept = []

    def deliver(self, now: float, pilot_id: int | None,
                plan_ask: Callable[[], AskPlan | None]) -> Answered | None:
        """Send what waits in the outbox, if its backoff allows: an earlier pilot's reports one
        by one, this pilot's in bulk (all one by one while it has no pilot id or token); the
        last bulk request carries the ask `plan_ask` plans, whose answer is returned. What
        is still in the outbox after it is made durable there."""
        try:
            return self._deliver(now, pilot_id, plan_ask)
        finally:
            try:
                self.outbox.sync()
            except OSError as err:
                log.error("reports waiting in %s may not survive a crash of this node: %s",
                          self.outbox.directory, err.strerror or err)

    def _deliver(self, now: float, pilot_id: int | None,
                 plan_ask: Callable[[], AskPlan | None]) -> Answered | None:
        if not self.pending or now < self._deliver_after:
            return None
        theirs = [p for p in self.pending.values() if p.asked_at is None]
        ours = [p for p in self.pending.values() if p.asked_at is not None]
        if pilot_id is None:
            theirs, ours = theirs + ours, []
        for pending in sorted(theirs, key=lambda p: p.delivery.attempt_id):
            verdict, words = deliver(self.client, self.outbox, pending.delivery)
            if not self._settled(pending, verdict, words):
                return None
        batches = _batches(sorted(ours, key=lambda p: p.delivery.attempt_id))
        for position, batch in enumerate(batches):
            plan = plan_ask() if position == len(batches) - 1 else None
            asked = self.clock()
            outcomes, answer = deliver_many(self.client, self.outbox, pilot_id,
                                            [pending.delivery for pending in batch],
                                            plan[0] if plan is not None else None)
            for pending, outcome in zip(batch, outcomes):
                if not self._settled(pending, outcome.verdict, outcome.words):
                    return None
            if answer is not None and plan is not None:
                return Answered(answer, plan, asked)
        return None

    def _settled(self, pending: Pending, verdict: Verdict, words: str) -> bool:
        """Act on what became of one report; False when the matchmaker could not be reached
        (the report waits, and so do the others, for the backoff)."""
        attempt_id = pending.delivery.attempt_id
        if verdict is Verdict.RETRY:
            delay = self._backoff.next()
            self._deliver_after = self.clock() + delay
            log.warning("%d reports wait: %s; trying again in %.1fs", len(self.pending),
                        words, delay)
            return False
        self._backoff.reset()
        del self.pending[attempt_id]
        if verdict is Verdict.DELIVERED:
            self.outbox.remove(pending.delivery)
            if pending.asked_at is not None:
                self.timings.append(Timing(attempt_id, pending.asked_at, self.clock(),
                                           pending.runtime))
            log.debug("attempt %s: reported (%s)", attempt_id, words)
        elif verdict is Verdict.VOID:
            self.outbox.remove(pending.delivery)
            log.warning("attempt %s: the matchmaker will not record its report: %s",
                        attempt_id, words)
        else:
            self.outbox.set_aside(pending.delivery, words)
            log.error("attempt %s: the matchmaker refused its report (%s); it is kept in "
                      "%s", attempt_id, words, self.outbox.directory / "rejected")
        return True


def _batches(pending: list[Pending]) -> list[list[Pending]]:
    """Reports in groups that one request each can carry."""
    batches: list[list[Pending]] = []
    size = MAX_BATCH_BYTES
    for item in pending:
        report = item.delivery.report
        weight = 1024 + sum(len(report.get(key) or "") for key in
                            ("stdout_tail", "stderr_tail", "error_message"))
        if not batches or len(batches[-1]) >= MAX_BATCH or size + weight > MAX_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += weight
    return batches


def report_of(result: TaskResult) -> dict[str, Any]:
    """The report body for a finished attempt."""
    report: dict[str, Any] = {
        "exit_code": None if result.exit_code is None else max(-255, min(255, result.exit_code)),
        "error_class": result.error_class.value if result.error_class else None,
        "error_message": result.error_message[:MAX_ERROR_MESSAGE],
        "usage": result.usage.to_dict(),
        "statistics": dict(result.statistics),
        "outputs": [dict(output) for output in result.outputs],
        "stdout_tail": result.stdout_tail,
        "stderr_tail": result.stderr_tail,
    }
    if result.overuse is not None:
        report["overuse"] = result.overuse.to_dict()
    if result.warnings:
        report["warnings"] = list(result.warnings)
    return report


def lost_report(message: str, error: ErrorClass = ErrorClass.PILOT_LOST) -> dict[str, Any]:
    """The report for an attempt the pilot could not see through (or, `NOT_RUN`, gave back
    unstarted): the task is requeued."""
    return {"exit_code": None, "error_class": error.value,
            "error_message": message[:MAX_ERROR_MESSAGE]}
