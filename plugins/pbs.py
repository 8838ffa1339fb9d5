"""The PBS plugin (PBS Pro / OpenPBS and Torque, chosen by the `flavour` option): pilots are qsub
scripts (templates/pbs.sh), read back with qstat and removed with qdel.

The two flavours ask for resources in their own words, in one `-l` list because some qsub
front ends (Slurm's PBS wrappers) keep only the last `-l`:
  pro:    -l select=1:ncpus=N:mem=Mmb[:ngpus=G],walltime=HH:MM:SS
  torque: -l nodes=1:ppn=N[:gpus=G],mem=Mmb,walltime=HH:MM:SS
("mb" is 2^20 bytes for PBS.) The output and error paths go on qsub's command line, where every
PBS reads them; the rest is in the script's #PBS lines.

`status` first reads the short `qstat` listing (every user's jobs, one line each, names cut to
about 16 characters) to find the jobs that may be this factory's, then asks `qstat -f` about only
those: on a busy site that is much less than the full record of every job.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from floe.plugins.base import (
    BatchError,
    PilotInfo,
    PilotShape,
    PilotState,
    PluginConfigError,
    PluginSettings,
    megabytes,
)
from floe.plugins.script import ScriptPlugin

STATES = {
    "Q": PilotState.QUEUED,    # queued
    "W": PilotState.QUEUED,    # waiting for its start time
    "T": PilotState.QUEUED,    # being moved to a new location
    "R": PilotState.RUNNING,
    "B": PilotState.RUNNING,   # array job with subjobs running (PBS Pro)
    "H": PilotState.HELD,
    "S": PilotState.HELD,      # suspended
    "U": PilotState.HELD,      # suspended while the workstation is busy (PBS Pro)
    "E": PilotState.FINISHED,  # exiting after having run
    "C": PilotState.FINISHED,  # completed (Torque)
    "F": PilotState.FINISHED,  # finished (PBS Pro)
    "X": PilotState.FINISHED,  # subjob finished (PBS Pro)
}
FLAVOURS = ("pro", "torque")
_JOB_ID_RE = re.compile(r"^\d+(\[\d*\])?(\.\S+)?$")
_FULL_JOB_RE = re.compile(r"^Job Id:\s*(\S+)")
_FULL_ATTRIBUTE_RE = re.compile(r"^\s+([A-Za-z_][\w.]*) = ?(.*)$")
_UNKNOWN_JOB = 153  # PBSE_UNKJOBID as an exit status
# What qstat -f says about a job that ended since the short listing showed it.
_GONE_RE = re.compile(r"Unknown Job Id|Job has finished", re.IGNORECASE)


@dataclass(frozen=True)
class PbsOptions:
    """Site options for PBS."""

    flavour: str = "pro"
    queue: str = ""
    account: str = ""

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise PluginConfigError(
                f"pbs option flavour={self.flavour!r} is not known: use 'pro' (PBS Pro, OpenPBS) "
                "or 'torque' (Torque, and Slurm's PBS wrappers)")


@dataclass(frozen=True)
class QstatRow:
    """One line of the short `qstat` listing."""

    batch_id: str
    name: str
    user: str
    state: str
    queue: str


def parse_qstat(text: str) -> list[QstatRow]:
    """The jobs of the short `qstat` listing (Torque, PBS Pro and Slurm's wrappers all print a
    header, a line of dashes, then `id name user time state queue`; nothing at all when there
    are no jobs). Raises ValueError on text it cannot read."""
    rows: list[QstatRow] = []
    in_table = False
    for line in text.splitlines():
        if not line.strip():
            continue
        if not in_table:
            in_table = line.lstrip().startswith("---")
            continue
        fields = line.split()
        if len(fields) != 6:
            raise ValueError(f"expected 6 columns, got {line!r}")
        batch_id, name, user, _used, state, queue = fields
        rows.append(QstatRow(batch_id, name, user, state, queue))
    if text.strip() and not in_table:
        raise ValueError(f"expected a header and a line of dashes, got {text.strip()[:80]!r}")
    return rows


def parse_qstat_full(text: str) -> dict[str, dict[str, str]]:
    """Job id -> attributes from `qstat -f`. A value that PBS wraps goes on in lines that do
    not look like `name = value`; they are joined back. Raises ValueError on text outside a job."""
    jobs: dict[str, dict[str, str]] = {}
    attributes: dict[str, str] | None = None
    last = ""
    for line in text.splitlines():
        if not line.strip():
            continue
        header = _FULL_JOB_RE.match(line)
        if header:
            attributes = jobs.setdefault(header.group(1), {})
            last = ""
            continue
        if attributes is None:
            raise ValueError(f"expected 'Job Id:' first, got {line!r}")
        attribute = _FULL_ATTRIBUTE_RE.match(line)
        if attribute:
            last = attribute.group(1)
            attributes[last] = attribute.group(2).rstrip()
        elif last:
            # PBS wraps at a fixed width and starts the rest with one tab; the rest is exact.
            attributes[last] += line[1:] if line.startswith("\t") else line.strip()
        else:
            raise ValueError(f"expected 'name = value', got {line!r}")
    return jobs


def clock(seconds: int) -> str:
    """A walltime as PBS takes it: HH:MM:SS, with hours beyond 24 for days."""
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def pbs_time(text: str) -> float | None:
    """Seconds since the epoch from a qstat -f time: "Mon Nov 23 13:16:37 2026" (local time)
    or seconds since the epoch; None when absent or unreadable."""
    text = text.strip()
    if text.isdigit():
        return float(text)
    try:
        return time.mktime(time.strptime(text, "%a %b %d %H:%M:%S %Y"))
    except ValueError:
        return None


class PbsPlugin(ScriptPlugin):
    system = "pbs"
    Options = PbsOptions
    options: PbsOptions

    def __init__(self, settings: PluginSettings) -> None:
        super().__init__(settings)
        self._logs: dict[str, str] = {}  # batch id -> the stem of its output files
    template = "pbs.sh"
    directive_prefix = "#PBS"

    def resource_list(self, shape: PilotShape) -> str:
        """The `-l` list for one pilot of `shape` in this site's flavour."""
        memory = f"{megabytes(self.memory_request(shape))}mb"
        walltime = clock(self.walltime_request(shape))
        if self.options.flavour == "torque":
            node = f"nodes=1:ppn={shape.cpus}" + (f":gpus={shape.gpus}" if shape.gpus else "")
            return f"{node},mem={memory},walltime={walltime}"
        select = f"select=1:ncpus={shape.cpus}:mem={memory}"
        if shape.gpus:
            select += f":ngpus={shape.gpus}"
        return f"{select},walltime={walltime}"

    def directives(self, shape: PilotShape, log_stem: PurePosixPath) -> list[str]:
        lines = [f"-N {self.tag(shape)}", f"-l {self.resource_list(shape)}"]
        if self.options.queue:
            lines.append(f"-q {self.options.queue}")
        if self.options.account:
            lines.append(f"-A {self.options.account}")
        return lines

    def submit_argv(self, script: PurePosixPath, log: str) -> list[str]:
        # PBS cannot put the job id into these names, so each pilot gets its own.
        return ["qsub", "-o", f"{log}.out", "-e", f"{log}.err", str(script)]

    def parse_submitted(self, argv: Sequence[str], output: str, log: str) -> list[str]:
        batch_id = output.strip()
        if not _JOB_ID_RE.match(batch_id):
            raise self.unparsable(argv, "a job id", output)
        self._logs[batch_id] = log
        return [batch_id]

    def pilot_logs(self, batch_id: str) -> list[PurePosixPath]:
        """The pilot's output files, by the names given at submission (while this factory
        process remembers them)."""
        stem = self._logs.get(batch_id)
        if stem is None:
            return []
        return [PurePosixPath(f"{stem}.err"), PurePosixPath(f"{stem}.out")]

    def could_be_ours(self, name: str) -> bool:
        """Whether a name in the short listing, possibly cut short, may be one of our tags."""
        name = name.rstrip("*")  # PBS Pro marks a name it cut with "*"
        return name.startswith(self.tag_prefix) or self.tag_prefix.startswith(name)

    def status(self) -> dict[str, PilotInfo]:
        argv = ["qstat"]
        try:
            output = self.run(argv)
        except BatchError as exc:
            # Slurm's wrappers (like some Torque versions) answer an empty queue with the
            # "unknown job" status, 153, and say nothing.
            if exc.returncode != _UNKNOWN_JOB or exc.stderr or (exc.stdout or "").strip():
                raise
            output = ""
        try:
            rows = parse_qstat(output)
        except ValueError as exc:
            raise self.unparsable(argv, "a listing", str(exc)) from exc
        user = self.user()
        candidates = [row.batch_id.split(".")[0] for row in rows
                      if row.user == user and self.could_be_ours(row.name)]
        if not candidates:
            return {}
        return self._full_status(candidates, user)

    def _full_status(self, candidates: list[str], user: str) -> dict[str, PilotInfo]:
        argv = ["qstat", "-f", *candidates]
        try:
            output = self.run(argv)
        except BatchError as exc:
            # A job that ended since the short listing makes qstat -f fail for all of them;
            # it still prints the others.
            gone_only = all(_GONE_RE.search(line) for line in exc.stderr.splitlines()
                            if line.strip())
            if exc.returncode is None or not gone_only or exc.stdout is None:
                raise
            output = exc.stdout
        try:
            jobs = parse_qstat_full(output)
        except ValueError as exc:
            raise self.unparsable(argv, "a job record", str(exc)) from exc
        pilots = {}
        for batch_id, attributes in jobs.items():
            shape = self.shape_of(attributes.get("Job_Name", ""))
            owner = attributes.get("Job_Owner", "").split("@")[0]
            if shape is None or owner != user:
                continue
            letter = attributes.get("job_state", "")
            pilots[batch_id] = PilotInfo(
                batch_id=batch_id, state=STATES.get(letter, PilotState.UNKNOWN), shape=shape,
                submitted=pbs_time(attributes.get("qtime", "")),
                started=pbs_time(attributes.get("stime", attributes.get("start_time", ""))),
                detail=letter)
        return pilots

    def _remove(self, batch_ids: list[str]) -> None:
        self.run(["qdel", *batch_ids])
