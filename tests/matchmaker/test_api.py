"""The HTTP API of a real server (aiohttp on loopback, real SQLite file): authorization matrix,
passkeys, errors as JSON, size caps, and the OpenAPI document matching the routes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from jsonschema import Draft202012Validator

from floe.config import dataset as dataset_config
from floe.config.settings import server_settings
from floe.matchmaker.api.framework import AUTH, ENGINE, ROUTES
from floe.matchmaker.api.validation import problems
from floe.matchmaker.server import create_app

from . import support as s

ROOT = Path(__file__).resolve().parents[2]


class Api:
    """Calls to the server. Every JSON body the server takes (a 2xx answer) is checked, with the
    jsonschema library, against the schema that the server's own OpenAPI document declares for
    that route: the document must take whatever the server takes. `checked` holds the routes
    (method, documented path) whose bodies were so checked. Likewise every JSON answer is
    checked against the schema the document declares for that route and status (closed
    objects: a field added or dropped on either side fails), and a success must be declared;
    `conformed` holds the (method, documented path, status) of the answers so checked."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.documented: list[tuple[str, str, re.Pattern, Draft202012Validator]] | None = None
        self.checked: set[tuple[str, str]] = set()
        self.declared: list[tuple[str, str, re.Pattern, dict[str, Draft202012Validator]]] | \
            None = None
        self.conformed: set[tuple[str, str, int]] = set()

    async def call(self, method: str, path: str, token: str | None = None, body=None,
                   passkey: str | None = None, data: bytes | None = None):
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if passkey:
            headers["X-Floe-Passkey"] = passkey
        async with self.session.request(method, self.base + path, json=body, data=data,
                                        headers=headers) as reply:
            text = await reply.text()
            try:
                payload = await reply.json(content_type=None)
            except ValueError:
                payload = text
            status = reply.status
            answered_json = reply.content_type == "application/json"
        if body is not None and 200 <= status < 300:
            await self.check_taken_body(method, path, body)
        if answered_json and path.startswith("/api/"):
            await self.check_answer(method, path, status, payload)
        return status, payload

    async def check_answer(self, method: str, path: str, status: int, answer) -> None:
        if self.declared is None:
            async with self.session.get(self.base + "/api/v1/openapi.json") as reply:
                self.declared = answer_schemas(await reply.json())
        path = path.partition("?")[0]
        verb, template, _, validators = next(
            (found for found in self.declared
             if found[0] == method.upper() and found[2].fullmatch(path)),
            (method, path, None, {}))
        if str(status) not in validators and not 200 <= status < 300:
            return  # an error the route does not declare: no route, 405, 5xx
        assert str(status) in validators, \
            f"{method} {path} answered {status}, which its OpenAPI document does not declare"
        errors = [f"{'/'.join(map(str, e.absolute_path)) or '(answer)'}: {e.message}"
                  for e in validators[str(status)].iter_errors(answer)]
        assert not errors, (f"the server's {status} answer to {method} {path} is not what its "
                            f"OpenAPI document declares: {errors[:5]}")
        self.conformed.add((verb, template, status))

    async def check_taken_body(self, method: str, path: str, body) -> None:
        if self.documented is None:
            async with self.session.get(self.base + "/api/v1/openapi.json") as reply:
                self.documented = body_schemas(await reply.json())
        path = path.partition("?")[0]
        for verb, template, pattern, validator in self.documented:
            if verb == method.upper() and pattern.fullmatch(path):
                errors = [f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
                          for e in validator.iter_errors(body)]
                assert not errors, (f"the server took this {method} {path} body but its "
                                    f"OpenAPI document refuses it: {errors[:5]}")
                self.checked.add((verb, template))


def body_schemas(document: dict) -> list[tuple[str, str, re.Pattern, Draft202012Validator]]:
    """(method, path, path pattern, validator) of each route whose JSON body the OpenAPI
    `document` declares."""
    found = []
    for template, ops in document["paths"].items():
        pattern = re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)))
        for method, op in ops.items():
            content = op.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                found.append((method.upper(), template, pattern,
                              Draft202012Validator(content["application/json"]["schema"])))
    return found


def answer_schemas(document: dict) -> list[
        tuple[str, str, re.Pattern, dict[str, Draft202012Validator]]]:
    """(method, path, path pattern, {status: validator}) of each route, for its JSON answers
    that the OpenAPI `document` declares (their references into it resolved)."""
    found = []
    for template, ops in document["paths"].items():
        pattern = re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)))
        for method, op in ops.items():
            validators = {
                status: Draft202012Validator({"allOf": [content["application/json"]["schema"]],
                                              "components": document["components"]})
                for status, answer in op["responses"].items()
                if "application/json" in (content := answer.get("content", {}))}
            found.append((method.upper(), template, pattern, validators))
    return found


class World:
    """A running server with users, sites and pilots of every role."""

    async def start(self, tmp_path) -> World:
        self.settings = server_settings({"database": str(tmp_path / "floe.sqlite")})
        self.app = create_app(self.settings)
        self.server = TestServer(self.app)
        await self.server.start_server()
        self.session = aiohttp.ClientSession()
        self.api = Api(self.session, str(self.server.make_url("")))
        self.engine = self.app[ENGINE]
        try:
            await self.populate()
        except BaseException:
            await self.stop()  # else the server's writer process outlives the failed test
            raise
        return self

    async def populate(self) -> None:
        auth = self.app[AUTH]
        _, self.admin = await auth.add_user("root", admin=True)
        _, self.owner = await auth.add_user("alice")
        _, self.other = await auth.add_user("bob")
        await auth.add_user("carol")  # whose token the matrix replaces
        self.site_a, self.site_token = await auth.add_site("site-a")
        self.site_b, self.other_site_token = await auth.add_site("site-b")
        await auth.add_site("site-c")  # whose factory token the matrix replaces
        self.keys: dict[int, str] = {}  # each registered pilot's key
        status, dataset = await self.api.call("POST", "/api/v1/datasets", self.owner,
                                              s.config(jobs=20))
        assert status == 201, dataset
        self.dataset = dataset["id"]
        await self.wait_created(self.dataset)
        self.pilot = await self.new_pilot(batch_system="slurm", batch_id="42")
        self.sibling = await self.new_pilot(host="node3")  # another pilot of site-a
        self.other_pilot = await self.new_pilot(self.site_b, host="node9")
        self.pilot_key = self.keys[self.pilot]
        self.other_pilot_key = self.keys[self.other_pilot]

    async def registration_token(self, site=None) -> str:
        """A fresh pilot token, which registers one pilot."""
        (token,), _ = await self.app[AUTH].pilot_tokens(site or self.site_a, 3600)
        return token

    async def wait_created(self, dataset_id: int) -> None:
        for _ in range(500):
            state = self.engine.datasets[dataset_id]
            if state.materialized == state.jobs:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("jobs were not created")

    async def new_dataset(self, suspended: bool = False, ended: bool = False) -> int:
        """A fresh dataset of alice's (suspended, or aborted, by her when asked), for actions
        that change it."""
        status, dataset = await self.api.call("POST", "/api/v1/datasets", self.owner,
                                              s.config(jobs=2, steering={"seed": 1}))
        assert status == 201, dataset
        await self.wait_created(dataset["id"])
        for wanted, verb in ((suspended, "suspend"), (ended, "abort")):
            if wanted:
                status, answer = await self.api.call(
                    "POST", f"/api/v1/datasets/{dataset['id']}/{verb}", self.owner)
                assert status == 200, answer
        return dataset["id"]

    async def new_pilot(self, site=None, host: str = "node2", **body: str) -> int:
        """A pilot registered with a token of its own (at site-a unless `site`); its key is
        kept in `keys`."""
        status, pilot = await self.api.call("POST", "/api/v1/pilots",
                                            await self.registration_token(site),
                                            {"host": host, **body})
        assert status == 201, pilot
        self.keys[pilot["pilot_id"]] = pilot["key"]
        return pilot["pilot_id"]

    async def ask(self, token=None, pilot=None):
        pilot = pilot or self.pilot
        return await self.api.call("POST", f"/api/v1/pilots/{pilot}/ask",
                                   token or self.keys[pilot],
                                   {"cpus": 1, "memory": 4 * 2**30, "disk": 10 * 2**30,
                                    "seconds": 86400})

    stalls_expected = 0

    async def stop(self) -> None:
        stalls = self.engine.db.stalls
        await self.session.close()
        await self.server.close()
        assert stalls == self.stalls_expected, \
            "a database write waited longer than the watchdog allows"


# pilot_token: a fresh pilot token of site-a (it registers one pilot); pilot: the key of the
# pilot the path names (pilot 1 where it names none); sibling_pilot: another site-a pilot's key;
# other_pilot: the key of a pilot of site-b.
ROLES = ("anonymous", "admin", "owner", "other_user", "site", "other_site", "pilot_token",
         "pilot", "sibling_pilot", "other_pilot")


async def token_of(world: World, role: str, pilot: int | None = None) -> str | None:
    if role == "pilot_token":
        return await world.registration_token()
    return {"anonymous": None, "admin": world.admin, "owner": world.owner,
            "other_user": world.other, "site": world.site_token,
            "other_site": world.other_site_token, "pilot": world.keys[pilot or world.pilot],
            "sibling_pilot": world.keys[world.sibling],
            "other_pilot": world.other_pilot_key}[role]


EVERYONE = set(ROLES)
USERS = {"admin", "owner", "other_user"}
OWNER = {"admin", "owner"}

# action: (method, path, body, roles that are allowed). Everyone else is refused with 401
# (no token) or 403 (a token that may not do this). In paths, {fresh} is a new dataset of the
# owner's for each role, {suspended} the same but suspended, {ended} the same but aborted, and
# {new_pilot} a new pilot of site-a for each role, so that one role's success does not change
# what the next one meets.
MATRIX = {
    "health": ("GET", "/api/v1/health", None, EVERYONE),
    "read the API document": ("GET", "/api/v1/openapi.json", None, EVERYONE),
    "read the notifications' key": ("GET", "/api/v1/notifications/key", None, EVERYONE),
    "who am I": ("GET", "/api/v1/whoami", None, EVERYONE - {"anonymous"}),
    "list datasets": ("GET", "/api/v1/datasets", None, USERS),
    "read a dataset": ("GET", "/api/v1/datasets/{dataset}", None, USERS),
    "read a dataset's jobs": ("GET", "/api/v1/datasets/{dataset}/jobs", None, USERS),
    "read a dataset's tasks": ("GET", "/api/v1/datasets/{dataset}/tasks", None, USERS),
    "read a dataset's statistics": ("GET", "/api/v1/datasets/{dataset}/statistics", None,
                                    USERS),
    "read a dataset's events": ("GET", "/api/v1/datasets/{dataset}/events", None, USERS),
    "wait for a dataset's progress": ("GET", "/api/v1/datasets/{dataset}/progress", None,
                                      USERS),
    "read a task": ("GET", "/api/v1/tasks/{task}", None, USERS),
    "read an attempt": ("GET", "/api/v1/attempts/{attempt}", None, USERS),
    "read an attempt's log": ("GET", "/api/v1/attempts/{attempt}/logs/stdout", None, USERS),
    "submit a dataset": ("POST", "/api/v1/datasets", s.config(jobs=1), USERS),
    "suspend a dataset": ("POST", "/api/v1/datasets/{fresh}/suspend", None, OWNER),
    "resume a dataset": ("POST", "/api/v1/datasets/{suspended}/resume", None, OWNER),
    "reset failed tasks": ("POST", "/api/v1/datasets/{fresh}/reset", {"scope": "failed"},
                           OWNER),
    "reset all tasks": ("POST", "/api/v1/datasets/{fresh}/reset", {"scope": "all"}, OWNER),
    "reset one job": ("POST", "/api/v1/datasets/{fresh}/reset", {"scope": "all", "job": 0},
                      OWNER),
    "add jobs": ("POST", "/api/v1/datasets/{fresh}/jobs", {"jobs": 2}, OWNER),
    "abort a dataset": ("POST", "/api/v1/datasets/{fresh}/abort", None, OWNER),
    "change steering": ("POST", "/api/v1/datasets/{fresh}/steering", {"steering": {"seed": 2}},
                        OWNER),
    "archive a dataset": ("POST", "/api/v1/datasets/{ended}/archive", None, OWNER),
    "delete a dataset": ("DELETE", "/api/v1/datasets/{ended}", None, OWNER),
    "change priority": ("PUT", "/api/v1/datasets/{dataset}/priority", {"priority": 2}, OWNER),
    "read users": ("GET", "/api/v1/users", None, USERS),
    "read shares": ("GET", "/api/v1/shares", None, USERS),
    "add a user": ("POST", "/api/v1/users", {"name": "new-{role}"}, {"admin"}),
    "replace a user's token": ("POST", "/api/v1/users/carol/token", None, {"admin"}),
    "set a share": ("PUT", "/api/v1/users/bob/share", {"share": 2}, {"admin"}),
    "list sites": ("GET", "/api/v1/sites", None, USERS),
    "add a site": ("POST", "/api/v1/sites", {"name": "site-{role}"}, {"admin"}),
    "replace a site's token": ("POST", "/api/v1/sites/site-c/token", None, {"admin"}),
    "get a pilot token": ("POST", "/api/v1/sites/site-a/pilot-tokens", {"lifetime": 600},
                          {"admin", "site"}),
    "read site demand": ("POST", "/api/v1/sites/site-a/demand",
                         {"shapes": [{"name": "small", "cpus": 1, "memory": 2**31,
                                      "disk": 2**33, "walltime": 7200}], "factory": "f1"},
                         {"admin", "site"}),
    "withdraw queued pilots": ("DELETE", "/api/v1/sites/site-a/demand?factory=f1", None,
                               {"admin", "site"}),
    "tell of batch jobs": ("POST", "/api/v1/sites/site-a/batch-jobs",
                           {"batch_system": "slurm", "factory": "f1", "pilots": ["42", "43"],
                            "ended": ["44"]}, {"admin", "site"}),
    "list pilots": ("GET", "/api/v1/pilots", None, USERS),
    "read metrics": ("GET", "/metrics", None, USERS),
    "register a pilot": ("POST", "/api/v1/pilots", {"host": "n"}, {"pilot_token"}),
    "ask for a task": ("POST", "/api/v1/pilots/{pilot}/ask",
                       {"cpus": 1, "memory": 2**32, "disk": 2**34}, {"pilot"}),
    "sign off a pilot": ("POST", "/api/v1/pilots/{new_pilot}/exit", {"reason": "done"},
                         {"pilot"}),
    "heartbeat a pilot's attempts": ("POST", "/api/v1/pilots/{pilot}/heartbeat",
                                     {"attempts": []}, {"pilot"}),
    "report a pilot's attempts": ("POST", "/api/v1/pilots/{pilot}/reports",
                                  {"reports": [{"attempt_id": 10**9, "passkey": "x",
                                                "exit_code": 0}]}, {"pilot"}),
}

# Routes of running attempts: proved by the attempt's passkey, not by any token.
PASSKEY_ACTIONS = {
    "heartbeat": ("POST", "/api/v1/attempts/{attempt}/heartbeat", {"usage": {"cpu_time": 1.0}}),
    "upload a log": ("PUT", "/api/v1/attempts/{attempt}/logs/stdout", b"all of stdout\n"),
    "report": ("POST", "/api/v1/attempts/{attempt}/report", {"exit_code": 0}),
}


async def path_for(world: World, path: str, handed_out: dict) -> str:
    """`path` with its placeholders filled; `handed_out` keeps one attempt for the read views."""
    if ("{task}" in path or "{attempt}" in path) and not handed_out:
        _, given = await world.ask()
        handed_out.update(given["attempt"])
    values = {"dataset": world.dataset, "pilot": world.pilot, "task": handed_out.get("task_id"),
              "attempt": handed_out.get("id")}
    if "{fresh}" in path:
        values["fresh"] = await world.new_dataset()
    if "{suspended}" in path:
        values["suspended"] = await world.new_dataset(suspended=True)
    if "{ended}" in path:
        values["ended"] = await world.new_dataset(ended=True)
    if "{new_pilot}" in path:
        values["new_pilot"] = await world.new_pilot()
    return path.format(**values)


@pytest.mark.parametrize("action", sorted(MATRIX))
async def test_authorization_matrix(world, action):
    method, path, body, allowed = MATRIX[action]
    handed_out: dict = {}
    for role in ROLES:
        target = await path_for(world, path, handed_out)
        payload = body
        if isinstance(body, dict) and "name" in body:
            payload = {"name": body["name"].format(role=role).replace("_", "-")}
        named = re.search(r"/pilots/(\d+)/", target)
        token = await token_of(world, role, int(named.group(1)) if named else None)
        status, answer = await world.api.call(method, target, token, payload)
        if role in allowed:
            assert status in (200, 201, 202), (role, status, answer)
        else:
            expected = 401 if role == "anonymous" else 403
            assert status == expected, (role, status, answer)
            assert isinstance(answer["error"], str) and answer["error"]
            if "{fresh}" in path or "{suspended}" in path:  # a refusal changes nothing
                dataset = world.engine.datasets[int(target.split("/")[4])]
                expected_status = "suspended" if "{suspended}" in path else "processing"
                assert dataset.status == expected_status, (role, dataset.status)
                assert dataset.summary()["ready"] == (0 if "{suspended}" in path else 2)


def test_the_matrices_cover_every_route():
    assert len(ROUTES) > 30  # declared when create_app's modules were imported
    declared = {(method, re.sub(r"\{\w+\}", "{}", path)) for method, path, *_ in
                [*MATRIX.values(), *PASSKEY_ACTIONS.values()]}
    for served in ROUTES:
        pattern = re.compile(re.sub(r"\{\w+\}", "[^/]+", served.path.replace(".", r"\.")) + "$")
        assert any(method == served.method and pattern.match(path.split("?")[0].replace("{}", "x"))
                   for method, path in declared), (served.method, served.path)


async def send_as_attempt(world: World, action: str, attempt_id: int, token: str | None,
                          passkey: str | None):
    method, path, body = PASSKEY_ACTIONS[action]
    path = path.format(attempt=attempt_id)
    if isinstance(body, bytes):
        return await world.api.call(method, path, token, data=body, passkey=passkey)
    return await world.api.call(method, path, token, body, passkey=passkey)


@pytest.mark.parametrize("action", sorted(PASSKEY_ACTIONS))
async def test_only_the_attempts_own_passkey_speaks_for_it(world, action):
    _, given = await world.ask()
    attempt = given["attempt"]
    _, elsewhere = await world.ask(world.other_pilot_key, world.other_pilot)
    others_passkey = elsewhere["attempt"]["passkey"]
    for role in ROLES:  # a token of any kind is no passkey
        status, answer = await send_as_attempt(world, action, attempt["id"],
                                               await token_of(world, role), None)
        assert status == 401 and "passkey" in answer["error"], (role, status, answer)
    for role in ROLES:  # another pilot's attempt's passkey, whatever token comes with it
        status, answer = await send_as_attempt(world, action, attempt["id"],
                                               await token_of(world, role), others_passkey)
        assert status == 403, (role, status, answer)
        assert answer["error"] == (f"wrong passkey for attempt {attempt['id']}: only the pilot "
                                   "that was given this attempt may speak for it")
    assert attempt["id"] in world.engine.active
    answers = []
    for role in ROLES:  # the attempt's passkey is the proof; a valid token beside it is ignored
        status, answer = await send_as_attempt(world, action, attempt["id"],
                                               await token_of(world, role), attempt["passkey"])
        assert status == 200, (role, status, answer)
        answers.append(answer)
    if action == "report":
        assert answers[0]["recorded"] and not answers[0]["duplicate"]
        assert all(a["duplicate"] for a in answers[1:])
        assert world.engine.datasets[world.dataset].summary()["complete"] == 1
    if action == "upload a log":
        status, text = await world.api.call(
            "GET", f"/api/v1/attempts/{attempt['id']}/logs/stdout", world.owner)
        assert (status, text) == (200, "all of stdout\n")


async def test_a_void_passkey_cannot_upload_a_log(world):
    for action, body in (("reset", {"scope": "all"}), ("suspend", None)):
        _, given = await world.ask()
        attempt = given["attempt"]
        status, _ = await world.api.call("POST", f"/api/v1/datasets/{world.dataset}/{action}",
                                         world.owner, body)
        assert status == 200
        status, answer = await send_as_attempt(world, "upload a log", attempt["id"], None,
                                               attempt["passkey"])
        assert status == 409, answer
        assert re.fullmatch(rf"attempt {attempt['id']} is void \(.*{action}.*\); its passkey is"
                            r" no longer valid and its result will not be recorded",
                            answer["error"]), answer
        status, text = await world.api.call(
            "GET", f"/api/v1/attempts/{attempt['id']}/logs/stdout", world.owner)
        assert status == 200 and not text  # the tail (empty): nothing was stored


async def test_a_user_cannot_change_another_users_dataset(world):
    for path, body in ((f"/api/v1/datasets/{world.dataset}/suspend", None),
                       (f"/api/v1/datasets/{world.dataset}/reset", {"scope": "all"})):
        status, answer = await world.api.call("POST", path, world.other, body)
        assert status == 403
        assert "only change their own datasets" in answer["error"]
    assert world.engine.datasets[world.dataset].status == "processing"
    status, _ = await world.api.call("POST", f"/api/v1/datasets/{world.dataset}/suspend",
                                     world.owner)
    assert status == 200


@pytest.mark.parametrize("kind", ["user", "site"])
async def test_a_token_replaced_on_the_server_host_stops_working_in_the_running_server(
        world, kind):
    # Regression: the server cached every token it had seen for good, so a token replaced with
    # `floe user token` / `floe site token` (another process) kept working until a restart.
    world.app[AUTH].POSITIVE_TTL = 0.2
    name, old = ("bob", world.other) if kind == "user" else ("site-b", world.other_site_token)
    status, _ = await world.api.call("GET", "/api/v1/whoami", old)
    assert status == 200
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "floe.cli.main", kind, "token", name, "--db",
        str(world.settings.database), "--json", cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    printed, _ = await process.communicate()
    assert process.returncode == 0
    await asyncio.sleep(0.3)
    status, answer = await world.api.call("GET", "/api/v1/whoami", old)
    assert (status, answer["error"]) == (
        401, "this token is not known or was revoked; ask an admin for a new one")
    status, answer = await world.api.call("GET", "/api/v1/whoami", json.loads(printed)["token"])
    assert status == 200 and name in (answer["user"], answer["site"])


async def test_pilot_reports_only_on_its_own_attempts(world):
    status, given = await world.ask()
    attempt = given["attempt"]
    report = {"exit_code": 0, "usage": {"wall_time": 3.0}}
    path = f"/api/v1/attempts/{attempt['id']}/report"
    status, answer = await world.api.call("POST", path, world.other_pilot_key, report,
                                          passkey="not-the-passkey")
    assert status == 403 and "wrong passkey" in answer["error"]
    status, answer = await world.api.call("POST", path, world.pilot_key, report)
    assert status == 401 and "passkey" in answer["error"]
    status, answer = await world.api.call("POST", path, None, report, passkey=attempt["passkey"])
    assert status == 200 and answer["recorded"] and not answer["duplicate"]


async def test_stale_passkey_is_refused_after_reset_with_a_sentence(world):
    status, given = await world.ask()
    attempt = given["attempt"]
    status, _ = await world.api.call("POST", f"/api/v1/datasets/{world.dataset}/reset",
                                     world.owner, {"scope": "all"})
    assert status == 200
    for path, body in (("heartbeat", {"usage": {"cpu_time": 1.0}}),
                       ("report", {"exit_code": 0})):
        status, answer = await world.api.call("POST", f"/api/v1/attempts/{attempt['id']}/{path}",
                                              None, body, passkey=attempt["passkey"])
        assert status == 409, answer
        assert re.search(r"attempt \d+ (is void|has already ended)", answer["error"])
    # The task itself went back to the queue and is handed out again under a new passkey.
    status, again = await world.ask()
    assert again["attempt"]["passkey"] != attempt["passkey"]


async def test_stale_passkey_is_refused_after_a_heartbeat_timeout(world):
    from floe.matchmaker import liveness

    status, given = await world.ask()
    attempt = given["attempt"]
    world.engine.active[attempt["id"]].last_heartbeat -= world.settings.heartbeat_timeout + 1
    assert await liveness.sweep(world.engine) == 1
    status, answer = await world.api.call("POST", f"/api/v1/attempts/{attempt['id']}/report",
                                          None, {"exit_code": 0}, passkey=attempt["passkey"])
    assert status == 409 and "no heartbeat" in answer["error"]


async def test_a_repeated_report_is_acknowledged_but_recorded_once(world):
    _, given = await world.ask()
    attempt = given["attempt"]
    report = {"exit_code": 0, "usage": {"wall_time": 2.0}, "statistics": {"events": 5}}
    path = f"/api/v1/attempts/{attempt['id']}/report"
    first = await world.api.call("POST", path, None, report, passkey=attempt["passkey"])
    second = await world.api.call("POST", path, None, report, passkey=attempt["passkey"])
    assert first == (200, {"recorded": True, "duplicate": False, "task_state": "complete",
                           "reason": None})
    assert second[0] == 200 and second[1]["duplicate"] is True
    _status, stats = await world.api.call("GET", f"/api/v1/datasets/{world.dataset}/statistics",
                                         world.owner)
    events = [r for r in stats["statistics"] if r["name"] == "events" and r["task"] is None]
    assert events[0]["count"] == 1


async def test_a_statistic_that_is_no_number_is_left_out_and_the_work_kept(world):
    """What the pilot left out and what the matchmaker leaves out are warnings on the attempt,
    which completes: finished work is not failed (and retried) for its statistics."""
    _, given = await world.ask()
    attempt = given["attempt"]
    report = {"exit_code": 0, "usage": {"wall_time": 6.0},
              "statistics": {"events": 5, "name": "NVIDIA H200", "huge": 1e300},
              "warnings": ["module gen: the statistics file FLOE_STATS: 'x' is null, not a "
                           "number from -1e+100 to 1e+100: left out"]}
    status, answer = await world.api.call("POST", f"/api/v1/attempts/{attempt['id']}/report",
                                          None, report, passkey=attempt["passkey"])
    assert status == 200 and answer["task_state"] == "complete", answer
    _, task = await world.api.call("GET", f"/api/v1/tasks/{attempt['task_id']}", world.owner)
    recorded = task["attempts"][-1]
    assert recorded["state"] == "complete" and recorded["statistics"] == {"events": 5}
    assert recorded["warnings"] == [
        report["warnings"][0],
        "statistics: 'name' is \"NVIDIA H200\", not a number in range: left out",
        "statistics: 'huge' is 1e+300, not a number in range: left out"]
    _, second = await world.ask()
    _, other = await world.api.call("GET", f"/api/v1/tasks/{second['attempt']['task_id']}",
                                    world.owner)
    assert all(a["warnings"] == [] for a in other["attempts"])


async def test_passkeys_are_long_random_and_stored_hashed(world):
    _, first = await world.ask()
    _, second = await world.ask()
    passkeys = [first["attempt"]["passkey"], second["attempt"]["passkey"]]
    assert passkeys[0] != passkeys[1] and all(len(p) >= 32 for p in passkeys)
    rows = await world.engine.db.fetchall("SELECT passkey_hash FROM attempts")
    stored = {r["passkey_hash"] for r in rows}
    assert not stored & set(passkeys)


async def test_errors_are_json_with_a_4xx_status(world):
    cases = [
        ("GET", "/api/v1/nowhere", world.owner, None, 404),
        ("DELETE", "/api/v1/datasets", world.owner, None, 405),
        ("GET", "/api/v1/datasets/999", world.owner, None, 404),
        ("GET", "/api/v1/datasets", "floe_u_forged", None, 401),
        ("GET", "/api/v1/datasets", "not-a-token", None, 401),
        ("POST", "/api/v1/datasets", world.owner, {"jobs": "many"}, 400),
        ("PUT", f"/api/v1/datasets/{world.dataset}/priority", world.owner, {"priority": -1}, 400),
        ("GET", f"/api/v1/datasets/{world.dataset}/tasks?limit=100000", world.owner, None, 400),
    ]
    for method, path, token, body, expected in cases:
        status, answer = await world.api.call(method, path, token, body)
        assert status == expected, (path, answer)
        assert set(answer) == {"error"} and answer["error"], (path, answer)


async def test_a_method_a_route_does_not_take_is_answered_405_with_allow(world):
    for method, path, allowed in (
            ("DELETE", "/api/v1/datasets", "GET, POST"),
            ("PATCH", f"/api/v1/datasets/{world.dataset}", "DELETE, GET"),
            ("GET", f"/api/v1/pilots/{world.pilot}/ask", "POST")):
        async with world.session.request(method, world.api.base + path,
                                         headers={"Authorization": f"Bearer {world.owner}"}
                                         ) as reply:
            assert reply.status == 405, (method, path)
            assert reply.headers["Allow"] == allowed, (method, path)
            assert (await reply.json())["error"].endswith(f"it takes {allowed}")


async def test_invalid_config_is_refused_with_the_path_value_and_fix(world):
    document = s.config(jobs=2)
    document["tasks"][0]["requirements"]["memory"] = "lots"
    status, answer = await world.api.call("POST", "/api/v1/datasets", world.owner, document)
    assert status == 400
    assert ('tasks[0].requirements.memory: expected a size like "4GB" of at most 1PiB, got '
            '"lots"') in answer["error"]


async def test_a_command_whose_expression_fails_for_every_job_is_refused_at_submit(world):
    document = s.config(jobs=1000, steering={"data": "$system(data)"})
    document["tasks"][0]["modules"] = [{"command": "ls $steering(data)"},
                                       {"command": ["gen", "$eval(1/0)"]}]
    status, answer = await world.api.call("POST", "/api/v1/datasets", world.owner, document)
    assert (status, answer["error"]) == (400, (
        "the dataset config is not valid:\n"
        "tasks[0].modules[1].command[1]: $eval(1/0): division by zero (for job 0)"))


async def test_request_bodies_are_size_capped(world):
    huge = b'{"description": "' + b"x" * (world.settings.max_request_bytes + 10) + b'"}'
    status, answer = await world.api.call("POST", "/api/v1/datasets", world.owner, data=huge)
    assert status == 413 and "at most" in answer["error"]
    status, answer = await world.api.call("POST", "/api/v1/pilots",
                                          await world.registration_token(),
                                          {"host": "h" * 1000})
    assert status == 400 and answer["error"].startswith("host: must have at most 256")


async def chunks(size: int):
    """`size` bytes as a chunked request body (aiohttp sends an async iterator so)."""
    for start in range(0, size, 2**16):
        yield b"x" * min(2**16, size - start)


async def test_a_chunked_body_over_the_limit_is_refused_as_one_that_says_its_size(world):
    limit = world.settings.max_request_bytes
    refusal = (413, {"error": "the request body is too large: this route accepts at most "
                              f"{limit} bytes (the server's max_request_bytes)"})
    sized = await world.api.call("POST", "/api/v1/datasets", world.owner, data=b"x" * (limit + 1))
    assert sized == refusal
    for size in (limit + 1, 3 * limit):  # 3 * limit is over aiohttp's own cap, client_max_size
        chunked = await world.api.call("POST", "/api/v1/datasets", world.owner,
                                       data=chunks(size))
        assert chunked == refusal, size
    # A route with a larger limit of its own takes a chunked body up to it.
    status, answer = await world.api.call("POST", f"/api/v1/pilots/{world.pilot}/reports",
                                          world.pilot_key, data=chunks(3 * limit))
    assert (status, answer["error"][:27]) == (400, "the body is not valid JSON:")


async def test_a_body_field_is_named_by_its_path_with_the_bounds_the_docs_give(world):
    priority = f"/api/v1/datasets/{world.dataset}/priority"
    for body, error in [
            ({"priority": 0}, "priority: must be greater than 0, got 0"),
            ({"priority": 0.0}, "priority: must be greater than 0, got 0"),
            ({"priority": 5000}, "priority: must be at most 1,000, got 5,000"),
            ({}, "priority: required"),
            ({"priority": 2, "weight": 1}, "weight: unknown key (known: priority)"),
            ([2], "the body: expected an object, got [2]")]:
        assert await world.api.call("PUT", priority, world.owner, body) == (400, {"error": error})
    status, answer = await world.api.call("PUT", priority, world.owner, {"priority": 0.0005})
    assert (status, answer["priority"]) == (200, 0.0005)


async def test_unknown_keys_in_bodies_are_refused_with_a_suggestion(world):
    status, answer = await world.api.call("POST", f"/api/v1/pilots/{world.pilot}/ask",
                                          world.pilot_key,
                                          {"cpus": 1, "memory": 1, "disk": 1, "gpu": 1})
    assert status == 400 and 'gpu: unknown key; did you mean "gpus"?' in answer["error"]


BATCH_JOBS = "/api/v1/sites/{site}/batch-jobs"


async def test_a_factory_learns_which_of_its_pilots_registered_at_its_site(world):
    # site-a's pilot registered as slurm job 42 (World.populate); site-b's without a batch id.
    async def registered(site: str, token: str, batch_system: str, pilots: list[str]):
        status, answer = await world.api.call(
            "POST", BATCH_JOBS.format(site=site), token,
            {"batch_system": batch_system, "pilots": pilots})
        assert status == 200, answer
        assert answer["lost"] == []
        return answer["registered"]

    assert await registered("site-a", world.site_token, "slurm", ["41", "42", "43", "42"]) \
        == ["42"]
    assert await registered("site-a", world.site_token, "pbs", ["42"]) == []
    assert await registered("site-b", world.other_site_token, "slurm", ["42"]) == []
    assert await registered("site-a", world.site_token, "slurm", []) == []
    status, answer = await world.api.call("POST", BATCH_JOBS.format(site="site-a"),
                                          world.site_token, {"pilots": ["42"]})
    assert status == 400 and answer["error"] == "batch_system: required"


async def test_a_pilot_whose_batch_job_ended_is_lost_at_once_with_what_it_ran(world):
    status, given = await world.ask()
    assert status == 200, given
    given = given["attempt"]
    attempt = given["id"]

    async def ended(site: str, token: str, batch_system: str, ids: list[str]) -> list[str]:
        status, answer = await world.api.call(
            "POST", BATCH_JOBS.format(site=site), token,
            {"batch_system": batch_system, "ended": ids})
        assert status == 200, answer
        return answer["lost"]

    # The same batch id of another batch system, or seen by another site's factory, is another
    # batch job: the pilot (site-a, slurm 42) runs on.
    assert await ended("site-a", world.site_token, "pbs", ["42"]) == []
    assert await ended("site-b", world.other_site_token, "slurm", ["42"]) == []
    assert world.pilot in world.engine.pilots and attempt in world.engine.active
    assert await ended("site-a", world.site_token, "slurm", ["41", "42"]) == ["42"]
    assert world.pilot not in world.engine.pilots and attempt not in world.engine.active
    status, record = await world.api.call("GET", f"/api/v1/attempts/{attempt}", world.owner)
    assert record["state"] == "reset" and record["error_class"] == "pilot_lost"
    assert record["error_message"].startswith(f"the batch job of pilot {world.pilot} (slurm 42) "
                                              "ended while it ran this")
    status, pilots = await world.api.call("GET", "/api/v1/pilots?site=site-a&state=lost",
                                          world.owner)
    lost = [p for p in pilots["pilots"] if p["pilot_id"] == world.pilot]
    assert lost and "batch job ended" in lost[0]["exit_reason"], pilots
    # The task is ready again at once, and its passkey is void.
    status, again = await world.ask(pilot=await world.new_pilot())
    assert again["attempt"]["task_id"] == given["task_id"], again
    status, answer = await send_as_attempt(world, "heartbeat", attempt, world.pilot_key,
                                           given["passkey"])
    assert status == 409 and f"is void (the batch job of pilot {world.pilot}" in answer["error"]
    # Told again (a factory that did not hear the answer), nothing more happens.
    assert await ended("site-a", world.site_token, "slurm", ["42"]) == []


async def test_openapi_document_lists_exactly_the_routes_the_server_serves(world):
    status, document = await world.api.call("GET", "/api/v1/openapi.json")
    assert status == 200
    documented = {(method.upper(), path) for path, ops in document["paths"].items()
                  for method in ops}
    served = set()
    for resource in world.app.router.resources():
        info = resource.get_info()
        if info.get("formatter") == "/api/{tail}":  # the JSON 404/405 catch-all
            continue
        path = info.get("path") or info.get("formatter")
        for route in resource:
            web_page = route.handler.__module__.startswith("floe.matchmaker.web")  # HTML, not API
            if route.method != "HEAD" and not web_page:
                served.add((route.method, path))
    assert documented == served
    # Each route that takes a JSON body documents it with a valid JSON Schema (2020-12, as
    # OpenAPI 3.1 has it): every body the server takes in these tests is checked against it
    # (Api.check_taken_body), and test_every_route_takes_what_its_schema_takes and those of
    # test_openapi.py check that the schema refuses what the server refuses.
    by_key = {(r.method, r.path): r for r in ROUTES}
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            declared = by_key[(method.upper(), path)]
            content = op.get("requestBody", {}).get("content", {})
            assert ("application/json" in content) == (declared.body is not None), path
            if declared.body is not None:
                Draft202012Validator.check_schema(content["application/json"]["schema"])
    submitted = document["paths"]["/api/v1/datasets"]["post"]["requestBody"]["content"]
    assert submitted["application/json"]["schema"] == dataset_config.json_schema()


async def test_every_route_takes_what_its_schema_takes_and_refuses_an_unknown_key(world):
    # Each body of the matrices, sent as a role that may send it: the server takes it (and
    # Api.call checks it against the document); with one key more, both refuse it.
    documented = body_schemas((await world.api.call("GET", "/api/v1/openapi.json"))[1])
    _, given = await world.ask()
    attempt = given["attempt"]
    actions = [(method, path, body, sorted(allowed)[0])
               for method, path, body, allowed in MATRIX.values() if isinstance(body, dict)]
    actions += [(method, path, body, "passkey")
                for method, path, body in PASSKEY_ACTIONS.values() if isinstance(body, dict)]
    for method, path, body, role in actions:
        handed_out = dict(attempt)
        target = await path_for(world, path, handed_out)
        named = re.search(r"/pilots/(\d+)/", target)
        pilot = int(named.group(1)) if named else None
        token = None if role == "passkey" else await token_of(world, role, pilot)
        passkey = attempt["passkey"] if role == "passkey" else None
        if "name" in body:
            body = {"name": body["name"].format(role="schema")}
        status, answer = await world.api.call(method, target, token, body, passkey=passkey)
        assert status in (200, 201), (path, answer)
        if role == "pilot_token":  # it has registered its pilot
            token = await token_of(world, role)
        surplus = dict(body, surplus_key=1)
        status, answer = await world.api.call(method, target, token, surplus, passkey=passkey)
        assert status == 400 and "surplus_key" in answer["error"], (path, answer)
        schema = next(v for verb, _, pattern, v in documented
                      if verb == method and pattern.fullmatch(target))
        assert not schema.is_valid(surplus), path
    assert {(method, path) for method, path, *_ in documented} == world.api.checked


def declared_answer(document: dict, method: str, path: str, status: int) -> dict:
    """The schema the OpenAPI document declares for a route's answer of `status`."""
    return document["paths"][path][method.lower()]["responses"][str(status)]["content"][
        "application/json"]["schema"]


def exactly_declared(answer, schema: dict) -> list[str]:
    """How `answer` breaks `schema` (of one of its `oneOf` shapes, exactly one of which must
    take it), or a declared shape that leaves any of its fields optional; [] when the answer is
    exactly what the schema declares."""
    shapes = schema.get("oneOf", [schema])
    taking = [shape for shape in shapes if not problems(answer, shape)]
    if len(taking) != 1:
        return [f"{len(taking)} of the declared shapes take {answer!r}: "
                + "; ".join(p for shape in shapes for p in problems(answer, shape))]
    shape = taking[0]
    if shape.get("additionalProperties") is not False or \
            set(shape.get("required", ())) != set(answer):
        return [f"the declared shape of {sorted(answer)} is not exact: {shape}"]
    return []


async def test_pilot_answers_are_exactly_what_the_openapi_document_declares(world):
    _, document = await world.api.call("GET", "/api/v1/openapi.json")

    token = await world.registration_token()

    async def check(method, path, body, status=200):
        got, answer = await world.api.call(method, path, token, body)
        assert got == status, answer
        pattern = re.sub(r"/\d+/", "/{pilot_id}/", path)
        assert exactly_declared(answer, declared_answer(document, method, pattern, status)) \
            == [], (path, answer)
        return answer

    registered = await check("POST", "/api/v1/pilots", {"host": "node3"}, 201)
    pilot, token = registered["pilot_id"], registered["key"]
    ask = f"/api/v1/pilots/{pilot}/ask"
    assert (await check("POST", ask, s.FREE))["attempt"]
    assert len((await check("POST", ask, dict(s.FREE, cpus=2, max_tasks=2)))["attempts"]) == 2
    tiny = dict(s.FREE, memory=2**20)
    assert (await check("POST", ask, tiny))["attempt"] is None
    assert (await check("POST", ask, dict(tiny, max_tasks=3)))["attempts"] == []
    assert (await check("POST", f"/api/v1/pilots/{pilot}/exit", {"reason": "idle"}))[
        "state"] == "exited"


def test_a_loose_answer_schema_is_not_exact():
    assert exactly_declared({"pilot_id": 1}, {"type": "object"}) != []
    assert exactly_declared({"attempt": None}, {"oneOf": [{"type": "object"}] * 2}) != []


async def test_submit_answers_before_a_large_dataset_is_created_and_work_starts_early(world):
    status, dataset = await world.api.call("POST", "/api/v1/datasets", world.owner,
                                           s.config(jobs=200_000))
    assert status == 201
    assert dataset["jobs_created"] < dataset["jobs"]
    # Tasks are matchable long before all jobs exist.
    state = world.engine.datasets[dataset["id"]]
    while state.materialized == 0:
        await asyncio.sleep(0.01)
    status, given = await world.ask()
    assert given["attempt"] is not None
    await world.wait_created(dataset["id"])
    rows = await world.engine.db.fetchone(
        "SELECT count(*) AS n FROM tasks WHERE dataset_id = ?", (dataset["id"],))
    assert rows["n"] == 200_000


async def test_text_and_numbers_that_json_loads_takes_but_json_has_not_are_refused(world):
    status, given = await world.api.call(
        "POST", f"/api/v1/pilots/{world.pilot}/ask", world.pilot_key,
        {"cpus": 2, "memory": 8 * 2**30, "disk": 10 * 2**30, "seconds": 86400, "max_tasks": 2})
    first, second = given["attempts"]
    path = f"/api/v1/pilots/{world.pilot}/reports"

    def reports(attempt: dict, tail: str, cpu: str = "1.0") -> bytes:
        """A bulk report of `attempt` whose tail and CPU time go into the JSON text as given."""
        body = {"reports": [{"attempt_id": attempt["id"], "passkey": attempt["passkey"],
                             "exit_code": 0, "usage": {"cpu_time": "CPU"}, "stdout_tail": "TAIL"}]}
        return json.dumps(body).replace('"CPU"', cpu).replace("TAIL", tail).encode()

    # A lone half of a surrogate pair reached SQLite in the writer process (500 there).
    status, answer = await world.api.call("POST", path, world.pilot_key,
                                          data=reports(first, "ok \\ud800 then"))
    assert status == 400, answer
    assert answer["error"].startswith("reports[0].stdout_tail: holds a \\u escape of half a "
                                      "UTF-16 surrogate pair")
    status, answer = await world.api.call("POST", path, world.pilot_key,
                                          data=reports(first, "ok", cpu="NaN"))
    assert status == 400 and "NaN is no JSON value" in answer["error"], answer
    # The same half written as UTF-8 bytes (which json.loads lets through) is not UTF-8.
    status, answer = await world.api.call(
        "POST", path, world.pilot_key,
        data=reports(first, "ok").replace(b'"ok"', b'"ok \xed\xa0\x80"'))
    assert status == 400 and answer["error"].startswith("the body is not UTF-8"), answer
    # A whole pair is a character like any other, and nothing refused was recorded.
    status, answer = await world.api.call("POST", path, world.pilot_key,
                                          data=reports(first, "ok \\ud83d\\ude00"))
    assert status == 200 and answer["results"][0]["recorded"], answer
    status, attempt = await world.api.call("GET", f"/api/v1/attempts/{first['id']}",
                                           world.owner)
    assert attempt["stdout_tail"] == "ok \U0001F600"
    status, answer = await world.api.call("POST", path, world.pilot_key,
                                          data=reports(second, "fine"))
    assert status == 200 and answer["results"][0]["recorded"], answer


async def test_a_walltime_of_digits_int_cannot_read_is_refused_not_a_server_error(world):
    document = s.config(jobs=1)
    for walltime in ("²", "1²h", "٣:00"):
        document["tasks"][0]["requirements"]["walltime"] = walltime
        status, answer = await world.api.call("POST", "/api/v1/datasets", world.owner, document)
        assert status == 400, (walltime, answer)
        assert "tasks[0].requirements.walltime: expected a duration" in answer["error"]


async def test_text_answers_are_declared_as_text_in_the_openapi_document(world):
    _, document = await world.api.call("GET", "/api/v1/openapi.json")
    _, given = await world.ask()
    attempt = given["attempt"]
    await world.api.call("POST", f"/api/v1/attempts/{attempt['id']}/report", None,
                         {"exit_code": 0, "stdout_tail": "done\n"}, passkey=attempt["passkey"])
    for path, documented in (("/metrics", "/metrics"),
                             (f"/api/v1/attempts/{attempt['id']}/logs/stdout",
                              "/api/v1/attempts/{attempt_id}/logs/stdout")):
        async with world.session.get(world.api.base + path,
                                     headers={"Authorization": f"Bearer {world.owner}"}) as reply:
            assert reply.status == 200
            served = reply.content_type
        documented = documented.replace("/stdout", "/{stream}")
        [declared] = document["paths"][documented]["get"]["responses"]["200"]["content"]
        assert declared == served and served.startswith("text/"), (path, declared, served)


async def test_health_says_stalled_while_a_write_waits_beyond_the_watchdog(world):
    db = world.engine.db
    db.stall_after = 0.2
    release = threading.Event()
    job = asyncio.ensure_future(db.exclusive(lambda conn: release.wait(10)))
    try:
        for _ in range(100):
            if db.stalled is not None:
                break
            await asyncio.sleep(0.05)
        status, answer = await world.api.call("GET", "/api/v1/health", None)
        assert status == 503 and answer["status"] == "stalled", answer
        assert answer["stalled_for"] > 0 and answer["database"]["stalls"] == 1
    finally:
        release.set()
        await job
    world.stalls_expected = 1
    for _ in range(100):
        if db.stalled is None:
            break
        await asyncio.sleep(0.05)
    status, answer = await world.api.call("GET", "/api/v1/health", None)
    assert status == 200 and answer["status"] == "ok"


async def test_a_write_the_writer_dies_in_the_middle_of_is_refused_503_retryable(world, caplog):
    token = await world.registration_token()
    process = world.engine.db._process._process
    os.kill(process.pid, signal.SIGSTOP)  # the registration reaches the pipe, never a commit

    async def register():
        async with world.session.post(world.api.base + "/api/v1/pilots", json={"host": "n"},
                                      headers={"Authorization": f"Bearer {token}"}
                                      ) as reply:
            return reply.status, await reply.json(), reply.headers

    registered = asyncio.ensure_future(register())
    await asyncio.sleep(0.3)
    os.kill(process.pid, signal.SIGKILL)
    status, answer, headers = await registered
    assert status == 503 and headers["Retry-After"] == "1", answer
    assert answer["error"].startswith("the matchmaker could not store this now (the database "
                                      "writer process ended in the middle of a write")
    assert answer["error"].endswith("nothing of it was kept: try again in a moment")
    assert not [r for r in caplog.records if r.exc_info]  # no traceback: a known fault
    status, again = await world.api.call("POST", "/api/v1/pilots", token, {"host": "n"})
    assert status == 201, again  # a new writer takes the retry, and the token is not spent
