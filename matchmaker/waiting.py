"""Why a task that is not running waits, in a sentence its owner can act on.

A ready task waits for a pilot that fits it. Whether one can come is read from what the
matchmaker knows now: the running pilots' slots (as they registered them, with the time that has
passed since), and the pilot shapes each site's factory offered in its last demand request
(`engine.queued_pilots`, fresh for `QUEUED_TTL`). A task that fits none of them is told so,
shape by shape as the factory's log says it; one that a site could start a pilot for waits for
that pilot; one that running pilots fit waits its turn, behind the users (and the owner's own
datasets) that fair share serves first; a retried one may back off first, or avoid the host it
failed on. A waiting task names the dependencies it waits for, a suspended one why it is held.
Running, complete and failed tasks have no `why` (a failed one has its reason). Pure logic on
the working state: no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from floe.config.protocol import QUEUED_TTL
from floe.config.resources import Requirements, Slot, allowed_at, fits, format_duration, why_not
from floe.config.states import TaskState

from .engine import Engine
from .model import DatasetState, DatasetStatus

SHOWN = 4
"""The most sites, shapes or pilots one sentence names."""


class Explainer:
    """Answers `why` for many tasks at once, working out each kind of ready task (dataset and
    requirements) once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.now = engine.clock()
        self._ready: dict[tuple[int, Requirements], str] = {}
        self._groups: dict[Slot, list[tuple[int, Any]]] | None = None

    def why(self, dataset: DatasetState, task_id: int, reason: str | None = None) -> str | None:
        """Why the task is not running now, or None when it is running or has ended (or is
        not created yet). `reason`, the task's recorded reason (a retry's), is added to it."""
        offset = task_id - dataset.base
        if not 0 <= offset < dataset.materialized * dataset.ntasks:
            return None
        said = self._why(dataset, task_id)
        return f"{said} (last: {reason})" if said and reason else said

    def _why(self, dataset: DatasetState, task_id: int) -> str | None:
        state = dataset.state(task_id)
        if state is TaskState.READY:
            said = self.ready(dataset, dataset.requirements(task_id))
            later = dataset.later.get(task_id)
            if later is None:
                return said
            if self.now < later.not_before:
                wait = format_duration(math.ceil(later.not_before - self.now))
                return f"backing off before its retry: it may run again in {wait}"
            if later.holds(later.host, self.now, len(self.engine.hosts)):
                wait = format_duration(math.ceil(later.elsewhere_until - self.now))
                return f"not on {later.host}, where it failed, for {wait}; {said}"
            return said
        if state is TaskState.WAITING:
            return self._dependencies(dataset, task_id)
        if state is TaskState.SUSPENDED:
            if dataset.status == DatasetStatus.SUSPENDED:
                return "suspended: its dataset is suspended (resume it to go on)"
            return "suspended: held for debugging after it failed (reset it to run it again)"
        return None

    def ready(self, dataset: DatasetState, requirements: Requirements) -> str:
        """Why ready tasks of this dataset with these requirements wait."""
        key = (dataset.id, requirements)
        said = self._ready.get(key)
        if said is None:
            said = self._ready[key] = self._explain_ready(dataset, requirements)
        return said

    def summary(self, dataset: DatasetState) -> list[dict[str, Any]]:
        """The dataset's ready tasks by task and requirements, with why each kind waits, most
        numerous first; retried tasks that back off are a kind of their own."""
        names = [t.name for t in dataset.config.tasks]
        backing: dict[tuple[int, Requirements], list[float]] = {}
        for task_id, later in dataset.later.items():
            if self.now < later.not_before and dataset.is_ready(task_id):
                key = (dataset.locate(task_id)[1], dataset.requirements(task_id))
                backing.setdefault(key, []).append(later.not_before)
        kinds = []
        for c in dataset.queue.classes.values():
            waits = backing.get((c.task_index, c.requirements), [])
            if c.ready > len(waits):
                kinds.append({"task": names[c.task_index], "tasks": c.ready - len(waits),
                              "why": self.ready(dataset, c.requirements)})
            if waits:
                first = format_duration(math.ceil(min(waits) - self.now))
                kinds.append({"task": names[c.task_index], "tasks": len(waits),
                              "why": f"backing off before their retry: the first may run "
                                     f"again in {first}"})
        return sorted(kinds, key=lambda kind: -kind["tasks"])

    # -- ready tasks ------------------------------------------------------------------------------
    def _explain_ready(self, dataset: DatasetState, requirements: Requirements) -> str:
        groups = self._pilot_groups()
        fitting = 0
        for kind, members in groups.items():
            if fits(requirements, dataclasses.replace(kind, seconds=requirements.walltime)):
                fitting += sum(1 for left, _ in members if left >= requirements.walltime)
        if fitting:
            return self._turn(dataset, requirements, fitting)
        offers = self._shapes()
        starts = [(site, shape.name) for site, shapes in offers.items() for shape in shapes
                  if allowed_at(requirements, site) and fits(requirements, shape.slot)]
        if starts:
            where = ", ".join(f"{name} at {site}" for site, name in starts[:SHOWN])
            return (f"no pilot that fits it is running yet; its site's factory can start one "
                    f"({where})")
        reasons = [f"{site} {shape.name}: {why_not(requirements, shape.slot, 'the shape')}"
                   for site, shapes in offers.items() for shape in shapes
                   if allowed_at(requirements, site)][:SHOWN]
        if reasons:
            return "fits none of the pilot shapes the sites offer: " + "; ".join(reasons)
        if offers:
            return ("no site it may run at offers pilots: the sites' factories serve "
                    + ", ".join(sorted(offers)[:SHOWN]))
        if groups:
            said = []
            for kind, members in list(groups.items())[:SHOWN]:
                left, pilot = max(members, key=lambda member: member[0])
                said.append(f"pilot {pilot.pilot_id} at {pilot.site.name}: "
                            f"{why_not(requirements, dataclasses.replace(kind, seconds=left))}")
            running = sum(len(members) for members in groups.values())
            return (f"none of the {running} running pilots fits it, and no factory has said "
                    "what pilots it can start: " + "; ".join(said))
        if self.engine.pilots:
            return ("no running pilot has said it has a slot for it, and no factory has said "
                    "what pilots it can start")
        return ("no pilot is running, and no factory has said what pilots it can start (start "
                "`floe factory` for a site, or `floe pilot`)")

    def _turn(self, dataset: DatasetState, requirements: Requirements, pilots: int) -> str:
        """Ready tasks that running pilots fit: who fair share serves first."""
        engine = self.engine
        ahead = 0
        for user_id in engine.user_usage.ranked():
            if user_id == dataset.user_id:
                break
            owner = engine.owners.get(user_id)
            if owner is not None and owner.ready > 0:
                ahead += 1
        mine = 0
        for dataset_id in engine.dataset_usage.ranked(dataset.user_id):
            if dataset_id == dataset.id:
                break
            other = engine.datasets.get(dataset_id)
            if other is not None and other.queue.ready > 0:
                mine += 1
        fit = f"{pilots} running pilot{'s' if pilots != 1 else ''} fit{'' if pilots != 1 else 's'}"
        if not ahead and not mine:
            return f"next in line: {fit} it, and it goes to the first that asks"
        first = [f"{ahead} user{'s' if ahead != 1 else ''} with ready tasks"] if ahead else []
        if mine:
            first.append(f"{mine} of the owner's datasets")
        return f"waiting its turn: {fit} it; fair share serves {' and '.join(first)} first"

    def _pilot_groups(self) -> dict[Slot, list[tuple[int, Any]]]:
        """The running pilots by their whole slot (not what is free of it now), each with its
        seconds left now: pilots come in few kinds, so a kind of task is checked against each
        kind once."""
        if self._groups is None:
            self._groups = {}
            for pilot in self.engine.pilots.values():
                slot, kind = pilot.slot, pilot.kind
                if slot is None:  # it registered no slot: what it last offered, if it did
                    if pilot.free is None:
                        continue
                    slot, kind = pilot.free, dataclasses.replace(pilot.free, seconds=0)
                left = max(0, int(slot.seconds - (self.now - pilot.registered)))
                self._groups.setdefault(kind, []).append((left, pilot))
        return self._groups

    def _shapes(self) -> dict[str, list[Any]]:
        """The shapes each site's factories offered in the last `QUEUED_TTL` seconds."""
        offers: dict[str, list[Any]] = {}
        for (site, _), queued in self.engine.queued_pilots.items():
            if self.now - queued.time <= QUEUED_TTL:
                offers.setdefault(site, []).extend(queued.shapes)
        return offers

    # -- waiting and suspended tasks ----------------------------------------------------------
    def _dependencies(self, dataset: DatasetState, task_id: int) -> str:
        job, index = dataset.locate(task_id)
        tasks = dataset.config.tasks
        pending = []
        for depended in tasks[index].depends:
            state = dataset.state(dataset.task_id(job, depended))
            if state is not TaskState.COMPLETE:
                pending.append(f"{tasks[depended].name} ({state.value})")
        if not pending:
            return "waiting: its dependencies are complete; it is made ready at once"
        return "waiting on " + ", ".join(pending)
