"""AMD GPUs: rocm-smi's device list (a real `rocm-smi` program on the PATH, printing what a node
with two MI250X dies prints), ROCR_VISIBLE_DEVICES and HIP_VISIBLE_DEVICES as the slot's
assignment, and a task seeing its own device through ROCR_VISIBLE_DEVICES."""

from __future__ import annotations

import json
import os
import stat

import pytest

from floe.pilot.environment import task_base, task_environment
from floe.pilot.gpus import assigned_gpus, open_gpus
from floe.pilot.rocm import parse_rocm_smi
from floe.pilot.slot import measure

CARDS = {
    "card0": {"Unique ID": "0x18f68e602b8a790f", "Card series": "AMD Instinct MI250X",
              "VRAM Total Memory (B)": "68702699520", "VRAM Total Used Memory (B)": "10"},
    "card1": {"Unique ID": "0x62f7ed2a9a0e8d54", "Card series": "AMD Instinct MI250X",
              "VRAM Total Memory (B)": "68702699520", "VRAM Total Used Memory (B)": "10"},
    "system": {"Driver version": "6.2.4"},
}


@pytest.fixture
def rocm_smi(tmp_path, monkeypatch):
    """A `rocm-smi` on the PATH that prints CARDS as rocm-smi --json does."""
    program = tmp_path / "bin" / "rocm-smi"
    program.parent.mkdir()
    program.write_text(f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(CARDS)}\nEOF\n")
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{program.parent}{os.pathsep}{os.environ['PATH']}")
    return program


def test_rocm_smi_cards_become_amd_devices_named_as_rocr_takes_them():
    first, second = parse_rocm_smi(json.dumps(CARDS))
    assert (first.index, first.uuid, first.name, first.memory, first.vendor) == (
        0, "GPU-18f68e602b8a790f", "AMD Instinct MI250X", 68702699520, "amd")
    assert second.uuid == "GPU-62f7ed2a9a0e8d54"
    with pytest.raises(ValueError, match="no unique id"):
        parse_rocm_smi(json.dumps({"card0": {"Card series": "x"}}))


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("ROCR_VISIBLE_DEVICES", "1", [1]),
    ("ROCR_VISIBLE_DEVICES", "GPU-62f7ed2a9a0e8d54", [1]),
    ("HIP_VISIBLE_DEVICES", "0,1", [0, 1]),
    ("SLURM_JOB_GPUS", "0", [0]),
    ("ROCR_VISIBLE_DEVICES", "", []),
    ("HIP_VISIBLE_DEVICES", " ", []),
])
def test_the_amd_assignment_variables_name_the_slots_devices(variable, value, expected):
    devices = parse_rocm_smi(json.dumps(CARDS))
    chosen, _ = assigned_gpus({variable: value}, devices)
    assert [gpu.index for gpu in chosen] == expected


def test_a_node_without_nvml_lists_its_amd_gpus_through_rocm_smi(rocm_smi, tmp_path):
    source, why = open_gpus({})
    assert why == "rocm-smi: 2 AMD GPUs"
    assert [gpu.uuid for gpu in source.devices()] == ["GPU-18f68e602b8a790f",
                                                      "GPU-62f7ed2a9a0e8d54"]
    slot = measure({"ROCR_VISIBLE_DEVICES": "1"}, scratch=tmp_path)
    assert [gpu.uuid for gpu in slot.gpus] == ["GPU-62f7ed2a9a0e8d54"]
    assert slot.sources["gpus"] == "ROCR_VISIBLE_DEVICES=1; rocm-smi: 2 AMD GPUs"


def test_an_amd_task_sees_its_device_through_rocr_and_a_cpu_task_sees_none(tmp_path):
    gpu = parse_rocm_smi(json.dumps(CARDS))[1]
    base = task_base({"ROCR_VISIBLE_DEVICES": "0,1", "HIP_VISIBLE_DEVICES": "0,1",
                      "PATH": "/bin"})
    common = {"scratch": tmp_path, "cpus": 1, "stats_file": tmp_path / "s", "args": {},
              "task_env": {}, "module_env": {}}
    env = task_environment(base, gpus=[gpu], **common)
    assert env["ROCR_VISIBLE_DEVICES"] == "GPU-62f7ed2a9a0e8d54"
    assert "HIP_VISIBLE_DEVICES" not in env and "CUDA_VISIBLE_DEVICES" not in env
    assert env["FLOE_GPUS"] == "1"
    cpu_only = task_environment(base, gpus=[], **common)
    assert cpu_only["CUDA_VISIBLE_DEVICES"] == ""  # which HIP reads as its own: no device
    assert "ROCR_VISIBLE_DEVICES" not in cpu_only and "HIP_VISIBLE_DEVICES" not in cpu_only
