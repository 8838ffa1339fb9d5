"""Fixtures every test folder may use: a real matchmaker process on loopback, the real
single-node SLURM and SGE clusters (and PBS-style commands over SLURM) that scripts/batch/*.sh
start, and the network parts that scripts/net/*.sh start: a login node reached over ssh as
another account, and a worker node in a network namespace behind an HTTP proxy.

A cluster or part that was already up is left up; one the session started is stopped at its end.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.pilot.live import LiveMatchmaker


@pytest.fixture
def matchmaker(tmp_path: Path) -> Iterator[LiveMatchmaker]:
    """A running matchmaker with site-a and the user alice; stopped (with its pilots) after."""
    directory = tmp_path / "matchmaker"
    directory.mkdir()
    live = LiveMatchmaker(directory)
    live.start()
    yield live
    live.close()


ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "batch"
NET_SCRIPTS = ROOT / "scripts" / "net"


def _run_script(name: str, verb: str, timeout: float = 900,
                folder: Path = SCRIPTS) -> subprocess.CompletedProcess:
    return subprocess.run([str(folder / name), verb], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _cluster(name: str, folder: Path = SCRIPTS) -> Iterator[str]:
    """Starts what the script `name` runs unless it is up; yields the last line `up` printed."""
    if os.geteuid() != 0:
        pytest.skip(f"{name} needs root to install and start its daemons")
    was_up = _run_script(name, "status", folder=folder).returncode == 0
    done = _run_script(name, "up", folder=folder)  # a no-op when up, and it says where
    if done.returncode == 3:
        pytest.skip(f"{name} cannot run on this machine: {done.stderr.strip()}")
    if done.returncode != 0:
        pytest.fail(f"{name} up failed:\n{done.stdout}{done.stderr}")
    yield (done.stdout.strip().splitlines() or [""])[-1]
    if not was_up:
        _run_script(name, "down", folder=folder)


@dataclass(frozen=True)
class LoginNode:
    """The login node scripts/net/login-node.sh runs: how to reach it, as a site's ssh table."""

    account: str
    host: str
    port: int
    identity: str
    known_hosts: str

    def ssh(self, **more: object) -> dict[str, object]:
        return {"host": f"{self.account}@{self.host}", "port": self.port,
                "identity": self.identity, "known_hosts": self.known_hosts, **more}

    def drop(self) -> None:
        """Cuts every open connection to it, as a network failure would."""
        _run_script("login-node.sh", "drop", folder=NET_SCRIPTS)

    def as_account(self, *argv: str) -> subprocess.CompletedProcess:
        """Runs a command on it as the cluster account (locally, as that user)."""
        return subprocess.run(["/usr/sbin/runuser", "-u", self.account, "--", *argv],
                              capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="session")
def login_node() -> Iterator[LoginNode]:
    for line in _cluster("login-node.sh", NET_SCRIPTS):
        where, port, identity, known_hosts = line.split()
        account, host = where.split("@")
        yield LoginNode(account, host, int(port), identity, known_hosts)


@pytest.fixture(scope="session")
def proxied_worker() -> Iterator[str]:
    """The URL of the proxy through which the network namespace floe-worker reaches this
    machine; run a command there with `ip netns exec floe-worker`."""
    yield from _cluster("proxied-worker.sh", NET_SCRIPTS)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    for _ in _cluster("slurm.sh"):
        yield


@pytest.fixture(scope="session")
def sge_cluster() -> Iterator[None]:
    for _ in _cluster("sge.sh"):
        yield


@pytest.fixture(scope="session")
def pbs_commands(slurm_cluster: None) -> Path:
    """The directory of PBS-style qsub/qstat/qdel (Debian's slurm-torque wrappers over SLURM,
    unpacked into a private prefix because installing them would remove gridengine)."""
    done = _run_script("pbs.sh", "up")
    if done.returncode == 3:
        pytest.skip(f"the PBS wrappers cannot be installed here: {done.stderr.strip()}")
    if done.returncode != 0:
        pytest.fail(f"pbs.sh up failed:\n{done.stdout}{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])
