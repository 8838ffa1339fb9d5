"""What every batch plugin promises, against real batch systems: SLURM and SGE on this machine,
and PBS through Slurm's PBS wrappers. Each test runs once per system."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from floe.config.resources import MIB
from floe.plugins.base import BatchPlugin, PilotShape, PilotState, PluginSettings
from floe.plugins.jobs import CommandJob
from floe.plugins.pbs import PbsPlugin, parse_qstat_full
from floe.plugins.sge import SgePlugin
from floe.plugins.slurm import SlurmPlugin
from tests.plugins.pilots import cleanup, pilot_command, pilot_env, state_of, wait_for


@dataclass
class Cluster:
    """One batch system as these tests need it."""

    make: Callable[[str, Path], BatchPlugin]  # the plugin of factory id X working in dir Y
    capacity: int                             # CPUs of the one node: a pilot that big fills it
    untagged: list[str]                       # submits a user's job named floe-analysis
    cancel: list[str]                         # removes jobs by id
    alive: Callable[[str], bool]              # whether a job is queued or running, by id


def _output(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _slurm(request: pytest.FixtureRequest, tmp_path: Path) -> Cluster:
    request.getfixturevalue("slurm_cluster")
    return Cluster(
        make=lambda factory_id, workdir: SlurmPlugin(PluginSettings(factory_id, workdir)),
        capacity=int(_output(["sinfo", "-h", "-o", "%c"]).split()[0]),
        untagged=["sbatch", "--parsable", "--job-name=floe-analysis", "--mem=64M",
                  "--output=/dev/null", "--wrap", "sleep 120"],
        cancel=["scancel"],
        alive=lambda batch_id: _output(["squeue", "-h", "-j", batch_id, "-o", "%T"]).strip()
        in ("PENDING", "RUNNING"))


def _sge(request: pytest.FixtureRequest, tmp_path: Path) -> Cluster:
    request.getfixturevalue("sge_cluster")
    slots = next(line.split()[1] for line in _output(["qconf", "-sq", "all.q"]).splitlines()
                 if line.startswith("slots"))
    return Cluster(
        make=lambda factory_id, workdir: SgePlugin(PluginSettings(factory_id, workdir)),
        capacity=int(slots),
        untagged=["qsub", "-terse", "-N", "floe-analysis", "-o", "/dev/null", "-j", "y",
                  "-b", "y", "sleep", "120"],
        cancel=["qdel"],
        alive=lambda batch_id: subprocess.run(["qstat", "-j", batch_id], capture_output=True,
                                              check=False).returncode == 0)


def _pbs(request: pytest.FixtureRequest, tmp_path: Path) -> Cluster:
    commands: Path = request.getfixturevalue("pbs_commands")
    script = tmp_path / "analysis.sh"
    script.write_text("#!/bin/sh\nsleep 120\n")

    def make(factory_id: str, workdir: Path) -> BatchPlugin:
        return PbsPlugin(PluginSettings(factory_id, workdir, commands_dir=commands,
                                        options={"flavour": "torque"}))

    return Cluster(
        make=make,
        capacity=int(_output(["sinfo", "-h", "-o", "%c"]).split()[0]),
        untagged=[str(commands / "qsub"), "-N", "floe-analysis", "-o", "/dev/null", "-e",
                  "/dev/null", "-l", "mem=64mb", str(script)],
        cancel=[str(commands / "qdel")],
        alive=lambda batch_id: parse_qstat_full(_output([str(commands / "qstat"), "-f", batch_id]))
        [batch_id].get("job_state") in ("Q", "R"))


@pytest.fixture(params=[
    pytest.param(_slurm, id="slurm", marks=pytest.mark.slurm),
    pytest.param(_sge, id="sge", marks=pytest.mark.sge),
    pytest.param(_pbs, id="pbs", marks=pytest.mark.slurm),
])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Cluster:
    return request.param(request, tmp_path)


@pytest.fixture
def plugin(cluster: Cluster, factory_id: str, tmp_path: Path,
           pilot_dir: Path) -> Iterator[BatchPlugin]:
    plugin = cluster.make(factory_id, tmp_path / "factory")
    yield plugin
    cleanup(plugin, pilot_dir)


SMALL = PilotShape("small", cpus=1, memory=256 * MIB, walltime=600)


def test_status_follows_a_pilot_from_queued_to_running_to_finished(
        cluster: Cluster, plugin: BatchPlugin, pilot_dir: Path) -> None:
    command = pilot_command(pilot_dir)
    [blocker] = plugin.submit(PilotShape("whole", cpus=cluster.capacity, memory=256 * MIB),
                              CommandJob(command, 1, {}))
    wait_for(lambda: state_of(plugin, blocker) is PilotState.RUNNING, "the blocker to run")
    [pilot] = plugin.submit(SMALL, CommandJob(command, 1, {}))

    queued = plugin.status()[pilot]
    assert queued.state is PilotState.QUEUED
    assert queued.shape == "small"
    assert queued.started is None

    assert plugin.remove([blocker]) == [blocker]
    wait_for(lambda: state_of(plugin, pilot) is PilotState.RUNNING, "the pilot to run")
    assert plugin.status()[pilot].shape == "small"
    pilot_env(pilot_dir, pilot)

    (pilot_dir / "release").touch()
    # SLURM and PBS list a finished job for a while; SGE forgets it at once.
    wait_for(lambda: state_of(plugin, pilot) in (PilotState.FINISHED, None),
             "the pilot to finish")
    assert (pilot_dir / f"{pilot}.done").exists()


def test_remove_stops_a_running_pilot(plugin: BatchPlugin, pilot_dir: Path) -> None:
    [pilot, other] = plugin.submit(SMALL, CommandJob(pilot_command(pilot_dir), 2, {}))
    pid = pilot_env(pilot_dir, pilot)["FLOE_TEST_PID"]

    assert plugin.remove([pilot]) == [pilot]

    wait_for(lambda: state_of(plugin, pilot) in (PilotState.FINISHED, None), "the pilot to end")
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), f"the pilot's process {pid} to go")
    assert not (pilot_dir / f"{pilot}.done").exists()
    assert state_of(plugin, other) in (PilotState.QUEUED, PilotState.RUNNING)
    assert plugin.remove([pilot]) == []  # already gone: nothing left to do


def test_orphans_are_only_this_factorys_untracked_pilots(
        cluster: Cluster, plugin: BatchPlugin, pilot_dir: Path, tmp_path: Path) -> None:
    command = pilot_command(pilot_dir)
    tracked, untracked = plugin.submit(SMALL, CommandJob(command, 2, {}))
    # A factory whose id starts with ours must not be mistaken for us.
    neighbour = cluster.make(plugin.settings.factory_id + "x", tmp_path / "neighbour")
    [theirs] = neighbour.submit(SMALL, CommandJob(command, 1, {}))
    untagged = _output(cluster.untagged).strip()
    try:
        assert plugin.orphans({tracked}) == [untracked]
        assert plugin.remove([theirs, untagged]) == []

        assert plugin.remove_orphans({tracked}) == [untracked]

        wait_for(lambda: state_of(plugin, untracked) in (PilotState.FINISHED, None),
                 "the orphan to go")
        assert state_of(plugin, tracked) in (PilotState.QUEUED, PilotState.RUNNING)
        assert state_of(neighbour, theirs) in (PilotState.QUEUED, PilotState.RUNNING)
        assert plugin.orphans({tracked}) == []
        assert cluster.alive(untagged)
    finally:
        cleanup(neighbour)
        subprocess.run([*cluster.cancel, untagged], capture_output=True, check=False)

