"""Held asks: an idle pilot that can wait is answered the moment work it can run is ready, not
after `idle_wait`; only pilots that can run the new work are woken; the held asks are bounded;
and a real pilot uses them. The API is served in this process (real aiohttp, real SQLite)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from floe.matchmaker.holding import hold_seconds
from tests.pilot.live import SETTINGS, LiveMatchmaker, wait_for

from . import support as s

IDLE = {"cpus": 1, "memory": 2**30, "disk": 2**30, "seconds": 3600, "max_tasks": 1}


async def emptied(world) -> None:
    """No ready task anywhere: the world's own dataset suspended."""
    status, answer = await world.api.call("POST", f"/api/v1/datasets/{world.dataset}/suspend",
                                          world.owner)
    assert status == 200, answer


async def held_ask(world, pilot: int, hold: int, **offer):
    started = time.monotonic()
    status, answer = await world.api.call("POST", f"/api/v1/pilots/{pilot}/ask",
                                          world.keys[pilot], dict(IDLE, hold=hold, **offer))
    assert status == 200, answer
    return answer, time.monotonic() - started


async def until_held(world, count: int) -> None:
    for _ in range(500):
        if len(world.engine.holding.held) == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} asks were not held")


async def test_a_held_ask_is_answered_when_a_task_it_fits_is_submitted(world):
    await emptied(world)
    asking = asyncio.create_task(held_ask(world, world.pilot, 20))
    await until_held(world, 1)
    status, made = await world.api.call("POST", "/api/v1/datasets", world.other,
                                        s.config(jobs=1))
    assert status == 201, made
    answer, took = await asking
    assert [a["task_id"] for a in answer["attempts"]] == \
        [world.engine.datasets[made["id"]].base], answer
    assert took < 10, "answered when the task was ready, not at the end of the hold"
    assert not world.engine.holding.held


async def test_the_woken_pilot_is_answered_before_the_submitter(world, monkeypatch):
    """The task starts on the pilot: its answer goes out a turn of the event loop before the
    submit's (both wait for the same commit)."""
    answered = []
    observe = world.engine.metrics.observe

    def recording(path, method, status, seconds):
        answered.append(path.rsplit("/", 1)[-1])
        observe(path, method, status, seconds)
    await emptied(world)
    asking = asyncio.create_task(held_ask(world, world.pilot, 20))
    await until_held(world, 1)
    monkeypatch.setattr(world.engine.metrics, "observe", recording)
    status, made = await world.api.call("POST", "/api/v1/datasets", world.other,
                                        s.config(jobs=1))
    assert status == 201, made
    answer, _ = await asking
    assert len(answer["attempts"]) == 1, answer
    assert answered == ["ask", "datasets"]


async def test_only_pilots_that_can_run_the_new_work_are_woken(world):
    await emptied(world)
    # A hold of 2 s: under 10 % of `hold_asks`, so the pilot's own hold decides its end.
    cpu_only = asyncio.create_task(held_ask(world, world.pilot, 2))
    with_gpu = asyncio.create_task(held_ask(world, world.sibling, 20, gpus=1))
    await until_held(world, 2)
    gpu_task = s.config(jobs=1, tasks=[{"name": "gpu", "requirements": {
        "cpus": 1, "gpus": 1, "memory": "1GiB", "walltime": "1h"},
        "modules": [{"command": ["true"]}]}])
    status, made = await world.api.call("POST", "/api/v1/datasets", world.other, gpu_task)
    assert status == 201, made
    answer, took = await with_gpu
    assert len(answer["attempts"]) == 1 and took < 10, answer
    answer, took = await cpu_only  # not woken: held to its end, then told to ask again at once
    assert answer["attempts"] == [] and answer["wait"] == 0, answer
    assert took >= 1.9


async def test_a_wake_passes_over_a_held_ask_whose_pilot_has_gone(world):
    """A stopped or killed pilot's ask stays held until it ends: new work wakes the next held
    ask instead of being spent on that one."""
    await emptied(world)
    # As `floe server` runs (aiohttp's default): a handler is not cancelled when its client
    # goes (the test server cancels it).
    world.server.runner.server.handler_cancellation = False
    gone = asyncio.create_task(held_ask(world, world.pilot, 20))  # held the longest
    await until_held(world, 1)
    live = asyncio.create_task(held_ask(world, world.sibling, 20))
    await until_held(world, 2)
    gone.cancel()  # its client closes the connection
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    await asyncio.sleep(0.2)
    assert len(world.engine.holding.held) == 2  # the server has not noticed by itself
    status, made = await world.api.call("POST", "/api/v1/datasets", world.other,
                                        s.config(jobs=1))
    assert status == 201, made
    answer, took = await live
    assert len(answer["attempts"]) == 1 and took < 10, answer


async def test_held_asks_are_bounded(world):
    await emptied(world)
    world.engine.holding.limit = 1
    first = asyncio.create_task(held_ask(world, world.pilot, 2))
    await until_held(world, 1)
    answer, took = await held_ask(world, world.sibling, 20)  # over the limit: answered at once
    assert answer["attempts"] == [] and answer["wait"] == world.settings.idle_wait, answer
    assert took < 2
    answer, _ = await first
    assert answer["wait"] == 0


async def test_an_ask_with_hold_resets_what_its_pilot_was_handed_long_ago(world):
    """A pilot holds its ask only when it holds no attempt (and then sends no heartbeat): one
    handed to it more than a heartbeat interval before never reached it and is reset at once,
    one handed out within the interval is not."""
    status, answer = await world.api.call("POST", f"/api/v1/pilots/{world.pilot}/ask",
                                          world.keys[world.pilot], IDLE)
    assert status == 200, answer
    (lost,) = answer["attempts"]
    now = time.time()
    world.engine.clock = lambda: now + world.settings.heartbeat_interval - 1
    answer, _ = await held_ask(world, world.pilot, 20)
    (kept,) = answer["attempts"]
    assert lost["id"] in world.engine.active
    world.engine.clock = lambda: now + world.settings.heartbeat_interval + 1
    answer, _ = await held_ask(world, world.pilot, 20)
    assert lost["id"] not in world.engine.active and kept["id"] in world.engine.active
    row = await world.engine.db.fetchone("SELECT state, error_message FROM attempts "
                                         "WHERE attempt_id = ?", (lost["id"],))
    assert "never reached pilot" in row["error_message"], dict(row)


async def test_an_ask_without_hold_is_answered_at_once_as_before(world):
    await emptied(world)
    status, answer = await world.api.call("POST", f"/api/v1/pilots/{world.pilot}/ask",
                                          world.pilot_key, IDLE)
    assert status == 200 and answer["attempts"] == [], answer
    assert answer["wait"] == world.settings.idle_wait and not world.engine.holding.held


def test_held_asks_end_at_their_pilots_own_moments_so_idle_pilots_ask_again_evenly():
    """10,000 idle pilots whose asks came together (a restart): the holds end spread evenly over
    the cycle (90 % of `hold_asks`), each between 10 % and all of `hold_asks`; then each pilot,
    asking again as its hold ends, is held one whole cycle, so the even spread stays."""
    longest, now = 25.0, 1000.0
    holds = [hold_seconds(pilot, longest, now) for pilot in range(1, 10_001)]
    assert min(holds) >= 2.5 and max(holds) <= 25.0
    per_tenth = [0] * 10
    for hold in holds:
        per_tenth[min(9, int((hold - 2.5) / 22.5 * 10))] += 1
    assert all(950 <= count <= 1050 for count in per_tenth), per_tenth
    delay = 0.003  # the answer's way to the pilot and its ask's way back
    again = [hold_seconds(pilot, longest, now + hold + delay)
             for pilot, hold in enumerate(holds, 1)]
    assert all(abs(hold - (22.5 - delay)) < 1e-6 for hold in again), (min(again), max(again))


@contextlib.contextmanager
def idle_pilot(tmp_path: Path, old: str, new: str) -> Iterator[tuple[LiveMatchmaker,
                                                                  subprocess.Popen]]:
    """A matchmaker (its test settings with `old` replaced by `new`) and one real pilot that
    has registered and found nothing to do: its ask is held (or about to be again)."""
    directory = tmp_path / "matchmaker"
    directory.mkdir()
    live = LiveMatchmaker(directory, settings=SETTINGS.replace(old, new))
    live.start()
    try:
        scratch = tmp_path / "pilot"
        scratch.mkdir()
        pilot = live.start_pilot(scratch, "--idle-timeout", "10m")
        wait_for(lambda: live.get("/pilots")["pilots"], 30, "the pilot to register")
        time.sleep(2.0)
        yield live, pilot
    finally:
        live.close()


def test_an_idle_real_pilot_starts_new_work_at_once(tmp_path: Path):
    """With `idle_wait` at 30 s, an idle pilot that was told to wait would start a task
    submitted now up to 36 s later; held, it starts it as soon as it is ready."""
    with idle_pilot(tmp_path, 'idle_wait = "1s"', 'idle_wait = "30s"') as (live, _):
        dataset = live.submit({"description": "now", "jobs": 3, "tasks": [
            {"name": "t", "requirements": {"walltime": "1m"}, "modules": [{"command": "true"}]}]})
        started = time.monotonic()
        wait_for(lambda: live.get(f"/datasets/{dataset}")["status"] == "complete", 60,
                 "the tasks to complete")
        assert time.monotonic() - started < 20


def test_a_signal_ends_a_held_ask_at_once(tmp_path: Path):
    """A batch system's SIGTERM reaches an idle pilot in the middle of a held ask (up to 25 s):
    it leaves at once, not when the hold ends (SLURM's pilots stayed COMPLETING for the rest of
    it)."""
    with idle_pilot(tmp_path, 'heartbeat_interval = "5s"',
                    'heartbeat_interval = "60s"') as (_, pilot):
        started = time.monotonic()
        pilot.send_signal(signal.SIGTERM)
        assert pilot.wait(20) == 0
        assert time.monotonic() - started < 10
