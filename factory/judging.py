"""How a site's factory judges its pilots: which ended, which registered with the matchmaker, and
what that says of the site and of each shape.

A pilot that registered proves the site works; one that ended without registering is a failure
of the site (see `factory.health`). A registered pilot that found less than its shape promised,
or pilots of a shape that keep ending without a task while the work counted for the shape waits,
hold the shape back (see `factory.holds`). These are the methods of `SiteRunner` that do it,
kept here as a mixin: they read and change its state (`pilots`, `counters`, `holds`, `health`)
and report through its `_works` and `_failure`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from floe.config.protocol import MAX_BATCH_IDS
from floe.config.schema import counted
from floe.factory.holds import describe, likely_fix
from floe.plugins import PilotState

log = logging.getLogger("floe.factory")

EMPTY_IN_A_ROW = 3
"""Pilots of a shape that end without a task, in a row, while work counted for it waits, before
the shape is held back (fewer are the ordinary race of pilots for the last tasks)."""


@dataclass
class Tracked:
    """A pilot this factory submitted and has not seen end."""

    batch_id: str
    shape: str
    submitted: float
    started: float | None = None
    proven: bool = False      # lived past min_pilot_life while the matchmaker could not say
    registered: bool = False  # the matchmaker said it registered: the site works


@dataclass
class Ended:
    """A pilot seen ending this cycle, judged once the matchmaker has said whether it
    registered."""

    pilot: Tracked
    life: float  # seconds from its start to its end (as far as the factory saw them)


class Judging:
    """`SiteRunner`'s judging of its pilots (a mixin: the state is the runner's)."""

    def _follow(self, infos: Mapping[str, Any], now: float) -> list[Ended]:
        """Update the tracked pilots from the batch system's view; returns those that ended,
        no longer tracked, for `_judge`."""
        grace = max(2 * self.site.cycle, 60)
        ended_pilots: list[Ended] = []
        for batch_id, pilot in list(self.pilots.items()):
            info = infos.get(batch_id)
            if info is not None and info.state is PilotState.RUNNING:
                pilot.started = pilot.started or info.started or now
                continue
            if info is not None and info.state is PilotState.HELD:
                if batch_id not in self._held:
                    self._held.add(batch_id)
                    self.counters.held += 1
                    self._failure(now, f"pilot {batch_id} is held by the batch system "
                                       f"({info.detail or 'held'}); it is removed")
                continue
            ended = info is not None and info.state is PilotState.FINISHED
            # A pilot the batch system no longer lists has ended, unless it is too new to list.
            gone = info is None and now - pilot.submitted > grace
            if not (ended or gone):
                continue
            started = pilot.started or (info.started if info else None)
            life = now - started if started else 0.0
            if info is not None and info.started and info.state is PilotState.FINISHED:
                life = max(life, now - info.started)
            del self.pilots[batch_id]
            self._held.discard(batch_id)
            self.counters.ended += 1
            ended_pilots.append(Ended(pilot, life))
        return ended_pilots

    def _unregistered(self, ended: list[Ended]) -> list[str]:
        """The batch ids to ask the matchmaker about: the pilots that ended this cycle, then the
        running ones, whose registration it has not seen; as many as one request takes."""
        ids = [e.pilot.batch_id for e in ended if not e.pilot.registered]
        ids += [p.batch_id for p in sorted(self.pilots.values(), key=lambda p: p.submitted)
                if not p.registered and p.started is not None]
        return ids[:MAX_BATCH_IDS]

    def _judge(self, ended: list[Ended], asked: Collection[str],
               registered: Collection[str] | None, now: float,
               suspect: Collection[str] = ()) -> None:
        """Apply what the matchmaker said about the `asked` pilots (`registered`: those that
        registered; None when it could not say): a pilot that registered proves the site
        works, one that ended without registering is a failure. A pilot it could not say
        about is judged by its life: one that has run `min_pilot_life` proves the site, one
        that ended sooner is a failure. A `suspect` pilot (registered on a host the matchmaker
        keeps out as a black hole) proves nothing and is no failure."""
        min_life = self.site.min_pilot_life
        logs = self.plugin.logs_where()
        answered = set(asked) if registered is not None else set()
        for batch_id in set(suspect) & answered:
            log.warning("site %s: pilot %s registered on a black-hole host: no proof that the "
                        "site works", self.name, batch_id)
        seen = set(registered or ()) - set(suspect)
        for pilot in self.pilots.values():
            if pilot.registered or pilot.started is None:
                continue
            if registered is None:
                if not pilot.proven and now - pilot.started >= min_life:
                    pilot.proven = True
                    self._works(f"pilot {pilot.batch_id} has run {now - pilot.started:.0f} s")
            elif pilot.batch_id in seen:
                pilot.registered = True
                self._works(f"pilot {pilot.batch_id} registered with the matchmaker")
        for end in ended:
            pilot = end.pilot
            if pilot.registered or pilot.batch_id in suspect:
                continue
            if pilot.batch_id in answered:
                if pilot.batch_id in seen:
                    self._works(f"pilot {pilot.batch_id} registered with the matchmaker")
                else:
                    self.counters.ended_unregistered += 1
                    self._failure(now, f"pilot {pilot.batch_id} ended without registering with "
                                       f"the matchmaker at {self.config.matchmaker} ({end.life:.0f}"
                                       f" s after it started): {self._why(pilot, logs)}")
            elif not pilot.proven and end.life < min_life:
                self.counters.died_at_start += 1
                self._failure(now, f"pilot {pilot.batch_id} ended {end.life:.0f} s after it "
                                   f"started (min_pilot_life {min_life} s): "
                                   f"{self._why(pilot, logs)}")

    def _keep_off(self, black_holes: list[Mapping[str, Any]]) -> None:
        """Keep new pilots off the hosts the matchmaker keeps out (where the batch system can),
        saying so when that set changes."""
        hosts = sorted({str(hole.get("host", "")) for hole in black_holes} - {""})
        if hosts == self.last.get("black_holes", []):
            return
        if hosts:
            self.last["black_holes"] = hosts
        else:
            self.last.pop("black_holes", None)
        if not hosts:
            log.info("site %s: no host is kept out as a black hole any more", self.name)
        elif self.plugin.keeps_off_hosts:
            log.warning("site %s: new pilots are kept off %s: the matchmaker gives them no "
                        "work (black holes)", self.name, ", ".join(hosts))
        else:
            log.warning("site %s: the matchmaker gives %s no work (black holes); the %s "
                        "plugin cannot keep new pilots off hosts, so pilots landing there "
                        "leave when idle", self.name, ", ".join(hosts), self.plugin.system)
        self.plugin.avoid(hosts if self.plugin.keeps_off_hosts else ())

    def _findings(self, registered: Collection[str], short: Mapping[str, list],
                  ended: list[Ended], now: float) -> None:
        """Hold back a shape whose newly registered pilot found less than the shape promises
        (see holds.py); release one whose pilot found all of it."""
        shapes = {p.batch_id: p.shape for p in self.pilots.values()}
        shapes.update((e.pilot.batch_id, e.pilot.shape) for e in ended)
        for batch_id in registered:
            shape = shapes.get(batch_id)
            if shape is None:
                continue
            findings = short.get(batch_id)
            if findings:
                self._short_pilots.add(batch_id)  # its ending empty says nothing more
            if not findings:
                if self.holds.release(shape):
                    log.warning("site %s: pilot %s found all that the %s shape promises; its "
                                "pilots are submitted again", self.name, batch_id, shape)
                continue
            fixes = dict.fromkeys(likely_fix(f.get("resource", "?"), self.site.plugin)
                                  for f in findings)
            why = (f"pilot {batch_id} found less than the {shape} shape promises: "
                   f"{'; '.join(describe(f) for f in findings)}. Likely: {'; '.join(fixes)}")
            hold = self.holds.hold(shape, why, now)
            if hold is not None:
                log.warning("site %s: %s. No %s pilot is submitted for %.0f s, then one to try "
                            "again (at once when the site's config changes)", self.name, why,
                            shape, hold.wait)

    def _empties(self, ended: Mapping[str, Tracked], empty: Collection[str],
                 registered: Collection[str], demand: Mapping[str, Any], now: float) -> None:
        """Hold back a shape whose pilots keep ending without a task while the work the demand
        counts for the shape still waits (EMPTY_IN_A_ROW of them); a pilot of it that ran a
        task ends that."""
        registered = set(registered)
        for batch_id, pilot in ended.items():
            shape = pilot.shape
            if batch_id in self._short_pilots:
                self._short_pilots.discard(batch_id)
                continue  # it could not take the shape's work: said, and held, already
            if batch_id not in empty:
                if pilot.registered or batch_id in registered:  # it ran a task
                    self._empty_row.pop(shape, None)
                    if self.holds.release(shape, "empty"):
                        log.warning("site %s: pilot %s of the %s shape ran tasks; its pilots "
                                    "are submitted again", self.name, batch_id, shape)
                continue
            waiting = demand.get(shape, {}).get("tasks", 0)
            if not waiting:
                continue  # the work went elsewhere, or there was none: nothing is wrong
            row = self._empty_row[shape] = self._empty_row.get(shape, 0) + 1
            if row < EMPTY_IN_A_ROW:
                continue
            # Named only where the plugin cannot keep new pilots off them: elsewhere the empty
            # pilots ran on other hosts, and the cause is another.
            holes = [] if self.plugin.keeps_off_hosts else self.last.get("black_holes") or []
            why = (f"{row} {shape} pilots in a row ended without a task while "
                   f"{counted(waiting, 'ready task')} that the demand counts for the shape "
                   + (f"waited: the matchmaker gives no work to {', '.join(holes)} (kept out "
                      "as black holes for now, where tasks failed one after another), and its "
                      "pilots may have landed there (a pilot's log ends with the matchmaker's "
                      "reason)" if holes else
                      "waited: the tasks may need what its pilots do not offer (an OS, an "
                      "architecture or a site that the shape names but its nodes do not have, "
                      "or a GPU memory, model or compute capability the shape does not "
                      "describe: a pilot's log ends with the matchmaker's reason)"))
            hold = self.holds.hold(shape, why, now, kind="empty")
            if hold is not None:
                log.warning("site %s: %s. No %s pilot is submitted for %.0f s, then one to try "
                            "again (at once when the site's config changes)", self.name, why,
                            shape, hold.wait)

    def _why(self, pilot: Tracked, logs: str) -> str:
        """What a pilot that ended too soon last said, where its log can be read here."""
        said = self.plugin.last_words(pilot.batch_id)
        return f"its log ends: {said}" if said else f"see its log under {logs}"

    def _lost(self, batch_ids: list[str]) -> None:
        """Note the pilots the matchmaker ended as lost on this factory's word."""
        if not batch_ids:
            return
        self.counters.lost += len(batch_ids)
        shown = ", ".join(batch_ids[:10]) + (", ..." if len(batch_ids) > 10 else "")
        log.warning("site %s: %s ended without signing off with the matchmaker (%s: killed, "
                    "its node lost, or the matchmaker unreachable as it left); what they still "
                    "ran is requeued. See their logs under %s",
                    self.name, counted(len(batch_ids), "pilot"),
                    f"batch id{'' if len(batch_ids) == 1 else 's'} {shown}",
                    self.plugin.logs_where())
