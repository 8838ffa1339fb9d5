"""`floe server`, `floe user`, `floe site`: run the matchmaker and administer it on its host.

`floe user` and `floe site` work directly on the database file (by default ./var/floe.sqlite,
which must exist; `add` with --db naming a new file makes it, so that the first admin can be
made before anything listens); they are safe to run while the server is up (SQLite
serializes the writes, and the server finds new tokens on first use).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from floe.config.settings import SERVER_SCHEMA

from .command import number

DEFAULT_DB = SERVER_SCHEMA.fields["database"].default


def _configure_server(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", metavar="FILE", help="a server.toml (see docs/server.md)")
    parser.add_argument("--db", metavar="PATH", help=f"SQLite file (default {DEFAULT_DB})")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8080)")
    parser.add_argument("--cert", metavar="FILE", help="TLS certificate (PEM)")
    parser.add_argument("--key", metavar="FILE", help="TLS private key (PEM)")
    parser.add_argument("--self-signed", action="store_true",
                        help="serve TLS with a self-signed certificate made next to the database")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"))
    parser.add_argument("--check", action="store_true",
                        help="check the settings, the database (read-only), the TLS files, the "
                             "log files and the port, print a summary and exit: 0 when the "
                             "server would start, 1 with the reason")


def settings_from(args: argparse.Namespace):
    from floe.config.settings import load_server_settings

    overrides = {"database": args.db, "host": args.host, "port": args.port,
                 "tls_cert": args.cert, "tls_key": args.key}
    return load_server_settings(args.settings, {k: v for k, v in overrides.items()
                                                if v is not None})


def _run_server(args: argparse.Namespace) -> int:
    from floe.config.schema import ConfigError
    from floe.matchmaker import server
    from floe.matchmaker.preflight import CheckFailed, port_problem, preflight
    from floe.matchmaker.storage.errors import StorageError

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    name = "floe server --check" if args.check else "floe server"
    try:
        settings = settings_from(args)
        if args.check:
            said = preflight(settings, self_signed=args.self_signed)
            print(f"{name}: the server would start, with the settings "
                  f"{'of ' + args.settings if args.settings else 'by default'}", *said,
                  sep="\n  ")
            return 0
        server.run(settings, self_signed=args.self_signed, reread=lambda: settings_from(args))
    except OSError as exc:
        print(f"{name}: {port_problem(settings, exc)}", file=sys.stderr)
        return 1
    except (ConfigError, ValueError, StorageError, CheckFailed) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    return 0


@contextlib.asynccontextmanager
async def _admin(db_path: str | None, adding: bool) -> AsyncIterator:
    """An Auth over the database file (`None`: the default), without starting a server. A file
    that does not exist is made only to `add` to, when --db names it: anywhere else a missing
    file is a mistake (run from another directory, or a typo), and a user or site added to a
    new file would be unknown to the server."""
    from floe.config.settings import server_settings
    from floe.matchmaker.auth import Auth
    from floe.matchmaker.engine import Engine
    from floe.matchmaker.storage.database import Database, StorageError

    path = db_path or DEFAULT_DB
    if not Path(path).exists():
        if db_path is None or not adding:
            raise StorageError(
                f"{Path(path).absolute()} does not exist: give --db the file `floe server` uses"
                + (f" (--db {path} makes a new, empty database there)" if adding else ""))
        print(f"note: {path} did not exist; created a new matchmaker database there (`floe "
              "server` must use this file)", file=sys.stderr)
    db = await Database.open(path)
    try:
        engine = Engine(db, server_settings({"database": path}))
        yield Auth(engine)
    finally:
        await db.close()


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="PATH",
                        help=f"the matchmaker's SQLite file, the one `floe server` uses "
                             f"(default {DEFAULT_DB}, which must exist)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _configure_user(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add a user and print its token (shown once)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may manage users, sites, everything")
    add.add_argument("--share", type=number, default=1.0, help="fair share (default 1)")
    _db_option(add)
    token = sub.add_parser("token", help="replace a user's token and print the new one")
    token.add_argument("name")
    _db_option(token)
    share = sub.add_parser("share", help="set a user's fair share")
    share.add_argument("name")
    share.add_argument("share", type=number)
    _db_option(share)


def _run_user(args: argparse.Namespace) -> int:
    from floe.matchmaker.errors import ApiError
    from floe.matchmaker.storage.database import StorageError

    async def act() -> dict:
        async with _admin(args.db, args.user_command == "add") as auth:
            if args.user_command == "add":
                user, token = await auth.add_user(args.name, args.admin, args.share)
                return {"user": user.name, "role": user.role, "share": user.share,
                        "token": token}
            user = await auth.user_by_name(args.name)
            if args.user_command == "token":
                return {"user": user.name, "token": await auth.new_user_token(user)}
            await auth.set_share(user, args.share)
            return {"user": user.name, "share": user.share}

    try:
        result = asyncio.run(act())
    except (ApiError, StorageError) as exc:
        print(f"floe user: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    elif "token" in result:
        # The token alone on stdout, so that `... > alice.token` makes a token file.
        print(f"{result['user']}'s token (shown only now; keep it secret):", file=sys.stderr)
        print(result["token"])
    else:
        print(f"{result['user']}: share {result['share']}")
    return 0


def _configure_site(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="site_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add a site and print its factory token (shown once)")
    add.add_argument("name")
    _db_option(add)
    token = sub.add_parser("token", help="replace a site's factory token")
    token.add_argument("name")
    _db_option(token)
    pilot = sub.add_parser("pilot-token", help="a pilot token of the site, for a pilot started "
                                               "by hand (`floe pilot --token-file`)")
    pilot.add_argument("name")
    pilot.add_argument("--lifetime", default="1d", metavar="DURATION",
                       help="until it expires (default 1d; at most the server's "
                            "pilot_token_max_lifetime, 14d by default)")
    _db_option(pilot)


def _run_site(args: argparse.Namespace) -> int:
    from floe.config.resources import ResourceError, parse_duration
    from floe.matchmaker.errors import ApiError
    from floe.matchmaker.storage.database import StorageError

    async def act() -> dict:
        async with _admin(args.db, args.site_command == "add") as auth:
            if args.site_command == "add":
                site, token = await auth.add_site(args.name)
                return {"site": site.name, "token": token}
            site = await auth.site_by_name(args.name)
            if args.site_command == "pilot-token":
                (token,), expires = await auth.pilot_tokens(site,
                                                            parse_duration(args.lifetime))
                return {"site": site.name, "token": token, "expires": expires}
            return {"site": site.name, "token": await auth.new_site_token(site)}

    try:
        result = asyncio.run(act())
    except (ApiError, StorageError) as exc:
        print(f"floe site: {exc}", file=sys.stderr)
        return 1
    except ResourceError as exc:
        print(f"floe site: --lifetime: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    elif "expires" in result:
        # The token alone on stdout, so that `... > pilot.token` makes a file a pilot reads.
        print(f"pilot token of site {result['site']}, valid for {args.lifetime} (shown only "
              "now; it registers one pilot: give it to `floe pilot --token-file`):",
              file=sys.stderr)
        print(result["token"])
    else:
        print(f"factory token of site {result['site']} (shown only now; put it in the file the "
              "site's token_file names, readable by the factory's account alone):",
              file=sys.stderr)
        print(result["token"])
    return 0


SUBCOMMANDS = {
    "server": ("run the matchmaker", _configure_server, _run_server),
    "user": ("add users, replace their tokens, set shares (on the server host)",
             _configure_user, _run_user),
    "site": ("add sites, replace their factory tokens, make pilot tokens (on the server host)",
             _configure_site, _run_site),
}
