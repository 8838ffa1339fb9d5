"""The wheel, as a new user gets it: built from the checkout's files (through an sdist, as
`python -m build` does), installed into a fresh virtual environment outside the checkout, where
it must add nothing to site-packages but `floe` and its dist-info, and where `floe --version`,
`floe demo` (with the examples the wheel carries) and `floe pilot-bundle` work.

Offline: the build uses this environment's setuptools (--no-isolation), and the fresh
environment takes floe's dependencies from this one's site-packages (a .pth line after its own,
which runs none of this one's .pth files, so the editable floe of the checkout stays out of
reach). The wheel itself comes in through pip with --no-deps; its declared dependencies are
checked against what the fresh environment sees. About 15 s, most of it the demo.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import floe
from tests.cli.test_demo import BARE_ENV, JOBS, check_summary, processes_in
from tests.pilot.live import ROOT

pytestmark = pytest.mark.slow

DIST_INFO = f"floe-{floe.__version__}.dist-info"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """floe's wheel, built from a copy of the checkout's files (tracked, or new and not
    ignored) through its sdist."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the checkout's files")
    work = tmp_path_factory.mktemp("build")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (work / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / "src" / name)
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir",
                           str(work / "dist"), str(work / "src")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    [built] = (work / "dist").glob("floe-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed, its dependencies borrowed."""
    home = tmp_path_factory.mktemp("installed")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(home / "venv")],
                   check=True, timeout=120)
    python = home / "venv" / "bin" / "python"
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                           "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (site_packages(python) / "_borrowed_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    return home / "venv"


def site_packages(python: Path) -> Path:
    done = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True)
    return Path(done.stdout.strip())


def run(venv: Path, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """A command of the fresh environment, run outside the checkout, as a user's shell would."""
    env = {k: v for k, v in BARE_ENV.items() if not k.startswith(("PYTHON", "FLOE_"))}
    return subprocess.run(args, cwd=cwd, env={**env, "XDG_CACHE_HOME": str(cwd / "cache")},
                          capture_output=True, text=True, timeout=timeout)


def test_the_wheel_holds_one_package_floe(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"floe", DIST_INFO}
    assert {"floe/__init__.py", "floe/cli/main.py", "floe/config/dataset.py",
            "floe/matchmaker/server.py", "floe/pilot/main.py", "floe/plugins/slurm.py",
            "floe/plugins/templates/slurm.sh", "floe/factory/site.py",
            "floe/matchmaker/web/floe.css", "floe/examples/demo.json",
            "floe/examples/systemd/floe-server.service"} <= set(names)
    assert not [name for name in names if name.startswith("floe/tests/") or "ruff.toml" in name]
    license_text = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert license_text and b"Apache License" in zipfile.ZipFile(wheel).read(license_text[0])


def test_site_packages_gets_only_floe(venv):
    installed = {path.name for path in site_packages(venv / "bin" / "python").iterdir()}
    assert installed - {"_borrowed_dependencies.pth"} == {"floe", DIST_INFO}


def test_the_fresh_environment_has_what_the_wheel_requires(venv, tmp_path):
    """Every dependency the wheel declares (without extras) is there, and floe comes from the
    wheel, not from the checkout."""
    code = ("import floe, importlib.metadata as m; from packaging.requirements import "
            "Requirement\n"
            "print(floe.__file__)\n"
            "for text in m.requires('floe'):\n"
            "    r = Requirement(text)\n"
            "    if r.marker is None or r.marker.evaluate({'extra': ''}):\n"
            "        assert m.version(r.name) in r.specifier, (r, m.version(r.name))\n")
    done = run(venv, str(venv / "bin" / "python"), "-c", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(venv)


def test_floe_version(venv, tmp_path):
    done = run(venv, str(venv / "bin" / "floe"), "--version", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"floe {floe.__version__}\n"), done.stderr


def test_floe_demo_runs_from_the_wheel_with_its_own_examples(venv, tmp_path):
    workdir = tmp_path / "demo"
    done = run(venv, str(venv / "bin" / "floe"), "demo", "--jobs", str(JOBS), "--pilots", "2",
               "--workdir", str(workdir), cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    shown = re.search(r"^floe demo: (\S+) on the local site$", done.stdout, re.M)
    assert shown and Path(shown[1]) == site_packages(venv / "bin" / "python") / "floe" / \
        "examples" / "demo.json", done.stdout
    check_summary(done.stdout, "local", venv_bin=venv / "bin", cwd=tmp_path)
    assert processes_in(workdir) == []


def test_floe_pilot_bundle_from_the_wheel_runs_on_a_bare_python(venv, tmp_path):
    done = run(venv, str(venv / "bin" / "floe"), "pilot-bundle", "-o", "pilot.pyz",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pilot.pyz"
    names = zipfile.ZipFile(tmp_path / "pilot.pyz").namelist()
    assert "floe/__init__.py" in names and "floe/pilot/main.py" in names
    probe = subprocess.run([shutil.which("python3") or "/usr/bin/python3", "-I", "-S",
                            "pilot.pyz", "--probe", "--site", "t2", "--scratch", str(tmp_path)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60,
                           env={"PATH": os.environ.get("PATH", "")})
    assert probe.returncode == 0, probe.stderr
    assert '"site": "t2"' in probe.stdout
