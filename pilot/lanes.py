"""The attempts a pilot holds and the lanes that run them.

A lane is a thread that holds one claim on the slot and runs a task in it, then the next queued
task if the same claim holds it and the last one succeeded, and so on, in one scratch directory
that it reuses while the tasks leave it clean (every lane under one `Supervisor` that applies the
headroom policy across the slot). A lane that has nothing more to run gives its claim back and is
parked, its thread and scratch directory kept for the next attempt to start (starting a thread
and making a directory cost a short task more than a tenth of its time); one parked for
`PARKED_SECONDS` ends. Attempts handed out to run side by side start a lane each;
those handed out in series wait in the queue, in order, until a lane takes them or what is free
holds the next one (a later one never overtakes it, so a large task is not starved by small
ones), and while its walltime fits the slot's time left (one that no longer does is given back
unstarted). What a lane finished waits in `finished` for the loop to collect; the loop sleeps on a
`Wakeup` that lanes and signal handlers write to.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import queue
import select
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from floe.config.dataset import job_args
from floe.config.resources import Requirements
from floe.config.states import ErrorClass
from floe.pilot.claims import Claim, ClaimError, Claims
from floe.pilot.gpus import GpuSource
from floe.pilot.guardian import Guardian
from floe.pilot.outbox import Outbox
from floe.pilot.reports import lost_report, report_of
from floe.pilot.runner import Assignment, RunnerSettings, TaskResult, TaskRun
from floe.pilot.scratch import Scratch
from floe.pilot.supervisor import Supervisor
from floe.pilot.workarea import WorkArea

log = logging.getLogger("floe.pilot")

PARKED_SECONDS = 60.0
"""How long a parked lane waits for an attempt to start before it ends."""
STARTING_PATIENCE = 0.05
"""How long, at most, the loop's next ask waits for lanes just handed attempts to start their
processes: starting them comes first, and the asking shares the interpreter with it."""


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
class Attempt:
    """An attempt the matchmaker handed this pilot: queued until a lane runs it (`run` is set
    from then on), heartbeated until it ends."""

    attempt_id: int
    passkey: str
    task_id: int
    label: str
    assignment: Assignment
    requirements: Requirements
    asked_at: float
    """When its wait began, on the pilot's clock, for the overhead figure: the ask that brought
    it (the answer, for a held ask), or the end of the task before it in its lane."""
    expected: float = 0.0
    """Seconds the matchmaker expects it to run (its learned runtime, at most its walltime)."""
    handed_at: float = 0.0
    """When it was handed to a lane that starts a run with it (on the pilot's clock)."""
    run: TaskRun | None = None
    claim: Claim | None = None
    void: str | None = None


@dataclass(eq=False)
class Lane:
    """A lane's thread, its scratch directory, and where it is handed its next attempt (with the
    claim to run it in; None ends the lane)."""

    number: int
    scratch: Scratch
    handed: queue.SimpleQueue[tuple[Attempt, Claim] | None] = field(
        default_factory=queue.SimpleQueue)
    thread: threading.Thread = field(init=False)


@dataclass
class Finished:
    """A task a lane has run: its report (None when the attempt is void), the full logs moved
    into the outbox for it, and when it ended (on the pilot's clock)."""

    attempt: Attempt
    result: TaskResult | None
    report: dict[str, Any] | None
    logs: dict[str, str]
    at: float


def attempt_of(answer: Mapping[str, Any], asked_at: float,
               system: Mapping[str, Any]) -> Attempt:
    """An attempt from the matchmaker's answer (one item of "attempts")."""
    attempt_id = int(answer["id"])
    # The attempt's requirements, not the spec's, are the ones in force: they have grown if an
    # earlier attempt was killed for overuse.
    spec = dict(answer["spec"], requirements=answer["requirements"])
    assignment = Assignment(
        task=spec, steering=dict(answer.get("steering") or {}), system=system,
        args=job_args(answer["job"], answer["dataset"], answer["jobs_submitted"],
                      answer["task"], attempt_id))
    requirements = assignment.requirements
    expected = answer.get("expected_seconds")
    return Attempt(attempt_id, str(answer["passkey"]), int(answer["task_id"]),
                   f"dataset {answer.get('dataset')} job {answer.get('job')} task "
                   f"{answer.get('task')}", assignment, requirements, asked_at,
                   float(requirements.walltime if expected is None else expected))


class Lanes:
    """The attempts a pilot holds (`held`, by id), its queue of attempts to run in series, and
    its lanes. The loop's thread calls everything here; lane threads share with it, under
    `lock`, `queue`, `finished`, the lanes that run and those parked, the claims of runs that
    ended, the attempts not started yet and the wake-up marks."""

    def __init__(self, work: WorkArea, claims: Claims, outbox: Outbox, wake: Wakeup,
                 settings: RunnerSettings, supervisor: Supervisor,
                 gpu_source: GpuSource | None, clock: Callable[[], float],
                 seconds_left: Callable[[], int]) -> None:
        self.work = work
        self.claims = claims
        self.outbox = outbox
        self.wake = wake
        self.settings = settings
        self.supervisor = supervisor
        self.gpu_source = gpu_source
        self.clock = clock
        self.seconds_left = seconds_left
        self.guardian: Guardian | None = None
        self.held: dict[int, Attempt] = {}
        self.lock = threading.Lock()
        self.queue: collections.deque[Attempt] = collections.deque()
        self.finished: collections.deque[Finished] = collections.deque()
        self._ended: collections.deque[Claim] = collections.deque()  # of runs that ended
        self._chain = True  # lanes may take queued attempts
        self._wake_on_finish = True
        self._wake_below = -1  # wake the loop once the queue is this short
        self._threads: dict[int, threading.Thread] = {}  # the lanes that run
        self._parked: list[Lane] = []
        self._unstarted: set[Attempt] = set()  # handed to lanes, no process started yet
        self._wake_on_spawn = False
        self._numbers = itertools.count()

    # ------------------------------------------------------------ what the loop asks

    @property
    def running(self) -> bool:
        """Some lane runs (or has ended a run whose claim waits to be released)."""
        return bool(self._threads or self._ended)

    @property
    def busy(self) -> bool:
        """Some lane runs or some attempt is held."""
        return bool(self._threads or self._ended or self.held)

    def beating(self) -> list[Attempt]:
        """The attempts to heartbeat: every one held that is not void."""
        return [attempt for attempt in self.held.values() if attempt.void is None]

    def queued_seconds(self) -> float:
        """What the queued attempts are expected to run, in all."""
        # A copy: lanes take from the queue meanwhile.
        return sum(a.expected for a in tuple(self.queue))

    def long_claims(self, horizon: float) -> list[Claim]:
        """The claims of running tasks that are not short: what a queued task cannot expect to
        have soon."""
        return [a.claim for a in self.held.values()
                if a.run is not None and a.claim is not None
                and a.run.usage().wall_time > horizon]

    def running_for(self) -> list[float]:
        """How long each running attempt has run, in seconds."""
        return [a.run.usage().wall_time for a in self.held.values() if a.run is not None]

    def unqueue(self) -> list[Attempt]:
        """Take every queued attempt out of the queue (still held, for the loop to give back)."""
        with self.lock:
            queued = list(self.queue)
            self.queue.clear()
        return queued

    def ask_after(self) -> float | None:
        """When the next ask may go while lanes start the attempts just handed to them (until
        each has started its first process, `STARTING_PATIENCE` at most); None when it need not
        wait. Lanes wake the loop when the last of them has started. (An ask that rides on
        reports goes with them.)"""
        with self.lock:
            self._wake_on_spawn = bool(self._unstarted)
            if not self._unstarted:
                return None
            return min(a.handed_at for a in self._unstarted) + STARTING_PATIENCE

    def wake_for(self, on_finish: bool, below: int) -> bool:
        """What lanes should wake the loop for while it sleeps: a finished task (`on_finish`),
        and a queue run down to `below` (-1: never). True when a finished task already waits
        to be collected and the loop should not sleep."""
        with self.lock:
            self._wake_on_finish = on_finish
            self._wake_below = below
            return bool(self.finished) and on_finish

    # ------------------------------------------------------------ taking attempts

    def hold(self, attempt: Attempt) -> Attempt:
        self.held[attempt.attempt_id] = attempt
        return attempt

    def let_go(self, attempt: Attempt) -> None:
        """No longer hold an attempt (its report is the loop's now)."""
        self.held.pop(attempt.attempt_id, None)

    def enqueue(self, attempt: Attempt) -> None:
        with self.lock:
            self.queue.append(attempt)

    def start(self, attempt: Attempt) -> str | None:
        """Start an attempt in a lane of its own in what is free; why not, if it cannot."""
        try:
            claim = self.claims.claim(attempt.requirements)
        except ClaimError as err:
            return str(err)
        with self.lock:
            self._start_lane(attempt, claim)
        return None

    def pack(self) -> tuple[list[Attempt], list[Attempt]]:
        """Start queued attempts, in their order, in lanes of their own while what is free holds
        the next one; returns, taken out of the queue to be given back, those that no lane of
        this slot could ever hold and those whose walltime no longer fits the slot's time left
        (the tasks before them ran longer than expected)."""
        if not self.queue or not self.claims.can_offer():
            return [], []
        unfit, late = [], []
        with self.lock:
            if not self._chain:
                return [], []
            seconds_left = self.seconds_left()
            for attempt in list(self.queue):
                if not self.claims.fits_slot(attempt.requirements):
                    unfit.append(attempt)
                    self.queue.remove(attempt)
                    continue
                if attempt.requirements.walltime > seconds_left:
                    late.append(attempt)
                    self.queue.remove(attempt)
                    continue
                if not self.claims.free().holds(attempt.requirements):
                    break
                self.queue.remove(attempt)
                self._start_lane(attempt, self.claims.claim(attempt.requirements))
        return unfit, late

    def stop(self) -> tuple[list[Attempt], list[Attempt]]:
        """No lane takes another attempt: the queued ones (taken out of the queue) and the
        running ones."""
        with self.lock:
            self._chain = False
            queued = list(self.queue)
            self.queue.clear()
            running = [a for a in self.held.values() if a.run is not None]
        return queued, running

    def void(self, attempt: Attempt, why: str) -> bool:
        """The matchmaker says the attempt is void: drop it if it waits (True), or kill it."""
        attempt.void = why
        with self.lock:
            queued = attempt in self.queue
            if queued:
                self.queue.remove(attempt)
        if queued:
            self.let_go(attempt)
        elif attempt.run is not None:
            attempt.run.stop(ErrorClass.RESET, f"void on the matchmaker: {why}")
        return queued

    def collect(self) -> tuple[int, list[Finished]]:
        """Release the claims of the lanes that ended their runs and take what they finished:
        how many runs ended, and the finished attempts, no longer held."""
        ended = 0
        while self._ended:
            self.claims.release(self._ended.popleft())
            ended += 1
        finished = []
        while self.finished:
            done = self.finished.popleft()
            self.let_go(done.attempt)
            finished.append(done)
        return ended, finished

    def abandon(self, why: str) -> list[Finished]:
        """Only when the loop itself failed: stop the tasks rather than leave them orphaned;
        the reports of what finished, for the outbox."""
        with self.lock:
            self._chain = False
            self.queue.clear()
            running = [a.run for a in self.held.values() if a.run is not None]
            threads = list(self._threads.values())
        for run in running:
            run.stop(ErrorClass.PILOT_LOST, why)
        for lane in threads:
            lane.join(self.settings.kill_grace + 5)
        return [done for done in self.finished if done.report is not None]

    def close(self) -> None:
        """End the parked lanes and wait for them (each removes its scratch directory); no
        lane parks after it."""
        with self.lock:
            self._chain = False
            parked, self._parked = self._parked, []
        for lane in parked:
            lane.handed.put(None)
        for lane in parked:
            lane.thread.join(5)

    # ------------------------------------------------------------ the lanes

    def task_run(self, attempt: Attempt, claim: Claim, scratch: Scratch,
                 on_spawn: Callable[[], None] | None = None) -> TaskRun:
        attempt.claim = claim
        return TaskRun(attempt.assignment, scratch, gpus=claim.gpus[:attempt.requirements.gpus],
                       gpu_source=self.gpu_source, settings=self.settings,
                       supervisor=self.supervisor, guardian=self.guardian, on_spawn=on_spawn)

    def _start_lane(self, attempt: Attempt, claim: Claim) -> None:
        """Hand an attempt to the lane parked last, or to a new one. Called under the lock."""
        new = not self._parked
        if new:
            number = next(self._numbers)
            lane = Lane(number, Scratch(self.work.lane_dir(number)))
            lane.thread = threading.Thread(target=self._lane, args=(lane,), daemon=True,
                                           name=f"lane-{number}")
        else:
            lane = self._parked.pop()
        attempt.run = self.task_run(attempt, claim, lane.scratch,
                                    on_spawn=lambda: self._spawned(attempt))
        attempt.handed_at = self.clock()
        self._unstarted.add(attempt)
        self._threads[lane.number] = lane.thread
        lane.handed.put((attempt, claim))
        if new:
            lane.thread.start()

    def _lane(self, lane: Lane) -> None:
        """A lane's thread: run the attempt it is handed, then the next queued ones while the
        same claim holds them and they succeed (a failure goes through the loop, which keeps the
        black-hole streak); then park until handed another, or end."""
        try:
            handed = lane.handed.get()
            while handed is not None and self._run_lane(lane, *handed):
                handed = self._park(lane)
        finally:
            lane.scratch.remove()

    def _run_lane(self, lane: Lane, attempt: Attempt | None, claim: Claim) -> bool:
        """Run attempts in the lane's claim until none is left for it; the claim is given back
        then (or should this fail). True when the lane is parked."""
        parked = False
        try:
            while attempt is not None:
                done = self._execute(attempt, lane.scratch)
                with self.lock:
                    self._unstarted.discard(attempt)
                    self.finished.append(done)
                    attempt = self.next_in_lane(done, claim, lane.scratch)
                    if attempt is None:
                        parked = self._chain
                        if parked:
                            self._parked.append(lane)
                        if not parked or not lane.scratch.reusable():
                            lane.scratch.remove()  # no disk held while parked or gone
                        self._ended.append(claim)
                        del self._threads[lane.number]
                        wake = True
                    else:
                        wake = self._wake_on_finish or len(self.queue) <= self._wake_below
                        if wake:
                            self._wake_on_finish = False
                            self._wake_below = -1
                if wake:
                    self.wake.notify()
        except BaseException:
            lane.scratch.remove()
            with self.lock:
                self._unstarted.discard(attempt)
                self._ended.append(claim)
                del self._threads[lane.number]
            self.wake.notify()
            raise
        return parked

    def _spawned(self, attempt: Attempt) -> None:
        """A lane started the first process of an attempt handed to it."""
        with self.lock:
            self._unstarted.discard(attempt)
            wake = self._wake_on_spawn and not self._unstarted
            if wake:
                self._wake_on_spawn = False
        if wake:
            self.wake.notify()

    def _park(self, lane: Lane) -> tuple[Attempt, Claim] | None:
        """Wait, parked, to be handed the next attempt; None to end (after `PARKED_SECONDS`
        with nothing, unless an attempt is on its way)."""
        try:
            return lane.handed.get(timeout=PARKED_SECONDS)
        except queue.Empty:
            with self.lock:
                if lane in self._parked:
                    self._parked.remove(lane)
                    return None
            return lane.handed.get()  # taken out of the parking meanwhile: handed one now

    def next_in_lane(self, done: Finished, claim: Claim, scratch: Scratch) -> Attempt | None:
        """The next queued attempt, taken out of the queue, when the lane may run it in its
        claim (it holds it, its walltime fits the time left, and the last task succeeded); else
        None, and the lane ends. Called under the lock."""
        if not self._chain or done.result is None or not done.result.ok or not self.queue:
            return None
        attempt = self.queue[0]
        if not claim.holds(attempt.requirements) \
                or attempt.requirements.walltime > self.seconds_left():
            return None
        self.queue.popleft()
        attempt.asked_at = max(attempt.asked_at, done.at)  # its turn: a queue is no overhead
        attempt.run = self.task_run(attempt, claim, scratch)
        return attempt

    def _execute(self, attempt: Attempt, scratch: Scratch) -> Finished:
        """Run one attempt in a lane; its report, with its full logs moved into the outbox."""
        assert attempt.run is not None and attempt.claim is not None
        log.debug("attempt %s (%s): started in %s%s", attempt.attempt_id, attempt.label,
                  threading.current_thread().name,
                  f" on GPUs {', '.join(g.uuid for g in attempt.run.gpus)}"
                  if attempt.run.gpus else "")
        result: TaskResult | None = None
        logs: dict[str, str] = {}
        try:
            result = attempt.run.run()
            report = report_of(result)
        except Exception as err:  # a fault of the pilot, not of the task: requeue it
            log.exception("attempt %s: the pilot failed running it", attempt.attempt_id)
            report = lost_report(f"the pilot failed while running it: {err}")
        if attempt.void is None and result is not None:
            logs = self._adopt_long_logs(attempt.attempt_id, result)
        return Finished(attempt, result, report if attempt.void is None else None, logs,
                        self.clock())

    def _adopt_long_logs(self, attempt_id: int, result: TaskResult) -> dict[str, str]:
        """The logs too long for the report's tails, moved into the outbox to go up whole."""
        logs = {}
        for stream, path in (("stdout", result.stdout_path), ("stderr", result.stderr_path)):
            try:
                if os.path.getsize(path) > self.settings.tail_bytes:
                    logs[stream] = self.outbox.adopt_log(attempt_id, stream, path)
            except OSError as err:
                log.warning("attempt %s: its full %s stays behind (%s); the report has its "
                            "tail", attempt_id, stream, err.strerror or err)
        return logs
