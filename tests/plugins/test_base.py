"""What the plugins share: headroom and overhead, tags, settings checks, the submit script's
environment, and how a failing batch command becomes one BatchError."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from floe.config.resources import GIB, MIB
from floe.plugins import SYSTEMS, create_plugin
from floe.plugins.base import BatchError, PilotShape, PluginConfigError, PluginSettings
from floe.plugins.jobs import CommandJob
from floe.plugins.slurm import SlurmPlugin
from tests.plugins.pilots import fake_command


def settings(workdir: Path, **fields: object) -> PluginSettings:
    return PluginSettings(factory_id="f1", workdir=workdir, **fields)


def test_headroom_is_a_tenth_of_the_memory_but_at_least_the_minimum(tmp_path: Path) -> None:
    plugin = SlurmPlugin(settings(tmp_path))
    assert plugin.memory_request(PilotShape("s", memory=512 * MIB)) == 768 * MIB
    assert plugin.memory_request(PilotShape("l", memory=10 * GIB)) == 11 * GIB
    custom = SlurmPlugin(settings(tmp_path, memory_headroom=0.5, memory_headroom_min=0))
    assert custom.memory_request(PilotShape("s", memory=512 * MIB)) == 768 * MIB


def test_walltime_overhead_is_added(tmp_path: Path) -> None:
    plugin = SlurmPlugin(settings(tmp_path, walltime_overhead=120))
    assert plugin.walltime_request(PilotShape("s", walltime=3600)) == 3720


def test_the_tag_names_factory_and_shape_and_only_ours_are_read_back(tmp_path: Path) -> None:
    plugin = SlurmPlugin(settings(tmp_path))
    assert plugin.tag(PilotShape("gpu.big")) == "floe-f1-gpu.big"
    assert plugin.shape_of("floe-f1-gpu.big") == "gpu.big"
    assert plugin.shape_of("floe-f12-small") is None
    assert plugin.shape_of("floe-f1-") is None
    assert plugin.shape_of("analysis") is None


def test_a_factory_id_with_a_dash_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(PluginConfigError, match=r"factory id 'site-a' cannot tag jobs.*no '-'"):
        PluginSettings(factory_id="site-a", workdir=tmp_path)


@pytest.mark.parametrize(("fields", "message"), [
    ({"name": "big gpu"}, "pilot shape name 'big gpu' is not usable in a job name"),
    ({"name": "s", "cpus": 0}, "pilot shape 's' has cpus=0: it must be positive"),
    ({"name": "s", "gpus": -1}, "pilot shape 's' has gpus=-1: it must not be negative"),
])
def test_an_unusable_shape_is_refused_naming_the_field(fields: dict, message: str) -> None:
    with pytest.raises(PluginConfigError, match=message):
        PilotShape(**fields)


def test_every_system_is_created_by_name(tmp_path: Path) -> None:
    for system in SYSTEMS:
        assert create_plugin(system, settings(tmp_path)).system == system
    with pytest.raises(PluginConfigError, match="unknown batch system 'lsf'; use one of: "):
        create_plugin("lsf", settings(tmp_path))


def test_the_scripts_environment_survives_the_shell_unchanged(tmp_path: Path) -> None:
    tricky = {"FLOE_A": "it's \"quoted\"", "FLOE_B": "$HOME `id` $(id)", "FLOE_C": "two\nlines"}
    script = SlurmPlugin(settings(tmp_path)).render(
        PilotShape("s"), tmp_path / "log", CommandJob(["/usr/bin/env", "-0"], 1, tricky), 0)
    path = tmp_path / "pilot.sh"
    path.write_text(script)
    output = subprocess.run(["/bin/sh", str(path)], capture_output=True, text=True,
                            check=True).stdout
    env = dict(item.split("=", 1) for item in output.split("\0") if "=" in item)
    for name, value in tricky.items():
        assert env[name] == value
    assert env["FLOE_PILOT_SHAPE"] == "s"


def test_an_environment_name_a_shell_cannot_export_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PluginConfigError, match="'BAD-NAME' is not valid in a shell"):
        SlurmPlugin(settings(tmp_path)).submit(PilotShape("s"),
                                               CommandJob(["true"], 1, {"BAD-NAME": "x"}))


@pytest.mark.parametrize(("system", "command"), [
    ("slurm", "squeue"), ("sge", "qstat"), ("pbs", "qstat")])
def test_a_missing_batch_command_is_a_batch_error_naming_it(
        tmp_path: Path, system: str, command: str) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    plugin = create_plugin(system, settings(tmp_path, commands_dir=empty))
    with pytest.raises(BatchError) as caught:
        plugin.status()
    assert caught.value.summary == (
        f"{command} was not found on this machine: install the {system} client commands or set "
        "commands_dir to where they are.")
    assert caught.value.command == [str(empty / command), *caught.value.command[1:]]


def test_a_batch_command_that_hangs_is_a_batch_error_after_the_timeout(tmp_path: Path) -> None:
    bin_dir = fake_command(tmp_path / "bin", "squeue", "exec sleep 30")
    plugin = SlurmPlugin(settings(tmp_path, commands_dir=bin_dir, command_timeout=0.3))
    with pytest.raises(BatchError, match=r"squeue did not answer within 0.3 s \(command_timeout"):
        plugin.status()


def test_a_refusal_names_the_command_its_exit_code_and_what_it_said(tmp_path: Path) -> None:
    bin_dir = fake_command(tmp_path / "bin", "scancel",
                           "echo 'scancel: error: Access/permission denied' >&2; exit 1")
    plugin = SlurmPlugin(settings(tmp_path, commands_dir=bin_dir))
    with pytest.raises(BatchError) as caught:
        plugin.run(["scancel", "42"])
    assert str(caught.value).splitlines() == [
        "scancel failed with exit code 1.",
        f"  command: {bin_dir}/scancel 42",
        "  exit code: 1",
        "  stderr: scancel: error: Access/permission denied",
    ]


def test_a_submit_that_fails_halfway_reports_the_pilots_already_queued(tmp_path: Path) -> None:
    # sbatch that accepts one job, then refuses.
    bin_dir = fake_command(tmp_path / "bin", "sbatch", f"""
if [ -e {tmp_path}/accepted ]; then
    echo 'sbatch: error: QOSMaxSubmitJobPerUserLimit' >&2; exit 1
fi
touch {tmp_path}/accepted; echo 101""")
    plugin = SlurmPlugin(settings(tmp_path, commands_dir=bin_dir))
    with pytest.raises(BatchError) as caught:
        plugin.submit(PilotShape("s"), CommandJob(["true"], 3, {}))
    assert caught.value.submitted == ["101"]
    assert "submitted before the failure: 101" in str(caught.value)
    assert "QOSMaxSubmitJobPerUserLimit" in str(caught.value)
