"""The one small interface every batch-system plugin implements, and what the plugins share.

A factory keeps a site's queue topped up with pilots through a `BatchPlugin`: `submit` puts
pilots of one `PilotShape` in the queue, `status` says where this factory's pilots stand,
`remove` takes pilots out, and `orphans` finds pilots tagged as this factory's that it no longer
tracks. Every pilot is tagged with its job name `floe-<factory_id>-<shape>`, so two factories
sharing a batch system (or a user's own jobs) are never touched. Whatever goes wrong inside the
batch system (a missing command, a refusal, a timeout, output that cannot be read) comes back as
one `BatchError`; mistakes in the settings come back as `PluginConfigError`.

The verbs block (they run the batch system's commands); an asyncio caller runs them in a thread.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import json
import math
import re
import shlex
import shutil
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from floe.config.resources import GIB, MIB
from floe.plugins.hosts import (
    SSH_FAILED,
    Host,
    HostError,
    LocalHost,
    SshHost,
    SshSettings,
    make_private,
)
from floe.plugins.jobs import Job

_FACTORY_ID_RE = re.compile(r"^[A-Za-z0-9_.]{1,40}$")
_SHAPE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STDERR_LIMIT = 2000
_TAIL_BYTES = 8192


class PilotState(enum.StrEnum):
    """Where a pilot stands in the batch system, whatever that system calls it."""

    QUEUED = "queued"
    RUNNING = "running"
    HELD = "held"          # will not run without help: held, suspended, or in error (SGE Eqw)
    FINISHED = "finished"  # ended, for whatever reason; systems forget these after a while
    UNKNOWN = "unknown"    # a state this plugin does not know how to read


@dataclass(frozen=True)
class PilotInfo:
    """One pilot as the batch system reports it. Times are seconds since the epoch."""

    batch_id: str
    state: PilotState
    shape: str
    submitted: float | None = None
    started: float | None = None
    detail: str = ""  # the batch system's own word for the state, for logs and pages


@dataclass(frozen=True)
class PilotShape:
    """One kind of pilot a site runs, from the site config. Sizes in bytes, walltime in seconds.

    `memory` is the largest task memory the shape serves; the plugin asks for some headroom above
    it. `directives` are extra submit options exactly as the batch system takes them on its
    submit command line (e.g. "--constraint=avx2" for SLURM, "-l arch=lx-amd64" for SGE);
    for HTCondor they are submit-description lines ("requirements = HasDocker").
    """

    name: str
    cpus: int = 1
    memory: int = 2 * GIB
    disk: int = 10 * GIB
    gpus: int = 0
    walltime: int = 4 * 3600
    directives: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _SHAPE_NAME_RE.fullmatch(self.name):
            raise PluginConfigError(
                f"pilot shape name {self.name!r} is not usable in a job name: use up to 40 "
                "letters, digits, '_', '.' or '-'")
        for attr in ("cpus", "memory", "walltime"):
            if getattr(self, attr) <= 0:
                raise PluginConfigError(
                    f"pilot shape {self.name!r} has {attr}={getattr(self, attr)!r}: it must be "
                    "positive")
        for attr in ("disk", "gpus"):
            if getattr(self, attr) < 0:
                raise PluginConfigError(
                    f"pilot shape {self.name!r} has {attr}={getattr(self, attr)!r}: it must not "
                    "be negative")


@dataclass(frozen=True)
class PluginSettings:
    """What every plugin needs to know, plus `options` that only one batch system understands
    (see each plugin's `Options`, e.g. SLURM's partition, account and qos).

    The batch system is asked for memory = task memory + max(task memory x memory_headroom,
    memory_headroom_min), so that a pilot tolerates a small overuse, and for walltime = shape
    walltime + walltime_overhead, so that the pilot has time to start and to report.
    """

    factory_id: str
    workdir: Path
    memory_headroom: float = 0.10
    memory_headroom_min: int = 256 * MIB
    walltime_overhead: int = 300
    command_timeout: float = 60.0
    commands_dir: Path | None = None  # where the batch commands live when not on PATH
    options: Mapping[str, Any] = field(default_factory=dict)
    ssh: SshSettings | None = None
    """The login node the batch commands run on (None: this machine)."""

    def __post_init__(self) -> None:
        if not _FACTORY_ID_RE.fullmatch(self.factory_id):
            raise PluginConfigError(
                f"factory id {self.factory_id!r} cannot tag jobs: use up to 40 letters, digits, "
                "'_' or '.' (no '-', which separates the parts of a pilot's job name)")
        if self.memory_headroom < 0 or self.memory_headroom_min < 0:
            raise PluginConfigError("memory_headroom and memory_headroom_min must not be negative")
        if self.command_timeout <= 0:
            raise PluginConfigError(
                f"command_timeout={self.command_timeout!r} must be a positive number of seconds")


class PluginConfigError(ValueError):
    """Plugin settings or a pilot shape that cannot work; the message names the field and fix."""


class BatchError(RuntimeError):
    """The batch system failed: its command is missing, refused, timed out or said nonsense.

    `submitted` holds the ids that a `submit` got into the queue before the failure, so that the
    caller can still track them; `in_doubt` counts the pilots whose submission may have
    happened (the connection to the login node dropped during it), which `settle` resolves.
    """

    def __init__(self, summary: str, command: Sequence[str] = (), returncode: int | None = None,
                 stderr: str = "", submitted: Sequence[str] = (),
                 stdout: str | None = None, in_doubt: int = 0) -> None:
        self.summary = summary
        self.in_doubt = in_doubt
        self.command = list(command)
        self.returncode = returncode
        self.stderr = stderr.strip()[-_STDERR_LIMIT:]
        self.stdout = stdout
        self.submitted = list(submitted)
        lines = [summary]
        if self.command:
            lines.append(f"  command: {shlex.join(self.command)}")
        if returncode is not None:
            lines.append(f"  exit code: {returncode}")
        if self.stderr:
            lines.append(f"  stderr: {self.stderr}")
        elif stdout and stdout.strip():
            # Some commands (SGE's qdel) say why they failed on standard output.
            lines.append(f"  output: {stdout.strip()[-_STDERR_LIMIT:]}")
        if self.submitted:
            lines.append(f"  submitted before the failure: {', '.join(self.submitted)}")
        if in_doubt:
            lines.append(f"  in doubt: {in_doubt} (the next cycle asks the batch system)")
        super().__init__("\n".join(lines))

    def with_submitted(self, submitted: Sequence[str], in_doubt: int = 0) -> BatchError:
        """The same failure, recording the pilots that did get into the queue (and those that
        may have)."""
        return BatchError(self.summary, self.command, self.returncode, self.stderr, submitted,
                          self.stdout, in_doubt)


def parse_options(options_type: type, options: Mapping[str, Any], system: str) -> Any:
    """An instance of a plugin's `Options` dataclass from the site config's mapping."""
    known = {f.name for f in dataclasses.fields(options_type)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise PluginConfigError(
            f"unknown {system} option {unknown[0]!r}; the {system} plugin knows: "
            f"{', '.join(sorted(known)) or 'none'}")
    return options_type(**options)


def timestamp(text: str) -> float | None:
    """Seconds since the epoch from an ISO-8601 time as the batch systems print it (local time
    when no zone is given), or None for their words for "not yet" (N/A, Unknown, None, ...)."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
"""A host name safe to put in a batch system's host list (nothing a shell or a submit
description could read otherwise)."""


class BatchPlugin(abc.ABC):
    """Talks to one batch system for one factory. Subclasses implement submit, status, remove."""

    system: ClassVar[str]
    Options: ClassVar[type]
    """The dataclass of this batch system's own options (`options` in the site config); its
    parsed instance is `self.options`."""

    def __init__(self, settings: PluginSettings) -> None:
        self.settings = settings
        self.tag_prefix = f"floe-{settings.factory_id}-"
        self.options = parse_options(self.Options, settings.options, self.system)
        self.host: Host = SshHost(settings.ssh, settings.factory_id) if settings.ssh \
            else LocalHost(Path(settings.workdir))
        self.doubts: dict[str, dict[str, Any]] = {}
        """Submissions whose outcome is in doubt, by key: {"shape", "argv", "log",
        "leftovers"} (only a CommandSubmitter's can be)."""
        self.avoid_hosts: frozenset[str] = frozenset()
        """Hosts new pilots are kept off (the matchmaker's black holes at this site), where
        `keeps_off_hosts`; only names of letters, digits, `.`, `_` and `-` are set here."""

    keeps_off_hosts: ClassVar[bool] = False
    """Whether this batch system can be told to keep a pilot off some hosts."""

    def avoid(self, hosts: Collection[str]) -> frozenset[str]:
        """Keep new pilots off `hosts` (those with safe names); the hosts now avoided."""
        self.avoid_hosts = frozenset(h for h in hosts if HOST_NAME.fullmatch(h))
        return self.avoid_hosts

    # The verbs.

    @abc.abstractmethod
    def submit(self, shape: PilotShape, job: Job) -> list[str]:
        """Queues the `job.count` pilots of `job` with the resources of `shape`, each running its
        script (`job.script(index)`) with `job.environment` added to its environment; returns
        their batch ids."""

    @abc.abstractmethod
    def status(self) -> dict[str, PilotInfo]:
        """This factory's pilots that the batch system still lists, by batch id. A pilot it
        no longer lists (long finished, or removed) is absent."""

    @abc.abstractmethod
    def _remove(self, batch_ids: list[str]) -> None:
        """Takes these pilots (all known to be this factory's) out of the batch system."""

    def remove(self, batch_ids: Iterable[str]) -> list[str]:
        """Removes those of `batch_ids` that are this factory's pilots and not finished yet;
        returns them. Ids of other factories' or untagged jobs are left alone."""
        wanted = set(batch_ids)
        if not wanted:
            return []
        ours = sorted(
            (batch_id for batch_id, info in self.status().items()
             if batch_id in wanted and info.state is not PilotState.FINISHED),
            key=_natural_key)
        self._remove_live(ours)
        return ours

    def orphans(self, known: set[str]) -> list[str]:
        """Pilots tagged as this factory's, not finished, that the factory does not track."""
        return sorted(
            (batch_id for batch_id, info in self.status().items()
             if batch_id not in known and info.state is not PilotState.FINISHED),
            key=_natural_key)

    def remove_orphans(self, known: set[str]) -> list[str]:
        """Removes the pilots `orphans(known)` finds; returns their ids."""
        orphans = self.orphans(known)
        self._remove_live(orphans)
        return orphans

    def _remove_live(self, batch_ids: list[str]) -> None:
        if not batch_ids:
            return
        try:
            self._remove(batch_ids)
        except BatchError:
            # The removing command fails when a pilot ended between status() and it; that is
            # no failure to remove, but a pilot that still runs afterwards is.
            still = self.status()
            if any(batch_id in still and still[batch_id].state is not PilotState.FINISHED
                   for batch_id in batch_ids):
                raise

    def check(self, shapes: Sequence[PilotShape] = ()) -> list[str]:
        """Tries the host and the batch system without submitting anything (`floe factory
        --check`), and asks it whether it would take a pilot of each of `shapes` where it can
        tell (`try_shape`): what worked, in lines; raises BatchError naming what failed."""
        said = []
        if isinstance(self.host, SshHost):
            try:
                self.host.login(self.settings.command_timeout)
            except HostError as exc:
                raise self._batch_error(exc, ["ssh", self.host.settings.host],
                                        checking=True) from exc
            workdir = self.pilot_dir("logs").parent
            said.append(f"ssh to {self.host.where} works; the factory's directory there is "
                        f"{workdir}")
        pilots = self.status()
        said.append(f"{self.system} answers on {self.host.where}: it knows {len(pilots)} "
                    f"job{'' if len(pilots) == 1 else 's'} of this factory (queued, running, "
                    "or ended lately)")
        for shape in shapes:
            taken = self.try_shape(shape)
            if taken:
                said.append(taken)
        return said

    def try_shape(self, shape: PilotShape) -> str | None:
        """Asks the batch system whether it would take a pilot of `shape` as the factory would
        submit it (the site's options, such as a partition, included), queueing nothing: a line
        saying it would, or BatchError with its refusal; None where the system cannot tell."""
        return None

    def close(self) -> None:
        """Lets go of what the plugin holds open (the connection to a login node)."""
        self.host.close()

    def settle(self) -> list[tuple[str, str]]:
        """Resolves the submissions left in doubt by a dropped connection: (shape, batch id)
        of each that the batch system took, which the caller tracks from now on. None is ever
        in doubt here (see CommandSubmitter)."""
        return []

    # What the plugins share.

    def tag(self, shape: PilotShape) -> str:
        """The job name that marks a pilot of this shape as this factory's."""
        return f"{self.tag_prefix}{shape.name}"

    def shape_of(self, job_name: str) -> str | None:
        """The shape name in one of this factory's job names; None for anybody else's job."""
        if job_name.startswith(self.tag_prefix) and len(job_name) > len(self.tag_prefix):
            return job_name[len(self.tag_prefix):]
        return None

    def memory_request(self, shape: PilotShape) -> int:
        """Bytes to ask the batch system for: the shape's memory plus the headroom."""
        headroom = max(math.ceil(shape.memory * self.settings.memory_headroom),
                       self.settings.memory_headroom_min)
        return shape.memory + headroom

    def walltime_request(self, shape: PilotShape) -> int:
        """Seconds to ask the batch system for: the shape's walltime plus the overhead."""
        return shape.walltime + self.settings.walltime_overhead

    def command_path(self, name: str) -> str:
        """The batch command to run: from `commands_dir` when set, else as found on PATH (the
        login node's, over ssh)."""
        if self.settings.commands_dir is not None:
            return str(PurePosixPath(self.settings.commands_dir) / name)
        if isinstance(self.host, SshHost):
            return name
        return shutil.which(name) or name

    def run(self, argv: Sequence[str], once: str = "") -> str:
        """Runs one batch command (in the working dir, on the plugin's host) and returns its
        standard output; any failure is a BatchError. `once`: see `plugins.hosts`."""
        argv = [self.command_path(argv[0]), *argv[1:]]
        try:
            return self.host.run(argv, self.settings.command_timeout, once)
        except HostError as exc:
            raise self._batch_error(exc, argv) from exc

    def _batch_error(self, exc: HostError, argv: Sequence[str],
                     checking: bool = False) -> BatchError:
        """The BatchError for a failure on the plugin's host, with the fix where one is known
        (`checking`: said by `floe factory --check`, which it need not recommend)."""
        name = PurePosixPath(argv[0]).name if argv else "the command"
        summary = exc.summary
        if exc.returncode == SSH_FAILED and isinstance(self.host, SshHost):
            summary += (": check that the login node is up and the ssh settings (host, port, "
                        "identity, known_hosts)"
                        + ("" if checking else ", then run `floe factory --check`"))
        elif summary.endswith(" was not found") or exc.returncode == 127:
            summary = (f"{name} was not found on {self.host.where}: install the {self.system} "
                       "client commands or set commands_dir to where they are")
        elif exc.returncode is None and " did not answer within " in summary:
            summary += " (command_timeout); the batch system may be overloaded or down"
        return BatchError(summary + ".", argv, exc.returncode, exc.stderr, stdout=exc.stdout,
                          in_doubt=int(exc.in_doubt))

    def unparsable(self, argv: Sequence[str], what: str, output: str) -> BatchError:
        """The error for batch-command output this plugin cannot read."""
        name = Path(argv[0]).name
        return BatchError(f"{name} printed {what} that the {self.system} plugin cannot read: "
                          f"{output.strip()[:200]!r}", argv)

    def user(self) -> str:
        """The account whose jobs this factory's pilots are (the login node's, over ssh)."""
        try:
            return self.host.user()
        except HostError as exc:
            raise self._batch_error(exc, ["id", "-un"]) from exc

    def pilot_logs(self, batch_id: str) -> list[PurePosixPath]:
        """Glob patterns of the pilot's output files on the plugin's host (stderr first), where
        the batch system writes or returns them into the workdir's logs."""
        logs = self.pilot_dir("logs")
        return [logs / f"*-{batch_id}.err", logs / f"*-{batch_id}.out"]

    def prune_logs(self, seconds: float, tracked: Iterable[str]) -> int:
        """Remove the output files of this factory's pilots (named `floe-<factory_id>-...`,
        ending in .out or .err) in the workdir's logs that were last written more than
        `seconds` ago, but those of the pilots in `tracked` (batch ids); how many went. A PBS
        pilot's files are known by name only to the factory process that submitted it, but
        PBS copies them there only once the pilot has ended."""
        names: set[str] = set()
        endings: set[str] = set()  # "-<batch id>.out" of a pattern "*-<batch id>.out"
        for batch_id in tracked:
            for pattern in self.pilot_logs(batch_id):
                if pattern.name.startswith("*-"):
                    endings.add(pattern.name[1:])
                else:
                    names.add(pattern.name)

        def ours_untracked(name: str) -> bool:
            if not name.startswith(self.tag_prefix) or not name.endswith((".out", ".err")) \
                    or name in names:
                return False
            return not any(name[at:] in endings for at, char in enumerate(name) if char == "-")

        try:
            logs = self.pilot_dir("logs")
        except OSError as exc:  # the local logs directory cannot be made
            raise BatchError(f"cannot use {exc.filename} for the pilots' logs "
                             f"({exc.strerror or exc}): it must be a directory this account "
                             "can write; move whatever is there aside.") from exc
        try:
            gone = [path for path in self.host.stale(logs, seconds)
                    if ours_untracked(path.name)]
            self.host.remove(gone)
        except HostError as exc:
            raise self._batch_error(exc, exc.argv) from exc
        except OSError as exc:  # a local file that cannot be removed
            raise BatchError(f"cannot remove {exc.filename}: {exc.strerror or exc}.") from exc
        return len(gone)

    def logs_where(self) -> str:
        """Where the pilots' logs are, for messages (asks the host nothing)."""
        if isinstance(self.host, SshHost):
            return f"{self.host.settings.host}:{self.host.known_workdir()}/logs"
        return str(Path(self.settings.workdir) / "logs")

    def last_words(self, batch_id: str, limit: int = 400) -> str:
        """The last line the pilot (or its launcher) wrote that says why it stopped, or ""
        (also when its logs cannot be read)."""
        for pattern in self.pilot_logs(batch_id):
            try:
                tail = self.host.tail(pattern, _TAIL_BYTES)
            except HostError:
                return ""
            if tail is None:
                continue
            said = [line.strip() for line in tail.decode(errors="replace").splitlines()
                    if line.strip()]
            for line in reversed(said):
                if "pilot:" in line:
                    return line[-limit:]
            if said:
                return said[-1][-limit:]
        return ""

    def pilot_dir(self, kind: str) -> PurePosixPath:
        """A directory under the working dir on the plugin's host for this factory's `kind`
        ("scripts", "logs"); made where it is local (the remote ones are made by what writes
        there)."""
        try:
            path = self.host.workdir() / kind
        except HostError as exc:
            raise self._batch_error(exc, ["mkdir", kind]) from exc
        if isinstance(self.host, LocalHost):
            make_private(Path(path))
        return path

    def room(self, shape: PilotShape) -> tuple[int | None, str]:
        """How many more pilots of `shape` can start now (None: as many as are asked for), and,
        when that is a limit, why: a batch system queues what it cannot start, but the local
        plugin starts pilots at once and counts the machine's free GPUs."""
        return None, ""

    def pilot_environment(self, shape: PilotShape) -> dict[str, str]:
        """Variables every pilot gets besides the caller's: who started it, and the shape it
        serves, so that it offers tasks the shape's resources and not the headroom above them.
        Each plugin adds FLOE_BATCH_ID, the id its `submit` returns for the pilot: the pilot
        registers with FLOE_BATCH_SYSTEM and it, by which the factory learns that it did."""
        return {
            "FLOE_BATCH_SYSTEM": self.system,
            "FLOE_FACTORY": self.settings.factory_id,
            "FLOE_PILOT_SHAPE": shape.name,
            "FLOE_SHAPE_CPUS": str(shape.cpus),
            "FLOE_SHAPE_MEMORY": str(shape.memory),
            "FLOE_SHAPE_DISK": str(shape.disk),
            "FLOE_SHAPE_GPUS": str(shape.gpus),
            "FLOE_SHAPE_WALLTIME": str(shape.walltime),
        }


class CommandSubmitter(BatchPlugin):
    """A plugin that submits by running a command on its host (the login node, over ssh): a
    submission cut off by a dropped connection is recorded as in doubt, in a journal
    (`<workdir>/in-doubt.json`) that outlives a restart, until `settle` learns what the
    command did."""

    def __init__(self, settings: PluginSettings) -> None:
        super().__init__(settings)
        self._doubts_file = Path(settings.workdir) / "in-doubt.json"
        self.doubts = self._read_doubts()

    def settle(self) -> list[tuple[str, str]]:
        """Resolves the submissions left in doubt by a dropped connection: (shape, batch id)
        of each that the batch system took, which the caller tracks from now on; the others
        never started. Raises BatchError while the login node cannot say."""
        taken = []
        for key, doubt in sorted(self.doubts.items()):
            try:
                output = self.host.settle(key, self.settings.command_timeout)
            except HostError as exc:
                raise self._batch_error(exc, doubt["argv"]) from exc
            if output is not None:
                taken += [(doubt["shape"], batch_id) for batch_id in
                          self.parse_submitted(doubt["argv"], output, doubt.get("log", ""))]
            self.host.remove([PurePosixPath(path) for path in doubt.get("leftovers", ())])
            del self.doubts[key]
            self._write_doubts()
        return taken

    @abc.abstractmethod
    def parse_submitted(self, argv: Sequence[str], output: str, log: str) -> list[str]:
        """The batch ids in what a submit command (`argv`) printed; `log` is the stem of the
        pilot's output files."""

    def doubt(self, key: str, shape: PilotShape, argv: Sequence[str], log: str,
              leftovers: Sequence[PurePosixPath]) -> None:
        """Records a submission (`key`, with the files to delete once it is settled) whose
        outcome is in doubt."""
        self.doubts[key] = {"shape": shape.name, "argv": list(argv), "log": log,
                            "leftovers": [str(path) for path in leftovers]}
        self._write_doubts()

    def _read_doubts(self) -> dict[str, dict[str, Any]]:
        try:
            doubts = json.loads(self._doubts_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise PluginConfigError(f"{self._doubts_file} cannot be read ({exc}): it lists "
                                    "submissions in doubt; fix or delete it") from exc
        return doubts if isinstance(doubts, dict) else {}

    def _write_doubts(self) -> None:
        self._doubts_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self._doubts_file.with_suffix(".part")
        partial.write_text(json.dumps(self.doubts))
        partial.replace(self._doubts_file)


def check_environment_name(name: str) -> None:
    """Refuses an environment variable name that a shell could not export."""
    if not _ENV_NAME_RE.fullmatch(name):
        raise PluginConfigError(
            f"environment variable name {name!r} is not valid in a shell: use letters, "
            "digits and '_', not starting with a digit")


def megabytes(nbytes: int) -> int:
    """Whole MiB, rounded up, as the batch systems take memory ("M" = MiB for all of them)."""
    return max(1, math.ceil(nbytes / MIB))


def _natural_key(batch_id: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", batch_id))

