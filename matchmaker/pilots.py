"""Pilots as the matchmaker keeps them: registering, and ending, one way for every end: a pilot
that signs off, one whose batch job its factory saw end without it signing off, and one silent
for longer than `pilot_lost_after`. The attempts an ended pilot still held are requeued as lost."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from floe.config.states import ErrorClass

from . import recording
from .auth import Principal, new_token, used_message
from .engine import Engine, Pilot, Site
from .errors import Forbidden
from .passkeys import hash_secret
from .storage import writes
from .storage.database import Batch, StaleWrite


async def register(engine: Engine, token: Principal, host: str, batch_system: str = "none",
                   batch_id: str = "", resources: dict[str, Any] | None = None
                   ) -> tuple[Pilot, str]:
    """Record a new pilot at the site of `token` (a pilot token, which this uses up) and return
    it with its key, which speaks for it from then on; Forbidden when the token registered a
    pilot already."""
    now = engine.clock()
    pilot_id = engine.next_pilot_id
    engine.next_pilot_id += 1
    resources = resources or {}
    batch_system = batch_system or "none"
    site = token.site
    key = new_token("pilot-key")
    batch = writes.insert_pilot(Batch(), pilot_id, site_id=site.site_id, host=host,
                                batch_system=batch_system, batch_id=batch_id,
                                resources=resources, now=now)
    writes.pilot_key(batch, pilot_id, token_hash=token.token_hash, key_hash=hash_secret(key),
                     site_id=site.site_id, now=now, expires=token.expires)
    try:
        await engine.db.write(batch)
    except StaleWrite:
        raise Forbidden(used_message(None)) from None
    pilot = engine.add_pilot(Pilot(pilot_id, site, host, batch_id, now, now, resources,
                                   batch_system))
    return pilot, key


async def sign_off(engine: Engine, pilot: Pilot, reason: str, message: str = "",
                   suspect: bool = False) -> None:
    """End a pilot that says it leaves; attempts it still held are requeued as lost."""
    await end(engine, pilot, "exited", f"{reason}: {message}" if message else reason, suspect,
              f"pilot {pilot.pilot_id} exited ({reason}) while running it")
    if not pilot.dispatched:
        engine.metrics.empty_pilot(pilot.site.name)
        endings = engine.empty_endings.setdefault(pilot.site.name, collections.deque(maxlen=1000))
        endings.append(engine.clock())


async def batch_jobs_ended(engine: Engine, site: Site, batch_system: str,
                           batch_ids: Sequence[str], factory: str) -> list[str]:
    """End the running pilots of `site` whose batch job (`batch_system`, a batch id) the
    factory saw end: a pilot killed outright (SIGKILL, a node lost) never signs off, and
    without this its attempts would wait out the heartbeat timeout. Returns the batch ids of
    the pilots so ended."""
    wanted = set(batch_ids)
    ended = [p for p in engine.pilots.values()
             if p.site.site_id == site.site_id and p.batch_system == batch_system
             and p.batch_id in wanted]
    for pilot in ended:
        await end(engine, pilot, "lost", f"its batch job ended without the pilot signing off "
                                         f"(seen by factory {factory!r})", False,
                  f"the batch job of pilot {pilot.pilot_id} ({batch_system} {pilot.batch_id}) "
                  f"ended while it ran this, without the pilot signing off (seen by factory "
                  f"{factory!r})")
    return [p.batch_id for p in ended]


async def end(engine: Engine, pilot: Pilot, state: str, reason: str, suspect: bool = False,
              why_lost: str = "") -> None:
    """Record `pilot` as ended in `state` (exited or lost) for `reason`; the attempts it still
    held are requeued as lost, `why_lost` saying why."""
    for attempt_id in list(pilot.attempts):
        active = engine.active.get(attempt_id)
        if active is not None:
            await recording.lose(engine, active, ErrorClass.PILOT_LOST, why_lost or reason)
    await engine.db.write(writes.end_pilot(Batch(), pilot.pilot_id, state=state,
                                           now=engine.clock(), reason=reason, suspect=suspect))
    if engine.pilots.get(pilot.pilot_id) is pilot:  # counted once, by the first end
        engine.metrics.pilot_ended(pilot.site.name, state)
    engine.drop_pilot(pilot)
