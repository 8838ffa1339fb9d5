"""The Grid Engine plugin (SGE, Son of Grid Engine, Univa/Altair): pilots are qsub scripts
(templates/sge.sh), read back with `qstat -xml` and removed with qdel.

A pilot asks for the shape's CPUs as slots of a parallel environment that keeps them on one host
(`-pe smp N`, the name is a site option; none for one CPU), its walltime with overhead as `h_rt`,
and its memory with headroom through the site's memory resource (`h_vmem` by default). Grid
Engine counts such resources per slot, so the plugin asks for memory / cpus per slot: a 2-CPU
pilot with 768 MiB asks `-l h_vmem=384M` and gets a 768 MiB limit. `h_vmem` limits virtual
memory, which is larger than what a task really uses; sites that count memory some other way
name their resource (e.g. `mem_free`, `m_mem_free`) in `memory_resource`.
Output paths are absolute: a relative one would put the job into error (Eqw).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
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

_JOB_ID_RE = re.compile(r"^\d+(\.[\d:-]+)?$")


@dataclass(frozen=True)
class SgeOptions:
    """Site options for Grid Engine. Empty `disk_resource` means: do not ask for disk."""

    queue: str = ""
    project: str = ""
    parallel_environment: str = "smp"
    memory_resource: str = "h_vmem"
    gpu_resource: str = "gpu"
    disk_resource: str = ""


def pilot_state(letters: str) -> PilotState:
    """PilotState from qstat's state letters ("qw", "hqw", "r", "Eqw", "dr", ...)."""
    if "E" in letters:
        return PilotState.HELD
    if any(letter in letters for letter in "sST"):
        return PilotState.HELD
    if any(letter in letters for letter in "rtR"):
        return PilotState.RUNNING
    if "h" in letters:
        return PilotState.HELD
    if "q" in letters or "w" in letters:
        return PilotState.QUEUED
    return PilotState.UNKNOWN


class SgePlugin(ScriptPlugin):
    system = "sge"
    Options = SgeOptions
    options: SgeOptions
    template = "sge.sh"
    directive_prefix = "#$"
    keeps_off_hosts = True

    def directives(self, shape: PilotShape, log_stem: PurePosixPath) -> list[str]:
        options = self.options
        per_slot = math.ceil(megabytes(self.memory_request(shape)) / shape.cpus)
        lines = [
            f"-N {self.tag(shape)}",
            "-S /bin/sh",
            f"-o {log_stem}-$JOB_ID.out",
            f"-e {log_stem}-$JOB_ID.err",
            f"-l h_rt={self.walltime_request(shape)}",
            f"-l {options.memory_resource}={per_slot}M",
        ]
        if shape.cpus > 1:
            lines.append(f"-pe {options.parallel_environment} {shape.cpus}")
        if shape.gpus:
            lines.append(f"-l {options.gpu_resource}={shape.gpus}")
        if options.disk_resource and shape.disk:
            lines.append(f"-l {options.disk_resource}={math.ceil(megabytes(shape.disk))}M")
        if options.queue:
            lines.append(f"-q {options.queue}")
        if options.project:
            lines.append(f"-P {options.project}")
        if self.avoid_hosts:  # a resource expression: none of these hosts
            lines.append(f"-l h=!({'|'.join(sorted(self.avoid_hosts))})")
        return lines

    def submit_argv(self, script: PurePosixPath, log: str) -> list[str]:
        return ["qsub", "-terse", str(script)]

    def parse_submitted(self, argv: Sequence[str], output: str, log: str) -> list[str]:
        batch_id = output.strip()
        if not _JOB_ID_RE.match(batch_id):
            raise self.unparsable(argv, "a job id", output)
        return [batch_id.split(".")[0]]

    def status(self) -> dict[str, PilotInfo]:
        argv = ["qstat", "-xml", "-u", self.user()]
        output = self.run(argv)
        try:
            root = ET.fromstring(output)
        except ET.ParseError as exc:
            raise self.unparsable(argv, "XML", output) from exc
        pilots = {}
        for job in root.iter("job_list"):
            batch_id = job.findtext("JB_job_number", "").strip()
            letters = job.findtext("state", "").strip()
            if not batch_id or not letters:
                raise self.unparsable(argv, "a job without number or state",
                                      ET.tostring(job, encoding="unicode"))
            shape = self.shape_of(job.findtext("JB_name", ""))
            if shape is None:
                continue
            state = pilot_state(letters)
            pilots[batch_id] = PilotInfo(
                batch_id=batch_id, state=state, shape=shape,
                submitted=timestamp(job.findtext("JB_submission_time", "")),
                started=timestamp(job.findtext("JAT_start_time", "")),
                detail=letters)
        return pilots

    def _remove(self, batch_ids: list[str]) -> None:
        self.run(["qdel", *batch_ids])
