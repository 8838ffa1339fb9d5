"""Run one task of one job: resolve it, stage its inputs, run its modules, store its outputs.

`TaskRun` is the same for the pilot's online loop (tasks in lanes, several side by side, one
`Supervisor` for the slot) and for `floe run` (one task alone). It runs each module as a new
session in the task's scratch directory with its own environment, samples the process tree while
it waits (the wait itself ends the moment the module exits, so a short task pays no sampling
interval), lets the supervisor stop it for overuse, and returns a `TaskResult` with everything
the attempt's record needs. Errors come back classed: task_error (the task's own command or
config), staging_error (a file could not be moved), resource_overuse (killed for its usage).
The pilot's `Guardian`, when given, watches each module while it runs, so that the module's
tree is ended even when the pilot is killed (SIGKILL) and cannot end it itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from floe.config.expressions import ExpressionError, evaluate_tree
from floe.config.protocol import MAX_WARNING_LENGTH, MAX_WARNINGS, cut_utf8
from floe.config.resources import Requirements, Usage
from floe.config.states import ErrorClass
from floe.pilot import staging
from floe.pilot.environment import process_markers, read_statistics, task_base, task_environment
from floe.pilot.gpus import Gpu, GpuSource
from floe.pilot.guardian import Guardian
from floe.pilot.limits import Overuse, TaskLoad
from floe.pilot.proctree import SHARED_TABLE, ProcessTable, ProcessTree
from floe.pilot.scratch import Scratch
from floe.pilot.supervisor import Supervisor

STATS_NAME = "floe.stats.json"
FIRST_SAMPLE = 0.02
EXTERNAL_SIGNAL_GRACE = 2.0
"""Seconds a task killed by a signal the pilot did not send waits for the pilot's own stop."""
_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass(frozen=True)
class Assignment:
    """One task of one job to run: the normalized task config and its expression scope."""

    task: dict
    steering: dict = field(default_factory=dict)
    args: dict = field(default_factory=dict)
    system: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Assignment:
        """From {"task": raw, "steering": ..., "args": ..., "system": ...}."""
        return cls(task=dict(data["task"]), steering=dict(data.get("steering") or {}),
                   args=dict(data.get("args") or {}), system=dict(data.get("system") or {}))

    @property
    def name(self) -> str:
        return str(self.task.get("name", ""))

    @cached_property
    def requirements(self) -> Requirements:
        return Requirements.from_dict(self.task.get("requirements") or {})


@dataclass(frozen=True)
class RunnerSettings:
    """How the runner measures, kills and transfers. `environ` is the environment modules
    start from (less the pilot's secrets); by default the pilot's own as it is when the first
    module starts."""

    sample_interval: float = 1.0
    kill_grace: float = 5.0
    transfer_timeout: float = 60.0
    transfer_retries: int = 2
    tail_bytes: int = 64 * 1024
    environ: Mapping[str, str] | None = None
    keep_outputs_in: Path | None = None
    """Outputs are kept under this directory (`staging.kept_path`) instead of being stored at
    their URLs, and inputs found kept there are read from it (`floe run`, trying a task out
    without writing over production's files)."""

    @cached_property
    def base_environment(self) -> dict[str, str]:
        """`environ` without the pilot's secrets, worked out once (see `task_base`)."""
        return task_base(os.environ if self.environ is None else self.environ)


@dataclass
class TaskResult:
    """The outcome of one attempt. `error_class` is None exactly when the task succeeded."""

    task: str
    exit_code: int | None
    error_class: ErrorClass | None
    error_message: str
    usage: Usage
    overuse: Overuse | None
    statistics: dict[str, float]
    stdout_tail: str
    stderr_tail: str
    outputs: list[dict[str, Any]]
    start_time: float
    end_time: float
    scratch: str
    stdout_path: str
    stderr_path: str
    warnings: list[str] = field(default_factory=list)
    """What was left out of the result and why (a statistic that is not a number...)."""

    @property
    def ok(self) -> bool:
        return self.error_class is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "exit_code": self.exit_code,
            "error_class": self.error_class.value if self.error_class else None,
            "error_message": self.error_message, "usage": self.usage.to_dict(),
            "overuse": self.overuse.to_dict() if self.overuse else None,
            "statistics": dict(self.statistics), "warnings": list(self.warnings),
            "stdout_tail": self.stdout_tail,
            "stderr_tail": self.stderr_tail, "outputs": [dict(o) for o in self.outputs],
            "start_time": self.start_time, "end_time": self.end_time, "scratch": self.scratch,
            "stdout_path": self.stdout_path, "stderr_path": self.stderr_path,
        }


class _Failed(Exception):
    def __init__(self, error_class: ErrorClass, message: str, exit_code: int | None = None,
                 overuse: Overuse | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.exit_code = exit_code
        self.overuse = overuse


class TaskRun:
    """One attempt of one task in its scratch directory; `run()` blocks until it is over.

    `load()` and `stop()` may be called from other threads while `run()` runs: the supervisor
    uses them to apply the limits, the online loop to abandon a task. `on_spawn` is called, in
    the thread of `run()`, once the first module's process has started.
    """

    def __init__(
        self,
        assignment: Assignment,
        scratch: str | Path | Scratch,
        *,
        gpus: Sequence[Gpu] = (),
        gpu_source: GpuSource | None = None,
        settings: RunnerSettings | None = None,
        supervisor: Supervisor | None = None,
        process_table: ProcessTable = SHARED_TABLE,
        guardian: Guardian | None = None,
        on_spawn: Callable[[], None] | None = None,
    ) -> None:
        self.assignment = assignment
        # A path given is this run's own directory, left in place when the run is over; a
        # Scratch given belongs to the caller, who decides what becomes of it.
        self._own_scratch = not isinstance(scratch, Scratch)
        self.scratch_dir = Scratch(scratch) if not isinstance(scratch, Scratch) else scratch
        self.scratch = self.scratch_dir.path
        self.gpus = tuple(gpus)
        self.gpu_source = gpu_source
        self.settings = settings or RunnerSettings()
        self.requirements = assignment.requirements
        self.supervisor = supervisor or Supervisor.alone(self.requirements)
        self.process_table = process_table
        self.guardian = guardian
        self._on_spawn = on_spawn
        self.stdout_path = self.scratch_dir.stdout_path
        self.stderr_path = self.scratch_dir.stderr_path
        self.stats_path = self.scratch / STATS_NAME
        self._lock = threading.Lock()
        self._stopped: _Failed | None = None
        self._gpu_baseline: dict[str, int] = {}
        self._wake_read, self._wake_write = -1, -1
        self._started = 0.0
        self._memory = self._disk = 0
        self._usage = Usage()
        self._cpu_done = 0.0  # CPU seconds of the modules that have finished
        self._last_gpu_sample = 0.0
        self.warnings: list[str] = []
        """What was left out of the result and why (reported with it, never a failure)."""
        self._unsaid = 0

    # ------------------------------------------------------------ other threads

    def load(self) -> TaskLoad:
        """What the task requested and uses now, for the limits policy."""
        return TaskLoad(
            key=id(self), memory_request=self.requirements.memory,
            disk_request=self.requirements.disk, walltime=self.requirements.walltime,
            memory=self._memory, disk=self._disk,
            elapsed=time.monotonic() - self._started if self._started else 0.0,
            peak_memory=self._usage.peak_memory, peak_disk=self._usage.peak_disk,
        )

    def usage(self) -> Usage:
        """What the task has used so far (a copy), for the heartbeats of the online loop."""
        usage = self._usage
        return Usage(cpu_time=usage.cpu_time,
                     wall_time=time.monotonic() - self._started if self._started else 0.0,
                     peak_memory=usage.peak_memory, peak_disk=usage.peak_disk,
                     peak_gpu_memory=usage.peak_gpu_memory, gpu_time=usage.gpu_time)

    def stop(self, error_class: ErrorClass, message: str,
             overuse: Overuse | None = None) -> None:
        """End the task as soon as possible: its process tree is killed and the result carries
        this error. The first call wins; later ones are ignored."""
        with self._lock:
            if self._stopped is not None:
                return
            self._stopped = _Failed(error_class, message, overuse=overuse)
            if self._wake_write >= 0:
                # A full pipe means a wake-up is pending already.
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_write, b"x")

    # ------------------------------------------------------------ the run

    def run(self) -> TaskResult:
        start = time.time()
        self._started = time.monotonic()
        exit_code: int | None = 0
        failure: _Failed | None = None
        outputs: list[dict[str, Any]] = []
        statistics: dict[str, float] = {}
        self._wake_read, self._wake_write = _wake_pipe()
        if self.gpu_source is not None and self.gpus:
            self._gpu_baseline = self.gpu_source.device_memory(self.gpus)
        self.supervisor.add(self)
        logs: tuple[int, ...] = ()
        try:
            try:
                logs = out, err = self._open_logs()
                resolved = self._resolve()
                self._stage_inputs(resolved["inputs"])
                for position, module in enumerate(resolved["modules"]):
                    self._run_module(position, module, resolved["env"], out, err, statistics)
                self._measure_disk()
                outputs = self._store_outputs(resolved["outputs"])
            except _Failed as failed:
                failure = failed
                exit_code = failed.exit_code
            finally:
                self.supervisor.remove(self)
                with self._lock:
                    os.close(self._wake_read)
                    os.close(self._wake_write)
                    self._wake_read = self._wake_write = -1
            self._usage.wall_time = time.monotonic() - self._started
            tails = [_tail(fd, self.settings.tail_bytes) for fd in logs] + ["", ""]
        finally:
            if self._own_scratch:
                self.scratch_dir.close()
        return TaskResult(
            task=self.assignment.name, exit_code=exit_code,
            error_class=failure.error_class if failure else None,
            error_message=failure.message if failure else "",
            usage=self._usage, overuse=failure.overuse if failure else None,
            statistics=statistics, warnings=self._said(), stdout_tail=tails[0],
            stderr_tail=tails[1],
            outputs=outputs, start_time=start, end_time=time.time(), scratch=str(self.scratch),
            stdout_path=str(self.stdout_path), stderr_path=str(self.stderr_path),
        )

    def _open_logs(self) -> tuple[int, int]:
        """The scratch directory ready and its logs open (see `Scratch.prepare`)."""
        try:
            return self.scratch_dir.prepare()
        except OSError as err:
            raise _Failed(ErrorClass.STAGING_ERROR, f"cannot prepare the scratch directory "
                                                    f"{self.scratch}: {err.strerror or err}"
                          ) from None

    def _check_stopped(self) -> None:
        if self._stopped is not None:
            raise self._stopped

    def _resolve(self) -> dict[str, Any]:
        """Every expression of the task evaluated in its scope, with the shapes checked."""
        task = self.assignment.task
        parts = {"env": task.get("env") or {}, "inputs": task.get("inputs") or [],
                 "outputs": task.get("outputs") or [], "modules": task.get("modules") or []}
        try:
            resolved = evaluate_tree(parts, steering=self.assignment.steering,
                                     args=self.assignment.args, system=self.assignment.system)
        except ExpressionError as err:
            raise _Failed(ErrorClass.TASK_ERROR, f"task {self.assignment.name}: {err}") from None
        resolved["env"] = {name: _text(value) for name, value in resolved["env"].items()}
        for kind in ("inputs", "outputs"):
            for position, entry in enumerate(resolved[kind]):
                for key in ("url", "local"):
                    if not isinstance(entry.get(key), str):
                        raise _Failed(ErrorClass.TASK_ERROR,
                                      f"{kind}[{position}].{key} is {entry.get(key)!r} after "
                                      "evaluating its expressions; it must be a string")
        if not resolved["modules"]:
            raise _Failed(ErrorClass.TASK_ERROR, f"task {self.assignment.name} has no modules")
        return resolved

    def _stage_inputs(self, inputs: list[dict[str, Any]]) -> None:
        for entry in inputs:
            self._check_stopped()
            try:
                target = staging.scratch_path(self.scratch, entry["local"])
                url = entry["url"]
                kept = self.settings.keep_outputs_in
                copy = None if kept is None else staging.kept_path(kept, url)
                if copy is not None and copy.is_file():  # an earlier task's output, kept
                    url = str(copy)
                    self._warn(f"input {entry['local']}: read from {url}, kept by an earlier "
                               f"floe run, not from {entry['url']}")
                staging.fetch(url, target, timeout=self.settings.transfer_timeout,
                              retries=self.settings.transfer_retries)
                if entry.get("checksum"):
                    staging.verify(target, entry["checksum"], f"input {entry['url']}")
            except staging.StagingError as err:
                raise _Failed(ErrorClass.STAGING_ERROR, str(err)) from None

    def _store_outputs(self, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        stored = []
        for entry in outputs:
            self._check_stopped()
            try:
                path = staging.scratch_path(self.scratch, entry["local"])
                if not path.is_file():
                    raise staging.StagingError(f"output {entry['local']} was not written by the "
                                               "task, so it cannot be stored")
                if entry.get("checksum"):
                    staging.verify(path, entry["checksum"], f"output {entry['local']}")
                sha256 = staging.digest(path)
                size = path.stat().st_size
                kept = self.settings.keep_outputs_in
                where = entry["url"] if kept is None else str(staging.kept_path(kept,
                                                                                entry["url"]))
                staging.store(path, where, timeout=self.settings.transfer_timeout,
                              retries=self.settings.transfer_retries)
            except staging.StagingError as err:
                raise _Failed(ErrorClass.STAGING_ERROR, str(err)) from None
            stored.append({"local": entry["local"], "url": entry["url"], "sha256": sha256,
                           "size": size, **({} if kept is None else {"kept": where})})
        return stored

    # ------------------------------------------------------------ modules

    def _run_module(self, position: int, module: Mapping[str, Any], task_env: Mapping[str, str],
                    out: int, err: int, statistics: dict[str, float]) -> None:
        self._check_stopped()
        name = module.get("name") or f"module{position}"
        command = module.get("command")
        argv = [_text(part) for part in command] if isinstance(command, list) else [
            "/bin/sh", "-c", _text(command)]
        module_env = {k: _text(v) for k, v in (module.get("env") or {}).items()}
        env = task_environment(
            self.settings.base_environment, scratch=self.scratch, cpus=self.requirements.cpus,
            gpus=self.gpus, stats_file=self.stats_path, args=self.assignment.args,
            task_env=task_env, module_env=module_env)
        started = time.monotonic()
        try:
            process = subprocess.Popen(argv, cwd=self.scratch, env=env, stdin=_devnull(),
                                       stdout=out, stderr=err, start_new_session=True)
        except (OSError, ValueError) as error:  # ValueError: a NUL in an argument or value
            code = 127 if isinstance(error, FileNotFoundError) else 126
            why = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise _Failed(ErrorClass.TASK_ERROR, f"module {name}: cannot run {argv[0]!r}: "
                                                 f"{why}", code) from None
        if self.guardian is not None:
            self.guardian.watch(process.pid)
        tree = ProcessTree(process.pid, self.process_table, started=started)
        if self._on_spawn is not None:
            on_spawn, self._on_spawn = self._on_spawn, None
            on_spawn()
        self._last_gpu_sample = 0.0
        status, rusage = self._wait(process.pid, tree)
        process.returncode = code = os.waitstatus_to_exitcode(status)
        self._memory = 0
        # Whatever the module left running goes with it, in its session or out of it.
        escaped = tree.end(process_markers(env), self.settings.kill_grace)
        if escaped:
            self._warn(f"module {name}: ended {len(escaped)} of its processes left running in "
                       "sessions of their own: "
                       + ", ".join(f"{command} (pid {pid})" for pid, command in escaped.items()))
        if self.guardian is not None:
            self.guardian.release(process.pid)
        module_cpu = max(tree.peak_cpu_time, rusage.ru_utime + rusage.ru_stime)
        self._cpu_done += module_cpu
        self._usage.cpu_time = self._cpu_done
        if -code in _ENDING_SIGNALS and self._stopped is None:
            # A batch system ending the job signals all of its processes, the task's perhaps
            # before the pilot's: give the pilot a moment to say that it is being stopped, so
            # that the task is requeued rather than failed.
            self._await_stop(EXTERNAL_SIGNAL_GRACE)
        self._check_stopped_with(code)
        written, warnings = read_statistics(self.stats_path, statistics)
        with contextlib.suppress(OSError):
            self.stats_path.unlink(missing_ok=True)
        statistics.update(written)
        for warning in warnings:
            self._warn(f"module {name}: {warning}")
        if code < 0:
            raise _Failed(ErrorClass.TASK_ERROR,
                          f"module {name} was killed by signal {_signal_name(-code)}", code)
        if code > 0:
            raise _Failed(ErrorClass.TASK_ERROR, f"module {name} exited with code {code}", code)

    def _warn(self, warning: str) -> None:
        """Note something left out of the result (past MAX_WARNINGS, only counted)."""
        if len(self.warnings) < MAX_WARNINGS - 1:
            self.warnings.append(warning[:MAX_WARNING_LENGTH])
        else:
            self._unsaid += 1

    def _said(self) -> list[str]:
        """The warnings as reported: those noted, and how many more there were."""
        more = [f"{self._unsaid} more warnings like these"] if self._unsaid else []
        return self.warnings + more

    def _await_stop(self, seconds: float) -> None:
        """Wait until `stop()` is called or `seconds` pass."""
        deadline = time.monotonic() + seconds
        while self._stopped is None and self._wake_read >= 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([self._wake_read], [], [], left)
            if ready:
                _drain(self._wake_read)

    def _check_stopped_with(self, code: int) -> None:
        if self._stopped is not None:
            self._stopped.exit_code = code
            raise self._stopped

    def _wait(self, pid: int, tree: ProcessTree) -> tuple[int, Any]:
        """Wait for the module's process, sampling its tree every interval; returns its wait
        status and resource usage. Killing for a stop happens here, in the task's thread."""
        pidfd = _pidfd(pid)
        # The first samples come early so that a module of a second still gets measured; the
        # interval then doubles up to the configured one.
        interval = min(FIRST_SAMPLE, self.settings.sample_interval)
        try:
            while True:
                reaped = self._wait_exit(pid, pidfd, self._timeout(interval))
                interval = min(interval * 2, self.settings.sample_interval)
                if reaped is not None:
                    return reaped
                if self._stopped is not None:
                    tree.kill(self.settings.kill_grace)
                    _, status, rusage = os.wait4(pid, 0)
                    return status, rusage
                self._sample(tree)
                self.supervisor.check()
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _timeout(self, interval: float) -> float:
        """Until the next sample, or until the walltime runs out if that comes first."""
        elapsed = time.monotonic() - self._started
        overrun = self.requirements.walltime + self.supervisor.walltime_grace - elapsed
        return max(0.005, min(interval, overrun + 0.005))

    def _wait_exit(self, pid: int, pidfd: int | None, timeout: float) -> tuple[int, Any] | None:
        """(status, rusage) once the process exits, None after `timeout` or a stop."""
        if pidfd is not None:
            ready, _, _ = select.select([pidfd, self._wake_read], [], [], timeout)
            if self._wake_read in ready:
                _drain(self._wake_read)
            done, status, rusage = os.wait4(pid, os.WNOHANG)
            return (status, rusage) if done else None
        # Kernels before 5.3 have no pidfd: poll, quickly at first so that short modules
        # still return at once.
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            done, status, rusage = os.wait4(pid, os.WNOHANG)
            if done:
                return status, rusage
            left = deadline - time.monotonic()
            if left <= 0 or self._stopped is not None:
                return None
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)

    def _sample(self, tree: ProcessTree) -> None:
        sample = tree.sample()
        usage = self._usage
        self._memory = sample.rss
        usage.peak_memory = max(usage.peak_memory, sample.rss)
        usage.cpu_time = max(usage.cpu_time, self._cpu_done + sample.cpu_time)
        self._measure_disk()
        if self.gpu_source is not None and self.gpus:
            used = self._gpu_memory(sample.pids)
            usage.peak_gpu_memory = max(usage.peak_gpu_memory, sum(used.values()))
            now = time.monotonic()
            busy = sum(1 for value in used.values() if value > 0)
            usage.gpu_time += busy * (now - (self._last_gpu_sample or now))
            self._last_gpu_sample = now

    def _gpu_memory(self, pids: frozenset[int]) -> dict[str, int]:
        """GPU memory of the tree per claimed GPU. Inside a container NVML names processes by
        the host's pids, which match none of ours: then what the claimed (and so exclusively
        ours) GPUs use beyond what they used when the task started is the task's."""
        assert self.gpu_source is not None
        used = self.gpu_source.process_memory(self.gpus, pids)
        if any(used.values()):
            return used
        now_used = self.gpu_source.device_memory(self.gpus)
        return {uuid: max(0, value - self._gpu_baseline.get(uuid, value))
                for uuid, value in now_used.items()}

    def _measure_disk(self) -> None:
        self._disk = disk_usage(self.scratch)
        self._usage.peak_disk = max(self._usage.peak_disk, self._disk)


def run_task(assignment: Assignment | Mapping[str, Any], scratch: str | Path,
             **options: Any) -> TaskResult:
    """Run one task alone and return its result (see `TaskRun` for the options)."""
    if not isinstance(assignment, Assignment):
        assignment = Assignment.from_dict(assignment)
    return TaskRun(assignment, scratch, **options).run()


def disk_usage(directory: Path) -> int:
    """Bytes the files under `directory` occupy on disk."""
    total = 0
    pending = [str(directory)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        stats = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += stats.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
        except OSError:
            continue
    return total


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 64):
            pass


def _text(value: Any) -> str:
    """A value as it goes into argv or the environment: strings as they are, anything else as
    JSON writes it (so 3, true, [1, 2])."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _signal_name(number: int) -> str:
    try:
        return f"{number} ({signal.Signals(number).name})"
    except ValueError:
        return str(number)


def _tail(fd: int, limit: int) -> str:
    """The last `limit` bytes of an open file, from the first character that starts in them
    (the server keeps tails the same way: config.protocol)."""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, limit, max(0, size - limit)) if size else b""
    except OSError:
        return ""
    return cut_utf8(data, size > limit)


_DEVNULL: list[int] = []
_DEVNULL_LOCK = threading.Lock()


def _devnull() -> int:
    """One descriptor of /dev/null for every module's stdin (Popen dups it), opened once."""
    with _DEVNULL_LOCK:
        if not _DEVNULL:
            _DEVNULL.append(os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
        return _DEVNULL[0]


def _wake_pipe() -> tuple[int, int]:
    """A pipe with both ends non-blocking (one system call where the platform has pipe2)."""
    if hasattr(os, "pipe2"):
        return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    return read, write
