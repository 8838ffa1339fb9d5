"""What every request goes through (matchmaker.frontdoor) on a server in this process: a
trusted proxy's X-Forwarded-* headers (believed from a trusted address only), `base_path`,
the access and audit logs; the sessions' sealed cookies and signing out; the health check
while the database's writer process is down."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from floe.config.settings import server_settings
from floe.matchmaker.api.framework import AUTH, ENGINE
from floe.matchmaker.server import create_app
from floe.matchmaker.web.sessions import LIFETIME, SESSION_COOKIE, Sessions
from tests.matchmaker import support as s
from tests.web.conftest import csrf_of

HTTPS_PROXY = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9",
               "X-Forwarded-Prefix": "/floe"}


class Served:
    """A matchmaker in this process, with an admin `root` and a user `alice`."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.directory = tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.audit = tmp_path / "audit.log"
        self.access = tmp_path / "access.log"
        self.settings = server_settings({
            "database": str(tmp_path / "floe.sqlite"), "audit_log_file": str(self.audit),
            "access_log_file": str(self.access), **settings})

    async def start(self) -> Served:
        self.app = create_app(self.settings, background=False)
        self.server = TestServer(self.app, host="127.0.0.1")
        await self.server.start_server()
        self.base = str(self.server.make_url("")).rstrip("/")
        self.engine = self.app[ENGINE]
        self.root, self.root_token = await self.app[AUTH].add_user("root", admin=True)
        self.alice, self.alice_token = await self.app[AUTH].add_user("alice")
        # Cookies kept by hand: a browser behind the proxy sends those of /floe/... for what
        # the server sees as /..., which a cookie jar here would not.
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self.cookies: dict[str, str] = {}
        return self

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      **options: Any) -> tuple[int, str, aiohttp.ClientResponse]:
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        async with self.http.request(method, self.base + path, allow_redirects=False,
                                     headers=sent, **options) as reply:
            for name, morsel in reply.cookies.items():
                if morsel.value:
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
            return reply.status, await reply.text(), reply

    async def sign_in(self, token: str, headers: dict[str, str] | None = None
                      ) -> aiohttp.ClientResponse:
        """Sign in as a browser does; the answer to the form's POST (a redirect)."""
        _, text, _ = await self.request("GET", "/signin", headers=headers)
        status, text, reply = await self.request(
            "POST", "/signin", data={"token": token, "next": "/", "csrf": csrf_of(text)},
            headers=headers)
        assert status == 303, text
        return reply

    def lines(self, log: Path) -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    async def stop(self) -> None:
        await self.http.close()
        await self.server.close()


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    made: list[Served] = []

    async def start(**settings: Any) -> Served:
        served = await Served(tmp_path / str(len(made)), **settings).start()
        made.append(served)
        return served

    yield start
    for served in made:
        await served.stop()


async def test_a_trusted_proxy_sets_scheme_prefix_and_client(serve):
    served = await serve(trusted_proxies=["127.0.0.0/8"], access_log="json")
    reply = await served.sign_in(served.alice_token, HTTPS_PROXY)
    assert reply.headers["Location"] == "/floe/"
    cookie = reply.cookies[SESSION_COOKIE]
    assert cookie["secure"] and cookie["path"] == "/floe/"
    status, text, _ = await served.request("GET", "/", headers=HTTPS_PROXY)
    assert status == 200, text
    assert 'href="/floe/static/floe.css"' in text and 'action="/floe/signout"' in text
    assert not re.search(r'(href|action)="/(?!floe/)', text), text
    logged = [json.loads(line) for line in served.lines(served.access)]
    assert logged[-1] | {"ms": 0, "time": ""} == {
        "time": "", "client": "203.0.113.9", "principal": "alice", "method": "GET",
        "path": "/", "status": 200, "bytes": len(text.encode()), "ms": 0}


async def test_an_untrusted_client_cannot_claim_a_scheme_prefix_or_address(serve):
    served = await serve(trusted_proxies=["10.0.0.0/8"], access_log="text")
    reply = await served.sign_in(served.alice_token, HTTPS_PROXY)
    assert reply.headers["Location"] == "/"
    cookie = reply.cookies[SESSION_COOKIE]
    assert not cookie["secure"] and cookie["path"] == "/"
    status, text, _ = await served.request("GET", "/", headers=HTTPS_PROXY)
    assert status == 200 and 'href="/static/floe.css"' in text
    assert served.lines(served.access)[-1].split()[1:7] == [
        "127.0.0.1", "alice", "GET", "/", "200", str(len(text.encode()))]
    assert "203.0.113.9" not in served.access.read_text()


async def test_base_path_prefixes_links_redirects_and_cookies_without_a_proxy_header(serve):
    served = await serve(base_path="/floe")
    status, _, reply = await served.request("GET", "/datasets/1")
    assert status == 303 and reply.headers["Location"].startswith("/floe/signin?next=")
    reply = await served.sign_in(served.alice_token)
    assert reply.headers["Location"] == "/floe/"
    assert reply.cookies[SESSION_COOKIE]["path"] == "/floe/"


async def test_the_forwarded_client_is_the_last_address_no_trusted_proxy_added(serve):
    served = await serve(trusted_proxies=["127.0.0.1", "192.0.2.0/24"], access_log="text")
    headers = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 192.0.2.7"}
    status, _, _ = await served.request("GET", "/api/v1/health", headers=headers)
    assert status == 200
    assert served.lines(served.access)[-1].split()[1] == "203.0.113.9"


async def test_a_change_through_the_api_is_one_audit_line_naming_who_what_and_where(serve):
    served = await serve(trusted_proxies=["127.0.0.1"])
    admin = {"Authorization": f"Bearer {served.root_token}",
             "X-Forwarded-For": "198.51.100.4"}
    status, text, _ = await served.request("PUT", "/api/v1/users/alice/share",
                                           json={"share": 2.5}, headers=admin)
    assert status == 200, text
    status, text, _ = await served.request("POST", "/api/v1/users/alice/token", headers=admin)
    assert status == 201, text
    token = json.loads(text)["token"]
    status, _, _ = await served.request("GET", "/api/v1/users", headers=admin)
    assert status == 200
    lines = served.lines(served.audit)
    assert [line.split(" ", 1)[1] for line in lines] == [
        "root (admin) from 198.51.100.4: PUT /api/v1/users/alice/share -> 200 user=alice",
        "root (admin) from 198.51.100.4: POST /api/v1/users/alice/token -> 201 user=alice"]
    assert token not in served.audit.read_text()


async def test_submitting_a_dataset_is_audited_with_the_id_it_made(serve):
    served = await serve(audit_log="json")
    status, text, _ = await served.request(
        "POST", "/api/v1/datasets", json=s.config(jobs=1),
        headers={"Authorization": f"Bearer {served.alice_token}"})
    assert status == 201, text
    (line,) = served.lines(served.audit)
    assert json.loads(line) | {"time": ""} == {
        "time": "", "principal": "alice", "role": "user", "client": "127.0.0.1",
        "method": "POST", "path": "/api/v1/datasets", "status": 201,
        "created": json.loads(text)["id"]}


async def test_a_page_form_and_signing_in_and_out_are_audited_but_refusals_are_not(serve):
    served = await serve()
    dataset = await s.submit(served.engine, served.alice, s.config(jobs=1))
    await served.sign_in(served.alice_token)
    _, page, _ = await served.request("GET", f"/datasets/{dataset.id}")
    status, text, _ = await served.request("POST", f"/datasets/{dataset.id}/suspend",
                                           data={"csrf": "forged"})
    assert status == 403, text
    status, text, _ = await served.request("POST", f"/datasets/{dataset.id}/suspend",
                                           data={"csrf": csrf_of(page)})
    assert status == 303, text
    status, _, _ = await served.request("POST", "/signout", data={"csrf": csrf_of(page)})
    assert status == 303
    assert [line.split(" ", 1)[1] for line in served.lines(served.audit)] == [
        "alice (user) from 127.0.0.1: POST /signin -> 303",
        f"alice (user) from 127.0.0.1: POST /datasets/{dataset.id}/suspend -> 303 "
        f"dataset={dataset.id} action=suspend",
        "alice (user) from 127.0.0.1: POST /signout -> 303"]


async def test_what_pilots_send_is_not_audited_and_no_log_holds_a_secret(serve):
    served = await serve(access_log="text")
    _, site_token = await served.app[AUTH].add_site("site-a")
    status, text, _ = await served.request(
        "POST", "/api/v1/sites/site-a/pilot-tokens", json={"lifetime": 3600},
        headers={"Authorization": f"Bearer {site_token}"})
    assert status == 201, text
    (pilot_token,) = json.loads(text)["tokens"]
    status, text, _ = await served.request("POST", "/api/v1/pilots", json={"host": "node1"},
                                           headers={"Authorization": f"Bearer {pilot_token}"})
    assert status == 201, text
    assert served.lines(served.audit) == []
    access = served.access.read_text()
    assert "POST /api/v1/pilots 201" in access and "site:site-a" in access
    for secret in (site_token, pilot_token, json.loads(text)["key"]):
        assert secret not in access


async def test_a_session_opens_in_a_new_sessions_object_but_not_once_signed_out(tmp_path):
    database = tmp_path / "floe.sqlite"
    first = Sessions()
    first.open(database)
    cookie = first.create("a" * 64)
    again = Sessions()
    again.open(database)
    session = again.find(cookie)
    assert session is not None and session.token_digest == "a" * 64
    assert session.csrf == first.find(cookie).csrf
    again.end(session)
    restarted = Sessions()
    restarted.open(database)
    assert restarted.find(cookie) is None
    assert oct(os.stat(f"{database}.session-key").st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("change", ["tampered", "other key", "expired"])
def test_a_cookie_not_sealed_by_this_server_now_is_no_session(tmp_path, change):
    now = [1_700_000_000.0]
    sessions = Sessions(clock=lambda: now[0])
    sessions.open(tmp_path / "floe.sqlite")
    cookie = sessions.create("b" * 64)
    if change == "tampered":
        cookie = cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BB")
    elif change == "other key":
        sessions = Sessions(clock=lambda: now[0])
        sessions.open(tmp_path / "other.sqlite")
    else:
        now[0] += LIFETIME + 1
    assert sessions.find(cookie) is None


async def test_a_replaced_token_ends_its_web_sessions(serve):
    served = await serve()
    await served.sign_in(served.alice_token)
    assert (await served.request("GET", "/"))[0] == 200
    await served.app[AUTH].new_user_token(served.alice)
    served.app[AUTH]._known.clear()  # what the cache's few seconds would do
    status, _, reply = await served.request("GET", "/")
    assert status == 303 and reply.headers["Location"].startswith("/signin")


async def test_health_is_503_while_the_writer_process_is_down_and_ok_once_a_write_restarts_it(
        serve):
    served = await serve()
    status, text, _ = await served.request("GET", "/api/v1/health")
    assert status == 200 and json.loads(text)["database"]["writer_alive"], text
    os.kill(served.engine.db.writer_pid, signal.SIGKILL)
    for _ in range(100):
        status, text, _ = await served.request("GET", "/api/v1/health")
        if status == 503:
            break
        await asyncio.sleep(0.05)
    answer = json.loads(text)
    assert status == 503 and answer["status"] == "writer_down", text
    assert "writer process is not running" in answer["reason"]
    site = await s.site(served.engine)
    await s.pilot(served.engine, site)  # a write: a new writer process takes it
    status, text, _ = await served.request("GET", "/api/v1/health")
    assert status == 200 and json.loads(text)["status"] == "ok", text
