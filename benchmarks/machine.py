"""What every benchmark says about the machine it ran on, so that figures from different days can
be read side by side.

The development machines are shared and their speed varies from day to day (a plain Python loop
has been seen to take twice as long on one day as on another), so besides the date, cores and
Python, each run measures two yardsticks of its own: how long the interpreter takes for a fixed
loop, and how many times per second two bare loops (one per core) start `/bin/true` and wait for
it. A figure that misses its target on a day when the yardsticks are slow says so in the same
JSON object.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import platform
import time
from typing import Any

LOOP = 10_000_000


def python_loop_seconds(runs: int = 3) -> float:
    """The best of `runs` timings of a plain loop of 10 million additions."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        total = 0
        for number in range(LOOP):
            total += number
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def _spawn_loop(seconds: float, counts: Any, index: int) -> None:
    true = "/bin/true"
    deadline = time.monotonic() + seconds
    done = 0
    while time.monotonic() < deadline:
        os.waitpid(os.posix_spawn(true, [true], {}), 0)
        done += 1
    counts[index] = done


def bare_spawn_rate(seconds: float = 5.0) -> float:
    """`/bin/true` started and waited for per second by one bare loop per core, together:
    the most that any task system could reach on this machine."""
    cores = os.cpu_count() or 1
    counts = multiprocessing.Array("l", cores)
    loops = [multiprocessing.Process(target=_spawn_loop, args=(seconds, counts, i))
             for i in range(cores)]
    for loop in loops:
        loop.start()
    for loop in loops:
        loop.join()
    return round(sum(counts) / seconds, 1)


def describe(spawn: bool = False) -> dict[str, Any]:
    """The machine as a benchmark reports it; `spawn` adds the bare spawn rate (5 s)."""
    machine: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "python_loop_seconds": python_loop_seconds(),
    }
    if spawn:
        machine["bare_spawn_per_second"] = bare_spawn_rate()
    return machine
