"""Changing a dataset's steering values after submission (IceProd's offline processing: a new
calibration for the runs still to come).

A change makes the dataset's next config version, for the jobs not yet created when it is
decided (its turn in the writer's queue): those the materializer has still to create, and
every job added later. Jobs already created keep the version they were created under, so a
task's retry runs as its first attempt did, and every attempt records the version it ran. The
changed config is checked as a submit's is. Requirements stay as the submit resolved them (the
stored config holds them as numbers): a dataset's tasks are matched by one set of requirements
per task, so a steering value that requirements were computed from changes only what the
tasks' commands, environment and files make of it.
"""

from __future__ import annotations

import json
from typing import Any

from .engine import Engine, User
from .errors import BadRequest
from .model import DatasetState, SteeringVersion
from .retiring import check_open
from .storage import writes
from .storage.database import Job
from .submission import checked


async def change(engine: Engine, dataset: DatasetState, user: User,
                 values: dict[str, Any]) -> SteeringVersion:
    """Make the next steering version with `values` changed; returns it."""
    check_open(engine, dataset, "change its steering")
    if not values:
        raise BadRequest("steering: give at least one value to change (NAME: value)")
    current = dataset.versions[-1].steering
    unknown = sorted(set(values) - set(current))
    if unknown:
        known = ", ".join(sorted(current)) or "none"
        raise BadRequest(f"steering: dataset {dataset.id} has no steering value "
                         f"{', '.join(unknown)} (its values: {known}); a new name would be "
                         "used by no task")
    steering = {**current, **values}
    checked({**dataset.config.raw, "steering": steering})
    now = engine.clock()
    made: dict[str, SteeringVersion] = {}
    said = ", ".join(f"{name}={json.dumps(value)}" for name, value in values.items())

    def plan() -> Job[None]:  # at its turn: every job created before it is counted
        version = SteeringVersion(dataset.versions[-1].version + 1, dataset.materialized,
                                  steering, now, user.user_id)
        made["version"] = version
        detail = f"version {version.version} from job {version.first_job:,}: {said}"
        return lambda conn: writes.add_steering_version(
            conn, dataset.id, version=version.version, first_job=version.first_job,
            steering=steering, user_id=user.user_id, now=now, detail=detail)

    await engine.db.planned(plan, after=lambda _: dataset.add_version(made["version"]))
    dataset.watch.changed()
    return made["version"]


def versions(engine: Engine, dataset: DatasetState) -> list[dict[str, Any]]:
    """The dataset's config versions as the API shows them: from which job each applies, by
    whom, and what it changed from the one before."""
    shown, before = [], None
    for version in dataset.versions:
        owner = engine.users.get(version.user_id) if version.user_id is not None else None
        changed = {} if before is None else {
            name: value for name, value in version.steering.items()
            if before.get(name, object()) != value}
        shown.append({**version.to_dict(), "by": owner.name if owner else None,
                      "changed": changed})
        before = version.steering
    return shown
