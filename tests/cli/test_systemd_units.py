"""The systemd units in examples/systemd/: their commands are ones `floe` takes, reloading
sends SIGHUP, and stopping signals the main process only (the server closes its writer)."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest

from floe.cli.main import build_parser

UNITS = Path(__file__).resolve().parents[2] / "examples" / "systemd"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd's keys are case-sensitive
    parser.read_string((UNITS / name).read_text())
    return parser


@pytest.mark.parametrize(("name", "command"), [("floe-server.service", "server"),
                                               ("floe-factory@.service", "factory")])
def test_a_unit_runs_floe_commands_that_floe_accepts_and_reloads_with_sighup(name, command):
    service = unit(name)["Service"]
    for key in ("ExecStartPre", "ExecStart"):
        program, *args = shlex.split(service[key].replace("%i", "uw-slurm"))
        assert program == "/opt/floe/.venv/bin/floe" and args[0] == command
        parsed = build_parser().parse_args(args)
        assert parsed.command == command and parsed.check == (key == "ExecStartPre")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillMode"] == "mixed" and service["NoNewPrivileges"] == "yes"
    assert service["Restart"] == "on-failure"


def test_the_server_unit_is_hardened_and_gives_the_shutdown_time_to_finish():
    service = unit("floe-server.service")["Service"]
    assert service["ProtectSystem"] == "strict" and service["ProtectHome"] == "yes"
    assert service["CapabilityBoundingSet"] == "" and service["PrivateTmp"] == "yes"
    assert service["StateDirectory"] == "floe" and service["UMask"] == "0077"
    # 10 s for the requests in flight, then up to 10 s for each of the writer's last writes.
    assert int(service["TimeoutStopSec"]) >= 30
