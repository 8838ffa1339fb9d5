"""Signing in with a user token, and signing out (see sessions.py for what a session is)."""

from __future__ import annotations

import secrets
import urllib.parse

from aiohttp import web

from ..access import Action, authorize
from ..api.framework import AUTH
from ..errors import Forbidden, Unauthorized, Unavailable
from ..frontdoor import note_principal
from ..passkeys import hash_secret
from .html import Markup, join, tag
from .page import SESSIONS, View, html_response, message, page, read_form, redirect
from .sessions import (
    CSRF_FIELD,
    LIFETIME,
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    SIGNIN_LIFETIME,
    clear_cookie,
    same_secret,
    set_cookie,
)

routes = web.RouteTableDef()

WHY = {
    "signedout": "You are signed out.",
}


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this server, never another site. Browsers drop
    tabs and newlines from a Location (so "/\t/evil.example" would be "//evil.example") and
    read "\\" as "/": a target with any of those, or with a scheme or host, goes home."""
    if not target or not target.startswith("/") or "\\" in target or \
            any(ord(c) < 0x21 or ord(c) == 0x7f for c in target):
        return "/"
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc or target.startswith("//"):
        return "/"
    return target


def _form(request: web.Request, nonce: str, error: str | None, status: int) -> web.Response:
    why = WHY.get(request.query.get("why", ""))
    body = tag(
        "section",
        tag("h1", "Sign in to floe"),
        tag("p", why, class_="notice") if why else None,
        tag("p", error, class_="error", role="alert") if error else None,
        tag("form",
            tag("input", type="hidden", name=CSRF_FIELD, value=nonce),
            tag("input", type="hidden", name="next",
                value=safe_next(request.query.get("next"))),
            tag("label", "User token", for_="token"),
            tag("input", type="password", id="token", name="token", required=True,
                autocomplete="off", placeholder="floe_u_…"),
            tag("button", "Sign in", type="submit"),
            method="post", action="/signin", class_="signin"),
        tag("p", "Your token was printed once by ", tag("code", "floe user add NAME"),
            "; an admin makes a new one with ", tag("code", "floe user token NAME"), ".",
            class_="hint"),
        class_="narrow")
    response = html_response("Sign in", Markup(""), join([body]), status)
    set_cookie(response, request, SIGNIN_COOKIE, nonce, SIGNIN_LIFETIME, path="/signin")
    return response


@routes.get("/signin")
async def signin_form(request: web.Request) -> web.StreamResponse:
    return _form(request, secrets.token_urlsafe(32), None, 200)


@routes.post("/signin")
async def signin(request: web.Request) -> web.StreamResponse:
    try:
        form = await read_form(request)
    except Unavailable as exc:
        return message(None, exc.status, exc.message)
    nonce = request.cookies.get(SIGNIN_COOKIE, "")
    if not nonce or not same_secret(nonce, form.get(CSRF_FIELD)):
        return message(None, 403, "This sign-in form did not come from this server's sign-in "
                                  "page (or your browser refused its cookie). Open the sign-in "
                                  "page again and retry.")
    token = str(form.get("token") or "").strip()
    fresh = secrets.token_urlsafe(32)
    if not token:
        return _form(request, fresh, "Paste your user token into the field.", 400)
    try:
        principal = await request.app[AUTH].authenticate(token)
        authorize(principal, Action.READ)
    except Unauthorized as exc:
        return _form(request, fresh, f"That token did not work: {exc.message}.", 401)
    except Forbidden:
        return _form(request, fresh, "That is not a user token: sign in with a user's token "
                                     "(floe_u_…), not a site's or a pilot's.", 403)
    note_principal(request, principal)
    cookie = request.app[SESSIONS].create(hash_secret(token))
    response = redirect(safe_next(str(form.get("next") or "")))
    set_cookie(response, request, SESSION_COOKIE, cookie, LIFETIME)
    clear_cookie(response, request, SIGNIN_COOKIE, path="/signin")
    return response


@routes.post("/signout")
@page
async def signout(view: View) -> web.StreamResponse:
    view.request.app[SESSIONS].end(view.session)
    response = redirect("/signin?why=signedout")
    clear_cookie(response, view.request, SESSION_COOKIE)
    return response
