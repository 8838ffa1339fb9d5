"""A small JSON client for the matchmaker API, used by the `floe` commands that talk to a server.

Where to connect and as whom come from, in order: command-line options, the environment
(`FLOE_URL`, `FLOE_TOKEN`, `FLOE_CACERT`), then the client file, `client.toml` in floe's settings
folder (`$XDG_CONFIG_HOME/floe`, else `~/.config/floe`; keys `url`, `token`, `cacert`;
`FLOE_CONFIG` names another file). The token is the first of `--token`, `--token-file FILE`,
`FLOE_TOKEN`, `FLOE_TOKEN_FILE` and the file's `token`: a token file keeps it off the command
line, where `ps` shows it to everyone, and must be readable by its owner alone. Failures become
`ClientError` with one sentence, with the hint that fits when the matchmaker could not be
reached (config.connecting).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import ssl
import stat
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from floe.config.connecting import address_problem, unreachable_hint

from .places import config_dir

DEFAULT_URL = "http://127.0.0.1:8080"


class ClientError(Exception):
    """A request that did not succeed, as one sentence for the user."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--url", help=f"matchmaker address (FLOE_URL; default {DEFAULT_URL})")
    group.add_argument("--token", help="your token (FLOE_TOKEN); `ps` shows it to everyone "
                                       "on this machine: prefer --token-file")
    group.add_argument("--token-file", metavar="FILE",
                       help="a file readable by you alone that holds your token "
                            "(FLOE_TOKEN_FILE)")
    group.add_argument("--cacert", help="CA or self-signed certificate to trust (FLOE_CACERT)")


def _file_path() -> Path:
    return Path(os.environ.get("FLOE_CONFIG") or config_dir() / "client.toml")


def read_token_file(path: str, where: str) -> str:
    """The token in the file at `path` (`where` names how it was given: "--token-file ");
    ClientError with the fix when the file cannot be read, is empty, holds more than one word,
    or is a file that other users can read (as ssh refuses such a private key)."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as stream:
            mode = os.fstat(stream.fileno()).st_mode
            if stat.S_ISREG(mode) and mode & 0o044:
                raise ClientError(f"{where}{path} can be read by other users (mode "
                                  f"{stat.S_IMODE(mode):04o}); make it yours alone: chmod 600 "
                                  f"{path}")
            token = stream.read().strip()
    except OSError as exc:
        raise ClientError(f"{where}{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ClientError(f"{where}{path} is not text; write your token into it") from None
    if not token:
        raise ClientError(f"{where}{path} is empty; write your token into it (`floe user add` "
                          "printed it)")
    if len(token.split()) > 1:
        raise ClientError(f"{where}{path} holds more than a token; the file must hold your "
                          "token alone")
    return token


def _token(args: argparse.Namespace, file: dict[str, str]) -> str | None:
    """The first token given of --token, --token-file, FLOE_TOKEN, FLOE_TOKEN_FILE and the
    client file's; a token file is read only when it is the one that counts."""
    if args.token:
        return args.token
    if args.token_file:
        return read_token_file(args.token_file, "--token-file ")
    if os.environ.get("FLOE_TOKEN"):
        return os.environ["FLOE_TOKEN"]
    if os.environ.get("FLOE_TOKEN_FILE"):
        return read_token_file(os.environ["FLOE_TOKEN_FILE"], "FLOE_TOKEN_FILE=")
    if file.get("token"):
        path = _file_path()
        with contextlib.suppress(OSError):  # it was just read
            mode = path.stat().st_mode
            if mode & 0o044:
                raise ClientError(f"{path} holds your token and can be read by other users "
                                  f"(mode {stat.S_IMODE(mode):04o}); make it yours alone: "
                                  f"chmod 600 {path}")
    return file.get("token")


def _file_settings() -> dict[str, str]:
    path = _file_path()
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ClientError(f"cannot read {path}: {exc}") from exc
    unknown = set(data) - {"url", "token", "cacert"}
    if unknown:
        raise ClientError(f"{path}: unknown keys {', '.join(sorted(unknown))} (known: url, "
                          "token, cacert)")
    return {k: str(v) for k, v in data.items()}


@dataclass
class Client:
    url: str
    token: str | None
    cacert: str | None = None
    timeout: float = 30.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Client:
        file = _file_settings()
        url, where = next((value, where) for value, where in (
            (args.url, "--url "), (os.environ.get("FLOE_URL"), "FLOE_URL="),
            (file.get("url"), f"url in {_file_path()}: "), (DEFAULT_URL, "")) if value)
        problem = address_problem(url)
        if problem:
            raise ClientError(f"{where}{url} {problem}")
        token = _token(args, file)
        cacert = args.cacert or os.environ.get("FLOE_CACERT") or file.get("cacert")
        return cls(url.rstrip("/"), token, cacert)

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, Any] | None = None, raw: bool = False) -> Any:
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            context = ssl.create_default_context(cafile=self.cacert) if self.cacert else None
        except (OSError, ssl.SSLError) as exc:
            raise ClientError(f"cannot use the CA certificate {self.cacert}: "
                              f"{getattr(exc, 'strerror', None) or exc} (check --cacert or "
                              "FLOE_CACERT)") from None
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=context) as reply:
                payload = reply.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                message = text.strip() or exc.reason
            if exc.code == 401 and not self.token:
                message += (" (no token given: use --token-file or --token, FLOE_TOKEN_FILE "
                            "or FLOE_TOKEN, or the token of client.toml)")
            raise ClientError(message, exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            hint = unreachable_hint(self.url, exc, "--cacert (or FLOE_CACERT)")
            said = hint or (f"{getattr(exc, 'reason', exc)} (is `floe server` running? set --url "
                            "or FLOE_URL)")
            raise ClientError(f"cannot reach the matchmaker at {self.url}: {said}") from None
        if raw:
            return payload.decode(errors="replace")
        try:
            return json.loads(payload) if payload else None
        except ValueError:
            raise ClientError(f"{self.url} answered {path} with something that is not JSON: "
                              "is it a floe matchmaker? (check --url or FLOE_URL)") from None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any = None, **query: Any) -> Any:
        return self.request("POST", path, body if body is not None else {}, query=query)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)
