"""Pilot shapes held back: a shape whose pilots find less than it promises, or keep ending without
a task while the work the demand counted for them waits, is not submitted again until a back-off
passes, and then one pilot at a time.

A pilot reports what its shape promised (FLOE_SHAPE_*) beside what it measured; the matchmaker
hands the shortfall to the factory with the pilot's registration, and says which ended pilots
were never handed a task (`empty`). Each finding that begins a wait
doubles it (from the site's `backoff` up to `max_backoff`); one seen during the wait leaves it as
it is. When the wait is over, one pilot of the shape may go to try again, and the next only after
another wait, so that a shape that stays short costs at most one pilot per wait; what that
pilot finds begins the next, longer wait. A pilot of the
shape that finds its promise kept ends a hold for a shortfall, one that runs a task ends a hold
for emptiness, and a change of the site's config ends both.
Times are given by the caller: no clock is read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from floe.config.resources import format_duration, format_size

FIXES = {
    ("gpus", "slurm"): "the partition has no GPUs, or its nodes need a --gres request: choose "
                       "a GPU partition (options.partition), or add the cluster's "
                       "\"--gres=gpu:N\" to the site's directives",
    ("gpus", "htcondor"): "the slots the pool matched assign no GPU: check that the pool has "
                          "GPU slots that honour request_gpus (a partitionable slot with GPUs)",
    ("gpus", "sge"): "set the sge option gpu_resource to the consumable this cluster names "
                     "its GPUs by",
    ("gpus", "pbs"): "the queue's nodes give no GPU: choose a GPU queue (options.queue), or "
                     "add the cluster's GPU request to the site's directives",
    ("gpus", "local"): "the pilot found none of the GPUs it was given: where NVML cannot be "
                       "used (the finding says), declare the machine's GPUs with "
                       "FLOE_NODE_GPUS in the site's environment; where the plugin gave it "
                       "none, list them in the local plugin's gpus option",
    ("memory", None): "the nodes (or the batch system's limit) give less memory than the "
                      "shape: lower the shape's memory, or choose a partition or queue of "
                      "bigger nodes",
    ("cpus", None): "the batch system gives fewer CPUs than the shape: lower the shape's cpus, "
                    "or choose a partition or queue that grants them",
    ("walltime", None): "the batch system gives less time than the shape's walltime (a "
                        "partition's or queue's time limit): lower the shape's walltime",
}


def likely_fix(resource: str, plugin: str) -> str:
    """What an admin most likely changes when pilots of `plugin` find `resource` short."""
    return FIXES.get((resource, plugin)) or FIXES.get((resource, None)) or \
        f"the {plugin} jobs do not get the {resource} the shape asks for"


def describe(item: dict[str, Any]) -> str:
    """One finding as a person reads it: `gpus: promised 1, found 0 (why)`."""
    resource = item.get("resource", "?")
    show = {"memory": format_size, "walltime": format_duration}.get(resource, str)
    try:
        promised, found = show(item["promised"]), show(item["found"])
    except (KeyError, TypeError, ValueError):
        promised, found = item.get("promised"), item.get("found")
    source = f" ({item['source']})" if item.get("source") else ""
    return f"{resource}: promised {promised}, found {found}{source}"


@dataclass
class Hold:
    """Why a shape is held back, and until when."""

    why: str
    tries: int
    wait: float
    until: float
    kind: str = "short"  # or "empty": what `release` ends
    tried: bool = False  # a pilot went to try again since the wait began


class Holds:
    """The held shapes of one site."""

    def __init__(self, backoff: float = 30.0, max_backoff: float = 1800.0) -> None:
        self.backoff, self.max_backoff = backoff, max_backoff
        self.held: dict[str, Hold] = {}

    def hold(self, shape: str, why: str, now: float, kind: str = "short") -> Hold | None:
        """A pilot of `shape` found it short (or, `kind` "empty", ended without a task): the
        Hold when this begins a wait (to be said), None when the shape already waits."""
        hold = self.held.get(shape)
        if hold is not None and now < hold.until and not hold.tried:
            hold.why, hold.kind = why, kind
            return None
        tries = 1 if hold is None else hold.tries + 1
        wait = min(self.backoff * 2 ** (tries - 1), self.max_backoff)
        self.held[shape] = hold = Hold(why, tries, wait, now + wait, kind)
        return hold

    def release(self, shape: str, kind: str = "short") -> bool:
        """A pilot of `shape` found what it promised (`kind` "short") or ran a task ("empty"):
        True when that ended a hold of this kind."""
        hold = self.held.get(shape)
        if hold is None or hold.kind != kind:
            return False
        del self.held[shape]
        return True

    def clear(self) -> bool:
        """Forget every hold (the site's config changed); True when there was one."""
        had = bool(self.held)
        self.held.clear()
        return had

    def allowed(self, shape: str, count: int, now: float) -> int:
        """How many of `count` pilots of `shape` may be submitted now: all when it is not held,
        none while it waits, one when the wait is over (and none for another wait after it)."""
        hold = self.held.get(shape)
        if hold is None:
            return count
        if now < hold.until or not count:
            return 0
        hold.until, hold.tried = now + hold.wait, True
        return 1

    def to_dict(self, now: float) -> dict[str, Any]:
        return {shape: {"why": hold.why, "kind": hold.kind, "tries": hold.tries,
                        "wait_left": max(0.0, round(hold.until - now, 1))}
                for shape, hold in self.held.items()}
