"""Whether attempts and pilots are alive: heartbeats, and the sweeps that end what went silent.

A pilot's heartbeat (one request for all its attempts) keeps its attempts and itself alive and
brings their resource use; kept in memory, it is stored by `Engine.flush`. With the list of
reports it still holds, it also tells the attempts that never reached it (`forget_unheld`).
The sweep ends attempts not heard from for `heartbeat_timeout` and idle pilots not heard from
for `pilot_lost_after`; time the matchmaker itself did not run counts against neither
(`forgive_pause`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from floe.config.resources import format_duration
from floe.config.states import ErrorClass

from . import passkeys, pilots
from .engine import ActiveAttempt, Engine, Pilot
from .errors import ApiError, Conflict
from .lifecycle import RESOURCE_STATISTICS
from .recording import lose, stale_answer

log = logging.getLogger(__name__)


async def heartbeat(engine: Engine, attempt_id: int, passkey: str,
                    usage: dict[str, float]) -> dict[str, Any]:
    """Note that an attempt is alive and what it uses now; tells the pilot to go on."""
    active = engine.active.get(attempt_id)
    if active is None:
        raise await _ended(engine, attempt_id, passkey)
    passkeys.check(attempt_id, active.passkey_hash, passkey)
    _beat(engine, active, usage, engine.clock())
    return {"action": "continue", "heartbeat_interval": engine.settings.heartbeat_interval}


async def _ended(engine: Engine, attempt_id: int, passkey: str) -> ApiError:
    """Why a heartbeat for an attempt that is no longer in flight is refused."""
    try:
        answer = await stale_answer(engine, attempt_id, passkey)
    except ApiError as refused:
        return refused
    return Conflict(f"attempt {attempt_id} has already ended ({answer['state']}); "
                    "stop sending heartbeats for it")


def _beat(engine: Engine, active: ActiveAttempt, usage: Mapping[str, float], now: float) -> None:
    """Note a heartbeat whose passkey was checked (kept in memory; `Engine.flush` stores it)."""
    active.last_heartbeat = now
    active.usage = {k: float(v) for k, v in usage.items() if k in RESOURCE_STATISTICS}
    active.usage_dirty = True
    pilot = engine.pilots.get(active.pilot_id)
    if pilot is not None:
        pilot.last_seen = now
    engine.metrics.heartbeat(active.site)


_CONTINUE = {"action": "continue"}


async def heartbeats(engine: Engine, pilot: Pilot, attempts: Sequence[Mapping[str, Any]],
                     reporting: Sequence[int] | None = None) -> dict[str, Any]:
    """One heartbeat of `pilot` for all the attempts it holds (each {"attempt_id", "passkey",
    "usage"}): each checked by its passkey as a single heartbeat is, and answered continue, or
    kill with the status and sentence the single heartbeat route would refuse it with. Also a
    keep-alive of the pilot itself. Nothing waits on a commit, unless `reporting` (the ids of
    the pilot's ended attempts whose reports wait) is given: then the two lists name all the
    pilot holds, and an attempt of the pilot that neither names, handed out longer than a
    heartbeat interval ago, never reached it and is reset (`forget_unheld`)."""
    now = engine.clock()
    pilot.last_seen = now
    answers: dict[str, Any] = {}
    active_of = engine.active
    for item in attempts:
        attempt_id = item["attempt_id"]
        active = active_of.get(attempt_id)
        try:
            if active is None:
                raise await _ended(engine, attempt_id, item["passkey"])
            passkeys.check(attempt_id, active.passkey_hash, item["passkey"])
        except ApiError as refusal:
            answers[str(attempt_id)] = {"action": "kill", "status": refusal.status,
                                        "error": refusal.message}
            continue
        _beat(engine, active, item.get("usage") or {}, now)
        answers[str(attempt_id)] = _CONTINUE
    if reporting is not None:
        held = {item["attempt_id"] for item in attempts}
        held.update(reporting)
        await forget_unheld(engine, pilot, held, now)
    return {"heartbeat_interval": engine.settings.heartbeat_interval, "attempts": answers}


async def forget_unheld(engine: Engine, pilot: Pilot, held: set[int], now: float) -> int:
    """Reset the attempts given to `pilot` that it does not hold although they were handed out
    more than a heartbeat interval before `now`: the answer that carried them was lost (a
    dropped connection, a proxy's timeout), and the pilot will never run or report them.
    Returns how many; their tasks are requeued as after a lost pilot, at once, instead of after
    `heartbeat_timeout`."""
    grace = engine.settings.heartbeat_interval
    unheld = [active for attempt_id in list(pilot.attempts) if attempt_id not in held
              and (active := engine.active.get(attempt_id)) is not None
              and now - active.started > grace]
    for active in unheld:
        reason = (f"never reached pilot {pilot.pilot_id} on {pilot.host} at {pilot.site.name}: "
                  f"its heartbeat does not hold it {format_duration(now - active.started)} "
                  "after it was handed out (the answer was lost on the way)")
        log.warning("attempt %s: %s; its task is requeued", active.attempt_id, reason)
        await lose(engine, active, ErrorClass.PILOT_LOST, reason)
    return len(unheld)


PAUSE_TOLERANCE = 1.0
"""Seconds the sweep may come late before the time is taken as a pause of the matchmaker."""


def forgive_pause(engine: Engine, now: float) -> float:
    """Time the matchmaker did not run counts against no attempt and no pilot: when the sweep
    comes later than its interval allows (the process was stopped, frozen, or its loop
    blocked), every attempt's last heartbeat and every pilot's last contact move on by the
    pause, and each attempt gets at least one heartbeat interval to be heard from again.
    Returns the pause in seconds (0 when there was none)."""
    settings = engine.settings
    last, engine.last_sweep = engine.last_sweep, now
    pause = now - last - settings.sweep_interval if last is not None else 0.0
    if pause <= PAUSE_TOLERANCE:
        return 0.0
    earliest = now - settings.heartbeat_timeout + settings.heartbeat_interval
    for active in engine.active.values():
        active.last_heartbeat = max(active.last_heartbeat + pause, earliest)
    for pilot in engine.pilots.values():
        pilot.last_seen += pause
    log.warning("the matchmaker did not run for %s (stopped, frozen or blocked); that time "
                "counts against no attempt or pilot", format_duration(pause))
    return pause


async def sweep(engine: Engine) -> int:
    """Void attempts whose pilot stopped sending heartbeats; returns how many."""
    now = engine.clock()
    timeout = engine.settings.heartbeat_timeout
    overdue = [a for a in list(engine.active.values()) if now - a.last_heartbeat > timeout]
    for active in overdue:
        await lose(engine, active, ErrorClass.PILOT_LOST,
                   f"no heartbeat for {format_duration(now - active.last_heartbeat)} from pilot "
                   f"{active.pilot_id} on {active.host} at {active.site}")
    return len(overdue)


async def sweep_pilots(engine: Engine) -> int:
    """Mark pilots silent for longer than `pilot_lost_after` (and running nothing) as lost."""
    now = engine.clock()
    limit = engine.settings.pilot_lost_after
    silent = [p for p in engine.pilots.values()
              if now - p.last_seen > limit and not p.attempts]
    for pilot in silent:
        await pilots.end(engine, pilot, "lost", f"not heard from for {format_duration(limit)}")
    return len(silent)


async def sweep_loop(engine: Engine) -> None:
    engine.last_sweep = engine.clock()
    while True:
        await asyncio.sleep(engine.settings.sweep_interval)
        try:
            forgive_pause(engine, engine.clock())
            await sweep(engine)
            await sweep_pilots(engine)
        except Exception:
            log.exception("the heartbeat sweep failed; will retry")
        engine.last_sweep = engine.clock()  # the next pause is counted from the sweep's end
