"""API of users, sites, tokens and fair shares (admins), and of who is calling (everyone)."""

from __future__ import annotations

from typing import Any

from ..access import Action
from ..errors import Unauthorized
from ..views import share_table
from . import schemas
from .framework import Context, Param, Reply, route

NAME = Param("name", str, where="path")


def _user(ctx: Context, user) -> dict[str, Any]:
    engine = ctx.engine
    now = engine.clock()
    return {"name": user.name, "role": user.role, "share": user.share,
            "usage": engine.user_usage.value(user.user_id, now),
            "datasets": len(engine.by_user.get(user.user_id, ()))}


@route("GET", "/api/v1/whoami", summary="Who the token belongs to", tag="users",
       response=schemas.WHOAMI)
async def whoami(ctx: Context) -> Any:
    principal = ctx.principal
    if principal is None:
        raise Unauthorized("this needs a token: send 'Authorization: Bearer <token>'")
    return {"role": principal.role, "name": principal.name,
            "user": principal.user.name if principal.user else None,
            "site": principal.site.name if principal.site else None,
            "expires": principal.expires}


@route("POST", "/api/v1/users", summary="Add a user; the answer holds its token, shown once",
       tag="users", action=Action.MANAGE, body=schemas.NEW_USER, status=201,
       errors=(400, 401, 403, 409), response=schemas.NEW_USER_TOKEN)
async def add_user(ctx: Context) -> Any:
    user, token = await ctx.auth.add_user(ctx.body["name"], bool(ctx.body.get("admin")),
                                          float(ctx.body.get("share", 1.0)))
    return {"user": _user(ctx, user), "token": token}


@route("GET", "/api/v1/users", summary="Users with their roles, shares and recent usage",
       tag="users", action=Action.READ, response=schemas.USERS)
async def users(ctx: Context) -> Any:
    return {"users": [_user(ctx, u) for u in sorted(ctx.engine.users.values(),
                                                    key=lambda u: u.name)]}


@route("POST", "/api/v1/users/{name}/token", summary="Replace a user's token (the old one stops "
       "working)", tag="users", action=Action.MANAGE, params=[NAME], status=201,
       response=schemas.USER_TOKEN)
async def user_token(ctx: Context) -> Any:
    user = await ctx.auth.user_by_name(ctx.params["name"])
    return {"user": user.name, "token": await ctx.auth.new_user_token(user)}


@route("PUT", "/api/v1/users/{name}/share", summary="Set a user's fair share", tag="users",
       action=Action.MANAGE, params=[NAME], body=schemas.SHARE, response=schemas.USER)
async def set_share(ctx: Context) -> Any:
    user = await ctx.auth.user_by_name(ctx.params["name"])
    await ctx.auth.set_share(user, float(ctx.body["share"]))
    return _user(ctx, user)


@route("GET", "/api/v1/shares", summary="Each user's share against recent usage", tag="users",
       action=Action.READ, response=schemas.SHARES)
async def shares(ctx: Context) -> Any:
    return share_table(ctx.engine)


@route("POST", "/api/v1/sites", summary="Add a site; the answer holds its factory token, shown "
       "once", tag="sites", action=Action.MANAGE, body=schemas.NEW_SITE, status=201,
       errors=(400, 401, 403, 409), response=schemas.TOKEN_OF_SITE)
async def add_site(ctx: Context) -> Any:
    site, token = await ctx.auth.add_site(ctx.body["name"])
    return Reply({"site": site.name, "token": token}, 201)


@route("POST", "/api/v1/sites/{name}/token", summary="Replace a site's factory token",
       tag="sites", action=Action.MANAGE, params=[NAME], status=201,
       response=schemas.TOKEN_OF_SITE)
async def site_token(ctx: Context) -> Any:
    site = await ctx.auth.site_by_name(ctx.params["name"])
    return {"site": site.name, "token": await ctx.auth.new_site_token(site)}
