"""The HTTP API of a real server (aiohttp on loopback, real SQLite file): authorization matrix,
passkeys, errors as JSON, size caps, and the OpenAPI document matching the routes."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from config.settings import server_settings
from matchmaker.api.framework import AUTH, ENGINE, ROUTES
from matchmaker.server import create_app

from . import support as s


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

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
            return reply.status, payload


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
        auth = self.app[AUTH]
        _, self.admin = await auth.add_user("root", admin=True)
        _, self.owner = await auth.add_user("alice")
        _, self.other = await auth.add_user("bob")
        self.site_a, self.site_token = await auth.add_site("site-a")
        self.site_b, self.other_site_token = await auth.add_site("site-b")
        self.pilot_token, _ = await auth.pilot_token(self.site_a, 3600)
        self.other_pilot_token, _ = await auth.pilot_token(self.site_b, 3600)
        status, dataset = await self.api.call("POST", "/api/v1/datasets", self.owner,
                                              s.config(jobs=20))
        assert status == 201, dataset
        self.dataset = dataset["id"]
        await self.wait_created(self.dataset)
        status, pilot = await self.api.call("POST", "/api/v1/pilots", self.pilot_token,
                                            {"host": "node1", "batch_system": "slurm",
                                             "batch_id": "42"})
        assert status == 201, pilot
        self.pilot = pilot["pilot_id"]
        status, pilot = await self.api.call("POST", "/api/v1/pilots", self.other_pilot_token,
                                            {"host": "node9"})
        self.other_pilot = pilot["pilot_id"]
        return self

    async def wait_created(self, dataset_id: int) -> None:
        for _ in range(500):
            state = self.engine.datasets[dataset_id]
            if state.materialized == state.jobs:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("jobs were not created")

    async def ask(self, token=None, pilot=None):
        return await self.api.call("POST", f"/api/v1/pilots/{pilot or self.pilot}/ask",
                                   token or self.pilot_token,
                                   {"cpus": 1, "memory": 4 * 2**30, "disk": 10 * 2**30,
                                    "seconds": 86400})

    async def stop(self) -> None:
        await self.session.close()
        await self.server.close()


@pytest.fixture
async def world(tmp_path):
    started = await World().start(tmp_path)
    yield started
    await started.stop()


ROLES = ("anonymous", "admin", "owner", "other_user", "site", "other_site", "pilot",
         "other_pilot")


def token_of(world: World, role: str) -> str | None:
    return {"anonymous": None, "admin": world.admin, "owner": world.owner,
            "other_user": world.other, "site": world.site_token,
            "other_site": world.other_site_token, "pilot": world.pilot_token,
            "other_pilot": world.other_pilot_token}[role]


# action: (method, path, body, roles that are allowed). Everyone else is refused with 401
# (no token) or 403 (a token that may not do this).
MATRIX = {
    "list datasets": ("GET", "/api/v1/datasets", None, {"admin", "owner", "other_user"}),
    "read a dataset": ("GET", "/api/v1/datasets/{dataset}", None,
                       {"admin", "owner", "other_user"}),
    "submit a dataset": ("POST", "/api/v1/datasets", s.config(jobs=1),
                         {"admin", "owner", "other_user"}),
    "change priority": ("PUT", "/api/v1/datasets/{dataset}/priority", {"priority": 2},
                        {"admin", "owner"}),
    "add a user": ("POST", "/api/v1/users", {"name": "new-{role}"}, {"admin"}),
    "set a share": ("PUT", "/api/v1/users/bob/share", {"share": 2}, {"admin"}),
    "add a site": ("POST", "/api/v1/sites", {"name": "site-{role}"}, {"admin"}),
    "get a pilot token": ("POST", "/api/v1/sites/site-a/pilot-tokens", {"lifetime": 600},
                          {"admin", "site"}),
    "read site demand": ("POST", "/api/v1/sites/site-a/demand",
                         {"shapes": [{"name": "small", "cpus": 1, "memory": 2**31,
                                      "disk": 2**33, "walltime": 7200}]}, {"admin", "site"}),
    "register a pilot": ("POST", "/api/v1/pilots", {"host": "n"}, {"pilot", "other_pilot"}),
    "ask for a task": ("POST", "/api/v1/pilots/{pilot}/ask",
                       {"cpus": 1, "memory": 2**32, "disk": 2**34}, {"pilot"}),
    "list pilots": ("GET", "/api/v1/pilots", None, {"admin", "owner", "other_user"}),
    "read users": ("GET", "/api/v1/users", None, {"admin", "owner", "other_user"}),
}


@pytest.mark.parametrize("action", sorted(MATRIX))
async def test_authorization_matrix(world, action):
    method, path, body, allowed = MATRIX[action]
    path = path.format(dataset=world.dataset, pilot=world.pilot)
    for role in ROLES:
        payload = body
        if isinstance(body, dict) and "name" in body:
            payload = {"name": body["name"].format(role=role).replace("_", "-")}
        status, answer = await world.api.call(method, path, token_of(world, role), payload)
        if role in allowed:
            assert status in (200, 201), (role, status, answer)
        else:
            expected = 401 if role == "anonymous" else 403
            assert status == expected, (role, status, answer)
            assert isinstance(answer["error"], str) and answer["error"]


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


async def test_pilot_reports_only_on_its_own_attempts(world):
    status, given = await world.ask()
    attempt = given["attempt"]
    report = {"exit_code": 0, "usage": {"wall_time": 3.0}}
    path = f"/api/v1/attempts/{attempt['id']}/report"
    status, answer = await world.api.call("POST", path, world.other_pilot_token, report,
                                          passkey="not-the-passkey")
    assert status == 403 and "wrong passkey" in answer["error"]
    status, answer = await world.api.call("POST", path, world.pilot_token, report)
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
    from matchmaker import outcomes

    status, given = await world.ask()
    attempt = given["attempt"]
    world.engine.active[attempt["id"]].last_heartbeat -= world.settings.heartbeat_timeout + 1
    assert await outcomes.sweep(world.engine) == 1
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


async def test_invalid_config_is_refused_with_the_path_value_and_fix(world):
    document = s.config(jobs=2)
    document["tasks"][0]["requirements"]["memory"] = "lots"
    status, answer = await world.api.call("POST", "/api/v1/datasets", world.owner, document)
    assert status == 400
    assert 'tasks[0].requirements.memory: expected a size like "4GB", got "lots"' in \
        answer["error"]


async def test_request_bodies_are_size_capped(world):
    huge = b'{"description": "' + b"x" * (world.settings.max_request_bytes + 10) + b'"}'
    status, answer = await world.api.call("POST", "/api/v1/datasets", world.owner, data=huge)
    assert status == 413 and "at most" in answer["error"]
    status, answer = await world.api.call("POST", "/api/v1/pilots", world.pilot_token,
                                          {"host": "h" * 1000})
    assert status == 400 and "body.host" in answer["error"]


async def test_unknown_keys_in_bodies_are_refused_with_a_suggestion(world):
    status, answer = await world.api.call("POST", f"/api/v1/pilots/{world.pilot}/ask",
                                          world.pilot_token,
                                          {"cpus": 1, "memory": 1, "disk": 1, "gpu": 1})
    assert status == 400 and 'body.gpu: unknown key; did you mean "gpus"?' in answer["error"]


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
            if route.method != "HEAD":
                served.add((route.method, path))
    assert documented == served
    # Body schemas in the document are the ones the server enforces.
    by_key = {(r.method, r.path): r for r in ROUTES}
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            declared = by_key[(method.upper(), path)]
            if declared.body is not None:
                assert op["requestBody"]["content"]["application/json"]["schema"] == \
                    declared.body


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
