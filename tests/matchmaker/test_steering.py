"""Steering changed after submission: a new config version for the jobs not yet created, handed
to their attempts and recorded on each, kept across a restart; changes that would break the
dataset are refused with a sentence."""

from __future__ import annotations

import json
import re

import pytest

from floe.matchmaker import steering, submission
from floe.matchmaker.errors import BadRequest, Conflict
from floe.matchmaker.storage import queries

from . import support as s

TASKS = [{"name": "sim", "requirements": {"cpus": 1, "memory": "1GiB", "walltime": "1h"},
          "modules": [{"command": ["echo", "$steering(gcd)", "$eval($steering(seed) + "
                                                            "$args(job))"]}]}]


def _document(jobs: int) -> dict:
    return s.config(jobs=jobs, tasks=TASKS, steering={"gcd": "gcd-1.i3", "seed": 100,
                                                       "cpus": 1})


async def _given_job(engine, pilot, dataset, job: int):
    """Ask until the task of `job` is handed out (finishing the others); its answer."""
    while True:
        given = await s.ask(engine, pilot)
        assert given is not None, f"job {job} was never handed out"
        answer = json.loads(given.to_json(engine))["attempt"]
        if answer["job"] == job:
            return given, answer
        await s.finish(engine, given)


async def test_a_change_applies_to_the_jobs_not_yet_created_and_each_attempt_records_it(
        engine, reopen):
    alice = await s.user(engine, "alice")
    pilot = await s.pilot(engine, await s.site(engine))
    dataset = await submission.submit(engine, alice, _document(3000))
    created = dataset.materialized  # the first jobs, stored with the submit
    assert 0 < created < 3000
    version = await steering.change(engine, dataset, alice, {"gcd": "gcd-2.i3"})
    assert (version.version, version.first_job) == (2, created)
    while dataset.materialized < dataset.jobs:
        await submission.materialize_chunk(engine, dataset, 1000)

    old, answer = await _given_job(engine, pilot, dataset, 0)
    assert answer["steering"]["gcd"] == "gcd-1.i3" and answer["config_version"] == 1
    # The jobs created after the change run with it (the last job, asked for directly).
    last = dataset.task_id(2999, 0)
    assert dataset.version_of(2999).version == 2
    assert dataset.version_of(created - 1).version == 1
    await s.finish(engine, old)
    attempt = await queries.attempt(engine.db, old.attempt_id)
    assert attempt["config_version"] == 1

    engine = await reopen(engine)
    dataset = engine.datasets[dataset.id]
    assert [v.version for v in dataset.versions] == [1, 2]
    assert dataset.version_of(2999).steering["gcd"] == "gcd-2.i3"
    shown = steering.versions(engine, dataset)
    assert shown[1]["changed"] == {"gcd": "gcd-2.i3"} and shown[1]["by"] == "alice"
    assert shown[1]["first_job"] == created
    events = await queries.events(engine.db, dataset.id)
    assert any(e["action"] == "steering" and 'gcd="gcd-2.i3"' in e["detail"] for e in events)
    # Every task of the later jobs is handed out with version 2 and records it.
    pilot = next(iter(engine.pilots.values()))
    given, answer = await _given_job(engine, pilot, dataset, created)
    assert answer["steering"]["gcd"] == "gcd-2.i3" and answer["config_version"] == 2
    assert (await queries.attempt(engine.db, given.attempt_id))["config_version"] == 2
    assert dataset.owns(last)


async def test_changes_that_would_break_the_dataset_are_refused_with_a_sentence(engine):
    alice = await s.user(engine, "alice")
    bob = await s.user(engine, "bob")
    document = _document(2)
    document["tasks"][0]["requirements"]["cpus"] = "$steering(cpus)"
    dataset = await s.submit(engine, alice, document)
    with pytest.raises(BadRequest, match=re.escape("has no steering value colour (its values: "
                                                   "cpus, gcd, seed)")):
        await steering.change(engine, dataset, alice, {"colour": "red"})
    with pytest.raises(BadRequest, match="the dataset config is not valid"):
        await steering.change(engine, dataset, alice, {"seed": "$eval(1/0)"})
    with pytest.raises(BadRequest, match="give at least one value"):
        await steering.change(engine, dataset, alice, {})
    assert [v.version for v in dataset.versions] == [1]
    # Requirements stay as the submit resolved them.
    await steering.change(engine, dataset, alice, {"cpus": 2})
    assert dataset.requirements(dataset.task_id(1, 0)).cpus == 1
    # Who may change it is the API's to decide (the authorization matrix); an archived or
    # leaving dataset refuses here.
    engine.retired.add(dataset.id)
    with pytest.raises(Conflict, match="is being archived or deleted"):
        await steering.change(engine, dataset, bob, {"seed": 1})
