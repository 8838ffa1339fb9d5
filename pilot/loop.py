"""The online pilot: register, ask for what fits the free part of the slot, run, report, leave.

One thread (the one that calls `Pilot.run`) speaks to the matchmaker and decides; each task
runs in a thread of its own (a `TaskRun`, all of them under one `Supervisor` that applies the
headroom policy across the slot). A task thread writes its attempt's report to the outbox the
moment the task is over, then wakes the loop, which delivers it. Each turn of the loop:

1. drain, once, if a signal asked for it: stop asking, stop every task (reported pilot_lost,
   so the matchmaker requeues them without counting a failure);
2. collect finished tasks: release their claims, update the black-hole streak;
3. deliver due reports from the outbox (backing off while the matchmaker is away); when it is
   time to ask for work as a finished task's report goes out, the ask rides in that report
   and the task its answer hands out is started at once: a busy pilot needs one request per
   task;
4. send due heartbeats; an answer that the attempt is void (reset, suspended, timed out on
   the server) kills the task and its result is dropped;
5. register, or ask for a task that fits what is free, when it is time (and no report asked
   already); start it;
6. leave when asking has stopped (idle, out of time, drained, suspect node, token refused),
   nothing runs and every report is delivered (or the patience for that is spent);
7. sleep until the next thing is due or a task thread or a signal wakes it.

While the matchmaker is unreachable, tasks keep running and their reports wait on disk.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import select
import shutil
import signal
import statistics
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from config.dataset import job_args
from config.resources import Requirements, format_duration
from config.states import ErrorClass
from pilot.backoff import Backoff, jittered
from pilot.claims import Claim, ClaimError, Claims
from pilot.client import Matchmaker, Reply, Unreachable
from pilot.gpus import GpuSource
from pilot.outbox import Delivery, Outbox, Verdict, deliver, deliver_asking
from pilot.runner import Assignment, RunnerSettings, TaskResult, TaskRun
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
    version: str = ""


class Wakeup:
    """Wakes the loop from task threads and from signal handlers. A pipe, because writing to
    it takes no lock, and a signal handler may interrupt the loop while it holds one."""

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


@dataclass
class RunningTask:
    """An attempt this pilot runs, as the loop follows it."""

    attempt_id: int
    passkey: str
    task_id: int
    label: str
    claim: Claim
    run: TaskRun
    asked_at: float
    heartbeat_interval: float
    next_heartbeat: float
    void: str | None = None
    thread: threading.Thread | None = None


@dataclass
class Finished:
    task: RunningTask
    result: TaskResult | None
    delivery: Delivery | None


@dataclass
class Pending:
    """A report waiting in the outbox, with what the overhead figure needs."""

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
        self._running: dict[int, RunningTask] = {}
        self._finished: collections.deque[Finished] = collections.deque()
        self._pending: dict[int, Pending] = {}
        self._wake = Wakeup()
        self._drain_asked: str | None = None
        self._drain_started: float | None = None
        self._started = clock()
        self._unregistered_since = self._started
        self._last_busy = self._started
        self._asked_since_busy = False  # an idle pilot leaves only after asking at least once
        self._next_ask = 0.0
        self._next_register = 0.0
        self._deliver_after = 0.0
        self._ask_backoff = Backoff(cap=self.settings.max_backoff)
        self._register_backoff = Backoff(cap=self.settings.max_backoff)
        self._deliver_backoff = Backoff(cap=self.settings.max_backoff)
        self._token_refused = False

    # ------------------------------------------------------------ control

    def drain(self, why: str = "asked to stop") -> None:
        """Stop asking, stop the running tasks (reported pilot_lost), deliver, leave."""
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
                if self._over(self.clock()):
                    break
                self._wake.wait(self._sleep(self.clock()))
            return self._leave()
        finally:
            self._abandon_running()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._wake.close()
            self.client.close()

    def _abandon_running(self) -> None:
        """Only when the loop itself failed: stop the tasks rather than leave them orphaned;
        their reports stay in the outbox for the next pilot on this scratch."""
        for task in self._running.values():
            task.run.stop(ErrorClass.PILOT_LOST, "the pilot failed while running it")
        for task in self._running.values():
            if task.thread is not None:
                task.thread.join(self.settings.runner.kill_grace + 5)

    def _stop_asking(self, reason: str, message: str, exit_code: int = EXIT_OK) -> None:
        if self.stop is None:
            self.stop = Stop(reason, message, exit_code, self.clock())
            log.info("no more asking for work: %s: %s", reason, message)

    def _start_drain(self, now: float) -> None:
        self._drain_started = now
        why = self._drain_asked or "asked to stop"
        self._stop_asking("drained", why)
        self.client.timeout = min(self.client.timeout, QUICK_TIMEOUT)
        for task in self._running.values():
            task.run.stop(ErrorClass.PILOT_LOST, f"the pilot was stopped ({why}) while running "
                                                 "it; the task is requeued")
        if self._running:
            log.info("%s: stopping %d running tasks", why, len(self._running))

    def _over(self, now: float) -> bool:
        if self.stop is None or self._running or self._finished:
            return False
        if not self._pending:
            return True
        if self._drain_started is not None:
            return now >= self._drain_started + self.settings.drain_patience
        return now >= self.stop.since + self.settings.delivery_patience

    def _sleep(self, now: float) -> float:
        due = [now + MAX_SLEEP]
        if self._drain_started is None:
            due.extend(task.next_heartbeat for task in self._running.values() if not task.void)
        if self._pending:
            due.append(self._deliver_after)
        if self.stop is None:
            due.append(self._next_register if self.pilot_id is None else self._next_ask)
            if not self._running and self._asked_since_busy:
                due.append(self._last_busy + self.settings.idle_timeout)
        elif self._pending and not self._running:
            due.append(self.stop.since + self.settings.delivery_patience)
        if self._drain_started is not None:
            due.append(self._drain_started + self.settings.drain_patience)
        return min(due) - now

    # ------------------------------------------------------------ asking

    def _register_or_ask(self, now: float) -> None:
        if self.pilot_id is None:
            if now >= self._next_register:
                self._register(now)
            return
        seconds = self._ask_due(now)
        if seconds is None:
            return
        asked = self.clock()
        self._asked_since_busy = True
        try:
            reply = self.client.ask(self.pilot_id, self.claims.offer())
        except Unreachable as err:
            delay = self._ask_backoff.next()
            self._next_ask = now + delay
            log.warning("%s; asking again in %.1fs", err, delay)
            return
        self._ask_backoff.reset()
        self._answered(reply, now, asked, seconds)

    def _ask_due(self, now: float) -> int | None:
        """The seconds left in the slot when it is time to ask for work (registered, still
        asking, and something is free), else None; stops asking when it is time for that."""
        if self.stop is not None or self.pilot_id is None:
            return None
        seconds = self.slot.seconds_left()
        if seconds < self.settings.min_seconds:
            self._stop_asking("lifetime", f"{seconds}s left in the slot, too little for a task")
            return None
        if not self._running and self._asked_since_busy and \
                now - self._last_busy >= self.settings.idle_timeout:
            self._stop_asking("idle", "no work for "
                              f"{format_duration(self.settings.idle_timeout)}")
            return None
        if now < self._next_ask:
            return None
        if not self.claims.can_offer():
            if not self._running:
                free = self.claims.free()
                self._stop_asking("empty slot", f"the slot offers nothing a task could use "
                                  f"({free.cpus} CPUs, {free.memory} bytes of memory, "
                                  f"{free.disk} bytes of disk); see floe pilot --probe",
                                  EXIT_ERROR)
            self._next_ask = math.inf  # until a task ends and frees something
            return None
        return seconds

    def _answered(self, reply: Reply, now: float, asked: float, seconds: int) -> None:
        """Act on the answer to an ask (its own, or the one inside a report)."""
        if reply.ok:
            attempt = reply.data.get("attempt")
            if attempt is not None:
                self._last_busy = now
                self._asked_since_busy = False
                self._next_ask = now
                self._start(attempt, asked)
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
        self._last_busy = now
        self._asked_since_busy = False
        self._next_ask = now
        log.info("registered as pilot %s at site %s: %d CPUs, %.1f GiB memory, %d GPUs, %s left",
                 self.pilot_id, reply.data.get("site"), slot.cpus, slot.memory / 2**30,
                 len(slot.gpus), format_duration(slot.seconds_left()))

    # ------------------------------------------------------------ running

    def _start(self, attempt: Mapping[str, Any], asked_at: float) -> None:
        attempt_id, passkey = int(attempt["id"]), str(attempt["passkey"])
        label = f"dataset {attempt.get('dataset')} job {attempt.get('job')} task " \
                f"{attempt.get('task')}"
        if self._drain_asked:
            self._give_back(attempt_id, passkey, label, "the pilot was told to stop as it "
                                                        "got it")
            return
        try:
            claim = self.claims.claim(Requirements.from_dict(attempt["requirements"]))
        except ClaimError as err:
            self._give_back(attempt_id, passkey, label, str(err))
            return
        # The attempt's requirements, not the spec's, are the ones in force: they have grown
        # if an earlier attempt was killed for overuse.
        spec = dict(attempt["spec"], requirements=attempt["requirements"])
        assignment = Assignment(
            task=spec, steering=dict(attempt.get("steering") or {}), system=self.settings.system,
            args=job_args(attempt["job"], attempt["dataset"], attempt["jobs_submitted"],
                          attempt["task"], attempt_id))
        run = TaskRun(assignment, self.work.task_dir(attempt_id), gpus=claim.gpus,
                      gpu_source=self.gpu_source, settings=self.settings.runner,
                      supervisor=self.supervisor)
        interval = float(attempt.get("heartbeat_interval") or self.heartbeat_interval)
        task = RunningTask(attempt_id, passkey, int(attempt["task_id"]), label, claim, run,
                           asked_at, interval, asked_at + interval)
        self._running[attempt_id] = task
        log.info("attempt %s (%s): started%s", attempt_id, label,
                 f" on GPUs {', '.join(g.uuid for g in claim.gpus)}" if claim.gpus else "")
        task.thread = threading.Thread(target=self._execute, args=(task,), daemon=True,
                                       name=f"attempt-{attempt_id}")
        task.thread.start()

    def _give_back(self, attempt_id: int, passkey: str, label: str, why: str) -> None:
        """Report an attempt the pilot will not run as lost, so that it is requeued at once."""
        log.warning("attempt %s (%s): not run: %s", attempt_id, label, why)
        self.counts[ErrorClass.PILOT_LOST.value] += 1
        self._pending[attempt_id] = Pending(self._keep(attempt_id, passkey, lost_report(
            f"pilot {self.pilot_id} could not run it: {why}")))

    def _execute(self, task: RunningTask) -> None:
        """A task's thread: run it, keep its report in the outbox, clear its scratch."""
        result: TaskResult | None = None
        delivery = None
        try:
            try:
                result = task.run.run()
                report = report_of(result)
            except Exception as err:  # a fault of the pilot, not of the task: requeue it
                log.exception("attempt %s: the pilot failed running it", task.attempt_id)
                report = lost_report(f"pilot {self.pilot_id} failed while running it: {err}")
            if task.void is None:
                delivery = self._keep(task.attempt_id, task.passkey, report,
                                      self._long_logs(result))
        finally:
            shutil.rmtree(task.run.scratch, ignore_errors=True)
            self._finished.append(Finished(task, result, delivery))
            self._wake.notify()

    def _long_logs(self, result: TaskResult | None) -> dict[str, Path]:
        """The logs too long for the report's tails: they are uploaded whole."""
        if result is None:
            return {}
        logs = {}
        for stream, path in (("stdout", result.stdout_path), ("stderr", result.stderr_path)):
            with contextlib.suppress(OSError):
                if os.path.getsize(path) > self.settings.runner.tail_bytes:
                    logs[stream] = Path(path)
        return logs

    def _keep(self, attempt_id: int, passkey: str, report: dict[str, Any],
              logs: Mapping[str, Path] | None = None) -> Delivery:
        try:
            return self.outbox.put(attempt_id, passkey, report, logs)
        except OSError as err:
            log.error("attempt %s: cannot keep its report in %s (%s); it will be sent from "
                      "memory only", attempt_id, self.outbox.directory, err.strerror or err)
            return Delivery(attempt_id, passkey, report)

    def _collect(self, now: float) -> None:
        while self._finished:
            done = self._finished.popleft()
            task = done.task
            self._running.pop(task.attempt_id, None)
            self.claims.release(task.claim)
            self._last_busy = now
            self._asked_since_busy = False
            self._next_ask = min(self._next_ask, now)
            if done.delivery is None:
                self.counts["void"] += 1
                log.warning("attempt %s (%s): killed, void on the matchmaker (%s); not "
                            "reported", task.attempt_id, task.label, task.void)
                continue
            result = done.result
            error = result.error_class if result is not None else ErrorClass.PILOT_LOST
            message = result.error_message if result is not None else "the pilot failed"
            self.counts["ok" if error is None else error.value] += 1
            self.streak.record(task.task_id, error, message)
            if error is None:
                log.info("attempt %s (%s): done in %.2fs", task.attempt_id, task.label,
                         result.usage.wall_time)
            else:
                log.info("attempt %s (%s): %s: %s", task.attempt_id, task.label, error.value,
                         message)
            self._pending[task.attempt_id] = Pending(
                done.delivery, task.asked_at, result.usage.wall_time if result else 0.0)
            if self.streak.suspect:
                self._stop_asking("suspect node", self.streak.describe(), EXIT_SUSPECT)

    # ------------------------------------------------------------ talking

    def _deliver(self, now: float) -> None:
        if now < self._deliver_after:
            return
        for attempt_id in sorted(self._pending):
            pending = self._pending[attempt_id]
            # A report of a task this pilot just ran asks for the next one when asking is due.
            seconds = self._ask_due(now) if pending.asked_at is not None else None
            answer = None
            if seconds is None:
                verdict, words = deliver(self.client, self.outbox, pending.delivery)
            else:
                asked = self.clock()
                self._asked_since_busy = True
                verdict, words, answer = deliver_asking(self.client, self.outbox,
                                                        pending.delivery, self.claims.offer())
            if verdict is Verdict.RETRY:
                delay = self._deliver_backoff.next()
                self._deliver_after = now + delay
                log.warning("%d reports wait: %s; trying again in %.1fs", len(self._pending),
                            words, delay)
                return
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
            if answer is not None:
                self._ask_backoff.reset()
                self._answered(answer, now, asked, seconds)

    def _send_heartbeats(self, now: float) -> None:
        for task in list(self._running.values()):
            if task.void or now < task.next_heartbeat or self._drain_started is not None:
                continue
            task.next_heartbeat = now + task.heartbeat_interval
            try:
                reply = self.client.heartbeat(task.attempt_id, task.passkey,
                                              task.run.usage().to_dict())
            except Unreachable as err:
                log.warning("attempt %s: no heartbeat: %s", task.attempt_id, err)
                continue
            if reply.ok:
                interval = reply.data.get("heartbeat_interval")
                if interval:
                    task.heartbeat_interval = float(interval)
            elif reply.status in (403, 404, 409):
                task.void = reply.error
                task.run.stop(ErrorClass.RESET, f"void on the matchmaker: {reply.error}")
                log.warning("attempt %s (%s): the matchmaker says %s; killing it",
                            task.attempt_id, task.label, reply.error)
            else:
                log.warning("attempt %s: heartbeat refused: %s", task.attempt_id, reply.error)

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
