"""The SLURM plugin: its submit script, and its pilots in the real single-node SLURM of
scripts/batch/slurm.sh (the lifecycle that all systems share is in test_lifecycle.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from floe.config.resources import GIB, MIB
from floe.plugins.base import BatchError, PilotShape, PluginConfigError, PluginSettings
from floe.plugins.jobs import CommandJob
from floe.plugins.slurm import SlurmPlugin
from tests.plugins.pilots import cleanup, fake_command, pilot_command, pilot_env


def make_plugin(workdir: Path, factory_id: str = "f1", **options: object) -> SlurmPlugin:
    return SlurmPlugin(PluginSettings(factory_id=factory_id, workdir=workdir, options=options))


@pytest.fixture
def slurm(slurm_cluster: None, factory_id: str, tmp_path: Path,
          pilot_dir: Path) -> Iterator[SlurmPlugin]:
    plugin = make_plugin(tmp_path / "factory", factory_id)
    yield plugin
    cleanup(plugin, pilot_dir)


def header(plugin: SlurmPlugin, shape: PilotShape) -> list[str]:
    script = plugin.render(shape, Path("/logs/x"), CommandJob(["true"]), 0)
    return [line.removeprefix("#SBATCH ") for line in script.splitlines()
            if line.startswith("#SBATCH ")]


def test_the_script_asks_for_the_shape_with_headroom_and_overhead(tmp_path: Path) -> None:
    lines = header(make_plugin(tmp_path), PilotShape("large", cpus=4, memory=4 * GIB,
                                                     walltime=3600))
    assert "--job-name=floe-f1-large" in lines
    assert "--cpus-per-task=4" in lines
    assert "--mem=4506M" in lines  # 4096 MiB + a tenth (409.6 MiB), rounded up
    assert "--time=65" in lines    # an hour plus five minutes
    assert "--export=NONE" in lines
    assert not any(line.startswith(("--gpus", "--tmp", "--partition")) for line in lines)


def test_site_options_and_shape_directives_reach_the_script(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, partition="short", account="icecube", qos="low",
                         request_disk=True)
    lines = header(plugin, PilotShape("gpu", gpus=2, disk=10 * GIB,
                                      directives=("--constraint=avx2",)))
    for expected in ("--gpus=2", "--tmp=10240M", "--partition=short", "--account=icecube",
                     "--qos=low", "--constraint=avx2"):
        assert expected in lines


@pytest.mark.slurm
def test_pilots_run_with_the_cpus_memory_and_environment_asked(
        slurm: SlurmPlugin, pilot_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOE_TEST_FACTORY_SECRET", "site-token")
    shape = PilotShape("small", cpus=2, memory=512 * MIB, walltime=600)
    ids = slurm.submit(shape, CommandJob(pilot_command(pilot_dir), 2,
                                         {"FLOE_TOKEN_FILE": "/tmp/a file's \"name\""}))
    assert len(set(ids)) == 2
    # The script (it may hold pilot tokens) is gone once sbatch has its copy.
    assert not list((slurm.settings.workdir / "scripts").glob("*.sh"))
    for batch_id in ids:
        env = pilot_env(pilot_dir, batch_id)
        assert env["SLURM_JOB_ID"] == env["FLOE_BATCH_ID"] == batch_id
        assert env["SLURM_CPUS_ON_NODE"] == "2"
        assert env["SLURM_MEM_PER_NODE"] == "768"  # 512 MiB plus the minimum headroom, 256 MiB
        assert env["SLURM_JOB_NAME"] == f"floe-{slurm.settings.factory_id}-small"
        assert env["FLOE_TOKEN_FILE"] == "/tmp/a file's \"name\""
        assert env["FLOE_SHAPE_MEMORY"] == str(512 * MIB)
        assert "FLOE_TEST_FACTORY_SECRET" not in env
    limit = subprocess.run(["squeue", "-h", "-j", ids[0], "-o", "%l"], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert limit == "15:00"  # 10 minutes of walltime plus 5 of overhead


@pytest.mark.slurm
def test_a_partition_that_does_not_exist_is_a_batch_error_naming_sbatch(
        slurm_cluster: None, factory_id: str, tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, factory_id, partition="nosuch")
    with pytest.raises(BatchError) as caught:
        plugin.submit(PilotShape("small"), CommandJob(["true"], 2, {}))
    message = str(caught.value)
    assert message.startswith("sbatch failed with exit code 1.")
    assert "--parsable" in message and "invalid partition" in message.lower()
    assert caught.value.submitted == []


def test_unreadable_squeue_output_is_a_batch_error(tmp_path: Path) -> None:
    bin_dir = fake_command(tmp_path / "bin", "squeue", "echo 'this is not a job table'")
    plugin = SlurmPlugin(PluginSettings("f1", tmp_path, commands_dir=bin_dir))
    with pytest.raises(BatchError, match="squeue printed a line that the slurm plugin cannot"):
        plugin.status()


def test_a_submit_answer_without_a_job_id_is_a_batch_error(tmp_path: Path) -> None:
    bin_dir = fake_command(tmp_path / "bin", "sbatch", "echo 'Submitted batch job'")
    plugin = SlurmPlugin(PluginSettings("f1", tmp_path, commands_dir=bin_dir))
    with pytest.raises(BatchError, match="sbatch printed a job id that the slurm plugin"):
        plugin.submit(PilotShape("small"), CommandJob(["true"], 1, {}))


def test_an_unknown_option_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(PluginConfigError,
                       match=r"unknown slurm option 'partiton'; .* knows: .*partition"):
        make_plugin(tmp_path, partiton="short")


def test_hosts_kept_out_as_black_holes_are_excluded_and_odd_names_never_reach_the_script(
        tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path)
    assert plugin.keeps_off_hosts
    kept = plugin.avoid(["wn042", "c12.cluster.edu", "evil;rm -rf /", "$(reboot)"])
    assert kept == {"wn042", "c12.cluster.edu"}
    assert "--exclude=c12.cluster.edu,wn042" in header(plugin, PilotShape("small"))
    plugin.avoid([])
    assert not any(line.startswith("--exclude") for line in header(plugin, PilotShape("small")))


@pytest.mark.slurm
def test_check_asks_sbatch_whether_it_would_take_each_shape_queueing_nothing(
        slurm_cluster: None, factory_id: str, tmp_path: Path) -> None:
    shapes = [PilotShape("small", cpus=1, memory=256 * MIB, walltime=600)]
    said = make_plugin(tmp_path / "good", factory_id).check(shapes)
    assert said[-1] == ("sbatch --test-only says it would take a pilot of shape small (nothing "
                        "was queued)")
    wrong = make_plugin(tmp_path / "wrong", factory_id, partition="no-such-partition")
    with pytest.raises(BatchError) as refused:
        wrong.check(shapes)
    assert str(refused.value).startswith("shape small: sbatch ")
    assert "invalid partition specified: no-such-partition" in str(refused.value)
    queued = subprocess.run(["squeue", "-h", "-n", f"floe-{factory_id}-small"],
                            capture_output=True, text=True, check=True).stdout
    assert queued == ""
    assert not list((tmp_path / "wrong" / "scripts").glob("*.sh"))  # the check script went too
