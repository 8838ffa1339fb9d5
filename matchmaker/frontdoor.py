"""What every request goes through on its way in and out of the matchmaker: who really sent it
(believing a trusted reverse proxy's X-Forwarded-* headers), the path the pages are published
under, and the server's two logs of requests.

- The *access log* (`access_log`): one line per request, with its time, client address,
  principal, method, path, status, bytes and milliseconds.
- The *audit log* (`audit_log`): one line per change made by a person (a user or an admin),
  through the API or a page's form, and per signing in or out: who, from where, what, which
  dataset, user or site, and the answer's status.

Neither ever holds a token, a passkey, a query string or a body. Each goes to its own file or
to standard error, and `configure` (at start and on SIGHUP) reopens them, so that a log rotated
away is let go of.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import json
import logging
import logging.handlers
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from floe.config.settings import ServerSettings, base_path_problem

PREFIX: contextvars.ContextVar[str] = contextvars.ContextVar("floe_prefix", default="")
"""The path the pages are published under, for the request being answered ("" for the root):
the pages put it before their links (web.html), redirects and cookie paths."""

ACCESS = logging.getLogger("floe.access")
AUDIT = logging.getLogger("floe.audit")
UNCHANGING = frozenset({"GET", "HEAD", "OPTIONS"})
PEOPLE = frozenset({"user", "admin"})
SUBJECTS = {"dataset_id": "dataset", "attempt_id": "attempt", "pilot_id": "pilot",
            "action": "action"}
"""Path parameters the audit log names, as it names them; `name` is a user's or a site's."""
CLIENT_CLOSED = 499
"""The status logged for a request whose client went away before its answer (nginx's)."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Entry:
    """What the logs say of one request, filled in as it is answered."""

    client: str
    prefix: str
    principal: str | None = None
    role: str | None = None


ENTRY = web.RequestKey("floe request entry", Entry)


def note_principal(request: web.Request, principal: Any) -> None:
    """Say who `request` came from (an `auth.Principal`), for the logs."""
    entry = request.get(ENTRY)
    if entry is not None:
        entry.principal, entry.role = principal_label(principal), principal.role


def principal_label(principal: Any) -> str:
    """A principal in one word: a user's name, `site:NAME`, `pilot:ID@SITE`."""
    if principal.user is not None:
        return principal.user.name
    if principal.role == "site":
        return f"site:{principal.site.name}"
    return f"pilot:{principal.pilot_id or 'new'}@{principal.site.name}"


class FrontDoor:
    """The middleware (`middleware`) with its settings; one per application."""

    def __init__(self, settings: ServerSettings) -> None:
        self.proxies: tuple[Network, ...] = ()
        self.base_path = ""
        self.access_format = "off"
        self.audit_format = "off"
        self.configure(settings)

    def configure(self, settings: ServerSettings) -> None:
        """Take `settings` (at start, and again on SIGHUP) and (re)open the log files; raises
        ValueError naming the setting whose file cannot be opened, changing nothing."""
        access = _handler(settings.access_log_file, "access_log_file") \
            if settings.access_log != "off" else None
        try:
            audit = _handler(settings.audit_log_file, "audit_log_file") \
                if settings.audit_log != "off" else None
        except ValueError:
            if access is not None:
                access.close()
            raise
        _use(ACCESS, access)
        _use(AUDIT, audit)
        self.proxies = tuple(ipaddress.ip_network(text, strict=False)
                             for text in settings.trusted_proxies)
        self.base_path = settings.base_path
        self.access_format, self.audit_format = settings.access_log, settings.audit_log

    def close(self) -> None:
        _use(ACCESS, None)
        _use(AUDIT, None)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        entry = Entry(request.remote or "-", self.base_path)
        request[ENTRY] = entry  # before the clone, which copies the reference
        if self.proxies and self._trusted(request.remote):
            request = self._as_forwarded(request, entry)
        prefix = PREFIX.set(entry.prefix)
        status, size, response = 500, None, None
        try:
            response = await handler(request)
            status = response.status
            size = response.body_length if response.prepared else response.content_length
            return response
        except web.HTTPException as exc:
            status, size = exc.status, exc.content_length
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            PREFIX.reset(prefix)
            milliseconds = (time.perf_counter() - started) * 1000
            if self.access_format != "off":
                self._access(request, entry, status, size, milliseconds)
            if self.audit_format != "off" and request.method not in UNCHANGING \
                    and status < 400 and entry.role in PEOPLE:
                self._audit(request, entry, status, response)

    def _trusted(self, address: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:  # a Unix socket, or no peer at all
            return False
        return any(ip in network for network in self.proxies)

    def _as_forwarded(self, request: web.Request, entry: Entry) -> web.Request:
        """`request` as the trusted proxy that sent it says it came: scheme, client, prefix.
        A header that is not well formed is ignored as a whole."""
        changes: dict[str, Any] = {}
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        if proto in ("http", "https"):
            changes["scheme"] = proto
        hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",")]
        try:
            addresses = [str(ipaddress.ip_address(hop)) for hop in hops if hop]
        except ValueError:
            addresses = []
        if addresses:
            # The proxies append what they saw: the client is the last hop no proxy of ours
            # added, and anything to its left is what that client claimed.
            client = next((a for a in reversed(addresses) if not self._trusted(a)), addresses[0])
            changes["remote"] = entry.client = client
        prefix = request.headers.get("X-Forwarded-Prefix")
        if prefix is not None:
            prefix = prefix.strip().rstrip("/")
            if not base_path_problem(prefix):
                entry.prefix = prefix
        return request.clone(**changes) if changes else request

    def _access(self, request: web.Request, entry: Entry, status: int, size: int | None,
                milliseconds: float) -> None:
        now = time.time()
        if self.access_format == "json":
            ACCESS.info("%s", json.dumps({
                "time": _timestamp(now), "client": entry.client, "principal": entry.principal,
                "method": request.method, "path": request.raw_path.partition("?")[0],
                "status": status, "bytes": size, "ms": round(milliseconds, 2)}))
        else:
            ACCESS.info("%s %s %s %s %s %d %s %.1fms", _timestamp(now), entry.client,
                        entry.principal or "-", request.method,
                        request.raw_path.partition("?")[0], status,
                        "-" if size is None else size, milliseconds)

    def _audit(self, request: web.Request, entry: Entry, status: int,
               response: web.StreamResponse | None) -> None:
        subject = _subject(request)
        if status == 201 and response is not None:
            created = _created_id(response)
            if created is not None:
                subject["created"] = created
        if self.audit_format == "json":
            AUDIT.info("%s", json.dumps({
                "time": _timestamp(time.time()), "principal": entry.principal,
                "role": entry.role, "client": entry.client, "method": request.method,
                "path": request.raw_path.partition("?")[0], "status": status, **subject}))
        else:
            which = "".join(f" {key}={value}" for key, value in subject.items())
            AUDIT.info("%s %s (%s) from %s: %s %s -> %d%s", _timestamp(time.time()),
                       entry.principal, entry.role, entry.client, request.method,
                       request.raw_path.partition("?")[0], status, which)


def _subject(request: web.Request) -> dict[str, Any]:
    """Which dataset, user, site (...) a change was about, from its path."""
    found: dict[str, Any] = {}
    for key, value in request.match_info.items():
        if key == "name":  # /users/{name}/... or /sites/{name}/...
            before = request.path.split(f"/{value}")[0].rsplit("/", 1)[-1]
            found[{"users": "user", "sites": "site"}.get(before, "name")] = value
        elif key in SUBJECTS:
            found[SUBJECTS[key]] = value
    return found


def _created_id(response: web.StreamResponse) -> int | None:
    """The id a 201 answer gives what it made (a dataset), read from its JSON; None if none."""
    body = getattr(response, "body", None)
    if not isinstance(body, bytes) or response.content_type != "application/json" \
            or len(body) > 65536:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    made = data.get("id") if isinstance(data, dict) else None
    return made if isinstance(made, int) else None


def _timestamp(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"


def _handler(path: str, setting: str) -> logging.Handler:
    """A handler writing bare lines to the file `path`, or to standard error when empty."""
    if not path:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{setting}: cannot append to {path!r} ({exc.strerror}); make "
                             "its directory, let the server's user write there, or leave it "
                             "empty for standard error") from None
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def _use(logger: logging.Logger, handler: logging.Handler | None) -> None:
    """Make `handler` the only one of `logger` (None: the logger says nothing)."""
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.propagate = False
    logger.setLevel(logging.INFO if handler is not None else logging.CRITICAL + 1)
    if handler is not None:
        logger.addHandler(handler)
