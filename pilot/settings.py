"""How a pilot behaves (`floe pilot`'s options fill `PilotSettings`), and why it stops asking for
work, with the exit status it leaves with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from floe.pilot.runner import RunnerSettings
from floe.pilot.supervisor import WALLTIME_GRACE

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_SUSPECT = 3

@dataclass(frozen=True)
class PilotSettings:
    """How the pilot behaves; `floe pilot`'s options fill it."""

    idle_timeout: float = 300.0
    max_failures: int = 5
    walltime_grace: float = WALLTIME_GRACE
    system: Mapping[str, Any] = field(default_factory=dict)
    runner: RunnerSettings = field(default_factory=lambda: RunnerSettings(kill_grace=3.0))
    min_seconds: float = 10.0
    """Stop asking with less time left than this, whatever the tasks' walltimes."""
    max_backoff: float = 60.0
    delivery_patience: float = 3600.0
    """How long a pilot with nothing else to do keeps trying to deliver its last reports."""
    drain_patience: float = 5.0
    """How long a draining pilot tries to deliver its reports before it leaves them on disk."""
    prefetch_horizon: float = 1.0
    """Seconds of short tasks to queue: k tasks whose recent mean wall time times k is about
    this (0: never queue)."""
    report_linger: float = 0.1
    """How long the report of a short task may wait for others to go with it."""
    version: str = ""


@dataclass
class Stop:
    """Why the pilot stopped asking for work, and its exit status."""

    reason: str
    message: str
    exit_code: int = EXIT_OK
    since: float = 0.0
