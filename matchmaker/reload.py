"""SIGHUP for a running `floe server`: read the settings file again and apply what can change
while the server runs (`config.settings.RELOADABLE`), read the TLS certificate and key again
(a renewed certificate is served to new connections, with no restart), and reopen the access
and audit logs. A change to any other setting is logged as waiting for a restart; a settings
file or certificate with a mistake is logged and changes nothing. The server never stops
for a SIGHUP.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from floe.config.schema import ConfigError
from floe.config.settings import RELOADABLE, ServerSettings

from . import tls
from .frontdoor import FrontDoor

log = logging.getLogger(__name__)


class Reloader:
    """What SIGHUP changes in one server: its `settings` (the object its engine reads), its
    front door and its TLS context; `read` gives the settings as the file now says."""

    def __init__(self, settings: ServerSettings, read: Callable[[], ServerSettings],
                 front: FrontDoor, context: ssl.SSLContext | None,
                 self_signed: bool = False) -> None:
        self.settings = settings
        self.read = read
        self.front = front
        self.context = context
        self.self_signed = self_signed

    def reload(self) -> None:
        """Apply the settings file and the TLS files as they are now; logs what happened and
        raises nothing."""
        try:
            self._reload()
        except Exception:  # a signal handler that raises would stop the server
            log.exception("SIGHUP: reloading failed; the server goes on with its settings "
                          "as they were")

    def _reload(self) -> None:
        try:
            new = self.read()
        except (ConfigError, OSError, ValueError) as exc:
            log.error("SIGHUP: the settings were not reloaded, nothing changed: %s", exc)
            return
        old = self.settings
        changed = [f.name for f in fields(ServerSettings)
                   if getattr(old, f.name) != getattr(new, f.name)]
        waiting = [name for name in changed if name not in RELOADABLE]
        certificate = self._certificate(new)
        if certificate is None:  # TLS cannot start or stop in a running server
            waiting += [name for name in ("tls_cert", "tls_key") if name in changed]
        else:
            try:
                tls.context(*certificate)  # a fresh context first: a bad pair changes nothing
            except ValueError as exc:
                log.error("SIGHUP: nothing was reloaded: %s; fix the files (or tls_cert and "
                          "tls_key) and send SIGHUP again", exc)
                return
        try:
            self.front.configure(new)
        except ValueError as exc:
            log.error("SIGHUP: nothing was reloaded: %s", exc)
            return
        if certificate is not None:
            self.context.load_cert_chain(str(certificate[0]), str(certificate[1]))
        applied = [name for name in changed if name not in waiting]
        said = [f"{name} {_shown(getattr(old, name))} -> {_shown(getattr(new, name))}"
                for name in applied]
        for name in applied:
            setattr(old, name, getattr(new, name))
        log.info("SIGHUP: settings reloaded: %s%s%s; access and audit logs reopened",
                 "; ".join(said) if said else "no reloadable setting changed",
                 f"; waiting for a restart: {', '.join(sorted(set(waiting)))}"
                 if waiting else "",
                 f"; TLS certificate {certificate[0]} reloaded" if certificate else "")

    def _certificate(self, new: ServerSettings) -> tuple[Path, Path] | None:
        """The certificate and key to serve from now on; None when TLS is not reloadable
        (plain HTTP, or settings that would turn it off)."""
        if self.context is None:
            return None
        if self.self_signed:
            return tls.self_signed(Path(self.settings.database).parent)
        if new.tls_cert and new.tls_key:
            return Path(new.tls_cert), Path(new.tls_key)
        return None


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)
