"""Pilots as the matchmaker keeps them: registering, and signing off (with what they still ran)."""

from __future__ import annotations

import collections
import json
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
    pilot = engine.pilots[pilot_id] = Pilot(pilot_id, site, host, batch_id, now, now, resources)
    return pilot


async def sign_off(engine: Engine, pilot: Pilot, reason: str, message: str = "",
                   suspect: bool = False) -> None:
    """End a pilot; attempts it still held are requeued as lost."""
    for attempt_id in list(pilot.attempts):
        active = engine.active.get(attempt_id)
        if active is not None:
            await outcomes.lose(engine, active, ErrorClass.PILOT_LOST,
                                f"pilot {pilot.pilot_id} exited ({reason}) while running it")
    await engine.db.write(Batch().add(END_PILOT, (
        "exited", engine.clock(), f"{reason}: {message}" if message else reason, int(suspect),
        pilot.pilot_id)))
    engine.pilots.pop(pilot.pilot_id, None)
    if not pilot.dispatched:
        empty = engine.metrics.empty_pilots
        empty[pilot.site.name] = empty.get(pilot.site.name, 0) + 1
        endings = engine.empty_endings.setdefault(pilot.site.name, collections.deque(maxlen=1000))
        endings.append(engine.clock())
