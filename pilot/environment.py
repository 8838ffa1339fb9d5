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

from config.protocol import MAX_STATISTIC, MAX_STATISTICS
from pilot.gpus import Gpu, visible_devices

SECRET_PREFIXES = ("FLOE_TOKEN", "FLOE_PILOT_TOKEN", "FLOE_PASSKEY")

# Libraries that size their thread pools from these instead of from the CPUs they may use.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMEXPR_MAX_THREADS",
    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "JULIA_NUM_THREADS", "GOMAXPROCS",
    "RAYON_NUM_THREADS",
)

# The pilot's own GPU assignment speaks for the whole slot; a task gets CUDA_VISIBLE_DEVICES only.
SLOT_GPU_VARIABLES = ("_CONDOR_AssignedGPUs", "GPU_DEVICE_ORDINAL")

STATS_LIMIT_BYTES = 1 << 20
STATS_NAME_LENGTH = 200


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
    """The complete environment of one module."""
    env = {name: value for name, value in base.items()
           if not name.startswith(SECRET_PREFIXES) and name not in SLOT_GPU_VARIABLES}
    env.update({name: str(cpus) for name in THREAD_VARIABLES})
    env["TMPDIR"] = str(scratch)
    env.update({name: str(value) for name, value in task_env.items()})
    env.update({name: str(value) for name, value in module_env.items()})
    env.update({
        "CUDA_VISIBLE_DEVICES": visible_devices(gpus),
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


class StatisticsError(ValueError):
    """A statistics file that is not a JSON object of names to numbers."""


def read_statistics(path: Path) -> dict[str, float]:
    """The statistics a module wrote to FLOE_STATS ({} when it wrote none)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return {}
    where = f"the statistics file FLOE_STATS ({path.name})"
    if size > STATS_LIMIT_BYTES:
        raise StatisticsError(f"{where} is {size} bytes; keep it under {STATS_LIMIT_BYTES}")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise StatisticsError(f"{where} is not JSON ({err}); write an object like "
                              '{"events": 1000}') from None
    if not isinstance(data, dict):
        raise StatisticsError(f"{where} holds {type(data).__name__}; write an object like "
                              '{"events": 1000}')
    if len(data) > MAX_STATISTICS:
        raise StatisticsError(f"{where} has {len(data)} entries; keep it to "
                              f"{MAX_STATISTICS}")
    for name, value in data.items():
        if not name or len(name) > STATS_NAME_LENGTH:
            raise StatisticsError(f"{where}: names must have 1 to {STATS_NAME_LENGTH} "
                                  f"characters, got {name[:40]!r}")
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or abs(value) > MAX_STATISTIC):
            raise StatisticsError(f"{where}: {name!r} is {json.dumps(value)[:40]}; every value "
                                  f"must be a number from -{MAX_STATISTIC:g} to "
                                  f"{MAX_STATISTIC:g}")
    # A whole number past 64 bits is no integer the matchmaker stores: send it as a double.
    return {name: float(value) if isinstance(value, int) and abs(value) > 2**53 else value
            for name, value in data.items()}
