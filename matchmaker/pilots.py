"""Pilots as the matchmaker keeps them: registering, signing off (with what they still ran), and
ending those whose batch job their factory saw end without them signing off."""

from __future__ import annotations

import collections
import json
from collections.abc import Sequence
from typing import Any

from config.states import ErrorClass

from . import outcomes
from .engine import Engine, Pilot, Site
from .storage.database import Batch
from .storage.writes import END_PILOT, INSERT_PILOT


async def register(engine: Engine, site: Site, host: str, batch_system: str = "none",
                   batch_id: str = "", resources: dict[str, Any] | None = None) -> Pilot:
    """Record a new pilot at `site` and return it."""
    now = engine.clock()
    pilot_id = engine.next_pilot_id
    engine.next_pilot_id += 1
    resources = resources or {}
    await engine.db.write(Batch().add(INSERT_PILOT, (
        pilot_id, site.site_id, host, batch_system or "none", batch_id, json.dumps(resources),
        now, now)))
    pilot = engine.pilots[pilot_id] = Pilot(pilot_id, site, host, batch_id, now, now, resources,
                                            batch_system or "none")
    return pilot


async def sign_off(engine: Engine, pilot: Pilot, reason: str, message: str = "",
                   suspect: bool = False) -> None:
    """End a pilot; attempts it still held are requeued as lost."""
    await _end(engine, pilot, "exited", f"{reason}: {message}" if message else reason, suspect,
               f"pilot {pilot.pilot_id} exited ({reason}) while running it")
    if not pilot.dispatched:
        empty = engine.metrics.empty_pilots
        empty[pilot.site.name] = empty.get(pilot.site.name, 0) + 1
        endings = engine.empty_endings.setdefault(pilot.site.name, collections.deque(maxlen=1000))
        endings.append(engine.clock())


async def batch_jobs_ended(engine: Engine, site: Site, batch_system: str,
                           batch_ids: Sequence[str], factory: str) -> list[str]:
    """End the running pilots of `site` whose batch job (`batch_system`, a batch id) the
    factory saw end: a pilot killed outright (SIGKILL, a node lost) never signs off, and
    without this its attempts would wait out the heartbeat timeout. Their attempts are requeued
    as lost; returns the batch ids of the pilots so ended."""
    wanted = set(batch_ids)
    ended = [p for p in engine.pilots.values()
             if p.site.site_id == site.site_id and p.batch_system == batch_system
             and p.batch_id in wanted]
    for pilot in ended:
        await _end(engine, pilot, "lost", f"its batch job ended without the pilot signing off "
                                          f"(seen by factory {factory!r})", False,
                   f"the batch job of pilot {pilot.pilot_id} ({batch_system} {pilot.batch_id}) "
                   f"ended while it ran this, without the pilot signing off (seen by factory "
                   f"{factory!r})")
    return [p.batch_id for p in ended]


async def _end(engine: Engine, pilot: Pilot, state: str, reason: str, suspect: bool,
               why_lost: str) -> None:
    """Record `pilot` as ended in `state` for `reason`; the attempts it still held are requeued
    as lost, `why_lost` saying why."""
    for attempt_id in list(pilot.attempts):
        active = engine.active.get(attempt_id)
        if active is not None:
            await outcomes.lose(engine, active, ErrorClass.PILOT_LOST, why_lost)
    await engine.db.write(Batch().add(END_PILOT, (
        state, engine.clock(), reason, int(suspect), pilot.pilot_id)))
    engine.pilots.pop(pilot.pilot_id, None)
