"""The factory needs no root: a real `floe factory` run as an ordinary user (switched to with
setpriv, its capabilities gone), against a real matchmaker on loopback, with the local plugin and
through the single-node SLURM. Its pilots run a small DAG dataset to the end and leave, and
every file the user owns afterwards lies in the directory that the user was given.

Switching users needs root: elsewhere these tests are skipped, and say why.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pilot.live import ROOT, LiveMatchmaker, wait_for

from .conftest import dag_dataset, site_document, write_toml
from .test_batch_systems import status_file

USER = "floe-test"
# What the factory and its pilots import: they must be readable by any user of the machine.
IMPORTS = ("import floe.cli.main, floe.cli.factory, floe.factory.service, floe.plugins.local, "
           "floe.plugins.slurm, floe.pilot.bundle")


@pytest.fixture(scope="session")
def unprivileged_user() -> Iterator[pwd.struct_passwd]:
    """The ordinary user `floe-test`, made for this session (and removed after it) unless it
    exists. Its login shell is /bin/sh: SLURM builds a job's environment by logging it in."""
    if os.geteuid() != 0:
        pytest.skip("running the factory as an ordinary user needs root, to switch to that user")
    for command in ("setpriv", "useradd"):
        if shutil.which(command) is None:
            pytest.skip(f"{command} (util-linux, passwd) is not installed: cannot switch users")
    try:
        existing: pwd.struct_passwd | None = pwd.getpwnam(USER)
    except KeyError:
        existing = None
    if existing is not None:
        yield existing
        return
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                    "--user-group", "--shell", "/bin/sh", USER], check=True,
                   capture_output=True)
    yield pwd.getpwnam(USER)
    subprocess.run(["userdel", USER], check=False, capture_output=True)


def as_user(user: pwd.struct_passwd) -> list[str]:
    """The command prefix that runs a program as `user`, with its groups and no capabilities.
    setpriv keeps root's capabilities in effect until its exec, so the program's own path would
    be looked up as root's; `env` looks it up again, as the user."""
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
            "/usr/bin/env"]


def python_for(user: pwd.struct_passwd) -> str:
    """A Python that `user` can run floe's factory and pilot with, from the project tree:
    this test's own (the venv's) where the user can reach it, else the system's python3 (the
    factory and the pilot need only the standard library). A venv made from a Python under a
    directory that others cannot enter (pyenv in /root) is unusable by any other user."""
    refused: list[str] = []
    system = shutil.which("python3", path="/usr/bin:/bin")
    for python in dict.fromkeys(p for p in (sys.executable, system) if p is not None):
        done = subprocess.run([*as_user(user), python, "-c", IMPORTS], cwd=ROOT,
                              capture_output=True, text=True, check=False)
        if done.returncode == 0:
            if refused:
                warnings.warn(f"{user.pw_name} cannot run {'; '.join(refused)}: the factory "
                              f"runs with {python}", stacklevel=2)
            return python
        refused.append(f"{python} ({(done.stderr.strip().splitlines() or ['?'])[-1]})")
    pytest.skip(f"no Python that {user.pw_name} may run floe with: {'; '.join(refused)}; the "
                f"project tree ({ROOT}) and its interpreter must be readable by other users")


@pytest.fixture
def user_dir(unprivileged_user: pwd.struct_passwd) -> Iterator[Path]:
    """A directory of the user's own, outside pytest's (which only root may enter)."""
    path = Path(tempfile.mkdtemp(prefix="floe-unprivileged-"))
    os.chown(path, unprivileged_user.pw_uid, unprivileged_user.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def owned_by(user: pwd.struct_passwd) -> set[str]:
    """Every path on this machine's disk and in /dev/shm that belongs to `user`."""
    found = subprocess.run(["find", "/", "/dev/shm", "-xdev", "-user", str(user.pw_uid)],
                           capture_output=True, text=True, check=False)
    return set(found.stdout.splitlines())


def processes_of(user: pwd.struct_passwd) -> list[str]:
    """The processes that run as `user` (whose /proc entries it owns)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == user.pw_uid:
                found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()!r}")
        except OSError:  # it has just ended
            continue
    return found


def credentials(pid: int) -> dict[str, str]:
    """The Uid, Gid and CapEff lines of a process's /proc status."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)
            if key in ("Uid", "Gid", "CapEff")}


def batch_site(request: pytest.FixtureRequest, plugin: str, user: pwd.struct_passwd,
               user_dir: Path) -> dict[str, Any]:
    """The site settings for `plugin`. SLURM's scratch directory for a job is $TMPDIR (/tmp):
    this site gives its pilots one in the user's directory, so that everything the user writes
    is in the one place the test looks. (Local pilots run in the factory's workdir.)"""
    if plugin == "local":
        return {"plugin": "local"}
    request.getfixturevalue("slurm_cluster")
    scratch = user_dir / "scratch"
    scratch.mkdir()
    os.chown(scratch, user.pw_uid, user.pw_gid)
    return {"plugin": "slurm", "scratch": str(scratch)}


@pytest.mark.slow
@pytest.mark.parametrize("plugin", ["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def test_an_ordinary_user_runs_the_factory_and_it_writes_only_in_its_own_directories(
        plugin: str, request: pytest.FixtureRequest, unprivileged_user: pwd.struct_passwd,
        user_dir: Path, matchmaker: LiveMatchmaker, start_factory):
    user = unprivileged_user
    python = python_for(user)
    site = batch_site(request, plugin, user, user_dir)
    workdir = user_dir / "factory"
    document = site_document(matchmaker, workdir, **site, python=python, max_queued=2,
                             max_total=2, max_per_cycle=2)
    config = write_toml(user_dir / "site.toml", document)
    dataset = matchmaker.submit(dag_dataset(4))
    before = owned_by(user)
    factory = start_factory(config, matchmaker.site_token, python=[*as_user(user), python],
                            env={"HOME": user.pw_dir, "USER": user.pw_name,
                                 "LOGNAME": user.pw_name})
    try:
        wait_for(lambda: set(matchmaker.states(dataset)) == {"complete"}, 120,
                 f"every task to complete with {plugin} pilots of {user.pw_name}")
        wait_for(lambda: status_file(workdir).get("tracked") == 0, 60, "the pilots to leave")
    except AssertionError:
        unfinished = [t for t in matchmaker.tasks(dataset) if t["state"] != "complete"][:3]
        said = [log.read_text(errors="replace") for log in
                sorted((workdir / "site-a" / "logs").glob("*"), key=lambda p: p.stat().st_mtime)]
        last = ([text for text in said if text.strip()] or ["none"])[-1][-3000:]
        raise AssertionError(f"factory log:\n{factory.text()[:3000]}\nunfinished: "
                             f"{unfinished}\nthe last pilot log:\n{last}") from None
    running_as = credentials(factory.process.pid)  # still running, long past setpriv's exec
    assert running_as["Uid"].split() == [str(user.pw_uid)] * 4
    assert running_as["Gid"].split() == [str(user.pw_gid)] * 4
    assert int(running_as["CapEff"], 16) == 0
    assert factory.stop() == 0, factory.text()[-3000:]
    assert "Traceback" not in factory.text(), factory.text()[-3000:]
    said = factory.text()  # what a site admin reads: when it started, on what, and its stop
    assert (f"started for {matchmaker.url} (from {config}) with site site-a ({plugin}, a cycle "
            "every") in said
    assert " stopping\n" in said and " stopped\n" in said

    pilots = matchmaker.get("/pilots?site=site-a")["pilots"]
    assert 1 <= len(pilots) == status_file(workdir)["counters"]["submitted"]
    assert all(p["state"] == "exited" for p in pilots)
    assert {p["batch_system"] for p in pilots} == {plugin}
    attempts = matchmaker.attempts(dataset)
    assert len(attempts) == 8 and all(a["exit_code"] == 0 for a in attempts)
    wait_for(lambda: not processes_of(user), 30, f"every process of {user.pw_name} to end")

    made = owned_by(user) - before
    outside = sorted(p for p in made if not Path(p).is_relative_to(user_dir))
    assert outside == [], f"{user.pw_name} wrote outside {user_dir}: {outside[:20]}"
    for path in (workdir / "pilot.pyz", workdir / "site-a" / "pilots.json",
                 workdir / "site-a" / "status.json"):
        assert str(path) in made, f"{path} was not written by {user.pw_name}"
