"""The HTCondor plugin: pilots are jobs submitted through the `htcondor2` Python bindings (the
only module the htcondor 25.x wheel ships), read back with a schedd query and removed with a
schedd action. The bindings are the extra `floe[htcondor]` (they have no macOS wheels): this
module is imported only for a site that uses it, and says so when they are missing.

A pilot's submit description asks for the shape's CPUs, memory with headroom (MiB), disk (KiB)
and GPUs; `allowed_job_duration` holds the job once it runs past the shape's walltime plus
overhead. Pilots carry `+FloeFactory` and `+FloeShape` attributes (and the job batch name
`floe-<factory>-<shape>`), and every query and removal is constrained to this factory's tag.

`whole_slots` grabs whole partitionable slots instead: each request becomes "all the p-slot has"
(`TotalSlotCpus`, `TotalSlotMemory`, `TotalSlotDisk`, `TotalSlotGPUs` of the slot it matches,
falling back to the shape where a static slot lacks them), and `requirements` keeps such pilots
off slots smaller than the shape. The pilot then measures and offers the whole slot.

`submit_attributes` adds site-specific submit commands (accounting group, requirements, ...),
`schedd` and `pool` name a schedd other than the local one. With the site's `ssh`, the plugin
runs HTCondor's own commands on the login node instead (`condor_submit -terse`, `condor_q
-long`, `condor_rm`), with the same submit description and the same reading of the job ads.

Nothing of the factory's workdir need be readable on the execute nodes: HTCondor transfers each
pilot's launcher (its executable, which holds its own pilot token: the job ad, which any user of
the schedd can read, never does) and the pilot itself (`transfer_input_files`) into the job's
scratch directory, and brings the pilot's output back when it ends (`output`: "return", or
"discard").

Each bindings call runs in a child process that is killed when it does not answer within
`command_timeout`: the bindings keep Python's global lock while they wait on the network, so a
schedd or collector that hangs would otherwise freeze every thread of the factory, and no thread
could even notice the time running out. Whatever goes wrong (no schedd: "Unable to locate local
daemon", no answer in time, a child that dies, a job ad that cannot be read) comes back as a
BatchError.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import PurePosixPath
from typing import Any, TypeVar

from floe.plugins.base import (
    BatchError,
    CommandSubmitter,
    PilotInfo,
    PilotShape,
    PilotState,
    PluginConfigError,
    PluginSettings,
    check_environment_name,
    megabytes,
)
from floe.plugins.hosts import FACTORY_SECRETS, HostError, SshHost
from floe.plugins.jobs import Job

try:  # an extra (no macOS wheels): loaded only when a site asks for this plugin
    import classad2
    import htcondor2
except ImportError as exc:
    raise PluginConfigError(
        f"the htcondor plugin needs HTCondor's Python bindings, which this Python cannot import "
        f"({exc}): install them with pip install 'floe[htcondor]'") from exc

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
_TERSE_RE = re.compile(r"^(\d+)\.(\d+)\s*-\s*(\d+)\.(\d+)$")
# A fresh interpreter for each call: forking the factory, which runs threads, could copy a lock
# that another thread holds into a child that then waits on it forever.
_SPAWN = multiprocessing.get_context("spawn")
T = TypeVar("T")


@dataclass(frozen=True)
class HTCondorOptions:
    """Site options for HTCondor. `output`: "return" brings each pilot's stdout and stderr back
    into the factory's logs when it ends, "discard" keeps nothing."""

    schedd: str = ""
    pool: str = ""
    whole_slots: bool = False
    submit_attributes: Mapping[str, str] = field(default_factory=dict)
    output: str = "return"


def quote_argument(text: str) -> str:
    """One word in HTCondor's "new" quoting for arguments and environment values."""
    return "'" + text.replace("'", "''").replace('"', '""') + "'"


class HTCondorPlugin(CommandSubmitter):
    system = "htcondor"
    keeps_off_hosts = True
    Options = HTCondorOptions
    options: HTCondorOptions

    def __init__(self, settings: PluginSettings) -> None:
        super().__init__(settings)
        if not isinstance(self.options.submit_attributes, Mapping):
            raise PluginConfigError("htcondor option submit_attributes must map submit "
                                    "commands to values, e.g. {'+AccountingGroup': '\"g.u\"'}")
        if self.options.output not in ("return", "discard"):
            raise PluginConfigError(f"htcondor option output: expected \"return\" or "
                                    f"\"discard\", got {self.options.output!r}")
        self._written: set[PurePosixPath] = set()  # the carried files written on the host

    def description(self, shape: PilotShape, job: Job) -> htcondor2.Submit:
        """The submit description for the pilots of `job`, of `shape`: each runs its own script
        (`$(script)`, one item per pilot), and the files the job carries (the pilot) are
        transferred beside it; no file of the factory's is read on the execute node."""
        pilot_env = {**self.pilot_environment(shape), **job.environment,
                     "FLOE_BATCH_ID": "$(ClusterId).$(ProcId)"}
        for name in pilot_env:
            check_environment_name(name)
        logs = self.pilot_dir("logs")
        stem = logs / self.tag(shape)
        memory = megabytes(self.memory_request(shape))
        disk_kib = max(1, math.ceil(shape.disk / 1024))
        returned = self.options.output == "return"
        commands = {
            "universe": "vanilla",
            "executable": "$(script)",
            "transfer_executable": "true",
            "should_transfer_files": "YES",
            "when_to_transfer_output": "ON_EXIT_OR_EVICT",
            "environment": '"' + " ".join(f"{name}={quote_argument(value)}"
                                          for name, value in sorted(pilot_env.items())) + '"',
            "output": f"{stem}-$(ClusterId).$(ProcId).out" if returned else "/dev/null",
            "error": f"{stem}-$(ClusterId).$(ProcId).err" if returned else "/dev/null",
            "log": f"{stem}.log",
            "batch_name": self.tag(shape),
            "+FloeFactory": classad2.quote(self.settings.factory_id),
            "+FloeShape": classad2.quote(shape.name),
            "allowed_job_duration": str(self.walltime_request(shape)),
        }
        carried = self._carried(job)
        if carried:
            commands["transfer_input_files"] = ",".join(str(path) for path in carried)
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
        requirements += [f'Machine =!= "{host}"' for host in sorted(self.avoid_hosts)]
        requirements = [r for r in requirements if r]
        if requirements:
            commands["requirements"] = " && ".join(f"({r})" for r in requirements)
        return htcondor2.Submit(commands)

    def _carried(self, job: Job) -> list[PurePosixPath]:
        """The files the job carries, kept under the workdir by their content (the same pilot
        is written once) for HTCondor to transfer."""
        paths = []
        for name, content in job.files().items():
            digest = hashlib.sha256(content).hexdigest()[:16]
            path = self.pilot_dir("transfer") / digest / name
            if path not in self._written:
                self._put(path, content)
                self._written.add(path)
            paths.append(path)
        return paths

    def scripts(self, stem: str, job: Job) -> list[PurePosixPath]:
        """One executable per pilot, its launcher (it holds the pilot's token: this user's
        only; HTCondor transfers it, the job ad never holds the token)."""
        paths = []
        for index in range(job.count):
            path = self.pilot_dir("scripts") / f"{stem}-{index}.sh"
            self._put(path, ("#!/bin/sh\n" + job.script(index, bundle_beside=True) + "\n")
                      .encode())
            paths.append(path)
        return paths

    def _put(self, path: PurePosixPath, content: bytes) -> None:
        try:
            self.host.put(path, content)
        except HostError as exc:
            raise self._batch_error(exc, ["put", str(path)]) from exc

    @staticmethod
    def _directive(shape: PilotShape, line: str) -> tuple[str, str]:
        name, sep, value = line.partition("=")
        if not sep or not _COMMAND_RE.fullmatch(name.strip()):
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

    def submit(self, shape: PilotShape, job: Job) -> list[str]:
        if job.count <= 0:
            return []
        # As text: a Submit object cannot be pickled for the child, and its text reads back
        # to the same description.
        description = str(self.description(shape, job))
        stem = f"{self.tag(shape)}-{time.time_ns() // 1_000_000}-{secrets.token_hex(3)}"
        scripts = self.scripts(stem, job)
        if isinstance(self.host, SshHost):
            return self._submit_remotely(shape, stem, description, scripts)
        items = [{"script": str(path)} for path in scripts]
        cluster, first, procs = self._call("submit", "submit pilots", _schedd_submit,
                                           description, items)
        return [f"{cluster}.{first + index}" for index in range(procs)]

    def _submit_remotely(self, shape: PilotShape, stem: str, description: str,
                         scripts: list[PurePosixPath]) -> list[str]:
        """condor_submit on the login node, of the description with one item per script; its
        outcome is settled later when the connection drops during it."""
        path = self.pilot_dir("submit") / f"{stem}.sub"
        body = description.rstrip()
        body = body[:-len("queue")].rstrip() if body.endswith("queue") else body
        items = "\n".join(str(script) for script in scripts)
        self._put(path, f"{body}\nqueue script from (\n{items}\n)\n".encode())
        argv = ["condor_submit", "-terse", *self._where(), str(path)]
        try:
            output = self.run(argv, once=stem)
        except BatchError as exc:
            if exc.in_doubt:
                self.doubt(stem, shape, argv, "", [path, path.parent.parent / "submits" /
                                                   f"{stem}.d"])
            raise exc.with_submitted([], len(scripts) if exc.in_doubt else 0) from exc
        return self.parse_submitted(argv, output, "")

    def parse_submitted(self, argv: Sequence[str], output: str, log: str) -> list[str]:
        """The ids condor_submit -terse printed: "12.0 - 12.3"."""
        match = _TERSE_RE.match(output.strip())
        if not match or match.group(1) != match.group(3):
            raise self.unparsable(argv, "a range of job ids", output)
        cluster, first, last = match.group(1), int(match.group(2)), int(match.group(4))
        return [f"{cluster}.{proc}" for proc in range(first, last + 1)]

    def status(self) -> dict[str, PilotInfo]:
        if isinstance(self.host, SshHost):
            argv = ["condor_q", *self._where(), "-constraint", self._constraint(),
                    "-attributes", ",".join(_PROJECTION), "-long"]
            output = self.run(argv)
            try:
                ads = list(classad2.parseAds(output, classad2.ParserType.Old))
            except (ValueError, classad2.ClassAdException) as exc:
                raise self.unparsable(argv, "job ads", output) from exc
            return pilots_from_ads(ads)
        return pilots_from_ads(self._call("query", "list pilots", _schedd_query,
                                          self._constraint()))

    def _remove(self, batch_ids: list[str]) -> None:
        # Constrained to our tag as well, so that a stray id can never reach another's job.
        wanted = " || ".join(f"(ClusterId == {cluster} && ProcId == {proc})"
                             for cluster, proc in (i.split(".") for i in batch_ids))
        constraint = f"{self._constraint()} && ({wanted})"
        if isinstance(self.host, SshHost):
            self.run(["condor_rm", *self._where(), "-constraint", constraint])
            return
        self._call("act", "remove pilots", _schedd_remove, constraint)

    def _where(self) -> list[str]:
        """The options of HTCondor's commands that name the schedd and the pool."""
        where = ["-name", self.options.schedd] if self.options.schedd else []
        return where + (["-pool", self.options.pool] if self.options.pool else [])

    def _constraint(self) -> str:
        return f"FloeFactory == {classad2.quote(self.settings.factory_id)}"

    def _call(self, method: str, what: str, work: Callable[..., T], *args: Any) -> T:
        """`work(schedd, *args)` run in a child process without the factory's secrets in its
        environment, within command_timeout; `schedd()` locates the schedd there."""
        call = f"htcondor2.Schedd.{method}"
        where = self.options.schedd or "the local schedd"
        if self.options.pool:
            where += f" of pool {self.options.pool}"
        failed = f"HTCondor could not {what} through {where}"
        receiver, sender = _SPAWN.Pipe(duplex=False)
        child = _SPAWN.Process(target=_answer, name=f"floe {call}", daemon=True,
                               args=(sender, work, self.options.schedd, self.options.pool, args))
        try:
            child.start()
        except OSError as exc:
            receiver.close()
            raise BatchError(f"{failed}: no process could be started for {call}: {exc}.",
                             [call]) from exc
        finally:
            sender.close()  # the child holds its own end: its death reads as end of file here
        try:
            answered = receiver.poll(self.settings.command_timeout)
            outcome = receiver.recv() if answered else None
        except EOFError:  # died without a word: killed (out of memory?) or crashed in the bindings
            outcome = None
        finally:
            # Answered, dead or out of time, the child has nothing left to do that is wanted:
            # killing it (a no-op once it has exited) ends a hung call for good, socket and all,
            # so nothing is left behind, whether calls succeed or hang. A submit that the schedd
            # took just before the kill queues pilots the factory never hears of; they carry its
            # tag, so `orphans` finds them and the factory removes them.
            child.kill()
            child.join()
            receiver.close()
        if not answered:
            raise BatchError(
                f"{failed}: {call} did not answer within {self.settings.command_timeout:g} s "
                "(command_timeout); the schedd may be overloaded or down.", [call])
        if outcome is None:
            code = child.exitcode or 0
            ended = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            raise BatchError(f"{failed}: {call} {ended} without answering.", [call])
        done, answer = outcome
        if not done:
            raise BatchError(f"{failed}.", [call], stderr=answer)
        return answer


def pilots_from_ads(ads: Iterable[classad2.ClassAd]) -> dict[str, PilotInfo]:
    """The pilots in the job ads a schedd query returned (projected on `_PROJECTION`), by
    batch id; an ad without a usable id or state, or with a time that is no number, is a
    BatchError."""
    pilots = {}
    for ad in ads:
        batch_id = f"{_integer(ad, 'ClusterId')}.{_integer(ad, 'ProcId')}"
        status = _integer(ad, "JobStatus")
        shape = ad.eval("FloeShape") if "FloeShape" in ad else ""
        hold_reason = ad.eval("HoldReason") if "HoldReason" in ad else ""
        pilots[batch_id] = PilotInfo(
            batch_id=batch_id, state=STATES.get(status, PilotState.UNKNOWN),
            shape=shape if isinstance(shape, str) else "",
            submitted=_time(ad, "QDate"), started=_time(ad, "JobCurrentStartDate"),
            detail=hold_reason if isinstance(hold_reason, str) and hold_reason
            else f"JobStatus {status}")
    return pilots


def _integer(ad: classad2.ClassAd, name: str) -> int:
    if name not in ad:
        raise _unreadable(ad, f"it has no {name}")
    value = ad.eval(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _unreadable(ad, f"{name} = {ad.lookup(name)} is not an integer")
    return value


def _time(ad: classad2.ClassAd, name: str) -> float | None:
    """Seconds since the epoch; None where the ad has no such time (yet)."""
    value = ad.eval(name) if name in ad else classad2.Value.Undefined
    if value is classad2.Value.Undefined:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _unreadable(ad, f"{name} = {ad.lookup(name)} is not a time in seconds")
    return float(value)


def _unreadable(ad: classad2.ClassAd, problem: str) -> BatchError:
    return BatchError(f"htcondor2.Schedd.query returned a job ad that the htcondor plugin cannot "
                      f"read ({problem}): {repr(ad)[:200]!r}", ["htcondor2.Schedd.query"])


# What runs in the child process of HTCondorPlugin._call.

def _answer(answer: Connection, work: Callable[..., Any], schedd: str, pool: str,
            args: tuple[Any, ...]) -> None:
    # The bindings hand their process's environment to jobs submitted with `getenv`: the
    # factory's secrets must not be in it.
    for name in FACTORY_SECRETS:
        os.environ.pop(name, None)
    try:
        outcome = (True, work(lambda: _locate(schedd, pool), *args))
    except Exception as exc:  # the bindings' exceptions cannot be pickled: send their words
        outcome = (False, f"{type(exc).__name__}: {exc}")
    answer.send(outcome)


def _locate(schedd: str, pool: str) -> htcondor2.Schedd:
    if not schedd and not pool:
        return htcondor2.Schedd()
    collector = htcondor2.Collector(pool or None)
    location = collector.locate(htcondor2.DaemonType.Schedd, schedd or None)
    return htcondor2.Schedd(location)


def _schedd_submit(schedd: Callable[[], htcondor2.Schedd], description: str,
                   items: list[dict[str, str]]) -> tuple[int, int, int]:
    result = schedd().submit(htcondor2.Submit(description), itemdata=iter(items))
    return result.cluster(), result.first_proc(), result.num_procs()


def _schedd_query(schedd: Callable[[], htcondor2.Schedd],
                  constraint: str) -> list[classad2.ClassAd]:
    return schedd().query(constraint=constraint, projection=_PROJECTION)


def _schedd_remove(schedd: Callable[[], htcondor2.Schedd], constraint: str) -> None:
    schedd().act(htcondor2.JobAction.Remove, constraint)
