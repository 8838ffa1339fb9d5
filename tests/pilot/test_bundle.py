"""pilot.pyz: built from the pilot's own imports, and run by a bare python3 (-I -S: no
site-packages, no project on the path), on 3.9 too, for a probe and for an offline job."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from floe.cli.main import main as floe
from floe.pilot.bundle import build, pilot_modules, pynvml_file

PYTHON39 = Path("/root/.pyenv/versions/3.9.18/bin/python3")
SYSTEM_PYTHON = shutil.which("python3") or "/usr/bin/python3"
PYTHONS = [
    pytest.param(SYSTEM_PYTHON, id="python3"),
    pytest.param(str(PYTHON39), id="python3.9",
                 marks=pytest.mark.skipif(not PYTHON39.exists(), reason="no Python 3.9 here")),
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("bundle") / "pilot.pyz")


def test_the_bundle_holds_what_the_pilot_imports_and_nothing_else(bundle):
    names = zipfile.ZipFile(bundle).namelist()
    assert "__main__.py" in names
    assert {"floe/__init__.py", "floe/pilot/__init__.py", "floe/pilot/main.py",
            "floe/pilot/runner.py", "floe/pilot/slot.py", "floe/config/__init__.py",
            "floe/config/expressions.py", "floe/config/dataset.py",
            "floe/config/resources.py"} <= set(names)
    assert "floe/pilot/bundle.py" not in names
    assert not [n for n in names if "__pycache__" in n or not n.startswith(
        ("floe/pilot/", "floe/config/", "floe/__init__.py", "__main__.py", "pynvml.py"))]
    assert ("pynvml.py" in names) == (pynvml_file() is not None)
    assert bundle.read_bytes().startswith(b"#!/usr/bin/env python3\n")


def test_the_same_sources_give_the_same_bundle(bundle, tmp_path):
    assert build(tmp_path / "again.pyz").read_bytes() == bundle.read_bytes()


def test_floe_pilot_bundle_writes_the_file(tmp_path, capsys):
    assert floe(["pilot-bundle", "-o", str(tmp_path / "p.pyz")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "p.pyz")
    assert sorted(n for n in zipfile.ZipFile(tmp_path / "p.pyz").namelist()
                  if n.startswith("floe/")) == pilot_modules()


@pytest.mark.parametrize("python", PYTHONS)
def test_a_bare_python_probes_with_the_bundle(bundle, tmp_path, python):
    done = subprocess.run([python, "-I", "-S", str(bundle), "--probe", "--site", "t2",
                           "--scratch", str(tmp_path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout)
    assert probe["site"] == "t2"
    assert probe["cpus"] >= 1
    assert probe["python"].startswith(python_version(python))


@pytest.mark.parametrize("python", PYTHONS)
def test_a_bare_python_runs_an_offline_job_with_the_bundle(bundle, tmp_path, python):
    config = tmp_path / "dataset.json"
    config.write_text(json.dumps({
        "jobs": 2, "steering": {"greeting": "hello"},
        "tasks": [{"name": "say", "outputs": [{"local": "said.txt",
                                               "url": f"file://{tmp_path}/out/$args(job).txt"}],
                   "modules": [{"command": "echo $steering(greeting) $args(job) > said.txt"}]}],
    }))
    done = subprocess.run([python, "-I", "-S", str(bundle), "--run", str(config), "--job", "1",
                           "--workdir", str(tmp_path / "work"), "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)
    assert result["error_class"] is None
    kept = tmp_path / "work" / "outputs" / "file" / (tmp_path / "out" / "1.txt").relative_to("/")
    assert kept.read_text() == "hello 1\n"  # production's place is written by pilots alone


def python_version(python: str) -> str:
    done = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()
