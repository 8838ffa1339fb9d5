"""The SLURM plugin: pilots are sbatch scripts (templates/slurm.sh), read back with squeue and
removed with scancel.

A pilot asks for one node, one task with the shape's CPUs (`--cpus-per-task`), its memory with
headroom (`--mem`), its walltime with overhead (`--time`, whole minutes) and its GPUs (`--gpus`).
It runs with `--export=NONE`: SLURM gives it the user's login environment instead of the
factory's, so nothing of the factory's own environment (its site token) leaks into jobs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from floe.plugins.base import (
    PilotInfo,
    PilotShape,
    PilotState,
    megabytes,
    timestamp,
)
from floe.plugins.script import ScriptPlugin

_STATES = {
    PilotState.QUEUED: ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED"),
    PilotState.RUNNING: ("RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"),
    PilotState.HELD: ("SUSPENDED", "STOPPED", "REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD"),
    PilotState.FINISHED: ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL",
                          "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED"),
}
STATES = {word: state for state, words in _STATES.items() for word in words}
# A pending job held by a user or an admin stays PENDING in SLURM; only its reason says so.
_HELD_REASONS = ("JobHeldUser", "JobHeldAdmin")
_FIELDS = "%i|%T|%r|%V|%S|%j"  # the job name last: only it may contain the separator
_JOB_ID_RE = re.compile(r"^\d+(_\d+)?$")


@dataclass(frozen=True)
class SlurmOptions:
    """Site options for SLURM. `request_disk` adds `--tmp` (only where nodes declare TmpDisk:
    elsewhere SLURM refuses every such job)."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    request_disk: bool = False


class SlurmPlugin(ScriptPlugin):
    system = "slurm"
    Options = SlurmOptions
    options: SlurmOptions
    template = "slurm.sh"
    directive_prefix = "#SBATCH"
    keeps_off_hosts = True

    def directives(self, shape: PilotShape, log_stem: PurePosixPath) -> list[str]:
        lines = [
            f"--job-name={self.tag(shape)}",
            "--nodes=1",
            "--ntasks=1",
            f"--cpus-per-task={shape.cpus}",
            f"--mem={megabytes(self.memory_request(shape))}M",
            f"--time={math.ceil(self.walltime_request(shape) / 60)}",
            f"--output={log_stem}-%j.out",
            f"--error={log_stem}-%j.err",
            "--export=NONE",
        ]
        if shape.gpus:
            lines.append(f"--gpus={shape.gpus}")
        if self.options.request_disk and shape.disk:
            lines.append(f"--tmp={megabytes(shape.disk)}M")
        for name in ("partition", "account", "qos"):
            value = getattr(self.options, name)
            if value:
                lines.append(f"--{name}={value}")
        if self.avoid_hosts:
            lines.append(f"--exclude={','.join(sorted(self.avoid_hosts))}")
        return lines

    def submit_argv(self, script: PurePosixPath, log: str) -> list[str]:
        return ["sbatch", "--parsable", str(script)]

    def test_argv(self, script: PurePosixPath) -> list[str]:
        return ["sbatch", "--test-only", str(script)]

    def parse_submitted(self, argv: Sequence[str], output: str, log: str) -> list[str]:
        # --parsable prints "id" or "id;cluster" on a federation.
        batch_id = output.strip().split(";")[0]
        if not _JOB_ID_RE.match(batch_id):
            raise self.unparsable(argv, "a job id", output)
        return [batch_id]

    def status(self) -> dict[str, PilotInfo]:
        argv = ["squeue", "--noheader", "--states=all", f"--user={self.user()}",
                f"--format={_FIELDS}"]
        output = self.run(argv)
        pilots = {}
        for line in output.splitlines():
            if not line.strip():
                continue
            parts = line.split("|", 5)
            if len(parts) != 6 or not parts[0]:
                raise self.unparsable(argv, "a line", line)
            batch_id, word, reason, submitted, started, name = parts
            shape = self.shape_of(name)
            if shape is None:
                continue
            state = STATES.get(word, PilotState.UNKNOWN)
            if state is PilotState.QUEUED and reason in _HELD_REASONS:
                state = PilotState.HELD
            pilots[batch_id] = PilotInfo(
                batch_id=batch_id, state=state, shape=shape, submitted=timestamp(submitted),
                # For a pending job %S is only the scheduler's guess of a future start.
                started=None if state in (PilotState.QUEUED, PilotState.HELD)
                else timestamp(started),
                detail=word if reason in ("None", "") else f"{word} ({reason})")
        return pilots

    def _remove(self, batch_ids: list[str]) -> None:
        self.run(["scancel", *batch_ids])
