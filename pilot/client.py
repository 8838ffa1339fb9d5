"""The pilot's side of the matchmaker's HTTP API: one kept-alive connection, JSON in and out.

A pilot speaks to one matchmaker from one thread, so one `http.client` connection is enough and
is reused across requests (a new TCP and TLS handshake per task would cost more than the rest of
the per-task overhead). Answers come back as a `Reply` with the status and the decoded JSON;
anything worth trying again later (no connection, a timeout, a 5xx from the server or a proxy
before it) raises `Unreachable` instead, so callers only decide about 2xx and 4xx answers.

Where the environment names a proxy for the matchmaker's scheme (`https_proxy`, `http_proxy`,
also in capitals; `no_proxy` exempts hosts), the connection goes through it: CONNECT for https,
an absolute request target for http, with the proxy's user and password as Basic
Proxy-Authorization when its URL carries them.

A registered pilot speaks for all of its attempts at once: one heartbeat for every attempt it
holds, and the reports of many finished attempts in one request that may carry the ask for the
next tasks (an `Ask`, for several tasks side by side or one after another); `next_reply` gives
the ask part of such an answer as the `Reply` the ask itself would have had. The single-attempt
routes, proved by the attempt's passkey alone, remain for what the pilot token cannot speak for:
reports left by an earlier pilot, and a pilot whose token was refused.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from floe.config.resources import Slot

API = "/api/v1"
PASSKEY_HEADER = "X-Floe-Passkey"
MAX_LOG_BYTES = 8 * 2**20
"""The matchmaker keeps this much of each log by default; the pilot sends the last part."""

STALE_WITHIN = 1.0
"""Seconds within which a request on a kept connection that fails as closed is sent again on a
new one (the server had closed the kept one)."""
# Errors that a kept-alive connection gives when the server closed it while it was idle: the
# request never reached the server, so it is sent again on a fresh connection.
_STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                     ConnectionAbortedError)


class Unreachable(Exception):
    """The matchmaker could not be asked, or failed to answer: try again later. `status` is the
    HTTP status of a 5xx answer (the matchmaker's, or a proxy's before it), None for none."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class MatchmakerSettingError(ValueError):
    """A --matchmaker URL or --cacert the pilot cannot use."""


@dataclass(frozen=True)
class Reply:
    """An answer of the matchmaker: its HTTP status and its JSON body."""

    status: int
    data: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> str:
        if isinstance(self.data, Mapping) and self.data.get("error"):
            return str(self.data["error"])
        return f"HTTP {self.status}"


@dataclass(frozen=True)
class Ask:
    """An ask for up to `max_tasks` tasks that fit `offer`: side by side (together within it), or
    `in_series` (one after another, each within it, their walltimes within its seconds)."""

    offer: Slot
    max_tasks: int = 1
    in_series: bool = False
    hold: int = 0
    """Seconds the pilot can wait for an answer while nothing fits (0: answer at once)."""
    series_seconds: float | None = None
    """In series: about how many seconds of work to be given (by the tasks' learned runtimes);
    None: as many as `max_tasks` and the offer's seconds allow."""

    def to_dict(self) -> dict[str, Any]:
        body = dict(_free(self.offer), max_tasks=self.max_tasks, in_series=self.in_series)
        if self.hold:
            body["hold"] = self.hold
        if self.series_seconds is not None:
            body["series_seconds"] = self.series_seconds
        return body


class Matchmaker:
    """A client of one matchmaker for one pilot; not to be shared between threads."""

    def __init__(self, url: str, token: str = "", *, cacert: str | None = None,
                 timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MatchmakerSettingError(f"--matchmaker {url!r}: expected an http:// or https:// "
                                     "URL, like https://floe.example.org:8080")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/") + API
        self._tls = None
        if self._https:
            try:
                self._tls = ssl.create_default_context(cafile=cacert)
            except (OSError, ssl.SSLError) as err:
                raise MatchmakerSettingError(f"--cacert {cacert}: cannot load it as PEM "
                                             f"certificates: {err}") from None
        self._connection: http.client.HTTPConnection | None = None
        self._interrupted = False
        self.proxy = proxy_for(parts)

    # ------------------------------------------------------------ the pilot's calls

    def register(self, *, host: str, batch_system: str, batch_id: str, version: str,
                 resources: Mapping[str, Any]) -> Reply:
        """Register with the pilot token, which that uses up: from an answer with the pilot's
        key on, this client speaks with the key."""
        reply = self.call("POST", "/pilots", {
            "host": host, "batch_system": batch_system, "batch_id": batch_id,
            "version": version, "resources": dict(resources)})
        if reply.ok and isinstance(reply.data, Mapping) and reply.data.get("key"):
            self.token = str(reply.data["key"])
        return reply

    def ask(self, pilot_id: int, offer: Slot | Ask) -> Reply:
        """One task that fits a `Slot` ({"attempt": ...}), or the list form for an `Ask`
        ({"attempts": [...]}); an ask that may be held waits that much longer for its answer."""
        body = offer.to_dict() if isinstance(offer, Ask) else _free(offer)
        hold = offer.hold if isinstance(offer, Ask) else 0
        return self.call("POST", f"/pilots/{pilot_id}/ask", body,
                         timeout=self.timeout + hold if hold else None)

    def interrupt(self) -> None:
        """End the request in flight (a held ask), from a signal handler or another thread: it
        fails as Unreachable at once."""
        self._interrupted = True
        connection = self._connection
        sock = connection.sock if connection is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def heartbeats(self, pilot_id: int, attempts: Sequence[Mapping[str, Any]],
                   reporting: Sequence[int] | None = None, timeout: float | None = None
                   ) -> Reply:
        """One heartbeat for all of the pilot's attempts ({"attempt_id", "passkey", "usage"});
        the answer says, per attempt id as a string, whether to continue or kill it. With
        `reporting` (the ids of ended attempts whose reports wait), the two name all the pilot
        holds, and the matchmaker resets an attempt of the pilot that neither names."""
        body: dict[str, Any] = {"attempts": list(attempts)}
        if reporting is not None:
            body["reporting"] = list(reporting)
        return self.call("POST", f"/pilots/{pilot_id}/heartbeat", body, timeout=timeout)

    def reports(self, pilot_id: int, reports: Sequence[Mapping[str, Any]],
                ask: Ask | None = None, timeout: float | None = None) -> Reply:
        """The final reports of several of the pilot's attempts (each a report body with
        "attempt_id" and "passkey"), and with `ask` the ask for its next tasks (see
        `next_reply`); the answer's "results" are in the order of `reports`."""
        body: dict[str, Any] = {"reports": list(reports)}
        if ask is not None:
            body["ask"] = ask.to_dict()
        return self.call("POST", f"/pilots/{pilot_id}/reports", body, timeout=timeout)

    def heartbeat(self, attempt_id: int, passkey: str, usage: Mapping[str, Any]) -> Reply:
        return self.call("POST", f"/attempts/{attempt_id}/heartbeat", {"usage": dict(usage)},
                         passkey=passkey)

    def report(self, attempt_id: int, passkey: str, report: Mapping[str, Any],
               timeout: float | None = None) -> Reply:
        """Deliver one final report, proved by the attempt's passkey alone."""
        return self.call("POST", f"/attempts/{attempt_id}/report", report, passkey=passkey,
                         timeout=timeout)

    def upload_log(self, attempt_id: int, passkey: str, stream: str, text: bytes,
                   timeout: float | None = None) -> Reply:
        return self.call("PUT", f"/attempts/{attempt_id}/logs/{stream}",
                         raw=text[-MAX_LOG_BYTES:], passkey=passkey, timeout=timeout)

    def sign_off(self, pilot_id: int, reason: str, message: str = "", suspect: bool = False,
                 timeout: float | None = None) -> Reply:
        return self.call("POST", f"/pilots/{pilot_id}/exit",
                         {"reason": reason[:64], "message": message[:4000], "suspect": suspect},
                         timeout=timeout)

    # ------------------------------------------------------------ the transport

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             passkey: str | None = None, timeout: float | None = None) -> Reply:
        """Send one request, proved by `passkey` or by the token; raises Unreachable when it
        should be tried again later."""
        headers = {"Accept": "application/json"}
        if passkey is not None:
            headers[PASSKEY_HEADER] = passkey
        elif self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = raw
        if body is not None:
            payload = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        target = self._prefix + path
        if self.proxy is not None and not self._https:  # a plain-http proxy takes whole URLs
            target = f"http://{self._host}:{self._port or 80}{target}"
            headers.update(self.proxy.headers)
        self._interrupted = False
        for _ in range(2):
            reused = self._connection is not None
            began = time.monotonic()
            try:
                connection = self._connect(self.timeout if timeout is None else timeout)
                connection.request(method, target, body=payload, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except _STALE_CONNECTION as err:
                self.close()
                # A kept connection that the other end had closed fails at once; one closed
                # after a wait (a held ask cut by a proxy) is no stale one, and was no answer.
                if reused and not self._interrupted and time.monotonic() - began < STALE_WITHIN:
                    continue
                raise Unreachable(self._why(err)) from None
            except (OSError, http.client.HTTPException) as err:
                self.close()
                raise Unreachable(self._why(err)) from None
            if response.will_close:
                self.close()
            reply = Reply(response.status, _decode(data, response.getheader("Content-Type")))
            if reply.status >= 500:
                raise Unreachable(f"the matchmaker at {self.url} answered {method} {path} with "
                                  f"{reply.status}: {reply.error}", reply.status)
            return reply
        raise Unreachable(f"the matchmaker at {self.url} closed the connection twice")

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        connection = self._connection
        if connection is None:
            proxy = self.proxy
            host, port = (proxy.host, proxy.port) if proxy is not None else (self._host,
                                                                             self._port)
            if self._https:
                connection = http.client.HTTPSConnection(host, port, timeout=timeout,
                                                         context=self._tls)
                if proxy is not None:
                    connection.set_tunnel(self._host, self._port or 443, proxy.headers)
            else:
                connection = http.client.HTTPConnection(host, port, timeout=timeout)
            connection.connect()
            # Small requests and answers go out at once instead of waiting for an ACK.
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._connection = connection
        elif connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def _why(self, err: BaseException) -> str:
        text = str(err) or type(err).__name__
        if isinstance(err, socket.timeout):
            text = "no answer in time"
        through = f" through the proxy {self.proxy.name}" if self.proxy is not None else \
            " (no proxy is set: https_proxy / http_proxy)"
        return f"cannot reach the matchmaker at {self.url}{through}: {text}"

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy to reach the matchmaker through, with the headers it is to be given."""

    host: str
    port: int
    headers: dict[str, str]
    name: str


def proxy_for(url: urllib.parse.SplitResult) -> Proxy | None:
    """The proxy the environment names for `url` (`https_proxy` or `http_proxy` by its scheme,
    `no_proxy` honoured), or None; MatchmakerSettingError for one that cannot be used."""
    if urllib.request.proxy_bypass(url.hostname or ""):
        return None
    named = urllib.request.getproxies().get(url.scheme)
    if not named:
        return None
    proxy = urllib.parse.urlsplit(named if "://" in named else f"http://{named}")
    if proxy.scheme != "http" or not proxy.hostname:
        raise MatchmakerSettingError(f"{url.scheme}_proxy {named!r}: expected an http:// proxy "
                                     "URL, like http://proxy.example.org:3128")
    headers = {}
    if proxy.username:
        secret = f"{urllib.parse.unquote(proxy.username)}:" \
                 f"{urllib.parse.unquote(proxy.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode()
    port = proxy.port or 80
    return Proxy(proxy.hostname, port, headers, f"{proxy.hostname}:{port}")


def next_reply(reply: Reply) -> Reply | None:
    """The ask part of the answer to reports that carried one, as the ask's own reply would
    be (None when the answer has none: the request was refused, so nothing was asked)."""
    following = reply.data.get("next") if reply.ok and isinstance(reply.data, Mapping) else None
    if not isinstance(following, Mapping):
        return None
    return Reply(int(following.get("status") or 200), following)


def _free(offer: Slot) -> dict[str, Any]:
    """An offer as the ask's body: the matchmaker takes the site from the pilot token."""
    body = offer.to_dict()
    del body["site"]
    return body


def _decode(data: bytes, content_type: str | None) -> Any:
    """The JSON of an answer; anything else (a proxy's HTML page) as {"error": its text}."""
    if content_type and "json" in content_type:
        try:
            return json.loads(data)
        except ValueError:
            pass
    text = data.decode("utf-8", errors="replace").strip()
    return {"error": text[:500] or "an empty answer"}
