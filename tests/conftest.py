"""Fixtures every test folder may use: a real matchmaker process on loopback, and the real
single-node SLURM and SGE clusters (and PBS-style commands over SLURM) that scripts/batch/*.sh
start.

A cluster that was already up is left up; one the session started is stopped at its end.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
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


def _run_script(name: str, verb: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPTS / name), verb], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _cluster(name: str) -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip(f"{name} needs root to install and start its daemons")
    was_up = _run_script(name, "status").returncode == 0
    if not was_up:
        done = _run_script(name, "up")
        if done.returncode == 3:
            pytest.skip(f"{name} cannot run on this machine: {done.stderr.strip()}")
        if done.returncode != 0:
            pytest.fail(f"{name} up failed:\n{done.stdout}{done.stderr}")
    yield
    if not was_up:
        _run_script(name, "down")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    yield from _cluster("slurm.sh")


@pytest.fixture(scope="session")
def sge_cluster() -> Iterator[None]:
    yield from _cluster("sge.sh")


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
