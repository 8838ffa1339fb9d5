"""Helpers of the CLI tests: run `floe` in this process or as a real one, as a given user, and
write dataset configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from floe.cli.main import main as floe
from tests.pilot.live import ROOT, LiveMatchmaker


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`floe ARGS...` in this process: (exit status, stdout, stderr)."""
    status = floe(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    """`floe ARGS... --json`, which must succeed: what it printed, decoded."""
    status, out, err = run(capsys, *args, "--json")
    assert status == 0, err
    return json.loads(out)


def start_process(tmp_path: Path, *args: str, **options: Any) -> subprocess.Popen:
    """`floe ARGS...` as a real process, with no client settings but its options."""
    return subprocess.Popen([sys.executable, "-m", "floe.cli.main", *args], cwd=ROOT, text=True,
                            env={"FLOE_CONFIG": str(tmp_path / "no-client.toml"),
                                 "PATH": "/usr/bin:/bin"}, **options)


def run_process(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`floe ARGS...` run to its end as a real process: the exit status a shell would see."""
    process = start_process(tmp_path, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def as_user(matchmaker: LiveMatchmaker, token: str | None = None) -> list[str]:
    """The options that connect to `matchmaker` with `token` (alice's by default)."""
    return ["--url", matchmaker.url, "--token", token or matchmaker.user_token]


def config_file(tmp_path: Path, document: dict[str, Any], name: str = "dataset.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document, indent=2))
    return path
