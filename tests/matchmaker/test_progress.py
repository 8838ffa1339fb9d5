"""Waiting for a dataset's progress without polling: `GET /api/v1/datasets/{id}/progress` holds
the request until the dataset changes (or ends, with `until=end`), up to `wait` seconds."""

from __future__ import annotations

import asyncio
import dataclasses

from . import support as s


async def progress(world, dataset: int, **params) -> dict:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    status, answer = await world.api.call(
        "GET", f"/api/v1/datasets/{dataset}/progress?{query}", world.owner)
    assert status == 200, answer
    return answer


async def one_task_dataset(world) -> int:
    status, dataset = await world.api.call("POST", "/api/v1/datasets", world.owner,
                                           s.config(jobs=1))
    assert status == 201, dataset
    await world.wait_created(dataset["id"])
    return dataset["id"]


async def run_its_task(world) -> None:
    """A pilot takes the only ready task of the world's datasets with work left, and completes
    it."""
    _, given = await world.ask()
    attempt = given["attempt"]
    status, answer = await world.api.call(
        "POST", f"/api/v1/attempts/{attempt['id']}/report", None,
        {"exit_code": 0, "usage": {"wall_time": 0.01}}, passkey=attempt["passkey"])
    assert status == 200, answer


async def test_a_waiting_request_is_answered_at_the_next_change(world):
    now = await progress(world, world.dataset)
    assert now["tasks"]["ready"] == 20 and now["status"] == "processing"
    waiting = asyncio.create_task(progress(world, world.dataset, wait=60,
                                           since=now["version"]))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # nothing changed yet
    _, given = await world.ask()
    assert given["attempt"]["dataset"] == world.dataset
    changed = await asyncio.wait_for(waiting, 10)  # long before its 60 s
    assert changed["tasks"]["processing"] == 1 and changed["version"] != now["version"]


async def test_a_version_already_out_of_date_is_answered_at_once(world):
    old = await progress(world, world.dataset)
    await world.ask()
    answer = await asyncio.wait_for(progress(world, world.dataset, wait=60,
                                             since=old["version"]), 10)
    assert answer["tasks"]["processing"] == 1


async def test_with_no_change_the_wait_ends_with_the_same_version(world):
    now = await progress(world, world.dataset)
    again = await progress(world, world.dataset, wait=1, since=now["version"])
    assert again["version"] == now["version"]


async def test_until_end_waits_past_changes_for_the_dataset_to_complete(world):
    for _ in range(20):  # the world's first dataset is done first, in fair share
        await run_its_task(world)
    dataset_id = await one_task_dataset(world)
    waiting = asyncio.create_task(progress(world, dataset_id, wait=60, until="end"))
    _, given = await world.ask()  # a change, but not the end
    await asyncio.sleep(0.2)
    assert not waiting.done()
    status, _ = await world.api.call(
        "POST", f"/api/v1/attempts/{given['attempt']['id']}/report", None,
        {"exit_code": 0, "usage": {"wall_time": 0.01}}, passkey=given["attempt"]["passkey"])
    assert status == 200
    ended = await asyncio.wait_for(waiting, 10)
    assert ended["status"] == "complete" and ended["tasks"]["complete"] == 1


async def test_an_unknown_dataset_and_a_wait_out_of_bounds_are_refused(world):
    status, answer = await world.api.call("GET", "/api/v1/datasets/999/progress", world.owner)
    assert status == 404 and "999" in answer["error"]
    for wait in ("3600", "nan", "-1", "inf"):
        status, answer = await world.api.call(
            "GET", f"/api/v1/datasets/{world.dataset}/progress?wait={wait}", world.owner)
        assert status == 400 and answer["error"].startswith("wait: "), answer


async def test_the_server_holds_a_progress_request_at_most_max_progress_wait(world):
    world.engine.settings = dataclasses.replace(world.engine.settings, max_progress_wait=1)
    now = await progress(world, world.dataset)
    again = await asyncio.wait_for(progress(world, world.dataset, wait=60,
                                            since=now["version"]), 10)
    assert again["version"] == now["version"]
