"""One site's loop: each cycle, see where this factory's pilots stand, ask the matchmaker for the
demand, apply the top-up policy, and submit or remove pilots through the site's batch plugin.

The pilots the factory submitted are tracked in `<workdir>/<site>/pilots.json`, so that a
restarted factory finds its own pilots again; pilots tagged as this factory's that it does not
track are orphans and are removed. Before it asks for the demand, each cycle tells the
matchmaker which pilots' batch jobs ended, so that a pilot killed outright (SIGKILL, a lost node)
has its tasks requeued at once, not after the heartbeat timeout, and asks which tracked pilots
registered with it, those that ended since the last cycle included: an ended pilot is judged on
that answer, since it may have registered and ended between two cycles. A pilot that registered
proves the site works; one that ended without registering (a node without network, a wrong URL
or CA) is a failure however long it ran, as are held pilots and refused submissions (see
`factory.health`): a failing site is backed off from, not hammered. Where the matchmaker cannot
say (it cannot be reached), a pilot's life decides (`min_pilot_life`). Each
pilot carries a pilot token that outlives its walltime by the site's `queue_allowance`; a pilot
still queued after that long is removed (its token could run out before its walltime does), and
the policy replaces it while demand lasts. What the site looks like after each cycle is written
to `<workdir>/<site>/status.json` for the site admin.

A cycle never raises for the batch system's or the matchmaker's failures: they are logged with
the command and its stderr, and the next cycle tries again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from floe.config.factory import FactoryConfig, SiteConfig
from floe.config.protocol import MAX_BATCH_IDS, QUEUED_TTL
from floe.config.resources import format_duration
from floe.config.schema import counted
from floe.factory.health import Health
from floe.factory.holds import Holds
from floe.factory.judging import Judging, Tracked
from floe.factory.logs import LogPruning
from floe.factory.matchmaker import MatchmakerError, SiteClient
from floe.factory.policy import Decision, Limits, ShapeCounts, top_up
from floe.plugins import (
    BatchError,
    BatchPlugin,
    PilotShape,
    PilotState,
    PluginSettings,
    create_plugin,
)
from floe.plugins.hosts import SshHost, SshSettings, make_private
from floe.plugins.jobs import PilotJob

log = logging.getLogger("floe.factory")

AWAY_REPEAT = 600.0
"""How often, in seconds, the factory says again that the matchmaker cannot be reached."""
UNFIT_REPEAT = 600.0
"""How often, in seconds, the factory says again that ready tasks fit none of a site's shapes."""


@dataclass
class Counters:
    submitted: int = 0
    removed: int = 0
    ended: int = 0
    ended_unregistered: int = 0  # ended without ever registering with the matchmaker
    died_at_start: int = 0       # ended sooner than min_pilot_life, the matchmaker unable to say
    held: int = 0
    orphans_removed: int = 0
    submit_failures: int = 0
    queued_too_long: int = 0  # removed after waiting longer than queue_allowance
    lost: int = 0             # ended while the matchmaker still counted them running


@dataclass
class SiteRunner(Judging):
    """The state of one site across cycles; `config` and `site` may be replaced between cycles
    when the factory's config changes."""

    config: FactoryConfig
    site: SiteConfig
    bundle: Path
    token: str
    clock: Callable[[], float] = time.time
    pilots: dict[str, Tracked] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    surplus_since: dict[str, float] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.health = Health()
        self.holds = Holds()
        self.lock = threading.RLock()  # a cycle and a reconfiguration never overlap
        self._held: set[str] = set()  # tracked pilots the batch system holds
        self._untold: dict[str, Tracked] = {}  # ended pilots the matchmaker was not told of
        self._empty_row: dict[str, int] = {}  # pilots of each shape that ended empty in a row
        self._short_pilots: set[str] = set()  # live pilots that found less than their shape
        self._unfit_said: tuple[Any, float] | None = None  # what _unfit last logged, and when
        self._away_said = 0.0  # when _away last logged
        self._unqueried = False  # the last cycle could not query the batch system
        self.log_pruning = LogPruning(self.name)
        self.reconfigure(self.config, self.site, self.token)
        self._load()
        self._orphans_checked = False

    # ------------------------------------------------------------------ settings

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def workdir(self) -> Path:
        return self.config.workdir / self.name

    def reconfigure(self, config: FactoryConfig, site: SiteConfig, token: str) -> None:
        """Take a new config for this site; PluginConfigError, with nothing changed, when the
        plugin refuses its settings."""
        shapes, plugin = build_plugin(config, site)
        old, current = getattr(self, "site", None), getattr(self, "plugin", None)
        if current is not None and plugin.settings == current.settings:
            plugin = current  # unchanged: keep what it knows (the local plugin's children)
        elif current is not None:
            current.close()  # the connection made with the old settings goes
        with self.lock:
            if old is not None and old != site and self.health.clear():
                log.info("site %s: its config changed; the failures before are forgotten and "
                         "it is tried again now", site.name)
            if old is not None and old != site and self.holds.clear():
                log.info("site %s: its config changed; its held shapes are tried again now",
                         site.name)
            self.config, self.site, self.token = config, site, token
            self.shapes, self.plugin = shapes, plugin
            self.shape_info = {s.name: s for s in site.shapes}
            self.limits = Limits(max_queued=site.max_queued, max_total=site.max_total,
                                 max_per_cycle=site.max_per_cycle,
                                 removal_grace=site.removal_grace)
            self.health.backoff = site.backoff
            self.health.max_backoff = site.max_backoff
            self.health.failing_after = site.failing_after
            self.holds.backoff, self.holds.max_backoff = site.backoff, site.max_backoff
            self.client = SiteClient(config.matchmaker, site.name, token,
                                     cacert=config.cacert, factory=config.factory_id)

    # ------------------------------------------------------------------ one cycle

    def cycle(self) -> Decision | None:
        """One look at the site; returns what the policy decided (None when it could not)."""
        with self.lock:
            return self._cycle(self.clock())

    def _cycle(self, now: float) -> Decision | None:
        try:
            self._settle(now)
        except BatchError as exc:
            self._failure(now, f"cannot learn whether {counted(len(self.plugin.doubts), 'pilot')}"
                               f" submitted as the connection dropped went into the queue: {exc}",
                          recurring=True)
            self._save(now)
            return None
        try:
            infos = self.plugin.status()
        except BatchError as exc:
            self._failure(now, f"cannot query the batch system: {exc}", recurring=True)
            self._unqueried = True
            self._save(now)
            return None
        if self._unqueried:  # what the site waited on is over: try it now
            self._unqueried = False
            if self.health.clear():
                log.warning("site %s: the batch system answers again; the wait is over",
                            self.name)
        ended = self._follow(infos, now)
        if not self._orphans_checked or any(
                batch_id not in self.pilots and info.state is not PilotState.FINISHED
                for batch_id, info in infos.items()):
            self._remove_orphans()
        self._remove_queued_too_long(infos, now)
        # Those that ended in this cycle too: their last words are read below.
        self.log_pruning.maybe(self.plugin, self.site.keep_pilot_logs,
                               {*self.pilots, *infos, *(e.pilot.batch_id for e in ended)}, now)
        counts = self._counts(infos)
        asked = self._unregistered(ended)
        # Kept until the matchmaker hears of them; beyond one request's worth, the oldest are
        # left to its heartbeat timeout.
        self._untold.update((e.pilot.batch_id, e.pilot) for e in ended)
        for batch_id in list(self._untold)[:-MAX_BATCH_IDS]:
            del self._untold[batch_id]
        registered: list[str] | None = None
        suspect: set[str] = set()
        told_ended: dict[str, Tracked] = {}
        empty: list[str] = []
        try:
            if asked or self._untold:  # first, so that the demand counts the tasks requeued
                told = self.client.batch_jobs(self.plugin.system, pilots=asked,
                                              ended=list(self._untold))
                registered, told_ended, self._untold = told["registered"], self._untold, {}
                suspect = set(told.get("suspect") or ())
                self._lost(told["lost"])
                self._findings(registered, told.get("short") or {}, ended, now)
                empty = told.get("empty") or []
            answer = self.client.demand(self._shapes_queued(counts))
        except MatchmakerError as exc:
            self._judge(ended, asked, registered, now, suspect)
            self.last["matchmaker_error"] = str(exc)
            if exc.status is not None and exc.status < 500:  # refused (a wrong token or
                self._failure(now, f"no demand this cycle: {exc}")  # site name): the site fails
            else:  # the matchmaker is away or cannot answer now: no fault of the site's
                self._away(exc, now)
            self._save(now)
            return None
        self._judge(ended, asked, registered, now, suspect)
        self._keep_off(answer.get("black_holes") or [])
        self._back(now)
        self.last.pop("matchmaker_error", None)
        demand = {entry["name"]: entry for entry in answer["shapes"]}
        self._empties(told_ended, set(empty), registered or (), demand, now)
        views = [ShapeCounts(name, needed=demand[name]["pilots_needed"],
                             room=demand[name].get("room", 0), queued=c.queued,
                             running=c.running, held=c.held) for name, c in counts.items()]
        decision = top_up(views, self.limits, now=now, surplus_since=self.surplus_since,
                          backing_off=max(0.0, self.health.until - now))
        self.surplus_since = decision.surplus_since
        for reason in decision.reasons:
            log.info("site %s: %s", self.name, reason)
        for shape in self.shapes:
            if decision.remove_held[shape.name]:
                self._remove_held(shape.name)
            if decision.remove[shape.name]:
                self._remove_queued(shape.name, decision.remove[shape.name])
        submitted = self.counters.submitted
        for shape in self.shapes:
            if decision.submit[shape.name]:
                self._submit(shape, decision.submit[shape.name], now)
            else:  # none wanted: none waits
                self.last.get("waiting", {}).pop(shape.name, None)
        if self.counters.submitted != submitted:
            # Tell of the new pilots at once, so that other factories asking before our next
            # cycle do not submit pilots for the same tasks.
            try:
                self.client.demand(self._shapes_queued(self._counts(infos)))
            except MatchmakerError as exc:
                log.warning("site %s: cannot tell the matchmaker of the pilots just submitted: "
                            "%s", self.name, exc)
        self._unfit(answer.get("unfit") or {"tasks": 0, "kinds": []},
                    served=any(entry["tasks"] for entry in answer["shapes"]), now=now)
        self.last.update({"demand": answer["shapes"], "pilots": answer["pilots"],
                          "unfit": answer.get("unfit"),
                          "decision": {"submit": decision.submit, "remove": decision.remove,
                                       "remove_held": decision.remove_held,
                                       "reasons": decision.reasons}})
        self._save(now)
        return decision

    def _shapes_queued(self, counts: Mapping[str, ShapeCounts]) -> list[dict[str, Any]]:
        """The shapes as the demand request describes them, with this factory's queued pilots."""
        return [{"name": shape.name, "cpus": shape.cpus, "memory": shape.memory,
                 "disk": shape.disk, "gpus": shape.gpus, "walltime": shape.walltime,
                 "os": list(info.os), "arch": info.arch, "gpu_memory": info.gpu_memory,
                 "gpu_model": info.gpu_model, "compute_capability": info.compute_capability,
                 "queued": counts[shape.name].queued}
                for shape in self.shapes for info in [self.shape_info[shape.name]]]

    def _counts(self, infos: Mapping[str, Any]) -> dict[str, ShapeCounts]:
        queued = {s.name: 0 for s in self.shapes}
        running, held = dict(queued), dict(queued)
        for batch_id, pilot in self.pilots.items():
            info = infos.get(batch_id)
            if pilot.shape not in queued:
                continue  # a shape the new config dropped: it runs out, nothing more
            if batch_id in self._held:
                held[pilot.shape] += 1
            elif info is not None and info.state is PilotState.RUNNING:
                running[pilot.shape] += 1
            else:
                queued[pilot.shape] += 1  # queued, or too new for the batch system to list
        return {name: ShapeCounts(name, queued=queued[name], running=running[name],
                                  held=held[name]) for name in queued}

    def _remove_held(self, shape: str) -> None:
        held = [b for b in self._held if b in self.pilots and self.pilots[b].shape == shape]
        try:
            self.plugin.remove(held)
        except BatchError as exc:
            log.warning("site %s: removing held pilots failed (tried again next cycle): %s",
                        self.name, exc)
            return
        for batch_id in held:
            self._held.discard(batch_id)
            self.pilots.pop(batch_id, None)

    def _away(self, error: MatchmakerError, now: float) -> None:
        """The matchmaker cannot be reached: said at once, then every AWAY_REPEAT seconds, not
        each cycle; status.json says since when."""
        since = self.last.setdefault("matchmaker_away_since", now)
        if now == since:
            log.warning("site %s: no demand this cycle, nothing submitted: %s; trying again "
                        "each cycle", self.name, error)
        elif now - self._away_said >= AWAY_REPEAT:
            log.warning("site %s: still no demand after %s, nothing submitted: %s", self.name,
                        format_duration(now - since), error)
        else:
            return
        self._away_said = now

    def _back(self, now: float) -> None:
        """The matchmaker answered: if it had been away, say so."""
        since = self.last.pop("matchmaker_away_since", None)
        if since is not None:
            log.warning("site %s: the matchmaker answers again, after %s away", self.name,
                        format_duration(now - since))

    def _unfit(self, unfit: Mapping[str, Any], served: bool, now: float) -> None:
        """Say which ready tasks that may run here fit none of the site's shapes: when that, or
        whether the site has other work, changes, and again every UNFIT_REPEAT seconds while it
        lasts; a warning when they are all the work there is, since the site then stands idle
        beside them."""
        said = (unfit["tasks"], [kind["why"] for kind in unfit["kinds"]], served)
        if not unfit["tasks"]:
            self._unfit_said = None
            return
        if (self._unfit_said is not None and self._unfit_said[0] == said
                and now - self._unfit_said[1] < UNFIT_REPEAT):
            return
        self._unfit_said = (said, now)
        kinds = " | ".join(f"{counted(kind['tasks'], 'task')}: {kind['why']}"
                           for kind in unfit["kinds"])
        log.log(logging.INFO if served else logging.WARNING,
                "site %s: %s that may run here %s none of its pilot shapes (%s); add a shape "
                "that holds them, or ask their owners to change their requirements",
                self.name, counted(unfit["tasks"], "ready task"),
                "fits" if unfit["tasks"] == 1 else "fit", kinds)

    def _works(self, why: str) -> None:
        """The site works: its failures are cleared."""
        if self.health.success():
            log.warning("site %s works again: %s", self.name, why)

    def _failure(self, now: float, why: str, recurring: bool = False) -> None:
        """One failure, logged (a `recurring` one, a query that fails every cycle, in one line
        while the site waits: status.json has it all) and counted."""
        if recurring and self.health.backing_off(now):
            log.info("site %s: still failing (%.0f s left to wait): %s", self.name,
                     self.health.until - now, why.splitlines()[0])
        else:
            log.warning("site %s: %s", self.name, why)
        if self.health.failure(now, why):
            log.error("site %s is failing: %s in a row; backing off %.0f s at a time "
                      "(last: %s)", self.name, counted(self.health.failures, "failure"),
                      self.health.wait, why)

    def _settle(self, now: float) -> None:
        """Track the pilots whose submission was in doubt (the connection to the login node
        dropped during it) and that the batch system took after all; raises BatchError while
        that cannot be known, so that nothing else is submitted or removed meanwhile."""
        if not self.plugin.doubts:
            return
        for shape, batch_id in self.plugin.settle():
            self.pilots[batch_id] = Tracked(batch_id, shape, now)
            self.counters.submitted += 1
            log.info("site %s: pilot %s was submitted before the connection dropped; tracking "
                     "it", self.name, batch_id)
        self._save(now)

    def _submit(self, shape: PilotShape, count: int, now: float) -> None:
        count = self.holds.allowed(shape.name, count, now)
        count = self._room(shape, count) if count else 0
        if not count:
            return
        try:
            tokens = self.client.pilot_tokens(count, self.plugin.walltime_request(shape)
                                              + self.site.queue_allowance)
        except MatchmakerError as exc:
            log.warning("site %s: no pilot tokens, nothing submitted: %s", self.name, exc)
            return
        try:
            batch_ids = self.plugin.submit(shape, self.pilot_job(shape, tokens))
        except BatchError as exc:
            batch_ids = exc.submitted
            self.counters.submit_failures += 1
            self._failure(now, f"submitting {counted(count, shape.name + ' pilot')} failed: "
                               f"{exc}")
        for batch_id in batch_ids:
            self.pilots[batch_id] = Tracked(batch_id, shape.name, now)
        self.counters.submitted += len(batch_ids)
        if batch_ids:
            log.info("site %s: submitted %s", self.name,
                     counted(len(batch_ids), f"{shape.name} pilot"))

    def _room(self, shape: PilotShape, count: int) -> int:
        """`count`, or fewer where the batch system can start no more of `shape` now (the local
        plugin, out of free GPUs): said in the log when that begins or its reason changes, and
        in status.json (`waiting`, its reason as of the last cycle) while it lasts."""
        room, why = self.plugin.room(shape)
        waiting = self.last.setdefault("waiting", {})
        if room is None or room >= count:
            if waiting.pop(shape.name, None) is not None:
                log.info("site %s: %s pilots can start again", self.name, shape.name)
            return count
        if shape.name not in waiting:  # said when the wait begins; status.json keeps it fresh
            log.warning("site %s: %s of %s wanted started now, the others %s", self.name,
                        room, counted(count, f"{shape.name} pilot"), why)
        waiting[shape.name] = why
        return room

    def pilot_job(self, shape: PilotShape, tokens: list[str]) -> PilotJob:
        """What the pilots of `shape` run, one per token: the pilot carried in the job (no
        worker node reads the factory's workdir) or, where the site's `shared_filesystem` says
        they do, the workdir's; its arguments, its environment."""
        site = self.site
        arguments = ["--matchmaker", self.config.matchmaker, "--site", self.name,
                     # What the batch system grants; the pilot keeps its own safety margin.
                     "--lifetime", str(self.plugin.walltime_request(shape)),
                     "--idle-timeout", str(site.idle_timeout)]
        if site.scratch:
            arguments += ["--scratch", site.scratch]
        for key, value in sorted(site.system.items()):
            arguments += ["--system", f"{key}={value}"]
        env = {**site.environment, "FLOE_SITE": self.name}
        if site.proxy:
            env.update(https_proxy=site.proxy, http_proxy=site.proxy)
        cacert = Path(self.config.cacert).read_bytes() if self.config.cacert else b""
        if site.shared_filesystem:
            return PilotJob(b"", arguments, tokens, env, python=site.python, cacert=cacert,
                            bundle_path=str(self.bundle.resolve()))
        return PilotJob(self.bundle.read_bytes(), arguments, tokens, env, python=site.python,
                        cacert=cacert)

    def _remove_queued(self, shape: str, count: int) -> None:
        try:
            infos = self.plugin.status()
        except BatchError as exc:
            log.warning("site %s: cannot remove surplus pilots: %s", self.name, exc)
            return
        queued = sorted((p for p in self.pilots.values() if p.shape == shape and (
            p.batch_id in infos and infos[p.batch_id].state is PilotState.QUEUED)),
            key=lambda p: p.submitted, reverse=True)[:count]
        removed = self._remove([p.batch_id for p in queued])
        for batch_id in removed:
            self.pilots.pop(batch_id, None)
        self.counters.removed += len(removed)
        if removed:
            log.info("site %s: removed %s that %s no work", self.name,
                     counted(len(removed), f"queued {shape} pilot"),
                     "has" if len(removed) == 1 else "have")

    def _remove_queued_too_long(self, infos: Mapping[str, Any], now: float) -> None:
        """Remove the pilots that have waited in the queue longer than `queue_allowance`."""
        allowance = self.site.queue_allowance
        stale = sorted(batch_id for batch_id, pilot in self.pilots.items()
                       if now - pilot.submitted > allowance and batch_id in infos
                       and infos[batch_id].state is PilotState.QUEUED)
        if not stale:
            return
        try:
            removed = self.plugin.remove(stale)
        except BatchError as exc:
            log.warning("site %s: removing pilots queued longer than queue_allowance failed "
                        "(tried again next cycle): %s", self.name, exc)
            return
        for batch_id in removed:
            log.warning("site %s: removed pilot %s: it has waited %.0f s in the queue, longer "
                        "than queue_allowance (%d s), so its pilot token could expire before "
                        "its walltime ends", self.name, batch_id,
                        now - self.pilots[batch_id].submitted, allowance)
            del self.pilots[batch_id]
        self.counters.queued_too_long += len(removed)

    def _remove(self, batch_ids: list[str]) -> list[str]:
        try:
            return self.plugin.remove(batch_ids)
        except BatchError as exc:
            log.warning("site %s: removing pilots failed: %s", self.name, exc)
            return []

    def _remove_orphans(self) -> None:
        try:
            orphans = self.plugin.remove_orphans(set(self.pilots))
        except BatchError as exc:
            log.warning("site %s: cannot remove orphan pilots: %s", self.name, exc)
            return
        self._orphans_checked = True
        if orphans:
            self.counters.orphans_removed += len(orphans)
            log.warning("site %s: removed %s tagged as this factory's that it did not track: "
                        "%s", self.name, counted(len(orphans), "pilot"), ", ".join(orphans))

    # ------------------------------------------------------------------ stopping

    def stop(self) -> None:
        """What `on_stop` says: remove queued pilots, all of them, or none; then withdraw what
        this factory said it had queued, and close the connection to the login node, if any."""
        try:
            self._stop()
        finally:
            self.end_cycles()

    def end_cycles(self) -> None:
        """No cycle follows (the factory stops, or `--once` ends): withdraw what this factory
        said it had queued, so that the other factories' demand no longer waits for those
        pilots, and close the connection to the login node, if any."""
        try:
            withdrawn = self.client.withdraw()
            if withdrawn:
                log.info("site %s: withdrew the %s this factory said it had queued", self.name,
                         counted(withdrawn, "pilot"))
        except MatchmakerError as exc:
            log.warning("site %s: could not withdraw the pilots this factory said it had "
                        "queued (they lapse after %d minutes): %s", self.name,
                        QUEUED_TTL // 60, exc)
        finally:
            self.plugin.close()

    def _stop(self) -> None:
        policy = self.site.on_stop
        if policy == "keep" or not self.pilots:
            if self.pilots:
                log.info("site %s: %s left to run out (on_stop keep)", self.name,
                         counted(len(self.pilots), "pilot"))
            self._save(self.clock())
            return
        try:
            infos = self.plugin.status()
        except BatchError as exc:
            log.warning("site %s: cannot see the pilots to remove on stop: %s", self.name, exc)
            return
        doomed = [batch_id for batch_id in self.pilots if batch_id in infos and (
            policy == "remove-all" or infos[batch_id].state is not PilotState.RUNNING)]
        removed = self._remove(doomed)
        for batch_id in removed:
            self.pilots.pop(batch_id, None)
        self.counters.removed += len(removed)
        log.info("site %s: removed %s on stop (on_stop %s), %d left to run out",
                 self.name, counted(len(removed), "pilot"), policy, len(self.pilots))
        self._save(self.clock())

    # ------------------------------------------------------------------ state on disk

    def _load(self) -> None:
        path = self.workdir / "pilots.json"
        try:
            saved = json.loads(path.read_text())
            self.pilots = {p["batch_id"]: Tracked(**p) for p in saved["pilots"]}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("site %s: ignoring unreadable %s (%s): its pilots become orphans",
                        self.name, path, exc)

    def status(self, now: float) -> dict[str, Any]:
        """The site as the factory sees it, for status.json and the logs."""
        by_shape: dict[str, int] = {}
        for pilot in self.pilots.values():
            by_shape[pilot.shape] = by_shape.get(pilot.shape, 0) + 1
        ssh = self.plugin.host.where if isinstance(self.plugin.host, SshHost) else None
        return {"site": self.name, "plugin": self.site.plugin, "time": now,
                **({"ssh": ssh} if ssh else {}),
                "tracked": len(self.pilots), "tracked_by_shape": by_shape,
                "health": self.health.to_dict(now), "counters": asdict(self.counters),
                "held_shapes": self.holds.to_dict(now),
                **self.last}

    def _save(self, now: float) -> None:
        private_dir(self.config.workdir)
        private_dir(self.workdir)
        write_atomic(self.workdir / "pilots.json",
                     {"pilots": [asdict(p) for p in self.pilots.values()]})
        write_atomic(self.workdir / "status.json", self.status(now))


def build_plugin(config: FactoryConfig, site: SiteConfig
                 ) -> tuple[list[PilotShape], BatchPlugin]:
    """The pilot shapes and the batch plugin of one site; PluginConfigError when they cannot
    work."""
    shapes = [PilotShape(name=s.name, cpus=s.cpus, memory=s.memory, disk=s.disk,
                         gpus=s.gpus, walltime=s.walltime,
                         directives=tuple(s.directives)) for s in site.shapes]
    plugin = create_plugin(site.plugin, PluginSettings(
        factory_id=plugin_factory_id(config.factory_id, site.name),
        workdir=config.workdir / site.name, memory_headroom=site.memory_headroom,
        memory_headroom_min=site.memory_headroom_min,
        walltime_overhead=site.walltime_overhead, command_timeout=site.command_timeout,
        commands_dir=Path(site.commands_dir) if site.commands_dir else None,
        options=site.options, ssh=ssh_settings(site)))
    return shapes, plugin


def ssh_settings(site: SiteConfig) -> SshSettings | None:
    """The login node of a site that submits over ssh; None for one that submits here."""
    ssh = site.ssh
    if not ssh.get("host"):
        return None
    return SshSettings(host=ssh["host"], port=ssh["port"], identity=ssh["identity"],
                       known_hosts=ssh["known_hosts"], workdir=ssh["workdir"],
                       options=tuple(ssh["options"]),
                       connect_timeout=max(1, min(30, site.command_timeout // 2)))


def plugin_factory_id(factory_id: str, site: str) -> str:
    """The id that tags this site's jobs: the factory's and the site's, in job-name letters."""
    full = f"{factory_id}.{re.sub(r'[^A-Za-z0-9_]', '_', site)}"
    if len(full) <= 40:
        return full
    return f"{full[:33]}.{hashlib.sha256(full.encode()).hexdigest()[:6]}"


def private_dir(path: Path) -> Path:
    """`path`, made if missing and readable by this account only: the factory's workdir holds
    pilot scripts, each with a token, and no worker node needs to read it."""
    make_private(path)  # its missing parents too
    path.chmod(0o700)
    return path


def write_atomic(path: Path, document: Any) -> None:
    """Write JSON so that a reader (or a crash) never sees half a file."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=1)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
