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
import math
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from config.factory import SITE_TOKEN_VARIABLE
from config.resources import GIB, MIB

_FACTORY_ID_RE = re.compile(r"^[A-Za-z0-9_.]{1,40}$")
_SHAPE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STDERR_LIMIT = 2000
FACTORY_SECRETS = (SITE_TOKEN_VARIABLE, "FLOE_TOKEN", "FLOE_PILOT_TOKEN")
"""Variables of the factory's own environment that never reach a batch command (or a job)."""
SECRET_VARIABLES = ("FLOE_PILOT_TOKEN",)
"""Pilot variables a plugin must not put where other users of the batch system can read them;
a plugin that cannot keep them private passes `<NAME>_FILE`, naming a file, instead."""


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
        if not _SHAPE_NAME_RE.match(self.name):
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

    def __post_init__(self) -> None:
        if not _FACTORY_ID_RE.match(self.factory_id):
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
    caller can still track them.
    """

    def __init__(self, summary: str, command: Sequence[str] = (), returncode: int | None = None,
                 stderr: str = "", submitted: Sequence[str] = (),
                 stdout: str | None = None) -> None:
        self.summary = summary
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
        super().__init__("\n".join(lines))

    def with_submitted(self, submitted: Sequence[str]) -> BatchError:
        """The same failure, recording the pilots that did get into the queue."""
        return BatchError(self.summary, self.command, self.returncode, self.stderr, submitted,
                          self.stdout)


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

    # The verbs.

    @abc.abstractmethod
    def submit(self, shape: PilotShape, count: int, command: list[str],
               env: dict[str, str]) -> list[str]:
        """Queues `count` pilots of `shape` that each run `command` with `env` added to their
        environment; returns their batch ids."""

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
        """The batch command to run: from `commands_dir` when set, else as found on PATH."""
        if self.settings.commands_dir is not None:
            return str(Path(self.settings.commands_dir) / name)
        return shutil.which(name) or name

    def run(self, argv: Sequence[str]) -> str:
        """Runs one batch command and returns its standard output; any failure is a BatchError."""
        argv = [self.command_path(argv[0]), *argv[1:]]
        name = Path(argv[0]).name
        workdir = Path(self.settings.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            # Run in the working dir so that whatever a batch system writes relative to the
            # submit directory lands there, not wherever the factory was started.
            done = subprocess.run(argv, capture_output=True, text=True, cwd=workdir,
                                  env=command_environment(),
                                  timeout=self.settings.command_timeout, check=False)
        except FileNotFoundError as exc:
            raise BatchError(
                f"{name} was not found: install the {self.system} client commands or set "
                "commands_dir to where they are.", argv) from exc
        except subprocess.TimeoutExpired as exc:
            raise BatchError(
                f"{name} did not answer within {self.settings.command_timeout:g} s "
                "(command_timeout); the batch system may be overloaded or down.", argv,
                stderr=_text(exc.stderr)) from exc
        except OSError as exc:
            raise BatchError(f"{name} could not be run: {exc}.", argv) from exc
        if done.returncode != 0:
            raise BatchError(f"{name} failed with exit code {done.returncode}.", argv,
                             done.returncode, done.stderr, stdout=done.stdout)
        return done.stdout

    def unparsable(self, argv: Sequence[str], what: str, output: str) -> BatchError:
        """The error for batch-command output this plugin cannot read."""
        name = Path(argv[0]).name
        return BatchError(f"{name} printed {what} that the {self.system} plugin cannot read: "
                          f"{output.strip()[:200]!r}", argv)

    def pilot_dir(self, kind: str) -> Path:
        """A directory under the working dir for this factory's `kind` ("scripts", "logs")."""
        path = Path(self.settings.workdir) / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

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



def command_environment() -> dict[str, str]:
    """The factory's environment less its secrets, for the batch commands: some submit
    commands hand the submitter's whole environment to the job (Slurm's qsub wrapper does), and
    no task may ever see the site's token."""
    return {name: value for name, value in os.environ.items() if name not in FACTORY_SECRETS}


def check_environment_name(name: str) -> None:
    """Refuses an environment variable name that a shell could not export."""
    if not _ENV_NAME_RE.match(name):
        raise PluginConfigError(
            f"environment variable name {name!r} is not valid in a shell: use letters, "
            "digits and '_', not starting with a digit")


def megabytes(nbytes: int) -> int:
    """Whole MiB, rounded up, as the batch systems take memory ("M" = MiB for all of them)."""
    return max(1, math.ceil(nbytes / MIB))


def _natural_key(batch_id: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", batch_id))


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
