"""The online pilot: register, ask for what fits the free part of the slot, run, report, leave.

One thread (the one that calls `Pilot.run`) speaks to the matchmaker and decides; tasks run in
lanes (`pilot.lanes`), reports wait in the outbox until they are delivered (`pilot.reports`),
and when to ask and for how much is a pure policy (`pilot.asking`). Each turn of the loop:

1. drain, once, if a signal asked for it: stop asking, stop every running task and give back
   every queued one (reported pilot_lost and not_run, so the matchmaker requeues them at once
   without counting a failure);
2. collect finished tasks and ended lanes: release their claims, update the black-hole streak;
3. deliver the reports that wait, together in one request, carrying the ask for more work when
   asking is due;
4. send one heartbeat for every attempt held (running, queued, or ended with its report not yet
   delivered), once per interval (`pilot.heartbeat`); an answer that an attempt is void kills
   it (or drops it, if queued), and its result is dropped;
5. register, or ask when it is time (and no report asked already); start what fits;
6. leave when asking has stopped (idle, out of time, drained, suspect node, token refused),
   nothing runs or waits and every report is delivered (or the patience for that is spent);
7. sleep until the next thing is due or a lane or a signal wakes it.

While the matchmaker is unreachable, tasks keep running and their reports wait on disk. A
guardian process (`pilot.guardian`) watches the running modules, so that a pilot killed outright
does not leave its tasks running.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import signal
import statistics
import threading
import time
from collections.abc import Mapping
from typing import Any, Callable

from floe.config.resources import format_duration
from floe.config.states import ErrorClass
from floe.pilot import asking
from floe.pilot.backoff import Backoff, jittered
from floe.pilot.claims import Claims
from floe.pilot.client import Ask, Matchmaker, Reply, Unreachable
from floe.pilot.gpus import GpuSource
from floe.pilot.guardian import Guardian
from floe.pilot.heartbeat import Heartbeat
from floe.pilot.lanes import Attempt, Finished, Lanes, Wakeup, attempt_of
from floe.pilot.outbox import Outbox
from floe.pilot.reports import MAX_BATCH, AskPlan, Reports, lost_report
from floe.pilot.settings import EXIT_ERROR, EXIT_OK, EXIT_SUSPECT, PilotSettings, Stop
from floe.pilot.slot import MeasuredSlot
from floe.pilot.streak import FailureStreak
from floe.pilot.supervisor import Supervisor
from floe.pilot.workarea import WorkArea

log = logging.getLogger("floe.pilot")

QUICK_TIMEOUT = 2.0
"""Seconds each request may take while draining: the batch system kills soon after a SIGTERM."""
MAX_SLEEP = 60.0
RECENT_TASKS = 20
"""How many of the last tasks' wall times say whether tasks are short."""
MIN_SERIES_SECONDS, MAX_SERIES_SECONDS = 0.001, 86400
"""The range of `series_seconds` that an ask may carry (the matchmaker's schema)."""
GIVE_BACK_AFTER = 5
"""Prefetch horizons that the tasks running must all have run before what is queued behind
them is given back: the queue holds about one horizon of short tasks, and a few horizons' wait
is cheaper than giving back (and recording) a queue for every task that runs a little long."""
_NOT_RECORDED = (ErrorClass.PILOT_LOST, ErrorClass.RESET, ErrorClass.NOT_RUN)
"""Ends that say nothing of how long a task takes: the pilot stopped it."""


class Pilot:
    """One pilot in one slot. `run()` blocks until the pilot leaves and returns its exit status.

    `drain()` may be called from any thread or a signal handler; `run()` installs it for
    SIGTERM and SIGINT when it runs in the main thread.
    """

    def __init__(self, client: Matchmaker, slot: MeasuredSlot, work: WorkArea,
                 settings: PilotSettings | None = None, *, gpu_source: GpuSource | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.slot = slot
        self.work = work
        self.outbox: Outbox = work.outbox or work.open()
        self.settings = settings or PilotSettings()
        if self.settings.runner.environ is None:
            # One copy of the pilot's environment for every task, instead of os.environ's
            # decoding of every variable for every module.
            self.settings = dataclasses.replace(self.settings, runner=dataclasses.replace(
                self.settings.runner, environ=dict(os.environ)))
        self.clock = clock
        self.claims = Claims(slot)
        self.streak = FailureStreak(self.settings.max_failures)
        self._wake = Wakeup()
        self.lanes = Lanes(work, self.claims, self.outbox, self._wake, self.settings.runner,
                           Supervisor(memory=slot.memory, disk=slot.disk,
                                      walltime_grace=self.settings.walltime_grace),
                           gpu_source, clock, slot.seconds_left)
        self.reports = Reports(self.outbox, client, clock, self.settings.max_backoff)
        self.pilot_id: int | None = None
        self.heartbeat = Heartbeat(client)
        self.counts: collections.Counter[str] = collections.Counter()
        self.stop: Stop | None = None
        self._durations: collections.deque[float] = collections.deque(maxlen=RECENT_TASKS)
        self._drain_asked: str | None = None
        self._drain_started: float | None = None
        self._started = clock()
        self._unregistered_since = self._started
        self._last_busy = self._started
        self._asked_since_busy = False  # an idle pilot leaves only after asking at least once
        self._next_ask = 0.0
        self._next_register = 0.0
        self._ask_backoff = Backoff(cap=self.settings.max_backoff)
        self._register_backoff = Backoff(cap=self.settings.max_backoff)
        self._token_refused = False
        self._hold_asks = 0  # the longest the matchmaker holds an ask (its registration says)
        self._series_seconds = False  # the matchmaker takes an ask's series_seconds (the same)
        self._hold_limit = asking.HoldLimit()  # what cuts held asks short (a proxy) taught
        self._idle_reason = ""  # why the matchmaker last said nothing fits (said on leaving)
        self._asking = False
        self._dry = False  # the last ask in series said nothing more fits: wait for a task

    @property
    def timings(self) -> collections.deque:
        """Each delivered attempt's timing (`pilot.reports.Timing`)."""
        return self.reports.timings

    # ------------------------------------------------------------ control

    def drain(self, why: str = "asked to stop") -> None:
        """Stop asking, stop the running tasks (reported pilot_lost) and give back the queued
        ones (not_run), deliver, leave."""
        self._drain_asked = why
        self._wake.notify()
        if self._asking:  # a held ask would keep the loop from draining until it is answered
            self.client.interrupt()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.drain(f"{signal.Signals(signum).name} received")

    def run(self) -> int:
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            self.lanes.guardian = self._start_guardian()
            self.reports.load_earlier()
            while True:
                now = self.clock()
                if self._drain_asked and self._drain_started is None:
                    self._start_drain(now)
                self._collect(now)
                self._unqueue_behind_long()
                self._deliver(now)
                self._send_heartbeats(now)
                if self.stop is None:
                    self._register_or_ask(now)
                self._pack()
                if self._over(self.clock()):
                    break
                self._wake.wait(self._sleep(self.clock()))
            return self._leave()
        finally:
            self._abandon_running()
            if self.lanes.guardian is not None:
                self.lanes.guardian.close()
                self.lanes.guardian = None
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.lanes.close()
            self._wake.close()
            self.client.close()

    def _start_guardian(self) -> Guardian | None:
        """The guardian that ends the tasks' trees if this pilot is killed (see
        `pilot.guardian`); None, with a warning, where it cannot start."""
        try:
            guardian = Guardian.start(self.work.run_dir, self.settings.runner.kill_grace)
        except OSError as err:
            log.warning("no guardian (%s): if the pilot is killed, its tasks' processes will "
                        "outlive it", err.strerror or err)
            return None
        log.debug("guardian started (pid %s)", guardian.process.pid)
        return guardian

    def _abandon_running(self) -> None:
        """Only when the loop itself failed: stop the tasks rather than leave them orphaned;
        their reports stay in the outbox for the next pilot on this scratch."""
        for done in self.lanes.abandon("the pilot failed while running it"):
            self.reports.add(done)
        self.reports.keep()

    def _stop_asking(self, reason: str, message: str, exit_code: int = EXIT_OK) -> None:
        if self.stop is None:
            self.stop = Stop(reason, message, exit_code, self.clock())
            log.info("no more asking for work: %s: %s", reason, message)

    def _start_drain(self, now: float) -> None:
        self._drain_started = now
        why = self._drain_asked or "asked to stop"
        self._stop_asking("drained", why)
        self.client.timeout = min(self.client.timeout, QUICK_TIMEOUT)
        queued, running = self.lanes.stop()
        for attempt in running:
            attempt.run.stop(ErrorClass.PILOT_LOST, f"the pilot was stopped ({why}) while "
                                                    "running it")
        for attempt in queued:
            self._give_back(attempt, f"the pilot was stopped ({why}) before it ran it",
                            ErrorClass.NOT_RUN)
        if running or queued:
            log.info("%s: stopping %d running tasks, giving back %d queued", why, len(running),
                     len(queued))

    def _over(self, now: float) -> bool:
        if self.stop is None or self.lanes.busy or self.lanes.finished or self.reports.unkept:
            return False
        if not self.reports.pending:
            return True
        if self._drain_started is not None:
            return now >= self._drain_started + self.settings.drain_patience
        return now >= self.stop.since + self.settings.delivery_patience

    def _sleep(self, now: float) -> float:
        due = [now + MAX_SLEEP]
        if self._drain_started is None and (self.lanes.held or self._keeping_alive()):
            due.append(self.heartbeat.due)
        if self.reports.pending:
            due.append(self.reports.deliver_after)
        if self.reports.unkept:
            due.append(self.reports.unkept[0].at + self.settings.report_linger if self._short()
                       else now)
        wants = None
        if self.stop is None:
            wants = self._wants()
            if self.pilot_id is None:
                due.append(self._next_register)
            elif wants:
                due.append(max(self._next_ask, self.lanes.ask_after() or 0.0))
            if not self.lanes.busy and self._asked_since_busy:
                due.append(self._last_busy + self.settings.idle_timeout)
        elif self.reports.pending and not self.lanes.running:
            due.append(self.stop.since + self.settings.delivery_patience)
        if self._drain_started is not None:
            due.append(self._drain_started + self.settings.drain_patience)
        if self.lanes.queue:  # when a running task becomes long, for `_unqueue_behind_long`
            horizon = GIVE_BACK_AFTER * self.settings.prefetch_horizon
            due.extend(now + horizon - ran + 0.01 for ran in self.lanes.running_for()
                       if ran <= horizon)
        # What the lanes should wake the loop for while it sleeps: a finished task when its
        # report is to go at once, and a queue run down to where more is asked for.
        series = self._series_size()
        if self.lanes.wake_for(on_finish=not self.reports.unkept or series <= 1,
                               below=series // 2 if wants == asking.SERIES else -1):
            return 0.0
        return min(due) - now

    # ------------------------------------------------------------ asking

    def _series_size(self) -> int:
        return asking.series_size(self._durations, self.settings.prefetch_horizon)

    def _short(self) -> bool:
        return self._series_size() > 1

    def _situation(self, now: float) -> asking.Situation:
        seconds = self.slot.seconds_left()
        long = self.lanes.long_claims(self.settings.prefetch_horizon)
        queued_seconds = self.lanes.queued_seconds()
        return asking.Situation(
            now=now, seconds_left=seconds, idle=not self.lanes.busy,
            asked_since_busy=self._asked_since_busy, last_busy=self._last_busy,
            next_ask=self._next_ask, series_size=self._series_size(),
            queued=len(self.lanes.queue), queued_seconds=queued_seconds,
            # Estimates that fill a horizon come from a matchmaker that takes series_seconds;
            # an older one's are the walltimes: the queue is then counted in tasks alone.
            horizon=self.settings.prefetch_horizon if self._series_seconds else math.inf,
            time_after_queue=int(seconds - queued_seconds),
            can_offer_series=self.claims.can_offer(long),
            can_offer_side=self.claims.can_offer(), free_cpus=self.claims.free().cpus,
            dry=self._dry and self.lanes.busy and not long)

    def _wants(self) -> str | None:
        """What kind of work the pilot would take now (see `asking.wants`)."""
        if self.stop is not None or self.pilot_id is None:
            return None
        return asking.wants(self._situation(self.clock()))

    def _ask_plan(self, now: float) -> AskPlan | None:
        """The ask to make when it is time to ask for work (registered, still asking, room for
        more), with the seconds left in the slot; else None. Stops asking when it is time."""
        if self.stop is not None or self.pilot_id is None:
            return None
        situation = self._situation(now)
        decision = asking.decide(situation, asking.Limits(self.settings.min_seconds,
                                                          self.settings.idle_timeout))
        if decision.stop is not None:
            self._stop_asking(decision.stop, self._why_stop(decision.stop, situation),
                              EXIT_ERROR if decision.stop == "empty slot" else EXIT_OK)
            return None
        if decision.kind == asking.SERIES:
            # The queued tasks run first: what is asked for must fit in the time after them.
            horizon = self.settings.prefetch_horizon
            offer = dataclasses.replace(self.claims.offer(held=self.lanes.long_claims(horizon)),
                                        seconds=situation.time_after_queue)
            return Ask(offer, decision.count, in_series=True,
                       series_seconds=min(max(horizon, MIN_SERIES_SECONDS),
                                          MAX_SERIES_SECONDS)
                       if self._series_seconds else None), situation.seconds_left
        if decision.kind == asking.SIDE:
            return Ask(self.claims.offer(), decision.count, in_series=False), \
                situation.seconds_left
        return None

    def _why_stop(self, reason: str, situation: asking.Situation) -> str:
        if reason == "lifetime":
            return f"{situation.seconds_left}s left in the slot, too little for a task"
        if reason == "idle":
            said = f"; the matchmaker said: {self._idle_reason}" if self._idle_reason else ""
            return f"no work for {format_duration(self.settings.idle_timeout)}{said}"
        free = self.claims.free()
        return (f"the slot offers nothing a task could use ({free.cpus} CPUs, {free.memory} "
                f"bytes of memory, {free.disk} bytes of disk); see floe pilot --probe")

    def _register_or_ask(self, now: float) -> None:
        if self.pilot_id is None:
            if now >= self._next_register:
                self._register(now)
            return
        after = self.lanes.ask_after()
        if after is not None and now < after:
            return  # the attempts just handed out start first
        plan = self._ask_plan(now)
        if plan is None:
            return
        ask, seconds = plan
        asked = self.clock()
        self._asked_since_busy = True
        hold = self._hold_limit.asking(self._hold_for(now))
        if hold:
            ask = dataclasses.replace(ask, hold=hold)
        self._asking = True
        try:
            reply = self.client.ask(self.pilot_id, ask)
        except Unreachable as err:
            if self._drain_asked is not None:
                return  # the held ask was ended to drain
            said = self._hold_limit.cut(hold, self.clock() - asked, err)
            if said is not None:
                if said:
                    log.warning("%s", said)
                self._next_ask = self.clock()
                return
            delay = self._ask_backoff.next()
            self._next_ask = now + delay
            log.warning("%s; asking again in %.1fs", err, delay)
            return
        finally:
            self._asking = False
        self._ask_backoff.reset()
        if said := self._hold_limit.answered(hold, self.clock() - asked):
            log.info("%s", said)
        self._answered(reply, self.clock() if hold else now, asked, ask, seconds)

    def _hold_for(self, now: float) -> int:
        """Seconds the matchmaker may hold this ask: while the pilot runs and delivers nothing,
        up to the server's `hold_asks` and the end of its idle time (its asks keep it alive
        meanwhile: `Heartbeat.heard`)."""
        if not self._hold_asks or self.lanes.busy or self.reports.pending \
                or self.reports.unkept or self._drain_asked is not None:
            return 0
        return max(0, int(min(self._hold_asks,
                              self._last_busy + self.settings.idle_timeout - now)))

    def _answered(self, reply: Reply, now: float, asked: float, ask: Ask, seconds: int) -> None:
        """Act on the answer to an ask (its own, or the one riding on reports)."""
        if reply.ok:
            if ask.hold:
                self.heartbeat.heard(asked)
            attempts = reply.data.get("attempts") or []
            if attempts:
                self._last_busy = now
                self._asked_since_busy = False
                self._next_ask = now
                # Nothing more fits (fewer than asked for in series): an ask of its own would
                # find nothing while these run, and hold up the report of one that ends. The
                # next ask waits for a task to end, and rides on its report (`_collect`).
                self._dry = ask.in_series and reply.data.get("more") is False
                for answer in attempts:  # a held ask's wait for work is no overhead
                    self._take(answer, now if ask.hold else asked, ask.in_series)
                return
            if ask.in_series and self.lanes.busy:
                self._dry = True  # the same: ready tasks elsewhere did not fit this slot
            self._no_work(now, reply.data, seconds, held=ask.hold > 0)
        elif reply.status == 401:
            self._token_refused = True
            self._stop_asking("token expired", reply.error)
        elif reply.status == 404:
            self._stop_asking("ended", f"the matchmaker ended pilot {self.pilot_id}: "
                                       f"{reply.error}")
        else:
            self._stop_asking("error", f"the matchmaker refused to match: {reply.error}",
                              EXIT_ERROR)

    def _no_work(self, now: float, answer: Mapping[str, Any], seconds: int,
                 held: bool = False) -> None:
        if answer.get("reason"):
            self._idle_reason = str(answer["reason"])
        shortest = answer.get("shortest_walltime")
        if shortest is not None and seconds < shortest:
            self._stop_asking("lifetime", f"{format_duration(seconds)} left, and the shortest "
                                          f"ready task needs {format_duration(shortest)}")
            return
        if not held and self._hold_for(now):
            self._next_ask = now  # an ask that the matchmaker holds until there is work
            return
        wait = answer.get("wait")
        wait = 30.0 if wait is None else float(wait)
        self._next_ask = now + jittered(wait)
        log.debug("no work: %s; asking again in about %ss", answer.get("reason"), wait)

    def _register(self, now: float) -> None:
        slot = self.slot
        try:
            reply = self.client.register(host=slot.host, batch_system=slot.batch_system,
                                         batch_id=slot.batch_job_id,
                                         version=self.settings.version,
                                         resources=slot.to_dict())
        except Unreachable as err:
            if now - self._unregistered_since >= self.settings.idle_timeout:
                self._stop_asking("unreachable", str(err), EXIT_ERROR)
                return
            delay = self._register_backoff.next()
            self._next_register = now + delay
            log.warning("%s; registering again in %.1fs", err, delay)
            return
        if not reply.ok:
            if reply.status == 401:
                self._token_refused = True
            self._stop_asking("refused", f"the matchmaker refused to register the pilot: "
                                         f"{reply.error}", EXIT_ERROR)
            return
        self.pilot_id = int(reply.data["pilot_id"])
        self._hold_asks = int(reply.data.get("hold_asks") or 0)
        self._series_seconds = reply.data.get("series_seconds") is True
        self.heartbeat.set_interval(reply.data.get("heartbeat_interval"))
        self.heartbeat.due = now + self.heartbeat.interval
        kept = reply.data.get("tail_bytes")
        if isinstance(kept, int) and 0 < kept < self.settings.runner.tail_bytes:
            # Tails longer than the server keeps would be cut there, and the logs they came
            # from never sent whole.
            self.settings = dataclasses.replace(self.settings, runner=dataclasses.replace(
                self.settings.runner, tail_bytes=kept))
            self.lanes.settings = self.settings.runner
        self._last_busy = now
        self._asked_since_busy = False
        self._next_ask = now
        left = "no end known (no --lifetime, no batch system's limit)" \
            if slot.deadline is None else f"{format_duration(slot.seconds_left())} left"
        log.info("registered as pilot %s at site %s: %d CPUs, %.1f GiB memory, %d GPUs, %s",
                 self.pilot_id, reply.data.get("site"), slot.cpus, slot.memory / 2**30,
                 len(slot.gpus), left)
        for item in slot.short:
            log.warning("this slot is short of what its shape promised (the factory is told): "
                        "%s: promised %s, found %s (%s)", item["resource"], item["promised"],
                        item["found"], item["source"])

    # ------------------------------------------------------------ running

    def _take(self, answer: Mapping[str, Any], asked_at: float, in_series: bool) -> Attempt:
        """Hold an attempt the matchmaker handed out (and heartbeat it): queue it to run in
        series, or start it side by side in what is free, or give it back."""
        attempt = self.lanes.hold(attempt_of(answer, asked_at, self.settings.system))
        self.heartbeat.set_interval(answer.get("heartbeat_interval"))
        self.heartbeat.before(asked_at)
        if in_series:
            self.lanes.enqueue(attempt)
        elif self._drain_asked:
            self._give_back(attempt, "the pilot was told to stop as it got it",
                            ErrorClass.NOT_RUN)
        else:
            refused = self.lanes.start(attempt)
            if refused is not None:
                self._give_back(attempt, refused)
        return attempt

    def _pack(self) -> None:
        unfit, late = self.lanes.pack()
        for attempt in unfit:
            needs = attempt.requirements
            self._give_back(attempt, "the task needs more than this pilot's whole slot: "
                                     f"{needs.cpus} CPUs, {needs.memory} bytes of memory, "
                                     f"{needs.disk} bytes of disk, {needs.gpus} GPUs")
        for attempt in late:
            walltime = format_duration(attempt.requirements.walltime)
            left = format_duration(self.slot.seconds_left())
            self._give_back(attempt, f"its walltime of {walltime} no longer fits the {left} "
                                     "left in the slot (the tasks before it ran longer than "
                                     "expected)", ErrorClass.NOT_RUN)

    def _unqueue_behind_long(self) -> None:
        """Give back the queued attempts once the tasks running have all run longer than
        `GIVE_BACK_AFTER` prefetch horizons and leave no room beside them for the first one: the
        queue was made for short tasks, and these may run for hours while another pilot could
        run what waits (or this one, asking again once they end). Given back unstarted, each is
        requeued at once at no cost to its task."""
        if not self.lanes.queue or self._drain_asked is not None:
            return
        horizon = GIVE_BACK_AFTER * self.settings.prefetch_horizon
        long = self.lanes.long_claims(horizon)
        if not long or len(long) < len(self.lanes.running_for()):
            return
        queue = tuple(self.lanes.queue)  # a copy: lanes take from the queue meanwhile
        if not queue or self.claims.free(long).holds(queue[0].requirements):
            return
        queued = self.lanes.unqueue()
        # The recent tasks no longer say that tasks are short: ask side by side until tasks
        # that end say so again, instead of queueing more behind the next long one.
        self._durations.clear()
        why = (f"it waited behind tasks that have run over {horizon:g}s ({GIVE_BACK_AFTER} "
               "prefetch horizons), and went back for another pilot")
        for attempt in queued:
            self._give_back(attempt, why, ErrorClass.NOT_RUN, say=False)
        if queued:
            log.info("gave back %d queued attempts (%s): %s", len(queued),
                     ", ".join(str(a.attempt_id) for a in queued), why)

    def _give_back(self, attempt: Attempt, why: str,
                   error: ErrorClass = ErrorClass.PILOT_LOST, say: bool = True) -> None:
        """Report an attempt the pilot will not run, so that it is requeued at once: as lost, or
        (`NOT_RUN`) as given back unstarted, which costs the task nothing. `say`: log it."""
        if say:
            log.warning("attempt %s (%s): not run: %s", attempt.attempt_id, attempt.label, why)
        self.counts[error.value] += 1
        self.lanes.let_go(attempt)
        self.reports.add(Finished(attempt, None, lost_report(
            f"pilot {self.pilot_id} could not run it: {why}", error), {}, self.clock()))

    def _collect(self, now: float) -> None:
        ended, finished = self.lanes.collect()
        if ended or finished:
            self._last_busy = now
            self._asked_since_busy = False
        if ended or (finished and self._dry):
            self._next_ask = min(self._next_ask, now)
            self._dry = False
        for done in finished:
            self._finished(done)

    def _finished(self, done: Finished) -> None:
        """Count a finished attempt, keep its report, and stop asking on a suspect node."""
        attempt = done.attempt
        if done.report is None:
            self.counts["void"] += 1
            log.warning("attempt %s (%s): killed, void on the matchmaker (%s); not reported",
                        attempt.attempt_id, attempt.label, attempt.void)
            return
        result = done.result
        error = result.error_class if result is not None else ErrorClass.PILOT_LOST
        message = result.error_message if result is not None else "the pilot failed"
        self.counts["ok" if error is None else error.value] += 1
        self.streak.record(attempt.task_id, error, message,
                           attempt.assignment.args.get("dataset"))
        if result is not None and error not in _NOT_RECORDED:
            self._durations.append(result.usage.wall_time)
        if error is None:
            log.debug("attempt %s (%s): done in %.3fs", attempt.attempt_id, attempt.label,
                      result.usage.wall_time)
        else:
            log.info("attempt %s (%s): %s: %s", attempt.attempt_id, attempt.label, error.value,
                     message)
        for warning in result.warnings if result is not None else ():
            log.warning("attempt %s (%s): %s", attempt.attempt_id, attempt.label, warning)
        self.reports.add(done)
        if self.streak.suspect and self.stop is None:
            self._stop_asking("suspect node", self.streak.describe(), EXIT_SUSPECT)
            queued, _ = self.lanes.stop()
            for waiting in queued:
                self._give_back(waiting, f"this node looks broken: {self.streak.describe()}",
                                ErrorClass.NOT_RUN)

    # ------------------------------------------------------------ talking

    def _deliver(self, now: float) -> None:
        """Keep the collected reports when they are due, and deliver what waits, with the ask
        riding on the last request when asking is due."""
        if self.reports.due(now, self._linger(now)):
            self.reports.keep(sending=True)
        pilot_id = None if self._token_refused else self.pilot_id

        def plan() -> AskPlan | None:
            planned = self._ask_plan(now)
            if planned is not None:
                self._asked_since_busy = True
            return planned

        answered = self.reports.deliver(now, pilot_id, plan)
        if answered is not None:
            self._ask_backoff.reset()
            self._answered(answered.reply, now, answered.asked, *answered.plan)

    def _linger(self, now: float) -> float | None:
        """How long the reports of short tasks may wait for others (None: they go now)."""
        if self.stop is not None or not self._short() or not self.lanes.running:
            return None
        if len(self.reports.unkept) >= MAX_BATCH:
            return None
        if now >= self._next_ask and self._wants() is not None:
            return None  # asking is due: the reports carry the ask
        return self.settings.report_linger

    def _keeping_alive(self) -> bool:
        """Whether the pilot's heartbeat goes out with no attempt in it: registered, its token
        good, it keeps itself alive on the matchmaker."""
        return self.pilot_id is not None and not self._token_refused

    def _send_heartbeats(self, now: float) -> None:
        if now < self.heartbeat.due or self._drain_started is not None:
            return
        if not self.lanes.held and not self._keeping_alive():
            return
        speaker = self.pilot_id if self._keeping_alive() else None
        for attempt, why in self.heartbeat.send(now, speaker, self.lanes.beating(),
                                                self.reports.holding()):
            self._void(attempt, why)

    def _void(self, attempt: Attempt, why: str) -> None:
        """The matchmaker says the attempt is void: kill it, or drop it if it waits."""
        if self.lanes.void(attempt, why):
            self.counts["void"] += 1
            log.warning("attempt %s (%s): dropped from the queue, void on the matchmaker (%s); "
                        "not reported", attempt.attempt_id, attempt.label, why)
        elif attempt.run is not None:
            log.warning("attempt %s (%s): the matchmaker says %s; killing it",
                        attempt.attempt_id, attempt.label, why)

    def _leave(self) -> int:
        stop = self.stop or Stop("exited", "")
        if self.reports.pending:
            log.warning("%d reports could not be delivered; they stay in %s for the next pilot "
                        "on this scratch directory", len(self.reports.pending),
                        self.outbox.directory)
        if self.pilot_id is not None and not self._token_refused:
            timeout = QUICK_TIMEOUT if self._drain_started is not None else None
            try:
                reply = self.client.sign_off(self.pilot_id, stop.reason, stop.message,
                                             suspect=stop.exit_code == EXIT_SUSPECT,
                                             timeout=timeout)
                if not reply.ok:
                    log.warning("signing off: %s", reply.error)
            except Unreachable as err:
                log.warning("signing off: %s", err)
        ran = sum(self.counts.values())
        median = ", median overhead " \
            f"{statistics.median(t.overhead for t in self.timings) * 1000:.1f} ms" \
            if self.timings else ""
        who = f"pilot {self.pilot_id}" if self.pilot_id is not None else "the pilot"
        log.info("%s leaves (%s: %s): %d attempts (%s)%s", who, stop.reason, stop.message, ran,
                 ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items())) or "none",
                 median)
        return stop.exit_code
