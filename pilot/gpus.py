"""The node's NVIDIA GPUs as NVML reports them, and which of them belong to this slot.

Where NVML cannot list them (no driver library in reach, another vendor's devices, a test), the
node's devices may be declared instead: `FLOE_NODE_GPUS`, a JSON list of objects with `uuid` and
optionally `name`, `memory` (bytes) and `compute_capability` ([major, minor]). A declaration
wins over NVML; nothing is measured on declared devices (their memory in use reads as none).

NVML lists every GPU of the node whatever the batch system assigned (measured on an H100 node:
one GPU reported with CUDA_VISIBLE_DEVICES empty), so the slot's GPUs are only those that a batch
assignment variable names, matched against the NVML device list by index or UUID. NVML is reached
through `pynvml` (pilot.pyz carries the pure-ctypes module) behind `GpuSource`, so the assignment
rules work on plain lists of `Gpu` and tests can give them any device list they like.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from floe.config.resources import GpuKind

# In the order they are trusted. Unambiguous names (HTCondor's UUIDs, SLURM's node-wide ids)
# come before CUDA_VISIBLE_DEVICES, whose indices are renumbered when the batch system hides
# devices from the job.
ASSIGNMENT_VARIABLES = (
    "_CONDOR_AssignedGPUs",
    "SLURM_STEP_GPUS",
    "SLURM_JOB_GPUS",
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
)
VISIBILITY_VARIABLES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
"""Set but empty, each of these means that the job has no GPU, whatever the others say."""

_INDEX_RE = re.compile(r"(?:CUDA|OCL)?(\d+)\Z", re.IGNORECASE)


@dataclass(frozen=True)
class Gpu:
    """One device CUDA can be pointed at: a whole GPU, or one MIG instance of a GPU."""

    index: int
    uuid: str
    name: str
    memory: int
    compute_capability: tuple[int, int] | None = None
    mig_enabled: bool = False
    parent_uuid: str | None = None
    vendor: str = "nvidia"
    """"nvidia" or "amd": which runtime's variable names it for a task."""

    @property
    def is_mig_instance(self) -> bool:
        return self.parent_uuid is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "uuid": self.uuid, "name": self.name, "memory": self.memory,
            "compute_capability": (list(self.compute_capability)
                                   if self.compute_capability else None),
            "mig_enabled": self.mig_enabled, "parent_uuid": self.parent_uuid,
            "vendor": self.vendor,
        }


def kind_of(gpu: Gpu) -> GpuKind:
    """What matching knows of a device: its memory, model name and compute capability."""
    return GpuKind(gpu.memory, gpu.name, gpu.compute_capability or (0, 0))


class GpuSource(Protocol):
    """What the pilot asks NVML: the devices, and the GPU memory a set of processes holds."""

    def devices(self) -> list[Gpu]:
        ...

    def process_memory(self, gpus: Sequence[Gpu], pids: Collection[int]) -> dict[str, int]:
        """Bytes of GPU memory the given processes hold, per UUID of the given devices."""
        ...

    def device_memory(self, gpus: Sequence[Gpu]) -> dict[str, int]:
        """Bytes of memory in use on each of the given devices, whoever holds them."""
        ...


class NvmlSource:
    """`GpuSource` over pynvml; construct it through `open_nvml()`."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._handles: dict[str, Any] = {}
        self._devices: list[Gpu] = []
        self.driver_version = _text(nvml.nvmlSystemGetDriverVersion())
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpu = self._describe(handle, index, None)
            self._add(gpu, handle)
            if gpu.mig_enabled:
                for instance in self._mig_handles(handle):
                    self._add(self._describe(instance, index, gpu.uuid, gpu.compute_capability),
                              instance)

    def _add(self, gpu: Gpu, handle: Any) -> None:
        self._devices.append(gpu)
        self._handles[gpu.uuid] = handle

    def _describe(self, handle: Any, index: int, parent: str | None,
                  compute_capability: tuple[int, int] | None = None) -> Gpu:
        nvml = self._nvml
        if parent is None:
            compute_capability = self._optional(nvml.nvmlDeviceGetCudaComputeCapability, handle)
            mode = self._optional(nvml.nvmlDeviceGetMigMode, handle)
            mig_enabled = bool(mode and mode[0] == nvml.NVML_DEVICE_MIG_ENABLE)
        else:
            mig_enabled = False
        return Gpu(
            index=index,
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
            name=_text(nvml.nvmlDeviceGetName(handle)),
            memory=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
            compute_capability=tuple(compute_capability) if compute_capability else None,
            mig_enabled=mig_enabled,
            parent_uuid=parent,
        )

    def _mig_handles(self, handle: Any) -> list[Any]:
        nvml = self._nvml
        found = []
        for position in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            instance = self._optional(nvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, position)
            if instance is not None:
                found.append(instance)
        return found

    def _optional(self, function: Any, *args: Any) -> Any:
        """The answer of an NVML query that older GPUs or drivers do not support, or None."""
        try:
            return function(*args)
        except self._nvml.NVMLError:
            return None

    def devices(self) -> list[Gpu]:
        return list(self._devices)

    def process_memory(self, gpus: Sequence[Gpu], pids: Collection[int]) -> dict[str, int]:
        wanted = set(pids)
        used: dict[str, int] = {}
        for gpu in gpus:
            handle = self._handles.get(gpu.uuid)
            if handle is None:
                continue
            processes = self._optional(self._nvml.nvmlDeviceGetComputeRunningProcesses, handle)
            used[gpu.uuid] = sum(int(p.usedGpuMemory or 0) for p in processes or ()
                                 if p.pid in wanted)
        return used


    def device_memory(self, gpus: Sequence[Gpu]) -> dict[str, int]:
        used: dict[str, int] = {}
        for gpu in gpus:
            handle = self._handles.get(gpu.uuid)
            info = self._optional(self._nvml.nvmlDeviceGetMemoryInfo, handle) if handle else None
            if info is not None:
                used[gpu.uuid] = int(info.used)
        return used


def open_nvml() -> tuple[NvmlSource | None, str]:
    """NVML through pynvml, or None and the reason it cannot be used on this node."""
    try:
        with warnings.catch_warnings():
            # The deprecated "pynvml" distribution warns on import; its module is the same.
            warnings.simplefilter("ignore")
            import pynvml
    except ImportError:
        return None, "pynvml is not importable"
    try:
        pynvml.nvmlInit()
        source = NvmlSource(pynvml)
    except (pynvml.NVMLError, OSError) as err:
        return None, f"NVML cannot be used: {err}"
    return source, f"NVML driver {source.driver_version}"


DECLARED = "FLOE_NODE_GPUS"


class ListedSource:
    """`GpuSource` over a list of devices (declared in `FLOE_NODE_GPUS`, or from rocm-smi):
    listed, never measured."""

    def __init__(self, devices: list[Gpu]) -> None:
        self._devices = devices

    def devices(self) -> list[Gpu]:
        return list(self._devices)

    def process_memory(self, gpus: Sequence[Gpu], pids: Collection[int]) -> dict[str, int]:
        return {}

    def device_memory(self, gpus: Sequence[Gpu]) -> dict[str, int]:
        return {}


def declared_gpus(text: str) -> list[Gpu]:
    """The devices a `FLOE_NODE_GPUS` value declares; raises ValueError naming what is wrong."""
    try:
        items = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{DECLARED} is not JSON ({err})") from None
    if not isinstance(items, list):
        raise ValueError(f"{DECLARED} must be a JSON list of devices, "
                         '[{"uuid": "GPU-...", "memory": 17179869184}, ...]')
    devices = []
    for index, item in enumerate(items):
        where = f"{DECLARED}[{index}]"
        uuid = item.get("uuid") if isinstance(item, dict) else None
        if not isinstance(uuid, str) or not re.match(r"(GPU|MIG)-\S+\Z", uuid, re.IGNORECASE):
            raise ValueError(f"{where} needs a \"uuid\" that starts with GPU- (as nvidia-smi -L "
                             "prints it)")
        memory = item.get("memory", 0)
        capability = item.get("compute_capability")
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
            raise ValueError(f"{where}: \"memory\" is a number of bytes")
        if capability is not None and not (
                isinstance(capability, list) and len(capability) == 2
                and all(isinstance(c, int) and not isinstance(c, bool) for c in capability)):
            raise ValueError(f"{where}: \"compute_capability\" is [major, minor], as [9, 0]")
        vendor = item.get("vendor", "nvidia")
        if vendor not in ("nvidia", "amd"):
            raise ValueError(f"{where}: \"vendor\" is \"nvidia\" or \"amd\"")
        devices.append(Gpu(index, uuid, str(item.get("name") or "declared GPU"), memory,
                           tuple(capability) if capability else None, vendor=vendor))
    return devices


def open_gpus(environ: Mapping[str, str]) -> tuple[GpuSource | None, str]:
    """The node's devices: those `FLOE_NODE_GPUS` declares, else NVML's, else rocm-smi's (AMD);
    or None and why."""
    text = environ.get(DECLARED)
    if text is None or not text.strip():
        source, why = open_nvml()
        if source is not None:
            return source, why
        from floe.pilot.rocm import open_rocm  # only where NVML cannot be used
        amd, amd_why = open_rocm()
        return (amd, amd_why) if amd is not None else (None, f"{why}; {amd_why}")
    try:
        devices = declared_gpus(text)
    except ValueError as err:
        return None, str(err)
    return ListedSource(devices), f"{len(devices)} GPUs declared in {DECLARED}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def assigned_gpus(
    environ: Mapping[str, str],
    devices: Sequence[Gpu],
    *,
    machine_ad_gpus: str | None = None,
    unassigned_means_all: bool = False,
) -> tuple[list[Gpu], str]:
    """The devices the batch system gave this slot, and a sentence saying how that was decided.

    The first assignment variable that is set decides (`ASSIGNMENT_VARIABLES`, with HTCondor's
    machine-ad AssignedGPUs after its environment variable); a set but empty
    CUDA_VISIBLE_DEVICES means no GPUs whatever the others say. With no variable set the slot
    has no GPUs, unless `unassigned_means_all` (for `floe run` on a workstation).
    """
    for name in VISIBILITY_VARIABLES:
        visible = environ.get(name)
        if visible is not None and not visible.strip():
            return [], f"{name} is set and empty"
    if not devices:
        return [], "the node lists no GPUs"
    for name, value in _assignments(environ, machine_ad_gpus):
        chosen, unmatched = _match(value, devices)
        source = f"{name}={value}"
        if unmatched:
            source += f" (not on this node: {', '.join(unmatched)})"
        return chosen, source
    if unassigned_means_all:
        return ([gpu for gpu in devices if not gpu.mig_enabled],
                "no GPU assignment variable is set; all GPUs the node lists")
    return [], (f"no GPU assignment variable ({', '.join(ASSIGNMENT_VARIABLES)}) is set, "
                f"so none of the {len(devices)} devices the node lists belong to this slot")


def _assignments(environ: Mapping[str, str],
                 machine_ad_gpus: str | None) -> Iterator[tuple[str, str]]:
    for name in ASSIGNMENT_VARIABLES:
        if name in environ:
            yield name, environ[name]
        if name == "_CONDOR_AssignedGPUs" and machine_ad_gpus is not None:
            yield "machine ad AssignedGPUs", machine_ad_gpus


def _match(value: str, devices: Sequence[Gpu]) -> tuple[list[Gpu], list[str]]:
    chosen: list[Gpu] = []
    unmatched: list[str] = []
    for token in re.split(r"[,\s]+", value.strip()):
        if not token:
            continue
        gpu = _find(token, devices)
        if gpu is None:
            unmatched.append(token)
        elif gpu not in chosen:
            chosen.append(gpu)
    return chosen, unmatched


def _find(token: str, devices: Sequence[Gpu]) -> Gpu | None:
    """The device a token names: an index ("0", HTCondor's "CUDA0"), or a UUID or a unique
    prefix of one ("GPU-c4a6ff11", "MIG-...")."""
    index = _INDEX_RE.match(token)
    if index:
        wanted = int(index.group(1))
        return next((g for g in devices if g.index == wanted and not g.is_mig_instance), None)
    prefix = token.lower()
    if not prefix.startswith(("gpu-", "mig-")):
        return None
    candidates = [g for g in devices if g.uuid.lower().startswith(prefix)]
    return candidates[0] if len(candidates) == 1 else None


def visible_devices(gpus: Sequence[Gpu]) -> str:
    """CUDA_VISIBLE_DEVICES (or, for AMD devices, ROCR_VISIBLE_DEVICES) naming exactly these
    devices, by UUID so that the value means the same device even where the batch system
    renumbers what a job sees."""
    return ",".join(gpu.uuid for gpu in gpus)
