"""What every web page shares: who is signed in (`View`), the layout, forms that carry the CSRF
token, and the one wrapper (`page`) that signs the browser in, checks the CSRF token of a POST,
authorizes reading, and turns every error into a message page with its status.

Access rules are the API's own (`access.authorize`): a page never decides by itself who may do
what, it asks, and a POST is refused by the server whatever the page showed.
"""

from __future__ import annotations

import http
import logging
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from multidict import MultiDictProxy

from ..access import Action, authorize
from ..api.framework import AUTH, ENGINE, RETRY_AFTER, unavailable
from ..auth import Auth, Principal
from ..bounds import record_id
from ..engine import Engine
from ..errors import ApiError, Forbidden, NotFound, Unauthorized, Unavailable
from ..frontdoor import PREFIX, note_principal
from ..model import DatasetState
from ..storage.database import StorageError
from .html import Child, Markup, escape, join, link, tag
from .sessions import CSRF_FIELD, SESSION_COOKIE, Session, Sessions, same_secret

log = logging.getLogger(__name__)

SESSIONS = web.AppKey("web sessions", Sessions)
HERE = Path(__file__).parent
LAYOUT = string.Template((HERE / "layout.html").read_text())
SECURITY_HEADERS = {
    # Nothing from anywhere but this server, no script at all, forms post only here.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
CSRF_REFUSED = ("This form's security token does not match your session, so nothing was "
                "changed. It happens when a form was opened before you signed in again, or "
                "came from another site. Reload the page and try again.")
NAV = (("/", "Overview"), ("/pilots", "Pilots and sites"), ("/shares", "Users and shares"))


@dataclass
class View:
    """One request of a signed-in user."""

    request: web.Request
    engine: Engine
    auth: Auth
    principal: Principal
    session: Session
    form: MultiDictProxy[Any] | None = None
    notices: list[str] = field(default_factory=list)

    @property
    def now(self) -> float:
        return self.engine.clock()

    def query(self, name: str) -> str:
        return self.request.query.get(name, "").strip()

    def authorize(self, action: Action, **scope: Any) -> None:
        """Raise Forbidden unless this user may do `action` (access.authorize's rules)."""
        authorize(self.principal, action, **scope)

    def dataset(self, dataset_id: str) -> DatasetState:
        """The dataset a page's path names, or NotFound in a sentence."""
        wanted = record_id(dataset_id)
        dataset = self.engine.datasets.get(wanted) if wanted is not None else None
        if dataset is None:
            raise NotFound(f"There is no dataset {dataset_id[:40]}. The overview lists every "
                           "dataset.")
        return dataset

    def may_change(self, dataset: DatasetState) -> bool:
        """Whether this user may suspend, resume, reset or reprioritize `dataset`."""
        try:
            authorize(self.principal, Action.CHANGE_DATASET, owner_id=dataset.user_id)
        except Forbidden:
            return False
        return True

    def post_form(self, action: str, *children: Child, **attrs: object) -> Markup:
        """A form that POSTs to `action` with this session's CSRF token."""
        return tag("form", tag("input", type="hidden", name=CSRF_FIELD, value=self.session.csrf),
                   *children, method="post", action=action, **attrs)

    def render(self, title: str, *body: Child, status: int = 200) -> web.Response:
        user = self.principal.name + (" (admin)" if self.principal.role == "admin" else "")
        current = self.request.path
        links = [link(href, text, aria_current="page" if href == current else None)
                 for href, text in NAV]
        nav = join([tag("nav", links),
                    tag("div", tag("span", user, class_="who"),
                        self.post_form("/signout", tag("button", "Sign out", class_="quiet")),
                        class_="account")])
        return html_response(title, nav, join(body), status)


def html_response(title: str, nav: Markup, body: Markup, status: int = 200) -> web.Response:
    text = LAYOUT.substitute(title=tag("title", f"{title} · floe"), nav=nav, body=body,
                             root=escape(PREFIX.get()))
    return web.Response(text=text, status=status, content_type="text/html",
                        headers=SECURITY_HEADERS)


def message(view: View | None, status: int, text: str) -> web.Response:
    """A page that says what went wrong, with its HTTP status."""
    title = http.HTTPStatus(status).phrase
    body = (tag("h1", title), tag("p", text, class_="message"),
            tag("p", link("/", "Back to the overview")))
    if view is None:
        return html_response(title, Markup(""), join(body), status)
    return view.render(title, *body, status=status)


def redirect(location: str) -> web.Response:
    """See the result of a POST at `location`, a path of the pages (303: the browser GETs
    it), under the path they are published at."""
    return web.Response(status=303, headers={**SECURITY_HEADERS,
                                             "Location": PREFIX.get() + location})


def href(path: str, **params: object) -> str:
    """`path` with the non-empty `params` as its query string."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{path}?{urlencode(kept)}" if kept else path


Handler = Callable[[View], Awaitable[web.StreamResponse]]


async def read_form(request: web.Request) -> Any:
    """The posted form; a client that closes the connection in the middle of it is one info
    line in the log (Unavailable), not an error with a traceback."""
    try:
        return await request.post()
    except ConnectionError:
        log.info("%s %s from %s: the client closed the connection in the middle of its form",
                 request.method, request.path, request.remote)
        raise Unavailable("the form was cut off (the connection closed); send it again") \
            from None


def page(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler for a page of signed-in users (see the module docstring)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        view = None
        try:
            view = await _view(request)
            if view is None:
                target = request.path_qs if request.method == "GET" else "/"
                return redirect(f"/signin?next={quote(target, safe='')}")
            if request.method == "POST":
                view.form = await read_form(request)
                if not same_secret(view.session.csrf, view.form.get(CSRF_FIELD)):
                    return message(view, 403, CSRF_REFUSED)
            return await handler(view)
        except ApiError as exc:
            return message(view, exc.status, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return message(view, exc.status, exc.text or exc.reason)
        except StorageError as exc:
            log.warning("%s %s: %s", request.method, request.path, exc)
            answer = message(view, 503, unavailable(exc))
            answer.headers["Retry-After"] = RETRY_AFTER
            return answer
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            return message(view, 500, "Something went wrong in the server; its log has the "
                                      "details.")

    return handle


async def _view(request: web.Request) -> View | None:
    """The signed-in user of `request`, or None (no session, or its token stopped working)."""
    session = request.app[SESSIONS].find(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    auth = request.app[AUTH]
    try:
        principal = await auth.authenticate_session(session.token_digest)
    except Unauthorized:
        return None
    note_principal(request, principal)
    authorize(principal, Action.READ)
    return View(request, request.app[ENGINE], auth, principal, session)
