"""Demand for pilots: how much ready work a site's factory could serve with each pilot shape.

Each ready task is counted once, for the smallest of the factory's shapes it fits, and reported
with the resources it needs, so the factory can size its submissions (its top-up policy lives in
`factory/`). Factories also say what they have queued; the queued pilots of *other* factories
are subtracted first, each as the tasks it can hold, so that two factories serving the same
matchmaker do not both submit pilots for the same tasks. What a factory says it queued is
believed only up to the site's pilot tokens that have registered no pilot yet (each queued
pilot carries one), so that no factory can hide demand from the others by claiming pilots it
does not have; it lapses when the factory has not asked for `QUEUED_TTL` seconds, and is
withdrawn when the factory stops. Ready tasks that may run at the site but fit
none of its shapes (too long, too large, another OS) are reported as `unfit`, with the reason
for each shape, so that a site admin learns why they are not served. Pure logic on the working
state: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from floe.config.protocol import QUEUED_TTL
from floe.config.resources import (
    GpuKind,
    Requirements,
    Slot,
    allowed_at,
    fits,
    parse_capability,
    why_not,
)

from .engine import Engine
from .model import DatasetStatus

UNFIT_SHOWN = 3
"""The most kinds of unfit tasks (by requirements) the demand answer describes."""
EMPTY_WINDOW = 600.0
"""Pilots that ended without a task in this many seconds are reported as `ended_empty`."""


@dataclass
class Shape:
    name: str
    slot: Slot
    queued: int = 0


@dataclass
class QueuedPilots:
    """What one factory said it has queued at a site, and when."""

    time: float
    shapes: list[Shape]


def shape_gpus(shape: Mapping[str, Any]) -> tuple[GpuKind, ...]:
    """What a factory's shape says of its GPUs (as the demand route takes it): one kind for
    each, or nothing when it says nothing of them (then any GPU task is counted for it)."""
    kind = GpuKind(int(shape.get("gpu_memory") or 0), str(shape.get("gpu_model") or ""),
                   parse_capability(shape.get("compute_capability")))
    return (kind,) * int(shape.get("gpus") or 0) if kind != GpuKind() else ()


def bound_claims(shapes: list[Shape], most: int) -> None:
    """Believe at most `most` queued pilots in all, in the order the shapes come."""
    for shape in shapes:
        shape.queued = min(shape.queued, most)
        most -= shape.queued


def withdraw(engine: Engine, site: str, factory: str) -> int:
    """Forget what a factory said it has queued at a site; returns how many pilots it was."""
    claim = engine.queued_pilots.pop((site, factory), None)
    return sum(shape.queued for shape in claim.shapes) if claim else 0


def per_pilot(requirements: Requirements, slot: Slot) -> int:
    """How many tasks of these requirements one pilot of this slot holds at once."""
    limits = [slot.cpus // max(requirements.cpus, 1)]
    if requirements.memory:
        limits.append(slot.memory // requirements.memory)
    if requirements.gpus:
        limits.append(slot.gpus // requirements.gpus)
    return max(1, min(limits))


def ready_classes(engine: Engine) -> dict[Requirements, int]:
    """Ready tasks of all processing datasets, by requirements."""
    classes: dict[Requirements, int] = {}
    for dataset in engine.open.values():
        if dataset.status != DatasetStatus.PROCESSING or not dataset.queue.ready:
            continue
        for task_class in dataset.queue.classes.values():
            if task_class.ready:
                req = task_class.requirements
                classes[req] = classes.get(req, 0) + task_class.ready
    return classes


def subtract_queued(classes: dict[Requirements, int], queued: list[QueuedPilots]) -> None:
    """Take away the tasks that other factories' queued pilots will hold."""
    for pilots in queued:
        for shape in pilots.shapes:
            pilots = shape.queued
            for req in sorted(classes, key=lambda r: (-r.gpus, -r.cpus, -r.memory)):
                if pilots <= 0:
                    break
                if not classes[req] or not fits(req, shape.slot):
                    continue
                each = per_pilot(req, shape.slot)
                taken = min(classes[req], pilots * each)
                classes[req] -= taken
                pilots -= -(-taken // each)


def free_room(engine: Engine, site: str, now: float) -> list[Slot]:
    """What this site's pilots offered when they last asked and got nothing, while recent: the
    room that will take ready tasks at their next ask, without any new pilot."""
    recent = 3 * engine.settings.idle_wait
    return [p.free for p in engine.pilots.values()
            if p.site.name == site and p.free is not None and now - p.free_since <= recent]


def absorb(classes: dict[Requirements, int], room: list[Slot]) -> dict[Requirements, int]:
    """Take from `classes` the tasks that the free `room` of running pilots holds; returns
    them by requirements."""
    taken: dict[Requirements, int] = {}
    for slot in room:
        for req in sorted(classes, key=lambda r: (-r.gpus, -r.cpus, -r.memory)):
            while classes[req] and fits(req, slot):
                classes[req] -= 1
                taken[req] = taken.get(req, 0) + 1
                slot = slot.less(req)
    return taken


def attribute(classes: dict[Requirements, int], shapes: list[Shape]) -> list[dict[str, int]]:
    """Each shape's share of `classes`: tasks counted for the smallest shape they fit."""
    order = sorted(range(len(shapes)), key=lambda i: (shapes[i].slot.gpus, shapes[i].slot.cpus,
                                                      shapes[i].slot.memory,
                                                      shapes[i].slot.seconds))
    result = [{"tasks": 0, "cpus": 0, "memory": 0, "gpus": 0, "fitting": 0,
               "pilots_needed": 0} for _ in shapes]
    for req, count in classes.items():
        if not count:
            continue
        first = True
        for i in order:
            if not fits(req, shapes[i].slot):
                continue
            result[i]["fitting"] += count
            if first:
                first = False
                entry = result[i]
                entry["tasks"] += count
                entry["cpus"] += count * req.cpus
                entry["memory"] += count * req.memory
                entry["gpus"] += count * req.gpus
                entry["pilots_needed"] += -(-count // per_pilot(req, shapes[i].slot))
    return result


def unfit(classes: dict[Requirements, int], site: str, shapes: list[Shape]) -> dict[str, Any]:
    """The ready tasks that may run at `site` but fit none of its `shapes`: how many, and for
    the most numerous kinds of them, why not, shape by shape."""
    kinds = sorted(((count, req) for req, count in classes.items()
                    if count and allowed_at(req, site)
                    and not any(fits(req, shape.slot) for shape in shapes)),
                   key=lambda kind: -kind[0])
    return {"tasks": sum(count for count, _ in kinds),
            "kinds": [{"tasks": count,
                       "why": "; ".join(f"shape {shape.name}: "
                                        f"{why_not(req, shape.slot, 'the shape')}"
                                        for shape in shapes) or "the request named no shape"}
                      for count, req in kinds[:UNFIT_SHOWN]]}


def demand(engine: Engine, site: str, factory: str, shapes: list[Shape]) -> dict[str, Any]:
    """The answer to a factory's demand request; records what it has queued."""
    now = engine.clock()
    queued = engine.queued_pilots
    for key in [k for k, q in queued.items() if now - q.time > QUEUED_TTL]:
        del queued[key]
    classes = ready_classes(engine)
    misfits = unfit(classes, site, shapes)
    subtract_queued(classes, [q for k, q in queued.items() if k != (site, factory)])
    queued[(site, factory)] = QueuedPilots(now, shapes)
    result = attribute(classes, shapes)
    room = attribute(absorb(dict(classes), free_room(engine, site, now)), shapes)
    for shape, entry, held in zip(shapes, result, room, strict=True):
        entry["name"] = shape.name
        entry["room"] = held["pilots_needed"]
    pilots = [p for p in engine.pilots.values() if p.site.name == site]
    endings = engine.empty_endings.get(site, ())
    return {"site": site, "factory": factory, "shapes": result, "unfit": misfits,
            "black_holes": [suspect.to_dict() for suspect in engine.black_holes.current(now, site)],
            "pilots": {"running": len(pilots),
                       "idle": sum(1 for p in pilots if not p.attempts and p.empty_asks),
                       "ended_empty": sum(1 for t in endings if now - t <= EMPTY_WINDOW)}}
