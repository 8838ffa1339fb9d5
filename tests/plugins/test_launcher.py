"""The launcher every plugin's job runs (plugins.jobs.PilotJob): it finds a Python 3.9 or newer
(the site's, else the newest python3.X on the PATH, else python3), ends with one line naming the
host and what it found when there is none, writes the pilot and its token into a private
directory that goes when the pilot ends, and passes a batch system's SIGTERM on to the pilot.

The worker node here is this machine with a PATH of the test's making: the real Python under
the names a node would have, and stand-ins for the old ones (EL8's python3 is 3.6), which answer
the launcher's version questions as those would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipapp
from pathlib import Path

import pytest

from floe.pilot import bundle as bundle_module
from floe.pilot.launchdir import MIN_AGE
from floe.plugins.jobs import LAUNCH_FAILED, PilotJob
from tests.pilot.live import wait_for

TOOLS = ("mktemp", "rm", "hostname", "uname", "cat", "sleep", "cp")
# A pilot that reports what it was started with, then waits for a signal when asked to.
PILOT = """\
import json, os, signal, stat, sys, time
token = sys.argv[sys.argv.index("--token-file") + 1]
seen = {"python": "%d.%d" % sys.version_info[:2], "args": sys.argv[1:],
        "token": open(token).read(), "token_mode": oct(stat.S_IMODE(os.stat(token).st_mode)),
        "dir_mode": oct(stat.S_IMODE(os.stat(os.path.dirname(token)).st_mode)),
        "dir": os.path.dirname(token), "env": dict(os.environ), "umask": oct(os.umask(0))}
with open(os.environ["SEEN"], "w") as out:
    json.dump(seen, out)
if "--wait" in sys.argv:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(43))
    time.sleep(60)
"""


def old_python(bin_dir: Path, name: str, version: str) -> None:
    """A stand-in for an old interpreter: it prints its version and fails the version check."""
    path = bin_dir / name
    path.write_text(f'#!/bin/sh\ncase "$2" in *print*) echo {version};; esac; exit 1\n')
    path.chmod(0o755)


@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A bin directory with the tools a launcher uses and no Python yet."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True,
                               text=True, check=True).stdout.strip()
        (bin_dir / tool).symlink_to(found)
    return bin_dir


@pytest.fixture
def bundle(tmp_path: Path) -> bytes:
    source = tmp_path / "pilot-source"
    source.mkdir()
    (source / "__main__.py").write_text(PILOT)
    zipapp.create_archive(source, tmp_path / "pilot.pyz")
    return (tmp_path / "pilot.pyz").read_bytes()


def launch(node: Path, tmp_path: Path, job: PilotJob, **popen: object) -> subprocess.Popen:
    env = {"PATH": str(node), "SEEN": str(tmp_path / "seen.json"), "TMPDIR": str(tmp_path)}
    return subprocess.Popen(["/bin/sh", "-c", job.script(0)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def real_python(node: Path, name: str) -> None:
    (node / name).symlink_to(sys.executable)


def test_the_newest_python3_x_on_the_path_runs_the_pilot_with_its_token_file(
        node: Path, bundle: bytes, tmp_path: Path) -> None:
    real_python(node, f"python3.{sys.version_info[1]}")
    old_python(node, "python3", "3.6")
    old_python(node, "python3.8", "3.8")
    job = PilotJob(bundle, ["--site", "s p"], ["floe_p_token"], cacert=b"PEM")
    launched = launch(node, tmp_path, job, umask=0o027)  # the account's, as the job starts
    _, err = launched.communicate(timeout=60)
    assert launched.returncode == 0, err
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert seen["token"] == "floe_p_token"
    assert (seen["token_mode"], seen["dir_mode"]) == ("0o600", "0o700")
    assert seen["umask"] == "0o27"  # the pilot, and so its tasks, make files as it says
    assert seen["args"][-4:] == ["--site", "s p", "--cacert", f"{seen['dir']}/ca.pem"]
    assert seen["args"][2:4] == ["--launch-dir", seen["dir"]]
    assert not any("floe_p_token" in value for value in seen["env"].values())
    assert not Path(seen["dir"]).exists()  # gone with the pilot, token and all


@pytest.mark.parametrize(("site_python", "olds", "expected"), [
    ("", [("python3", "3.6"), ("python3.8", "3.8"), ("python3.9", "broken")],
     "no Python 3.9 or newer to run the pilot: python3.9 (broken), python3 (3.6); set the "
     "site's python setting to one"),
    ("", [], "no Python 3.9 or newer to run the pilot: no python3 on the PATH; set the site's "
             "python setting to one"),
    ("python3", [("python3", "3.6")],
     "no Python 3.9 or newer to run the pilot: python3 (3.6); set the site's python setting "
     "to a Python 3.9 or newer on the nodes"),
    ("/opt/python/bin/python3", [],
     "no Python 3.9 or newer to run the pilot: /opt/python/bin/python3 was not found; set the "
     "site's python setting to a Python 3.9 or newer on the nodes"),
    ("true", [],  # a wrapper that succeeds but runs no Python
     "no Python 3.9 or newer to run the pilot: true (not a Python: it printed no version); set "
     "the site's python setting to a Python 3.9 or newer on the nodes"),
])
def test_without_a_python_3_9_the_launcher_ends_with_one_line_naming_host_and_finds(
        node: Path, bundle: bytes, tmp_path: Path, site_python: str,
        olds: list[tuple[str, str]], expected: str) -> None:
    for name, version in olds:
        old_python(node, name, version)
    launched = launch(node, tmp_path, PilotJob(bundle, [], ["floe_p_x"], python=site_python))
    _, err = launched.communicate(timeout=60)
    assert launched.returncode == LAUNCH_FAILED
    assert err == f"floe pilot: {expected} (on {socket.gethostname()})\n"
    assert not list(tmp_path.glob("floe-pilot.*"))  # its private directory went too


def test_a_batch_systems_sigterm_reaches_the_pilot_and_its_status_comes_back(
        node: Path, bundle: bytes, tmp_path: Path) -> None:
    real_python(node, "python3")
    launched = launch(node, tmp_path, PilotJob(bundle, ["--wait"], ["floe_p_x"]),
                      start_new_session=True)
    wait_for(lambda: (tmp_path / "seen.json").exists(), 30, "the pilot to start")
    time.sleep(0.2)
    os.kill(launched.pid, signal.SIGTERM)
    launched.communicate(timeout=30)
    assert launched.returncode == 43  # the pilot's own exit status, after its SIGTERM
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert not Path(seen["dir"]).exists()


def test_a_launcher_that_cannot_make_its_directory_says_where(
        node: Path, bundle: bytes, tmp_path: Path) -> None:
    real_python(node, "python3")
    env = {"PATH": str(node), "TMPDIR": str(tmp_path / "missing")}
    done = subprocess.run(["/bin/sh", "-c", PilotJob(bundle, [], ["floe_p_x"]).script(0)],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == LAUNCH_FAILED
    assert done.stderr.splitlines()[-1] == (f"floe pilot: cannot make a directory under "
                                            f"{tmp_path / 'missing'} (on "
                                            f"{socket.gethostname()})")


def test_on_a_shared_filesystem_the_job_starts_the_workdirs_pilot_and_carries_none(
        node: Path, bundle: bytes, tmp_path: Path) -> None:
    real_python(node, "python3")
    shared = tmp_path / "workdir" / "pilot.pyz"
    shared.parent.mkdir()
    shared.write_bytes(bundle)
    job = PilotJob(b"", ["--site", "s"], ["floe_p_token"], bundle_path=str(shared))
    assert len(job.script(0)) < 3000 and job.files() == {}
    launched = launch(node, tmp_path, job)
    _, err = launched.communicate(timeout=60)
    assert launched.returncode == 0, err
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["token"] == "floe_p_token"
    assert seen["args"][-2:] == ["--site", "s"]

    shared.unlink()   # a node that does not mount the workdir
    launched = launch(node, tmp_path, job)
    _, err = launched.communicate(timeout=60)
    assert launched.returncode == LAUNCH_FAILED
    assert err == (f"floe pilot: cannot read the pilot at {shared}: is the factory's workdir on a "
                   "filesystem this node reads? If not, set the site's shared_filesystem to "
                   f"false (on {socket.gethostname()})\n")


def test_what_a_killed_launcher_left_goes_when_the_next_pilot_starts_beside_it(
        node: Path, tmp_path: Path) -> None:
    """Launcher and pilot killed outright (SIGKILL to the job, as a batch system ends one that
    outlived its grace) leave their directory, pilot and all; the next real pilot of this user
    that starts under the same $TMPDIR removes it, and never a live pilot's."""
    real_python(node, "python3")
    with socket.socket() as sock:  # a matchmaker nobody answers: the pilots keep registering
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    job = PilotJob(bundle_module.build(tmp_path / "real.pyz").read_bytes(),
                   ["--matchmaker", f"http://127.0.0.1:{port}", "--site", "s"],
                   ["floe_p_first", "floe_p_second"])
    env = {"PATH": str(node), "TMPDIR": str(tmp_path)}

    def start(index: int) -> tuple[subprocess.Popen, Path]:
        before = set(tmp_path.glob("floe-pilot.*"))
        script = tmp_path / f"job{index}.sh"  # carrying the pilot, too long for an argument
        script.write_text(job.script(index))
        launched = subprocess.Popen(["/bin/sh", str(script)], env=env, text=True,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    start_new_session=True)

        def held() -> Path | None:
            return next((path for path in set(tmp_path.glob("floe-pilot.*")) - before
                         if (path / "lock").exists()), None)

        wait_for(held, 60, "the pilot to hold its launcher's directory")
        return launched, held()

    first, left = start(0)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=30)
    assert (left / "pilot.pyz").exists() and (left / "lock").exists()
    then = time.time() - 2 * MIN_AGE  # long enough ago
    os.utime(left, (then, then))

    second, own = start(1)
    wait_for(lambda: not left.exists(), 60, "the killed pilot's directory to go")
    assert own.exists()
    second.terminate()
    _, err = second.communicate(timeout=60)
    assert f"removed 1 directory left by killed pilots' launchers: {left}" in err
    assert not own.exists()  # its own launcher removed it as the pilot ended
