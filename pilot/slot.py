"""Measure the slot a pilot landed in: CPUs, memory, disk, GPUs, time left, and where it is.

A worker node says what a pilot may use in several places at once: the batch system's variables
and HTCondor's machine ad, the CPU affinity, the cgroup limits, and the machine itself. Each
detector reads one environment mapping and one filesystem root (so tests can give them a fake
/proc, /sys/fs/cgroup and machine ad), every number found is kept in `limits` under the name of
where it came from, and the slot takes the smallest one, naming it in `sources`: a site admin can
see at once why a pilot offers what it offers (`floe pilot --probe`).
"""

from __future__ import annotations

import math
import os
import platform
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from floe.config.resources import Slot, format_duration, parse_duration, parse_size
from floe.pilot.gpus import Gpu, assigned_gpus, kind_of, open_gpus

MIB = 2**20
# cgroup v1 writes "no limit" as a huge page-rounded number (9223372036854771712).
_NO_LIMIT = 2**60
# The pilot stops offering this long before the batch system's end, but never more than a
# tenth of its life: time to report the last task and leave before being killed.
SAFETY_MARGIN = 300
SCRATCH_VARIABLES = ("_CONDOR_SCRATCH_DIR", "SLURM_TMPDIR", "TMPDIR", "PBS_JOBDIR", "TMP")
_OPEN = object()  # measure(gpu_source=...) default: open NVML on this node


@dataclass(frozen=True)
class MeasuredSlot:
    """What a pilot has: sizes in bytes, `deadline` as Unix time (None when nothing says)."""

    cpus: int
    memory: int
    disk: int
    gpus: tuple[Gpu, ...]
    deadline: float | None
    os: tuple[str, ...]
    arch: str
    python: str
    host: str
    site: str
    batch_system: str
    batch_job_id: str
    scratch: str
    sources: dict[str, str] = field(default_factory=dict)
    limits: dict[str, dict[str, float]] = field(default_factory=dict)
    promised: dict[str, int] = field(default_factory=dict)
    """What the factory's shape promised (FLOE_SHAPE_*): cpus, memory, gpus, walltime."""
    short: list[dict[str, Any]] = field(default_factory=list)
    """Each resource found short of the promise: resource, promised, found, source."""

    def seconds_left(self, now: float | None = None) -> int:
        """Seconds until the pilot must stop taking work; 2**31 when no end is known."""
        if self.deadline is None:
            return 2**31
        return max(0, int(self.deadline - (time.time() if now is None else now)))

    def offer(self, *, cpus: int | None = None, memory: int | None = None,
              disk: int | None = None, gpus: Sequence[Gpu] | None = None,
              now: float | None = None) -> Slot:
        """What to ask the matchmaker for: the given free amounts and devices (default: the
        whole slot), each free GPU described for tasks that ask for a kind."""
        devices = self.gpus if gpus is None else gpus
        return Slot(
            cpus=self.cpus if cpus is None else cpus,
            memory=self.memory if memory is None else memory,
            disk=self.disk if disk is None else disk, gpus=len(devices),
            seconds=self.seconds_left(now), os=self.os, arch=self.arch, site=self.site,
            gpu_kinds=tuple(kind_of(gpu) for gpu in devices),
        )

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        return {
            "cpus": self.cpus, "memory": self.memory, "disk": self.disk,
            "gpus": [gpu.to_dict() for gpu in self.gpus],
            "deadline": self.deadline, "seconds_left": self.seconds_left(now),
            "os": list(self.os), "arch": self.arch, "python": self.python, "host": self.host,
            "site": self.site, "batch_system": self.batch_system,
            "batch_job_id": self.batch_job_id, "scratch": self.scratch,
            "sources": dict(self.sources), "limits": {k: dict(v) for k, v in self.limits.items()},
            "promised": dict(self.promised), "short": [dict(item) for item in self.short],
        }


def measure(
    environ: Mapping[str, str] | None = None,
    root: str | Path = "/",
    *,
    site: str | None = None,
    lifetime: float | None = None,
    scratch: str | Path | None = None,
    gpu_source: Any = _OPEN,
    gpu_note: str = "",
    unassigned_gpus_are_ours: bool = False,
    now: float | None = None,
) -> MeasuredSlot:
    """Measure the slot from `environ` (default os.environ) and the files under `root`.

    `lifetime` (seconds, the --lifetime option) wins over the batch system's walltime;
    `scratch` (the --scratch option) wins over the batch system's scratch directory. Pass
    `gpu_source=None` for a node without NVML, or any `GpuSource` (with `gpu_note`, what
    `open_gpus` said of it).
    """
    env = dict(os.environ if environ is None else environ)
    root = Path(root)
    now = time.time() if now is None else now
    ad = read_classad(env.get("_CONDOR_MACHINE_AD"))
    limits: dict[str, dict[str, float]] = {}
    sources: dict[str, str] = {}

    batch_cpus = _batch_cpus(env, ad)
    cpus = _smallest("cpus", {**batch_cpus, **_node_cpus(root), **_shape(env, "CPUS")},
                     limits, sources)
    memory = _smallest("memory", {**_batch_memory(env, ad, batch_cpus, cpus),
                                  **_node_memory(root), **_shape(env, "MEMORY")},
                       limits, sources)
    scratch_dir, scratch_source = choose_scratch(env, scratch)
    disk = _smallest("disk", {**_disk(scratch_dir, scratch_source, ad), **_shape(env, "DISK")},
                     limits, sources)

    if gpu_source is _OPEN:
        gpu_source, nvml_note = open_gpus(env)
    else:
        nvml_note = gpu_note or ("NVML given by the caller" if gpu_source else "no NVML")
    if gpu_source is None:
        gpus: list[Gpu] = []
        sources["gpus"] = f"no GPUs: {nvml_note}"
    else:
        gpus, how = assigned_gpus(env, gpu_source.devices(),
                                  machine_ad_gpus=_ad_text(ad, "assignedgpus"),
                                  unassigned_means_all=unassigned_gpus_are_ours)
        sources["gpus"] = f"{how}; {nvml_note}"
        shape_gpus = _shape(env, "GPUS", minimum=0).get("FLOE_SHAPE_GPUS")
        if shape_gpus is not None and shape_gpus < len(gpus):
            gpus = gpus[:int(shape_gpus)]
            sources["gpus"] += f"; the first {int(shape_gpus)} (FLOE_SHAPE_GPUS)"

    deadline, sources["seconds"] = _deadline(env, ad, lifetime, now)
    batch_system, batch_job_id = detect_batch(env)
    sources["site"] = "--site" if site else ("FLOE_SITE" if env.get("FLOE_SITE") else "unset")
    promised = _promised(env)
    found = {"cpus": int(cpus), "memory": int(memory), "gpus": len(gpus)}
    granted, why = _batch_seconds(env, ad, now)
    if granted is not None:
        found["walltime"], sources["walltime"] = int(granted), why
    return MeasuredSlot(
        cpus=int(cpus), memory=int(memory), disk=int(disk), gpus=tuple(gpus),
        deadline=deadline, os=os_names(root), arch=platform.machine(),
        python=platform.python_version(), host=node_name(env),
        site=site or env.get("FLOE_SITE", ""), batch_system=batch_system,
        batch_job_id=batch_job_id, scratch=str(scratch_dir), sources=sources, limits=limits,
        promised=promised, short=shortfall(promised, found, sources),
    )


SHORT_OF = {"cpus": 1.0, "gpus": 1.0, "memory": 0.9, "walltime": 0.75}
"""A resource is short of its shape's promise below this fraction of it: memory allows for what
a kernel or a cgroup keeps back, time for the job's wait to start and the pilot's own start."""


def _promised(env: Mapping[str, str]) -> dict[str, int]:
    """What the factory's shape promised this pilot (FLOE_SHAPE_*), by resource."""
    promised = {}
    for name in ("CPUS", "MEMORY", "GPUS"):
        value = _shape(env, name, minimum=0).get(f"FLOE_SHAPE_{name}")
        if value is not None:
            promised[name.lower()] = int(value)
    walltime = env.get("FLOE_SHAPE_WALLTIME", "").strip()
    if walltime.isdigit():
        promised["walltime"] = int(walltime)
    return promised


def node_name(env: Mapping[str, str]) -> str:
    """The node's name as the pilot reports it: `FLOE_HOST` when set (a container's host name
    is not its node's), else SLURM's name for the node, else the host name. The matchmaker
    keeps black-hole hosts out by this name, and a factory excludes them by it."""
    return env.get("FLOE_HOST") or env.get("SLURMD_NODENAME") or socket.gethostname()


def shortfall(promised: Mapping[str, int], found: Mapping[str, int],
              sources: Mapping[str, str]) -> list[dict[str, Any]]:
    """The resources found short of what was promised, each with where the finding came from."""
    short = []
    for resource, fraction in SHORT_OF.items():
        if resource in promised and resource in found \
                and found[resource] < fraction * promised[resource]:
            short.append({"resource": resource, "promised": promised[resource],
                          "found": found[resource], "source": sources.get(resource, "")})
    return short


def _batch_seconds(env: Mapping[str, str], ad: Mapping[str, Any], now: float
                   ) -> tuple[float | None, str]:
    """The seconds the batch system itself gives the job from now, where it says (the
    --lifetime the factory passes is what it asked for, not what it got)."""
    deadline, why = _deadline(env, ad, None, now)
    if deadline is None:
        return None, why
    return max(0.0, deadline - now), why


def _smallest(resource: str, found: dict[str, float], limits: dict[str, dict[str, float]],
              sources: dict[str, str]) -> float:
    limits[resource] = found
    name = min(found, key=lambda key: found[key])
    sources[resource] = name
    return found[name]


# ---------------------------------------------------------------- batch systems


def read_classad(path: str | Path | None) -> dict[str, Any]:
    """The attributes of an HTCondor ClassAd file (`Cpus = 4` lines), by lower-case name.

    Numbers, booleans and quoted strings are converted; other expressions stay as their text.
    A missing or unreadable file gives an empty ad.
    """
    if not path:
        return {}
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return {}
    ad: dict[str, Any] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"\s*[A-Za-z_][A-Za-z0-9_.]*\s*", name):
            continue
        ad[name.strip().lower()] = _classad_value(value.strip())
    return ad


def _classad_value(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('\\"', '"')
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _ad_number(ad: Mapping[str, Any], name: str) -> float | None:
    value = ad.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return value


def _ad_text(ad: Mapping[str, Any], name: str) -> str | None:
    value = ad.get(name)
    return value if isinstance(value, str) else None


def _whole(text: str | None) -> int | None:
    """A positive whole number from a variable; SLURM's "4(x2),2" lists give their first."""
    if not text:
        return None
    match = re.match(r"\s*(\d+)", text)
    if not match or int(match.group(1)) < 1:
        return None
    return int(match.group(1))


class SlotError(ValueError):
    """A setting of the slot that cannot be read; the message names it and the fix."""


def _shape(env: Mapping[str, str], name: str, minimum: int = 1) -> dict[str, float]:
    """The factory's pilot shape (FLOE_SHAPE_CPUS, ...): where the batch system enforces
    nothing (the local plugin) or gives more than asked (the memory headroom), the pilot offers
    tasks what its shape serves and no more. MEMORY and DISK are sizes ("1GiB", or bytes),
    CPUS and GPUS whole numbers; an unset or empty variable limits nothing."""
    variable = f"FLOE_SHAPE_{name}"
    text = env.get(variable, "").strip()
    if not text:
        return {}
    if name in ("MEMORY", "DISK"):
        try:
            value = parse_size(text)
        except ValueError as err:
            raise SlotError(f"{variable}={text!r}: {err}") from None
    elif text.isdigit():
        value = int(text)
    else:
        raise SlotError(f"{variable}={text!r}: expected a whole number, such as 4")
    if value < minimum:
        raise SlotError(f"{variable}={text!r}: must be at least {minimum}")
    return {variable: value}


def _batch_cpus(env: Mapping[str, str], ad: Mapping[str, Any]) -> dict[str, float]:
    found: dict[str, float] = {}
    # SLURM_CPUS_ON_NODE is this node's share; SLURM_JOB_CPUS_PER_NODE lists every node of the
    # job, and the batch script (where the pilot runs) is on the first one.
    for name in ("SLURM_CPUS_ON_NODE", "SLURM_JOB_CPUS_PER_NODE", "PBS_NUM_PPN", "PBS_NP",
                 "NCPUS", "NSLOTS"):
        if name == "NCPUS" and "PBS_JOBID" not in env:
            continue  # NCPUS is PBS Pro's; elsewhere it is anybody's variable
        value = _whole(env.get(name))
        if value is not None:
            found[name] = value
            if name in ("SLURM_CPUS_ON_NODE", "PBS_NUM_PPN"):
                break  # the per-node figure makes the job-wide ones after it moot
    cpus = _ad_number(ad, "cpus")
    if cpus:
        found["machine ad Cpus"] = int(cpus)
    return found


def _batch_memory(env: Mapping[str, str], ad: Mapping[str, Any], batch_cpus: Mapping[str, float],
                  cpus: float) -> dict[str, float]:
    found: dict[str, float] = {}
    per_node = _whole(env.get("SLURM_MEM_PER_NODE"))
    if per_node:
        found["SLURM_MEM_PER_NODE"] = per_node * MIB
    per_cpu = _whole(env.get("SLURM_MEM_PER_CPU"))
    if per_cpu:
        slurm_cpus = batch_cpus.get("SLURM_CPUS_ON_NODE",
                                    batch_cpus.get("SLURM_JOB_CPUS_PER_NODE", cpus))
        found["SLURM_MEM_PER_CPU x CPUs"] = per_cpu * MIB * slurm_cpus
    memory = _ad_number(ad, "memory")
    if memory:
        found["machine ad Memory"] = int(memory) * MIB
    return found


def detect_batch(env: Mapping[str, str]) -> tuple[str, str]:
    """(batch system, batch job id): ("slurm", "1234"), ... or ("none", "").

    A pilot a factory started says what the factory set, FLOE_BATCH_SYSTEM and FLOE_BATCH_ID:
    the plugin and the id its submit returned, by which the factory asks the matchmaker whether
    the pilot registered (a pilot of the pbs plugin on Slurm's PBS wrappers is a SLURM job too,
    but the factory knows it as a pbs one). Otherwise the batch system's own variables say it.
    """
    if env.get("FLOE_BATCH_SYSTEM") and env.get("FLOE_BATCH_ID"):
        return env["FLOE_BATCH_SYSTEM"], env["FLOE_BATCH_ID"]
    if env.get("SLURM_JOB_ID"):
        return "slurm", env["SLURM_JOB_ID"]
    if env.get("PBS_JOBID"):
        return "pbs", env["PBS_JOBID"]
    if env.get("JOB_ID") and (env.get("SGE_ROOT") or env.get("SGE_CELL")):
        task = env.get("SGE_TASK_ID", "")
        suffix = f".{task}" if task and task != "undefined" else ""
        return "sge", env["JOB_ID"] + suffix
    if env.get("_CONDOR_JOB_AD") or env.get("_CONDOR_MACHINE_AD"):
        job_ad = read_classad(env.get("_CONDOR_JOB_AD"))
        cluster, proc = _ad_number(job_ad, "clusterid"), _ad_number(job_ad, "procid")
        job_id = f"{int(cluster)}.{int(proc)}" if cluster is not None and proc is not None else ""
        return "htcondor", job_id
    return "none", ""


def _deadline(env: Mapping[str, str], ad: Mapping[str, Any], lifetime: float | None,
              now: float) -> tuple[float | None, str]:
    """When the pilot must be done, with the safety margin taken off, and why."""
    if lifetime is not None:
        end, why = now + lifetime, f"--lifetime {format_duration(lifetime)}"
    elif _whole(env.get("SLURM_JOB_END_TIME")):
        end, why = float(env["SLURM_JOB_END_TIME"]), "SLURM_JOB_END_TIME"
    elif env.get("PBS_WALLTIME"):
        try:
            end = now + parse_duration(env["PBS_WALLTIME"])
        except ValueError:
            return None, f"PBS_WALLTIME={env['PBS_WALLTIME']!r} is not a duration; no end known"
        why = "PBS_WALLTIME from the pilot's start"
    elif _ad_number(ad, "glidein_todie"):
        end, why = float(ad["glidein_todie"]), "machine ad GLIDEIN_ToDie"
    else:
        return None, "no walltime known (give --lifetime)"
    margin = min(SAFETY_MARGIN, max(0.0, end - now) / 10)
    return end - margin, f"{why}, less a {format_duration(margin)} safety margin"


# ---------------------------------------------------------------- the node


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _node_cpus(root: Path) -> dict[str, float]:
    found: dict[str, float] = {}
    status = _read(root / "proc/self/status")
    allowed = re.search(r"^Cpus_allowed_list:\s*(\S+)", status or "", re.MULTILINE)
    if allowed:
        found["CPU affinity"] = _count_cpu_list(allowed.group(1))
    elif str(root) == "/" and hasattr(os, "sched_getaffinity"):
        found["CPU affinity"] = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        found[quota[1]] = quota[0]
    cpuinfo = _read(root / "proc/cpuinfo")
    processors = len(re.findall(r"^processor\s*:", cpuinfo or "", re.MULTILINE))
    if processors:
        found["/proc/cpuinfo"] = processors
    elif str(root) == "/":
        found["os.cpu_count"] = os.cpu_count() or 1
    if not found:
        found["assumed"] = 1
    return found


def _count_cpu_list(text: str) -> int:
    """CPUs in a kernel list like "0-3,8,10-11"."""
    total = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        total += int(high) - int(low) + 1 if high else 1
    return max(1, total)


def _node_memory(root: Path) -> dict[str, float]:
    found: dict[str, float] = {}
    limit = cgroup_memory_limit(root)
    if limit is not None:
        found[limit[1]] = limit[0]
    meminfo = _read(root / "proc/meminfo")
    total = re.search(r"^MemTotal:\s*(\d+)\s*kB", meminfo or "", re.MULTILINE)
    if total:
        found["/proc/meminfo MemTotal"] = int(total.group(1)) * 1024
    elif str(root) == "/" and hasattr(os, "sysconf"):
        found["physical memory"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if not found:
        found["unknown: no /proc/meminfo"] = 0
    return found


def choose_scratch(env: Mapping[str, str], option: str | Path | None) -> tuple[Path, str]:
    """The directory tasks run in: --scratch, else the batch system's, else the cwd."""
    if option:
        return Path(option), "--scratch"
    for name in SCRATCH_VARIABLES:
        value = env.get(name)
        if value and Path(value).is_dir():
            return Path(value), name
    return Path.cwd(), "current directory"


def _disk(scratch: Path, source: str, ad: Mapping[str, Any]) -> dict[str, float]:
    found: dict[str, float] = {}
    try:
        stats = os.statvfs(scratch)
        found[f"free space in {scratch} ({source})"] = stats.f_bavail * stats.f_frsize
    except OSError:
        found[f"{scratch} ({source}) is not usable"] = 0
    disk = _ad_number(ad, "disk")
    if disk:
        found["machine ad Disk"] = int(disk) * 1024
    return found


# ---------------------------------------------------------------- cgroups


def _cgroup_dirs(root: Path, controller: str) -> list[Path]:
    """The cgroup directories that limit this process for `controller`, innermost first.

    Handles cgroup v2 (one unified tree) and v1 (one tree per controller). Inside a container the
    path in /proc/self/cgroup may not exist under the mount; the part that exists is used.
    """
    lines = (_read(root / "proc/self/cgroup") or "").splitlines()
    base = root / "sys/fs/cgroup"
    if (base / "cgroup.controllers").exists():
        paths = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
        mount = base
    else:
        paths, mount = [], base
        for line in lines:
            parts = line.split(":", 2)
            if len(parts) == 3 and controller in parts[1].split(","):
                candidates = [base / parts[1], base / controller]
                mount = next((c for c in candidates if c.is_dir()), candidates[-1])
                paths = [parts[2]]
                break
        if not paths and (base / controller).is_dir():
            mount, paths = base / controller, ["/"]
    dirs: list[Path] = []
    for path in paths or ["/"]:
        here = mount / path.strip("/")
        while not here.is_dir() and here != mount:
            here = here.parent
        while True:
            dirs.append(here)
            if here == mount:
                break
            here = here.parent
    return dirs


def cgroup_cpu_quota(root: Path) -> tuple[int, str] | None:
    """Whole CPUs the cgroup CPU quota allows (at least 1), and the file that says so."""
    best: tuple[int, str] | None = None
    for directory in _cgroup_dirs(root, "cpu"):
        quota = period = None
        text = _read(directory / "cpu.max")
        if text is not None:
            fields = text.split()
            if len(fields) == 2 and fields[0] != "max":
                quota, period, name = int(fields[0]), int(fields[1]), "cpu.max"
        else:
            quota_text = _read(directory / "cpu.cfs_quota_us")
            period_text = _read(directory / "cpu.cfs_period_us")
            if quota_text and period_text and int(quota_text) > 0:
                quota, period, name = int(quota_text), int(period_text), "cpu.cfs_quota_us"
        if quota and period:
            cpus = max(1, math.floor(quota / period))
            if best is None or cpus < best[0]:
                best = (cpus, f"cgroup {directory / name}")
    return best


def cgroup_memory_limit(root: Path) -> tuple[int, str] | None:
    """The tightest cgroup memory limit in bytes, and the file that says so."""
    best: tuple[int, str] | None = None
    for directory in _cgroup_dirs(root, "memory"):
        for name in ("memory.max", "memory.limit_in_bytes"):
            text = (_read(directory / name) or "").strip()
            if text.isdigit() and int(text) < _NO_LIMIT and (best is None or int(text) < best[0]):
                best = (int(text), f"cgroup {directory / name}")
    return best


# ---------------------------------------------------------------- operating system


def os_names(root: str | Path = "/") -> tuple[str, ...]:
    """Names a task's `os` patterns match, most specific first: ("debian12", "debian",
    "linux"); RHEL-likes also get "el9" style; from /etc/os-release."""
    text = _read(Path(root) / "etc/os-release") or _read(Path(root) / "usr/lib/os-release")
    system = platform.system().lower() or "unknown"
    if not text:
        return (system,)
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            fields[name.strip()] = value.strip().strip("\"'")
    distro = fields.get("ID", "").lower()
    version = fields.get("VERSION_ID", "").lower()
    major = version.split(".")[0]
    like = fields.get("ID_LIKE", "").lower().split()
    names: list[str] = []
    for name in (f"{distro}{version}" if version else "", f"{distro}{major}" if major else "",
                 distro):
        if name and name not in names:
            names.append(name)
    if major and (distro == "rhel" or {"rhel", "centos"} & set(like)):
        names.append(f"el{major}")
    names.append("linux")
    return tuple(dict.fromkeys(names))

