"""The online pilot: register, ask for what fits the free part of the slot, run, report, leave.

One thread (the one that calls `Pilot.run`) speaks to the matchmaker and decides. Tasks run in
lanes: a lane is a thread that holds one claim on the slot and runs a task in it, then the next
queued task if the same claim holds it, and so on, in one scratch directory that it reuses while
the tasks leave it clean (every lane under one `Supervisor` that applies the headroom policy
across the slot). When the pilot's recent tasks are short it prefetches: it asks for tasks to
run one after another, enough for about `prefetch_horizon` seconds of work, and queues them, so
that a lane goes from one task to the next without waiting for the matchmaker. Each turn of the
loop:

1. drain, once, if a signal asked for it: stop asking, stop every running task and give back
   every queued one (all reported pilot_lost, so the matchmaker requeues them at once without
   counting a failure);
2. collect finished tasks and ended lanes: release their claims, update the black-hole streak;
3. deliver the reports that wait, together in one request (kept in the outbox first, as one
   batch with one sync), carrying the ask for more work when asking is due; the reports of
   short tasks wait up to `report_linger` for others to go with them;
4. send one heartbeat for every attempt held, running or queued, once per interval; an answer
   that an attempt is void kills it (or drops it, if queued), and its result is dropped;
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
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import select
import signal
import statistics
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from config.dataset import job_args
from config.resources import Requirements, format_duration
from config.states import ErrorClass
from pilot.backoff import Backoff, jittered
from pilot.claims import Claim, ClaimError, Claims
from pilot.client import Ask, Matchmaker, Reply, Unreachable
from pilot.gpus import GpuSource
from pilot.guardian import Guardian
from pilot.outbox import Delivery, Outbox, Verdict, deliver, deliver_many
from pilot.runner import Assignment, RunnerSettings, Scratch, TaskResult, TaskRun
from pilot.slot import MeasuredSlot
from pilot.streak import FailureStreak
from pilot.supervisor import WALLTIME_GRACE, Supervisor
from pilot.workarea import WorkArea

log = logging.getLogger("floe.pilot")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_SUSPECT = 3

MAX_ERROR_MESSAGE = 20_000
"""The report schema's limit on error messages."""
QUICK_TIMEOUT = 2.0
"""Seconds each request may take while draining: the batch system kills soon after a SIGTERM."""
MAX_SLEEP = 60.0
MAX_ASK = 64
"""The most tasks one ask is for, side by side or in series."""
MAX_BATCH = 500
"""The most reports one request carries."""
MAX_BATCH_BYTES = 8 * 2**20
"""About the most bytes of reports one request carries (the matchmaker takes up to 16 MiB)."""
RECENT_TASKS = 20
"""How many of the last tasks' wall times say whether tasks are short."""
_NOT_RECORDED = (ErrorClass.PILOT_LOST, ErrorClass.RESET)
"""Ends that say nothing of how long a task takes: the pilot stopped it."""


@dataclass(frozen=True)
class PilotSettings:
    """How the pilot behaves; `floe pilot`'s options fill it."""

    idle_timeout: float = 300.0
    max_failures: int = 5
    walltime_grace: float = WALLTIME_GRACE
    system: Mapping[str, Any] = field(default_factory=dict)
    runner: RunnerSettings = field(default_factory=lambda: RunnerSettings(kill_grace=3.0))
    min_seconds: float = 10.0
    """Stop asking with less time left than this, whatever the tasks' walltimes."""
    max_backoff: float = 60.0
    delivery_patience: float = 3600.0
    """How long a pilot with nothing else to do keeps trying to deliver its last reports."""
    drain_patience: float = 5.0
    """How long a draining pilot tries to deliver its reports before it leaves them on disk."""
    prefetch_horizon: float = 1.0
    """Seconds of short tasks to queue: k tasks whose recent mean wall time times k is about
    this (0: never queue)."""
    report_linger: float = 0.1
    """How long the report of a short task may wait for others to go with it."""
    version: str = ""


class Wakeup:
    """Wakes the loop from lanes and from signal handlers. A pipe, because writing to it takes
    no lock, and a signal handler may interrupt the loop while it holds one."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def notify(self) -> None:
        # A full pipe means a wake-up is pending already; a closed one, that nobody waits.
        with contextlib.suppress(OSError):
            os.write(self._write, b"x")

    def wait(self, timeout: float) -> None:
        ready, _, _ = select.select([self._read], [], [], max(0.0, timeout))
        if ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._read, 256):
                    pass

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


@dataclass(eq=False)
class Held:
    """An attempt this pilot holds: queued until a lane runs it (`run` is set from then on)."""

    attempt_id: int
    passkey: str
    task_id: int
    label: str
    assignment: Assignment
    requirements: Requirements
    asked_at: float
    run: TaskRun | None = None
    claim: Claim | None = None
    void: str | None = None


@dataclass
class Finished:
    """A task a lane has run: its report (None when the attempt is void), the full logs moved
    into the outbox for it, and when it ended (on the pilot's clock)."""

    held: Held
    result: TaskResult | None
    report: dict[str, Any] | None
    logs: dict[str, str]
    at: float


@dataclass
class Pending:
    """A report waiting in the outbox, with what the overhead figure needs; `asked_at` None: a
    report an earlier pilot left, which only its attempt's passkey speaks for."""

    delivery: Delivery
    asked_at: float | None = None
    runtime: float = 0.0


@dataclass(frozen=True)
class Timing:
    """One delivered attempt, on the pilot's clock: when it was asked for, when its report was
    acknowledged, and how long the task itself ran (as the runner measured it)."""

    attempt_id: int
    asked: float
    acknowledged: float
    runtime: float

    @property
    def overhead(self) -> float:
        """What the pilot and the matchmaker added to the task's own runtime."""
        return self.acknowledged - self.asked - self.runtime


@dataclass
class Stop:
    """Why the pilot stopped asking for work, and its exit status."""

    reason: str
    message: str
    exit_code: int = EXIT_OK
    since: float = 0.0


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
        self.gpu_source = gpu_source
        self.clock = clock
        self.claims = Claims(slot)
        self.streak = FailureStreak(self.settings.max_failures)
        self.supervisor = Supervisor(memory=slot.memory, disk=slot.disk,
                                     walltime_grace=self.settings.walltime_grace)
        self.pilot_id: int | None = None
        self.heartbeat_interval = 60.0
        self.timings: collections.deque[Timing] = collections.deque(maxlen=100_000)
        self.counts: collections.Counter[str] = collections.Counter()
        self.stop: Stop | None = None
        # Shared with the lanes, under _lock: the queue, what they finished and whether they
        # should wake the loop for it. The rest is the loop's own.
        self._lock = threading.Lock()
        self._queue: collections.deque[Held] = collections.deque()
        self._finished: collections.deque[Finished] = collections.deque()
        self._ended: collections.deque[tuple[int, Claim]] = collections.deque()
        self._chain = True  # lanes may take queued tasks
        self._wake_on_finish = True
        self._wake_below = -1  # wake the loop once the queue is this short
        self._held: dict[int, Held] = {}
        self._lanes: dict[int, threading.Thread] = {}
        self._lane_numbers = itertools.count()
        self._durations: collections.deque[float] = collections.deque(maxlen=RECENT_TASKS)
        self._unkept: list[Finished] = []
        self._pending: dict[int, Pending] = {}
        self._wake = Wakeup()
        self._guardian: Guardian | None = None
        self._drain_asked: str | None = None
        self._drain_started: float | None = None
        self._started = clock()
        self._unregistered_since = self._started
        self._last_busy = self._started
        self._asked_since_busy = False  # an idle pilot leaves only after asking at least once
        self._next_ask = 0.0
        self._next_register = 0.0
        self._next_heartbeat = math.inf
        self._deliver_after = 0.0
        self._ask_backoff = Backoff(cap=self.settings.max_backoff)
        self._register_backoff = Backoff(cap=self.settings.max_backoff)
        self._deliver_backoff = Backoff(cap=self.settings.max_backoff)
        self._token_refused = False

    # ------------------------------------------------------------ control

    def drain(self, why: str = "asked to stop") -> None:
        """Stop asking, stop the running tasks and give back the queued ones (reported
        pilot_lost), deliver, leave."""
        self._drain_asked = why
        self._wake.notify()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.drain(f"{signal.Signals(signum).name} received")

    def run(self) -> int:
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            self._guardian = self._start_guardian()
            for delivery in self.outbox.pending():
                log.info("attempt %s: a report left by an earlier pilot is in the outbox; "
                         "delivering it", delivery.attempt_id)
                self._pending[delivery.attempt_id] = Pending(delivery)
            while True:
                now = self.clock()
                if self._drain_asked and self._drain_started is None:
                    self._start_drain(now)
                self._collect(now)
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
            if self._guardian is not None:
                self._guardian.close()
                self._guardian = None
            for signum, handler in previous.items():
                signal.signal(signum, handler)
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
        if not self._lanes:
            return
        with self._lock:
            self._chain = False
            self._queue.clear()
            running = [held.run for held in self._held.values() if held.run is not None]
        for run in running:
            run.stop(ErrorClass.PILOT_LOST, "the pilot failed while running it")
        for lane in self._lanes.values():
            lane.join(self.settings.runner.kill_grace + 5)
        self._unkept.extend(done for done in self._finished if done.report is not None)
        self._keep_unkept()

    def _stop_asking(self, reason: str, message: str, exit_code: int = EXIT_OK) -> None:
        if self.stop is None:
            self.stop = Stop(reason, message, exit_code, self.clock())
            log.info("no more asking for work: %s: %s", reason, message)

    def _start_drain(self, now: float) -> None:
        self._drain_started = now
        why = self._drain_asked or "asked to stop"
        self._stop_asking("drained", why)
        self.client.timeout = min(self.client.timeout, QUICK_TIMEOUT)
        queued, running = self._stop_lanes()
        for held in running:
            held.run.stop(ErrorClass.PILOT_LOST, f"the pilot was stopped ({why}) while running "
                                                 "it; the task is requeued")
        for held in queued:
            self._give_back(held, f"the pilot was stopped ({why}) before it ran it; the task "
                                  "is requeued")
        if running or queued:
            log.info("%s: stopping %d running tasks, giving back %d queued", why, len(running),
                     len(queued))

    def _stop_lanes(self) -> tuple[list[Held], list[Held]]:
        """No lane takes another task: the queued attempts (taken out of the queue) and the
        running ones."""
        with self._lock:
            self._chain = False
            queued = list(self._queue)
            self._queue.clear()
            running = [held for held in self._held.values() if held.run is not None]
        return queued, running

    def _over(self, now: float) -> bool:
        if self.stop is None or self._lanes or self._held or self._finished or self._unkept:
            return False
        if not self._pending:
            return True
        if self._drain_started is not None:
            return now >= self._drain_started + self.settings.drain_patience
        return now >= self.stop.since + self.settings.delivery_patience

    def _sleep(self, now: float) -> float:
        due = [now + MAX_SLEEP]
        if self._drain_started is None and (self._held or self._keeping_alive()):
            due.append(self._next_heartbeat)
        if self._pending:
            due.append(self._deliver_after)
        if self._unkept:
            due.append(self._unkept[0].at + self.settings.report_linger if self._short()
                       else now)
        if self.stop is None:
            if self.pilot_id is None:
                due.append(self._next_register)
            elif self._wants_work():
                due.append(self._next_ask)
            if not self._lanes and not self._held and self._asked_since_busy:
                due.append(self._last_busy + self.settings.idle_timeout)
        elif self._pending and not self._lanes:
            due.append(self.stop.since + self.settings.delivery_patience)
        if self._drain_started is not None:
            due.append(self._drain_started + self.settings.drain_patience)
        with self._lock:
            # What the lanes should wake the loop for while it sleeps: a finished task when its
            # report is to go at once, and a queue run down to where more is asked for.
            self._wake_on_finish = not self._unkept or not self._short()
            self._wake_below = self._refill_mark() if self._wants_work() == "series" else -1
            if self._finished and self._wake_on_finish:
                return 0.0
        return min(due) - now

    # ------------------------------------------------------------ asking

    def _series_size(self) -> int:
        """How many tasks to queue: about `prefetch_horizon` seconds of them at their recent
        mean wall time (1 while no task has ended, or when tasks are long)."""
        if self.settings.prefetch_horizon <= 0 or not self._durations:
            return 1
        mean = max(statistics.fmean(self._durations), 1e-6)
        return max(1, min(MAX_ASK, int(self.settings.prefetch_horizon / mean)))

    def _short(self) -> bool:
        return self._series_size() > 1

    def _refill_mark(self) -> int:
        return self._series_size() // 2

    def _series_claims(self) -> list[Claim]:
        """The claims of running tasks that are not short: what a queued task cannot expect
        to have soon."""
        horizon = self.settings.prefetch_horizon
        return [held.claim for held in self._held.values()
                if held.run is not None and held.claim is not None
                and held.run.usage().wall_time > horizon]

    def _wants_work(self) -> str | None:
        """"series" when short tasks are to be queued, "side" when tasks are to start side by
        side in what is free, None when the pilot has all it can take now."""
        if self.stop is not None or self.pilot_id is None:
            return None
        if self._short():
            if len(self._queue) > self._refill_mark() or self._time_after_queue() <= 0:
                return None
            return "series" if self.claims.can_offer(self._series_claims()) else None
        if self._queue or not self.claims.can_offer():
            return None
        return "side"

    def _time_after_queue(self) -> int:
        """Seconds left in the slot once the queued tasks have run their walltimes."""
        # A copy: lanes take from the queue meanwhile.
        return self.slot.seconds_left() - sum(int(held.requirements.walltime)
                                              for held in tuple(self._queue))

    def _ask_plan(self, now: float) -> tuple[Ask, int] | None:
        """The ask to make when it is time to ask for work (registered, still asking, room for
        more), with the seconds left in the slot; else None. Stops asking when it is time."""
        if self.stop is not None or self.pilot_id is None:
            return None
        seconds = self.slot.seconds_left()
        if seconds < self.settings.min_seconds:
            self._stop_asking("lifetime", f"{seconds}s left in the slot, too little for a task")
            return None
        idle = not self._lanes and not self._held
        if idle and self._asked_since_busy and now - self._last_busy >= self.settings.idle_timeout:
            self._stop_asking("idle", "no work for "
                              f"{format_duration(self.settings.idle_timeout)}")
            return None
        if now < self._next_ask:
            return None
        kind = self._wants_work()
        if kind is None:
            if idle and not self.claims.can_offer():
                free = self.claims.free()
                self._stop_asking("empty slot", f"the slot offers nothing a task could use "
                                  f"({free.cpus} CPUs, {free.memory} bytes of memory, "
                                  f"{free.disk} bytes of disk); see floe pilot --probe",
                                  EXIT_ERROR)
            return None
        if kind == "series":
            # The queued tasks run first: what is asked for must fit in the time after them.
            offer = dataclasses.replace(self.claims.offer(held=self._series_claims()),
                                        seconds=self._time_after_queue())
            return Ask(offer, self._series_size() - len(self._queue), in_series=True), seconds
        free = self.claims.free()
        return Ask(self.claims.offer(), max(1, min(MAX_ASK, free.cpus)), in_series=False), \
            seconds

    def _register_or_ask(self, now: float) -> None:
        if self.pilot_id is None:
            if now >= self._next_register:
                self._register(now)
            return
        plan = self._ask_plan(now)
        if plan is None:
            return
        ask, seconds = plan
        asked = self.clock()
        self._asked_since_busy = True
        try:
            reply = self.client.ask(self.pilot_id, ask)
        except Unreachable as err:
            delay = self._ask_backoff.next()
            self._next_ask = now + delay
            log.warning("%s; asking again in %.1fs", err, delay)
            return
        self._ask_backoff.reset()
        self._answered(reply, now, asked, ask, seconds)

    def _answered(self, reply: Reply, now: float, asked: float, ask: Ask, seconds: int) -> None:
        """Act on the answer to an ask (its own, or the one riding on reports)."""
        if reply.ok:
            attempts = reply.data.get("attempts") or []
            if attempts:
                self._last_busy = now
                self._asked_since_busy = False
                self._next_ask = now
                for attempt in attempts:
                    held = self._hold(attempt, asked)
                    if ask.in_series:
                        with self._lock:
                            self._queue.append(held)
                    else:
                        self._start(held)
                return
            self._no_work(now, reply.data, seconds)
        elif reply.status == 401:
            self._token_refused = True
            self._stop_asking("token expired", reply.error)
        elif reply.status == 404:
            log.warning("the matchmaker no longer knows pilot %s (%s); registering again",
                        self.pilot_id, reply.error)
            self.pilot_id = None
            self._unregistered_since = now
        else:
            self._stop_asking("error", f"the matchmaker refused to match: {reply.error}",
                              EXIT_ERROR)

    def _no_work(self, now: float, answer: Mapping[str, Any], seconds: int) -> None:
        shortest = answer.get("shortest_walltime")
        if shortest is not None and seconds < shortest:
            self._stop_asking("lifetime", f"{format_duration(seconds)} left, and the shortest "
                                          f"ready task needs {format_duration(shortest)}")
            return
        wait = float(answer.get("wait") or 30)
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
        self.heartbeat_interval = float(reply.data.get("heartbeat_interval") or 60)
        self._next_heartbeat = now + self.heartbeat_interval
        kept = reply.data.get("tail_bytes")
        if isinstance(kept, int) and 0 < kept < self.settings.runner.tail_bytes:
            # Tails longer than the server keeps would be cut there, and the logs they came
            # from never sent whole.
            self.settings = dataclasses.replace(self.settings, runner=dataclasses.replace(
                self.settings.runner, tail_bytes=kept))
        self._last_busy = now
        self._asked_since_busy = False
        self._next_ask = now
        log.info("registered as pilot %s at site %s: %d CPUs, %.1f GiB memory, %d GPUs, %s left",
                 self.pilot_id, reply.data.get("site"), slot.cpus, slot.memory / 2**30,
                 len(slot.gpus), format_duration(slot.seconds_left()))

    # ------------------------------------------------------------ running

    def _hold(self, attempt: Mapping[str, Any], asked_at: float) -> Held:
        """An attempt the matchmaker handed out, now held (and heartbeated) by this pilot."""
        attempt_id = int(attempt["id"])
        # The attempt's requirements, not the spec's, are the ones in force: they have grown
        # if an earlier attempt was killed for overuse.
        spec = dict(attempt["spec"], requirements=attempt["requirements"])
        assignment = Assignment(
            task=spec, steering=dict(attempt.get("steering") or {}), system=self.settings.system,
            args=job_args(attempt["job"], attempt["dataset"], attempt["jobs_submitted"],
                          attempt["task"], attempt_id))
        held = Held(attempt_id, str(attempt["passkey"]), int(attempt["task_id"]),
                    f"dataset {attempt.get('dataset')} job {attempt.get('job')} task "
                    f"{attempt.get('task')}", assignment,
                    Requirements.from_dict(attempt["requirements"]), asked_at)
        interval = attempt.get("heartbeat_interval")
        if interval:
            self.heartbeat_interval = float(interval)
        self._next_heartbeat = min(self._next_heartbeat, asked_at + self.heartbeat_interval)
        self._held[held.attempt_id] = held
        return held

    def _start(self, held: Held) -> None:
        """Start an attempt handed out to run side by side in what is free, or give it back."""
        if self._drain_asked:
            self._give_back(held, "the pilot was told to stop as it got it")
            return
        try:
            claim = self.claims.claim(held.requirements)
        except ClaimError as err:
            self._give_back(held, str(err))
            return
        self._start_lane(held, claim)

    def _pack(self) -> None:
        """Start queued attempts, in their order, in lanes of their own while what is free
        holds the next one (a later one never overtakes it, so a large task is not starved by
        small ones); give back those that no lane of this slot could ever hold."""
        if not self._queue or not self.claims.can_offer():
            return
        unfit = []
        with self._lock:
            if not self._chain:
                return
            for held in list(self._queue):
                if not self.claims.fits_slot(held.requirements):
                    unfit.append(held)
                    self._queue.remove(held)
                    continue
                if not self.claims.free().holds(held.requirements):
                    break
                self._queue.remove(held)
                self._start_lane(held, self.claims.claim(held.requirements))
        for held in unfit:
            self._give_back(held, "the task needs more than this pilot's whole slot: "
                                  f"{held.requirements.cpus} CPUs, "
                                  f"{held.requirements.memory} bytes of memory, "
                                  f"{held.requirements.disk} bytes of disk, "
                                  f"{held.requirements.gpus} GPUs")

    def _start_lane(self, held: Held, claim: Claim) -> None:
        number = next(self._lane_numbers)
        scratch = Scratch(self.work.lane_dir(number))
        held.run = self._task_run(held, claim, scratch)
        lane = threading.Thread(target=self._lane, args=(number, held, claim, scratch),
                                daemon=True, name=f"lane-{number}")
        self._lanes[number] = lane
        lane.start()

    def _task_run(self, held: Held, claim: Claim, scratch: Scratch) -> TaskRun:
        held.claim = claim
        return TaskRun(held.assignment, scratch, gpus=claim.gpus[:held.requirements.gpus],
                       gpu_source=self.gpu_source, settings=self.settings.runner,
                       supervisor=self.supervisor, guardian=self._guardian)

    def _give_back(self, held: Held, why: str) -> None:
        """Report an attempt the pilot will not run as lost, so that it is requeued at once."""
        log.warning("attempt %s (%s): not run: %s", held.attempt_id, held.label, why)
        self.counts[ErrorClass.PILOT_LOST.value] += 1
        self._held.pop(held.attempt_id, None)
        self._unkept.append(Finished(held, None, lost_report(
            f"pilot {self.pilot_id} could not run it: {why}"), {}, self.clock()))

    def _lane(self, number: int, held: Held | None, claim: Claim, scratch: Scratch) -> None:
        """A lane's thread: run the task, then the next queued ones while the same claim holds
        them and they succeed (a failure goes through the loop, which keeps the black-hole
        streak)."""
        try:
            while held is not None:
                done = self._execute(held, scratch)
                with self._lock:
                    self._finished.append(done)
                    held = self._next_in_lane(done, claim, scratch)
                    wake = held is not None and (self._wake_on_finish
                                                 or len(self._queue) <= self._wake_below)
                    if wake:
                        self._wake_on_finish = False
                        self._wake_below = -1
                if wake:
                    self._wake.notify()
        finally:
            scratch.remove()
            self._ended.append((number, claim))
            self._wake.notify()

    def _next_in_lane(self, done: Finished, claim: Claim, scratch: Scratch) -> Held | None:
        """The next queued attempt, taken out of the queue, when the lane may run it in its
        claim (it holds it, and the last task succeeded); else None, and the lane ends. Called
        under the lock."""
        if not self._chain or done.result is None or not done.result.ok or not self._queue:
            return None
        held = self._queue[0]
        if not claim.holds(held.requirements):
            return None
        self._queue.popleft()
        held.run = self._task_run(held, claim, scratch)
        return held

    def _execute(self, held: Held, scratch: Scratch) -> Finished:
        """Run one attempt in a lane; its report, with its full logs moved into the outbox."""
        assert held.run is not None and held.claim is not None
        log.debug("attempt %s (%s): started in %s%s", held.attempt_id, held.label,
                  threading.current_thread().name,
                  f" on GPUs {', '.join(g.uuid for g in held.run.gpus)}" if held.run.gpus else "")
        result: TaskResult | None = None
        logs: dict[str, str] = {}
        try:
            result = held.run.run()
            report = report_of(result)
        except Exception as err:  # a fault of the pilot, not of the task: requeue it
            log.exception("attempt %s: the pilot failed running it", held.attempt_id)
            report = lost_report(f"pilot {self.pilot_id} failed while running it: {err}")
        if held.void is None and result is not None:
            logs = self._adopt_long_logs(held.attempt_id, result)
        if not scratch.reusable():
            scratch.remove()
        return Finished(held, result, report if held.void is None else None, logs, self.clock())

    def _adopt_long_logs(self, attempt_id: int, result: TaskResult) -> dict[str, str]:
        """The logs too long for the report's tails, moved into the outbox to go up whole."""
        logs = {}
        for stream, path in (("stdout", result.stdout_path), ("stderr", result.stderr_path)):
            try:
                if os.path.getsize(path) > self.settings.runner.tail_bytes:
                    logs[stream] = self.outbox.adopt_log(attempt_id, stream, path)
            except OSError as err:
                log.warning("attempt %s: its full %s stays behind (%s); the report has its "
                            "tail", attempt_id, stream, err.strerror or err)
        return logs

    def _collect(self, now: float) -> None:
        while self._ended:
            number, claim = self._ended.popleft()
            self._lanes.pop(number).join()
            self.claims.release(claim)
            self._last_busy = now
            self._asked_since_busy = False
            self._next_ask = min(self._next_ask, now)
        while self._finished:
            done = self._finished.popleft()
            held = done.held
            self._held.pop(held.attempt_id, None)
            self._last_busy = now
            self._asked_since_busy = False
            if done.report is None:
                self.counts["void"] += 1
                log.warning("attempt %s (%s): killed, void on the matchmaker (%s); not "
                            "reported", held.attempt_id, held.label, held.void)
                continue
            result = done.result
            error = result.error_class if result is not None else ErrorClass.PILOT_LOST
            message = result.error_message if result is not None else "the pilot failed"
            self.counts["ok" if error is None else error.value] += 1
            self.streak.record(held.task_id, error, message)
            if result is not None and error not in _NOT_RECORDED:
                self._durations.append(result.usage.wall_time)
            if error is None:
                log.debug("attempt %s (%s): done in %.3fs", held.attempt_id, held.label,
                          result.usage.wall_time)
            else:
                log.info("attempt %s (%s): %s: %s", held.attempt_id, held.label, error.value,
                         message)
            self._unkept.append(done)
            if self.streak.suspect and self.stop is None:
                self._stop_asking("suspect node", self.streak.describe(), EXIT_SUSPECT)
                queued, _ = self._stop_lanes()
                for queued_held in queued:
                    self._give_back(queued_held, "this node looks broken: "
                                                 f"{self.streak.describe()}")

    # ------------------------------------------------------------ talking

    def _report_due(self, now: float) -> bool:
        """Whether the finished tasks' reports are to go now, or may wait for more."""
        if not self._unkept:
            return False
        if self.stop is not None or not self._short() or not self._lanes:
            return True
        if len(self._unkept) >= MAX_BATCH:
            return True
        if now >= self._unkept[0].at + self.settings.report_linger:
            return True
        return now >= self._next_ask and self._wants_work() is not None

    def _keep_unkept(self) -> None:
        """Keep the collected reports in the outbox, as one batch."""
        if not self._unkept:
            return
        deliveries = [Delivery(done.held.attempt_id, done.held.passkey, done.report, done.logs)
                      for done in self._unkept]
        try:
            self.outbox.put_many(deliveries)
        except OSError as err:
            log.error("attempts %s: cannot keep their reports in %s (%s); they will be sent "
                      "from memory only", ", ".join(str(d.attempt_id) for d in deliveries),
                      self.outbox.directory, err.strerror or err)
        for done, delivery in zip(self._unkept, deliveries):
            wall = done.result.usage.wall_time if done.result is not None else 0.0
            self._pending[delivery.attempt_id] = Pending(delivery, done.held.asked_at, wall)
        self._unkept = []

    def _deliver(self, now: float) -> None:
        if self._report_due(now):
            self._keep_unkept()
        if not self._pending or now < self._deliver_after:
            return
        theirs = [p for p in self._pending.values() if p.asked_at is None]
        ours = [p for p in self._pending.values() if p.asked_at is not None]
        if self.pilot_id is None or self._token_refused:
            theirs, ours = theirs + ours, []
        for pending in sorted(theirs, key=lambda p: p.delivery.attempt_id):
            verdict, words = deliver(self.client, self.outbox, pending.delivery)
            if not self._settled(pending, verdict, words):
                return
        batches = _batches(sorted(ours, key=lambda p: p.delivery.attempt_id))
        for position, batch in enumerate(batches):
            plan = self._ask_plan(now) if position == len(batches) - 1 else None
            asked = self.clock()
            if plan is not None:
                self._asked_since_busy = True
            outcomes, answer = deliver_many(self.client, self.outbox, self.pilot_id,
                                            [pending.delivery for pending in batch],
                                            plan[0] if plan is not None else None)
            for pending, outcome in zip(batch, outcomes):
                if not self._settled(pending, outcome.verdict, outcome.words):
                    return
            if answer is not None and plan is not None:
                self._ask_backoff.reset()
                self._answered(answer, now, asked, *plan)

    def _settled(self, pending: Pending, verdict: Verdict, words: str) -> bool:
        """Act on what became of one report; False when the matchmaker could not be reached
        (the report waits, and so do the others, for the backoff)."""
        attempt_id = pending.delivery.attempt_id
        if verdict is Verdict.RETRY:
            delay = self._deliver_backoff.next()
            self._deliver_after = self.clock() + delay
            log.warning("%d reports wait: %s; trying again in %.1fs", len(self._pending),
                        words, delay)
            return False
        self._deliver_backoff.reset()
        del self._pending[attempt_id]
        if verdict is Verdict.DELIVERED:
            self.outbox.remove(pending.delivery)
            if pending.asked_at is not None:
                self.timings.append(Timing(attempt_id, pending.asked_at, self.clock(),
                                           pending.runtime))
            log.debug("attempt %s: reported (%s)", attempt_id, words)
        elif verdict is Verdict.VOID:
            self.outbox.remove(pending.delivery)
            log.warning("attempt %s: the matchmaker will not record its report: %s",
                        attempt_id, words)
        else:
            self.outbox.set_aside(pending.delivery, words)
            log.error("attempt %s: the matchmaker refused its report (%s); it is kept in "
                      "%s", attempt_id, words, self.outbox.directory / "rejected")
        return True

    def _keeping_alive(self) -> bool:
        """Whether the pilot's heartbeat goes out with no attempt in it: registered, its token
        good, it keeps itself alive on the matchmaker."""
        return self.pilot_id is not None and not self._token_refused

    def _send_heartbeats(self, now: float) -> None:
        if now < self._next_heartbeat or self._drain_started is not None:
            return
        if not self._held and not self._keeping_alive():
            return
        self._next_heartbeat = now + self.heartbeat_interval
        beating = [held for held in self._held.values() if held.void is None]
        usage = {held.attempt_id: held.run.usage().to_dict() if held.run is not None else {}
                 for held in beating}
        if self.pilot_id is None or self._token_refused:
            self._beat_one_by_one(beating, usage)
            return
        # Ended attempts whose reports wait are held too: with them the list is complete, and
        # the matchmaker resets an attempt it handed out that the pilot never received.
        reporting = [done.held.attempt_id for done in self._unkept]
        reporting += [attempt_id for attempt_id, pending in self._pending.items()
                      if pending.asked_at is not None]
        try:
            reply = self.client.heartbeats(self.pilot_id, [
                {"attempt_id": held.attempt_id, "passkey": held.passkey,
                 "usage": usage[held.attempt_id]} for held in beating], reporting)
        except Unreachable as err:
            log.warning("no heartbeat for %d attempts: %s", len(beating), err)
            return
        if not reply.ok:
            # The pilot token cannot speak for them (it expired, or the pilot is unknown):
            # each attempt's passkey still can.
            log.warning("the pilot's heartbeat was refused (%s); sending one per attempt",
                        reply.error)
            self._beat_one_by_one(beating, usage)
            return
        interval = reply.data.get("heartbeat_interval")
        if interval:
            self.heartbeat_interval = float(interval)
        answers = reply.data.get("attempts") or {}
        for held in beating:
            answer = answers.get(str(held.attempt_id)) or {}
            if answer.get("action") == "kill":
                self._void(held, str(answer.get("error") or "void on the matchmaker"))

    def _beat_one_by_one(self, beating: list[Held], usage: Mapping[int, Mapping[str, Any]]
                         ) -> None:
        for held in beating:
            try:
                reply = self.client.heartbeat(held.attempt_id, held.passkey,
                                              usage[held.attempt_id])
            except Unreachable as err:
                log.warning("attempt %s: no heartbeat: %s", held.attempt_id, err)
                return
            if reply.status in (403, 404, 409):
                self._void(held, reply.error)
            elif not reply.ok:
                log.warning("attempt %s: heartbeat refused: %s", held.attempt_id, reply.error)

    def _void(self, held: Held, why: str) -> None:
        """The matchmaker says the attempt is void: kill it, or drop it if it waits."""
        held.void = why
        with self._lock:
            queued = held in self._queue
            if queued:
                self._queue.remove(held)
        if queued:
            self._held.pop(held.attempt_id, None)
            self.counts["void"] += 1
            log.warning("attempt %s (%s): dropped from the queue, void on the matchmaker (%s); "
                        "not reported", held.attempt_id, held.label, why)
        elif held.run is not None:
            held.run.stop(ErrorClass.RESET, f"void on the matchmaker: {why}")
            log.warning("attempt %s (%s): the matchmaker says %s; killing it",
                        held.attempt_id, held.label, why)

    def _leave(self) -> int:
        stop = self.stop or Stop("exited", "")
        if self._pending:
            log.warning("%d reports could not be delivered; they stay in %s for the next pilot "
                        "on this scratch directory", len(self._pending), self.outbox.directory)
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
        log.info("%s leaves (%s): %d attempts (%s)%s", who, stop.reason, ran,
                 ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items())) or "none",
                 median)
        return stop.exit_code


def _batches(pending: list[Pending]) -> list[list[Pending]]:
    """Reports in groups that one request each can carry."""
    batches: list[list[Pending]] = []
    size = MAX_BATCH_BYTES
    for item in pending:
        report = item.delivery.report
        weight = 1024 + sum(len(report.get(key) or "") for key in
                            ("stdout_tail", "stderr_tail", "error_message"))
        if not batches or len(batches[-1]) >= MAX_BATCH or size + weight > MAX_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += weight
    return batches


def report_of(result: TaskResult) -> dict[str, Any]:
    """The report body for a finished attempt."""
    report: dict[str, Any] = {
        "exit_code": None if result.exit_code is None else max(-255, min(255, result.exit_code)),
        "error_class": result.error_class.value if result.error_class else None,
        "error_message": result.error_message[:MAX_ERROR_MESSAGE],
        "usage": result.usage.to_dict(),
        "statistics": dict(result.statistics),
        "outputs": [dict(output) for output in result.outputs],
        "stdout_tail": result.stdout_tail,
        "stderr_tail": result.stderr_tail,
    }
    if result.overuse is not None:
        report["overuse"] = result.overuse.to_dict()
    return report


def lost_report(message: str) -> dict[str, Any]:
    """The report for an attempt the pilot could not see through: the task is requeued."""
    return {"exit_code": None, "error_class": ErrorClass.PILOT_LOST.value,
            "error_message": message[:MAX_ERROR_MESSAGE]}
