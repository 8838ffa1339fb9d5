"""What the plugin tests share: a test pilot that records what its slot looked like and then
waits to be released, and ways to wait for and clean up after pilots in a real batch system."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from floe.plugins.base import BatchPlugin, PilotState

T = TypeVar("T")

# The pilot the tests submit: it writes its environment and the limits it can measure into
# <dir>/<batch id>.env, then waits (at most two minutes) until <dir>/release exists.
PILOT_SCRIPT = r"""
out="$1"
id="${FLOE_BATCH_ID:-unknown}"
{ env; echo "FLOE_TEST_PID=$$"; echo "FLOE_TEST_ULIMIT_V=$(ulimit -v)"; } > "$out/$id.env.tmp"
mv "$out/$id.env.tmp" "$out/$id.env"
i=0
while [ ! -e "$out/release" ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done
echo done > "$out/$id.done"
"""


def pilot_command(out: Path) -> list[str]:
    """A command line for a test pilot that reports into `out`."""
    return ["/bin/sh", "-c", PILOT_SCRIPT, "pilot", str(out)]


def wait_for(probe: Callable[[], T], what: str, timeout: float = 90.0) -> T:
    """Polls `probe` until it returns something true; fails the test naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout:g} s (last saw {value!r})")
        time.sleep(0.25)


def pilot_env(out: Path, batch_id: str) -> dict[str, str]:
    """The environment a test pilot recorded, once it has."""
    path = out / f"{batch_id}.env"
    wait_for(path.exists, f"pilot {batch_id} to write {path.name}")
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def state_of(plugin: BatchPlugin, batch_id: str) -> PilotState | None:
    """The pilot's state as status() reports it; None once the batch system forgot it."""
    info = plugin.status().get(batch_id)
    return info.state if info else None


def cleanup(plugin: BatchPlugin, out: Path | None = None) -> None:
    """Releases waiting test pilots and removes whatever the plugin's factory still has queued."""
    if out is not None:
        (out / "release").touch()
    plugin.remove_orphans(set())


def fake_command(bin_dir: Path, name: str, body: str) -> Path:
    """A stand-in for a batch command, for the failures a real batch system cannot be made to
    show (output it cannot print, a hang): a shell script `name` in `bin_dir` running `body`."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return bin_dir
