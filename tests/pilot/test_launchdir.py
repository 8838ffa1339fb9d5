"""A pilot holds its launcher's directory while it lives, and removes the ones beside it that
killed pilots left (floe.pilot.launchdir): only launchers' directories of this user, unchanged for
a while, empty or with a lock of this host that nobody holds. Locks are held by real processes
here."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from floe.pilot.launchdir import LOCK, MIN_AGE, LaunchDir
from tests.pilot.live import wait_for

HOLDER = """\
import fcntl, os, sys, time
handle = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)
fcntl.flock(handle, fcntl.LOCK_EX)
open(sys.argv[2], "w").close()
time.sleep(120)
"""
TRY_LOCK = """\
import fcntl, os, sys
handle = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    sys.exit(1)
"""
HOST = socket.gethostname()


def launcher_dir(parent: Path, name: str, *, lock: str | None = HOST, files: bool = True,
                 age: float = 2 * MIN_AGE) -> Path:
    """A launcher's directory as a killed pilot leaves it: its pilot (unless not `files`) and
    its lock naming `lock` (None: no lock), last changed `age` seconds ago."""
    path = parent / name
    path.mkdir(mode=0o700)
    if files:
        (path / "pilot.pyz").write_bytes(b"PK")
        (path / "cache").mkdir()
        (path / "cache" / "x").write_text("x")
    if lock is not None:
        (path / LOCK).write_text(lock)
    age_of(path, age)
    return path


def age_of(path: Path, age: float) -> None:
    then = time.time() - age
    os.utime(path, (then, then))


def lockable(path: Path) -> bool:
    """Whether another process could take the lock at `path` now."""
    return subprocess.run([sys.executable, "-c", TRY_LOCK, str(path)]).returncode == 0


def own_dir(parent: Path) -> LaunchDir:
    own = LaunchDir(launcher_dir(parent, "floe-pilot.own", lock=None, files=False, age=0))
    own.hold()
    return own


@pytest.fixture
def holder(tmp_path: Path):
    """Start a process that holds the lock of a directory, as a live pilot does."""
    started: list[subprocess.Popen] = []

    def hold(directory: Path) -> None:
        ready = tmp_path / f"{directory.name}.ready"
        started.append(subprocess.Popen([sys.executable, "-c", HOLDER, str(directory / LOCK),
                                         str(ready)]))
        wait_for(ready.exists, 30, "the lock to be taken")
        age_of(directory, 2 * MIN_AGE)  # its pilot started long ago

    yield hold
    for process in started:
        process.kill()
        process.wait()


def test_a_held_directory_is_locked_and_names_its_host_until_the_pilot_lets_it_go(
        tmp_path: Path) -> None:
    own = own_dir(tmp_path)
    assert (own.path / LOCK).read_text() == HOST
    assert not lockable(own.path / LOCK)
    with pytest.raises(OSError, match=f"{own.path / LOCK} exists: another pilot uses this "
                                      "launcher's directory"):
        LaunchDir(own.path).hold()
    own.close()
    assert lockable(own.path / LOCK)


def test_only_the_directories_that_killed_pilots_left_are_removed(tmp_path: Path,
                                                                  holder) -> None:
    own = own_dir(tmp_path)
    dead = [launcher_dir(tmp_path, "floe-pilot.dead1"), launcher_dir(tmp_path, "floe-pilot.dead2"),
            launcher_dir(tmp_path, "floe-pilot.empty", lock=None, files=False)]
    alive = launcher_dir(tmp_path, "floe-pilot.alive")
    holder(alive)
    kept = [alive,
            launcher_dir(tmp_path, "floe-pilot.young", age=MIN_AGE / 2),
            launcher_dir(tmp_path, "floe-pilot.youngempty", lock=None, files=False, age=10),
            launcher_dir(tmp_path, "floe-pilot.nolock", lock=None),  # perhaps alive
            launcher_dir(tmp_path, "floe-pilot.elsewhere", lock="node17"),  # a shared $TMPDIR
            launcher_dir(tmp_path, "floe-pilot.unnamed", lock=""),
            launcher_dir(tmp_path, "floe-other.abc")]
    (tmp_path / "floe-pilot.file").write_text("not a directory")
    (tmp_path / "elsewhere").mkdir()
    target = launcher_dir(tmp_path / "elsewhere", "floe-pilot.target")
    (tmp_path / "floe-pilot.link").symlink_to(target)

    removed, failed = own.sweep()

    assert sorted(removed) == sorted(str(path) for path in dead) and failed == []
    assert not any(path.exists() for path in dead)
    for path in [own.path, *kept, tmp_path / "floe-pilot.file", target / "pilot.pyz",
                 tmp_path / "floe-pilot.link"]:
        assert os.path.lexists(path), path
    assert not lockable(alive / LOCK)  # its pilot still holds it
    assert own.sweep() == ([], [])


@pytest.mark.skipif(os.getuid() != 0, reason="making another user's directory needs root")
def test_another_users_directory_is_left_alone(tmp_path: Path) -> None:
    theirs = launcher_dir(tmp_path, "floe-pilot.theirs")
    os.chown(theirs, 4242, 4242)
    age_of(theirs, 2 * MIN_AGE)
    assert own_dir(tmp_path).sweep() == ([], [])
    assert theirs.exists()


def test_a_directory_that_cannot_be_removed_keeps_its_lock_for_the_next_pilot(
        tmp_path: Path) -> None:
    own = own_dir(tmp_path)
    dead = launcher_dir(tmp_path, "floe-pilot.dead")
    stuck = dead / "immutable"
    stuck.write_text("x")
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:
        pytest.skip("chattr cannot make a file immutable here")
    try:
        age_of(dead, 2 * MIN_AGE)
        removed, failed = own.sweep()
        assert removed == [] and failed == [f"{dead}: Operation not permitted"]
        assert (dead / LOCK).exists()  # so the next pilot tries again
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    age_of(dead, 2 * MIN_AGE)
    assert own.sweep() == ([str(dead)], [])


def test_a_lock_that_cannot_be_taken_is_said_and_not_left_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = launcher_dir(tmp_path, "floe-pilot.nfs", lock=None, files=False, age=0)

    def no_locks(*_):  # an NFS mount without its lock daemon
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(OSError, match=f"cannot lock {directory / LOCK}: No locks available: "
                                      f"the filesystem of {tmp_path} may not support locks"):
        LaunchDir(directory).hold()
    assert not (directory / LOCK).exists()


def test_a_missing_or_unnamed_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as raised:
        LaunchDir(tmp_path / "floe-pilot.gone").hold()
    assert raised.value.filename == str(tmp_path / "floe-pilot.gone" / LOCK)
    assert LaunchDir(tmp_path / "missing" / "floe-pilot.x").sweep() == ([], [])
    # A pilot run by hand with --launch-dir naming some other directory sweeps nothing there.
    (tmp_path / "mywork").mkdir()
    dead = launcher_dir(tmp_path, "floe-pilot.old")
    mine = LaunchDir(tmp_path / "mywork")
    mine.hold()
    assert mine.sweep() == ([], []) and dead.exists()
