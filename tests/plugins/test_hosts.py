"""Batch commands on a login node over ssh (plugins.hosts.SshHost), against the real OpenSSH
server of scripts/net/login-node.sh and its second account: commands, files, logs, the
multiplexed connection, a submission whose connection drops in the middle, an unreachable host
and an unknown host key. The SLURM and SGE plugins over ssh are tried end to end here too; the
factory over ssh is in tests/factory/test_ssh.py.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from floe.plugins.base import BatchError, PilotShape, PilotState, PluginSettings
from floe.plugins.hosts import HostError, SshHost, SshSettings
from floe.plugins.htcondor import HTCondorPlugin
from floe.plugins.jobs import CommandJob, PilotJob
from floe.plugins.sge import SgePlugin
from floe.plugins.slurm import SlurmPlugin
from tests.conftest import LoginNode
from tests.pilot.live import wait_for

SHAPE = PilotShape("small", memory=256 * 2**20, walltime=300)


def host_of(node: LoginNode, factory_id: str, **more: object) -> SshHost:
    return SshHost(SshSettings(**node.ssh(**more)), factory_id)


@pytest.fixture
def host(login_node: LoginNode, factory_id: str) -> Iterator[SshHost]:
    made = host_of(login_node, factory_id)
    yield made
    made.close()


def test_commands_and_files_run_on_the_login_node_as_its_account(
        host: SshHost, login_node: LoginNode, factory_id: str) -> None:
    workdir = host.workdir()
    assert workdir == PurePosixPath(f"/home/{login_node.account}/floe/{factory_id}")
    assert host.user() == login_node.account
    assert host.run(["sh", "-c", "id -un; pwd"], 30).split() == [login_node.account,
                                                                  str(workdir)]
    script = workdir / "scripts" / "a.sh"
    host.put(script, b"echo hi\n")
    mode = login_node.as_account("stat", "-c", "%a %U", str(script)).stdout.split()
    assert mode == ["700", login_node.account]
    assert login_node.as_account("stat", "-c", "%a", str(workdir)).stdout.strip() == "700"
    host.put(workdir / "logs" / "x-7.err", b"".join(b"line %d\n" % n for n in range(5000)))
    assert host.tail(workdir / "logs" / "*-7.err", 10) == b"line 4999\n"
    assert host.tail(workdir / "logs" / "*-8.err", 10) is None
    host.remove([script, workdir / "logs" / "x-7.err"])
    assert login_node.as_account("test", "-e", str(script)).returncode == 1
    with pytest.raises(HostError) as failed:
        host.run(["sh", "-c", "echo why >&2; exit 3"], 30)
    assert (failed.value.returncode, failed.value.stderr.strip()) == (3, "why")


def test_stale_files_are_listed_and_removed_on_the_login_node(
        host: SshHost, login_node: LoginNode) -> None:
    logs = host.workdir() / "logs"
    assert host.stale(logs / "not-made-yet", 60) == []
    names = [f"floe-x-small-{n}.out" for n in range(600)]
    login_node.as_account("sh", "-c", f"mkdir -p {logs} && cd {logs} && touch {' '.join(names)}"
                          f" && touch -d '2 days ago' {' '.join(names[:550])} && mkdir old-dir"
                          f" && touch -d '2 days ago' old-dir")
    stale = host.stale(logs, 86400)
    assert sorted(p.name for p in stale) == sorted(names[:550])
    assert all(p.parent == logs for p in stale)
    host.remove(stale)  # on rm's stdin, in one round trip
    left = login_node.as_account("ls", str(logs)).stdout.split()
    assert sorted(left) == sorted([*names[550:], "old-dir"])


def test_commands_share_one_connection(host: SshHost) -> None:
    host.workdir()
    started = time.perf_counter()
    for _ in range(20):
        host.run(["true"], 30)
    each = (time.perf_counter() - started) / 20
    master = subprocess.run(["ssh", "-o", f"ControlPath={host.control_path}", "-O", "check",
                             "x"], capture_output=True, text=True, check=False)
    assert master.returncode == 0, master.stderr  # the multiplexed master is up
    assert each < 1.0  # a fresh login each time would take far longer under load; one is ms


def test_a_submission_cut_off_by_a_dropped_connection_is_settled_not_repeated(
        host: SshHost, login_node: LoginNode) -> None:
    workdir = host.workdir()
    count = workdir / "count"
    # A "submit" that takes a while and counts how often it ran.
    slow = ["sh", "-c", f'sleep 2; echo x >> {count}; echo "job $(wc -l < {count})"']
    threading.Timer(0.7, login_node.drop).start()
    with pytest.raises(HostError) as cut:
        host.run(slow, 30, once="k1")
    assert cut.value.in_doubt and cut.value.returncode == 255
    answer = wait_for(lambda: _settled(host, "k1"), 30, "the login node to answer again")
    assert answer == "job 1\n"
    assert host.settle("k1", 30) == "job 1\n"  # asked again: the same answer, nothing re-run
    assert host.settle("never", 30) is None    # a key whose command never started
    host.remove([workdir / "submits" / "k1.d"])
    assert login_node.as_account("cat", str(count)).stdout == "x\n"


def _settled(host: SshHost, key: str) -> str | None:
    try:
        return host.settle(key, 30)
    except HostError:
        return None  # still backing off, or the connection is being opened again


def test_an_unreachable_login_node_is_reported_and_backed_off(
        login_node: LoginNode, factory_id: str) -> None:
    closed = host_of(login_node, factory_id, port=1)  # nothing listens there
    with pytest.raises(HostError) as first:
        closed.run(["true"], 30)
    assert first.value.summary == f"cannot reach {login_node.account}@127.0.0.1 (port 1) " \
                                  "over ssh"
    assert "Connection refused" in first.value.stderr
    started = time.monotonic()
    with pytest.raises(HostError) as again:
        closed.run(["true"], 30)
    assert time.monotonic() - started < 0.5  # not tried: backed off
    assert "not tried again for another" in again.value.summary


def test_an_unknown_host_key_is_refused(login_node: LoginNode, factory_id: str,
                                        tmp_path: Path) -> None:
    (tmp_path / "known_hosts").write_text("")
    stranger = host_of(login_node, factory_id, known_hosts=str(tmp_path / "known_hosts"))
    with pytest.raises(HostError) as refused:
        stranger.workdir()
    assert "Host key verification failed" in refused.value.stderr


def ssh_plugin(kind: type, node: LoginNode, factory_id: str, workdir: Path, **more: object):
    return kind(PluginSettings(factory_id=factory_id, workdir=workdir,
                               ssh=SshSettings(**node.ssh()), **more))


@pytest.mark.slurm
def test_slurm_over_ssh_runs_pilots_as_the_cluster_account(
        slurm_cluster: None, login_node: LoginNode, factory_id: str, tmp_path: Path) -> None:
    plugin = ssh_plugin(SlurmPlugin, login_node, factory_id, tmp_path / "factory")
    try:
        assert plugin.check()[0].startswith(f"ssh to {login_node.account}@127.0.0.1 (port "
                                            f"{login_node.port}) works")
        (batch_id,) = plugin.submit(SHAPE, CommandJob(
            ["sh", "-c", "id -un; echo 'floe pilot: done' >&2"]))
        wait_for(lambda: plugin.status()[batch_id].state is PilotState.FINISHED, 60,
                 "the pilot to end")
        assert plugin.last_words(batch_id) == "floe pilot: done"
        out = login_node.as_account("sh", "-c", f"cat {plugin.host.workdir()}/logs/*-"
                                                f"{batch_id}.out").stdout
        assert out == f"{login_node.account}\n"
        # Its script held its token: gone once SLURM took its copy.
        scripts = login_node.as_account("ls", f"{plugin.host.workdir()}/scripts").stdout
        assert scripts == ""
    finally:
        plugin.remove(list(plugin.status()))


@pytest.mark.sge
def test_sge_over_ssh_runs_pilots_as_the_cluster_account(
        sge_cluster: None, login_node: LoginNode, factory_id: str, tmp_path: Path) -> None:
    plugin = ssh_plugin(SgePlugin, login_node, factory_id, tmp_path / "factory")
    try:
        (batch_id,) = plugin.submit(SHAPE, CommandJob(["sh", "-c", "id -un"]))
        wait_for(lambda: batch_id not in plugin.status(), 120, "the pilot to end")
        out = login_node.as_account("sh", "-c", f"cat {plugin.host.workdir()}/logs/*-"
                                                f"{batch_id}.out").stdout
        assert out.split()[-1] == login_node.account
    finally:
        plugin.remove(list(plugin.status()))


def test_htcondor_over_ssh_writes_what_condor_submit_needs_on_the_login_node(
        login_node: LoginNode, factory_id: str, tmp_path: Path) -> None:
    """No HTCondor pool here: the plugin runs condor_submit on the login node, which the
    cluster account lacks; what it wrote there for it is checked with the real bindings."""
    import htcondor2

    plugin = ssh_plugin(HTCondorPlugin, login_node, factory_id, tmp_path / "factory")
    job = PilotJob(b"the pilot", ["--site", "s"], ["floe_p_one", "floe_p_two"])
    with pytest.raises(BatchError) as missing:
        plugin.submit(SHAPE, job)
    assert missing.value.summary == (f"condor_submit was not found on {login_node.account}@"
                                     f"127.0.0.1 (port {login_node.port}): install the "
                                     "htcondor client commands or set commands_dir to where "
                                     "they are.")
    workdir = plugin.host.workdir()
    (name,) = login_node.as_account("ls", f"{workdir}/submit").stdout.split()
    text = login_node.as_account("cat", f"{workdir}/submit/{name}").stdout
    description = htcondor2.Submit(text)
    assert description["executable"] == "$(script)"
    assert description["should_transfer_files"] == "YES"
    transferred = description["transfer_input_files"]
    assert transferred.startswith(f"{workdir}/transfer/")
    assert login_node.as_account("cat", transferred).stdout == "the pilot"
    scripts = text.split("queue script from (")[1].split(")")[0].split()
    assert len(scripts) == 2
    for script, token in zip(scripts, ("floe_p_one", "floe_p_two"), strict=True):
        assert f"'{token}'" in login_node.as_account("cat", script).stdout
        assert token not in text


def test_the_local_plugin_takes_no_ssh(login_node: LoginNode, tmp_path: Path) -> None:
    from floe.plugins.base import PluginConfigError
    from floe.plugins.local import LocalPlugin

    with pytest.raises(PluginConfigError, match="ssh is for the slurm, sge, pbs and htcondor"):
        ssh_plugin(LocalPlugin, login_node, "f1", tmp_path)


def test_a_socket_directory_others_could_write_to_is_refused(
        login_node: LoginNode, factory_id: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted = tmp_path / f"floe-ssh-{os.getuid()}"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)
    with pytest.raises(HostError, match="is not this account's private directory"):
        host_of(login_node, factory_id).workdir()
