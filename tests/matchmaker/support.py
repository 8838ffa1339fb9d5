"""Helpers for driving a real matchmaker engine (real SQLite file) from tests, with a fake clock."""

from __future__ import annotations

import copy
from typing import Any

from floe.config.resources import GIB, Slot
from floe.matchmaker import dispatch, pilots, recording, submission
from floe.matchmaker.auth import Auth
from floe.matchmaker.engine import Engine, Pilot, Site, User
from floe.matchmaker.lifecycle import Outcome
from floe.matchmaker.model import DatasetState

# A small ask's free resources, as a pilot sends them.
FREE = {"cpus": 1, "memory": 4 * GIB, "disk": 10 * GIB, "seconds": 86400}


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config(jobs: int = 4, tasks: list[dict[str, Any]] | None = None, **options: Any
           ) -> dict[str, Any]:
    """A dataset config; by default one task that needs 1 CPU."""
    document: dict[str, Any] = {
        "description": "test dataset",
        "jobs": jobs,
        "tasks": copy.deepcopy(tasks) if tasks else [
            {"name": "work", "requirements": {"cpus": 1, "memory": "1GiB", "walltime": "1h"},
             "modules": [{"command": ["true"]}]}],
    }
    document.update(options)
    return document


def task(name: str, depends: list[str] | None = None, **requirements: Any) -> dict[str, Any]:
    req = {"cpus": 1, "memory": "1GiB", "walltime": "1h"}
    req.update(requirements)
    return {"name": name, "depends": depends or [], "requirements": req,
            "modules": [{"command": ["true"]}]}


def slot(cpus: int = 1, memory: int = 4 * GIB, disk: int = 20 * GIB, gpus: int = 0,
         seconds: int = 86400, site: str = "site-a") -> Slot:
    return Slot(cpus=cpus, memory=memory, disk=disk, gpus=gpus, seconds=seconds,
                os=("debian12", "linux"), arch="x86_64", site=site)


async def user(engine: Engine, name: str, share: float = 1.0, admin: bool = False) -> User:
    made, _ = await Auth(engine).add_user(name, admin, share)
    return made


async def site(engine: Engine, name: str = "site-a") -> Site:
    made, _ = await Auth(engine).add_site(name)
    return made


async def pilot(engine: Engine, where: Site, host: str = "node1") -> Pilot:
    """A pilot registered at `where` with a pilot token of its own."""
    auth = Auth(engine)
    (token,), _ = await auth.pilot_tokens(where, 3600)
    registered, _ = await pilots.register(engine, await auth.authenticate(token), host, "test",
                                          "1")
    return registered


async def submit(engine: Engine, owner: User, document: dict[str, Any]) -> DatasetState:
    """Submit and create every job now (the background materializer is off in tests)."""
    dataset = await submission.submit(engine, owner, document)
    while dataset.materialized < dataset.jobs:
        await submission.materialize_chunk(engine, dataset, 1000)
    return dataset


async def ask(engine: Engine, p: Pilot, s: Slot | None = None) -> dispatch.Dispatch | None:
    answer = await dispatch.ask(engine, p, s or slot())
    return answer if isinstance(answer, dispatch.Dispatch) else None


def success(wall_time: float = 10.0, **statistics: float) -> Outcome:
    return Outcome.from_dict({"exit_code": 0, "usage": {"wall_time": wall_time,
                                                        "cpu_time": wall_time * 0.9},
                              "statistics": statistics})


def failure(error_class: str = "task_error", message: str = "boom", exit_code: int = 1,
            **usage: float) -> Outcome:
    return Outcome.from_dict({"exit_code": exit_code, "error_class": error_class,
                              "error_message": message, "usage": usage})


async def finish(engine: Engine, given: dispatch.Dispatch, outcome: Outcome | None = None
                 ) -> dict[str, Any]:
    return await recording.report(engine, given.attempt_id, given.passkey,
                                 outcome or success())


def state_of(dataset: DatasetState, job: int, task_index: int = 0) -> str:
    return dataset.state(dataset.task_id(job, task_index)).value
