"""A pilot holds its launcher's directory while it lives, and removes the ones beside it that
killed pilots left (floe.pilot.launchdir): only launchers' directories of this user, unchanged for
a while, whose lock nobody holds. Locks are held by real processes here."""

from __future__ import annotations

import os
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


def launcher_dir(parent: Path, name: str, *, lock: bool = True, age: float = 2 * MIN_AGE) -> Path:
    """A launcher's directory as a killed pilot leaves it: its pilot and its lock file, last
    changed `age` seconds ago."""
    path = parent / name
    path.mkdir(mode=0o700)
    (path / "pilot.pyz").write_bytes(b"PK")
    if lock:
        (path / LOCK).touch()
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def lockable(path: Path) -> bool:
    """Whether another process could take the lock at `path` now."""
    return subprocess.run([sys.executable, "-c", TRY_LOCK, str(path)]).returncode == 0


@pytest.fixture
def holder(tmp_path: Path):
    """Start a process that holds the lock of a directory, as a live pilot does."""
    started: list[subprocess.Popen] = []

    def hold(directory: Path) -> None:
        ready = tmp_path / f"{directory.name}.ready"
        started.append(subprocess.Popen([sys.executable, "-c", HOLDER, str(directory / LOCK),
                                         str(ready)]))
        wait_for(ready.exists, 30, "the lock to be taken")
        then = time.time() - 2 * MIN_AGE  # its pilot started long ago
        os.utime(directory, (then, then))

    yield hold
    for process in started:
        process.kill()
        process.wait()


def test_a_held_directory_is_locked_until_the_pilot_lets_it_go(tmp_path: Path) -> None:
    own = LaunchDir(launcher_dir(tmp_path, "floe-pilot.own", lock=False, age=0))
    own.hold()
    assert not lockable(own.path / LOCK)
    with pytest.raises(OSError, match="is locked by another process"):
        LaunchDir(own.path).hold()
    own.close()
    assert lockable(own.path / LOCK)


def test_only_the_directories_that_killed_pilots_left_are_removed(tmp_path: Path,
                                                                  holder) -> None:
    own = LaunchDir(launcher_dir(tmp_path, "floe-pilot.own", lock=False, age=0))
    own.hold()
    dead = [launcher_dir(tmp_path, "floe-pilot.dead1"), launcher_dir(tmp_path, "floe-pilot.dead2")]
    alive = launcher_dir(tmp_path, "floe-pilot.alive")
    holder(alive)
    young = launcher_dir(tmp_path, "floe-pilot.young", age=MIN_AGE / 2)
    unlocked = launcher_dir(tmp_path, "floe-pilot.nolock", lock=False)  # never got that far
    other = launcher_dir(tmp_path, "floe-other.abc")
    (tmp_path / "floe-pilot.file").write_text("not a directory")
    (tmp_path / "elsewhere").mkdir()
    elsewhere = launcher_dir(tmp_path / "elsewhere", "floe-pilot.target")
    (tmp_path / "floe-pilot.link").symlink_to(elsewhere)

    removed = own.sweep()

    assert sorted(removed) == sorted(str(path) for path in dead)
    assert not any(path.exists() for path in dead)
    for kept in (own.path, alive, young, unlocked, other, tmp_path / "floe-pilot.file",
                 elsewhere / "pilot.pyz", tmp_path / "floe-pilot.link"):
        assert os.path.lexists(kept), kept
    assert not lockable(alive / LOCK)  # its pilot still holds it
    assert own.sweep() == []


@pytest.mark.skipif(os.getuid() != 0, reason="making another user's directory needs root")
def test_another_users_directory_is_left_alone(tmp_path: Path) -> None:
    theirs = launcher_dir(tmp_path, "floe-pilot.theirs")
    os.chown(theirs, 4242, 4242)
    then = time.time() - 2 * MIN_AGE
    os.utime(theirs, (then, then))
    own = LaunchDir(launcher_dir(tmp_path, "floe-pilot.own", lock=False, age=0))
    own.hold()
    assert own.sweep() == []
    assert theirs.exists()


def test_a_missing_directory_cannot_be_held_and_says_which(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as raised:
        LaunchDir(tmp_path / "floe-pilot.gone").hold()
    assert raised.value.filename == str(tmp_path / "floe-pilot.gone" / LOCK)
    assert LaunchDir(tmp_path / "missing" / "floe-pilot.x").sweep() == []
