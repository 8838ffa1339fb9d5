"""Headless chromium driven over its DevTools protocol (a websocket, through aiohttp's client):
navigate, click and type with real input events, read the page, take screenshots.

Only what the browser tests need; no Selenium or Playwright, which would download browser builds
of their own.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any

import aiohttp

LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


class DevToolsError(RuntimeError):
    """The browser refused a command, or the page did not do what was waited for."""


class Chromium:
    """One headless chromium process with one page."""

    def __init__(self, process: asyncio.subprocess.Process, http: aiohttp.ClientSession,
                 socket: aiohttp.ClientWebSocketResponse) -> None:
        self.process = process
        # Chromium blocks once its stderr pipe is full: keep reading it.
        self._drain = asyncio.create_task(_drain(process))
        self.http = http
        self.socket = socket
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self.events: list[dict[str, Any]] = []
        self._new_event = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def launch(cls, executable: str, profile: Path) -> Chromium:
        options = ["--headless=new", "--disable-gpu", "--no-first-run",
                   "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                   "--disable-background-networking", "--disable-dev-shm-usage",
                   "--hide-scrollbars", "--mute-audio", "--window-size=1280,900",
                   "--remote-debugging-port=0",
                   "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}"]
        if os.geteuid() == 0:
            options.append("--no-sandbox")  # chromium's sandbox refuses to run as root
        process = await asyncio.create_subprocess_exec(
            executable, *options, "about:blank", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            browser_url = await asyncio.wait_for(_listening(process), 60)
            http = aiohttp.ClientSession()
            base = browser_url.split("/devtools/")[0].replace("ws://", "http://")
            async with http.get(f"{base}/json/list") as reply:
                targets = await reply.json()
            page = next(t for t in targets if t["type"] == "page")
            socket = await http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        except BaseException:
            process.kill()
            await process.wait()
            raise
        browser = cls(process, http, socket)
        await browser.send("Page.enable")
        await browser.send("Runtime.enable")
        return browser

    async def close(self) -> None:
        self._reader.cancel()
        self._drain.cancel()
        await self.socket.close()
        await self.http.close()
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    # -- the protocol ---------------------------------------------------------------------------
    async def _read(self) -> None:
        async for message in self.socket:
            data = json.loads(message.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self.events.append(data)
                self._new_event.set()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        await self.socket.send_json({"id": number, "method": method, "params": params})
        answer = await asyncio.wait_for(future, 30)
        if "error" in answer:
            raise DevToolsError(f"{method}: {answer['error']}")
        return answer["result"]

    async def wait_event(self, method: str, after: int, timeout: float = 30) -> dict[str, Any]:
        """The first `method` event after the first `after` events seen."""
        async def find() -> dict[str, Any]:
            while True:
                for event in self.events[after:]:
                    if event["method"] == method:
                        return event
                self._new_event.clear()
                await self._new_event.wait()
        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            raise DevToolsError(f"no {method} within {timeout}s") from None

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in answer:
            raise DevToolsError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    # -- what a person does -----------------------------------------------------------------------
    async def open(self, url: str) -> int:
        """Go to `url` and wait until it has loaded; returns the HTTP status of the page."""
        seen = len(self.events)
        await self.send("Page.navigate", url=url)
        await self.wait_event("Page.loadEventFired", seen)
        return await self.status()

    async def status(self) -> int:
        return await self.evaluate(
            "performance.getEntriesByType('navigation')[0].responseStatus")

    async def click(self, selector: str, navigates: bool = True) -> int | None:
        """Click the middle of the element with real mouse events; when the click leads to a
        new page, wait for it and return its HTTP status."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        if box is None:
            raise DevToolsError(f"nothing on {await self.evaluate('location.href')} matches "
                                f"{selector}")
        x, y = box
        seen = len(self.events)
        await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                            clickCount=1)
        if not navigates:
            return None
        await self.wait_event("Page.loadEventFired", seen)
        return await self.status()

    async def type(self, selector: str, text: str) -> None:
        """Focus the field by clicking it, then type `text` into it."""
        await self.click(selector, navigates=False)
        await self.send("Input.insertText", text=text)

    async def choose(self, selector: str, value: str) -> None:
        """Pick the option `value` of a select element, as the user's choice would."""
        await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            f" e.value = {json.dumps(value)};"
            " e.dispatchEvent(new Event('change', {bubbles: true})); })()")

    async def text(self, selector: str = "body") -> str:
        found = await self.evaluate(f"document.querySelector({json.dumps(selector)})?.innerText")
        if found is None:
            raise DevToolsError(f"nothing matches {selector}")
        return found

    async def count(self, selector: str) -> int:
        return await self.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length")

    async def cookies(self) -> list[dict[str, Any]]:
        return (await self.send("Network.getCookies"))["cookies"]

    async def screenshot(self, path: Path, width: int = 1280, height: int | None = None
                         ) -> Path:
        """The whole page (its first `height` CSS pixels, where given) as it looks in a window
        `width` CSS pixels wide, as a PNG."""
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=800,
                        deviceScaleFactor=1, mobile=width < 600)
        metrics = await self.send("Page.getLayoutMetrics")
        whole = int(metrics["cssContentSize"]["height"])
        height = min(whole, height) if height else whole
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                               clip={"x": 0, "y": 0, "width": width, "height": height,
                                     "scale": 1})
        await self.send("Emulation.clearDeviceMetricsOverride")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


async def _listening(process: asyncio.subprocess.Process) -> str:
    lines = []
    while True:
        line = await process.stderr.readline()
        if not line:
            raise DevToolsError("chromium exited before it listened: "
                                + b"".join(lines).decode(errors="replace")[-2000:])
        lines.append(line)
        found = LISTENING.search(line.decode(errors="replace"))
        if found:
            return found.group(1)


async def _drain(process: asyncio.subprocess.Process) -> None:
    while await process.stderr.readline():
        pass
