"""The local plugin: pilots are processes on this machine, for the demo and single workstations.

Each pilot runs in its own session and process group under a small /bin/sh wrapper that writes
the pilot's exit status when it ends. The plugin keeps one record per pilot in a state directory
(`<workdir>/local` unless the `state_dir` option names another, which factories may share):
`<batch id>.json` says which factory and shape the pilot belongs to and which process it is (pid
plus start time, so that a reused pid is never mistaken for it); `<batch id>.exit` appears when
it ends. `status` reads /proc, `remove` signals the whole process group (SIGTERM, then SIGKILL
after `kill_grace` seconds). Finished pilots stay listed for `keep_finished` seconds, as a batch
system keeps them for a while, then their records go.

There is no queue and no enforcement here: a pilot starts at once, and it learns its shape's
limits from the FLOE_SHAPE_* variables. It gets a small environment (PATH, HOME, the locale) plus
what the caller gives, not the whole environment of the factory.

A pilot of a shape with GPUs gets its own: the machine's devices are those the `gpus` option
lists (UUIDs as `nvidia-smi -L` prints them, or indices), or by default those NVML reports;
each pilot's record names the devices it was given, and its CUDA_VISIBLE_DEVICES names them.
No two live pilots (of any factory sharing the state directory) hold the same device: a shape
that needs more than are free is not started (`room`) until a pilot holding some ends.

With `run_as`, each pilot runs as that other account (through `runuser` when the factory runs
as root, else `sudo -n`, which needs a sudoers rule), in that account's home: the factory's
workdir and its records stay this account's only, and nothing of them need be readable by the
pilots, as on a cluster without a shared filesystem.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from floe.plugins.base import (
    BatchError,
    BatchPlugin,
    PilotInfo,
    PilotShape,
    PilotState,
    PluginConfigError,
    PluginSettings,
    check_environment_name,
)
from floe.plugins.jobs import Job

# Runs the pilot's script in a subshell and records how it ended in "$1", the exit file.
_WRAPPER = 'floe_exit_file=$1\n(\n{body}\n)\necho $? > "$floe_exit_file"\n'
# The same, the script run by a shell of another account (`{switch}`), which reads it from this
# here-document: it never sits in a file or a command line.
_AS_ACCOUNT = ('floe_exit_file=$1\n{switch} /bin/sh -s <<\'FLOE_PILOT_END\'\ncd || exit 97\n'
               '{exports}\n{body}\nFLOE_PILOT_END\necho $? > "$floe_exit_file"\n')
_KILL_WAIT = 10.0  # seconds for SIGKILLed processes to be gone
_ACCOUNT_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_PASSED_ON = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "SHELL")


@dataclass(frozen=True)
class LocalOptions:
    """Site options for local pilots."""

    state_dir: str = ""
    kill_grace: float = 5.0
    keep_finished: float = 300.0
    run_as: str = ""
    gpus: object = "auto"
    """The machine's GPUs to give pilots: a list of device UUIDs or indices, or "auto" (those
    NVML reports; none where it cannot be used)."""


def process_start(pid: int) -> int | None:
    """When a live process started (clock ticks since boot); None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may itself hold spaces and parentheses.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _alive(record: dict) -> bool:
    """Whether the pilot a record names is still running (the same process: pid and start)."""
    return record.get("start") is not None \
        and process_start(int(record["pid"])) == record["start"]


def nvml_devices() -> tuple[list[str], str]:
    """The UUIDs of the GPUs NVML reports on this machine, and a few words on where they come
    from (or why there are none)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecated distribution's import warning
            import pynvml
    except ImportError:
        return [], "pynvml is not importable"
    try:
        pynvml.nvmlInit()
        try:
            uuids = [pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index))
                     for index in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except (pynvml.NVMLError, OSError) as err:
        return [], f"NVML cannot be used: {err}"
    uuids = [uuid.decode() if isinstance(uuid, bytes) else str(uuid) for uuid in uuids]
    return uuids, f"NVML: {len(uuids)} GPUs"


def group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is left in process group `pgid`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


class LocalPlugin(BatchPlugin):
    system = "local"
    Options = LocalOptions
    options: LocalOptions

    def __init__(self, settings: PluginSettings) -> None:
        super().__init__(settings)
        if settings.ssh is not None:
            raise PluginConfigError("the local plugin starts pilots on this machine: ssh is for "
                                    "the slurm, sge, pbs and htcondor plugins")
        if self.options.kill_grace < 0 or self.options.keep_finished < 0:
            raise PluginConfigError("local options kill_grace and keep_finished must not be "
                                    "negative")
        if self.options.run_as and not _ACCOUNT_RE.fullmatch(self.options.run_as):
            raise PluginConfigError(f"local option run_as: {self.options.run_as!r} is not an "
                                    "account name")
        self.state_dir = Path(self.options.state_dir or Path(settings.workdir) / "local")
        gpus = self.options.gpus
        if gpus != "auto" and not (isinstance(gpus, list) and all(
                isinstance(g, str) and g.strip() and "," not in g for g in gpus)):
            raise PluginConfigError('local option gpus: "auto" or a list of device UUIDs or '
                                    'indices, as ["GPU-8a3f...", "GPU-51c2..."]')
        self._devices: tuple[list[str], str] | None = None
        # Our own children, so that they are reaped and do not linger as zombies.
        self._children: dict[str, subprocess.Popen] = {}

    def devices(self) -> tuple[list[str], str]:
        """The machine's GPUs to give pilots, and where that list comes from."""
        if self._devices is None:
            listed = self.options.gpus
            self._devices = ((list(listed), "the local plugin's gpus option")
                             if isinstance(listed, list) else nvml_devices())
        return self._devices

    def room(self, shape: PilotShape) -> tuple[int | None, str]:
        if not shape.gpus:
            return None, ""
        devices, source = self.devices()
        if not devices:
            return 0, (f"waiting for GPUs: this machine has none to give ({source}); list "
                       "them in the local plugin's gpus option")
        held = self._held_gpus() & set(devices)
        return (len(devices) - len(held)) // shape.gpus, (
            f"waiting for GPUs: the machine has {len(devices)} ({source}), live pilots hold "
            f"{len(held)}, and a {shape.name} pilot needs {shape.gpus}")

    def _held_gpus(self) -> set[str]:
        """The devices that live pilots hold, of every factory sharing the state directory."""
        held: set[str] = set()
        for path in self.state_dir.glob("*.json"):
            record = self._record(path)
            if record and record.get("gpus") and not self._path(path.stem, "exit").exists() \
                    and _alive(record):
                held.update(record["gpus"])
        return held

    def submit(self, shape: PilotShape, job: Job) -> list[str]:
        if job.count <= 0:
            return []
        if shape.gpus:
            with self._gpu_lock():
                return self._submit(shape, job)
        return self._submit(shape, job)

    @contextlib.contextmanager
    def _gpu_lock(self) -> Iterator[None]:
        """Held while GPUs are chosen and their pilots recorded, against other factories."""
        path = self.state_dir / "gpus.lock"
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            path.touch()
        except OSError as exc:
            raise BatchError(f"no pilot was started: cannot create {exc.filename}, where local "
                             f"pilots keep their records: {exc.strerror}.") from exc
        with open(path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _submit(self, shape: PilotShape, job: Job) -> list[str]:
        for name in job.environment:
            check_environment_name(name)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            logs = self.pilot_dir("logs")
        except OSError as exc:
            raise BatchError(f"no pilot was started: cannot create {exc.filename}, where local "
                             f"pilots keep their records and logs: {exc.strerror}.") from exc
        base = {name: os.environ[name] for name in _PASSED_ON if name in os.environ}
        batch_ids: list[str] = []
        devices, source = self.devices() if shape.gpus else ([], "")
        held = self._held_gpus() if shape.gpus else set()
        free = [device for device in devices if device not in held]
        for index in range(job.count):
            batch_id = secrets.token_hex(6)
            pilot_env = {**base, **self.pilot_environment(shape), **job.environment,
                         "FLOE_BATCH_ID": batch_id}
            gpus, free = free[:shape.gpus], free[shape.gpus:]
            if shape.gpus and len(gpus) < shape.gpus:
                raise BatchError(f"{len(batch_ids)} of {job.count} {shape.name} pilots started: "
                                 f"the machine's other GPUs ({source}) are held by live "
                                 "pilots", submitted=batch_ids)
            if gpus:
                pilot_env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
            argv = ["/bin/sh", "-s", str(self._path(batch_id, "exit"))]
            log = logs / f"{self.tag(shape)}-{batch_id}.out"
            try:
                with open(log, "wb") as output:
                    child = subprocess.Popen(
                        argv, env=pilot_env, stdin=subprocess.PIPE, stdout=output,
                        stderr=subprocess.STDOUT, cwd=self.settings.workdir,
                        start_new_session=True)
                # The script on the shell's input, not in a file: it holds the pilot's token.
                with child.stdin:
                    child.stdin.write(self._wrapped(job.script(index), pilot_env).encode())
            except (OSError, ValueError) as exc:  # ValueError: a NUL in the command or env
                raise BatchError(f"the pilot could not be started: {exc}.", argv,
                                 submitted=batch_ids) from exc
            record = {"factory": self.settings.factory_id, "shape": shape.name,
                      "pid": child.pid, "start": process_start(child.pid),
                      "submitted": time.time(), "log": str(log), "gpus": gpus}
            try:
                self._path(batch_id, "json").write_text(json.dumps(record))
            except OSError as exc:
                # Without its record, status() and remove() would never see this pilot.
                self._signal(child.pid, signal.SIGKILL)
                child.wait()
                raise BatchError(f"pilot {batch_id} was stopped as it started: its record "
                                 f"cannot be written: {exc}.", argv,
                                 submitted=batch_ids) from exc
            self._children[batch_id] = child
            batch_ids.append(batch_id)
        return batch_ids

    def _wrapped(self, body: str, env: dict[str, str]) -> str:
        """The wrapper's script around a pilot's `body` (as the `run_as` account, if set)."""
        account = self.options.run_as
        if not account:
            return _WRAPPER.format(body=body)
        where = f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/bin:/sbin:/bin"
        switch = f"{shutil.which('runuser', path=where) or 'runuser'} -u {account} --" \
            if os.geteuid() == 0 else \
            f"{shutil.which('sudo', path=where) or 'sudo'} -n -H -u {account} --"
        exports = "\n".join(f"export {name}={shlex.quote(value)}"
                            for name, value in sorted(env.items()) if name != "HOME")
        return _AS_ACCOUNT.format(switch=switch, exports=exports, body=body)

    def status(self) -> dict[str, PilotInfo]:
        for child in self._children.values():
            child.poll()
        pilots = {}
        for path in sorted(self.state_dir.glob("*.json")):
            batch_id = path.stem
            record = self._record(path)
            if record is None or record.get("factory") != self.settings.factory_id:
                continue
            info = self._info(batch_id, record)
            if info is not None:
                pilots[batch_id] = info
        return pilots

    def _info(self, batch_id: str, record: dict) -> PilotInfo | None:
        exit_file = self._path(batch_id, "exit")
        pid = int(record["pid"])
        if not exit_file.exists() and not _alive(record):
            # Ended without its wrapper seeing it: killed from outside, or the machine restarted.
            exit_file.write_text("lost\n")
        if exit_file.exists():
            ended = exit_file.stat().st_mtime
            if time.time() - ended > self.options.keep_finished:
                self._forget(batch_id)
                return None
            ending = exit_file.read_text().strip()  # an exit status, "removed" or "lost"
            detail = f"exit status {ending}" if ending.isdigit() else ending
            state = PilotState.FINISHED
        else:
            state, detail = PilotState.RUNNING, f"pid {pid}"
        return PilotInfo(batch_id=batch_id, state=state, shape=str(record["shape"]),
                         submitted=record["submitted"], started=record["submitted"],
                         detail=detail)

    def _remove(self, batch_ids: list[str]) -> None:
        groups = {}
        for batch_id in batch_ids:
            record = self._record(self._path(batch_id, "json"))
            if record is not None:
                groups[batch_id] = int(record["pid"])  # the wrapper leads its own group
                self._signal(groups[batch_id], signal.SIGTERM)
        self._wait_for_groups(groups.values(), self.options.kill_grace)
        for pgid in groups.values():
            self._signal(pgid, signal.SIGKILL)
        # SIGKILL takes effect when the processes are next scheduled, not at once.
        self._wait_for_groups(groups.values(), _KILL_WAIT)
        for batch_id in groups:
            exit_file = self._path(batch_id, "exit")
            if not exit_file.exists():
                exit_file.write_text("removed\n")
            child = self._children.get(batch_id)
            if child is not None:
                child.poll()

    @staticmethod
    def _wait_for_groups(groups: Iterable[int], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while any(group_alive(pgid) for pgid in groups) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _signal(self, pgid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            try:
                os.killpg(pgid, signum)
            except PermissionError as exc:
                raise BatchError(f"cannot signal pilot process group {pgid}: {exc}.") from exc

    def _forget(self, batch_id: str) -> None:
        for suffix in ("json", "exit"):
            self._path(batch_id, suffix).unlink(missing_ok=True)
        self._children.pop(batch_id, None)

    def _path(self, batch_id: str, suffix: str) -> Path:
        return self.state_dir / f"{batch_id}.{suffix}"

    @staticmethod
    def _record(path: Path) -> dict | None:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None
