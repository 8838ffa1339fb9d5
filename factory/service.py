"""The factory process: one thread per site running its cycles, config reloads, a clean stop.

The config file is read again on SIGHUP and whenever its modification time changes; a file that
does not validate (or a site whose token cannot be read) is refused with its problems, logged,
and the config in force stays. Sites that appear are started, sites that go are stopped as their
`on_stop` says, sites that change get the new settings at their next cycle. SIGTERM and SIGINT
stop every site the same way and end the process.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from floe.config.factory import FactoryConfig, SiteConfig, load_factory_config, site_token
from floe.config.schema import ConfigError
from floe.factory.site import SiteRunner, build_plugin
from floe.plugins import PluginConfigError

log = logging.getLogger("floe.factory")

RELOAD_CHECK = 2.0
"""Seconds between looks at the config file's modification time."""


class Factory:
    """Runs the sites of one config file until `stop()`."""

    def __init__(self, config_path: str | Path, bundle: Path, *,
                 clock: Callable[[], float] = time.time, matchmaker: str | None = None) -> None:
        self.config_path = Path(config_path)
        self.matchmaker = matchmaker  # `floe factory --matchmaker`, over FLOE_URL and the file
        self.bundle = bundle
        self.clock = clock
        self.config: FactoryConfig | None = None
        self.runners: dict[str, SiteRunner] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._stops: dict[str, threading.Event] = {}
        self._stopping = threading.Event()
        self._reload = threading.Event()
        self._mtime = 0.0

    # ------------------------------------------------------------------ config

    def load(self) -> FactoryConfig:
        """Read and validate the config file and every site's token; ConfigError when any of
        it is wrong (nothing changes then)."""
        self._mtime = self._file_mtime()
        config = load_factory_config(self.config_path, self.matchmaker)
        tokens = {site.name: site_token(site) for site in config.sites}
        self._apply(config, tokens)
        return config

    def reload(self) -> bool:
        """Take a changed config file; on any problem keep the old one. True when taken."""
        try:
            config = self.load()
        except (ConfigError, PluginConfigError) as exc:
            log.error("the new factory config is refused, the old one stays in force:\n%s", exc)
            return False
        log.info("factory config %s taken: sites %s", self.config_path,
                 ", ".join(site.name for site in config.sites))
        return True

    def _apply(self, config: FactoryConfig, tokens: Mapping[str, str]) -> None:
        for site in config.sites:  # a bad plugin setting refuses the whole file
            build_plugin(config, site)
        fresh: dict[str, SiteRunner] = {}
        changed: list[tuple[SiteRunner, SiteConfig]] = []
        for site in config.sites:
            runner = self.runners.get(site.name)
            if runner is None:
                fresh[site.name] = SiteRunner(config, site, self.bundle, tokens[site.name],
                                                 clock=self.clock)
            else:
                changed.append((runner, site))
        for runner, site in changed:
            runner.reconfigure(config, site, tokens[site.name])
        gone = [name for name in self.runners if name not in {s.name for s in config.sites}]
        self.config = config
        for name in gone:
            self._stop_site(name)
        for name, runner in fresh.items():
            self.runners[name] = runner
            if self._threads:  # already running: start the new site now
                self._start_site(name)

    def _file_mtime(self) -> float:
        try:
            return os.stat(self.config_path).st_mtime
        except OSError:
            return 0.0

    # ------------------------------------------------------------------ running

    def run(self) -> int:
        """Run until stopped; returns the exit status."""
        if self.config is None:
            self.load()
        log.info("factory %s started for %s (from %s) with %s; workdir %s (SIGHUP rereads %s, "
                 "SIGTERM stops)", self.config.factory_id, self.config.matchmaker,
                 self.config.matchmaker_source,
                 "; ".join(f"site {r.name} ({r.site.plugin}, a cycle every "
                           f"{r.site.cycle:g} s)" for r in self.runners.values()),
                 self.config.workdir, self.config_path)
        for name in self.runners:
            self._start_site(name)
        while not self._stopping.is_set():
            self._reload.wait(RELOAD_CHECK)
            if self._stopping.is_set():
                break
            if self._reload.is_set() or self._file_mtime() != self._mtime:
                self._reload.clear()
                self.reload()
        log.info("factory %s stopping", self.config.factory_id)
        for name in list(self.runners):
            self._stop_site(name)
        log.info("factory %s stopped", self.config.factory_id)
        return 0

    def _start_site(self, name: str) -> None:
        stop = self._stops[name] = threading.Event()
        thread = threading.Thread(target=self._site_loop, args=(self.runners[name], stop),
                                  name=f"site-{name}", daemon=True)
        self._threads[name] = thread
        thread.start()

    def _site_loop(self, runner: SiteRunner, stop: threading.Event) -> None:
        while not stop.is_set():
            started = self.clock()
            try:
                runner.cycle()
            except Exception:  # a bug must not end the site's loop
                log.exception("site %s: the cycle failed", runner.name)
            stop.wait(max(0.0, runner.site.cycle - (self.clock() - started)))

    def _stop_site(self, name: str) -> None:
        stop = self._stops.pop(name, None)
        thread = self._threads.pop(name, None)
        if stop is not None:
            stop.set()
        if thread is not None:
            thread.join()
        runner = self.runners.pop(name)
        try:
            runner.stop()
        except Exception:
            log.exception("site %s: stopping failed", name)

    def request_reload(self) -> None:
        self._reload.set()

    def stop(self) -> None:
        self._stopping.set()
        self._reload.set()

    def install_signals(self) -> None:
        """SIGHUP reloads; SIGTERM and SIGINT stop (main thread only)."""
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
