"""Which GPUs belong to the slot: each assignment variable by index and by UUID against a device
list, no assignment or no NVML meaning no GPUs; and, on a node with an NVIDIA GPU, real NVML."""

from __future__ import annotations

import ctypes
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from floe.pilot.gpus import (
    Gpu,
    assigned_gpus,
    declared_gpus,
    open_gpus,
    open_nvml,
    visible_devices,
)
from floe.pilot.runner import RunnerSettings, run_task
from floe.pilot.slot import measure

ROOT = Path(__file__).resolve().parents[2]

A = Gpu(0, "GPU-aaaa1111-0000-0000-0000-000000000000", "NVIDIA H100", 80 * 2**30, (9, 0))
B = Gpu(1, "GPU-bbbb2222-0000-0000-0000-000000000000", "NVIDIA H100", 80 * 2**30, (9, 0))
C = Gpu(2, "GPU-cccc3333-0000-0000-0000-000000000000", "NVIDIA A100", 40 * 2**30, (8, 0),
        mig_enabled=True)
C_MIG = Gpu(2, "MIG-dddd4444-0000-0000-0000-000000000000", "NVIDIA A100 MIG 1g.5gb", 5 * 2**30,
            (8, 0), parent_uuid=C.uuid)
NODE = [A, B, C, C_MIG]


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("CUDA_VISIBLE_DEVICES", "1", [B]),
    ("CUDA_VISIBLE_DEVICES", "1,0", [B, A]),
    ("CUDA_VISIBLE_DEVICES", B.uuid, [B]),
    ("CUDA_VISIBLE_DEVICES", C_MIG.uuid, [C_MIG]),
    ("_CONDOR_AssignedGPUs", "GPU-bbbb2222", [B]),
    ("_CONDOR_AssignedGPUs", "CUDA0,CUDA1", [A, B]),
    ("SLURM_JOB_GPUS", "0,1", [A, B]),
    ("SLURM_STEP_GPUS", "1", [B]),
    ("GPU_DEVICE_ORDINAL", "0", [A]),
])
def test_each_assignment_variable_names_gpus_by_index_or_uuid(variable, value, expected):
    gpus, source = assigned_gpus({variable: value}, NODE)
    assert gpus == expected
    assert source == f"{variable}={value}"


def test_no_assignment_variable_means_no_gpus_even_when_nvml_sees_some():
    gpus, source = assigned_gpus({"PATH": "/usr/bin"}, NODE)
    assert gpus == []
    assert "no GPU assignment variable" in source


def test_empty_cuda_visible_devices_means_no_gpus_whatever_else_is_set():
    env = {"CUDA_VISIBLE_DEVICES": "", "_CONDOR_AssignedGPUs": "GPU-aaaa1111"}
    assert assigned_gpus(env, NODE) == ([], "CUDA_VISIBLE_DEVICES is set and empty")


def test_htcondor_assignment_wins_over_renumbered_cuda_visible_devices():
    env = {"_CONDOR_AssignedGPUs": "GPU-bbbb2222", "CUDA_VISIBLE_DEVICES": "0"}
    assert assigned_gpus(env, NODE)[0] == [B]


def test_step_gpus_win_over_job_gpus():
    env = {"SLURM_JOB_GPUS": "0,1", "SLURM_STEP_GPUS": "0"}
    assert assigned_gpus(env, NODE)[0] == [A]


def test_machine_ad_assignment_is_used_when_the_environment_has_none():
    gpus, source = assigned_gpus({}, NODE, machine_ad_gpus="GPU-aaaa1111")
    assert gpus == [A]
    assert source.startswith("machine ad AssignedGPUs")


def test_names_not_on_this_node_are_dropped_and_reported():
    gpus, source = assigned_gpus({"CUDA_VISIBLE_DEVICES": "0,7,GPU-ffff"}, NODE)
    assert gpus == [A]
    assert "not on this node: 7, GPU-ffff" in source


def test_an_ambiguous_uuid_prefix_matches_nothing():
    twins = [Gpu(0, "GPU-ab12-1", "x", 1), Gpu(1, "GPU-ab12-2", "x", 1)]
    assert assigned_gpus({"_CONDOR_AssignedGPUs": "GPU-ab12"}, twins)[0] == []


def test_unassigned_gpus_are_all_ours_only_when_asked_and_never_mig_parents():
    assert assigned_gpus({}, NODE, unassigned_means_all=True)[0] == [A, B, C_MIG]


def test_a_node_without_nvml_has_no_gpus_even_with_an_assignment(tmp_path):
    slot = measure({"CUDA_VISIBLE_DEVICES": "0"}, scratch=tmp_path, gpu_source=None)
    assert slot.gpus == ()
    assert slot.sources["gpus"].startswith("no GPUs")


def test_without_pynvml_open_nvml_says_why():
    code = ("import sys; sys.modules['pynvml'] = None\n"
            "from floe.pilot.gpus import open_nvml\n"
            "source, why = open_nvml(); print(source, why)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "None pynvml is not importable"


def test_declared_devices_stand_in_for_nvml_and_the_assignment_still_decides(tmp_path):
    declared = json.dumps([{"uuid": A.uuid, "name": "NVIDIA H100", "memory": A.memory,
                            "compute_capability": [9, 0]}, {"uuid": B.uuid}])
    env = {"FLOE_NODE_GPUS": declared, "CUDA_VISIBLE_DEVICES": B.uuid}
    slot = measure(env, scratch=tmp_path)
    assert [g.uuid for g in slot.gpus] == [B.uuid]
    assert slot.gpus[0].name == "declared GPU" and slot.gpus[0].memory == 0
    assert slot.sources["gpus"] == (f"CUDA_VISIBLE_DEVICES={B.uuid}; 2 GPUs declared in "
                                    "FLOE_NODE_GPUS")
    source, _ = open_gpus({"FLOE_NODE_GPUS": declared})
    assert source.devices()[0] == A and source.device_memory([A]) == {}
    unassigned = measure({"FLOE_NODE_GPUS": declared}, scratch=tmp_path)
    assert unassigned.gpus == ()  # declared, but not this slot's


@pytest.mark.parametrize(("declared", "problem"), [
    ("GPU-aaaa", "FLOE_NODE_GPUS is not JSON"),
    ('{"uuid": "GPU-aaaa"}', "must be a JSON list of devices"),
    ('[{"uuid": "0"}]', 'FLOE_NODE_GPUS[0] needs a "uuid" that starts with GPU-'),
    ('[{"uuid": "GPU-a", "memory": "16GiB"}]', '"memory" is a number of bytes'),
    ('[{"uuid": "GPU-a", "compute_capability": "9.0"}]', '"compute_capability" is [major'),
])
def test_a_wrong_declaration_leaves_no_gpus_and_says_what_is_wrong(tmp_path, declared,
                                                                     problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        declared_gpus(declared)
    slot = measure({"FLOE_NODE_GPUS": declared, "CUDA_VISIBLE_DEVICES": "0"}, scratch=tmp_path)
    assert slot.gpus == () and problem in slot.sources["gpus"]


def test_cuda_visible_devices_for_a_task_names_its_gpus_by_uuid():
    assert visible_devices([B, C_MIG]) == f"{B.uuid},{C_MIG.uuid}"
    assert visible_devices([]) == ""


# ---------------------------------------------------------------- on a real NVIDIA GPU

NVML, NVML_NOTE = open_nvml()
needs_gpu = pytest.mark.skipif(NVML is None, reason=f"no NVIDIA GPU here ({NVML_NOTE})")


@pytest.mark.gpu
@needs_gpu
def test_real_nvml_describes_the_nodes_gpus():
    devices = NVML.devices()
    assert devices
    whole = [gpu for gpu in devices if not gpu.is_mig_instance]
    assert [gpu.index for gpu in whole] == list(range(len(whole)))
    for gpu in whole:
        assert gpu.uuid.startswith("GPU-")
        assert gpu.memory > 2**30
        assert gpu.name
        assert gpu.compute_capability is not None and gpu.compute_capability[0] >= 3


@pytest.mark.gpu
@needs_gpu
def test_real_slot_gets_only_the_assigned_gpu(tmp_path):
    first = NVML.devices()[0]
    by_index = measure({"CUDA_VISIBLE_DEVICES": "0"}, scratch=tmp_path, gpu_source=NVML)
    by_uuid = measure({"_CONDOR_AssignedGPUs": first.uuid[:12]}, scratch=tmp_path,
                      gpu_source=NVML)
    unassigned = measure({}, scratch=tmp_path, gpu_source=NVML)
    assert by_index.gpus == (first,)
    assert by_uuid.gpus == (first,)
    assert unassigned.gpus == ()
    assert "no GPU assignment variable" in unassigned.sources["gpus"]


def _libcuda_missing() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return True
    return False


# What the CUDA driver itself shows a task: CUDA honours CUDA_VISIBLE_DEVICES, NVML does not.
CUDA_VIEW = textwrap.dedent("""
    import ctypes, os, sys, time
    cuda = ctypes.CDLL("libcuda.so.1")
    status = cuda.cuInit(0)
    count = ctypes.c_int(0)
    if status == 0:
        cuda.cuDeviceGetCount(ctypes.byref(count))
    print(repr(os.environ["CUDA_VISIBLE_DEVICES"]), status, count.value)
    if status == 0 and len(sys.argv) > 1:
        device, context, memory = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
        assert cuda.cuDeviceGet(ctypes.byref(device), 0) == 0
        assert cuda.cuCtxCreate_v2(ctypes.byref(context), 0, device) == 0
        assert cuda.cuMemAlloc_v2(ctypes.byref(memory), int(sys.argv[1])) == 0
        time.sleep(3)
""")
CUDA_NO_DEVICE = 100


@pytest.mark.gpu
@needs_gpu
@pytest.mark.skipif(_libcuda_missing(), reason="the NVIDIA driver's libcuda.so.1 is missing")
def test_real_gpu_task_sees_only_its_gpu_and_a_cpu_task_sees_none(tmp_path):
    first = NVML.devices()[0]
    settings = RunnerSettings(sample_interval=0.1)
    gpu_task = {"name": "gpu", "requirements": {"gpus": 1},
                "modules": [{"command": [sys.executable, "-c", CUDA_VIEW]}]}
    cpu_task = {"name": "cpu", "modules": [{"command": [sys.executable, "-c", CUDA_VIEW]}]}
    on_gpu = run_task({"task": gpu_task}, tmp_path / "gpu", gpus=[first], gpu_source=NVML,
                      settings=settings)
    on_cpu = run_task({"task": cpu_task}, tmp_path / "cpu", gpu_source=NVML, settings=settings)
    assert on_gpu.ok, on_gpu.stderr_tail
    assert on_gpu.stdout_tail == f"{first.uuid!r} 0 1\n"
    assert on_cpu.ok, on_cpu.stderr_tail
    assert on_cpu.stdout_tail == f"'' {CUDA_NO_DEVICE} 0\n"


@pytest.mark.gpu
@needs_gpu
@pytest.mark.skipif(_libcuda_missing(), reason="the NVIDIA driver's libcuda.so.1 is missing")
def test_real_gpu_memory_of_a_task_is_measured(tmp_path):
    first = NVML.devices()[0]
    raw = {"name": "alloc", "requirements": {"gpus": 1},
           "modules": [{"command": [sys.executable, "-c", CUDA_VIEW, str(2**30)]}]}
    result = run_task({"task": raw}, tmp_path / "alloc", gpus=[first], gpu_source=NVML,
                      settings=RunnerSettings(sample_interval=0.1))
    assert result.ok, result.stderr_tail
    assert result.usage.peak_gpu_memory >= 2**30
    assert result.usage.gpu_time > 0


class _Node:
    def devices(self) -> list[Gpu]:
        return list(NODE)


def test_a_shape_of_fewer_gpus_than_assigned_offers_only_its_share(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "FLOE_SHAPE_GPUS": "1"}
    slot = measure(env, scratch=tmp_path, gpu_source=_Node())
    assert slot.gpus == (A,)
    assert "FLOE_SHAPE_GPUS" in slot.sources["gpus"]
    cpu_shape = measure({**env, "FLOE_SHAPE_GPUS": "0"}, scratch=tmp_path, gpu_source=_Node())
    assert cpu_shape.gpus == ()
