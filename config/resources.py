"""The resource vocabulary: what a task requires, what a slot offers, whether one fits the other.

Sizes are bytes and durations are seconds everywhere inside floe; `parse_size` and
`parse_duration` turn the human forms of configs and command lines ("4GB", "2h30m", "1-12:00:00")
into them and `format_size` / `format_duration` turn them back. The matchmaker, the pilot and the
factory all decide "does this task fit here" through `fits()`, so the three can never disagree.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

KB, MB, GB, TB = 10**3, 10**6, 10**9, 10**12
KIB, MIB, GIB, TIB = 2**10, 2**20, 2**30, 2**40
SMALLEST_SIZE = MB
"""The least memory, disk or GPU memory a task or a pilot shape may name other than 0: below it
a size is a mistake, most often a number meant in MiB that, without a unit, counts bytes."""

_SIZE_UNITS = {
    "b": 1,
    "kb": KB, "mb": MB, "gb": GB, "tb": TB,
    "kib": KIB, "mib": MIB, "gib": GIB, "tib": TIB,
    # Bare letters follow the batch systems (SLURM, PBS, SGE), where "4G" means 4 GiB.
    "k": KIB, "m": MIB, "g": GIB, "t": TIB,
}
# ASCII digits only: \d would also take "²" or "٣", which int() and float() refuse or read
# otherwise.
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$", re.ASCII)
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)", re.IGNORECASE | re.ASCII)
_CLOCK_RE = re.compile(r"(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?", re.ASCII)
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" for c in word)


# The strings `parse_size` and `parse_duration` take, as JSON Schema (ECMA-262) patterns for
# the documents that publish them (config.json_schema); tests hold them to the parsers.
SIZE_PATTERN = (r"^\s*\d+(\.\d+)?\s*("
                + "|".join(_any_case(u) for u in sorted(_SIZE_UNITS, key=len, reverse=True))
                + r")?\s*$")
DURATION_PATTERN = (r"^\s*(\d+|(\d+-)?\d+:\d{1,2}(:\d{1,2})?"
                    r"|(\d+(\.\d+)?\s*[DdHhMmSs]\s*)+)\s*$")


class ResourceError(ValueError):
    """A size or duration that cannot be understood; the message says what was expected."""


def parse_size(value: Any) -> int:
    """Bytes from "4GB", "512MiB", "2G" (= 2 GiB) or a whole number of bytes."""
    if isinstance(value, bool):
        raise ResourceError(f'expected a size like "4GB", got {value!r}')
    if isinstance(value, int):
        if value < 0:
            raise ResourceError(f'expected a size like "4GB", got {value!r} (negative)')
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            unit = match.group(2).lower() or "b"
            if unit in _SIZE_UNITS:
                return int(float(match.group(1)) * _SIZE_UNITS[unit])
    raise ResourceError(f'expected a size like "4GB", got {value!r}')


def parse_duration(value: Any) -> int:
    """Seconds from 3600, "90s", "45m", "2h30m", "1d", "HH:MM:SS" or "D-HH:MM:SS"."""
    if isinstance(value, bool):
        raise ResourceError(f'expected a duration like "2h30m", got {value!r}')
    if isinstance(value, (int, float)):
        if value < 0:
            raise ResourceError(f'expected a duration like "2h30m", got {value!r} (negative)')
        if not math.isfinite(value):
            raise ResourceError(f'expected a duration like "2h30m", got {value!r}')
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            return int(text)
        clock = _CLOCK_RE.fullmatch(text)
        if clock:
            days, first, second, third = clock.groups()
            if third is None:  # "MM:SS" as the batch systems read it
                hours, minutes, seconds = 0, int(first), int(second)
            else:
                hours, minutes, seconds = int(first), int(second), int(third)
            return int(days or 0) * 86400 + hours * 3600 + minutes * 60 + seconds
        parts = _DURATION_PART_RE.findall(text)
        if parts and _DURATION_PART_RE.sub("", text).strip() == "":
            return int(sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts))
    raise ResourceError(f'expected a duration like "2h30m", got {value!r}')


def format_size(nbytes: float) -> str:
    """A short human size in binary units: 4294967296 -> "4GiB". A whole number past 2**80 (no
    real size, and maybe past what a double holds) shows as 2**80."""
    value = float(min(nbytes, 2**80)) if not isinstance(nbytes, float) else nbytes
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """A short human duration: 9000 -> "2h30m"."""
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _names(values: Iterable[str] | str | None) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        return (values,)
    return tuple(values)


GROWTH = 1.5
"""What a task's memory, disk or walltime becomes, times its measured peak, after the task was
killed for using more than it asked (matchmaker.lifecycle decides which resource grew)."""

@dataclass(frozen=True)
class Requirements:
    """What one task needs. Sizes in bytes, walltime in seconds; empty tuples mean "any"."""

    cpus: int = 1
    memory: int = 1 * GIB
    disk: int = 1 * GIB
    gpus: int = 0
    walltime: int = 3600
    os: tuple[str, ...] = ()
    arch: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    exclude_sites: tuple[str, ...] = ()
    gpu_memory: int = 0
    """Least memory of each of its GPUs, in bytes (0: any)."""
    gpu_model: str = ""
    """A pattern the name of each of its GPUs matches, as `os` takes them ("*H100*"; "": any)."""
    compute_capability: tuple[int, int] = (0, 0)
    """Least CUDA compute capability of each of its GPUs ((0, 0): any)."""

    gpu_kind: bool = field(init=False, repr=False, compare=False)
    """Whether it asks for GPUs of some kind, not only for a count."""
    patterned: bool = field(init=False, repr=False, compare=False)
    """Whether fitting it takes more than comparing numbers (patterns, GPU kinds)."""

    def __post_init__(self) -> None:
        # Decided once, not at each of the many fits a matchmaker checks.
        kind = bool(self.gpu_memory or self.gpu_model or self.compute_capability != (0, 0))
        object.__setattr__(self, "gpu_kind", kind)
        object.__setattr__(self, "patterned", bool(
            kind or self.os or self.arch or self.sites or self.exclude_sites))

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpus": self.cpus, "memory": self.memory, "disk": self.disk, "gpus": self.gpus,
            "walltime": self.walltime, "os": list(self.os), "arch": list(self.arch),
            "sites": list(self.sites), "exclude_sites": list(self.exclude_sites),
            "gpu_memory": self.gpu_memory, "gpu_model": self.gpu_model,
            "compute_capability": format_capability(self.compute_capability),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Requirements:
        return cls(
            cpus=int(data.get("cpus", 1)), memory=int(data.get("memory", GIB)),
            disk=int(data.get("disk", GIB)), gpus=int(data.get("gpus", 0)),
            walltime=int(data.get("walltime", 3600)), os=_names(data.get("os")),
            arch=_names(data.get("arch")), sites=_names(data.get("sites")),
            exclude_sites=_names(data.get("exclude_sites")),
            gpu_memory=int(data.get("gpu_memory") or 0),
            gpu_model=str(data.get("gpu_model") or ""),
            compute_capability=parse_capability(data.get("compute_capability")),
        )

    def grown(self, **peaks: float) -> Requirements:
        """These requirements after an overuse: each named resource becomes GROWTH times its
        measured peak, and never shrinks below what was asked before."""
        changes = {}
        for name, peak in peaks.items():
            if peak is None:
                continue
            current = getattr(self, name)
            changes[name] = max(current, int(peak * GROWTH + 0.5))
        return replace(self, **changes)


@dataclass(frozen=True)
class GpuKind:
    """What matching knows of one free GPU; a property left at its zero is not known, and
    then does not keep a task off it (a factory's shape that does not describe its GPUs)."""

    memory: int = 0
    name: str = ""
    compute_capability: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict[str, Any]:
        return {"memory": self.memory, "name": self.name,
                "compute_capability": format_capability(self.compute_capability)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GpuKind:
        return cls(int(data.get("memory") or 0), str(data.get("name") or ""),
                   parse_capability(data.get("compute_capability")))


@dataclass(frozen=True)
class Slot:
    """What a pilot offers right now: its free resources, time left, and where it is; with
    `gpu_kinds`, what each of its free GPUs is (none given: nothing is known of them)."""

    cpus: int
    memory: int
    disk: int
    gpus: int = 0
    seconds: int = 2**31
    os: tuple[str, ...] = ()
    arch: str = ""
    site: str = ""
    gpu_kinds: tuple[GpuKind, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = {
            "cpus": self.cpus, "memory": self.memory, "disk": self.disk, "gpus": self.gpus,
            "seconds": self.seconds, "os": list(self.os), "arch": self.arch, "site": self.site,
        }
        if self.gpu_kinds:
            data["gpu_kinds"] = [kind.to_dict() for kind in self.gpu_kinds]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Slot:
        return cls(
            cpus=int(data["cpus"]), memory=int(data["memory"]), disk=int(data["disk"]),
            gpus=int(data.get("gpus", 0)), seconds=int(data.get("seconds", 2**31)),
            os=_names(data.get("os")), arch=str(data.get("arch", "")),
            site=str(data.get("site", "")),
            gpu_kinds=tuple(GpuKind.from_dict(k) for k in data.get("gpu_kinds") or ()),
        )

    def less(self, req: Requirements) -> Slot:
        """What is left of this slot once a task of `req` holds its share (the GPUs it takes:
        those that fit it, the least of them first)."""
        kinds = self.gpu_kinds
        if kinds and req.gpus:
            taken = sorted((k for k in kinds if gpu_fits(req, k)),
                           key=lambda k: (k.memory, k.compute_capability))[:req.gpus]
            left = list(kinds)
            for kind in taken:
                left.remove(kind)
            kinds = tuple(left)
        return Slot(self.cpus - req.cpus, self.memory - req.memory, self.disk - req.disk,
                    self.gpus - req.gpus, self.seconds, self.os, self.arch, self.site, kinds)


def parse_capability(value: Any) -> tuple[int, int]:
    """A compute capability from "8.0", 8.0, 9 or [8, 6]; (0, 0) for none. ValueError when it
    is none of these."""
    if value is None or value == "":
        return (0, 0)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        major, minor = value
    else:
        match = re.fullmatch(r"\s*(\d{1,3})(?:\.(\d{1,3}))?\s*", str(value), re.ASCII)
        if match is None or isinstance(value, bool):
            raise ValueError(f"{value!r} is not a compute capability like \"8.0\"")
        major, minor = match.group(1), match.group(2) or 0
    return (int(major), int(minor))


def format_capability(capability: tuple[int, int]) -> str:
    """"8.0", or "" for none."""
    return "" if capability == (0, 0) else f"{capability[0]}.{capability[1]}"


def gpu_fits(req: Requirements, kind: GpuKind) -> bool:
    """Whether one GPU of this kind is what the task asks for (what is not known of it passes)."""
    return ((not req.gpu_memory or not kind.memory or kind.memory >= req.gpu_memory)
            and (not req.gpu_model or not kind.name or _matches((req.gpu_model,), [kind.name]))
            and (req.compute_capability == (0, 0) or kind.compute_capability == (0, 0)
                 or kind.compute_capability >= req.compute_capability))


def describe_gpu_kind(req: Requirements) -> str:
    """The GPU kind a task asks for, as a phrase: "at least 40GiB memory, a model *H100*"."""
    parts = []
    if req.gpu_memory:
        parts.append(f"at least {format_size(req.gpu_memory)} memory")
    if req.gpu_model:
        parts.append(f"a model {req.gpu_model}")
    if req.compute_capability != (0, 0):
        parts.append(f"compute capability {format_capability(req.compute_capability)} or more")
    return ", ".join(parts)


def _matches(patterns: tuple[str, ...], names: Iterable[str]) -> bool:
    names = [n.lower() for n in names]
    return any(fnmatch.fnmatchcase(n, p.lower()) for p in patterns for n in names)


def allowed_at(req: Requirements, site: str) -> bool:
    """Whether the task's site lists (`sites`, `exclude_sites`) let it run at `site`."""
    if req.sites and not _matches(req.sites, [site]):
        return False
    return not (req.exclude_sites and _matches(req.exclude_sites, [site]))


def why_not(req: Requirements, slot: Slot, what: str = "slot") -> str | None:
    """None when the task fits the slot, else the first reason it does not, as a phrase that
    calls the slot `what` ("the shape": its walltime is then the shape's, not time left)."""
    if req.cpus > slot.cpus:
        return f"needs {req.cpus} CPUs, {what} has {slot.cpus}"
    if req.memory > slot.memory:
        return f"needs {format_size(req.memory)} memory, {what} has {format_size(slot.memory)}"
    if req.disk > slot.disk:
        return f"needs {format_size(req.disk)} disk, {what} has {format_size(slot.disk)}"
    if req.gpus > slot.gpus:
        return f"needs {req.gpus} GPUs, {what} has {slot.gpus}"
    if req.gpus and req.gpu_kind and slot.gpu_kinds:
        fitting = sum(1 for kind in slot.gpu_kinds if gpu_fits(req, kind))
        if fitting < req.gpus:
            names = "/".join(dict.fromkeys(k.name or "an undescribed GPU" for k in slot.gpu_kinds))
            return (f"needs {req.gpus} GPUs with {describe_gpu_kind(req)}, {what} has "
                    f"{fitting} such ({names})")
    if req.walltime > slot.seconds:
        return (f"needs {format_duration(req.walltime)} walltime, {what} has "
                f"{format_duration(slot.seconds)}{' left' if what == 'slot' else ''}")
    if req.os and not _matches(req.os, slot.os):
        return f"needs OS {'/'.join(req.os)}, {what} runs {'/'.join(slot.os) or 'unknown'}"
    if req.arch and not _matches(req.arch, [slot.arch]):
        return f"needs architecture {'/'.join(req.arch)}, {what} is {slot.arch or 'unknown'}"
    if not allowed_at(req, slot.site):
        if req.sites and not _matches(req.sites, [slot.site]):
            return (f"runs only at {', '.join(req.sites)}, {what} is at "
                    f"{slot.site or 'an unnamed site'}")
        return f"excludes site {slot.site}"
    return None


def fits(req: Requirements, slot: Slot) -> bool:
    """Whether a task with these requirements can run in this slot now."""
    return why_not(req, slot) is None


@dataclass
class Usage:
    """What an attempt used, as the pilot measured it."""

    cpu_time: float = 0.0
    wall_time: float = 0.0
    peak_memory: int = 0
    peak_disk: int = 0
    peak_gpu_memory: int = 0
    gpu_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu_time": self.cpu_time, "wall_time": self.wall_time,
            "peak_memory": self.peak_memory, "peak_disk": self.peak_disk,
            "peak_gpu_memory": self.peak_gpu_memory, "gpu_time": self.gpu_time,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        return cls(
            cpu_time=float(data.get("cpu_time", 0.0)), wall_time=float(data.get("wall_time", 0.0)),
            peak_memory=int(data.get("peak_memory", 0)), peak_disk=int(data.get("peak_disk", 0)),
            peak_gpu_memory=int(data.get("peak_gpu_memory", 0)),
            gpu_time=float(data.get("gpu_time", 0.0)),
        )
