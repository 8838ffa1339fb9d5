"""The Grid Engine plugin: its submit script, its reading of qstat's state letters, and its
pilots in the real single-node SGE of scripts/batch/sge.sh (the shared lifecycle is in
test_lifecycle.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from floe.config.resources import GIB, MIB
from floe.plugins.base import BatchError, PilotShape, PilotState, PluginSettings
from floe.plugins.jobs import CommandJob
from floe.plugins.sge import SgePlugin, pilot_state
from tests.plugins.pilots import (
    cleanup,
    fake_command,
    pilot_command,
    pilot_env,
    state_of,
    wait_for,
)


def make_plugin(workdir: Path, factory_id: str = "f1", **options: object) -> SgePlugin:
    return SgePlugin(PluginSettings(factory_id=factory_id, workdir=workdir, options=options))


@pytest.fixture
def sge(sge_cluster: None, factory_id: str, tmp_path: Path,
        pilot_dir: Path) -> Iterator[SgePlugin]:
    plugin = make_plugin(tmp_path / "factory", factory_id)
    yield plugin
    cleanup(plugin, pilot_dir)


def header(plugin: SgePlugin, shape: PilotShape) -> list[str]:
    script = plugin.render(shape, Path("/logs/x"), CommandJob(["true"]), 0)
    return [line.removeprefix("#$ ") for line in script.splitlines() if line.startswith("#$ ")]


def test_memory_is_asked_per_slot_and_cpus_as_a_parallel_environment(tmp_path: Path) -> None:
    lines = header(make_plugin(tmp_path), PilotShape("pair", cpus=2, memory=512 * MIB,
                                                     walltime=600))
    assert "-N floe-f1-pair" in lines
    assert "-pe smp 2" in lines
    assert "-l h_vmem=384M" in lines  # (512 + 256) MiB over two slots
    assert "-l h_rt=900" in lines
    assert "-o /logs/x-$JOB_ID.out" in lines


def test_one_cpu_needs_no_parallel_environment_and_site_options_apply(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, queue="long.q", project="icecube",
                         parallel_environment="threads", memory_resource="mem_free",
                         gpu_resource="cuda", disk_resource="tmpfree")
    lines = header(plugin, PilotShape("one", cpus=1, memory=4 * GIB, disk=GIB, gpus=1,
                                      directives=("-l arch=lx-amd64",)))
    assert not any(line.startswith("-pe") for line in lines)
    for expected in ("-l mem_free=4506M", "-l cuda=1", "-l tmpfree=1024M", "-q long.q",
                     "-P icecube", "-l arch=lx-amd64"):
        assert expected in lines


@pytest.mark.parametrize(("letters", "state"), [
    ("qw", PilotState.QUEUED), ("hqw", PilotState.HELD), ("Eqw", PilotState.HELD),
    ("r", PilotState.RUNNING), ("t", PilotState.RUNNING), ("Rr", PilotState.RUNNING),
    ("dr", PilotState.RUNNING), ("s", PilotState.HELD), ("S", PilotState.HELD),
    ("x", PilotState.UNKNOWN),
])
def test_qstat_state_letters_map_to_pilot_states(letters: str, state: PilotState) -> None:
    assert pilot_state(letters) is state


@pytest.mark.sge
def test_pilots_get_their_slots_and_memory_limit(sge: SgePlugin, pilot_dir: Path) -> None:
    shape = PilotShape("pair", cpus=2, memory=512 * MIB, walltime=600)
    ids = sge.submit(shape, CommandJob(pilot_command(pilot_dir), 2,
                                       {"FLOE_TOKEN_FILE": "/tmp/a b"}))
    for batch_id in ids:
        env = pilot_env(pilot_dir, batch_id)
        assert env["JOB_ID"] == env["FLOE_BATCH_ID"] == batch_id
        assert env["NSLOTS"] == "2"
        assert env["FLOE_TEST_ULIMIT_V"] == str(768 * 1024)  # KiB: 384M per slot, two slots
        assert env["FLOE_TOKEN_FILE"] == "/tmp/a b"
    job = subprocess.run(["qstat", "-j", ids[0]], capture_output=True, text=True,
                         check=True).stdout
    assert "h_rt=900" in job


@pytest.mark.sge
def test_a_pilot_in_error_is_held(sge: SgePlugin) -> None:
    # A working directory that does not exist puts the job into Eqw when it is dispatched.
    shape = PilotShape("broken", memory=256 * MIB, directives=("-wd /nonexistent/floe",))
    [pilot] = sge.submit(shape, CommandJob(["true"], 1, {}))
    wait_for(lambda: state_of(sge, pilot) is PilotState.HELD, "the pilot to go into error")
    assert sge.status()[pilot].detail == "Eqw"
    assert sge.remove([pilot]) == [pilot]
    wait_for(lambda: state_of(sge, pilot) is None, "the pilot to be removed")


@pytest.mark.sge
def test_a_queue_that_does_not_exist_is_a_batch_error_naming_qsub(
        sge_cluster: None, factory_id: str, tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, factory_id, queue="nosuch.q")
    with pytest.raises(BatchError) as caught:
        plugin.submit(PilotShape("small"), CommandJob(["true"], 1, {}))
    message = str(caught.value)
    assert message.startswith("qsub failed with exit code 1.")
    assert 'unknown queue "nosuch.q"' in message


def test_qstat_output_that_is_not_xml_is_a_batch_error(tmp_path: Path) -> None:
    bin_dir = fake_command(tmp_path / "bin", "qstat", "echo 'error: commlib error'")
    plugin = SgePlugin(PluginSettings("f1", tmp_path, commands_dir=bin_dir))
    with pytest.raises(BatchError, match="qstat printed XML that the sge plugin cannot read"):
        plugin.status()


def test_hosts_kept_out_as_black_holes_are_a_host_resource_expression(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path)
    plugin.avoid(["wn042", "wn007"])
    assert "-l h=!(wn007|wn042)" in header(plugin, PilotShape("small"))
