"""Browser sessions of the web pages: made by signing in with a user token, carried by the browser
in an encrypted cookie, so that they survive a restart of the server.

The cookie holds, sealed with AES-256-GCM under a key kept beside the database
(`<database>.session-key`, readable by the server's user only): a random session id, the
SHA-256 digest of the user's token (never the token) and when the session ends (at most
`LIFETIME` after signing in). A browser can neither read nor change it. Every request checks
the digest again through `Auth.authenticate_session`: a token replaced with `floe user token`
ends its sessions too. Signing out ends the session on the server as well: its id goes on the
list of signed-out sessions (`<database>.signed-out`, kept until the session would have ended
anyway), so a copy of the cookie is refused after a restart too.

Every form that changes something carries the session's CSRF token (derived from the session
id with the key) in a hidden field; the server refuses a POST whose field does not match its
session. The sign-in form, which has no session yet, is protected the same way by a random
value held in a short-lived cookie of its own. Cookies are HttpOnly and SameSite=Strict, scoped
to the path the pages are published under, and Secure when the browser came over TLS (to this
server or to a trusted proxy in front of it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..frontdoor import PREFIX

log = logging.getLogger(__name__)

SESSION_COOKIE = "floe_session"
SIGNIN_COOKIE = "floe_signin"
CSRF_FIELD = "csrf"
LIFETIME = 12 * 3600
SIGNIN_LIFETIME = 3600
KEY_BYTES = 32
NONCE_BYTES = 12


@dataclass(frozen=True)
class Session:
    id: str
    token_digest: str
    csrf: str
    expires: float


class Sessions:
    """The signed-in browsers of a matchmaker: sealing and opening their cookies, and the list
    of sessions ended by signing out. Nothing is found until `open` has read the key."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._cipher: AESGCM | None = None
        self._csrf_key = b""
        self._signed_out: dict[str, float] = {}  # session id's digest -> when it would end
        self._list: Path | None = None

    def open(self, database: str | Path) -> None:
        """Read (or make) the key beside `database` and the list of signed-out sessions."""
        key = _key(Path(f"{database}.session-key"))
        self._cipher = AESGCM(hmac.digest(key, b"floe session cookie", "sha256"))
        self._csrf_key = hmac.digest(key, b"floe session csrf", "sha256")
        self._list = Path(f"{database}.signed-out")
        self._signed_out = _read_signed_out(self._list, self._clock())
        _write_signed_out(self._list, self._signed_out)  # without the sessions that ended

    def create(self, token_digest: str) -> str:
        """A new session for the user whose token has `token_digest`: the cookie's value."""
        if self._cipher is None:
            raise RuntimeError("Sessions.open must read the key before sessions are made")
        expires = int(self._clock() + LIFETIME)
        sealed = f"{secrets.token_urlsafe(16)}:{token_digest}:{expires}".encode()
        nonce = os.urandom(NONCE_BYTES)
        return base64.urlsafe_b64encode(nonce + self._cipher.encrypt(nonce, sealed, None)
                                        ).decode().rstrip("=")

    def find(self, cookie: str | None) -> Session | None:
        """The session a cookie carries; None for no cookie, a cookie this server did not seal
        (or sealed with another key), an ended session or a signed-out one."""
        if not cookie or self._cipher is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
            opened = self._cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], None)
            session_id, digest, expires = opened.decode().split(":")
            ends = float(expires)
        except (binascii.Error, ValueError, InvalidTag):
            return None
        if ends <= self._clock() or _digest(session_id) in self._signed_out:
            return None
        csrf = base64.urlsafe_b64encode(hmac.digest(self._csrf_key, session_id.encode(),
                                                    "sha256")).decode().rstrip("=")
        return Session(session_id, digest, csrf, ends)

    def end(self, session: Session) -> None:
        """Sign `session` out for good: kept on the list until it would have ended anyway."""
        now = self._clock()
        self._signed_out = {k: t for k, t in self._signed_out.items() if t > now}
        self._signed_out[_digest(session.id)] = session.expires
        if self._list is not None:
            try:
                with open(self._list, "a", encoding="ascii") as out:
                    out.write(f"{_digest(session.id)} {session.expires:.0f}\n")
            except OSError as exc:
                log.error("cannot add a signed-out session to %s (%s): it stays signed out "
                          "until the server restarts; check that the server may write there",
                          self._list, exc)


def _key(path: Path) -> bytes:
    """The sessions' key at `path`, made (readable by the server's user only) if missing."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = os.urandom(KEY_BYTES)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made meanwhile by another process: use that one
            return _key(path)
        with os.fdopen(handle, "wb") as out:
            out.write(key)
        return key
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path} does not hold a session key ({len(key)} bytes, not "
                         f"{KEY_BYTES}); remove it to make a new one (everyone signs in again)")
    return key


def _read_signed_out(path: Path, now: float) -> dict[str, float]:
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except FileNotFoundError:
        return {}
    kept = {}
    for line in lines:
        digest, _, ends = line.partition(" ")
        try:
            if float(ends) > now:
                kept[digest] = float(ends)
        except ValueError:
            continue  # a line cut short by a crash while it was written
    return kept


def _write_signed_out(path: Path, signed_out: dict[str, float]) -> None:
    aside = path.with_name(path.name + ".new")
    handle = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(handle, "w", encoding="ascii") as out:
        out.writelines(f"{digest} {ends:.0f}\n" for digest, ends in signed_out.items())
    aside.replace(path)


def same_secret(expected: str, given: object) -> bool:
    """Whether a submitted CSRF value matches, in constant time."""
    return isinstance(given, str) and bool(given) and hmac.compare_digest(
        expected.encode(), given.encode())


def set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str,
               max_age: int, path: str = "/") -> None:
    """Set a cookie for `path` of the pages, under the path they are published at."""
    response.set_cookie(name, value, max_age=max_age, path=PREFIX.get() + path, httponly=True,
                        samesite="Strict", secure=request.secure)


def clear_cookie(response: web.StreamResponse, request: web.Request, name: str,
                 path: str = "/") -> None:
    set_cookie(response, request, name, "", 0, path)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()
