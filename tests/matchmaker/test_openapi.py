"""The OpenAPI document against the server that serves it, on the bodies that matter most: what
floe's own pilot sends (built by its client and its report code, sent to a real server), the
dataset configs users submit, and bodies that the server refuses; and on every answer. Api.call
checks every body that the server takes, and every JSON answer it gives, against the
document's schema for its route (with the jsonschema library); these tests check that they
exercise the routes they name, that the document refuses what the server refuses, and that it
is a valid OpenAPI document."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from floe.config.resources import GIB, Usage
from floe.config.states import ErrorClass
from floe.matchmaker.api.validation import problems
from floe.pilot.client import Ask, Matchmaker, Reply
from floe.pilot.limits import Overuse
from floe.pilot.reports import lost_report, report_of
from floe.pilot.runner import TaskResult
from floe.pilot.slot import MeasuredSlot
from tests.config.test_json_schema import INVALID, VALID

from . import support as s
from .test_api import MATRIX, PASSKEY_ACTIONS, answer_schemas, body_schemas, path_for, token_of

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

PILOT_ROUTES = {
    ("POST", "/api/v1/pilots"), ("POST", "/api/v1/pilots/{pilot_id}/ask"),
    ("POST", "/api/v1/pilots/{pilot_id}/heartbeat"), ("POST", "/api/v1/pilots/{pilot_id}/reports"),
    ("POST", "/api/v1/pilots/{pilot_id}/exit"), ("POST", "/api/v1/attempts/{attempt_id}/heartbeat"),
    ("POST", "/api/v1/attempts/{attempt_id}/report"),
}


class Recorder(Matchmaker):
    """The pilot's client, keeping the last request it would have sent instead of sending it."""

    def __init__(self) -> None:
        super().__init__("http://matchmaker.invalid")
        self.sent: tuple[str, str, object, str | None] | None = None

    def call(self, method, path, body=None, *, raw=None, passkey=None, timeout=None) -> Reply:
        self.sent = (method, "/api/v1" + path, body, passkey)
        return Reply(200, {})


SLOT = MeasuredSlot(cpus=4, memory=16 * GIB, disk=50 * GIB, gpus=(), deadline=None,
                    os=("debian12", "linux"), arch="x86_64", python="3.11.2", host="node7",
                    site="site-a", batch_system="slurm", batch_job_id="4242",
                    scratch="/scratch/job4242", sources={"cpus": "SLURM_CPUS_ON_NODE"},
                    limits={"memory": {"cgroup": 16.0 * GIB}})


def result(exit_code: int | None = 0, error_class: ErrorClass | None = None,
           overuse: Overuse | None = None) -> TaskResult:
    """A finished attempt as the pilot's runner describes it."""
    return TaskResult(
        task="work", exit_code=exit_code, error_class=error_class,
        error_message="" if error_class is None else "killed",
        usage=Usage(cpu_time=9.5, wall_time=10.0, peak_memory=2**30, peak_disk=2**20),
        overuse=overuse, statistics={"events": 1000, "efficiency": 0.93},
        stdout_tail="done\n", stderr_tail="",
        outputs=[{"local": "out.txt", "url": "file:///data/out_1.txt",
                  "sha256": "ab" * 32, "size": 123}],
        start_time=1.7e9, end_time=1.7e9 + 10, scratch="/scratch/a1",
        stdout_path="/scratch/a1/stdout", stderr_path="/scratch/a1/stderr")


async def send(world, client: Recorder, token: str | None, expected: int = 200):
    method, path, body, passkey = client.sent
    status, answer = await world.api.call(method, path, token, body, passkey=passkey)
    assert status == expected, (path, answer)
    return answer


async def test_the_document_takes_every_body_floes_pilot_sends(world):
    client = Recorder()
    client.register(host=SLOT.host, batch_system=SLOT.batch_system,
                    batch_id=SLOT.batch_job_id, version="0.1.0", resources=SLOT.to_dict())
    registered = await send(world, client, await world.registration_token(), 201)
    pilot, token = registered["pilot_id"], registered["key"]
    offer = SLOT.offer(cpus=1, memory=4 * GIB, disk=10 * GIB)
    client.ask(pilot, offer)
    first = (await send(world, client, token))["attempt"]
    client.ask(pilot, Ask(SLOT.offer(cpus=3, memory=12 * GIB, disk=30 * GIB), max_tasks=3))
    second, third, fourth = (await send(world, client, token))["attempts"]
    usage = Usage(cpu_time=1.5, wall_time=2.0, peak_memory=2**29).to_dict()
    client.heartbeats(pilot, [{"attempt_id": a["id"], "passkey": a["passkey"], "usage": usage}
                              for a in (first, second, third, fourth)])
    answer = await send(world, client, token)
    assert [answer["attempts"][str(a["id"])]["action"] for a in (first, second, third, fourth)] \
        == ["continue"] * 4
    client.heartbeat(first["id"], first["passkey"], usage)
    await send(world, client, None)
    client.report(first["id"], first["passkey"],
                  dict(report_of(result()), ask=Ask(offer).to_dict()))
    assert (await send(world, client, token))["task_state"] == "complete"
    overuse = Overuse("memory", 2**30, 2**31)
    client.reports(pilot, [
        dict(report_of(result(137, ErrorClass.RESOURCE_OVERUSE, overuse)),
             attempt_id=second["id"], passkey=second["passkey"]),
        dict(report_of(result(None, ErrorClass.STAGING_ERROR)), attempt_id=third["id"],
             passkey=third["passkey"]),
        dict(lost_report("the node was drained"), attempt_id=fourth["id"],
             passkey=fourth["passkey"]),
    ], ask=Ask(offer, max_tasks=2, in_series=True))
    answer = await send(world, client, token)
    assert all(item.get("recorded") for item in answer["results"]), answer
    client.sign_off(pilot, "idle", "no work for 10 minutes", suspect=False)
    assert (await send(world, client, token))["state"] == "exited"
    assert not PILOT_ROUTES - world.api.checked


async def test_the_document_takes_the_example_datasets_and_the_test_suites(world):
    configs = [json.loads(path.read_text()) for path in sorted(EXAMPLES.glob("*.json"))]
    for config in [*configs, *VALID.values()]:
        status, answer = await world.api.call("POST", "/api/v1/datasets", world.owner, config)
        assert status == 201, answer
    assert ("POST", "/api/v1/datasets") in world.api.checked


def schema_refusal(schema: Draft202012Validator, body) -> str:
    """The server's refusal of `body` by the document's schema (what the server checks bodies
    against), not by its handler."""
    return "; ".join(problems(body, schema.schema)[:20])


async def documented(world, method: str, template: str) -> Draft202012Validator:
    _, document = await world.api.call("GET", "/api/v1/openapi.json")
    return next(v for verb, path, _, v in body_schemas(document)
                if (verb, path) == (method, template))


@pytest.mark.parametrize("name", sorted(INVALID))
async def test_a_dataset_the_server_refuses_is_refused_by_the_document(world, name):
    schema = await documented(world, "POST", "/api/v1/datasets")
    status, answer = await world.api.call("POST", "/api/v1/datasets", world.owner, INVALID[name])
    assert status == 400 and answer["error"].startswith("the dataset config is not valid")
    assert not schema.is_valid(INVALID[name])


FREE = {"cpus": 1, "memory": 4 * GIB, "disk": 10 * GIB}
PILOTS = "/api/v1/pilots"
ASK = "/api/v1/pilots/{pilot_id}/ask"
HEARTBEAT = "/api/v1/pilots/{pilot_id}/heartbeat"
REPORTS = "/api/v1/pilots/{pilot_id}/reports"
EXIT = "/api/v1/pilots/{pilot_id}/exit"
REFUSED_PILOT_BODIES = {
    "register without a host": (PILOTS, {}),
    "register with an unknown key": (PILOTS, {"host": "n", "hostname": "n"}),
    "register with a too long host": (PILOTS, {"host": "n" * 257}),
    "ask with negative cpus": (ASK, dict(FREE, cpus=-1)),
    "ask with an unknown key": (ASK, dict(FREE, gpu=1)),
    "ask with a size string": (ASK, dict(FREE, memory="4GB")),
    "ask for no tasks": (ASK, dict(FREE, max_tasks=0)),
    "ask in series as a string": (ASK, dict(FREE, in_series="yes")),
    "ask without disk": (ASK, {"cpus": 1, "memory": 1}),
    "heartbeat without a passkey": (HEARTBEAT, {"attempts": [{"attempt_id": 1}]}),
    "heartbeat without attempts": (HEARTBEAT, {}),
    "no reports": (REPORTS, {"reports": []}),
    "a report with an exit code out of range": (
        REPORTS, {"reports": [{"attempt_id": 1, "passkey": "x", "exit_code": 300}]}),
    "a report with an unknown error class": (
        REPORTS, {"reports": [{"attempt_id": 1, "passkey": "x", "exit_code": 1,
                               "error_class": "bogus"}]}),
    "a report with a warning that is not a string": (
        REPORTS, {"reports": [{"attempt_id": 1, "passkey": "x", "exit_code": 0,
                               "warnings": [5]}]}),
    "reports with an incomplete ask": (
        REPORTS, {"reports": [{"attempt_id": 1, "passkey": "x", "exit_code": 0}],
                  "ask": {"cpus": 1}}),
    "exit with a too long reason": (EXIT, {"reason": "r" * 65}),
}


SHAPES = [{"name": "small", "cpus": 1, "memory": GIB, "disk": GIB, "walltime": 3600}]
REFUSED_BATCH_JOBS_BODIES = {
    "pilots without their batch system": {"pilots": ["1"]},
    "pilots that are not a list": {"batch_system": "slurm", "pilots": "1"},
    "a batch id that is not a string": {"batch_system": "slurm", "pilots": ["1", 2]},
    "an empty batch id": {"batch_system": "slurm", "ended": [""]},
    "a batch id too long": {"batch_system": "slurm", "pilots": ["1" * 257]},
    "more than 1000 batch ids": {"batch_system": "slurm", "ended": [str(n) for n in range(1001)]},
    "a batch system name too long": {"batch_system": "s" * 33, "pilots": ["1"]},
    "shapes, which are the demand's": {"batch_system": "slurm", "shapes": SHAPES},
}


@pytest.mark.parametrize("name", sorted(REFUSED_BATCH_JOBS_BODIES))
async def test_a_batch_jobs_body_the_server_refuses_is_refused_by_the_document(world, name):
    template = "/api/v1/sites/{name}/batch-jobs"
    schema = await documented(world, "POST", template)
    body = REFUSED_BATCH_JOBS_BODIES[name]
    status, answer = await world.api.call("POST", template.format(name="site-a"),
                                          world.site_token, body)
    assert (status, answer) == (400, {"error": schema_refusal(schema, body)})
    assert not schema.is_valid(body)
    accepted = {"batch_system": "slurm", "pilots": ["1", "2"]}
    status, answer = await world.api.call("POST", template.format(name="site-a"),
                                          world.site_token, accepted)
    assert status == 200, answer
    assert answer == {"registered": [], "lost": [], "empty": [], "short": {}, "suspect": []}


@pytest.mark.parametrize("name", sorted(REFUSED_PILOT_BODIES))
async def test_a_pilot_body_the_server_refuses_is_refused_by_the_document(world, name):
    template, body = REFUSED_PILOT_BODIES[name]
    schema = await documented(world, "POST", template)
    path = template.format(pilot_id=world.pilot)
    status, answer = await world.api.call("POST", path, world.pilot_key, body)
    assert (status, answer) == (400, {"error": schema_refusal(schema, body)})
    assert not schema.is_valid(body)


async def test_the_document_is_valid_openapi_with_unique_operation_ids(world):
    _, document = await world.api.call("GET", "/api/v1/openapi.json")
    validate(document)  # raises on the first fault (a repeated operationId is one)
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)) > 30
    # Every JSON answer is typed: a record, one of several, or a named component's.
    untyped = [(method, path, status) for path, ops in document["paths"].items()
               for method, op in ops.items() for status, answer in op["responses"].items()
               if not {"properties", "oneOf", "$ref"} & set(
                   answer["content"].get("application/json", {"schema": {"$ref": ""}})["schema"])]
    assert untyped == []


async def test_every_json_answer_is_declared_and_the_answers_are_what_it_declares(world):
    # Every route called once as a role that may call it, after an attempt that reported
    # statistics and outputs; Api.call checks each JSON answer against its declared schema.
    _, document = await world.api.call("GET", "/api/v1/openapi.json")
    _, given = await world.ask()
    done = given["attempt"]
    status, answer = await world.api.call(
        "POST", f"/api/v1/attempts/{done['id']}/report", None,
        {"exit_code": 0, "statistics": {"events": 1000}, "usage": {"cpu_time": 2.0},
         "outputs": [{"local": "out.txt", "url": "file:///data/out.txt", "size": 3}]},
        passkey=done["passkey"])
    assert status == 200 and answer["task_state"] == "complete", answer
    handed_out: dict = {}
    for method, path, body, allowed in MATRIX.values():
        role = sorted(allowed)[0]
        target = await path_for(world, path, handed_out)
        named = re.search(r"/pilots/(\d+)/", target)
        token = await token_of(world, role, int(named.group(1)) if named else None)
        if isinstance(body, dict) and "name" in body:
            body = {"name": body["name"].format(role="answers")}
        status, answer = await world.api.call(method, target, token, body)
        assert 200 <= status < 300, (target, answer)
    for method, path, body in PASSKEY_ACTIONS.values():
        target = await path_for(world, path, handed_out)
        status, answer = await world.api.call(
            method, target, None, body if isinstance(body, dict) else None,
            passkey=handed_out["passkey"], data=body if isinstance(body, bytes) else None)
        assert status == 200, (target, answer)
    status, answer = await world.api.call("POST", "/api/v1/datasets?dry_run=true", world.owner,
                                          s.config(jobs=3))
    assert status == 200 and answer["dry_run"], answer
    _, task = await world.api.call("GET", f"/api/v1/tasks/{done['task_id']}", world.owner)
    _, attempt = await world.api.call("GET", f"/api/v1/attempts/{done['id']}", world.owner)
    assert task["attempts"][0]["statistics"] == attempt["statistics"] == {"events": 1000}
    _, statistics = await world.api.call(
        "GET", f"/api/v1/datasets/{world.dataset}/statistics", world.owner)
    assert {"events"} <= {row["name"] for row in statistics["statistics"]}
    declared = {(method, template, int(status))
                for method, template, _, validators in answer_schemas(document)
                for status in validators if status.startswith("2")}
    assert declared == {answer for answer in world.api.conformed if 200 <= answer[2] < 300}
