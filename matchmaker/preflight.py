"""`floe server --check`: whether `floe server` would start with these settings, without
starting it: the database file (opened read-only: no other server holds it, floe's, a schema
this floe reads, SQLite's quick check), the TLS certificate and key, the access and audit log
files, and the port. Each problem is the sentence that `floe server` itself would say; nothing
is written to the database.
"""

from __future__ import annotations

import errno
from pathlib import Path

from floe.config.settings import ServerSettings

from . import tls
from .frontdoor import FrontDoor
from .server import listen, ssl_context
from .storage import files
from .storage.schema import SCHEMA_VERSION


class CheckFailed(Exception):
    """What would keep the server from starting, in one sentence."""


def preflight(settings: ServerSettings, self_signed: bool = False) -> list[str]:
    """One line per thing checked, for the summary; raises CheckFailed at the first problem,
    or StorageError (the database) or ValueError (TLS, log files) with their own sentence."""
    said = [_database(Path(settings.database))]
    said.append(_tls(settings, self_signed))
    front = FrontDoor(settings)  # opens the log files as the server would
    front.close()
    said.append(f"access log: {_destination(settings.access_log, settings.access_log_file)}; "
                f"audit log: {_destination(settings.audit_log, settings.audit_log_file)}")
    try:
        listen(settings.host, settings.port).close()
    except OSError as exc:
        raise CheckFailed(port_problem(settings, exc)) from None
    said.append(f"port {settings.port} of {settings.host} is free")
    return said


def port_problem(settings: ServerSettings, exc: OSError) -> str:
    """Why the server cannot listen, as a sentence that names the fix."""
    if exc.errno == errno.EADDRINUSE:
        return (f"port {settings.port} of {settings.host} is in use (another floe server?); "
                "stop that one or pick another with --port")
    return str(exc)


def _database(path: Path) -> str:
    taken = files.ServerLock(path).in_use()
    if taken:
        raise CheckFailed(taken)
    version = files.check(path, integrity=True)
    if version is None:
        return f"database {path}: does not exist yet; the server makes it"
    migration = "" if version == SCHEMA_VERSION else \
        f", migrated to {SCHEMA_VERSION} when the server opens it"
    return f"database {path}: schema version {version}{migration}; SQLite's quick check passed"


def _tls(settings: ServerSettings, self_signed: bool) -> str:
    if self_signed:
        directory = Path(settings.database).parent
        cert, key = directory / "floe-selfsigned.crt", directory / "floe-selfsigned.key"
        if not (cert.exists() and key.exists()):
            return f"TLS: a self-signed certificate is made in {directory} at start"
        tls.context(cert, key)
        return f"TLS: the self-signed certificate {cert} loads"
    if ssl_context(settings, self_signed=False) is None:
        return "TLS: none (plain HTTP; put a TLS proxy in front, or set tls_cert and tls_key)"
    return f"TLS: certificate {settings.tls_cert} and key {settings.tls_key} load"


def _destination(kind: str, path: str) -> str:
    if kind == "off":
        return "off"
    return f"{kind} to {path or 'standard error'}"
