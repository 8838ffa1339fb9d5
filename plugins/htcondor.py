"""The HTCondor plugin: pilots are jobs submitted through the `htcondor2` Python bindings (the
only module the htcondor 25.x wheel ships), read back with a schedd query and removed with a
schedd action.

A pilot's submit description asks for the shape's CPUs, memory with headroom (MiB), disk (KiB)
and GPUs; `allowed_job_duration` holds the job once it runs past the shape's walltime plus
overhead. Pilots carry `+FloeFactory` and `+FloeShape` attributes (and the job batch name
`floe-<factory>-<shape>`), and every query and removal is constrained to this factory's tag.

`whole_slots` grabs whole partitionable slots instead: each request becomes "all the p-slot has"
(`TotalSlotCpus`, `TotalSlotMemory`, `TotalSlotDisk`, `TotalSlotGPUs` of the slot it matches,
falling back to the shape where a static slot lacks them), and `requirements` keeps such pilots
off slots smaller than the shape. The pilot then measures and offers the whole slot.

`submit_attributes` adds site-specific submit commands (accounting group, requirements, ...),
`schedd` and `pool` name a schedd other than the local one. The pilot token never goes into the
job ad (any user of the schedd can read those): it travels as a file of this user's, transferred
into the pilot's scratch directory. Whatever the bindings raise (no
schedd: "Unable to locate local daemon") comes back as a BatchError.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import classad2
import htcondor2

from plugins.base import (
    SECRET_VARIABLES,
    BatchError,
    BatchPlugin,
    PilotInfo,
    PilotShape,
    PilotState,
    PluginConfigError,
    PluginSettings,
    check_environment_name,
    megabytes,
    parse_options,
)

STATES = {
    1: PilotState.QUEUED,    # Idle
    2: PilotState.RUNNING,
    3: PilotState.FINISHED,  # Removed
    4: PilotState.FINISHED,  # Completed
    5: PilotState.HELD,
    6: PilotState.RUNNING,   # Transferring output
    7: PilotState.HELD,      # Suspended
}
_PROJECTION = ["ClusterId", "ProcId", "JobStatus", "FloeShape", "QDate", "JobCurrentStartDate",
               "HoldReason"]
_COMMAND_RE = re.compile(r"^\+?[A-Za-z_][\w.]*$")  # a submit command or +Attribute name
T = TypeVar("T")


@dataclass(frozen=True)
class HTCondorOptions:
    """Site options for HTCondor."""

    schedd: str = ""
    pool: str = ""
    whole_slots: bool = False
    submit_attributes: Mapping[str, str] = field(default_factory=dict)


def quote_argument(text: str) -> str:
    """One word in HTCondor's "new" quoting for arguments and environment values."""
    return "'" + text.replace("'", "''").replace('"', '""') + "'"


class HTCondorPlugin(BatchPlugin):
    system = "htcondor"

    def __init__(self, settings: PluginSettings) -> None:
        super().__init__(settings)
        self.options: HTCondorOptions = parse_options(HTCondorOptions, settings.options,
                                                      self.system)
        if not isinstance(self.options.submit_attributes, Mapping):
            raise PluginConfigError("htcondor option submit_attributes must map submit "
                                    "commands to values, e.g. {'+AccountingGroup': '\"g.u\"'}")

    def description(self, shape: PilotShape, command: list[str],
                    env: dict[str, str]) -> htcondor2.Submit:
        """The submit description for pilots of `shape` running `command` with `env`."""
        if not command:
            raise PluginConfigError("the pilot command is empty: give the program and arguments")
        program = command[0]
        # A bare program name is found on the execute node's PATH through env.
        executable, arguments = (program, command[1:]) if os.path.isabs(program) \
            else ("/usr/bin/env", command)
        pilot_env = {**self.pilot_environment(shape), **env,
                     "FLOE_BATCH_ID": "$(ClusterId).$(ProcId)"}
        for name in pilot_env:
            check_environment_name(name)
        logs = self.pilot_dir("logs")
        stem = logs / self.tag(shape)
        secrets = self._secret_files(shape, pilot_env)
        memory = megabytes(self.memory_request(shape))
        disk_kib = max(1, math.ceil(shape.disk / 1024))
        commands = {
            "universe": "vanilla",
            "executable": executable,
            "transfer_executable": "false",
            "arguments": '"' + " ".join(quote_argument(a) for a in arguments) + '"',
            "environment": '"' + " ".join(f"{name}={quote_argument(value)}"
                                          for name, value in sorted(pilot_env.items())) + '"',
            "output": f"{stem}-$(ClusterId).$(ProcId).out",
            "error": f"{stem}-$(ClusterId).$(ProcId).err",
            "log": f"{stem}.log",
            "batch_name": self.tag(shape),
            "+FloeFactory": classad2.quote(self.settings.factory_id),
            "+FloeShape": classad2.quote(shape.name),
            "allowed_job_duration": str(self.walltime_request(shape)),
        }
        if secrets:
            commands.update({"should_transfer_files": "YES",
                             "when_to_transfer_output": "ON_EXIT",
                             "transfer_input_files": ",".join(str(p) for p in secrets)})
        if self.options.whole_slots:
            commands.update(self._whole_slot_requests(shape, memory, disk_kib))
        else:
            commands.update({"request_cpus": str(shape.cpus), "request_memory": str(memory),
                             "request_disk": str(disk_kib)})
            if shape.gpus:
                commands["request_gpus"] = str(shape.gpus)
        # Requirements from every source must all hold; any other command replaces the default.
        requirements = [commands.pop("requirements", "")]
        for name, value in [*self.options.submit_attributes.items(),
                            *(self._directive(shape, line) for line in shape.directives)]:
            if name == "requirements":
                requirements.append(value)
            else:
                commands[name] = value
        requirements = [r for r in requirements if r]
        if requirements:
            commands["requirements"] = " && ".join(f"({r})" for r in requirements)
        return htcondor2.Submit(commands)

    def _secret_files(self, shape: PilotShape, pilot_env: dict[str, str]) -> list[Path]:
        """Move secrets out of the environment, which every user of the schedd can read in the
        job ad, into files only this user reads, transferred to the pilot's scratch directory;
        the pilot finds each through `<NAME>_FILE`. Returns the files."""
        files = []
        for name in SECRET_VARIABLES:
            if name not in pilot_env:
                continue
            value = pilot_env.pop(name)
            digest = hashlib.sha256(value.encode()).hexdigest()[:16]
            path = self.pilot_dir("secrets") / f"{self.tag(shape)}-{name.lower()}-{digest}"
            if not path.exists():
                path.touch(mode=0o600)
                path.chmod(0o600)
                path.write_text(value)
            pilot_env[f"{name}_FILE"] = path.name
            files.append(path)
        return files

    @staticmethod
    def _directive(shape: PilotShape, line: str) -> tuple[str, str]:
        name, sep, value = line.partition("=")
        if not sep or not _COMMAND_RE.match(name.strip()):
            raise PluginConfigError(
                f"htcondor directive {line!r} of shape {shape.name!r} is not a submit command: "
                "write it as 'name = value'")
        return name.strip(), value.strip()

    @staticmethod
    def _whole_slot_requests(shape: PilotShape, memory: int, disk_kib: int) -> dict[str, str]:
        wanted = {"Cpus": shape.cpus, "Memory": memory, "Disk": disk_kib}
        if shape.gpus:
            wanted["GPUs"] = shape.gpus
        commands = {
            f"request_{name.lower()}":
                f"ifThenElse(isUndefined(TotalSlot{name}), {least}, TotalSlot{name})"
            for name, least in wanted.items()
        }
        commands["requirements"] = " && ".join(
            f"(isUndefined(TotalSlot{name}) || TotalSlot{name} >= {least})"
            for name, least in wanted.items())
        return commands

    def submit(self, shape: PilotShape, count: int, command: list[str],
               env: dict[str, str]) -> list[str]:
        if count <= 0:
            return []
        description = self.description(shape, command, env)
        result = self._call("submit", "submit pilots",
                            lambda: self._schedd().submit(description, count=count))
        first = result.first_proc()
        return [f"{result.cluster()}.{first + index}" for index in range(result.num_procs())]

    def status(self) -> dict[str, PilotInfo]:
        ads = self._call("query", "list pilots", lambda: self._schedd().query(
            constraint=self._constraint(), projection=_PROJECTION))
        pilots = {}
        for ad in ads:
            batch_id = f"{ad['ClusterId']}.{ad['ProcId']}"
            status = int(ad.get("JobStatus", 0))
            started = ad.get("JobCurrentStartDate")
            pilots[batch_id] = PilotInfo(
                batch_id=batch_id, state=STATES.get(status, PilotState.UNKNOWN),
                shape=str(ad.get("FloeShape", "")),
                submitted=float(ad["QDate"]) if "QDate" in ad else None,
                started=float(started) if started is not None else None,
                detail=str(ad.get("HoldReason", "")) or f"JobStatus {status}")
        return pilots

    def _remove(self, batch_ids: list[str]) -> None:
        # Constrained to our tag as well, so that a stray id can never reach another's job.
        wanted = " || ".join(f"(ClusterId == {cluster} && ProcId == {proc})"
                             for cluster, proc in (i.split(".") for i in batch_ids))
        constraint = f"{self._constraint()} && ({wanted})"
        self._call("act", "remove pilots",
                   lambda: self._schedd().act(htcondor2.JobAction.Remove, constraint))

    def _constraint(self) -> str:
        return f"FloeFactory == {classad2.quote(self.settings.factory_id)}"

    def _schedd(self) -> htcondor2.Schedd:
        if not self.options.schedd and not self.options.pool:
            return htcondor2.Schedd()
        collector = htcondor2.Collector(self.options.pool or None)
        location = collector.locate(htcondor2.DaemonType.Schedd, self.options.schedd or None)
        return htcondor2.Schedd(location)

    def _call(self, method: str, what: str, action: Callable[[], T]) -> T:
        where = self.options.schedd or "the local schedd"
        if self.options.pool:
            where += f" of pool {self.options.pool}"
        try:
            return action()
        except (htcondor2.HTCondorException, RuntimeError, ValueError) as exc:
            raise BatchError(f"HTCondor could not {what} through {where}.",
                             [f"htcondor2.Schedd.{method}"], stderr=str(exc)) from exc

