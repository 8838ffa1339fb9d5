"""Who is calling: users, sites (their factories) and pilots, proved by bearer tokens.

Tokens are 256 random bits with a prefix that says their kind (`floe_u_`, `floe_s_`, `floe_p_`,
`floe_k_`), shown once when made and stored only as SHA-256 hashes. Users and sites hold
long-lived tokens. A pilot token (short-lived, site-scoped, one for each pilot a site's factory
submits) registers one pilot and nothing else; the registration answers the pilot's own key,
which speaks for that pilot alone from then on: a token copied out of a job cannot register a
second pilot, and no credential of a site's other pilots can act as this one. Known tokens are
cached in memory for a few seconds at a time: a token made by another process (`floe user add`
on the server host) is found in the database on first use, and one that another process revoked
(`floe user token`) stops working once its cached check runs out.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from floe.config.protocol import TOKEN_PREFIXES
from floe.config.schema import number

from .engine import Engine, Site, User
from .errors import BadRequest, Conflict, NotFound, Unauthorized
from .passkeys import hash_secret
from .storage import queries, writes

PREFIX = TOKEN_PREFIXES
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
NAME_HINT = "1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit"
SESSION_TOKEN_GONE = ("the token this session was signed in with no longer works (it was "
                      "replaced or revoked); sign in with the new one")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `role` is admin, user, site or pilot."""

    role: str
    user: User | None = None
    site: Site | None = None
    expires: float | None = None
    pilot_id: int | None = None
    """The pilot a pilot key speaks for; None for a pilot token (which only registers one)."""
    token_hash: str = ""

    @property
    def name(self) -> str:
        if self.user is not None:
            return self.user.name
        if self.site is not None:
            return f"{'the factory' if self.role == 'site' else 'a pilot'} of site " \
                   f"{self.site.name}"
        return self.role


def new_token(kind: str) -> str:
    return PREFIX[kind] + secrets.token_urlsafe(32)


def check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadRequest(f"{what} name {name!r} is not valid: use {NAME_HINT}")
    return name


class Auth:
    """Token checks and the creation of users, sites and tokens."""

    NEGATIVE_TTL = 10.0
    POSITIVE_TTL = 10.0
    """A user's or site's token can be replaced by another process (`floe user token`): its
    check is trusted this long."""
    MAX_KNOWN = 100_000
    """Checks kept before the expired ones are dropped."""
    PILOT_KEY_TTL = 600.0
    """A pilot's key is made and ended by the server alone, never by another process: its check
    is trusted longer, so idle pilots asking again every `hold_asks` cost no lookup."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._known: dict[str, tuple[Principal, float]] = {}  # digest -> (who, checked until)
        self._unknown: dict[str, float] = {}

    async def authenticate(self, token: str) -> Principal:
        """The caller behind `token`; raises Unauthorized with the reason."""
        return await self._authenticate(hash_secret(token), lambda: _unknown_token_message(token))

    async def authenticate_session(self, digest: str) -> Principal:
        """The user behind a web session, which keeps only the SHA-256 digest of the token it
        was signed in with (web.sessions); raises Unauthorized once that token is replaced."""
        return await self._authenticate(digest, lambda: SESSION_TOKEN_GONE)

    async def _authenticate(self, digest: str, unknown: Callable[[], str]) -> Principal:
        known = self._known.get(digest)
        now = self.engine.clock()
        if known is not None and known[1] > time.monotonic():
            principal = known[0]
        else:  # never seen, or seen long enough ago that another process may have revoked it
            if self._unknown.get(digest, 0.0) > time.monotonic():
                raise Unauthorized(unknown())
            found = await self._lookup(digest)
            if found is None:
                self._known.pop(digest, None)
                if len(self._unknown) > 10_000:
                    self._unknown.clear()
                self._unknown[digest] = time.monotonic() + self.NEGATIVE_TTL
                raise Unauthorized(unknown())
            principal = self._remember(digest, found)
        if principal.expires is not None and principal.expires < now:
            self._known.pop(digest, None)
            raise Unauthorized("this pilot token has expired: the factory must obtain a new one "
                               "for the pilots it submits")
        return principal

    def _remember(self, digest: str, principal: Principal) -> Principal:
        ttl = self.PILOT_KEY_TTL if principal.pilot_id is not None else self.POSITIVE_TTL
        now = time.monotonic()
        if len(self._known) >= self.MAX_KNOWN:  # ended pilots' keys are never asked again
            self._known = {k: v for k, v in self._known.items() if v[1] > now}
        self._known[digest] = (principal, now + ttl)
        return principal

    async def _lookup(self, digest: str) -> Principal | None:
        row = await queries.token(self.engine.db, digest)
        if row is None or row["revoked"] is not None:
            return None
        if row["kind"] == "user":
            user = await self._user(row["user_id"])
            return Principal(user.role, user=user)
        if row["kind"] == "pilot" and row["used"] is not None:
            raise Unauthorized(used_message(row["pilot_id"]))
        site = await self._site(row["site_id"])
        if row["kind"] == "site":
            return Principal("site", site=site)
        return Principal("pilot", site=site, expires=row["expires"], pilot_id=row["pilot_id"],
                         token_hash=digest)

    def forget(self, principal: Principal) -> None:
        """Stop trusting the cached check of a pilot token that has registered its pilot."""
        self._known.pop(principal.token_hash, None)

    async def _user(self, user_id: int) -> User:
        user = self.engine.users.get(user_id)
        if user is None:  # added by another process since we started
            row = await queries.user(self.engine.db, user_id)
            user = User(row["user_id"], row["name"], row["role"], row["share"])
            self.engine.add_user(user)
        return user

    async def _site(self, site_id: int) -> Site:
        site = self.engine.sites.get(site_id)
        if site is None:
            row = await queries.site(self.engine.db, site_id)
            site = self.engine.sites[site_id] = Site(row["site_id"], row["name"])
        return site

    async def site_by_name(self, name: str) -> Site:
        for site in self.engine.sites.values():
            if site.name == name:
                return site
        site_id = await queries.site_id_by_name(self.engine.db, name)
        if site_id is None:
            raise NotFound(f"there is no site named {name!r}; an admin adds it with "
                           f"`floe site add {name}`")
        return await self._site(site_id)

    async def user_by_name(self, name: str) -> User:
        user = self.engine.users_by_name.get(name)
        if user is not None:
            return user
        user_id = await queries.user_id_by_name(self.engine.db, name)
        if user_id is None:
            raise NotFound(f"there is no user named {name!r}")
        return await self._user(user_id)

    # -- creation -----------------------------------------------------------------------------
    async def add_user(self, name: str, admin: bool = False,
                       share: float = 1.0) -> tuple[User, str]:
        """Create a user and return it with its first token (shown only now)."""
        check_name(name, "user")
        check_share(share)
        token = new_token("user")
        role = "admin" if admin else "user"
        now = self.engine.clock()
        user_id = await self.engine.db.exclusive(
            lambda conn: writes.add_user(conn, name, role, share, hash_secret(token), now))
        if user_id is None:
            raise Conflict(f"a user named {name!r} already exists; use "
                           f"`floe user token {name}` for a new token")
        user = User(user_id, name, role, share)
        self.engine.add_user(user)
        return user, token

    async def new_user_token(self, user: User, revoke_old: bool = True) -> str:
        """A fresh token for `user`; the old ones stop working unless `revoke_old` is False."""
        token = new_token("user")
        now = self.engine.clock()
        await self.engine.db.exclusive(lambda conn: writes.new_user_token(
            conn, user.user_id, hash_secret(token), now, revoke_old))
        if revoke_old:
            self._known = {k: v for k, v in self._known.items() if v[0].user is not user}
        return token

    async def set_share(self, user: User, share: float) -> None:
        check_share(share)
        await self.engine.db.exclusive(lambda conn: writes.set_share(conn, user.user_id, share))
        user.share = share
        self.engine.user_usage.rerank(user.user_id)

    async def add_site(self, name: str) -> tuple[Site, str]:
        """Create a site and return it with its factory token (shown only now)."""
        check_name(name, "site")
        token = new_token("site")
        now = self.engine.clock()
        site_id = await self.engine.db.exclusive(
            lambda conn: writes.add_site(conn, name, hash_secret(token), now))
        if site_id is None:
            raise Conflict(f"a site named {name!r} already exists; use "
                           f"`floe site token {name}` for a new token")
        site = self.engine.sites[site_id] = Site(site_id, name)
        return site, token

    async def new_site_token(self, site: Site) -> str:
        """A fresh factory token for `site`; the old one stops working."""
        token = new_token("site")
        now = self.engine.clock()
        await self.engine.db.exclusive(
            lambda conn: writes.new_site_token(conn, site.site_id, hash_secret(token), now))
        self._known = {k: v for k, v in self._known.items()
                       if not (v[0].role == "site" and v[0].site is site)}
        return token

    async def pilot_tokens(self, site: Site, lifetime: float, count: int = 1
                           ) -> tuple[list[str], float]:
        """`count` pilot tokens for `site`, each to register one pilot, that expire after
        `lifetime` seconds (as does the key each pilot gets when it registers)."""
        limit = self.engine.settings.pilot_token_max_lifetime
        if not 60 <= lifetime <= limit:
            raise BadRequest(f"lifetime: expected 60 to {number(limit)} seconds (the server's "
                             f"pilot_token_max_lifetime), got {number(lifetime)}")
        tokens = [new_token("pilot") for _ in range(count)]
        now = self.engine.clock()
        expires = now + lifetime
        digests = [hash_secret(token) for token in tokens]
        await self.engine.db.exclusive(
            lambda conn: writes.add_pilot_tokens(conn, site.site_id, digests, now, expires))
        return tokens, expires


MAX_SHARE = 1e6
"""The largest fair share a user may have (the smallest is anything above 0)."""


def check_share(share: float) -> None:
    """Refuse (400) a share that is not above 0 and at most `MAX_SHARE` (nor NaN)."""
    if not 0 < share <= MAX_SHARE:
        raise BadRequest(f"share: must be greater than 0 and at most {number(MAX_SHARE)}, got "
                         f"{number(share)}")


def used_message(pilot_id: int | None) -> str:
    """Why a pilot token that registered its pilot (`pilot_id`, where known) is refused."""
    which = f"pilot {pilot_id}" if pilot_id is not None else "a pilot"
    return (f"this pilot token has registered {which} already, and a pilot token registers one "
            "pilot: that pilot speaks with the key its registration answered")


def not_its_key(speaker: int | None, pilot_id: int) -> str | None:
    """Why a caller whose credential speaks for pilot `speaker` (None: a pilot token, or no
    pilot) may not act as pilot `pilot_id`; None when it may."""
    if speaker is None:
        return ("a pilot token only registers its pilot (POST /api/v1/pilots); the pilot then "
                "speaks with the key its registration answered")
    if speaker != pilot_id:
        return f"this key speaks for pilot {speaker}, not for pilot {pilot_id}"
    return None


def _unknown_token_message(token: str) -> str:
    if not any(token.startswith(p) for p in PREFIX.values()):
        return ("this is not a floe token (they start with floe_u_, floe_s_ or floe_p_); check "
                "the Authorization header or FLOE_TOKEN")
    return "this token is not known or was revoked; ask an admin for a new one"
