"""The local plugin: pilots as process groups on this machine, tracked through a state dir."""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from floe.plugins.base import BatchError, PilotShape, PilotState, PluginSettings
from floe.plugins.hosts import LocalHost
from floe.plugins.jobs import CommandJob
from floe.plugins.local import LocalPlugin, group_alive
from tests.plugins.pilots import cleanup, pilot_command, pilot_env, state_of, wait_for

SHAPE = PilotShape("small", cpus=2, walltime=600)


def make_plugin(workdir: Path, factory_id: str, **options: object) -> LocalPlugin:
    return LocalPlugin(PluginSettings(factory_id=factory_id, workdir=workdir, options=options))


@pytest.fixture
def local(factory_id: str, tmp_path: Path, pilot_dir: Path) -> Iterator[LocalPlugin]:
    plugin = make_plugin(tmp_path / "factory", factory_id, kill_grace=2.0)
    yield plugin
    cleanup(plugin, pilot_dir)


def test_pilots_start_at_once_with_their_environment(
        local: LocalPlugin, pilot_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOE_TEST_FACTORY_SECRET", "site-token")
    ids = local.submit(SHAPE, CommandJob(pilot_command(pilot_dir), 2,
                                         {"FLOE_TOKEN_FILE": "/tmp/a b"}))
    assert {batch_id: info.state for batch_id, info in local.status().items()} == {
        batch_id: PilotState.RUNNING for batch_id in ids}
    for batch_id in ids:
        env = pilot_env(pilot_dir, batch_id)
        assert env["FLOE_BATCH_ID"] == batch_id
        assert env["FLOE_FACTORY"] == local.settings.factory_id
        assert env["FLOE_SHAPE_CPUS"] == "2"
        assert env["FLOE_TOKEN_FILE"] == "/tmp/a b"
        assert env["PATH"] == os.environ["PATH"]
        assert "FLOE_TEST_FACTORY_SECRET" not in env
        # The pilot runs in a process group of its own, not in the factory's.
        pid = int(env["FLOE_TEST_PID"])
        assert os.getpgid(pid) != os.getpgid(0)


def test_a_pilot_that_ends_is_finished_with_its_exit_status(local: LocalPlugin) -> None:
    [pilot] = local.submit(SHAPE, CommandJob(["/bin/sh", "-c", "exit 3"], 1, {}))
    wait_for(lambda: state_of(local, pilot) is PilotState.FINISHED, "the pilot to end")
    assert local.status()[pilot].detail == "exit status 3"
    assert local.orphans(set()) == []


def test_remove_kills_the_pilots_whole_process_group(local: LocalPlugin, tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    command = ["/bin/sh", "-c", f'sleep 300 & echo $! > {child_pid}; wait']
    [pilot] = local.submit(SHAPE, CommandJob(command, 1, {}))
    wait_for(child_pid.exists, "the pilot to start its child")
    pgid = os.getpgid(int(child_pid.read_text()))

    assert local.remove([pilot]) == [pilot]

    assert not group_alive(pgid)
    assert local.status()[pilot].state is PilotState.FINISHED
    assert local.status()[pilot].detail == "removed"


def test_a_pilot_that_ignores_sigterm_is_killed_after_the_grace(
        factory_id: str, tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, factory_id, kill_grace=0.5)
    ready = tmp_path / "ready"
    [pilot] = plugin.submit(SHAPE, CommandJob(
        ["/bin/sh", "-c", f"trap '' TERM; echo $$ > {ready}.tmp; mv {ready}.tmp {ready}; "
                          "while :; do sleep 0.1; done"]))
    wait_for(ready.exists, "the pilot to ignore SIGTERM")
    pgid = os.getpgid(int(ready.read_text()))

    assert plugin.remove([pilot]) == [pilot]

    assert not group_alive(pgid)


def test_orphans_are_only_this_factorys_untracked_pilots(
        factory_id: str, tmp_path: Path, pilot_dir: Path) -> None:
    shared = tmp_path / "shared-state"
    ours = make_plugin(tmp_path / "ours", factory_id, state_dir=str(shared))
    neighbour = make_plugin(tmp_path / "neighbour", factory_id + "x", state_dir=str(shared))
    command = pilot_command(pilot_dir)
    tracked, untracked = ours.submit(SHAPE, CommandJob(command, 2, {}))
    [theirs] = neighbour.submit(SHAPE, CommandJob(command, 1, {}))
    (shared / "stray.json").write_text("not a pilot record")
    try:
        assert ours.orphans({tracked}) == [untracked]
        assert ours.remove([theirs]) == []

        assert ours.remove_orphans({tracked}) == [untracked]

        assert state_of(ours, untracked) is PilotState.FINISHED
        assert state_of(ours, tracked) is PilotState.RUNNING
        assert state_of(neighbour, theirs) is PilotState.RUNNING
        assert (shared / "stray.json").exists()
    finally:
        cleanup(ours, pilot_dir)
        cleanup(neighbour)


def test_a_restarted_factory_finds_and_removes_its_pilots(
        local: LocalPlugin, pilot_dir: Path) -> None:
    [pilot] = local.submit(SHAPE, CommandJob(pilot_command(pilot_dir), 1, {}))
    restarted = LocalPlugin(local.settings)

    assert restarted.orphans(set()) == [pilot]
    assert restarted.remove([pilot]) == [pilot]
    assert state_of(local, pilot) is PilotState.FINISHED


def test_a_pilot_killed_from_outside_is_finished_as_lost(
        local: LocalPlugin, pilot_dir: Path) -> None:
    [pilot] = local.submit(SHAPE, CommandJob(pilot_command(pilot_dir), 1, {}))
    pid = int(pilot_env(pilot_dir, pilot)["FLOE_TEST_PID"])
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    wait_for(lambda: state_of(local, pilot) is PilotState.FINISHED, "the pilot to be seen gone")
    assert local.status()[pilot].detail == "lost"


def test_finished_pilots_are_forgotten_after_keep_finished(
        factory_id: str, tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, factory_id, keep_finished=0)
    [pilot] = plugin.submit(SHAPE, CommandJob(["true"], 1, {}))
    wait_for(lambda: pilot not in plugin.status(), "the finished pilot to be forgotten")
    assert list(plugin.state_dir.iterdir()) == []


def our_processes() -> set[int]:
    """The test process's descendants, zombies included (a child not waited for is one)."""
    return {child.pid for child in psutil.Process().children(recursive=True)}


def test_a_state_dir_that_cannot_be_created_fails_the_submit_with_a_batch_error(
        factory_id: str, tmp_path: Path, pilot_dir: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the state directory's parent should be")
    plugin = make_plugin(tmp_path / "factory", factory_id, state_dir=str(blocker / "local"))
    before = our_processes()

    with pytest.raises(BatchError) as failure:
        plugin.submit(SHAPE, CommandJob(pilot_command(pilot_dir), 2, {}))

    assert f"cannot create {blocker / 'local'}" in str(failure.value)
    assert "no pilot was started" in str(failure.value)
    assert failure.value.submitted == []
    assert our_processes() <= before
    assert plugin.status() == {}
    # Once the directory can be made, the same plugin starts and tracks pilots as usual.
    blocker.unlink()
    try:
        [pilot] = plugin.submit(SHAPE, CommandJob(pilot_command(pilot_dir), 1, {}))
        assert plugin.status()[pilot].state is PilotState.RUNNING
    finally:
        cleanup(plugin, pilot_dir)


def test_a_pilot_whose_log_cannot_be_created_is_not_started(
        local: LocalPlugin, pilot_dir: Path) -> None:
    # The log directory leads where no file can be created (procfs), as on a full disk.
    logs = Path(local.settings.workdir) / "logs"
    logs.parent.mkdir(parents=True)
    logs.symlink_to("/proc")
    before = our_processes()

    with pytest.raises(BatchError) as failure:
        local.submit(SHAPE, CommandJob(pilot_command(pilot_dir), 2, {}))

    message = str(failure.value)
    assert message.startswith("the pilot could not be started: ")
    assert f"'{logs / local.tag(SHAPE)}-" in message  # the log file that could not be created
    assert "command: /bin/sh -s" in message
    assert failure.value.submitted == []
    assert our_processes() <= before
    assert local.status() == {}


def test_a_nul_in_the_pilot_environment_is_a_batch_error_and_starts_nothing(
        local: LocalPlugin, pilot_dir: Path) -> None:
    before = our_processes()
    with pytest.raises(BatchError, match="the pilot could not be started: embedded null byte"):
        local.submit(SHAPE, CommandJob(pilot_command(pilot_dir), 1, {"FLOE_X": "a\0b"}))
    assert our_processes() <= before
    assert local.status() == {}


def test_a_pilot_whose_record_cannot_be_written_is_stopped_and_not_reported(
        factory_id: str, tmp_path: Path, pilot_dir: Path) -> None:
    # A state directory where no file can be created (procfs), as on a full or read-only disk:
    # the pilot starts, its record cannot be written, and an untracked pilot must not live on.
    plugin = make_plugin(tmp_path / "factory", factory_id, state_dir="/proc")
    before = our_processes()

    with pytest.raises(BatchError) as failure:
        plugin.submit(SHAPE, CommandJob(pilot_command(pilot_dir), 2, {}))

    message = str(failure.value)
    assert "was stopped as it started: its record cannot be written" in message
    assert ".json'" in message  # the record's path
    assert failure.value.submitted == []
    assert our_processes() <= before  # killed and waited for: not even a zombie is left
    assert plugin.status() == {}


def test_old_pilot_logs_go_but_those_of_tracked_pilots_and_recent_ones_stay(
        local: LocalPlugin) -> None:
    [ended, tracked] = local.submit(SHAPE, CommandJob(["sh", "-c", "echo hi"], 2, {}))
    wait_for(lambda: all(state_of(local, p) is PilotState.FINISHED for p in (ended, tracked)),
             "the pilots to end")
    logs = Path(local.pilot_dir("logs"))
    [ended_log] = logs.glob(f"*-{ended}.out")
    [tracked_log] = logs.glob(f"*-{tracked}.out")
    recent = logs / f"{local.tag_prefix}small-0123abcd.err"  # an untracked pilot's, recent
    recent.write_text("")
    day_old = os.stat(ended_log).st_mtime - 86400
    for path in (ended_log, tracked_log):
        os.utime(path, (day_old, day_old))
    (logs / "a-directory").mkdir()
    assert local.prune_logs(3600, [tracked]) == 1
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        [tracked_log.name, recent.name, "a-directory"])
    assert local.prune_logs(3600, []) == 1  # untracked now: it goes too
    assert sorted(p.name for p in logs.iterdir()) == sorted([recent.name, "a-directory"])


def test_the_working_dir_and_its_missing_parents_are_made_private(tmp_path: Path) -> None:
    # As `floe factory --check` makes them with umask 022: they hold pilot scripts and tokens.
    workdir = tmp_path / "factory" / "site-a"
    previous = os.umask(0o022)
    try:
        LocalHost(workdir).workdir()
    finally:
        os.umask(previous)
    for directory in (tmp_path / "factory", workdir, workdir / "logs"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
