"""The top-up policy: how many pilots of each shape a site should submit or remove this cycle.

A pure function of numbers, so that a test can drive it without a batch system or a clock:
the matchmaker's demand for each shape (pilots needed to hold the ready tasks that fit it first,
after other factories' queued pilots are subtracted), the part of that demand the free room of
running pilots will take anyway, this factory's queued and running pilots, the site's limits,
and whether the site is backing off after failures.

- Nothing is submitted for a shape without demand, and nothing while the site backs off.
- Under backlog the whole shortfall is submitted at once, within `max_per_cycle`, `max_queued`
  and `max_total`; a short budget is shared out one pilot at a time to each shape in turn,
  so that no shape with demand waits for another's backlog.
- Pilots that find no work although the demand counted work for them are the site's business,
  shape by shape (holds.py), not this function's.
- Queued pilots beyond the demand are removed once the surplus has lasted `removal_grace`
  seconds, so that a lull between two datasets does not throw the queue away.
- Held pilots will not run: they are removed, serve no demand and take no place in the limits
  (the site's health, outside this function, backs off from a site that holds pilots).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limits:
    max_queued: int = 20
    max_total: int = 100
    max_per_cycle: int = 10
    removal_grace: float = 300.0


@dataclass(frozen=True)
class ShapeCounts:
    """One shape as this cycle sees it, in pilots."""

    name: str
    needed: int = 0   # pilots the matchmaker's ready tasks need (net of other factories)
    room: int = 0     # of those, what the free room of running pilots will take
    queued: int = 0   # this factory's pilots of the shape waiting in the batch queue
    running: int = 0  # ... and running
    held: int = 0     # ... and held by the batch system: they will not run


@dataclass(frozen=True)
class Decision:
    submit: dict[str, int]
    remove: dict[str, int]
    """Queued pilots to take out, per shape (newest first)."""
    remove_held: dict[str, int]
    """Held pilots to take out, per shape: all of them."""
    surplus_since: dict[str, float]
    """When each shape's surplus of queued pilots began: give it to the next cycle."""
    reasons: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return any(self.submit.values()) or any(self.remove.values()) or \
            any(self.remove_held.values())


def top_up(shapes: Sequence[ShapeCounts], limits: Limits, *, now: float,
           surplus_since: Mapping[str, float] | None = None,
           backing_off: float = 0.0) -> Decision:
    """What to do this cycle; `surplus_since` is the previous decision's; `backing_off`, the
    seconds the site still waits after failures (0: it does not)."""
    previous = dict(surplus_since or {})
    reasons: list[str] = []
    submit = {s.name: 0 for s in shapes}
    remove = {s.name: 0 for s in shapes}
    remove_held = {s.name: s.held for s in shapes}
    held = sum(remove_held.values())
    if held:
        reasons.append(f"{held} held pilots removed")
    since: dict[str, float] = {}
    shortfall: dict[str, int] = {}
    for shape in shapes:
        wanted = max(0, shape.needed - shape.room)
        surplus = shape.queued - wanted
        if surplus > 0:
            began = previous.get(shape.name, now)
            if now - began >= limits.removal_grace:
                remove[shape.name] = surplus
                reasons.append(f"{shape.name}: {surplus} queued pilots have had no demand for "
                               f"{now - began:.0f} s")
            else:
                since[shape.name] = began
        elif surplus < 0:
            shortfall[shape.name] = -surplus

    if not shortfall:
        return Decision(submit, remove, remove_held, since, reasons)
    if backing_off:
        reasons.append(f"backing off after failures: nothing submitted for another "
                       f"{math.ceil(backing_off)} s")
        return Decision(submit, remove, remove_held, since, reasons)

    queued = sum(s.queued for s in shapes) - sum(remove.values())
    total = queued + sum(s.running for s in shapes)
    budget = min(limits.max_per_cycle, limits.max_queued - queued, limits.max_total - total)
    if budget <= 0:
        if sum(shortfall.values()):
            reasons.append(f"limits reached (queued {queued}/{limits.max_queued}, total "
                           f"{total}/{limits.max_total})")
        return Decision(submit, remove, remove_held, since, reasons)
    while budget > 0 and any(shortfall.values()):
        for shape in shapes:
            if budget > 0 and shortfall.get(shape.name, 0) > 0:
                submit[shape.name] += 1
                shortfall[shape.name] -= 1
                budget -= 1
    return Decision(submit, remove, remove_held, since, reasons)
