"""The environment a task's modules run in, and the statistics file they may write.

A module sees the pilot's environment without the pilot's secrets, thread counts matching the
task's CPUs (a task may set its own in `env`), the task's and the module's `env`, and then what
floe decides and a task cannot change: the GPUs it claimed (none for a CPU task, so it cannot see
the node's GPUs) and the FLOE_* variables that locate its scratch directory and name its job.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from floe.config.protocol import MAX_STATISTIC, MAX_STATISTICS
from floe.pilot.gpus import Gpu, visible_devices

SECRET_PREFIXES = ("FLOE_TOKEN", "FLOE_PILOT_TOKEN", "FLOE_PASSKEY")

# Libraries that size their thread pools from these instead of from the CPUs they may use.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMEXPR_MAX_THREADS",
    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "JULIA_NUM_THREADS", "GOMAXPROCS",
    "RAYON_NUM_THREADS",
)

# The pilot's own GPU assignment speaks for the whole slot; a task gets its own devices only:
# CUDA_VISIBLE_DEVICES (NVIDIA), or ROCR_VISIBLE_DEVICES (AMD).
SLOT_GPU_VARIABLES = ("_CONDOR_AssignedGPUs", "GPU_DEVICE_ORDINAL", "ROCR_VISIBLE_DEVICES",
                      "HIP_VISIBLE_DEVICES")

STATS_LIMIT_BYTES = 1 << 20
STATS_NAME_LENGTH = 200


def task_base(environ: Mapping[str, str]) -> dict[str, str]:
    """What every module's environment starts from: `environ` (the pilot's) without the
    pilot's secrets and its slot-wide GPU assignment. Worked out once, not for every module."""
    return {name: value for name, value in environ.items()
            if not name.startswith(SECRET_PREFIXES) and name not in SLOT_GPU_VARIABLES}


def task_environment(
    base: Mapping[str, str],
    *,
    scratch: Path,
    cpus: int,
    gpus: Sequence[Gpu],
    stats_file: Path,
    args: Mapping[str, Any],
    task_env: Mapping[str, str],
    module_env: Mapping[str, str],
) -> dict[str, str]:
    """The complete environment of one module. `base` must come from `task_base`: the
    pilot's secrets are not looked for again here."""
    env = dict(base)
    env.update({name: str(cpus) for name in THREAD_VARIABLES})
    env["TMPDIR"] = str(scratch)
    env.update({name: str(value) for name, value in task_env.items()})
    env.update({name: str(value) for name, value in module_env.items()})
    amd = [gpu for gpu in gpus if gpu.vendor == "amd"]
    if amd:
        # ROCr shows the task its devices; HIP and CUDA_VISIBLE_DEVICES (which HIP reads as
        # its own) would then count within those, so they are left unset.
        env["ROCR_VISIBLE_DEVICES"] = visible_devices(amd)
        env.pop("CUDA_VISIBLE_DEVICES", None)
    if len(amd) < len(gpus) or not amd:
        env["CUDA_VISIBLE_DEVICES"] = visible_devices([g for g in gpus if g.vendor != "amd"])
    env.update({
        "FLOE_SCRATCH": str(scratch),
        "FLOE_STATS": str(stats_file),
        "FLOE_CPUS": str(cpus),
        "FLOE_GPUS": str(len(gpus)),
        "FLOE_JOB": str(args.get("job", "")),
        "FLOE_TASK": str(args.get("task", "")),
        "FLOE_DATASET": str(args.get("dataset", "")),
        "FLOE_ATTEMPT": str(args.get("attempt", "")),
    })
    return env


def process_markers(env: Mapping[str, str]) -> list[bytes]:
    """What in the environment `env` of a module's process marks every process the module
    starts as this attempt's, even one that left the module's tree (a session of its own): its
    scratch directory and its attempt, as b"NAME=value"."""
    return [f"{name}={env[name]}".encode() for name in ("FLOE_SCRATCH", "FLOE_ATTEMPT")]


def read_statistics(path: Path, have: Mapping[str, float]) -> tuple[dict[str, float], list[str]]:
    """The statistics a module wrote to FLOE_STATS ({} when it wrote none), and a warning for
    each thing left out: a file that is not a JSON object of names to numbers loses all of
    them, an entry that is not a finite number in range (or has no fitting name) loses itself,
    and names past MAX_STATISTICS together with `have` (the modules' before) are left out.
    Never raises: a task's finished work is not failed for what it said about itself."""
    where = "the statistics file FLOE_STATS"
    try:
        size = path.stat().st_size
        if size > STATS_LIMIT_BYTES:
            return {}, [f"{where} is {size} bytes, over {STATS_LIMIT_BYTES}: all of it left out"]
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}, []
    except (OSError, ValueError) as err:  # ValueError: not JSON, or not UTF-8
        return {}, [f"{where} is not JSON ({err}): all of it left out; write an object like "
                    '{"events": 1000}']
    if not isinstance(data, dict):
        return {}, [f"{where} holds a JSON {type(data).__name__}: all of it left out; write an "
                    'object like {"events": 1000}']
    kept: dict[str, float] = {}
    warnings = []
    crowded = 0
    for name, value in data.items():
        if not name or len(name) > STATS_NAME_LENGTH:
            warnings.append(f"{where}: the name {name[:40]!r} left out: names have 1 to "
                            f"{STATS_NAME_LENGTH} characters")
        elif (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or abs(value) > MAX_STATISTIC):
            warnings.append(f"{where}: {name[:40]!r} is {json.dumps(value)[:40]}, not a number "
                            f"from -{MAX_STATISTIC:g} to {MAX_STATISTIC:g}: left out")
        elif name not in have and name not in kept and len(have) + len(kept) >= MAX_STATISTICS:
            crowded += 1
        else:
            # A whole number past 64 bits is no integer the matchmaker stores: a double.
            kept[name] = float(value) if isinstance(value, int) and abs(value) > 2**53 else value
    if crowded:
        warnings.append(f"{where}: {crowded} statistics left out: a task's modules report "
                        f"{MAX_STATISTICS} at most together")
    return kept, warnings
