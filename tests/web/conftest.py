"""Fixtures of the web-page tests: a matchmaker served in this process (real aiohttp on loopback,
real SQLite file) with a run recorded through the engine's own dispatch and report, a client
that signs in like a browser does; and Debian's chromium, installed by scripts/chromium.sh."""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from floe.config.settings import server_settings
from floe.matchmaker.api.framework import AUTH, ENGINE
from floe.matchmaker.server import create_app
from tests.matchmaker import support as s

ROOT = Path(__file__).resolve().parents[2]
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


class Browser:
    """An HTTP client with its own cookie jar, as one browser would be."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def get(self, path: str, **options: Any) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.get(self.base + path, **options) as reply:
            return reply.status, await reply.text(), reply

    async def post(self, path: str, data: dict[str, str], **options: Any
                   ) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.post(self.base + path, data=data, **options) as reply:
            return reply.status, await reply.text(), reply

    async def sign_in(self, token: str) -> None:
        status, text, _ = await self.get("/signin")
        assert status == 200, text
        status, text, _ = await self.post("/signin", {"token": token, "next": "/",
                                                      "csrf": csrf_of(text)})
        assert status == 200 and "Sign out" in text, text

    async def csrf(self, path: str = "/") -> str:
        """The CSRF token of this browser's session, as its pages carry it."""
        status, text, _ = await self.get(path)
        assert status == 200, text
        return csrf_of(text)

    async def close(self) -> None:
        await self.session.close()


def csrf_of(page: str) -> str:
    found = CSRF_RE.search(page)
    assert found, page
    return found.group(1)


class Pages:
    """A served matchmaker with root (admin), alice, bob, site-a, and alice's dataset of 3
    jobs x (generate -> check) after a run: every task complete except check of job 1, which
    failed with its logs uploaded."""

    async def start(self, tmp_path: Path) -> Pages:
        settings = server_settings({"database": str(tmp_path / "floe.sqlite")})
        self.app = create_app(settings, background=False)
        self.server = TestServer(self.app)
        await self.server.start_server()
        self.base = str(self.server.make_url("")).rstrip("/")
        self.engine = self.app[ENGINE]
        auth = self.app[AUTH]
        self.root, self.admin_token = await auth.add_user("root", admin=True)
        self.alice, self.alice_token = await auth.add_user("alice")
        self.bob, self.bob_token = await auth.add_user("bob")
        self.site, self.site_token = await auth.add_site("site-a")
        self.dataset = await s.submit(self.engine, self.alice, s.config(
            jobs=3, max_retries=0, steering={"events": 100},
            tasks=[s.task("generate"), s.task("check", ["generate"])]))
        self.pilot = await s.pilot(self.engine, self.site, "node7")
        self.failed_task = self.dataset.task_id(1, 1)
        self.failed_attempt = 0
        while (given := await s.ask(self.engine, self.pilot)) is not None:
            if given.task_id == self.failed_task:
                self.failed_attempt = given.attempt_id
                await self._upload_log(given.attempt_id, given.passkey)
                await s.finish(self.engine, given, s.failure(
                    message="check: 3 events out of range", exit_code=3))
            else:
                await s.finish(self.engine, given, s.success(20.0, events=100))
        self.browsers: list[Browser] = []
        return self

    async def _upload_log(self, attempt_id: int, passkey: str) -> None:
        async with aiohttp.ClientSession() as session, session.put(
                f"{self.base}/api/v1/attempts/{attempt_id}/logs/stderr",
                data=b"".join(b"line %d of the full log\n" % i for i in range(500)),
                headers={"X-Floe-Passkey": passkey}) as reply:
            assert reply.status == 200, await reply.text()

    def browser(self) -> Browser:
        made = Browser(self.base)
        self.browsers.append(made)
        return made

    async def signed_in(self, token: str) -> Browser:
        made = self.browser()
        await made.sign_in(token)
        return made

    async def stop(self) -> None:
        for made in self.browsers:
            await made.close()
        await self.server.close()


@pytest.fixture
async def pages(tmp_path: Path) -> AsyncIterator[Pages]:
    started = await Pages().start(tmp_path)
    yield started
    await started.stop()


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's chromium, installed first when missing."""
    done = subprocess.run([str(ROOT / "scripts" / "chromium.sh")], capture_output=True,
                          text=True, timeout=1800, check=False)
    if done.returncode == 3:
        pytest.skip(f"chromium cannot be installed here: {done.stderr.strip()}")
    if done.returncode != 0:
        pytest.fail(f"scripts/chromium.sh failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip().splitlines()[-1]
