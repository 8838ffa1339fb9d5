"""The pilot's heartbeat: once per interval, one request for every attempt it holds (running,
queued, or ended with its report still waiting), which keeps them and the pilot itself alive on
the matchmaker and brings their resource use.

Naming the attempts whose reports wait (`reporting`) makes the list complete, so the matchmaker
can reset an attempt it handed out that never reached the pilot. Where the pilot token cannot
speak for them (it expired, or the pilot is unknown), each attempt's passkey still can: one
heartbeat per attempt. The answer says which attempts are void and must be killed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from floe.pilot.client import Matchmaker, Unreachable
from floe.pilot.lanes import Attempt

log = logging.getLogger("floe.pilot")


class Heartbeat:
    """When the next heartbeat is due, and sending it."""

    def __init__(self, client: Matchmaker) -> None:
        self.client = client
        self.interval = 60.0
        self.due = math.inf

    def set_interval(self, interval: float | None) -> None:
        """The interval the matchmaker asks for (registration, an attempt, a heartbeat)."""
        if interval:
            self.interval = float(interval)

    def heard(self, moment: float) -> None:
        """An ask with `hold`, sent at `moment`, was heard as the pilot's heartbeat (and said
        that it held no attempt): the next is due an interval after it. So an idle pilot whose
        asks are held sends none, and the work such an ask brings waits an interval for its
        first."""
        self.due = moment + self.interval

    def before(self, moment: float) -> None:
        """Be due no later than one interval after `moment` (an attempt handed out then)."""
        self.due = min(self.due, moment + self.interval)

    def send(self, now: float, pilot_id: int | None, beating: Sequence[Attempt],
             reporting: Sequence[int]) -> list[tuple[Attempt, str]]:
        """Send the heartbeat of `beating` (as the pilot `pilot_id`, or one per attempt without
        one) with the ids of the attempts whose reports wait; the attempts the matchmaker says
        are void, with why."""
        self.due = now + self.interval
        usage = {a.attempt_id: a.run.usage().to_dict() if a.run is not None else {}
                 for a in beating}
        if pilot_id is None:
            return self._one_by_one(beating, usage)
        try:
            reply = self.client.heartbeats(pilot_id, [
                {"attempt_id": a.attempt_id, "passkey": a.passkey, "usage": usage[a.attempt_id]}
                for a in beating], reporting)
        except Unreachable as err:
            log.warning("no heartbeat for %d attempts: %s", len(beating), err)
            return []
        if not reply.ok:
            log.warning("the pilot's heartbeat was refused (%s); sending one per attempt",
                        reply.error)
            return self._one_by_one(beating, usage)
        self.set_interval(reply.data.get("heartbeat_interval"))
        answers = reply.data.get("attempts") or {}
        void = []
        for attempt in beating:
            answer = answers.get(str(attempt.attempt_id)) or {}
            if answer.get("action") == "kill":
                void.append((attempt, str(answer.get("error") or "void on the matchmaker")))
        return void

    def _one_by_one(self, beating: Sequence[Attempt],
                    usage: Mapping[int, Mapping[str, Any]]) -> list[tuple[Attempt, str]]:
        void = []
        for attempt in beating:
            try:
                reply = self.client.heartbeat(attempt.attempt_id, attempt.passkey,
                                              usage[attempt.attempt_id])
            except Unreachable as err:
                log.warning("attempt %s: no heartbeat: %s", attempt.attempt_id, err)
                break
            if reply.status in (403, 404, 409):
                void.append((attempt, reply.error))
            elif not reply.ok:
                log.warning("attempt %s: heartbeat refused: %s", attempt.attempt_id,
                            reply.error)
        return void
