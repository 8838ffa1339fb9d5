"""Browser sessions of the web pages: made by signing in with a user token, kept on the server.

The session cookie carries only a random id (256 bits); the server keys its sessions by the id's
SHA-256, so the store holds nothing a browser could present. Each session keeps the user's token
in memory (never on disk, never sent back) so that every request is checked again through
`Auth.authenticate`: a token revoked with `floe user token` ends its sessions too. Sessions last
at most `LIFETIME` and end when the server restarts.

Every form that changes something carries the session's CSRF token in a hidden field; the server
refuses a POST whose field does not match its session. The sign-in form, which has no session
yet, is protected the same way by a random value held in a short-lived cookie of its own.
Cookies are HttpOnly and SameSite=Strict, and Secure when the page came over TLS.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

SESSION_COOKIE = "floe_session"
SIGNIN_COOKIE = "floe_signin"
CSRF_FIELD = "csrf"
LIFETIME = 12 * 3600.0
SIGNIN_LIFETIME = 3600
MOST_SESSIONS = 10_000


@dataclass
class Session:
    token: str
    csrf: str
    expires: float


class Sessions:
    """The signed-in browsers of one matchmaker process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_digest: dict[str, Session] = {}

    def create(self, token: str) -> str:
        """A new session for `token`; returns the id for the cookie."""
        now = self._clock()
        if len(self._by_digest) >= MOST_SESSIONS:
            self._by_digest = {k: s for k, s in self._by_digest.items() if s.expires > now}
            while len(self._by_digest) >= MOST_SESSIONS:  # still full: drop the oldest
                del self._by_digest[next(iter(self._by_digest))]
        session_id = secrets.token_urlsafe(32)
        self._by_digest[_digest(session_id)] = Session(token, secrets.token_urlsafe(32),
                                                       now + LIFETIME)
        return session_id

    def find(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        digest = _digest(session_id)
        session = self._by_digest.get(digest)
        if session is not None and session.expires <= self._clock():
            del self._by_digest[digest]
            return None
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._by_digest.pop(_digest(session_id), None)


def same_secret(expected: str, given: object) -> bool:
    """Whether a submitted CSRF value matches, in constant time."""
    return isinstance(given, str) and bool(given) and hmac.compare_digest(
        expected.encode(), given.encode())


def set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str,
               max_age: int, path: str = "/") -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True,
                        samesite="Strict", secure=request.secure)


def clear_cookie(response: web.StreamResponse, request: web.Request, name: str,
                 path: str = "/") -> None:
    set_cookie(response, request, name, "", 0, path)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()
