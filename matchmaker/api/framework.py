"""How API routes are declared and served: one declaration gives the handler, its access rule,
its parameters and body schema, and its entry in the OpenAPI document.

A handler receives a `Context` whose body has already been size-capped, parsed and checked
against the declared schema (unless the route leaves that to its handler, `check_body=False`:
the dataset config's schema is generated from the validator that its handler runs, whose
messages name the field, the value and the fix), and whose caller has already been
authenticated and authorized for the route's action. A passkey route is served even when a
token that came along is refused (the passkey authorizes it): the refusal waits in
`Context.refused` for a part that needs the token.
It returns plain data (sent as JSON) or a `Reply`. Every error leaves the server as JSON
`{"error": "..."}` with a 4xx status (5xx only for faults of the server itself);
`unknown_route` answers paths and methods that no route takes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .. import bounds
from ..access import Action, authorize
from ..auth import Auth, Principal
from ..engine import Engine
from ..errors import (
    ApiError,
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    Unavailable,
)
from ..frontdoor import note_principal
from ..recording import prove_passkey
from ..storage.database import StorageError
from .validation import problems

log = logging.getLogger(__name__)

ENGINE = web.AppKey("engine", Engine)
AUTH = web.AppKey("auth", Auth)
LARGE_TURNS = web.AppKey("large_turns", asyncio.Semaphore)

PASSKEY_HEADER = "X-Floe-Passkey"
RETRY_AFTER = "1"
"""Seconds a client is told to wait before it tries again a request the database refused."""
LARGE_BODY = 2**20
"""A body this large (or of unknown length) is read only once its passkey is proved, and only
`LARGE_BODIES` such bodies are read at once: no one can make the server hold memory unproved,
and those who can hold only so much."""
LARGE_BODIES = 4
LARGE_BODY_WAIT = 30.0
"""Seconds a large body waits for its turn before the request is answered 503."""
LARGE_BODY_RATE = 64 * 1024
LARGE_BODY_GRACE = 10.0
"""A large body holding its turn must keep coming at `LARGE_BODY_RATE` bytes a second on
average after its first `LARGE_BODY_GRACE` seconds, or it is refused (408): a client that
trickles its bodies cannot hold every turn."""
MAX_ERROR = 10_000
"""The longest error message an answer carries (the OpenAPI document's Error.error)."""


def unavailable(error: StorageError) -> str:
    """What a request whose write the database refused is told (answered 503: retryable)."""
    return (f"the matchmaker could not store this now ({error}); nothing of it was kept: try "
            "again in a moment")


@dataclass
class Param:
    """A path or query parameter."""

    name: str
    kind: type = str
    default: Any = None
    doc: str = ""
    where: str = "query"
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": {int: "integer", float: "number", bool: "boolean"}
                                  .get(self.kind, "string")}
        if self.choices:
            schema["enum"] = list(self.choices)
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.default is not None:
            schema["default"] = self.default
        return schema


@dataclass
class Reply:
    data: Any
    status: int = 200


@dataclass
class Context:
    request: web.Request
    engine: Engine
    auth: Auth
    principal: Principal | None
    body: Any
    params: dict[str, Any]
    passkey: str | None = None
    refused: Unauthorized | None = None
    """On a passkey route: why the token that came along was refused."""

    def authorize(self, action: Action, **scope: Any) -> None:
        if self.refused is not None:
            raise self.refused
        if self.principal is None:
            raise Unauthorized("this needs a token: send 'Authorization: Bearer <token>'")
        authorize(self.principal, action, **scope)


Handler = Callable[[Context], Awaitable[Any]]


@dataclass
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    action: Action | None
    passkey: bool
    body: dict[str, Any] | None
    params: list[Param]
    response: dict[str, Any] | None
    status: int
    tag: str
    max_body: int | str | None
    """The largest body, in bytes or as the name of the server setting that says it; None for
    the `max_request_bytes` setting."""
    raw_body: bool = False
    description: str = ""
    errors: tuple[int, ...] = field(default=(400, 401, 403))
    check_body: bool = True
    text: str | None = None
    """The media type of a success answer that is text, not JSON (a log, the metrics)."""
    answers: dict[int, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    """Success answers other than `status`'s: status -> (when it comes, its JSON schema)."""


ROUTES: list[Route] = []


def route(method: str, path: str, *, summary: str, tag: str, action: Action | None = None,
          passkey: bool = False, body: dict[str, Any] | None = None,
          params: list[Param] | None = None, response: dict[str, Any] | None = None,
          status: int = 200, max_body: int | str | None = None, raw_body: bool = False,
          description: str = "", errors: tuple[int, ...] = (400, 401, 403, 404),
          check_body: bool = True, text: str | None = None,
          answers: dict[int, tuple[str, dict[str, Any]]] | None = None,
          ) -> Callable[[Handler], Handler]:
    """Declare an API route (see the module docstring)."""
    def register(handler: Handler) -> Handler:
        ROUTES.append(Route(method, path, handler, summary, action, passkey, body,
                            params or [], response, status, tag, max_body, raw_body,
                            description, errors, check_body, text, answers or {}))
        return handler
    return register


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data, separators=(",", ":")).encode(), status=status,
                        content_type="application/json")


def error_response(message: str, status: int) -> web.Response:
    """`{"error": message}`, the message cut to `MAX_ERROR` characters with a word on the cut."""
    if len(message) > MAX_ERROR:
        more = f" ... ({len(message) - MAX_ERROR + 40} more characters)"
        message = message[:MAX_ERROR - len(more)] + more
    return json_response({"error": message}, status)


def _parse_param(param: Param, raw: str | None) -> Any:
    if raw is None:
        return param.default
    try:
        if param.kind is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            value: Any = raw.lower() in ("1", "true", "yes")
        elif param.kind is int:
            value = bounds.whole(raw)
            if value is None:
                raise ValueError
        elif param.kind is float:
            value = float(raw)
            if value - value != 0.0:  # nan and the infinities
                raise ValueError
        else:
            value = param.kind(raw)
    except ValueError:
        if param.kind is int:
            raise BadRequest(f"{param.name}: expected a whole number in ASCII digits from "
                             f"{bounds.MIN_INT} to {bounds.MAX_INT}, got {raw[:40]!r}") from None
        raise BadRequest(f"{param.name}: expected {param.schema()['type']}, got {raw!r}") from None
    if param.choices and value not in param.choices:
        raise BadRequest(f"{param.name}: expected one of {', '.join(param.choices)}, "
                         f"got {raw!r}")
    if param.minimum is not None and value < param.minimum:
        raise BadRequest(f"{param.name}: must be at least {param.minimum}, got {value}")
    if param.maximum is not None and value > param.maximum:
        raise BadRequest(f"{param.name}: must be at most {param.maximum}, got {value}")
    return value


async def _read_at_most(request: web.Request, limit: int, setting: str = "",
                        paced: bool = False) -> bytes:
    """The body, refused with one message as soon as it is known to be over `limit` bytes (the
    server setting `setting`, when one says it): by its Content-Length, or (a chunked body,
    which has none) once more than that has arrived. Read here rather than by
    `request.read()`, whose cap (the application's client_max_size) is not the route's and is
    refused in aiohttp's words. A `paced` body must come at `LARGE_BODY_RATE` (408 if not)."""
    too_large = PayloadTooLarge(f"the request body is too large: this route accepts at most "
                                f"{limit} bytes" + (f" (the server's {setting})" if setting
                                                    else ""))
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(LARGE_BODY_GRACE if paced else None) as pace:
            started = asyncio.get_running_loop().time()
            while chunk := await request.content.readany():
                body += chunk
                if len(body) > limit:
                    raise too_large
                if paced:  # the next bytes are due when the average would fall below the rate
                    pace.reschedule(started + LARGE_BODY_GRACE + len(body) / LARGE_BODY_RATE)
    except TimeoutError:
        raise RequestTimeout(f"the request body came too slowly ({len(body)} bytes in "
                             f"{asyncio.get_running_loop().time() - started:.0f}s; a body over "
                             f"{LARGE_BODY // 2**20} MiB must come at {LARGE_BODY_RATE // 1024} "
                             "KiB/s or more); send it again faster") from None
    except ConnectionError:  # the client gave up (or its proxy did) in the middle of the body
        log.info("%s %s from %s: the client closed the connection after %d bytes of its body",
                 request.method, request.path, request.remote, len(body))
        raise Unavailable(f"the request body was cut off after {len(body)} bytes (the "
                          "connection closed); send it again") from None
    return bytes(body)


async def _read_body(request: web.Request, spec: Route, limit: int) -> Any:
    setting = spec.max_body if isinstance(spec.max_body, str) else \
        "" if spec.max_body else "max_request_bytes"
    raw = await _read_large(request, limit, setting) if request.content_length is None or \
        request.content_length > LARGE_BODY else await _read_at_most(request, limit, setting)
    if spec.raw_body:
        return raw
    if not raw:
        if spec.body is None:
            return None
        raise BadRequest("this route needs a JSON body")
    if bounds.too_deep(raw):
        raise BadRequest(f"the body nests lists and objects more than {bounds.MAX_DEPTH} deep; "
                         "send a flatter document")
    try:
        # Strict UTF-8: json.loads would let bytes of a lone surrogate through (surrogatepass).
        body = _DECODER.decode(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8: {exc}; send JSON as UTF-8 text") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's limit, in Python's words
            raise BadRequest("the body holds a whole number of more than 4,300 digits; no value "
                             "floe takes is that long") from None
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(raw):
        where = _lone_surrogate(body, "")
        if where is not None:
            raise BadRequest(f"{where or 'the body'}: holds a \\u escape of half a UTF-16 "
                             "surrogate pair (\\ud800 to \\udfff) without its other half, "
                             "which is no character; send the text as valid Unicode")
    if spec.body is not None and spec.check_body:
        found = problems(body, spec.body)
        if found:
            raise BadRequest("; ".join(found[:20]))
    return body


async def _read_large(request: web.Request, limit: int, setting: str) -> bytes:
    """A body that may be large, read when its turn comes among `LARGE_BODIES`, at a pace."""
    turns = request.app[LARGE_TURNS]
    try:
        await asyncio.wait_for(turns.acquire(), LARGE_BODY_WAIT)
    except TimeoutError:
        raise Unavailable(f"{LARGE_BODIES} large request bodies are being received already; "
                          "send it again in a moment") from None
    try:
        return await _read_at_most(request, limit, setting, paced=True)
    finally:
        turns.release()


def _no_constant(name: str) -> Any:
    raise BadRequest(f"the body is not valid JSON: {name} is no JSON value; send a number, or "
                     "null")


def _finite(text: str) -> float:
    """A number with a fraction or an exponent, refused where it overflows a double (json would
    take it as infinity, which is no JSON value and no number a sum can hold)."""
    value = float(text)
    if value - value != 0.0:
        raise BadRequest(f"the body is not valid here: the number {text[:40]} is too large for "
                         "a double (at most about 1.8e308)")
    return value


# Built once: json.loads with any argument builds a decoder per call. Its float hook costs about
# 0.1 us a number.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)

# A JSON escape of a UTF-16 surrogate: json.loads joins a pair into one character but keeps a
# lone one as a string that cannot be encoded (SQLite, the log, the answer would all fail on it).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The path of the first string (or key) in `value` that is not valid Unicode, or None."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return path
    elif isinstance(value, dict):
        for key, item in value.items():
            found = _lone_surrogate(key, path) if isinstance(key, str) else None
            if found is None:
                found = _lone_surrogate(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _lone_surrogate(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def wrap(spec: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler for a declared route."""
    path_params = [p for p in spec.params if p.where == "path"]
    query_params = [p for p in spec.params if p.where == "query"]

    async def handle(request: web.Request) -> web.StreamResponse:
        metrics = request.app[ENGINE].metrics
        started = time.perf_counter()
        try:
            response = await respond(request)
        except web.HTTPException as exc:  # a redirect, which aiohttp answers itself
            metrics.observe(spec.path, spec.method, exc.status, time.perf_counter() - started)
            raise
        metrics.observe(spec.path, spec.method, response.status, time.perf_counter() - started)
        return response

    async def respond(request: web.Request) -> web.StreamResponse:
        engine = request.app[ENGINE]
        auth = request.app[AUTH]
        try:
            token = _token(request)
            principal, refused = None, None
            try:
                principal = await auth.authenticate(token) if token else None
                if principal is not None:
                    note_principal(request, principal)
            except Unauthorized as exc:
                if not spec.passkey:
                    raise
                refused = exc
            params = {p.name: _parse_param(p, request.match_info.get(p.name))
                      for p in path_params}
            params.update({p.name: _parse_param(p, request.query.get(p.name))
                           for p in query_params})
            passkey = None
            if spec.passkey:
                passkey = request.headers.get(PASSKEY_HEADER)
                if not passkey:
                    raise Unauthorized(f"this needs the attempt's passkey in the {PASSKEY_HEADER}"
                                       " header")
                if "attempt_id" in params and (request.content_length is None
                                               or request.content_length > LARGE_BODY):
                    await prove_passkey(engine, params["attempt_id"], passkey)
            elif spec.action is not None:
                if principal is None:
                    raise Unauthorized("this needs a token: send 'Authorization: Bearer <token>'")
                authorize(principal, spec.action)
            limit = getattr(engine.settings, spec.max_body) if isinstance(spec.max_body, str) \
                else spec.max_body or engine.settings.max_request_bytes
            body = await _read_body(request, spec, limit) if request.can_read_body or \
                spec.body is not None or spec.raw_body else None
            context = Context(request, engine, auth, principal, body, params, passkey, refused)
            result = await spec.handler(context)
            if isinstance(result, web.StreamResponse):
                return result
            if isinstance(result, Reply):
                return json_response(result.data, result.status)
            return json_response(result, spec.status)
        except ApiError as exc:
            return error_response(exc.message, exc.status)
        except web.HTTPException as exc:  # from aiohttp itself
            if exc.status < 400:
                raise
            return error_response(exc.text or exc.reason, exc.status)
        except StorageError as exc:
            log.warning("%s %s: %s", request.method, request.path, exc)
            answer = json_response({"error": unavailable(exc)}, 503)
            answer.headers["Retry-After"] = RETRY_AFTER
            return answer
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            return json_response({"error": "internal server error; the server log has the "
                                           "details"}, 500)

    return handle


async def unknown_route(request: web.Request) -> web.StreamResponse:
    """Answer, in JSON, API requests that no route takes: 405 where the path exists with other
    methods, else 404. Registered last, for every method, under /api/."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is request.match_info.route.resource:
            continue
        _, methods = await resource.resolve(request)
        allowed |= methods
    if allowed:
        answer = json_response({"error": f"{request.method} is not allowed on {request.path}; "
                                         f"it takes {', '.join(sorted(allowed))}"}, 405)
        answer.headers["Allow"] = ", ".join(sorted(allowed))  # RFC 9110: a 405 names them
        return answer
    return json_response({"error": f"there is no API route {request.path}; see "
                                   "/api/v1/openapi.json"}, 404)
