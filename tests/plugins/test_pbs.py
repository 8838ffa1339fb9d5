"""The PBS plugin: its reading of PBS Pro, Torque and Slurm-wrapper qstat output (fixtures in
fixtures/), the resource lists of both flavours, and pilots submitted for real through Slurm's
PBS wrappers over the SLURM of scripts/batch/slurm.sh (the shared lifecycle is in
test_lifecycle.py)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from floe.config.resources import GIB, MIB
from floe.plugins.base import BatchError, PilotShape, PilotState, PluginConfigError, PluginSettings
from floe.plugins.jobs import CommandJob
from floe.plugins.pbs import PbsPlugin, parse_qstat, parse_qstat_full, pbs_time
from tests.plugins.pilots import cleanup, fake_command, pilot_command, pilot_env

FIXTURES = Path(__file__).parent / "fixtures"


def recorded(name: str) -> str:
    """A fixture's output without the note at its top."""
    lines = (FIXTURES / name).read_text().splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("#"))


def local_time(text: str) -> float:
    return time.mktime(time.strptime(text, "%a %b %d %H:%M:%S %Y"))


def make_plugin(workdir: Path, factory_id: str = "f1", commands_dir: Path | None = None,
                **options: object) -> PbsPlugin:
    return PbsPlugin(PluginSettings(factory_id=factory_id, workdir=workdir,
                                    commands_dir=commands_dir, options=options))


def test_the_short_pbs_pro_listing_is_read_with_cut_names() -> None:
    rows = parse_qstat(recorded("pbspro-qstat.txt"))
    assert [row.batch_id for row in rows] == [
        "1234.pbs-server", "1235.pbs-server", "1236.pbs-server", "1237.pbs-server",
        "1240.pbs-server", "1241.pbs-server", "1242.pbs-server"]
    assert (rows[0].name, rows[0].user, rows[0].state, rows[0].queue) == (
        "floe-f1-small", "alice", "R", "workq")
    assert rows[-1].name == "floe-f1-very-lo*"


def test_the_short_torque_listing_is_read() -> None:
    rows = parse_qstat(recorded("torque-qstat.txt"))
    assert [(row.batch_id, row.state) for row in rows] == [
        ("4711.torque-srv", "R"), ("4712.torque-srv", "Q"), ("4713.torque-srv", "C"),
        ("4714.torque-srv", "R")]


def test_full_pbs_pro_records_join_wrapped_values() -> None:
    jobs = parse_qstat_full(recorded("pbspro-qstat-f.txt"))
    assert list(jobs) == ["1234.pbs-server", "1235.pbs-server", "1236.pbs-server",
                          "1242.pbs-server"]
    running = jobs["1234.pbs-server"]
    assert running["job_state"] == "R"
    assert running["Job_Owner"] == "alice@login01.cluster.example.org"
    assert running["Output_Path"].endswith("/logs/floe-f1-small-1795424401000-4242-0.out")
    assert running["Submit_arguments"].startswith("-o /home/alice/floe/logs/")
    assert " -e /home/alice/floe/logs/" in running["Submit_arguments"]
    assert running["Variable_List"].endswith("PBS_O_HOST=login01.cluster.example.org")
    assert pbs_time(running["stime"]) == local_time("Mon Nov 23 09:00:04 2026")


def test_full_torque_records_are_read() -> None:
    jobs = parse_qstat_full(recorded("torque-qstat-f.txt"))
    assert {job_id: job["job_state"] for job_id, job in jobs.items()} == {
        "4711.torque-srv.example.org": "R", "4712.torque-srv.example.org": "Q",
        "4713.torque-srv.example.org": "C"}
    assert jobs["4711.torque-srv.example.org"]["Error_Path"].endswith(
        "floe-f1-small-1795424401000-4242-0.err")


def test_full_records_of_slurms_wrappers_are_read() -> None:
    jobs = parse_qstat_full(recorded("slurm-torque-qstat-f.txt"))
    assert {job_id: job["Job_Name"] for job_id, job in jobs.items()} == {
        "42": "floe-f1-small", "43": "floe-f1-whole"}
    assert jobs["43"]["Resource_List.ncpus"] == "8"


def test_text_that_is_not_a_listing_is_refused() -> None:
    with pytest.raises(ValueError, match="expected 6 columns"):
        parse_qstat("Job id Name User Time S Queue\n----\n1234.srv floe-f1-small alice\n")
    with pytest.raises(ValueError, match="expected a header and a line of dashes"):
        parse_qstat("qstat: cannot connect to server\n")
    assert parse_qstat("") == []
    with pytest.raises(ValueError, match="expected 'Job Id:' first"):
        parse_qstat_full("    Job_Name = floe-f1-small\n")


def fake_qstat(bin_dir: Path, short: str, full: str, full_errors: str = "",
               full_exit: int = 0) -> Path:
    """A qstat that prints recorded output (no PBS server can run here) and notes its calls."""
    (bin_dir / "short.txt").parent.mkdir(exist_ok=True)
    (bin_dir / "short.txt").write_text(short)
    (bin_dir / "full.txt").write_text(full)
    return fake_command(bin_dir, "qstat", f"""echo "$@" >> {bin_dir}/calls
if [ "$1" = -f ]; then cat {bin_dir}/full.txt; printf '{full_errors}' >&2; exit {full_exit}; fi
cat {bin_dir}/short.txt""")


def test_status_asks_for_full_records_of_only_the_jobs_that_may_be_ours(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGNAME", "alice")  # the user the recorded jobs belong to
    bin_dir = fake_qstat(tmp_path / "bin", recorded("pbspro-qstat.txt"),
                         recorded("pbspro-qstat-f.txt"))
    pilots = make_plugin(tmp_path, commands_dir=bin_dir).status()
    # Not 1237 (factory f12), 1240 (untagged) or 1241 (bob's).
    assert (bin_dir / "calls").read_text().splitlines() == ["", "-f 1234 1235 1236 1242"]
    assert {batch_id: info.state for batch_id, info in pilots.items()} == {
        "1234.pbs-server": PilotState.RUNNING, "1235.pbs-server": PilotState.QUEUED,
        "1236.pbs-server": PilotState.HELD, "1242.pbs-server": PilotState.QUEUED}
    running = pilots["1234.pbs-server"]
    assert running.shape == "small"
    assert running.submitted == local_time("Mon Nov 23 09:00:01 2026")
    assert running.started == local_time("Mon Nov 23 09:00:04 2026")
    assert pilots["1242.pbs-server"].shape == "very-long-shape-name"


def test_status_reads_torque_completed_jobs_as_finished(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGNAME", "alice")
    bin_dir = fake_qstat(tmp_path / "bin", recorded("torque-qstat.txt"),
                         recorded("torque-qstat-f.txt"))
    pilots = make_plugin(tmp_path, commands_dir=bin_dir, flavour="torque").status()
    assert {batch_id: info.state for batch_id, info in pilots.items()} == {
        "4711.torque-srv.example.org": PilotState.RUNNING,
        "4712.torque-srv.example.org": PilotState.QUEUED,
        "4713.torque-srv.example.org": PilotState.FINISHED}
    assert pilots["4711.torque-srv.example.org"].started == local_time(
        "Mon Nov 23 09:00:02 2026")


def test_a_job_that_ended_between_the_two_queries_does_not_fail_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGNAME", "alice")
    full = recorded("torque-qstat-f.txt")
    only_first = full[:full.index("Job Id: 4712")]
    bin_dir = fake_qstat(tmp_path / "bin", recorded("torque-qstat.txt"), only_first,
                         "qstat: Unknown Job Id Error 4712.torque-srv.example.org\\n", 153)
    pilots = make_plugin(tmp_path, commands_dir=bin_dir, flavour="torque").status()
    assert list(pilots) == ["4711.torque-srv.example.org"]


def test_an_empty_queue_answered_with_unknown_job_is_no_pilots(tmp_path: Path) -> None:
    bin_dir = fake_command(tmp_path / "bin", "qstat", "exit 153")
    assert make_plugin(tmp_path, commands_dir=bin_dir).status() == {}


def test_a_silent_failure_other_than_unknown_job_is_a_batch_error(tmp_path: Path) -> None:
    bin_dir = fake_command(tmp_path / "bin", "qstat", "exit 1")
    with pytest.raises(BatchError, match="qstat failed with exit code 1"):
        make_plugin(tmp_path, commands_dir=bin_dir).status()


@pytest.mark.parametrize("listing", [
    "Job id Name\n---\nerror: the server is down\n",
    "qstat: cannot connect to server pbs-server (errno=111)\n",
])
def test_a_listing_that_cannot_be_read_is_a_batch_error(tmp_path: Path, listing: str) -> None:
    bin_dir = fake_qstat(tmp_path / "bin", listing, "")
    with pytest.raises(BatchError, match="qstat printed a listing that the pbs plugin cannot"):
        make_plugin(tmp_path, commands_dir=bin_dir).status()


def resource_line(plugin: PbsPlugin, shape: PilotShape) -> str:
    script = plugin.render(shape, Path("/logs/x"), CommandJob(["true"]), 0)
    [line] = [line for line in script.splitlines() if line.startswith("#PBS -l ")]
    return line.removeprefix("#PBS -l ")


def test_pbs_pro_asks_with_a_select_statement(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path)
    assert resource_line(plugin, PilotShape("s", cpus=2, memory=512 * MIB, walltime=600)) == \
        "select=1:ncpus=2:mem=768mb,walltime=00:15:00"
    assert resource_line(plugin, PilotShape("g", cpus=4, memory=8 * GIB, gpus=1,
                                            walltime=86400)) == \
        "select=1:ncpus=4:mem=9012mb:ngpus=1,walltime=24:05:00"


def test_torque_asks_for_nodes_and_processors_per_node(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, flavour="torque", queue="long", account="icecube")
    shape = PilotShape("g", cpus=2, memory=512 * MIB, gpus=1, walltime=600)
    assert resource_line(plugin, shape) == "nodes=1:ppn=2:gpus=1,mem=768mb,walltime=00:15:00"
    script = plugin.render(shape, Path("/logs/x"), CommandJob(["true"]), 0)
    assert "#PBS -q long" in script and "#PBS -A icecube" in script


def test_an_unknown_flavour_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(PluginConfigError, match="flavour='lsf' is not known: use 'pro'"):
        make_plugin(tmp_path, flavour="lsf")


@pytest.fixture
def pbs_factory(pbs_commands: Path, factory_id: str, tmp_path: Path) -> tuple[Path, str, Path]:
    return pbs_commands, factory_id, tmp_path / "factory"


@pytest.fixture(params=["pro", "torque"])
def pbs(request: pytest.FixtureRequest, pbs_factory: tuple[Path, str, Path],
        pilot_dir: Path) -> Iterator[PbsPlugin]:
    commands, factory_id, workdir = pbs_factory
    plugin = make_plugin(workdir, factory_id, commands, flavour=request.param)
    yield plugin
    cleanup(plugin, pilot_dir)


@pytest.mark.slurm
def test_pilots_get_the_cpus_memory_and_walltime_of_either_flavour(
        pbs: PbsPlugin, pilot_dir: Path) -> None:
    shape = PilotShape("pair", cpus=2, memory=512 * MIB, walltime=600)
    ids = pbs.submit(shape, CommandJob(pilot_command(pilot_dir), 2,
                                       {"FLOE_TOKEN_FILE": "/tmp/a b"}))
    for batch_id in ids:
        env = pilot_env(pilot_dir, batch_id)
        assert env["FLOE_BATCH_ID"] == batch_id
        assert env["SLURM_CPUS_ON_NODE"] == "2"
        assert env["SLURM_MEM_PER_NODE"] == "768"
        assert env["SLURM_JOB_NAME"] == f"floe-{pbs.settings.factory_id}-pair"
        assert env["FLOE_TOKEN_FILE"] == "/tmp/a b"
    limit = subprocess.run(["squeue", "-h", "-j", ids[0], "-o", "%l"], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert limit == "15:00"
    # Each pilot of one submit call writes its own log.
    logs = sorted(p.name for p in (pbs.settings.workdir / "logs").iterdir())
    assert [name[-6:] for name in logs] == ["-0.err", "-0.out", "-1.err", "-1.out"]


@pytest.mark.slurm
def test_a_queue_that_does_not_exist_is_a_batch_error_naming_qsub(
        pbs_factory: tuple[Path, str, Path]) -> None:
    commands, factory_id, workdir = pbs_factory
    plugin = make_plugin(workdir, factory_id, commands, queue="nosuch")
    with pytest.raises(BatchError) as caught:
        plugin.submit(PilotShape("small"), CommandJob(["true"], 1, {}))
    message = str(caught.value)
    assert message.startswith("qsub failed with exit code 1.")
    assert "invalid partition specified: nosuch" in message
