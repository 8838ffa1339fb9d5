"""How long the pilots' stdout and stderr files stay in a site's workdir.

Every pilot leaves its two output files in the workdir's `logs/` (on the login node, for a site
reached over ssh), where the factory reads their last lines for its reports. A production that
runs for months starts thousands of pilots a day, and their files would fill the account's
disk quota or its count of files; `LogPruning` removes those last written more than the site's
`keep_pilot_logs` ago, once an hour, never those of a pilot the factory still tracks or that
ended in the cycle (whose last lines it is about to read), nor files of any other name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from floe.config.resources import format_duration
from floe.config.schema import counted
from floe.plugins import BatchError, BatchPlugin

log = logging.getLogger("floe.factory")

EVERY = 3600.0
"""Seconds between two prunings of one site's logs."""


class LogPruning:
    """When a site's old pilot logs were last removed, and removing them when it is time."""

    def __init__(self, site: str) -> None:
        self.site = site
        self.due = 0.0

    def maybe(self, plugin: BatchPlugin, keep: float, tracked: Iterable[str], now: float) -> None:
        """Remove the logs older than `keep` seconds (0: none) if an hour has passed since the
        last time; a failure is logged and tried again an hour later."""
        if not keep or now < self.due:
            return
        self.due = now + EVERY
        try:
            removed = plugin.prune_logs(keep, tracked)
        except BatchError as exc:
            log.warning("site %s: cannot remove pilot logs older than %s from %s (tried again "
                        "in an hour): %s", self.site, format_duration(keep), plugin.logs_where(),
                        exc)
            return
        if removed:
            log.info("site %s: removed %s last written more than %s ago from %s", self.site,
                     counted(removed, "pilot log file"), format_duration(keep),
                     plugin.logs_where())
